"""energyloss: energy loss functions for physical systems.

Physically grounded, invariant-by-construction losses for PyTorch (Kaba, Sareen, Levy, Ravanbakhsh, "Energy Loss
Functions for Physical Systems", NeurIPS 2025):

- :func:`pair_energy_loss`: the pair spring energy of Eq. 7 (dense, ragged, edge-list and chunked paths);
- coefficient schemes :class:`ConstantCoefficients`, :class:`InverseCoefficients`,
  :class:`InverseSquareCoefficients`, :class:`ExponentialCoefficients`, :class:`PotentialCoefficients`;
- baselines :func:`mse_loss`, :func:`mae_loss`, :func:`kabsch_mse_loss` and the alignment :func:`kabsch_align`.
"""

from . import diffusion
from .alignment import apply_rigid, kabsch_align, kabsch_mse_loss, mae_loss, mse_loss
from .atomistic import pair_energy_loss
from .coefficients import (
    COEFFICIENT_SCHEMES,
    ConstantCoefficients,
    ExponentialCoefficients,
    InverseCoefficients,
    InverseSquareCoefficients,
    PotentialCoefficients,
    lennard_jones,
    morse,
    resolve_coefficients,
)
from .geometry import center, pairwise_distances, safe_norm, to_dense_batch, to_ragged

__version__ = "0.1.0"

__all__ = [
    "COEFFICIENT_SCHEMES",
    "ConstantCoefficients",
    "ExponentialCoefficients",
    "InverseCoefficients",
    "InverseSquareCoefficients",
    "PotentialCoefficients",
    "apply_rigid",
    "center",
    "diffusion",
    "kabsch_align",
    "kabsch_mse_loss",
    "lennard_jones",
    "mae_loss",
    "morse",
    "mse_loss",
    "pair_energy_loss",
    "pairwise_distances",
    "resolve_coefficients",
    "safe_norm",
    "to_dense_batch",
    "to_ragged",
]
