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

import dataclasses
import math
import time
from pathlib import Path

import torch

from energyloss.experiments.runs import (
    JobStore,
    atomic_save,
    derive_seed,
    fingerprint,
    log,
    markdown_table,
    open_run_folder,
    progress,
    write_csv,
    write_json,
    write_summary,
)
from energyloss.rigidity import is_globally_rigid, is_rigid, random_regular_graph

__all__ = [
    "CONFIG",
    "DESCRIPTION",
    "OPTION_HELP",
    "PRESETS",
    "RigidityConfig",
    "run_config",
    "run_setting",
    "wilson_interval",
]

DESCRIPTION = "fraction of globally rigid random k-regular graphs over n, k, d (paper App. A.5, Fig. 5)"


@dataclasses.dataclass(frozen=True)
class RigidityConfig:
    """A grid ``ns x ks x ds`` with ``graphs`` graphs per setting, plus ``extra`` settings ``(n, k, d, graphs)``.

    ``threads`` (torch threads) never changes a result.
    """

    ns: tuple[int, ...] = (6, 8, 10, 12, 16, 32, 64)
    ks: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    ds: tuple[int, ...] = (2, 3)
    graphs: int = 200
    extra: tuple[tuple[int, int, int, int], ...] = ((30, 6, 3, 1000),)
    trials: int = 2
    seed: int = 0
    threads: int = 1

    def validate(self) -> RigidityConfig:
        """Raise ``ValueError`` naming the first bad option (as its flag); return ``self``."""
        for name in ("ns", "ks", "ds"):
            values = getattr(self, name)
            if any(v < 1 for v in values):
                raise ValueError(f"--{name}: every value must be a positive integer, got {_show_ints(values)}")
            if len(set(values)) != len(values):
                raise ValueError(f"--{name}: a value is given twice in {_show_ints(values)}")
        for name in ("graphs", "trials", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: must be a positive integer, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"--seed: must be >= 0, got {self.seed}")
        for item in self.extra:
            if len(item) != 4 or any(v < 1 for v in item):
                raise ValueError(f"--extra: settings are n:k:d:graphs of positive integers, got {_show_extra(item)}")
        if not (self.ns and self.ks and self.ds) and not self.extra:
            raise ValueError("--ns, --ks, --ds, --extra: no setting to run (the grid is empty and there are no extras)")
        return self


def _show_ints(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values)) or "none"


def _show_extra(item: tuple[int, ...]) -> str:
    return ":".join(map(str, item))


def _parse_extra(texts: list[str]) -> tuple[tuple[int, int, int, int], ...]:
    """``["30:6:3:1000,12:6:3:5"]`` (comma- or space-separated; ``none`` or nothing: no extra settings)."""
    items = [p.strip() for t in texts for p in t.split(",") if p.strip()]
    if len(items) == 1 and items[0].lower() in ("none", "null"):
        return ()
    out = []
    for item in items:
        try:
            parts = tuple(int(v) for v in item.split(":"))
        except ValueError:
            parts = ()
        if len(parts) != 4:
            raise ValueError(f"--extra: settings are n:k:d:graphs, got {item!r}")
        out.append(parts)
    return tuple(out)


CONFIG = RigidityConfig

PRESETS: dict[str, RigidityConfig] = {
    # seconds: a handful of small graphs; checks the plumbing only
    "smoke": RigidityConfig(ns=(6, 10), ks=(3, 4), ds=(2,), graphs=5, extra=((12, 6, 3, 5),)),
    # a few minutes on one CPU core; the small n are where k = 2d - 1 can still have enough edges to be rigid
    "default": RigidityConfig(ns=(6, 8, 10, 12, 16, 32, 64), ks=(2, 3, 4, 5, 6, 7, 8), ds=(2, 3), graphs=200),
    # the authors' grid (rigidity/main.py: n in 8..128, k in 3..7) in 2-D and 3-D with 1000 graphs per setting
    "paper": RigidityConfig(ns=(8, 16, 32, 64, 128), ks=(3, 4, 5, 6, 7), ds=(2, 3), graphs=1000),
}

