"""Figures of the regular-shape experiment (paper Fig. 3a/b/c) with matplotlib (the ``plots`` extra)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from energyloss.experiments.losses import LossSpec
from energyloss.experiments.runs import atomic_save

from .config import record_spec

__all__ = ["plot_samples", "plot_sweep"]

_COLOURS = {
    "mse": "tab:red",
    "mae": "tab:orange",
    "kabsch_mse": "tab:green",
    "energy[exp]": "tab:blue",
    "energy[constant]": "tab:cyan",
    "energy[inverse]": "tab:purple",
    "energy[inverse_square]": "tab:pink",
    "sparse_energy[exp]": "tab:olive",
}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "the shape figures need matplotlib: pip install 'energyloss[plots]' (or pass --no-plots)"
        ) from err
    return plt


def plot_samples(
    panels: Sequence[dict], path: Path, *, title: str, radius: Sequence[float] | None = None, limit: float = 5.5
) -> Path:
    """Overlay predicted polygons, one panel per loss (Fig. 3a).

    Each panel dict holds ``label``, ``shapes`` (``F`` lists of ``N`` ``[x, y]`` vertices) and ``note`` (a line of
    metrics). Polygons are drawn in their predicted vertex order (closed), vertex 0 marked by a dot, coloured by
    the radius they were asked for.
    """
    plt = _pyplot()
    from matplotlib import cm

    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.7), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        shapes = panel["shapes"]
        colours = cm.viridis([i / max(1, len(shapes) - 1) for i in range(len(shapes))])
        _draw_shapes(ax, shapes, colours)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel["label"], fontsize=10)
        ax.set_xlabel(panel.get("note", ""), fontsize=7.5)
        extent = max(max(abs(v) for p in shape for v in p) for shape in shapes)
        if 0 < extent < 0.2 * limit:  # a collapsed prediction: zoom in so its (ir)regularity stays visible
            inset = ax.inset_axes([0.58, 0.58, 0.4, 0.4])
            _draw_shapes(inset, shapes, colours)
            inset.set_xlim(-1.1 * extent, 1.1 * extent)
            inset.set_ylim(-1.1 * extent, 1.1 * extent)
            inset.set_aspect("equal")
            inset.set_xticks([])
            inset.set_yticks([])
            inset.set_title(f"zoom x{limit / extent:.0f}", fontsize=7, pad=2)
    if radius is not None:
        title = f"{title}\nradii {radius[0]:.2f} .. {radius[-1]:.2f} (dark to light); o = vertex 0"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _draw_shapes(ax, shapes, colours) -> None:
    for shape, colour in zip(shapes, colours, strict=True):
        xs = [p[0] for p in shape] + [shape[0][0]]
        ys = [p[1] for p in shape] + [shape[0][1]]
        ax.plot(xs, ys, "-", color=colour, lw=1.0)
        ax.plot(xs[:-1], ys[:-1], ".", color=colour, ms=2.5)
        ax.plot(xs[0], ys[0], "o", color=colour, ms=3.5, mec="k", mew=0.4)


def plot_sweep(rows: Sequence[dict], path: Path, *, x: str, xlabel: str, title: str, log_x: bool = False) -> Path:
    """Quality (C.1), quality (authors' code) and distance RMSE against ``x`` (Fig. 3b / 3c), one line per loss.

    ``rows`` are summary rows (:func:`.experiment.summary_rows`) with ``*_mean`` / ``*_std`` entries.
    """
    plt = _pyplot()
    panels = [
        ("quality", "quality (App. C.1, true r)", False),
        ("quality_authors", "quality (authors' code, mean r̂)", False),
        ("distance_rmse", "distance RMSE / r (log)", True),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    losses = sorted({r["loss"] for r in rows}, key=lambda s: list(_COLOURS).index(s) if s in _COLOURS else 99)
    for ax, (metric, ylabel, log_y) in zip(axes, panels, strict=True):
        for loss in losses:
            pts = sorted((r[x], r[f"{metric}_mean"], r[f"{metric}_std"]) for r in rows if r["loss"] == loss)
            pts = [p for p in pts if p[1] is not None and math.isfinite(p[1])]
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=2, lw=1.3, label=loss, color=_COLOURS.get(loss))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def sample_panels(records: Sequence[dict], figures: dict, loss_specs: Sequence[LossSpec]) -> list[dict]:
    """Panels for :func:`plot_samples`: the selected model of the first seed of each loss that has figures.

    ``figures`` maps ``(task, str(loss spec), seed, lr)`` to the figure predictions.
    """
    panels = []
    for spec in loss_specs:
        chosen = sorted(
            (r for r in records if r.get("selected") and record_spec(r) == spec),
            key=lambda r: r["seed"],
        )
        for rec in chosen:
            key = (rec.get("task", "regression"), str(spec), rec["seed"], rec["lr"])
            if key in figures:
                note = (
                    f"quality {rec['quality']:.1f} (authors' {rec['quality_authors']:.1f})\n"
                    f"dist. RMSE/r {rec['distance_rmse']:.2g}, radius ratio {rec['radius_ratio']:.2g}"
                )
                panels.append({"label": spec.label, "shapes": figures[key], "note": note})
                break
    return panels
