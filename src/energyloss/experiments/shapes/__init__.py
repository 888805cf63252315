r"""Regular-shape prediction (paper §6.1, Fig. 3a/b/c, App. C.1, A.7): ``energyloss run shapes``.

An MLP ``1 -> 64 -> 64 -> 2N`` reads the radius ``r ~ U[0.3, 5]`` of a regular ``N``-gon and predicts its
vertices; the training targets are rotated by ``U[-theta_aug, theta_aug]``. With full augmentation the MSE optimum
is the rotation average, a point, whereas the rotation-invariant losses (energy, Kabsch-aligned MSE) keep the right
shape. The run trains every loss over a learning-rate grid and seeds, sweeps ``theta_aug`` (Fig. 3b) and ``N``
(Fig. 3c, sparse versus dense energy), trains a conditional flow-matching variant (App. A.7), and writes:

- ``config.json`` (resolved configuration, machine), ``metrics.json`` (``records``: one per trained model;
  ``flow_records``; ``summary`` rows), ``records.csv``, ``flow_records.csv``;
- ``fig3a_samples.png``, ``fig3b_theta.png``, ``fig3c_vertices.png``, ``flow_samples.png``;
- ``summary.md`` (also printed); ``groups/`` (per-group results, used to resume an interrupted run).

Modules: :mod:`.data` (polygons), :mod:`.metrics` (quality, distance RMSE, radius ratio), :mod:`.losses`,
:mod:`.models` (stacked MLPs, per-model-rate Adam), :mod:`.train`, :mod:`.flow`, :mod:`.experiment`, :mod:`.plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

from energyloss.experiments.runs import (
    apply_overrides,
    machine_info,
    make_run_dir,
    write_csv,
    write_json,
    write_summary,
)

from .config import ALL_LOSS_SPECS, PRESETS, SELECT_BY, ShapesConfig, parse_loss_spec, pi_label
from .experiment import plan_tasks, run_tasks, select_best, summary_markdown, summary_rows

__all__ = ["DESCRIPTION", "PRESETS", "ShapesConfig", "add_arguments", "run"]

DESCRIPTION = (
    "regular polygons from their radius (paper 6.1, Fig. 3): MSE / MAE / Kabsch / energy / sparse energy "
    "under rotation augmentation, vs theta_aug and N, plus flow matching"
)

# CLI option -> (config field, type, nargs)
_OPTIONS: list[tuple[str, str, type, str | None, str]] = [
    ("--n-train", "n_train", int, None, "training shapes per seed"),
    ("--n-val", "n_val", int, None, "validation shapes (learning-rate selection)"),
    ("--n-test", "n_test", int, None, "test shapes"),
    ("--epochs", "epochs", int, None, "training epochs"),
    ("--batch-size", "batch_size", int, None, "shapes per step and model"),
    ("--hidden", "hidden", int, "+", "hidden widths of the MLP (paper: 64 64)"),
    ("--lrs", "lrs", float, "+", "learning-rate grid (Adam)"),
    ("--seeds", "seeds", int, "+", "seeds (mean ± std over them)"),
    ("--select-by", "select_by", str, None, f"validation metric picking the learning rate: {', '.join(SELECT_BY)}"),
    ("--n-vertices", "n_vertices", int, None, "N of the loss comparison and the theta sweep"),
    ("--theta-aug", "theta_aug_over_pi", float, None, "augmentation angle of the loss comparison, in units of pi"),
    ("--losses", "losses", str, "+", f"losses compared (loss or loss:coefficients); all: {' '.join(ALL_LOSS_SPECS)}"),
    ("--theta-sweep", "theta_sweep", float, "*", "theta_aug values of Fig. 3b, in units of pi (none: skip)"),
    ("--theta-losses", "theta_losses", str, "+", "losses of the theta sweep"),
    ("--n-sweep", "n_sweep", int, "*", "vertex counts of Fig. 3c (none: skip)"),
    ("--n-losses", "n_losses", str, "+", "losses of the vertex sweep"),
    ("--graph-pool-size", "graph_pool_size", int, None, "random rigid graphs per N for sparse_energy"),
    ("--graph-degree", "graph_degree", int, None, "degree k of the sparse graphs (paper: 2D = 4)"),
    ("--flow-losses", "flow_losses", str, "*", "losses of the flow-matching variant (none: skip it)"),
    ("--flow-n-train", "flow_n_train", int, None, "flow matching: training shapes per seed"),
    ("--flow-epochs", "flow_epochs", int, None, "flow matching: epochs"),
    ("--flow-batch-size", "flow_batch_size", int, None, "flow matching: batch size"),
    ("--flow-lrs", "flow_lrs", float, "+", "flow matching: learning-rate grid"),
    ("--flow-seeds", "flow_seeds", int, "+", "flow matching: seeds"),
    ("--flow-sample-steps", "flow_sample_steps", int, None, "flow matching: Euler steps when sampling"),
    ("--workers", "workers", int, None, "parallel worker processes (one thread each)"),
    ("--threads", "threads", int, None, "torch threads when --workers 1"),
    ("--device", "device", str, None, "torch device to train on (cpu, cuda); data and metrics stay on the CPU"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``energyloss run shapes`` (each overrides the preset's value when given)."""
    for flag, dest, typ, nargs, help_text in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=typ, nargs=nargs, default=None, help=help_text)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def _config_from_args(args: argparse.Namespace) -> ShapesConfig:
    base = PRESETS[getattr(args, "preset", "default") or "default"]
    overrides = {}
    for _, dest, _, nargs, _ in _OPTIONS:
        value = getattr(args, dest, None)
        if value is not None and nargs in ("+", "*"):
            value = tuple(value)
        overrides[dest] = value
    return apply_overrides(base, overrides).validate()


