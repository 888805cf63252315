"""``torch.nn.Module`` shells over the functional losses: they hold options and call the functions, nothing else.

Example:
    >>> import torch
    >>> from energyloss.nn import PairEnergyLoss
    >>> loss = PairEnergyLoss(coefficients="exp", normalize="atoms")
    >>> y = torch.randn(4, 5, 3)
    >>> loss(y, y)
    tensor(0.)
"""

from __future__ import annotations

from torch import Tensor, nn

from .alignment import kabsch_mse_loss, mae_loss, mse_loss
from .atomistic import pair_energy_loss
from .coefficients import Coefficients
from .rigidity import RigidGraphPool, sparse_pair_energy_loss
from .spins import (
    DEFAULT_H0,
    DEFAULT_TEMPERATURE,
    local_field_energy_loss,
    spin_cross_entropy_loss,
    spin_margin_loss,
    true_energy_loss,
)

__all__ = [
    "KabschMSELoss",
    "LocalFieldEnergyLoss",
    "MAELoss",
    "MSELoss",
    "PairEnergyLoss",
    "SparsePairEnergyLoss",
    "SpinCrossEntropyLoss",
    "SpinMarginLoss",
    "TrueEnergyLoss",
]


class PairEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.pair_energy_loss`; ``forward(pred, target, *, edges, mask, batch)``."""

    def __init__(
        self,
        *,
        coefficients: str | Coefficients = "constant",
        normalize: str | None = None,
        reduction: str = "mean",
        chunk_size: int | str | None = None,
    ) -> None:
        super().__init__()
        self.coefficients = coefficients
        self.normalize = normalize
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        *,
        edges: Tensor | None = None,
        mask: Tensor | None = None,
        batch: Tensor | None = None,
    ) -> Tensor:
        return pair_energy_loss(
            pred,
            target,
            coefficients=self.coefficients,
            edges=edges,
            mask=mask,
            batch=batch,
            normalize=self.normalize,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients!r}, normalize={self.normalize!r}, reduction={self.reduction!r}"


class _CoordinateLoss(nn.Module):
    _fn = staticmethod(mse_loss)

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None
    ) -> Tensor:
        return self._fn(pred, target, mask=mask, batch=batch, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.mse_loss` (masked / ragged aware)."""

    _fn = staticmethod(mse_loss)


class MAELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.mae_loss` (masked / ragged aware)."""

    _fn = staticmethod(mae_loss)


class KabschMSELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.kabsch_mse_loss`."""

    _fn = staticmethod(kabsch_mse_loss)


class SparsePairEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.sparse_pair_energy_loss`: holds a :class:`~energyloss.RigidGraphPool`.

    ``forward(pred, target, *, mask=None, batch=None, generator=None)`` draws one pool graph per structure.
    """

    def __init__(
        self,
        pool: RigidGraphPool,
        *,
        coefficients: str | Coefficients = "constant",
        normalize: str | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.pool = pool
        self.coefficients = coefficients
        self.normalize = normalize
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor, *, mask=None, batch=None, generator=None) -> Tensor:
        return sparse_pair_energy_loss(
            pred,
            target,
            pool=self.pool,
            coefficients=self.coefficients,
            mask=mask,
            batch=batch,
            generator=generator,
            normalize=self.normalize,
            reduction=self.reduction,
        )


class LocalFieldEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.local_field_energy_loss`; ``forward(logits, target, couplings)``."""

    def __init__(
        self,
        *,
        h0: float = DEFAULT_H0,
        temperature: float = DEFAULT_TEMPERATURE,
        periodic: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.h0, self.temperature, self.periodic, self.reduction = h0, temperature, periodic, reduction

    def forward(self, logits: Tensor, target: Tensor, couplings: Tensor) -> Tensor:
        return local_field_energy_loss(
            logits,
            target,
            couplings,
            h0=self.h0,
            temperature=self.temperature,
            periodic=self.periodic,
            reduction=self.reduction,
        )


class TrueEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.true_energy_loss`; ``forward(logits, couplings)``."""

    def __init__(
        self, *, temperature: float = DEFAULT_TEMPERATURE, periodic: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.temperature, self.periodic, self.reduction = temperature, periodic, reduction

    def forward(self, logits: Tensor, couplings: Tensor) -> Tensor:
        return true_energy_loss(
            logits, couplings, temperature=self.temperature, periodic=self.periodic, reduction=self.reduction
        )


class SpinCrossEntropyLoss(nn.Module):
    """Module form of :func:`energyloss.spin_cross_entropy_loss`; ``forward(logits, target)``."""

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return spin_cross_entropy_loss(logits, target, reduction=self.reduction)


class SpinMarginLoss(nn.Module):
    """Module form of :func:`energyloss.spin_margin_loss`; ``forward(logits, target)``."""

    def __init__(self, *, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return spin_margin_loss(logits, target, margin=self.margin, reduction=self.reduction)
