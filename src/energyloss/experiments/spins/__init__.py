"""Spin-glass ground-state prediction (paper §6.3, Table 5): ``energyloss run spins``.

A CNN reads the couplings of a 16 x 16 Ising spin glass (J ~ U[-1, 1], open boundaries) and predicts one logit per
site; it is trained with the cross-entropy, margin, local-field energy and true energy losses (plus flip-invariant
versions of the supervised ones) and scored by the energy of ``sign(logits)`` on test instances. Ground states are
exact (:mod:`.solver`), generated once and cached (:mod:`.data`).

Label convention: the ground state is unique only up to the global flip; targets are stored with the first site
``+1``. Cross-entropy, margin and the local-field energy loss depend on that convention (the network must learn it);
the true-energy loss and the ``*_flip`` losses do not.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import numpy as np

from energyloss.experiments.runs import (
    JobStore,
    atomic_save,
    fingerprint,
    log,
    markdown_table,
    mean_std,
    open_run_folder,
    progress,
    write_csv,
    write_json,
    write_summary,
)

from .data import load_or_generate
from .train import LOSSES, PAPER_TABLE5, SpinsConfig, data_spec, job_settings

__all__ = ["CONFIG", "DESCRIPTION", "OPTION_HELP", "PRESETS", "SpinsConfig", "run_config"]

DESCRIPTION = "spin-glass ground states, 16x16 (paper 6.3, Table 5): CE / margin / local energy / true energy"

_ALL_LOSSES = (
    "cross_entropy",
    "margin",
    "local_energy",
    "true_energy",
    "cross_entropy_flip",
    "local_energy_flip",
)

CONFIG = SpinsConfig

PRESETS: dict[str, SpinsConfig] = {
    # seconds: a 6x6 lattice, a tiny CNN, two epochs; checks the plumbing only
    "smoke": SpinsConfig(
        size=6,
        n_train=64,
        n_val=16,
        n_test=32,
        channels=8,
        depth=2,
        batch_size=32,
        max_epochs=2,
        patience=2,
        losses=_ALL_LOSSES,
        seeds=(0,),
        workers=1,
    ),
    # about 15 minutes on 2 shared CPU cores: fewer instances, a narrower CNN, fewer epochs than the paper
    "default": SpinsConfig(
        n_train=3_000,
        n_val=500,
        n_test=2_000,
        channels=32,
        depth=6,
        batch_size=32,
        max_epochs=10,
        patience=4,
        losses=_ALL_LOSSES,
        seeds=(0, 1),
        workers=2,
    ),
    # paper App. C.3: 10k/10k instances, 6-layer 256-channel ResNet, batch 256, Adam 1e-3, until convergence
    "paper": SpinsConfig(
        n_train=10_000,
        n_val=1_000,
        n_test=10_000,
        channels=256,
        depth=6,
        batch_size=256,
        max_epochs=200,
        patience=20,
        losses=_ALL_LOSSES,
        seeds=(0, 1, 2),
        workers=1,
    ),
}


OPTION_HELP: dict[str, str] = {
    "size": "lattice side L",
    "periodic": "periodic boundaries (MILP solver: slow)",
    "n_train": "training instances",
    "n_val": "validation instances (early stopping)",
    "n_test": "test instances",
    "data_seed": "seed of the instances",
    "channels": "CNN width",
    "depth": "residual blocks",
    "batch_size": "instances per step",
    "lr": "Adam learning rate",
    "max_epochs": "epochs at most",
    "patience": "early-stopping patience (epochs without a better val energy)",
    "temperature": "T of the local and true energy losses",
    "h0": "offset of the local-field weights (> 4: data is the unique minimiser)",
    "margin": "margin of the hinge losses",
    "losses": "losses, from " + ", ".join(LOSSES),
    "seeds": "training seeds",
    "workers": "parallel processes (data generation and training jobs)",
    "threads": "torch threads per process",
    "device": "torch device, e.g. cpu or cuda",
    "amp": "bfloat16 autocast for the CNN on CUDA",
    "time_limit": "seconds of training per job before it stops early (none: no limit)",
    "cache_dir": "data cache (none: $ENERGYLOSS_CACHE or ~/.cache/energyloss)",
}


def _job_name(loss: str, seed: int) -> str:
    return f"{loss}-seed{seed}"


def _job(task: tuple) -> dict:
    """Worker entry point: train one (loss, seed) job and save its result (and weights) under ``jobs``."""
    import torch

    from energyloss.experiments.options import config_from_json

    from .train import train_job

    config_dict, loss, seed, fp, paths, sizes, jobs = task
    config = config_from_json(SpinsConfig, config_dict)
    torch.set_num_threads(config.threads)
    splits = {}
    for split, path in paths.items():
        with np.load(path) as f:
            splits[split] = {k: f[k][: sizes[split]] for k in ("couplings", "spins", "energies")}
    out = train_job(config, loss, seed, splits)
    name = _job_name(loss, seed)
    atomic_save(Path(jobs) / f"{name}.pt", lambda p: torch.save(out["state_dict"], p))
    result = {"record": out["record"], "curve": out["curve"]}
    JobStore(jobs).save(name, fp, result)
    return result


def _fmt(values: list[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _plot(run_dir: Path, results: list[dict], losses: tuple[str, ...]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no training-curve plot (pip install 'energyloss[plots]')")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, loss in enumerate(losses):
        for j, res in enumerate(r for r in results if r["record"]["loss"] == loss):
            xs = [c["epoch"] for c in res["curve"]]
            ys = [c["val_residual"] for c in res["curve"]]
            ax.plot(xs, ys, color=colours[k % len(colours)], alpha=0.8, label=loss if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation residual energy  E(pred) - E(ground)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "training_curves.png"
    atomic_save(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def _summarise(config: SpinsConfig, results: list[dict], data_info: dict, seconds: float) -> tuple[str, dict]:
    rows, metrics = [], {}
    for loss in config.losses:
        recs = [r["record"] for r in results if r["record"]["loss"] == loss]
        if not recs:
            continue
        res = [r["test_residual"] for r in recs]
        metrics[loss] = {
            key: dict(zip(("mean", "std"), mean_std([r[key] for r in recs]), strict=True))
            for key in ("test_residual", "test_energy", "test_site_accuracy", "test_exact", "best_epoch")
        }
        metrics[loss]["seeds"] = [r["seed"] for r in recs]
        paper = PAPER_TABLE5.get(loss)
        rows.append(
            {
                "loss": loss,
                "residual": _fmt(res),
                "energy": _fmt([r["test_energy"] for r in recs]),
                "accuracy": _fmt([100 * r["test_site_accuracy"] for r in recs]),
                "exact": _fmt([100 * r["test_exact"] for r in recs]),
                "epochs": _fmt([r["best_epoch"] for r in recs], 0),
                "paper": f"{paper[0]} ± {paper[1]}" if paper else "–",
            }
        )
    ground = results[0]["record"]["test_energy_ground"] if results else float("nan")
    table = markdown_table(
        rows,
        ["loss", "residual", "energy", "accuracy", "exact", "epochs", "paper"],
        headers=[
            "loss",
            "test residual E - E_gs",
            "test energy E",
            "site acc. %",
            "exact GS %",
            "best epoch",
            "paper Table 5",
        ],
    )
    text = (
        f"## Spin-glass ground states ({config.size}x{config.size}, "
        f"{'periodic' if config.periodic else 'open'} boundaries)\n\n"
        f"{config.n_train} train / {config.n_val} val / {config.n_test} test instances; CNN {config.depth} blocks x "
        f"{config.channels} channels; batch {config.batch_size}, Adam {config.lr}, <= {config.max_epochs} epochs "
        f"(patience {config.patience}); T = {config.temperature}, h0 = {config.h0}; seeds {list(config.seeds)}.\n"
        f"Mean ± std over seeds. Mean ground-state energy of the test set: {ground:.2f}.\n\n"
        f"{table}\n\n"
        "Data: " + ", ".join(f"{split} {how}" for split, how in data_info.items()) + ".\n"
        f"Total time {seconds / 60:.1f} min.\n"
    )
    return text, metrics


def run_config(config: SpinsConfig, *, out: str | None, preset: str) -> int:
    """Run the experiment for a resolved, validated ``config`` into the run folder ``out``.

    Each (loss, seed) job is kept in ``jobs/`` with the fingerprint of every setting that can change its result
    (:func:`.train.job_settings`): a rerun in the same folder keeps the jobs whose settings match and redoes the
    others, so the tables always describe the settings of this run.
    """
    import torch

    start = time.perf_counter()
    torch.set_num_threads(config.threads)
    run_dir = open_run_folder(out, "spins", config, preset=preset)
    store = JobStore(run_dir / "jobs")
    log(f"spins: preset {preset!r}, run folder {run_dir}")
    if preset != "paper":
        log(
            f"  (smaller than the paper: {config.n_train} training instances, CNN {config.depth}x{config.channels};"
            " --preset paper for the full setting)"
        )

    spec = data_spec(config)
    paths, sizes, data_info = {}, {}, {}
    for split, n in (("train", config.n_train), ("val", config.n_val), ("test", config.n_test)):
        _, info = load_or_generate(spec, split, n, cache_dir=config.cache_dir, workers=config.workers)
        paths[split], sizes[split] = info["path"], n
        rate = info["instances_per_second"]
        data_info[split] = "cached" if info["cached"] else f"{rate:.0f} instances/s"
        log(f"  {split}: {n} instances, {data_info[split]} ({info['path']})")

    jobs = [(loss, seed) for seed in config.seeds for loss in config.losses]
    config_dict = dataclasses.asdict(config)
    tasks, found, redone = [], {}, 0
    for loss, seed in jobs:
        fp = fingerprint(job_settings(config, loss, seed))
        saved = store.load(_job_name(loss, seed), fp)
        if saved is not None:  # resume: a finished job with the same settings is kept
            found[(loss, seed)] = saved
        else:
            redone += store.path(_job_name(loss, seed)).exists()
            tasks.append((config_dict, loss, seed, fp, paths, sizes, str(store.folder)))
    if found or redone:
        again = f" ({redone} of them saved with other settings or unreadable: redone)" if redone else ""
        log(f"  resuming: {len(found)} finished jobs kept, {len(tasks)} to run{again}")
    results = list(found.values())
    if config.workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(config.workers, len(tasks))) as pool:
            results.extend(progress(pool.imap_unordered(_job, tasks), desc="training", total=len(tasks)))
    else:
        results.extend(_job(task) for task in progress(tasks, desc="training", total=len(tasks)))
    results.sort(key=lambda r: jobs.index((r["record"]["loss"], r["record"]["seed"])))

    records = [r["record"] for r in results]
    write_csv(run_dir / "records.csv", records)
    curves = [{"loss": r["record"]["loss"], "seed": r["record"]["seed"], **c} for r in results for c in r["curve"]]
    write_csv(run_dir / "curves.csv", curves)
    seconds = time.perf_counter() - start
    text, metrics = _summarise(config, results, data_info, seconds)
    write_json(
        run_dir / "metrics.json",
        {"per_loss": metrics, "paper_table5": PAPER_TABLE5, "data": data_info, "seconds": seconds},
    )
    _plot(run_dir, results, config.losses)
    write_summary(run_dir, text)
    return 0
