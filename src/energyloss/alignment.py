r"""Rigid alignment (Kabsch) and the coordinate-space baselines: MSE, MAE and Kabsch-aligned MSE.

The baselines share the layouts of :func:`energyloss.pair_energy_loss`: ``(N, D)``, ``(B, N, D)`` with ``mask``,
or ragged ``(M, D)`` with ``batch``. Each structure's loss is the mean over its real atoms and coordinates;
``reduction`` then combines structures (``"mean"`` over structures, ``"sum"``, or ``"none"``).

The Kabsch-aligned MSE is what the authors' code calls "fape" (it is not AlphaFold's frame-aligned point error):
the target is rigidly aligned onto the *detached* prediction, then compared by MSE, so the gradient flows only
through the prediction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .atomistic import reduce_per_structure
from .geometry import as_dense_batch, check_pair_inputs

__all__ = ["apply_rigid", "kabsch_align", "kabsch_mse_loss", "mae_loss", "mse_loss"]


def kabsch_align(
    source: Tensor, target: Tensor, *, mask: Tensor | None = None, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Proper rigid motion :math:`(R, t)` minimising :math:`\sum_i w_i \|R x_i + t - y_i\|^2` (Kabsch 1976).

    Centroids are weighted and masked; the rotation is proper (:math:`\det R = +1`, no reflection). The SVD runs
    in float32 (float64 for float64 input) outside autocast, on detached inputs: the result carries no gradient.

    Args:
        source: ``(..., N, D)`` points :math:`x` to move.
        target: ``(..., N, D)`` points :math:`y` to reach.
        mask: optional ``(..., N)`` bool, ``True`` for real points.
        weights: optional ``(..., N)`` non-negative weights :math:`w_i` (multiplied by the mask).

    Returns:
        ``R (..., D, D)`` and ``t (..., D)`` such that ``source @ R.mT + t[..., None, :]`` ≈ ``target``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> R, t = kabsch_align(x, x @ rot.T + 1.0)
        >>> torch.allclose(R, rot, atol=1e-6), torch.allclose(t, torch.ones(2), atol=1e-6)
        (True, True)
    """
    if source.shape != target.shape or source.dim() < 2:
        raise ValueError(
            f"source and target must both have shape (..., N, D), got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and mask.shape != source.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(source.shape[:-1])}, got {tuple(mask.shape)}")
    if weights is not None and weights.shape != source.shape[:-1]:
        raise ValueError(f"weights must have shape {tuple(source.shape[:-1])}, got {tuple(weights.shape)}")
    dtype = torch.promote_types(source.dtype, torch.float32)
    with torch.autocast(device_type=source.device.type, enabled=False):
        x = source.detach().to(dtype)
        y = target.detach().to(dtype)
        w = torch.ones(x.shape[:-1], dtype=dtype, device=x.device) if weights is None else weights.to(dtype)
        if mask is not None:
            w = w * mask.to(dtype)
        w = w.unsqueeze(-1)
        total = w.sum(-2, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        cx = (w * x).sum(-2, keepdim=True) / total
        cy = (w * y).sum(-2, keepdim=True) / total
        h = ((x - cx) * w).mT @ (y - cy)  # (..., D, D) cross-covariance
        u, _, vh = torch.linalg.svd(h)
        # Flip the last singular direction when U V^T is a reflection.
        sign = torch.sign(torch.linalg.det(vh.mT @ u.mT))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        flip = torch.ones(h.shape[:-1], dtype=dtype, device=h.device)
        flip[..., -1] = sign
        rot = vh.mT @ (flip.unsqueeze(-1) * u.mT)
        trans = cy.squeeze(-2) - (cx @ rot.mT).squeeze(-2)
    return rot, trans


def apply_rigid(x: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
    """Apply ``x @ R^T + t`` to ``(..., N, D)`` points with ``R (..., D, D)`` and ``t (..., D)``.

    Example:
        >>> apply_rigid(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -1.0], [1.0, 0.0]]), torch.zeros(2))
        tensor([[0., 1.]])
    """
    return x @ rotation.to(x.dtype).mT + translation.to(x.dtype).unsqueeze(-2)


def _per_structure_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err (B, N, D)`` over real atoms and coordinates, per structure ``(B,)``."""
    if mask is None:
        return err.mean((-1, -2))
    m = mask.to(err.dtype).unsqueeze(-1)
    count = (m.sum((-1, -2)) * err.shape[-1]).clamp_min(1)
    return (err * m).sum((-1, -2)) / count


def _coordinate_loss(pred, target, mask, batch, reduction, fn) -> Tensor:
    check_pair_inputs(pred, target, mask=mask, batch=batch)
    pred_b, target_b, mask_b, single = as_dense_batch(pred, target, mask=mask, batch=batch)
    return reduce_per_structure(_per_structure_mean(fn(pred_b - target_b), mask_b), reduction, single=single)


def mse_loss(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None, reduction="mean"
) -> Tensor:
    r"""Mean squared error per structure, over real atoms and coordinates: :math:`\frac{1}{nD}\sum_i \|\hat y_i -
    y_i\|^2`.

    Args:
        pred, target: ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)``.
        mask: ``(B, N)`` bool for padded batches. batch: ``(M,)`` long for ragged batches.
        reduction: ``"none"`` | ``"mean"`` (over structures) | ``"sum"``.

    Example:
        >>> mse_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    return _coordinate_loss(pred, target, mask, batch, reduction, torch.square)


def mae_loss(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None, reduction="mean"
) -> Tensor:
    r"""Mean absolute error per structure, over real atoms and coordinates.

    Example:
        >>> mae_loss(torch.full((2, 3), -2.0), torch.zeros(2, 3))
        tensor(2.)
    """
    return _coordinate_loss(pred, target, mask, batch, reduction, torch.abs)


def kabsch_mse_loss(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None, reduction="mean"
) -> Tensor:
    r"""Kabsch-aligned MSE: align the target onto the detached prediction, then MSE (the authors' "fape").

    .. math:: \ell(\hat y, y) = \frac{1}{nD} \sum_i \| \hat y_i - (R^* y_i + t^*) \|^2, \quad
        (R^*, t^*) = \arg\min_{R \in SO(D), t} \sum_i \|R y_i + t - \operatorname{sg}(\hat y_i)\|^2

    Invariant to proper rigid motions of either argument (not to reflections). Gradients flow to ``pred`` only.

    Example:
        >>> y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> kabsch_mse_loss(y @ rot.T + 5.0, y) < 1e-10
        tensor(True)
    """
    check_pair_inputs(pred, target, mask=mask, batch=batch)
    pred_b, target_b, mask_b, single = as_dense_batch(pred, target, mask=mask, batch=batch)
    rot, trans = kabsch_align(target_b, pred_b, mask=mask_b)
    aligned = apply_rigid(target_b.detach(), rot, trans)
    err = (pred_b - aligned).square()
    return reduce_per_structure(_per_structure_mean(err, mask_b), reduction, single=single)
