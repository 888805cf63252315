r"""Training and evaluating the JODO-style model (:mod:`.jodo`): :func:`train_jodo`, :func:`evaluate_jodo`.

The loop is deliberately simple and follows JODO's recipe where that is cheap:

* AdamW (amsgrad, weight decay 1e-12) at ``lr`` (JODO: 2e-4) with a linear warm-up ``lr * min(step / warmup, 1)``;
* gradient clipping at a fixed norm (JODO's cap: 10; its adaptive queue is not reproduced);
* an EMA of the weights (JODO: 0.999), which is what :func:`evaluate_jodo` samples from.

Data is a :class:`JodoData`: padded molecules with bond orders and formal charges, built from a
:class:`~.data.Molecules` store and its :class:`~.bonds.BondGraphs` (e.g. :func:`~.bonds.load_qm9_bonds`). Each
batch is cut to its widest molecule.

Randomness is a function of ``(seed, step)``: the data order of epoch ``k`` comes from ``derived_generator(seed,
"jodo-order", k)``, the noise of step ``s`` from ``derived_generator(seed, "jodo-noise", s)`` and its dropout from
the global RNG seeded with ``derive_seed(seed, "jodo-dropout", s)``. So a run resumed from its checkpoint replays the
same stream.

The checkpoint (``<out>/checkpoint.pt``, written atomically) holds the model, the EMA, the optimiser, the step, the
configuration and the atom-count histogram. :func:`load_jodo` rebuilds the EMA model from it. The command line is
``energyloss run jodo`` (:mod:`.jodo_run`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..runs import atomic_save, config_changes, derive_seed, derived_generator
from .jodo import JodoConfig, JodoDiffusion, JodoSample

__all__ = ["JodoData", "JodoTrainConfig", "evaluate_jodo", "load_jodo", "load_jodo_data", "train_jodo"]

CHECKPOINT = "checkpoint.pt"
#: Training settings a checkpoint may be resumed with a different value of (more steps, other logging); every
#: other setting of the model and of training is fixed for a run (``energyloss run jodo`` checks the same).
EXTENDABLE_SETTINGS = ("steps", "checkpoint_every", "log_every")


@dataclasses.dataclass(frozen=True)
class JodoData:
    """Padded training molecules with bonds.

    Attributes:
        positions: ``(n, N, 3)`` Angstrom. atomic_numbers: ``(n, N)`` uint8, 0 on padding. mask: ``(n, N)`` bool.
        bonds: ``(n, N, N)`` uint8 bond orders (0 none, 1-3, 4 aromatic). formal_charges: ``(n, N)`` int8.
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    mask: torch.Tensor
    bonds: torch.Tensor
    formal_charges: torch.Tensor

    @classmethod
    def from_molecules(cls, molecules, graphs) -> JodoData:
        """From a :class:`~.data.Molecules` store and its matching :class:`~.bonds.BondGraphs`."""
        graphs.check_matches(molecules)
        pos, z, mask = molecules.to_padded()
        bonds, fc = graphs.to_dense(pad_to=pos.shape[1])
        # compact storage (QM9: 100k x 29 x 29 bond entries); batch() returns int64
        return cls(pos.float(), z.to(torch.uint8), mask, bonds.to(torch.uint8), fc.to(torch.int8))

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def histogram(self) -> dict[int, int]:
        """Atom count -> number of molecules (the sampling prior)."""
        values, counts = torch.unique(self.mask.sum(-1), return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The molecules at ``idx``, cut to their widest one, on ``device``."""
        width = int(self.mask[idx].sum(-1).max())
        return {
            "positions": self.positions[idx, :width].to(device),
            "atomic_numbers": self.atomic_numbers[idx, :width].long().to(device),
            "mask": self.mask[idx, :width].to(device),
            "bonds": self.bonds[idx, :width, :width].long().to(device),
            "formal_charges": self.formal_charges[idx, :width].long().to(device),
        }


@dataclasses.dataclass(frozen=True)
class JodoTrainConfig:
    """Settings of :func:`train_jodo` (JODO's QM9 values in brackets where they differ)."""

    steps: int = 1000  # [1.5M]
    batch_size: int = 64  # [128 in the repo's config, 192 per the notes]
    lr: float = 2e-4
    warmup: int = 0  # [100k]
    weight_decay: float = 1e-12
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    position_loss: str = "kabsch_mse"
    loss_weights: tuple[float, float, float] = (1.0, 0.25, 0.1)
    k0: float | None = None
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50


def load_jodo_data(name: str, *, progress: bool = True) -> JodoData:
    """The training molecules of ``energyloss run jodo --data NAME``: ``"qm9"`` (QM9's training split with bonds,
    :func:`~.bonds.load_qm9_bonds`) or ``"toy"`` (the hand-built molecules of :func:`~.jodo.toy_bonded_set`)."""
    if name == "toy":
        from .jodo import toy_bonded_set

        return JodoData.from_molecules(*toy_bonded_set(8))
    if name == "qm9":
        from .bonds import load_qm9_bonds

        qm9 = load_qm9_bonds("train", progress=progress)
        return JodoData.from_molecules(qm9.molecules, qm9.graphs)
    raise ValueError(f"data must be 'qm9' or 'toy'; got {name!r}")


def _build(model_cfg: JodoConfig, cfg: JodoTrainConfig) -> JodoDiffusion:
    return JodoDiffusion(model_cfg, position_loss=cfg.position_loss, loss_weights=cfg.loss_weights, k0=cfg.k0)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def _config_dict(model_cfg: JodoConfig, cfg: JodoTrainConfig) -> dict[str, Any]:
    return {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg)}


def _model_config(d: Mapping[str, Any]) -> JodoConfig:
    return JodoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def train_jodo(
    data: JodoData,
    *,
    model_cfg: JodoConfig | None = None,
    cfg: JodoTrainConfig | None = None,
    out: str | Path | None = None,
    device: torch.device | str = "cpu",
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on ``data`` for ``cfg.steps`` steps; resume from ``out/checkpoint.pt`` when it exists.

    Returns ``{"model", "ema", "step", "history": [{"step", "loss", "positions", "types", "bonds", "seconds"}],
    "histogram", "parameters", "seconds_per_step"}``. ``callback(step, record)`` is called every ``log_every`` steps.
    """
    model_cfg = model_cfg or JodoConfig()
    cfg = cfg or JodoTrainConfig()
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = _build(model_cfg, cfg).to(device)
    ema = _build(model_cfg, cfg).to(device)
    ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
    step, history = 0, []
    histogram = data.histogram()
    ckpt = None if out is None else Path(out) / CHECKPOINT
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        stored, now = state["config"], _config_dict(model_cfg, cfg)
        train_keys = [k for k in sorted(set(stored["train"]) | set(now["train"])) if k not in EXTENDABLE_SETTINGS]
        clash = config_changes(stored["model"], now["model"]) + config_changes(
            stored["train"], now["train"], keys=train_keys
        )
        if clash:
            raise ValueError(f"{ckpt} belongs to a run with other settings ({'; '.join(clash)}); use another --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])

    def save() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": history,
            "config": _config_dict(model_cfg, cfg),
            "histogram": histogram,
        }
        atomic_save(ckpt, lambda p: torch.save(state, p))

    n = len(data)
    per_epoch = max(n // cfg.batch_size, 1)
    model.train()
    t_start, steps_run = time.perf_counter(), 0
    while step < cfg.steps:
        epoch, pos = divmod(step, per_epoch)
        order = torch.randperm(n, generator=derived_generator(cfg.seed, "jodo-order", epoch))
        idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        if idx.numel() == 0:  # fewer molecules than a batch: take them all
            idx = order
        batch = data.batch(idx, device)
        lr = cfg.lr * (min((step + 1) / cfg.warmup, 1.0) if cfg.warmup > 0 else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, "jodo-dropout", step))  # dropout: replayed on resume as well
        out_loss = model.loss(**batch, generator=derived_generator(cfg.seed, "jodo-noise", step))
        opt.zero_grad(set_to_none=True)
        out_loss["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(gnorm):
            opt.step()
            _ema_update(ema, model, cfg.ema_decay)
        step += 1
        steps_run += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "loss": float(out_loss["loss"].detach()),
                **{k: float(out_loss[k].detach().mean()) for k in ("positions", "types", "bonds")},
                "grad_norm": float(gnorm),
                "seconds": time.perf_counter() - t0,
            }
            history.append(record)
            if callback is not None:
                callback(step, record)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save()
    save()
    elapsed = time.perf_counter() - t_start
    return {
        "model": model,
        "ema": ema,
        "step": step,
        "history": history,
        "histogram": histogram,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": elapsed / steps_run if steps_run else math.nan,
    }


def load_jodo(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[JodoDiffusion, dict[int, int]]:
    """The EMA model of a :func:`train_jodo` checkpoint (file or run folder) and its atom-count histogram."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    state = torch.load(path, map_location=device, weights_only=False)
    cfg_d = state["config"]
    train = dict(cfg_d["train"])
    train["loss_weights"] = tuple(train["loss_weights"])
    model = _build(_model_config(cfg_d["model"]), JodoTrainConfig(**train)).to(device)
    model.load_state_dict(state["ema"])
    return model.eval(), {int(k): int(v) for k, v in state["histogram"].items()}


def evaluate_jodo(
    model: JodoDiffusion,
    histogram: Mapping[int, int],
    *,
    num_samples: int,
    batch_size: int = 256,
    steps: int = 1000,
    seed: int = 0,
    reference=None,
    fcd: bool = False,
    mmd: bool = False,
    save_to: str | Path | None = None,
    device: torch.device | str | None = None,
    n_jobs: int = 1,
    score: bool = True,
) -> dict[str, Any]:
    """Sample ``num_samples`` molecules and compute the Table 3 metrics (:func:`~.table3_metrics.evaluate_table3`).

    The molecules use the sampled bond orders and formal charges (JODO's 2-D metrics) and their positions (3-D
    metrics). ``save_to`` writes them with :func:`~.data.save_molecules` (``bonds=``, ``formal_charges=``).
    Returns the metrics with ``sampling_seconds`` added. ``score=False`` only samples (and saves): the metrics are
    ``None`` (e.g. on a machine without RDKit; score the saved file later with ``eval-molecules --table3``).
    """
    from .bonds import BondGraphs
    from .data import Molecules, sample_node_counts, save_molecules
    from .table3_metrics import evaluate_table3

    device = torch.device(device) if device is not None else next(model.parameters()).device
    gen = derived_generator(seed, "jodo-sample")
    t0 = time.perf_counter()
    parts: list[JodoSample] = []
    counts = sample_node_counts(histogram, num_samples, generator=gen)
    for start in range(0, num_samples, batch_size):
        parts.append(model.sample(counts[start : start + batch_size], steps=steps, generator=gen, device=device))
    sampling_seconds = time.perf_counter() - t0
    decoded = [p.molecules() for p in parts]
    mols = Molecules.concat([m for m, _ in decoded])
    graphs = BondGraphs.concat([g for _, g in decoded])
    if save_to is not None:
        positions, z, mask = mols.to_padded()
        bonds, fc = graphs.to_dense(pad_to=positions.shape[1])
        save_molecules(save_to, positions, z, mask=mask, bonds=bonds, formal_charges=fc)
    if score:
        result = evaluate_table3(mols, graphs, reference=reference, fcd=fcd, mmd=mmd, n_jobs=n_jobs)
    else:
        result = {"3d": None, "2d": None}
    result["sampling_seconds"] = round(sampling_seconds, 2)
    result["num_samples"] = num_samples
    result["sampling_steps"] = steps
    return result
