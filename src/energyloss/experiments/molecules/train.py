r"""``energyloss run qm9``: diffusion models on QM9 trained with MSE, MAE, Kabsch-MSE or the energy loss (§6.2).

``--data geom-drugs`` trains the same models on GEOM-Drugs (EDM's ``geom_drugs_30.npy``, streamed from disk:
:mod:`.geom`; paper App. C.2.2 is ``--preset paper-geom``), evaluated with EDM's GEOM protocol by default
(``--stability-table``, :mod:`.geom_tables`).

One run trains one denoiser of the model registry (:mod:`.registry`: ``--model gdm | gdm-aug | egnn``) with one
positional loss, or a sweep over several (``--losses mse,energy:exp,kabsch_mse``; the grammar of
:mod:`energyloss.experiments.losses`), each with the same data, steps and seed (compute-matched). Each loss trains
into ``<out>/<loss-tag>/`` (:mod:`.trainer`: checkpoint, samples, records); the sweep folder ``<out>/`` gets the
union of the records, ``convergence.png`` (the metrics against epochs and training time, one line per loss) and
``summary.md`` (the final metrics and the data they came from, also printed).

Modules: :mod:`.config` (:class:`~.config.QM9Config`, presets, options), :mod:`.registry` (models and the paper's
hyper-parameters), :mod:`.datasets` (QM9 or synthetic training data), :mod:`.trainer` (one model),
:mod:`.distributed` (torchrun: ``torchrun --nproc-per-node K -m energyloss.cli run qm9 ...``; gloo on CPU, NCCL on
GPUs).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from ..losses import parse_loss_spec
from ..runs import log, markdown_table, open_run_folder, read_json, write_csv, write_json, write_summary
from .config import (
    OPTION_CHOICES,
    OPTION_FLAGS,
    OPTION_HELP,
    PRESETS,
    QM9_ELEMENTS,
    RESUME_KEYS,
    QM9Config,
    add_extra_arguments,
    extra_overrides,
)
from .datasets import (
    check_data,
    describe_data,
    load_training_set,
    resolve_data,
    stability_tables,
    synthetic_molecules,
)
from .distributed import destroy, maybe_init_distributed, rank_world
from .trainer import nearest_neighbour_distances, train_model, wasserstein_1d

__all__ = [  # CONFIG, PRESETS, OPTION_*, add_extra_arguments, extra_overrides, run_config: read by energyloss.cli
    "CONFIG",
    "DESCRIPTION",
    "OPTION_CHOICES",
    "OPTION_FLAGS",
    "OPTION_HELP",
    "add_extra_arguments",
    "extra_overrides",
    "PRESETS",
    "QM9_ELEMENTS",
    "QM9Config",
    "nearest_neighbour_distances",
    "run_config",
    "run_sweep",
    "synthetic_molecules",
    "train_model",
    "wasserstein_1d",
]

DESCRIPTION = "QM9 molecule diffusion (GDM, GDM-aug, EDM) with MSE / MAE / Kabsch / energy losses (§6.2, Tab. 2, 8)"
CONFIG = QM9Config
OPTION_EXCLUDE: tuple[str, ...] = ()
#: Sweep settings that a run folder must keep: a change is refused (its losses' checkpoints could not resume).
_FIXED = tuple(k for k in RESUME_KEYS if k != "loss")
_PERCENT = ("atom_stability", "molecule_stability", "validity", "uniqueness", "novelty")


def _data_name(cfg: QM9Config) -> str:
    return "GEOM-Drugs" if cfg.data == "geom-drugs" else "QM9"


def _plot(records: list[dict[str, Any]], path: Path, data_name: str = "QM9") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the plots extra
        log("convergence plot skipped: matplotlib is not installed (pip install 'energyloss[plots]')")
        return None
    panels = [
        ("epoch", "molecule_stability", "epoch", "molecule stability (%)"),
        ("epoch", "atom_stability", "epoch", "atom stability (%)"),
        ("epoch", "validity", "epoch", "validity (%)"),
        ("epoch", "nn_distance_w1", "epoch", f"nearest-neighbour W1 to {data_name} (Å)"),
        ("train_minutes", "atom_stability", "training time (min)", "atom stability (%)"),
    ]
    panels = [p for p in panels if any(r.get(p[1]) is not None for r in records)]  # e.g. no W1 in old records
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for loss in dict.fromkeys(r["loss"] for r in records):
        rs = [r for r in records if r["loss"] == loss]
        for ax, (xkey, ykey, _, _) in zip(axes, panels, strict=True):
            xs = [r["train_seconds"] / 60 if xkey == "train_minutes" else r[xkey] for r in rs]
            scale = 1.0 if ykey == "nn_distance_w1" else 100.0
            ax.plot(xs, [scale * (r.get(ykey) or 0) for r in rs], marker="o", label=loss)
    for ax, (_, _, xlabel, ylabel) in zip(axes, panels, strict=True):
        ax.set(xlabel=xlabel, ylabel=ylabel)
    axes[0].legend()
    fig.suptitle(f"{records[0]['model']} on {data_name}: stability of EMA samples during training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _summary(cfg: QM9Config, records: list[dict[str, Any]], data: str) -> str:
    final = []
    for loss in dict.fromkeys(r["loss"] for r in records):
        last = [r for r in records if r["loss"] == loss][-1]
        final.append(
            {k: (100 * v if isinstance(v, float) and k in _PERCENT else v) for k, v in last.items()}
            | {"train_minutes": last["train_seconds"] / 60}
        )
    columns = {
        "loss": "loss",
        "epoch": "epochs",
        "step": "steps",
        "train_minutes": "train min",
        "molecule_stability": "mol. stab. %",
        "atom_stability": "atom stab. %",
        "validity": "valid %",
        "uniqueness": "unique %",
        "nn_distance_w1": "NN W1 (Å)",
    }
    table = markdown_table(final, list(columns), headers=list(columns.values()), floatfmt=".4g")
    tables = stability_tables(cfg)
    return (
        f"# {_data_name(cfg)} diffusion: {cfg.model}, {cfg.n_layers} layers x {cfg.hidden_nf}, batch {cfg.batch_size}"
        + ("" if cfg.precision == "fp32" else f", {cfg.precision} denoiser")
        + f"\n\nData: {data}.\n\n{table}\n\n"
        f"{cfg.n_eval_samples} EMA samples per evaluation ({cfg.n_final_samples or cfg.n_eval_samples} at the end), "
        f"{cfg.sampling_steps or cfg.diffusion_steps} sampling steps of {cfg.diffusion_steps}. "
        f"Stability table: {tables.name} (bond table {tables.bonds.key}, valence table {tables.valences.key}, "
        f"validity with {tables.validity_orders} bond orders).\n"
    )


def run_sweep(
    cfg: QM9Config, out: str | os.PathLike | None, *, show_progress: bool = True, preset: str | None = None
) -> list[dict[str, Any]]:
    """Train every loss of ``cfg.losses`` (compute-matched) into ``out/<loss-tag>/`` and aggregate the results."""
    cfg = resolve_data(cfg.validate())
    check_data(cfg)  # a missing GEOM file is one line, before any run folder exists
    maybe_init_distributed(cfg.device)
    rank, _ = rank_world()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if torch.cuda.is_available() and cfg.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls in the network (losses do not use matmul)
    prefix = "geom-drugs" if cfg.data == "geom-drugs" else "qm9"
    run_dir = open_run_folder(out, f"{prefix}-{cfg.model}", cfg, preset=preset, fixed=_FIXED) if rank == 0 else None
    from .distributed import dist

    d = dist()
    if d is not None:  # every rank needs the folder rank 0 chose
        holder = [str(run_dir)]
        d.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    assert run_dir is not None
    if rank == 0:
        log(f"energyloss run qm9: {len(cfg.losses)} loss(es) of {cfg.model} on {cfg.data}; run folder {run_dir}")
    records: list[dict[str, Any]] = []
    tags = {spec: parse_loss_spec(spec).tag for spec in cfg.losses}
    if cfg.jobs > 1:
        if d is not None:
            raise ValueError("jobs > 1 cannot be combined with torchrun")
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_train_job, cfg, spec, str(run_dir / tags[spec])) for spec in cfg.losses]
            for fut in futures:
                records += fut.result()
        # the jobs loaded the data; each wrote its size into its config.json (rank 0: no torchrun here)
        n_train = read_json(run_dir / tags[cfg.losses[0]] / "config.json", what="config file")["n_train"]
    else:
        train_set = load_training_set(cfg)
        n_train = len(train_set)
        matched: int | None = None
        for spec in cfg.losses:
            run_cfg = cfg
            if cfg.train_minutes is not None and matched is not None:  # compute-matched: the first loss's steps
                run_cfg = dataclasses.replace(cfg, train_minutes=None, max_steps=matched)
            out_records = train_model(
                run_cfg, spec, run_dir / tags[spec], train_set=train_set, show_progress=show_progress
            )
            if matched is None and out_records:
                matched = out_records[-1]["step"]
            records += out_records
    if rank == 0:
        write_csv(run_dir / "records.csv", records)
        write_json(
            run_dir / "metrics.json",
            {"data": describe_data(cfg, n_train), "stability_table": stability_tables(cfg).name, "records": records},
        )
        _plot(records, run_dir / "convergence.png", _data_name(cfg))
        write_summary(run_dir, _summary(cfg, records, describe_data(cfg, n_train)))
        log(f"run folder: {run_dir}")
    return records


def _train_job(cfg: QM9Config, spec: str, run_dir: str) -> list[dict[str, Any]]:
    """One loss of a ``jobs > 1`` sweep, in its own process."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    return train_model(cfg, spec, run_dir, show_progress=False)


def run_config(cfg: QM9Config, *, out: str | None, preset: str) -> int:
    """Run the sweep of a resolved config (the command line's entry point)."""
    try:
        run_sweep(cfg, out, preset=preset)
    finally:
        destroy()
    return 0
