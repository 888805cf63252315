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

__all__ = ["KabschMSELoss", "MAELoss", "MSELoss", "PairEnergyLoss"]


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
