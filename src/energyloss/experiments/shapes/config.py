"""Configuration of the regular-shape experiment and its presets (smoke / default / paper)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .losses import COEFFICIENT_LOSSES, LOSSES

__all__ = ["ALL_LOSS_SPECS", "PRESETS", "SELECT_BY", "ShapesConfig", "parse_loss_spec", "pi_label"]

#: Every loss of the comparison, as ``"loss"`` or ``"loss:coefficients"``.
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


def parse_loss_spec(spec: str) -> tuple[str, str | None]:
    """``"energy:exp"`` -> ``("energy", "exp")``; ``"mse"`` -> ``("mse", None)``.

    Example:
        >>> parse_loss_spec("energy:exp"), parse_loss_spec("mse")
        (('energy', 'exp'), ('mse', None))
    """
    loss, _, coefficients = spec.partition(":")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} in {spec!r}; choose from {LOSSES}")
    if loss in COEFFICIENT_LOSSES and not coefficients:
        raise ValueError(f"loss {loss!r} needs a coefficient scheme, e.g. '{loss}:exp' (got {spec!r})")
    if loss not in COEFFICIENT_LOSSES and coefficients:
        raise ValueError(f"loss {loss!r} takes no coefficient scheme (got {spec!r})")
    return loss, coefficients or None


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
    workers: int = 2
    threads: int | None = None
    device: str = "cpu"

    @property
    def theta_aug(self) -> float:
        """The main augmentation angle in radians."""
        return self.theta_aug_over_pi * math.pi

    def validate(self) -> ShapesConfig:
        """Raise ``ValueError`` naming the first inconsistent option; return ``self``."""
        for name in ("losses", "theta_losses", "n_losses", "flow_losses"):
            for spec in getattr(self, name):
                parse_loss_spec(spec)
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        if self.flow_losses and self.flow_batch_size > self.flow_n_train:
            raise ValueError(f"flow_batch_size ({self.flow_batch_size}) must not exceed flow_n_train")
        if any(n < 3 for n in (self.n_vertices, *self.n_sweep)):
            raise ValueError(f"vertex counts must be >= 3, got {self.n_vertices} and {self.n_sweep}")
        if any(not 0 <= t <= 1 for t in (self.theta_aug_over_pi, *self.theta_sweep)):
            raise ValueError("augmentation angles are fractions of pi and must lie in [0, 1]")
        if not self.lrs or not self.seeds:
            raise ValueError("lrs and seeds must not be empty")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        lo, hi = self.radius_range
        if not 0 < lo <= hi:
            raise ValueError(f"radius_range must satisfy 0 < r_min <= r_max, got {self.radius_range}")
        return self


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