def _figures(results: dict) -> dict:
    out = {}
    for res in results.values():
        task = res["task"]
        kind = "flow_matching" if task["kind"] == "flow" else "regression"
        for idx, shapes in res.get("figure", {}).items():
            _, lr, seed = task["specs"][int(idx)]
            out[(kind, task["loss"], task["coefficients"], seed, lr)] = shapes
    return out


def _reading(cfg: ShapesConfig, rows: list[dict]) -> str:
    """A few sentences comparing MSE, Kabsch and exponential energy at the main setting, from the numbers."""
    at = {
        r["loss"]: r
        for r in rows
        if r["N"] == cfg.n_vertices and math.isclose(r["theta_aug/pi"], round(cfg.theta_aug_over_pi, 4))
    }
    names = [n for n in ("mse", "kabsch_mse", "energy[exp]", "sparse_energy[exp]") if n in at]
    if not names:
        return ""
    lines = [f"\n### Reading (θ_aug = {pi_label(cfg.theta_aug_over_pi)}, N = {cfg.n_vertices})\n"]
    for n in names:
        r = at[n]
        lines.append(
            f"- {n}: distance RMSE / r {r['distance_rmse']}, radius ratio {r['radius_ratio']}, "
            f"quality (C.1) {r['quality']}, quality (authors' code) {r['quality_authors']}"
        )
    if "mse" in at and cfg.theta_aug_over_pi > 0:
        shrink = round(math.sin(cfg.theta_aug) / cfg.theta_aug, 4)
        lines.append(
            f"- The MSE optimum under U[-θ, θ] rotations is the polygon scaled by sin(θ)/θ = {shrink:g}; "
            "a scaled regular polygon still scores a high (scale-blind) quality."
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the experiment for the parsed ``args`` (see :func:`add_arguments`); return 0 (2 for a bad option)."""
    try:
        cfg = _config_from_args(args)
    except ValueError as err:
        print(f"energyloss run shapes: {err}", file=sys.stderr)
        return 2
    preset = getattr(args, "preset", "default") or "default"
    run_dir = make_run_dir(getattr(args, "out", None), "shapes")
    machine = machine_info()
    write_json(
        run_dir / "config.json",
        {"preset": preset, "config": dataclasses.asdict(cfg), "machine": machine, "argv": sys.argv},
    )
    tasks = plan_tasks(cfg)
    n_models = sum(len(t["specs"]) for t in tasks)
    print(
        f"energyloss run shapes --preset {preset}: {n_models} models in {len(tasks)} groups, "
        f"{cfg.workers} worker(s); run folder {run_dir}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    results = run_tasks(tasks, cfg, run_dir)
    wall = time.perf_counter() - start

    all_records = [rec for task in tasks for rec in results[task["name"]]["records"]]  # in plan order
    records = select_best([r for r in all_records if r.get("task") != "flow_matching"], cfg.select_by)
    flow_records = select_best([r for r in all_records if r.get("task") == "flow_matching"], cfg.select_by)
    figures = _figures(results)

    rows = summary_rows(records)
    flow_rows = summary_rows(flow_records)
    header = (
        f"## energyloss run shapes --preset {preset}\n\n"
        f"{n_models} models, {wall:.0f} s wall ({cfg.workers} worker(s)); {machine['date']}, "
        f"{machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}. Run folder: {run_dir}"
    )
    text = summary_markdown(cfg, records, flow_records, header=header) + _reading(cfg, rows)

    write_json(
        run_dir / "metrics.json",
        {
            "preset": preset,
            "wall_seconds": wall,
            "select_by": cfg.select_by,
            "records": records,
            "flow_records": flow_records,
            "summary": rows,
            "flow_summary": flow_rows,
        },
    )
    write_csv(run_dir / "records.csv", records)
    if flow_records:
        write_csv(run_dir / "flow_records.csv", flow_records)
    if not getattr(args, "no_plots", False):
        _plot_all(cfg, run_dir, records, flow_records, rows, figures)
    write_summary(run_dir, text)
    print(f"\nrun folder: {run_dir}", file=sys.stderr)
    return 0


def _plot_all(cfg, run_dir, records, flow_records, rows, figures) -> None:
    from .plots import plot_samples, plot_sweep, sample_panels

    lo, hi = cfg.radius_range
    radii = [lo + 0.25 * (hi - lo) / cfg.n_figure, hi]
    main = [parse_loss_spec(s) for s in ("mse", "kabsch_mse", "energy:exp", "sparse_energy:exp")]
    main = [m for m in main if any(parse_loss_spec(s) == m for s in cfg.losses)] or [
        parse_loss_spec(s) for s in cfg.losses[:3]
    ]
    at_main = [
        r
        for r in records
        if r["n_vertices"] == cfg.n_vertices and math.isclose(r["theta_aug"], cfg.theta_aug, abs_tol=1e-9)
    ]
    panels = sample_panels(at_main, figures, main)
    if panels:
        plot_samples(
            panels,
            run_dir / "fig3a_samples.png",
            radius=radii,
            limit=hi * 1.1,
            title=f"Fig. 3a: predictions, θ_aug = {pi_label(cfg.theta_aug_over_pi)}, N = {cfg.n_vertices}",
        )
    theta_labels = {f"{lo_}[{co}]" if co else lo_ for lo_, co in map(parse_loss_spec, cfg.theta_losses)}
    theta_rows = [r for r in rows if r["N"] == cfg.n_vertices and r["loss"] in theta_labels]
    if len({r["theta_aug/pi"] for r in theta_rows}) > 1:
        plot_sweep(
            theta_rows,
            run_dir / "fig3b_theta.png",
            x="theta_aug/pi",
            xlabel="θ_aug / π",
            title=f"Fig. 3b: rotation augmentation, N = {cfg.n_vertices} (best lr, mean ± std over seeds)",
        )
    n_labels = {f"{lo_}[{co}]" if co else lo_ for lo_, co in map(parse_loss_spec, cfg.n_losses)}
    n_rows = [
        r for r in rows if math.isclose(r["theta_aug/pi"], round(cfg.theta_aug_over_pi, 4)) and r["loss"] in n_labels
    ]
    if len({r["N"] for r in n_rows}) > 1:
        plot_sweep(
            n_rows,
            run_dir / "fig3c_vertices.png",
            x="N",
            xlabel="N (vertices)",
            log_x=True,
            title=f"Fig. 3c: number of vertices, θ_aug = {pi_label(cfg.theta_aug_over_pi)}",
        )
    flow_panels = sample_panels(flow_records, figures, [parse_loss_spec(s) for s in cfg.flow_losses])
    if flow_panels:
        plot_samples(
            flow_panels,
            run_dir / "flow_samples.png",
            radius=radii,
            limit=hi * 1.1,
            title=f"Flow matching samples (App. A.7), θ_aug = {pi_label(cfg.theta_aug_over_pi)}, N = {cfg.n_vertices}",
        )
