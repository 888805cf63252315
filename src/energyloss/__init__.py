"""energyloss: energy loss functions for physical systems.

Physically grounded, invariant-by-construction losses for PyTorch (Kaba, Sareen, Levy, Ravanbakhsh, "Energy Loss
Functions for Physical Systems", NeurIPS 2025):

- :func:`pair_energy_loss`: the pair spring energy of Eq. 7 (dense, ragged, edge-list and chunked paths);
- coefficient schemes :class:`ConstantCoefficients`, :class:`InverseCoefficients`,
  :class:`InverseSquareCoefficients`, :class:`ExponentialCoefficients`, :class:`PotentialCoefficients`;
- baselines :func:`mse_loss`, :func:`mae_loss`, :func:`kabsch_mse_loss` and the alignment :func:`kabsch_align`;
- the sparse loss over globally rigid random graphs (:mod:`energyloss.rigidity`);
- free-energy losses for Ising spins: :func:`local_field_energy_loss`, :func:`true_energy_loss` and baselines
  (:mod:`energyloss.spins`);
- adapters for diffusion and flow-matching objectives (:mod:`energyloss.diffusion`);
- ``torch.nn.Module`` forms of the losses (:mod:`energyloss.nn`) and invariance checks for your own losses
  (:mod:`energyloss.testing`, imported on demand).
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import diffusion, nn, rigidity, spins
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
from .geometry import center, centroid, pairwise_distances, safe_norm, set_value_checks, to_dense_batch, to_ragged
from .rigidity import (
    RigidGraphPool,
    is_globally_rigid,
    is_rigid,
    random_regular_graph,
    sparse_pair_energy_loss,
    symmetrize_edges,
)
from .spins import (
    flip_invariant_loss,
    free_energy_loss,
    ising_energy,
    local_field_energy,
    local_field_energy_loss,
    local_fields,
    spin_cross_entropy_loss,
    spin_margin_loss,
    true_energy_loss,
)

try:
    __version__ = _version("energyloss")
except _PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "COEFFICIENT_SCHEMES",
    "ConstantCoefficients",
    "ExponentialCoefficients",
    "InverseCoefficients",
    "InverseSquareCoefficients",
    "PotentialCoefficients",
    "RigidGraphPool",
    "apply_rigid",
    "center",
    "centroid",
    "diffusion",
    "flip_invariant_loss",
    "free_energy_loss",
    "is_globally_rigid",
    "is_rigid",
    "ising_energy",
    "kabsch_align",
    "kabsch_mse_loss",
    "lennard_jones",
    "local_field_energy",
    "local_field_energy_loss",
    "local_fields",
    "mae_loss",
    "morse",
    "mse_loss",
    "nn",
    "pair_energy_loss",
    "pairwise_distances",
    "random_regular_graph",
    "resolve_coefficients",
    "rigidity",
    "safe_norm",
    "set_value_checks",
    "sparse_pair_energy_loss",
    "spin_cross_entropy_loss",
    "spin_margin_loss",
    "spins",
    "symmetrize_edges",
    "to_dense_batch",
    "to_ragged",
    "true_energy_loss",
]
