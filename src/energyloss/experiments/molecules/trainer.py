r"""Training one molecule diffusion model with one positional loss: :class:`Trainer` and its :class:`TrainState`.

Training (EDM's recipe, see :mod:`.diffusion_model`): Adam (or the authors' AdamW with amsgrad and weight decay
1e-12), EDM's adaptive gradient clipping (max norm = 1.5 mean + 2 std of the last 50 norms) or a fixed norm, an
EMA of the weights (evaluation samples from it), and evaluation every ``eval_every`` epochs with the metrics of
:mod:`.metrics` under the run's named protocol (``stability_table``: EDM's QM9 or GEOM tables, or the GEOM-Drugs
revisited valences, :mod:`.geom_tables`) on molecules drawn by ancestral sampling with the training set's
atom-count histogram. The one-hot columns are the training set's ``elements`` (QM9: 5, GEOM-Drugs: EDM's 16);
the data source also fixes whether the nuclear charge is a feature (:func:`.datasets.data_settings`).

Randomness is a function of ``(seed, step)``: the data order of an epoch is a permutation seeded by
``(seed, 0, epoch)``, the noise of a step by ``(seed, 1, step)`` (drawn for the whole global batch), the sparse
graphs by ``(seed, 3, step, rank)`` and the evaluation samples by ``(seed, 2, step, rank)``. So resuming replays the
same stream, and data-parallel training computes the same gradients as one process on the same global batch: each
rank takes a contiguous slice of the batch and of its noise, and its summed loss is divided by the *global* batch
size (DDP then averages over ranks). Metrics are reduced across ranks by :class:`~.metrics.MoleculeMetrics` (sums)
and the training loss by an all-reduce. Rank 0 writes every file.

A run folder ``<out>/<loss-tag>/`` holds ``config.json``, ``checkpoint.pt`` (the :class:`TrainState`: an
interrupted run resumes from it exactly), ``samples.npz`` and ``samples/step-*.npz`` (the evaluations' molecules),
``records.csv`` and ``metrics.json`` (one record per evaluation).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..losses import LossSpec, parse_loss_spec
from ..runs import (
    atomic_save,
    config_changes,
    derived_generator,
    log,
    progress,
    read_json,
    with_machine_history,
    write_csv,
    write_json,
)
from .config import QM9_ELEMENTS, RESUME_KEYS, QM9Config
from .diffusion_model import MoleculeDiffusion
from .distributed import all_reduce_sum, dist, rank_world, resolve_device
from .models import build_dynamics, count_parameters
from .registry import get_model, resolve_hyperparameters

__all__ = [
    "CHECKPOINT",
    "GradNormQueue",
    "TrainState",
    "Trainer",
    "build_model",
    "evaluate",
    "nearest_neighbour_distances",
    "train_model",
    "wasserstein_1d",
]

CHECKPOINT = "checkpoint.pt"
#: Atom pairs per chunk of :func:`nearest_neighbour_distances` (32 MiB of float64 distances).
_NN_PAIR_BUDGET = 2**22
_METRICS = ("atom_stability", "molecule_stability", "validity", "uniqueness", "novelty")


class GradNormQueue:
    """EDM's adaptive clipping: max norm = 1.5 mean + 2 std (population) of the last ``size`` gradient norms.

    Example:
        >>> q = GradNormQueue()
        >>> q.max_norm()  # seeded with 3000
        4500.0
    """

    def __init__(self, size: int = 50, initial: float = 3000.0) -> None:
        self.size = size
        self.values = [float(initial)]

    def max_norm(self) -> float:
        v = np.asarray(self.values)
        return float(1.5 * v.mean() + 2 * v.std())

    def add(self, value: float) -> None:
        self.values = (self.values + [float(value)])[-self.size :]


def build_model(
    cfg: QM9Config,
    spec: str | LossSpec,
    device: torch.device,
    *,
    elements: tuple[int, ...] = QM9_ELEMENTS,
    include_charges: bool = True,
) -> tuple[MoleculeDiffusion, float]:
    """The diffusion model of ``cfg.model`` with the positional loss ``spec``, and its learning rate.

    ``elements`` are the one-hot columns (the training set's); ``include_charges`` adds the nuclear charge as a
    feature. The weights depend only on ``cfg.seed`` (identical for every loss of a sweep and every rank).
    """
    spec = parse_loss_spec(spec)
    entry = get_model(cfg.model)
    lr, weight = resolve_hyperparameters(cfg.model, spec, lr=cfg.lr, position_weight=cfg.position_weight)
    pool = None
    if spec.name == "sparse_energy":
        from energyloss.rigidity import RigidGraphPool

        pool = RigidGraphPool(3, k=spec.degree, size=100, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    in_node_nf = len(elements) + int(include_charges)
    dynamics = build_dynamics(entry.dynamics, in_node_nf, hidden_nf=cfg.hidden_nf, n_layers=cfg.n_layers)
    model = MoleculeDiffusion(
        dynamics,
        n_types=len(elements),
        include_charges=include_charges,
        steps=cfg.diffusion_steps,
        position_loss=spec,
        k0=cfg.k0,
        position_weight=weight,
        pool=pool,
        coefficient_distance=cfg.coefficient_distance,
        precision=cfg.precision,
    )
    return model.to(device), lr


def _optimizer(cfg: QM9Config, params, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if cfg.optimizer == "adamw":  # the authors' EDM fork
        return torch.optim.AdamW(params, lr=lr, amsgrad=True, weight_decay=1e-12)
    raise ValueError(f"optimizer must be 'adam' or 'adamw', got {cfg.optimizer!r}")


@dataclasses.dataclass
class TrainState:
    """Everything a training run carries from step to step; what ``checkpoint.pt`` holds."""

    model: MoleculeDiffusion
    ema: MoleculeDiffusion
    optimizer: torch.optim.Optimizer
    queue: GradNormQueue
    step: int = 0
    train_seconds: float = 0.0
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_norms": list(self.queue.values),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "records": self.records,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.queue.values = list(state["grad_norms"])
        self.step, self.train_seconds, self.records = state["step"], state["train_seconds"], state["records"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]


def _check_resumable(path: Path, stored: dict[str, Any], now: dict[str, Any]) -> None:
    # a checkpoint from before a setting existed used its default
    stored = dataclasses.asdict(QM9Config()) | stored
    clash = config_changes(stored, now, keys=[k for k in RESUME_KEYS if k in now])
    if clash:
        raise ValueError(f"{path} belongs to a run with other settings ({'; '.join(clash)}); use another --out")


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(p.detach(), alpha=1 - decay)


def evaluate(
    model: MoleculeDiffusion,
    histogram: dict[int, int],
    *,
    n_samples: int,
    batch_size: int,
    sampling_steps: int | None,
    generator: torch.Generator,
    reference_smiles: set[str] | None = None,
    elements: tuple[int, ...] = QM9_ELEMENTS,
    tables=None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Sample ``n_samples`` molecules (this rank's share under DDP) and compute their metrics (all ranks).

    ``elements``: the model's one-hot columns; ``tables``: a :class:`~.metrics.StabilityTable` (default EDM's
    QM9 protocol). Returns the metrics (reduced over ranks) and this rank's samples (padded, on the CPU).
    """
    from .data import sample_node_counts
    from .metrics import MoleculeMetrics, rdkit_version

    rank, world = rank_world()
    share = n_samples // world + (1 if rank < n_samples % world else 0)
    use_rdkit = rdkit_version() is not None  # without RDKit: stability only (evaluate samples.npz elsewhere)
    # a diverged sample (NaN coordinates) is a failed generation: it counts against the model, not out of the ratios
    metric = MoleculeMetrics(
        reference_smiles=reference_smiles if use_rdkit else None, tables=tables, use_rdkit=use_rdkit, non_finite="fail"
    )
    pieces = []
    was_training = model.training
    model.eval()
    for start in range(0, share, batch_size):
        counts = sample_node_counts(histogram, min(batch_size, share - start), generator=generator)
        out = model.sample(counts, elements=elements, steps=sampling_steps, generator=generator)
        metric.update(out["positions"].cpu(), out["atomic_numbers"].cpu(), mask=out["mask"].cpu())
        pieces.append({k: v.cpu() for k, v in out.items()})
    model.train(was_training)
    return metric.compute(), _pad_cat(pieces)


def nearest_neighbour_distances(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distance from every real atom to its nearest real atom, ``(M,)``, for molecules of at least 2 atoms.

    ``positions: (B, N, 3)``, ``mask: (B, N)``. A cheap geometric diagnostic of samples: its distribution peaks at
    the bond lengths (1.09 Angstrom for C-H, 1.4-1.5 for C-C) for real molecules.

    Example:
        >>> pos = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]])
        >>> nearest_neighbour_distances(pos, torch.ones(1, 3, dtype=torch.bool)).tolist()
        [1.0, 1.0, 2.0]
    """
    b, n = mask.shape
    if b * n * n > _NN_PAIR_BUDGET:  # large molecules (GEOM): bounded memory, molecules are independent
        step = max(1, _NN_PAIR_BUDGET // (n * n))
        parts = [nearest_neighbour_distances(positions[k : k + step], mask[k : k + step]) for k in range(0, b, step)]
        return torch.cat(parts) if parts else torch.zeros(0)
    d = torch.cdist(positions.double(), positions.double())
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(mask.shape[1], dtype=torch.bool)
    d = torch.where(pair, d, torch.inf)
    nn = d.min(-1).values
    return nn[mask & torch.isfinite(nn)].float()


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor, *, grid: int = 2000) -> float:
    r"""Wasserstein-1 distance between two empirical 1-D distributions: ``mean_q |Q_a(q) - Q_b(q)|``.

    Quantiles on ``grid`` evenly spaced levels (midpoints), which converges to the exact
    :math:`\int_0^1 |F_a^{-1} - F_b^{-1}|` as the grid is refined.

    Example:
        >>> round(wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.5])), 6)
        0.5
    """
    q = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    qa = torch.quantile(a.double(), q, interpolation="lower")
    qb = torch.quantile(b.double(), q, interpolation="lower")
    return float((qa - qb).abs().mean())


def _pad_cat(pieces: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not pieces:
        return {"positions": torch.zeros(0, 1, 3), "atomic_numbers": torch.zeros(0, 1, dtype=torch.long)}
    n = max(p["positions"].shape[1] for p in pieces)
    pos = torch.cat([torch.nn.functional.pad(p["positions"], (0, 0, 0, n - p["positions"].shape[1])) for p in pieces])
    z = torch.cat([torch.nn.functional.pad(p["atomic_numbers"], (0, n - p["atomic_numbers"].shape[1])) for p in pieces])
    return {"positions": pos, "atomic_numbers": z}


class Trainer:
    """Train (or resume) one model with one positional loss into ``run_dir``; :meth:`run` returns the records.

    Resumes from ``run_dir/checkpoint.pt`` when it exists (the :data:`~.config.RESUME_KEYS` must match).
    ``on_step(global_step)`` is called after every optimiser step (and after any checkpoint of that step): tests
    use it to interrupt. Under torch.distributed every rank runs this; rank 0 writes the files.
    """

    def __init__(
        self,
        cfg: QM9Config,
        spec: str | LossSpec,
        run_dir: str | os.PathLike,
        *,
        train_set=None,
        on_step: Callable[[int], None] | None = None,
        show_progress: bool = True,
    ) -> None:
        from .datasets import data_settings, load_training_set, reference_smiles, resolve_data, stability_tables

        self.cfg, self.spec = cfg, str(parse_loss_spec(spec))
        self.run_dir = Path(run_dir)
        self.rank, self.world = rank_world()
        self.device = resolve_device(cfg.device)
        self.on_step, self.show_progress = on_step, show_progress
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.train_set = load_training_set(cfg) if train_set is None else train_set
        self.histogram = self.train_set.node_count_histogram()
        self.num_atoms = self.train_set.num_atoms
        self.elements = tuple(int(e) for e in self.train_set.elements)
        self.include_charges = data_settings(resolve_data(cfg).data).include_charges
        self.tables = stability_tables(cfg)
        self.n_train = len(self.train_set)
        self.steps_per_epoch = max(1, self.n_train // cfg.batch_size)  # drop the last partial batch
        total = int(math.ceil(cfg.epochs * self.steps_per_epoch))
        self.total_steps = min(total, int(cfg.max_steps)) if cfg.max_steps is not None else total
        self.eval_steps = max(1, int(round(cfg.eval_every * self.steps_per_epoch)))
        self.time_limit = None if cfg.train_minutes is None else 60.0 * cfg.train_minutes
        self.augment = get_model(cfg.model).augment

        model, self.lr = build_model(
            cfg, self.spec, self.device, elements=self.elements, include_charges=self.include_charges
        )
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        self.state = TrainState(model, ema, _optimizer(cfg, model.parameters(), self.lr), GradNormQueue())
        self.net = model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.config = dataclasses.asdict(cfg) | {"loss": self.spec}
        self.checkpoint_path = self.run_dir / CHECKPOINT
        if self.checkpoint_path.is_file():
            saved = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
            _check_resumable(self.checkpoint_path, saved["config"], self.config)
            self.state.load_state_dict(saved)
        self.reference_smiles = reference_smiles(cfg, self.train_set)
        ref = self.train_set.get_batch(torch.arange(min(self.n_train, 2000)))
        self.reference_nn = nearest_neighbour_distances(ref["positions"], ref["mask"])
        self._perm, self._perm_epoch = None, -1

    # -- files -----------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        if self.rank != 0:
            return
        model = self.state.model
        path = self.run_dir / "config.json"
        write_json(
            path,
            with_machine_history(
                self.config
                | {
                    "lr": self.lr,
                    "position_weight": model.position_weight,
                    "coefficients": repr(model.coefficients),
                    "parameters": count_parameters(model),
                    "n_train": self.n_train,
                    "elements": list(self.elements),
                    "include_charges": self.include_charges,
                    "stability_table": self.tables.name,
                    "steps_per_epoch": self.steps_per_epoch,
                    "total_steps": self.total_steps,
                    "world_size": self.world,
                },
                read_json(path, what="config file"),
            ),
        )

    def checkpoint(self) -> None:
        """Save the :class:`TrainState` atomically (rank 0)."""
        if self.rank != 0:
            return
        state = {"config": json.loads(json.dumps(self.config))} | self.state.state_dict()
        atomic_save(self.checkpoint_path, lambda p: torch.save(state, p))

    # -- one step, one evaluation ------------------------------------------------------------------------------

    def train_step(self) -> None:
        """One optimiser step on the next global batch (this rank's slice of it)."""
        cfg, s = self.cfg, self.state
        epoch, within = divmod(s.step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(self.n_train, generator=derived_generator(cfg.seed, 0, epoch))
            self._perm_epoch = epoch
        t0 = time.perf_counter()
        idx = self._perm[within * cfg.batch_size : (within + 1) * cfg.batch_size]
        noise = s.model.draw_noise(
            len(idx),
            int(self.num_atoms[idx].max()),
            generator=derived_generator(cfg.seed, 1, s.step),
            rotations=self.augment,
        )
        lo, hi = (len(idx) * self.rank) // self.world, (len(idx) * (self.rank + 1)) // self.world
        batch = self.train_set.get_batch(idx[lo:hi])
        out = self.net(
            batch["positions"].to(self.device),
            batch["one_hot"].to(self.device),
            batch["charges"].to(self.device),
            batch["mask"].to(self.device),
            {k: v[lo:hi] for k, v in noise.items()},
            edge_generator=derived_generator(cfg.seed, 3, s.step, self.rank),
        )
        loss = out["loss"].sum() * (self.world / len(idx))
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip == "queue":
            max_norm = s.queue.max_norm()
            norm = float(torch.nn.utils.clip_grad_norm_(s.model.parameters(), max_norm))
            s.queue.add(min(norm, max_norm))
        elif cfg.grad_clip != "none":
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), float(cfg.grad_clip))
        s.optimizer.step()
        decay = min(cfg.ema_decay, (1 + s.step) / (10 + s.step)) if cfg.ema_warmup else cfg.ema_decay
        _ema_update(s.ema, s.model, decay)
        s.loss_sum += float(out["loss"].detach().sum())
        s.loss_count += hi - lo
        s.train_seconds += time.perf_counter() - t0
        s.step += 1

    def evaluate(self) -> dict[str, Any]:
        """Sample from the EMA weights, compute the metrics, append and write the record (rank 0)."""
        cfg, s = self.cfg, self.state
        t0 = time.perf_counter()
        final = s.step >= self.total_steps
        metrics, samples = evaluate(
            s.ema,
            self.histogram,
            n_samples=(cfg.n_final_samples or cfg.n_eval_samples) if final else cfg.n_eval_samples,
            batch_size=cfg.eval_batch_size,
            sampling_steps=cfg.sampling_steps,
            generator=derived_generator(cfg.seed, 2, s.step, self.rank),
            reference_smiles=self.reference_smiles,
            elements=self.elements,
            tables=self.tables,
        )
        eval_seconds = time.perf_counter() - t0
        totals = all_reduce_sum([s.loss_sum, s.loss_count], self.device)
        d = dist()
        if d is not None:
            gathered: list[Any] = [None] * self.world
            d.all_gather_object(gathered, samples)
            samples = _pad_cat([g for g in gathered if g["positions"].shape[0]])
        nn = nearest_neighbour_distances(samples["positions"], samples["atomic_numbers"] > 0)
        record = {
            "loss": self.spec,
            "model": cfg.model,
            "step": s.step,
            "epoch": s.step / self.steps_per_epoch,
            "train_seconds": s.train_seconds,
            "eval_seconds": eval_seconds,
            "train_loss": totals[0] / totals[1] if totals[1] else None,
            **{k: metrics[k] for k in _METRICS},
            "nn_distance_w1": wasserstein_1d(nn, self.reference_nn) if nn.numel() else None,
            "n_samples": metrics["n_molecules"],
            "stability_table": self.tables.name,
        }
        s.records.append(record)
        s.loss_sum = s.loss_count = 0.0
        if self.rank == 0:
            self._log_record(record)
            self._write_samples(samples)
            write_csv(self.run_dir / "records.csv", s.records)
            write_json(self.run_dir / "metrics.json", {"final": record, "records": s.records})
        return record

    def _log_record(self, r: dict[str, Any]) -> None:
        def pct(key: str) -> str:
            return "–" if r[key] is None else f"{100 * r[key]:.1f} %"

        w1 = "–" if r["nn_distance_w1"] is None else f"{r['nn_distance_w1']:.3f} Å"
        loss = "–" if r["train_loss"] is None else f"{r['train_loss']:.4g}"
        log(
            f"[{r['model']} {r['loss']}] epoch {r['epoch']:.2f} step {r['step']}/{self.total_steps} "
            f"({r['train_seconds'] / 60:.1f} min): loss {loss}, atom stab. {pct('atom_stability')}, "
            f"mol. stab. {pct('molecule_stability')}, valid {pct('validity')}, NN W1 {w1}"
        )

    def _write_samples(self, samples: dict[str, torch.Tensor]) -> None:
        from .data import save_molecules

        if samples["positions"].shape[0]:
            save_molecules(self.run_dir / "samples.npz", samples["positions"], samples["atomic_numbers"])
            (self.run_dir / "samples").mkdir(exist_ok=True)
            path = self.run_dir / "samples" / f"step-{self.state.step:07d}.npz"
            save_molecules(path, samples["positions"], samples["atomic_numbers"])

    # -- the loop ------------------------------------------------------------------------------------------------

    def _out_of_time(self) -> bool:
        if self.time_limit is None or self.state.step >= self.total_steps:
            return False
        over = float(self.state.train_seconds >= self.time_limit)
        return all_reduce_sum([over], self.device)[0] > 0  # every rank stops at the same step

    def _finished(self) -> bool:
        """Trained to ``total_steps`` and evaluated there (the last record is at the current step)."""
        s = self.state
        return s.step >= self.total_steps and bool(s.records) and s.records[-1]["step"] == s.step

    def run(self) -> list[dict[str, Any]]:
        """Train to ``total_steps`` (evaluating and checkpointing on the way); returns every record.

        A finished run (:meth:`_finished`) trains nothing and keeps its ``config.json`` as it is, so the record of
        the machine that trained it is not replaced by that of a process that only reopened it.
        """
        s = self.state
        if not (self._finished() and (self.run_dir / "config.json").is_file()):
            self._write_config()
        s.model.train()
        steps = progress(
            range(s.step, self.total_steps),
            desc=f"{self.cfg.model} {self.spec}",
            total=self.total_steps - s.step,
            disable=not self.show_progress or self.rank != 0,
        )
        for _ in steps:
            self.train_step()
            if self._out_of_time():
                self.total_steps = s.step
            periodic = s.step % self.eval_steps == 0 and self.total_steps - s.step >= self.eval_steps // 2
            if periodic or s.step == self.total_steps:
                self.evaluate()
            if s.step % self.cfg.checkpoint_every == 0 or s.step == self.total_steps or periodic:
                self.checkpoint()
            if self.on_step is not None:
                self.on_step(s.step)
            if s.step >= self.total_steps:
                break
        if not self._finished():  # the loop ends at total_steps; stopped there without its final evaluation
            self.evaluate()
            self.checkpoint()
        return s.records


def train_model(
    cfg: QM9Config,
    loss_spec: str | LossSpec,
    run_dir: str | os.PathLike,
    *,
    train_set=None,
    on_step: Callable[[int], None] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train (or resume) one model with one positional loss; returns its evaluation records (:class:`Trainer`)."""
    trainer = Trainer(cfg, loss_spec, run_dir, train_set=train_set, on_step=on_step, show_progress=show_progress)
    return trainer.run()