OPTION_HELP: dict[str, str] = {
    "ns": "numbers of vertices n",
    "ks": "degrees k",
    "ds": "dimensions d",
    "graphs": "random graphs per (n, k, d) of the grid",
    "trials": "random placements per rigidity test (True answers are exact)",
    "seed": "base seed (each setting's generator is seeded from (seed, n, k, d))",
    "threads": "torch threads",
}
#: ``extra`` is a list of 4-tuples, which the generated options do not parse: its option is added by hand.
OPTION_EXCLUDE = ("extra",)


def add_extra_arguments(group) -> None:
    """The ``--extra`` option (its help shows each preset's value: the generated ones show the chosen preset's)."""
    shown = "; ".join(f"{name} {','.join(map(_show_extra, cfg.extra)) or 'none'}" for name, cfg in PRESETS.items())
    group.add_argument(
        "--extra",
        dest="extra_settings",
        nargs="*",
        default=None,
        metavar="N:K:D:GRAPHS",
        help=f"extra settings on top of the grid, e.g. 30:6:3:1000 (none: no extras) [presets: {shown}]",
    )


def extra_overrides(args, cfg: RigidityConfig) -> dict:
    """``--extra`` -> ``{"extra": ...}`` when given."""
    if getattr(args, "extra_settings", None) is None:
        return {}
    return {"extra": _parse_extra(args.extra_settings)}


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


def run_setting(n: int, k: int, d: int, graphs: int, *, seed: int = 0, trials: int = 2) -> dict:
    """Draw ``graphs`` random k-regular graphs on n vertices and count the rigid and globally rigid ones in d-D.

    >>> rec = run_setting(8, 4, 2, 3)
    >>> rec["graphs"], rec["globally_rigid"] <= rec["rigid"] <= 3
    (3, True)
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, n, k, d))
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


def _plot(run_dir: Path, records: list[dict], config: RigidityConfig) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no figure (pip install 'energyloss[plots]')")
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
    atomic_save(path, lambda p: fig.savefig(p, dpi=120, format="png"))
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


#: Bump when :func:`run_setting` changes what it returns for the same arguments.
SETTING_FORMAT = 1


def run_config(config: RigidityConfig, *, out: str | None, preset: str) -> int:
    """Run every setting of ``config`` into the run folder ``out``.

    Each setting's record is kept in ``settings/`` with the fingerprint of its arguments ``(n, k, d, graphs,
    seed, trials)``: a rerun in the same folder keeps the finished settings (their ``ms_per_graph`` is that of
    the run that measured them) and runs the others.
    """
    torch.set_num_threads(config.threads)
    run_dir = open_run_folder(out, "rigidity", config, preset=preset)
    store = JobStore(run_dir / "settings")
    log(f"rigidity: preset {preset!r}, run folder {run_dir}")
    settings = [(n, k, d, config.graphs, True) for d in config.ds for n in config.ns for k in config.ks]
    settings += [(n, k, d, g, False) for n, k, d, g in config.extra]
    start = time.perf_counter()
    records, kept = [], 0
    for n, k, d, graphs, in_grid in progress(settings, desc="settings", total=len(settings)):
        name = f"n{n}-k{k}-d{d}-g{graphs}"
        fp = fingerprint(
            {"format": SETTING_FORMAT, "n": n, "k": k, "d": d, "graphs": graphs, "seed": config.seed,
             "trials": config.trials}
        )  # fmt: skip
        rec = store.load(name, fp)
        if rec is None:
            rec = run_setting(n, k, d, graphs, seed=config.seed, trials=config.trials)
            store.save(name, fp, rec)
        else:
            kept += 1
        records.append({**rec, "grid": in_grid})
    if kept:
        log(f"  resumed: {kept} of {len(settings)} settings were finished in this run folder before")
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
