"""``torch.nn.Module`` shells over the functional losses: they hold options and call the functions, nothing else.

Each module checks its options when it is constructed, so a misspelt ``reduction`` or an unknown coefficient
scheme fails where the loss is built, not at the first training step. ``forward`` then calls the function with
those options; inputs are checked there, by the function.

:class:`PairEnergyLoss` and :class:`SparsePairEnergyLoss` are first-order differentiable only: their kernels
compute the gradient in the same pass as the value, so ``backward()`` works but a second derivative
(``torch.autograd.grad(..., create_graph=True)``, e.g. a gradient penalty or a force-matching term) raises a
``RuntimeError``. The coordinate and spin losses are plain autograd and have no such limit.

Example:
    >>> import torch
    >>> from energyloss.nn import PairEnergyLoss
    >>> loss = PairEnergyLoss(coefficients="exp", normalize="atoms")
    >>> y = torch.randn(4, 5, 3)
    >>> loss(y, y)
    tensor(0.)
"""

from __future__ import annotations

import math
from numbers import Real

from torch import Tensor, nn

from .alignment import kabsch_mse_loss, mae_loss, mse_loss
from .atomistic import check_cutoff, pair_energy_loss
from .coefficients import Coefficients, resolve_coefficients
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

#: Accepted ``reduction=`` values of every loss.
REDUCTIONS = ("none", "mean", "sum")
#: Accepted ``normalize=`` values of the pair energy losses.
NORMALIZATIONS = (None, "atoms", "pairs")


def _check_choice(name: str, value: object, allowed: tuple) -> None:
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_chunk_size(chunk_size: object) -> None:
    ok = chunk_size is None or chunk_size == "auto"
    ok = ok or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0)
    if not ok:
        raise ValueError(f"chunk_size must be None, 'auto' or a positive int, got {chunk_size!r}")


