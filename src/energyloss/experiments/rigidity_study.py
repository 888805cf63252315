"""Fraction of random k-regular graphs that are globally rigid (paper App. A.5, Fig. 5): ``energyloss run rigidity``.

For every (n, k, d) of a grid, draw random k-regular graphs on n vertices with
:func:`energyloss.rigidity.random_regular_graph` and test them with :func:`energyloss.rigidity.is_rigid` and
:func:`energyloss.rigidity.is_globally_rigid` (exact ranks over a prime field, see :mod:`energyloss.rigidity`).
The sparse energy loss uses k = 2d; the paper reports (Fig. 5) that such graphs are globally rigid with high
probability, checking 1000 random 6-regular graphs. Extra settings (n, k, d, graphs) are run on top of the grid;
the default includes the authors' setting n = 30, k = 6, d = 3 with 1000 graphs.

Each setting has its own generator seeded from ``(seed, n, k, d)``, so a setting's result does not depend on what
else is in the grid. When n * k is odd no k-regular graph exists and one vertex gets degree k + 1 (see
:func:`~energyloss.rigidity.random_regular_graph`); the presets use even n only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from energyloss.experiments.runs import (
    apply_overrides,
    machine_info,
    make_run_dir,
    markdown_table,
    progress,
    write_csv,
    write_json,
    write_summary,
)
from energyloss.rigidity import is_globally_rigid, is_rigid, random_regular_graph

__all__ = ["DESCRIPTION", "PRESETS", "RigidityConfig", "add_arguments", "run", "run_setting", "wilson_interval"]

DESCRIPTION = "fraction of globally rigid random k-regular graphs over n, k, d (paper App. A.5, Fig. 5)"


@dataclasses.dataclass(frozen=True)
class RigidityConfig:
    """A grid ``ns x ks x ds`` with ``graphs`` graphs per setting, plus ``extra`` settings ``(n, k, d, graphs)``."""

    ns: tuple[int, ...]
    ks: tuple[int, ...]
    ds: tuple[int, ...]
    graphs: int
    extra: tuple[tuple[int, int, int, int], ...] = ((30, 6, 3, 1000),)
    trials: int = 2
    seed: int = 0


PRESETS: dict[str, RigidityConfig] = {
    # seconds: a handful of small graphs; checks the plumbing only
    "smoke": RigidityConfig(ns=(6, 10), ks=(3, 4), ds=(2,), graphs=5, extra=((12, 6, 3, 5),)),
    # a few minutes on one CPU core; the small n are where k = 2d - 1 can still have enough edges to be rigid
    "default": RigidityConfig(ns=(6, 8, 10, 12, 16, 32, 64), ks=(2, 3, 4, 5, 6, 7, 8), ds=(2, 3), graphs=200),
    # the authors' grid (rigidity/main.py: n in 8..128, k in 3..7) in 2-D and 3-D with 1000 graphs per setting
    "paper": RigidityConfig(ns=(8, 16, 32, 64, 128), ks=(3, 4, 5, 6, 7), ds=(2, 3), graphs=1000),
}


def wilson_interval(successes: int, total: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for ``z = 1.96``).

    >>> tuple(round(v, 3) for v in wilson_interval(1000, 1000))
    (0.996, 1.0)
    """
    if total <= 0:
        return float("nan"), float("nan")
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _setting_seed(seed: int, n: int, k: int, d: int) -> int:
    return int(np.random.SeedSequence([seed, n, k, d]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def run_setting(n: int, k: int, d: int, graphs: int, *, seed: int = 0, trials: int = 2) -> dict:
    """Draw ``graphs`` random k-regular graphs on n vertices and count the rigid and globally rigid ones in d-D.

    >>> rec = run_setting(8, 4, 2, 3)
    >>> rec["graphs"], rec["globally_rigid"] <= rec["rigid"] <= 3
    (3, True)
    """
    gen = torch.Generator().manual_seed(_setting_seed(seed, n, k, d))
    rigid = globally = 0
    edges_count = 0
    start = time.perf_counter()
    for _ in range(graphs):
        edges = random_regular_graph(n, k, generator=gen)
        edges_count = edges.shape[1]
        r = is_rigid(edges, n, d, generator=gen, trials=trials)
        g = r and is_globally_rigid(edges, n, d, generator=gen, trials=trials)
        rigid += int(r)
        globally += int(g)
    seconds = time.perf_counter() - start
    low, high = wilson_interval(globally, graphs)
    return {
        "n": n,
        "k": k,
        "d": d,
        "graphs": graphs,
        "edges": edges_count,
        "complete": k >= n - 1,
        "maxwell_ok": edges_count >= (n * (n - 1) // 2 if n <= d + 1 else d * n - d * (d + 1) // 2),
        "rigid": rigid,
        "globally_rigid": globally,
        "frac_rigid": rigid / graphs,
        "frac_globally_rigid": globally / graphs,
        "gr_ci95_low": low,
        "gr_ci95_high": high,
        "ms_per_graph": 1000 * seconds / graphs,
    }


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _extra(text: str) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for item in text.split(","):
        if item.strip():
            parts = tuple(int(v) for v in item.split(":"))
            if len(parts) != 4:
                raise argparse.ArgumentTypeError(f"extra settings are n:k:d:graphs, got {item!r}")
            out.append(parts)
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``energyloss run rigidity``; unset options keep the preset's value."""
    parser.add_argument("--ns", type=_ints, help="comma-separated numbers of vertices n")
    parser.add_argument("--ks", type=_ints, help="comma-separated degrees k")
    parser.add_argument("--ds", type=_ints, help="comma-separated dimensions d")
    parser.add_argument("--graphs", type=int, help="random graphs per (n, k, d) of the grid")
    parser.add_argument(
        "--extra", type=_extra, help="extra settings n:k:d:graphs, comma-separated ('' for none), e.g. 30:6:3:1000"
    )
    parser.add_argument("--trials", type=int, help="random placements per rigidity test (True answers are exact)")
    parser.add_argument("--seed", type=int, help="base seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _plot(run_dir: Path, records: list[dict], config: RigidityConfig) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no figure (pip install 'energyloss[plots]')")
        return None
    ds = sorted({r["d"] for r in records})
    fig, axes = plt.subplots(2, len(ds), figsize=(5 * len(ds), 7), squeeze=False, sharey=True)
    for col, d in enumerate(ds):
        for row, (key, label) in enumerate((("frac_globally_rigid", "globally rigid"), ("frac_rigid", "rigid"))):
            ax = axes[row][col]
            grid = [r for r in records if r["d"] == d and r.get("grid", True)]
            sizes = sorted({r["n"] for r in grid})
            for i, n in enumerate(sizes):
                pts = sorted((r["k"], r[key]) for r in grid if r["n"] == n)
                shift = 0.05 * (i - (len(sizes) - 1) / 2)  # small offsets so that identical curves stay visible
                ax.plot([p[0] + shift for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=f"n = {n}")
            for r in records:
                if r["d"] == d and not r.get("grid", True):
                    ax.plot(
                        [r["k"]],
                        [r[key]],
                        marker="*",
                        markersize=14,
                        color="black",
                        linestyle="none",
                        label=f"n = {r['n']}, {r['graphs']} graphs",
                    )
            ax.axvline(2 * d, color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"d = {d}: fraction {label}")
            ax.set_xlabel("degree k (dashed: k = 2d; curves offset slightly in k)")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"fraction {label}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "rigidity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _summary(records: list[dict], config: RigidityConfig, seconds: float, figure: Path | None) -> str:
    grid = [r for r in records if r["grid"]]
    ks = sorted({r["k"] for r in grid})
    rows = []
    for d in sorted({r["d"] for r in grid}):
        for n in sorted({r["n"] for r in grid}):
            row: dict = {"d": d, "n": n}
            for r in grid:
                if r["d"] == d and r["n"] == n:
                    rigid = f" ({r['frac_rigid']:.3f})" if r["frac_rigid"] != r["frac_globally_rigid"] else ""
                    star = "*" if r["complete"] else ""
                    row[f"k{r['k']}"] = f"{r['frac_globally_rigid']:.3f}{rigid}{star}"
            rows.append(row)
    table = markdown_table(rows, ["d", "n", *[f"k{k}" for k in ks]], headers=["d", "n", *[f"k = {k}" for k in ks]])
    extra_rows = [
        {
            "setting": f"n = {r['n']}, k = {r['k']}, d = {r['d']}",
            "graphs": r["graphs"],
            "rigid": f"{r['rigid']} ({r['frac_rigid']:.3f})",
            "gr": f"{r['globally_rigid']} ({r['frac_globally_rigid']:.3f})",
            "ci": f"[{r['gr_ci95_low']:.4f}, {r['gr_ci95_high']:.4f}]",
            "ms": f"{r['ms_per_graph']:.1f}",
        }
        for r in records
        if not r["grid"]
    ]
    extra = markdown_table(
        extra_rows,
        ["setting", "graphs", "rigid", "gr", "ci"],
        headers=["setting", "graphs", "rigid", "globally rigid", "95% CI (Wilson)"],
    )
    return (
        "## Global rigidity of random k-regular graphs (paper App. A.5, Fig. 5)\n\n"
        f"Fraction of {config.graphs} random k-regular graphs per cell that are generically globally rigid in d-D; "
        "in brackets the fraction rigid when it differs; * marks k >= n - 1 (the complete graph). "
        f"Exact tests over GF(2^31 - 1), {config.trials} random placements per test.\n\n"
        f"{table}\n\n"
        + (f"Extra settings:\n\n{extra}\n\n" if extra_rows else "")
        + (f"Figure: {figure.name}\n" if figure is not None else "")
        + f"Total time {seconds:.0f} s.\n"
    )


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(RigidityConfig)}
    config = apply_overrides(PRESETS[args.preset], {k: v for k, v in vars(args).items() if k in fields})
    torch.set_num_threads(max(1, int(getattr(args, "threads", 1) or 1)))
    run_dir = make_run_dir(args.out, "rigidity")
    write_json(run_dir / "config.json", {"preset": args.preset, "config": config, "machine": machine_info()})
    print(f"rigidity: preset {args.preset!r}, run folder {run_dir}")
    settings = [(n, k, d, config.graphs, True) for d in config.ds for n in config.ns for k in config.ks]
    settings += [(n, k, d, g, False) for n, k, d, g in config.extra]
    start = time.perf_counter()
    records = []
    show = not getattr(args, "no_progress", False)
    for n, k, d, graphs, in_grid in progress(settings, desc="settings", total=len(settings), disable=not show):
        rec = run_setting(n, k, d, graphs, seed=config.seed, trials=config.trials)
        rec["grid"] = in_grid
        records.append(rec)
    seconds = time.perf_counter() - start
    write_csv(run_dir / "records.csv", records)
    figure = _plot(run_dir, records, config)
    write_json(
        run_dir / "metrics.json",
        {
            "extra": [r for r in records if not r["grid"]],
            "k_equals_2d": [r for r in records if r["grid"] and r["k"] == 2 * r["d"]],
            "seconds": seconds,
        },
    )
    write_summary(run_dir, _summary(records, config, seconds, figure))
    return 0
