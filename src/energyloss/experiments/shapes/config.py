"""Configuration of the regular-shape experiment and its presets (smoke / default / paper).

Losses are specs of the experiments' one loss vocabulary (:mod:`energyloss.experiments.losses`):
``NAME[:SCHEME[:OPTIONS]]``, e.g. ``mse``, ``kabsch_mse``, ``energy:exp``, ``sparse_energy:exp:k=6``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from energyloss.experiments.losses import LossSpec, parse_loss_spec

__all__ = ["ALL_LOSS_SPECS", "FLAGS", "PRESETS", "SELECT_BY", "ShapesConfig", "pi_label", "record_spec"]

#: Every loss of the comparison (canonical spellings of the loss vocabulary).
ALL_LOSS_SPECS = (
    "mse",
    "mae",
    "kabsch_mse",
    "energy:constant",
    "energy:inverse",
    "energy:inverse_square",
    "energy:exp",
    "sparse_energy:exp",
)

#: Validation metrics that can pick the learning rate (``quality*``: higher is better; ``distance_rmse``: lower).
SELECT_BY = ("quality", "quality_authors", "quality_log_mean", "distance_rmse")

#: Command-line flags that are not the field name (``--theta-aug`` sets ``theta_aug_over_pi``).
FLAGS: dict[str, str] = {"theta_aug_over_pi": "--theta-aug"}


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def record_spec(record: Mapping) -> LossSpec:
    """The :class:`~energyloss.experiments.losses.LossSpec` of a training record (or task).

    Records keep ``loss`` and ``coefficients`` apart, and ``loss_spec`` (the canonical spec) only when the spec has
    options (``k0``, ``k``, ``symmetrize``).

    Example:
        >>> record_spec({"loss": "energy", "coefficients": "exp"}).label, record_spec({"loss": "mse"}).label
        ('energy[exp]', 'mse')
    """
    if record.get("loss_spec"):
        return parse_loss_spec(record["loss_spec"])
    coefficients = record.get("coefficients")
    return parse_loss_spec(f"{record['loss']}:{coefficients}" if coefficients else record["loss"])


def has_options(spec: LossSpec) -> bool:
    """Whether ``spec`` has options beyond its name and scheme (then records carry ``loss_spec``)."""
    return spec.k0 is not None or spec.degree is not None or spec.symmetrize


def pi_label(fraction: float) -> str:
    """An angle given in units of pi, for humans.

    Example:
        >>> pi_label(0.0), pi_label(1.0), pi_label(0.25)
        ('0', 'π', '0.25π')
    """
    if fraction == 0:
        return "0"
    return "π" if fraction == 1 else f"{fraction:g}π"


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that defines a run of ``energyloss run shapes``.

    Angles are given in units of pi (``theta_aug_over_pi = 1`` is full rotation augmentation, U[-pi, pi]).
    Three studies share the trained models: the loss comparison at (``theta_aug_over_pi``, ``n_vertices``), the
    augmentation sweep (Fig. 3b) at ``n_vertices`` and the vertex-count sweep (Fig. 3c) at ``theta_aug_over_pi``.
    """

    # data (paper §6.1)
    n_train: int = 10_000
    n_val: int = 500
    n_test: int = 1_000
    radius_range: tuple[float, float] = (0.3, 5.0)
    # model and optimisation (paper App. C.1: MLP 1 -> 64 -> 64 -> 2N, Adam)
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 10
    batch_size: int = 128
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    select_by: str = "quality"
    # studies
    n_vertices: int = 20
    theta_aug_over_pi: float = 1.0
    losses: tuple[str, ...] = ALL_LOSS_SPECS
    theta_sweep: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    theta_losses: tuple[str, ...] = ("mse", "kabsch_mse", "energy:exp")
    n_sweep: tuple[int, ...] = (5, 10, 20, 40, 80)
    n_losses: tuple[str, ...] = ("mse", "energy:exp", "sparse_energy:exp")
    # sparse energy: random k-regular globally rigid graphs (paper App. A.5: k = 2D, 100 graphs per N)
    graph_degree: int = 4
    graph_pool_size: int = 100
    graph_seed: int = 0
    # generative variant (App. A.7); an empty flow_losses skips it
    flow_losses: tuple[str, ...] = ("mse", "energy:exp")
    flow_n_train: int = 10_000
    flow_epochs: int = 20
    flow_batch_size: int = 128
    flow_hidden: tuple[int, ...] = (128, 128, 128)
    flow_lrs: tuple[float, ...] = (1e-3, 3e-3)
    flow_seeds: tuple[int, ...] = (0, 1)
    flow_sample_steps: int = 100
    flow_t_min: float = 1e-3
    flow_noise_scale: float = 1.0
    flow_n_test: int = 500
    # figures and execution
    n_figure: int = 8
    plots: bool = True
    workers: int = 2
    threads: int | None = None
    device: str = "cpu"

    @property
    def theta_aug(self) -> float:
        """The main augmentation angle in radians."""
        return self.theta_aug_over_pi * math.pi

    def validate(self) -> ShapesConfig:
        """Raise ``ValueError`` naming the first bad option (as its flag); return ``self`` with canonical losses."""
        for name in _POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{_flag(name)}: must be a positive integer, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads: must be a positive integer (or none), got {self.threads}")
        if self.graph_seed < 0:
            raise ValueError(f"--graph-seed: must be >= 0, got {self.graph_seed}")
        for name in ("hidden", "flow_hidden"):
            if any(w < 1 for w in getattr(self, name)):
                raise ValueError(f"{_flag(name)}: widths must be positive, got {_show(getattr(self, name))}")
        if len(self.radius_range) != 2:
            raise ValueError(f"--radius-range: give r_min,r_max, got {_show(self.radius_range)}")
        lo, hi = self.radius_range
        if not (math.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"--radius-range: must satisfy 0 < r_min <= r_max, got {_show(self.radius_range)}")
        flow = bool(self.flow_losses)
        for name in ("lrs", "seeds") + (("flow_lrs", "flow_seeds") if flow else ()):
            if not getattr(self, name):
                raise ValueError(f"{_flag(name)}: give at least one value")
        for name in ("lrs", "flow_lrs"):
            if any(not (math.isfinite(lr) and lr > 0) for lr in getattr(self, name)):
                raise ValueError(f"{_flag(name)}: learning rates must be positive, got {_show(getattr(self, name))}")
        for name in ("seeds", "flow_seeds"):
            seeds = getattr(self, name)
            if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
                raise ValueError(f"{_flag(name)}: seeds must be distinct and >= 0, got {_show(seeds)}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"--select-by: must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.batch_size > self.n_train:
            raise ValueError(f"--batch-size ({self.batch_size}) must not exceed --n-train ({self.n_train})")
        if flow and self.flow_batch_size > self.flow_n_train:
            raise ValueError(
                f"--flow-batch-size ({self.flow_batch_size}) must not exceed --flow-n-train ({self.flow_n_train})"
            )
        if not 0 < self.flow_t_min < 1:
            raise ValueError(f"--flow-t-min: must lie in (0, 1), got {self.flow_t_min:g}")
        if not (math.isfinite(self.flow_noise_scale) and self.flow_noise_scale > 0):
            raise ValueError(f"--flow-noise-scale: must be a positive number, got {self.flow_noise_scale:g}")
        if self.n_vertices < 3:
            raise ValueError(f"--n-vertices: a polygon has >= 3 vertices, got {self.n_vertices}")
        if any(n < 3 for n in self.n_sweep):
            raise ValueError(f"--n-sweep: a polygon has >= 3 vertices, got {_show(self.n_sweep)}")
        for name in ("theta_aug_over_pi", "theta_sweep"):
            values = getattr(self, name)
            if any(not 0 <= t <= 1 for t in (values if isinstance(values, tuple) else (values,))):
                raise ValueError(
                    f"{_flag(name)}: augmentation angles are fractions of pi and must lie in [0, 1], "
                    f"got {_show(values)}"
                )
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device: not a torch device: {self.device!r}") from None
        if not self.losses:
            raise ValueError("--losses: give at least one loss")
        canonical = {}
        vertex_counts = {"n_losses": self.n_sweep}  # the other lists are trained at n_vertices only
        for name in ("losses", "theta_losses", "n_losses", "flow_losses"):
            specs: list[LossSpec] = []
            for text in getattr(self, name):
                try:
                    spec = parse_loss_spec(text)
                except ValueError as err:
                    raise ValueError(f"{_flag(name)}: {err}") from None
                if spec in specs:
                    raise ValueError(f"{_flag(name)}: the loss {spec} is given twice")
                if spec.name == "sparse_energy":
                    self._check_graphs(name, spec, vertex_counts.get(name, (self.n_vertices,)))
                specs.append(spec)
            canonical[name] = tuple(str(s) for s in specs)
        return dataclasses.replace(self, **canonical)

    def _check_graphs(self, name: str, spec: LossSpec, vertex_counts: tuple[int, ...]) -> None:
        """The sparse graphs of ``spec`` must exist for every ``N`` it is trained at.

        A globally rigid graph in 2-D is redundantly rigid, so it has at least ``2N - 2`` edges: a ``k``-regular one
        needs ``k >= 4`` (or ``k >= N - 1``: the pool then holds the complete graph), and ``k * N`` must be even.
        """
        flag = _flag(name) if spec.degree is not None else "--graph-degree"
        k = spec.degree if spec.degree is not None else self.graph_degree
        for n in vertex_counts:
            if k >= n - 1:
                continue
            if k < 4:
                raise ValueError(
                    f"{flag}: {k}-regular graphs on {n} vertices are never globally rigid in 2-D ({spec}); use k >= 4"
                )
            if k % 2 and n % 2:
                raise ValueError(f"{flag}: no {k}-regular graph on {n} vertices (both odd) for {spec}; use an even k")


#: Options that must be positive integers.
_POSITIVE = (
    "n_train",
    "n_val",
    "n_test",
    "epochs",
    "batch_size",
    "n_vertices",
    "graph_degree",
    "graph_pool_size",
    "flow_n_train",
    "flow_epochs",
    "flow_batch_size",
    "flow_sample_steps",
    "flow_n_test",
    "n_figure",
    "workers",
)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


PRESETS: dict[str, ShapesConfig] = {
    # about a minute on 2 CPU cores: one seed, two learning rates, short training; shows the claim at theta = pi
    "smoke": ShapesConfig(
        n_train=4_000,
        n_val=300,
        n_test=500,
        epochs=8,
        lrs=(1e-2, 3e-2),
        seeds=(0,),
        theta_sweep=(0.0, 0.5, 1.0),
        n_sweep=(5, 10, 20, 40),
        graph_pool_size=20,
        flow_n_train=4_000,
        flow_epochs=8,
        flow_lrs=(3e-3,),
        flow_seeds=(0,),
        flow_sample_steps=50,
        flow_n_test=300,
    ),
    # about 10 minutes on 2 CPU cores: every loss, 3 seeds, 3 learning rates, both sweeps (N up to 80)
    "default": ShapesConfig(),
    # the paper's grid (App. C.1): 100k shapes, 50 epochs, N up to 160; hours on a CPU
    "paper": ShapesConfig(
        n_train=100_000,
        n_val=1_000,
        n_test=1_000,
        epochs=50,
        batch_size=5_000,
        lrs=(1e-3, 3e-3, 1e-2, 3e-2),
        seeds=(0, 1, 2),
        theta_sweep=(0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0),
        n_sweep=(5, 10, 20, 40, 80, 160),
        flow_losses=("mse", "kabsch_mse", "energy:exp"),
        flow_n_train=100_000,
        flow_epochs=50,
        flow_batch_size=1_000,
        flow_lrs=(3e-4, 1e-3, 3e-3),
        flow_seeds=(0, 1, 2),
        flow_n_test=1_000,
    ),
}
