r"""Regular-shape prediction (paper §6.1, Fig. 3a/b/c, App. C.1, A.7): ``energyloss run shapes``.

An MLP ``1 -> 64 -> 64 -> 2N`` reads the radius ``r ~ U[0.3, 5]`` of a regular ``N``-gon and predicts its
vertices; the training targets are rotated by ``U[-theta_aug, theta_aug]``. With full augmentation the MSE optimum
is the rotation average, a point, whereas the rotation-invariant losses (energy, Kabsch-aligned MSE) keep the right
shape. The run trains every loss over a learning-rate grid and seeds, sweeps ``theta_aug`` (Fig. 3b) and ``N``
(Fig. 3c, sparse versus dense energy), trains a conditional flow-matching variant (App. A.7), and writes:

- ``config.json`` (resolved configuration, machine), ``metrics.json`` (``records``: one per trained model;
  ``flow_records``; ``summary`` rows), ``records.csv``, ``flow_records.csv``;
- ``fig3a_samples.png``, ``fig3b_theta.png``, ``fig3c_vertices.png``, ``flow_samples.png``;
- ``summary.md`` (also printed); ``groups/`` (per-group results, used to resume an interrupted run: a rerun with
  the same ``--out`` keeps the groups trained with the same settings).

Losses are specs of the experiments' one vocabulary (:mod:`energyloss.experiments.losses`), e.g. ``mse``,
``kabsch_mse``, ``energy:exp``, ``sparse_energy:exp``. The options are generated from :class:`ShapesConfig`
(:mod:`energyloss.experiments.options`): ``energyloss run shapes --help`` lists them with the preset's values.

Modules: :mod:`.config` (settings, presets), :mod:`.data` (polygons), :mod:`.metrics` (quality, distance RMSE, radius
ratio), :mod:`.models` (stacked MLPs, per-model-rate Adam), :mod:`.train`, :mod:`.flow`, :mod:`.experiment`,
:mod:`.plots`.
"""

from __future__ import annotations

import math
import time

from energyloss.experiments.losses import parse_loss_spec
from energyloss.experiments.runs import (
    log,
    machine_info,
    open_run_folder,
    write_csv,
    write_json,
    write_summary,
)

from .config import ALL_LOSS_SPECS, FLAGS, PRESETS, SELECT_BY, ShapesConfig, pi_label, record_spec
from .experiment import plan_tasks, run_tasks, select_best, summary_markdown, summary_rows

__all__ = [
    "CONFIG",
    "DESCRIPTION",
    "OPTION_CHOICES",
    "OPTION_FLAGS",
    "OPTION_HELP",
    "PRESETS",
    "ShapesConfig",
    "run_config",
]

DESCRIPTION = (
    "regular polygons from their radius (paper 6.1, Fig. 3): MSE / MAE / Kabsch / energy / sparse energy "
    "under rotation augmentation, vs theta_aug and N, plus flow matching"
)

CONFIG = ShapesConfig

_SPECS = "loss specs NAME[:SCHEME[:OPTIONS]]"

