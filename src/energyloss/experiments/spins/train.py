"""Training and evaluation of one (loss, seed) job of the spin-glass experiment (paper §6.3, App. C.3)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from energyloss.experiments.losses import SPIN_LOSSES, parse_spin_loss
from energyloss.spins import (
    flip_invariant_loss,
    ising_energy,
    local_field_energy_loss,
    spin_cross_entropy_loss,
    spin_margin_loss,
    spins_from_logits,
    true_energy_loss,
)

from .data import SpinDataSpec
from .model import SpinResNet

__all__ = [
    "LOSSES",
    "NON_RESULT_FIELDS",
    "SpinsConfig",
    "data_spec",
    "evaluate",
    "job_settings",
    "make_loss",
    "train_job",
]

#: The losses compared (name -> one-line description), the spin family of the experiments' loss vocabulary
#: (:data:`energyloss.experiments.losses.SPIN_LOSSES`). "_flip" = invariant to the global spin flip.
LOSSES: dict[str, str] = SPIN_LOSSES

#: Paper Table 5 ("Test energy", mean ± std).
PAPER_TABLE5: dict[str, tuple[float, float]] = {
    "cross_entropy": (58.8, 0.8),
    "margin": (49.87, 1.5),
    "local_energy": (45.6, 1.6),
    "true_energy": (14.6, 0.3),
}


@dataclasses.dataclass(frozen=True)
class SpinsConfig:
    """Resolved configuration of a run (see ``PRESETS`` in the package for the named ones).

    ``amp``: bfloat16 autocast for the network on CUDA (losses and energies stay in float32 / float64).
    ``time_limit``: seconds of training per job after which it stops early (a safety net; ``None`` = none).
    ``cache_dir``: the data cache (``None``: ``$ENERGYLOSS_CACHE`` or ``~/.cache/energyloss``, see :mod:`.data`).
    ``workers``, ``threads`` and ``cache_dir`` never change a result; every other field can (see
    :func:`job_settings`). :meth:`validate` checks the options (the command line calls it).
    """

    size: int = 16
    periodic: bool = False
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 10_000
    data_seed: int = 0
    channels: int = 256
    depth: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    max_epochs: int = 200
    patience: int = 20
    temperature: float = 0.1
    h0: float = 5.0
    margin: float = 1.0
    losses: tuple[str, ...] = ("cross_entropy", "margin", "local_energy", "true_energy")
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 2
    threads: int = 1
    device: str = "cpu"
    amp: bool = False
    time_limit: float | None = None
    cache_dir: str | None = None

    def validate(self) -> SpinsConfig:
        """Raise ``ValueError`` naming the first bad option (as its flag); return ``self`` with canonical losses."""
        if self.size < 2:
            raise ValueError(f"--size: the lattice side must be >= 2, got {self.size}")
        for name in _POSITIVE:
            _positive(name, getattr(self, name))
        if self.data_seed < 0:
            raise ValueError(f"--data-seed: must be >= 0, got {self.data_seed}")
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds: seeds must be distinct and >= 0, got {','.join(map(str, self.seeds))}")
        for name in ("lr", "temperature", "margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{_flag(name)}: must be a positive number, got {value:g}")
        if not math.isfinite(self.h0):
            raise ValueError(f"--h0: must be a finite number, got {self.h0:g}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"--time-limit: must be positive (or none), got {self.time_limit:g}")
        if not self.losses:
            raise ValueError("--losses: give at least one loss")
        try:
            losses = tuple(parse_spin_loss(name) for name in self.losses)
        except ValueError as err:
            raise ValueError(f"--losses: {err}") from None
        if len(set(losses)) != len(losses):
            raise ValueError(f"--losses: a loss is given twice in {','.join(losses)}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device: not a torch device: {self.device!r}") from None
        return dataclasses.replace(self, losses=losses)


#: Options that must be positive integers.
_POSITIVE = (
    "n_train",
    "n_val",
    "n_test",
    "channels",
    "depth",
    "batch_size",
    "max_epochs",
    "patience",
    "workers",
    "threads",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{_flag(name)}: must be a positive integer, got {value}")


#: Fields of :class:`SpinsConfig` that never change the result of a (loss, seed) job.
NON_RESULT_FIELDS = ("losses", "seeds", "workers", "threads", "cache_dir")
#: Bump when the training procedure changes what a job returns for the same settings.
JOB_FORMAT = 1


def data_spec(config: SpinsConfig) -> SpinDataSpec:
    """The data set of a run (the cache key of its splits)."""
    return SpinDataSpec(size=config.size, periodic=config.periodic, seed=config.data_seed)


def job_settings(config: SpinsConfig, loss: str, seed: int) -> dict:
    """Every setting that can change the result of the job ``(loss, seed)``: its fingerprint's content.

    The data spec, the split sizes, the model, the training settings (device and autocast included), the loss and
    the seed; not the execution settings of :data:`NON_RESULT_FIELDS`.

    Example:
        >>> a = job_settings(SpinsConfig(), "margin", 0)
        >>> a == job_settings(SpinsConfig(workers=7, seeds=(0, 5)), "margin", 0), a == job_settings(
        ...     SpinsConfig(size=4), "margin", 0)
        (True, False)
    """
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NON_RESULT_FIELDS}
    return {
        "format": JOB_FORMAT,
        "data": dataclasses.asdict(data_spec(config)),
        **settings,
        "loss": parse_spin_loss(loss),
        "seed": seed,
    }


def make_loss(name: str, config: SpinsConfig) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``loss(logits (B, L, L), target (B, L, L) +-1, couplings (B, 2, L, L)) -> scalar`` for ``name``."""
    name = parse_spin_loss(name)
    t, h0, periodic = config.temperature, config.h0, config.periodic
    if name == "cross_entropy":
        return lambda z, y, J: spin_cross_entropy_loss(z, y)
    if name == "margin":
        return lambda z, y, J: spin_margin_loss(z, y, margin=config.margin)
    if name == "local_energy":
        return lambda z, y, J: local_field_energy_loss(z, y, J, h0=h0, temperature=t, periodic=periodic)
    if name == "true_energy":
        return lambda z, y, J: true_energy_loss(z, J, temperature=t, periodic=periodic)
    if name == "cross_entropy_flip":
        return lambda z, y, J: flip_invariant_loss(spin_cross_entropy_loss, z, y)
    if name == "margin_flip":
        return lambda z, y, J: flip_invariant_loss(spin_margin_loss, z, y, margin=config.margin)
    if name == "local_energy_flip":
        return lambda z, y, J: flip_invariant_loss(
            local_field_energy_loss, z, y, J, h0=h0, temperature=t, periodic=periodic
        )
    raise AssertionError(f"spin loss {name!r} of SPIN_LOSSES has no implementation in make_loss")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    couplings: Tensor,
    spins: Tensor,
    energies: Tensor,
    *,
    periodic: bool,
    batch_size: int = 512,
) -> dict[str, float]:
    """Test metrics of the configurations ``sign(logits)``.

    ``residual``: mean of E(pred) - E(ground state) (>= 0); ``energy``: mean raw E(pred); ``energy_ground``:
    mean ground-state energy; ``site_accuracy``: fraction of sites agreeing with the ground state up to the
    global flip; ``exact``: fraction of instances solved exactly (residual below 1e-6).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    residual, raw, acc, exact = [], [], [], []
    for start in range(0, len(couplings), batch_size):
        J = couplings[start : start + batch_size]
        pred = spins_from_logits(model(J.to(device)).float()).cpu().double()
        e = ising_energy(pred, J.double(), periodic=periodic)
        r = e - energies[start : start + batch_size]
        agree = (pred == spins[start : start + batch_size].double()).double().mean(dim=(-2, -1))
        residual.append(r)
        raw.append(e)
        acc.append(torch.maximum(agree, 1 - agree))
        exact.append((r < 1e-6).double())
    model.train(was_training)
    cat = torch.cat
    return {
        "residual": float(cat(residual).mean()),
        "energy": float(cat(raw).mean()),
        "energy_ground": float(energies.double().mean()),
        "site_accuracy": float(cat(acc).mean()),
        "exact": float(cat(exact).mean()),
    }


def _tensors(data: dict[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.from_numpy(np.asarray(data["couplings"], dtype=np.float32)),
        torch.from_numpy(np.asarray(data["spins"], dtype=np.float32)),
        torch.from_numpy(np.asarray(data["energies"], dtype=np.float64)),
    )


def train_job(
    config: SpinsConfig,
    loss_name: str,
    seed: int,
    splits: dict[str, dict[str, np.ndarray]],
    *,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train one model with ``loss_name`` and seed ``seed``; early stopping on the validation residual energy.

    Returns ``{"record": flat metrics, "curve": per-epoch list, "state_dict": best weights}``.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
    train_J, train_y, _ = _tensors(splits["train"])
    train_J, train_y = train_J.to(device), train_y.to(device)
    val = _tensors(splits["val"])
    test = _tensors(splits["test"])
    model = SpinResNet(channels=config.channels, depth=config.depth, periodic=config.periodic).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = make_loss(loss_name, config)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    curve = []
    start = time.perf_counter()
    n = len(train_J)
    epoch = 0
    stopped_by_time = False
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        total, count = 0.0, 0
        for a in range(0, n, config.batch_size):
            idx = order[a : a + config.batch_size].to(device)
            J, y = train_J[idx], train_y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
                logits = model(J)
            loss = loss_fn(logits.float(), y, J)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        metrics = evaluate(model, *val, periodic=config.periodic)
        curve.append(
            {
                "epoch": epoch,
                "train_loss": total / count,
                "val_residual": metrics["residual"],
                "val_site_accuracy": metrics["site_accuracy"],
                "seconds": time.perf_counter() - start,
            }
        )
        if metrics["residual"] < best[0]:
            best = (metrics["residual"], epoch, copy.deepcopy(model.state_dict()))
        if log is not None:
            log(f"{loss_name} seed {seed} epoch {epoch}: val residual {metrics['residual']:.2f}")
        if epoch - best[1] >= config.patience:
            break
        if config.time_limit is not None and time.perf_counter() - start > config.time_limit:
            stopped_by_time = True
            break
    model.load_state_dict(best[2])
    result = evaluate(model, *test, periodic=config.periodic)
    record = {
        "loss": loss_name,
        "seed": seed,
        "test_residual": result["residual"],
        "test_energy": result["energy"],
        "test_energy_ground": result["energy_ground"],
        "test_site_accuracy": result["site_accuracy"],
        "test_exact": result["exact"],
        "best_epoch": best[1],
        "epochs": epoch,
        "best_val_residual": best[0],
        "train_seconds": time.perf_counter() - start,
        "stopped_by_time": stopped_by_time,
    }
    return {"record": record, "curve": curve, "state_dict": best[2]}
