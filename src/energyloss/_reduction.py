"""The one reducer of every loss: per-structure (or per-instance) values to ``"none"`` | ``"mean"`` | ``"sum"``."""

from __future__ import annotations

from torch import Tensor

__all__ = ["REDUCTIONS", "reduce_per_structure"]

REDUCTIONS = ("none", "mean", "sum")


def reduce_per_structure(
    values: Tensor, reduction: str, *, single: bool = False, counts: Tensor | None = None
) -> Tensor:
    """Reduce per-structure losses ``(B,)`` (or any shape ``(...)``): ``"none"`` | ``"mean"`` | ``"sum"``.

    ``"mean"`` averages over every element. With ``single=True`` (the input was one unbatched structure)
    ``"none"`` returns a 0-dim tensor. ``counts`` ``(B,)`` (real atoms per structure) leaves empty structures out of
    ``"mean"``; a batch of empty structures (or an empty batch) has mean 0, not NaN.

    Example:
        >>> import torch
        >>> reduce_per_structure(torch.tensor([1.0, 3.0]), "mean")
        tensor(2.)
        >>> reduce_per_structure(torch.tensor([1.0, 3.0, 0.0]), "mean", counts=torch.tensor([4, 2, 0]))
        tensor(2.)
        >>> reduce_per_structure(torch.zeros(0), "mean")
        tensor(0.)
    """
    if reduction == "none":
        return values[0] if single else values
    if reduction == "mean":
        if counts is None:
            return values.sum() / max(values.numel(), 1)
        return values.sum() / (counts > 0).sum().clamp_min(1).to(values.dtype)
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
