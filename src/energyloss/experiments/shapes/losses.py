r"""The losses compared on regular shapes, as per-structure functions ``(B, N, 2) x (B, N, 2) -> (B,)``.

===============  ==============================================================================================
``mse``          :func:`energyloss.mse_loss`: mean over vertices and coordinates of :math:`(\hat y - y)^2`
``mae``          :func:`energyloss.mae_loss`: mean of :math:`|\hat y - y|`
``kabsch_mse``   :func:`energyloss.kabsch_mse_loss`: MSE after the proper rigid alignment of the target
``energy``       :func:`energyloss.pair_energy_loss` over all pairs, ``normalize="pairs"`` (mean over pairs)
``sparse_energy`` the same over one random globally rigid 4-regular graph per structure and step, drawn from an
                 :class:`energyloss.rigidity.RigidGraphPool` (``k = 2D = 4``), mean over its edges
===============  ==============================================================================================

``normalize="pairs"`` makes the energy a mean per pair, as the MSE is a mean per coordinate; Adam is insensitive to
a global scale of the loss, so this only fixes the units of the logged values. (The authors' shape code takes a
mean over ``B * N^2`` entries with ``k = 2.6 exp(-d)``: the same up to a constant factor.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from energyloss import kabsch_mse_loss, mae_loss, mse_loss, pair_energy_loss

__all__ = ["COEFFICIENT_LOSSES", "LOSSES", "loss_label", "make_loss"]

#: Loss names accepted by :func:`make_loss`.
LOSSES = ("mse", "mae", "kabsch_mse", "energy", "sparse_energy")
#: Losses that take a coefficient scheme.
COEFFICIENT_LOSSES = ("energy", "sparse_energy")

PerStructureLoss = Callable[[Tensor, Tensor], Tensor]


def loss_label(loss: str, coefficients: str | None) -> str:
    """Short display name, e.g. ``"energy[exp]"``.

    Example:
        >>> loss_label("energy", "exp"), loss_label("mse", None)
        ('energy[exp]', 'mse')
    """
    return f"{loss}[{coefficients}]" if coefficients else loss


def make_loss(
    loss: str,
    *,
    coefficients: str | None = None,
    pool=None,
    generator: torch.Generator | None = None,
) -> PerStructureLoss:
    r"""Build the per-structure loss ``fn(pred (B, N, 2), target (B, N, 2)) -> (B,)``.

    Args:
        loss: one of :data:`LOSSES`.
        coefficients: coefficient scheme of the energy losses (``"constant"``, ``"inverse"``,
            ``"inverse_square"``, ``"exp"``); must be ``None`` for the others.
        pool: :class:`energyloss.rigidity.RigidGraphPool` for ``sparse_energy``.
        generator: ``torch.Generator`` for the per-structure graph draws of ``sparse_energy``.

    Example:
        >>> from energyloss.experiments.shapes.data import regular_polygon
        >>> y = regular_polygon(torch.tensor([1.0, 2.0]), 6)
        >>> make_loss("energy", coefficients="exp")(y.flip(-1), y)  # a reflection of the target costs nothing
        tensor([0., 0.])
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss in COEFFICIENT_LOSSES:
        if coefficients is None:
            raise ValueError(f"loss {loss!r} needs a coefficient scheme (coefficients=...)")
    elif coefficients is not None:
        raise ValueError(f"loss {loss!r} takes no coefficients, got {coefficients!r}")
    if loss == "mse":
        return lambda p, t: mse_loss(p, t, reduction="none")
    if loss == "mae":
        return lambda p, t: mae_loss(p, t, reduction="none")
    if loss == "kabsch_mse":
        return lambda p, t: kabsch_mse_loss(p, t, reduction="none")
    if loss == "energy":
        return lambda p, t: pair_energy_loss(p, t, coefficients=coefficients, normalize="pairs", reduction="none")
    if pool is None:
        raise ValueError("sparse_energy needs a RigidGraphPool (pool=...)")

    def sparse(pred: Tensor, target: Tensor) -> Tensor:
        graphs = pool.graphs(pred.shape[1])  # (size, 2, E)
        pick = torch.randint(graphs.shape[0], (pred.shape[0],), generator=generator)
        edges = graphs[pick].to(pred.device)  # (B, 2, E): one graph per structure
        return pair_energy_loss(
            pred, target, coefficients=coefficients, edges=edges, normalize="pairs", reduction="none"
        )

    return sparse