#: Help of every option (``energyloss run shapes --help`` adds the value of the preset).
OPTION_HELP: dict[str, str] = {
    "n_train": "training shapes per seed",
    "n_val": "validation shapes (learning-rate selection)",
    "n_test": "test shapes",
    "radius_range": "r_min,r_max of the radius distribution U[r_min, r_max]",
    "hidden": "hidden widths of the MLP (paper: 64,64)",
    "epochs": "training epochs",
    "batch_size": "shapes per step and model",
    "lrs": "learning-rate grid (Adam)",
    "seeds": "seeds (mean ± std over them)",
    "select_by": f"validation metric picking the learning rate: {', '.join(SELECT_BY)}",
    "n_vertices": "N of the loss comparison and the theta sweep",
    "theta_aug_over_pi": "augmentation angle of the loss comparison, in units of pi",
    "losses": f"losses compared, {_SPECS} (mse, mae, kabsch_mse, energy:SCHEME, sparse_energy:SCHEME); "
    f"all: {','.join(ALL_LOSS_SPECS)}",
    "theta_sweep": "theta_aug values of Fig. 3b, in units of pi (none: skip)",
    "theta_losses": "losses of the theta sweep",
    "n_sweep": "vertex counts of Fig. 3c (none: skip)",
    "n_losses": "losses of the vertex sweep",
    "graph_degree": "degree k of the sparse graphs (paper: 2D = 4); a spec's k=K overrides it",
    "graph_pool_size": "random rigid graphs per N for sparse_energy",
    "graph_seed": "seed of the sparse graph pools",
    "flow_losses": "losses of the flow-matching variant (none: skip it)",
    "flow_n_train": "flow matching: training shapes per seed",
    "flow_epochs": "flow matching: epochs",
    "flow_batch_size": "flow matching: batch size",
    "flow_hidden": "flow matching: hidden widths of the velocity MLP",
    "flow_lrs": "flow matching: learning-rate grid",
    "flow_seeds": "flow matching: seeds",
    "flow_sample_steps": "flow matching: Euler steps when sampling",
    "flow_t_min": "flow matching: smallest training time t (the 1/t^2 weight is infinite at 0)",
    "flow_noise_scale": "flow matching: standard deviation of the noise",
    "flow_n_test": "flow matching: test shapes",
    "n_figure": "shapes drawn per panel of the sample figures",
    "plots": "write the PNG figures (--no-plots: skip them)",
    "workers": "parallel worker processes (one thread each)",
    "threads": "torch threads when --workers 1 (none: torch's default)",
    "device": "torch device to train on (cpu, cuda); data and metrics stay on the CPU",
}
#: Flags that are not the field name.
OPTION_FLAGS: dict[str, str] = dict(FLAGS)
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"select_by": SELECT_BY}


def _figures(results: dict) -> dict:
    """``{(task, loss spec, seed, lr): figure shapes}`` of every trained group."""
    out = {}
    for res in results.values():
        task = res["task"]
        kind = "flow_matching" if task["kind"] == "flow" else "regression"
        for idx, shapes in res.get("figure", {}).items():
            _, lr, seed = task["specs"][int(idx)]
            out[(kind, str(record_spec(task)), seed, lr)] = shapes
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


def run_config(cfg: ShapesConfig, *, out: str | None, preset: str) -> int:
    """Run the experiment for a resolved, validated ``cfg`` into the run folder ``out`` (default: a dated one).

    Reusing a folder resumes its run: groups saved there with the same settings are kept (see
    :func:`.experiment.run_tasks`), the others are trained.
    """
    run_dir = open_run_folder(out, "shapes", cfg, preset=preset)
    machine = machine_info()
    how = "--config" if preset == "config" else f"--preset {preset}"
    tasks = plan_tasks(cfg)
    n_models = sum(len(t["specs"]) for t in tasks)
    log(
        f"energyloss run shapes {how}: {n_models} models in {len(tasks)} groups, "
        f"{cfg.workers} worker(s); run folder {run_dir}"
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
        f"## energyloss run shapes {how}\n\n"
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
    if cfg.plots:
        _plot_all(cfg, run_dir, records, flow_records, rows, figures)
    write_summary(run_dir, text)
    log(f"\nrun folder: {run_dir}")
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
    theta_labels = {parse_loss_spec(s).label for s in cfg.theta_losses}
    theta_rows = [r for r in rows if r["N"] == cfg.n_vertices and r["loss"] in theta_labels]
    if len({r["theta_aug/pi"] for r in theta_rows}) > 1:
        plot_sweep(
            theta_rows,
            run_dir / "fig3b_theta.png",
            x="theta_aug/pi",
            xlabel="θ_aug / π",
            title=f"Fig. 3b: rotation augmentation, N = {cfg.n_vertices} (best lr, mean ± std over seeds)",
        )
    n_labels = {parse_loss_spec(s).label for s in cfg.n_losses}
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