def _check_number(name: str, value: object, *, positive: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_pair_options(coefficients: object, normalize: object, reduction: object) -> None:
    resolve_coefficients(coefficients)  # ValueError for an unknown name, TypeError for a non-callable
    _check_choice("normalize", normalize, NORMALIZATIONS)
    _check_choice("reduction", reduction, REDUCTIONS)


class PairEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.pair_energy_loss` (paper Eq. 7).

    ``forward(pred, target, *, edges=None, mask=None, batch=None, batch_size=None, max_num_nodes=None)`` returns
    ``pair_energy_loss(pred, target, edges=edges, mask=mask, batch=batch, ..., **options)``, for dense
    ``(B, N, D)`` batches with a ``mask``, ragged ``(M, D)`` rows with a PyG-style ``batch`` vector (the two hints
    spare a host synchronisation), or an edge list.

    First-order only: the loss is differentiable once (``loss.backward()``); a second derivative, as in
    ``torch.autograd.grad(loss, pred, create_graph=True)``, raises a ``RuntimeError``, because the kernels
    return the gradient computed together with the value instead of an autograd graph (that is what keeps them
    fast and ``O(N)`` in memory).

    Args:
        coefficients: spring scheme, ``"constant"`` | ``"inverse"`` | ``"inverse_square"`` | ``"exp"`` or a
            callable ``k(d) -> Tensor`` (see :mod:`energyloss.coefficients`).
        normalize: ``None``, ``"atoms"`` or ``"pairs"`` (per-structure normalisation).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over structures.
        chunk_size: ``None``, ``"auto"`` or a positive int: the block size of the complete-graph kernel.
        cutoff: ``None`` or a target distance beyond which pairs are dropped (short-range springs).
        undirected_edges: the ``edges`` passed to ``forward`` list each pair in both directions (PyG).

    Raises:
        ValueError: an unknown coefficient scheme, ``normalize``, ``reduction``, ``chunk_size`` or ``cutoff``.
        TypeError: ``coefficients`` neither a name nor a callable.

    Example:
        >>> import torch
        >>> loss = PairEnergyLoss(coefficients="inverse", reduction="sum")
        >>> y = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
        >>> loss(2 * y, y)  # springs k = 1/d: 1/1 + 1/1 + (sqrt 2)^2 / sqrt 2
        tensor(3.4142)
    """

    def __init__(
        self,
        *,
        coefficients: str | Coefficients = "constant",
        normalize: str | None = None,
        reduction: str = "mean",
        chunk_size: int | str | None = None,
        cutoff: float | None = None,
        undirected_edges: bool = False,
    ) -> None:
        super().__init__()
        _check_pair_options(coefficients, normalize, reduction)
        _check_chunk_size(chunk_size)
        check_cutoff(cutoff, normalize)
        self.coefficients = coefficients
        self.normalize = normalize
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.cutoff = cutoff
        self.undirected_edges = bool(undirected_edges)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        *,
        edges: Tensor | None = None,
        mask: Tensor | None = None,
        batch: Tensor | None = None,
        batch_size: int | None = None,
        max_num_nodes: int | None = None,
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
            cutoff=self.cutoff,
            undirected_edges=self.undirected_edges,
            batch_size=batch_size,
            max_num_nodes=max_num_nodes,
        )

    def extra_repr(self) -> str:
        text = f"coefficients={self.coefficients!r}, normalize={self.normalize!r}, reduction={self.reduction!r}"
        return text + ("" if self.cutoff is None else f", cutoff={self.cutoff!r}")


class _CoordinateLoss(nn.Module):
    _fn = staticmethod(mse_loss)

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        _check_choice("reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def forward(
        self, pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None
    ) -> Tensor:
        return self._fn(pred, target, mask=mask, batch=batch, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.mse_loss` (masked / ragged aware); ``forward(pred, target, *, mask, batch)``.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over structures.

    Example:
        >>> import torch
        >>> MSELoss()(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """

    _fn = staticmethod(mse_loss)


class MAELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.mae_loss` (masked / ragged aware); ``forward(pred, target, *, mask, batch)``.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over structures.
    """

    _fn = staticmethod(mae_loss)


class KabschMSELoss(_CoordinateLoss):
    """Module form of :func:`energyloss.kabsch_mse_loss`; ``forward(pred, target, *, mask, batch)``.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over structures.
    """

    _fn = staticmethod(kabsch_mse_loss)


class SparsePairEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.sparse_pair_energy_loss`: holds a :class:`~energyloss.RigidGraphPool`.

    ``forward(pred, target, *, mask=None, batch=None, generator=None)`` draws one pool graph per structure and
    evaluates the pair energy over its edges (paper §4.3). First-order only, like :class:`PairEnergyLoss`: a
    second derivative raises a ``RuntimeError``.

    Args:
        pool: the graphs, with ``pool.d`` the dimension of the point clouds.
        coefficients: spring scheme, as for :class:`PairEnergyLoss`.
        normalize: ``None``, ``"atoms"`` or ``"pairs"``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over structures.

    Raises:
        TypeError: ``pool`` is not a :class:`~energyloss.RigidGraphPool`, or ``coefficients`` neither a name nor
            a callable.
        ValueError: an unknown coefficient scheme, ``normalize`` or ``reduction``.
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
        if not isinstance(pool, RigidGraphPool):
            raise TypeError(f"pool must be a RigidGraphPool, got {type(pool).__name__}")
        _check_pair_options(coefficients, normalize, reduction)
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

    def extra_repr(self) -> str:
        return (
            f"pool={self.pool!r}, coefficients={self.coefficients!r}, normalize={self.normalize!r}, "
            f"reduction={self.reduction!r}"
        )


class LocalFieldEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.local_field_energy_loss`; ``forward(logits, target, couplings)``.

    Args:
        h0: offset of the local-field weights (default 5).
        temperature: temperature of the free energy, positive (default 0.1).
        periodic: periodic (torus) instead of open boundaries.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over instances.

    Raises:
        ValueError: a non-finite ``h0``, a non-positive ``temperature`` or an unknown ``reduction``.
        TypeError: ``periodic`` is not a bool.
    """

    def __init__(
        self,
        *,
        h0: float = DEFAULT_H0,
        temperature: float = DEFAULT_TEMPERATURE,
        periodic: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_number("h0", h0)
        _check_number("temperature", temperature, positive=True)
        _check_bool("periodic", periodic)
        _check_choice("reduction", reduction, REDUCTIONS)
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

    def extra_repr(self) -> str:
        return f"h0={self.h0}, temperature={self.temperature}, periodic={self.periodic}, reduction={self.reduction!r}"


class TrueEnergyLoss(nn.Module):
    """Module form of :func:`energyloss.true_energy_loss`; ``forward(logits, couplings)``.

    Args:
        temperature: temperature of the free energy, positive (default 0.1).
        periodic: periodic (torus) instead of open boundaries.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over instances.

    Raises:
        ValueError: a non-positive ``temperature`` or an unknown ``reduction``.
        TypeError: ``periodic`` is not a bool.
    """

    def __init__(
        self, *, temperature: float = DEFAULT_TEMPERATURE, periodic: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__()
        _check_number("temperature", temperature, positive=True)
        _check_bool("periodic", periodic)
        _check_choice("reduction", reduction, REDUCTIONS)
        self.temperature, self.periodic, self.reduction = temperature, periodic, reduction

    def forward(self, logits: Tensor, couplings: Tensor) -> Tensor:
        return true_energy_loss(
            logits, couplings, temperature=self.temperature, periodic=self.periodic, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, periodic={self.periodic}, reduction={self.reduction!r}"


class SpinCrossEntropyLoss(nn.Module):
    """Module form of :func:`energyloss.spin_cross_entropy_loss`; ``forward(logits, target)``.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over instances.
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        _check_choice("reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return spin_cross_entropy_loss(logits, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class SpinMarginLoss(nn.Module):
    """Module form of :func:`energyloss.spin_margin_loss`; ``forward(logits, target)``.

    Args:
        margin: required logit margin, a finite number (default 1).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` over instances.
    """

    def __init__(self, *, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_number("margin", margin)
        _check_choice("reduction", reduction, REDUCTIONS)
        self.margin, self.reduction = margin, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return spin_margin_loss(logits, target, margin=self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
