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
        rot = _proper_rotation(((x - cx) * w).mT @ (y - cy))
        trans = cy.squeeze(-2) - (cx @ rot.mT).squeeze(-2)
    return rot, trans


def _proper_rotation(h: Tensor) -> Tensor:
    """The proper rotation ``R (..., D, D)`` maximising ``tr(R h)`` for a cross-covariance ``h = x^T y``."""
    u, _, vh = torch.linalg.svd(h)
    # Flip the last singular direction when U V^T is a reflection.
    sign = torch.sign(torch.linalg.det(vh.mT @ u.mT))
    flip = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device)
    flip[..., -1] = torch.where(sign == 0, torch.ones_like(sign), sign)
    return vh.mT @ (flip.unsqueeze(-1) * u.mT)


def apply_rigid(x: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
    """Apply ``x @ R^T + t`` to ``(..., N, D)`` points with ``R (..., D, D)`` and ``t (..., D)``.

    Example:
        >>> apply_rigid(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -1.0], [1.0, 0.0]]), torch.zeros(2))
        tensor([[0., 1.]])
    """
    return x @ rotation.to(x.dtype).mT + translation.to(x.dtype).unsqueeze(-2)


def _per_structure_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err (B, N, D)`` over real atoms and coordinates, per structure ``(B,)``."""
    # Padded rows of err are zero (as_dense_batch zeroes padded inputs), so a plain sum over rows is exact.
    if mask is None:
        return err.sum((-1, -2)) / max(err.shape[-1] * err.shape[-2], 1)
    return err.sum((-1, -2)) / (mask.sum(-1) * err.shape[-1]).clamp_min(1).to(err.dtype)


def _centred(x: Tensor, weights: Tensor | None, denom: Tensor) -> Tensor:
    """Centre ``x (B, N, D)`` (padded rows zero) in two passes, with detached centroids; padded rows stay zero.

    Far from the origin the first centroid is rounded to the coarse float grid there (0.004 at 1e5 in float32) and
    would leave a shift; the second pass takes the mean of the small centred values, which is exact enough.
    """
    out = x - x.detach().sum(-2, keepdim=True) / denom
    if weights is not None:
        out = out * weights
    out = out - out.detach().sum(-2, keepdim=True) / denom
    return out if weights is None else out * weights


def _counts(pred_b: Tensor, mask_b: Tensor | None) -> Tensor:
    return torch.full(pred_b.shape[:1], pred_b.shape[1], device=pred_b.device) if mask_b is None else mask_b.sum(-1)


def _coordinate_loss(pred, target, mask, batch, reduction, fn, batch_size, max_num_nodes) -> Tensor:
    check_pair_inputs(pred, target, mask=mask, batch=batch)
    pred_b, target_b, mask_b, single = as_dense_batch(
        pred, target, mask=mask, batch=batch, batch_size=batch_size, max_num_nodes=max_num_nodes
    )
    per_structure = _per_structure_mean(fn(pred_b - target_b), mask_b)
    return reduce_per_structure(per_structure, reduction, single=single, counts=_counts(pred_b, mask_b))


def mse_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    reduction: str = "mean",
    batch_size: int | None = None,
    max_num_nodes: int | None = None,
) -> Tensor:
    r"""Mean squared error per structure, over real atoms and coordinates: :math:`\frac{1}{nD}\sum_i \|\hat y_i -
    y_i\|^2`.

    Args:
        pred: ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)``.
        target: same shape as ``pred``.
        mask: ``(B, N)`` bool for padded batches.
        batch: ``(M,)`` long for ragged batches.
        reduction: ``"none"`` | ``"mean"`` (over structures) | ``"sum"``.
        batch_size: ragged layout: the number of structures (saves a host read of ``batch.max()``).
        max_num_nodes: ragged layout: the largest structure's size (with ``batch_size``: no host synchronisation).

    Padding is inert (masked-out rows may hold anything, their gradient is zero); empty structures score 0 and are
    left out of ``reduction="mean"``.

    Example:
        >>> mse_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    return _coordinate_loss(pred, target, mask, batch, reduction, torch.square, batch_size, max_num_nodes)


def mae_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    reduction: str = "mean",
    batch_size: int | None = None,
    max_num_nodes: int | None = None,
) -> Tensor:
    r"""Mean absolute error per structure, over real atoms and coordinates: :math:`\frac{1}{nD}\sum_{i,c}
    |\hat y_{ic} - y_{ic}|`.

    Args:
        pred: ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)``.
        target: same shape as ``pred``.
        mask: ``(B, N)`` bool for padded batches.
        batch: ``(M,)`` long for ragged batches.
        reduction: ``"none"`` | ``"mean"`` (over structures) | ``"sum"``.
        batch_size: ragged layout: the number of structures (saves a host read of ``batch.max()``).
        max_num_nodes: ragged layout: the largest structure's size (with ``batch_size``: no host synchronisation).

    Padding is inert (masked-out rows may hold anything, their gradient is zero); empty structures score 0 and are
    left out of ``reduction="mean"``.

    Example:
        >>> mae_loss(torch.full((2, 3), -2.0), torch.zeros(2, 3))
        tensor(2.)
    """
    return _coordinate_loss(pred, target, mask, batch, reduction, torch.abs, batch_size, max_num_nodes)


def kabsch_mse_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    reduction: str = "mean",
    batch_size: int | None = None,
    max_num_nodes: int | None = None,
) -> Tensor:
    r"""Kabsch-aligned MSE: align the target onto the detached prediction, then MSE (the authors' "fape").

    .. math:: \ell(\hat y, y) = \frac{1}{nD} \sum_i \| \hat y_i - (R^* y_i + t^*) \|^2, \quad
        (R^*, t^*) = \arg\min_{R \in SO(D), t} \sum_i \|R y_i + t - \operatorname{sg}(\hat y_i)\|^2

    Invariant to proper rigid motions of either argument (not to reflections). Gradients flow to ``pred`` only.
    Both structures are centred before the rotation is applied, so float32 keeps its accuracy far from the origin.

    Args:
        pred: ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)``.
        target: same shape as ``pred``.
        mask: ``(B, N)`` bool for padded batches.
        batch: ``(M,)`` long for ragged batches.
        reduction: ``"none"`` | ``"mean"`` (over structures) | ``"sum"``.
        batch_size: ragged layout: the number of structures (saves a host read of ``batch.max()``).
        max_num_nodes: ragged layout: the largest structure's size (with ``batch_size``: no host synchronisation).

    Padding is inert (masked-out rows may hold anything, their gradient is zero); empty structures score 0 and are
    left out of ``reduction="mean"``.

    Example:
        >>> y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> kabsch_mse_loss(y @ rot.T + 5.0, y) < 1e-10
        tensor(True)
    """
    check_pair_inputs(pred, target, mask=mask, batch=batch)
    pred_b, target_b, mask_b, single = as_dense_batch(
        pred, target, mask=mask, batch=batch, batch_size=batch_size, max_num_nodes=max_num_nodes
    )
    counts = _counts(pred_b, mask_b)
    # Centre both structures first, then rotate: applying (R, t) to far-away coordinates would cancel digits
    # (float32 at offset 1e4: 2.5 % error). The optimal translation maps centroid onto centroid, so this is the
    # same loss; the prediction's centroid is detached like the rest of the alignment.
    dtype = torch.promote_types(pred_b.dtype, torch.float32)
    with torch.autocast(device_type=pred_b.device.type, enabled=False):
        p = pred_b.to(dtype)
        weights = None if mask_b is None else mask_b.unsqueeze(-1).to(dtype)
        denom = counts.clamp_min(1).to(dtype)[:, None, None]
        y_c = _centred(target_b.detach().to(dtype), weights, denom)
        p_c = _centred(p, weights, denom)  # the centroids are detached; the gradient passes through unchanged
        rot = _proper_rotation(y_c.mT @ p_c.detach())
        err = (p_c - y_c @ rot.mT).square()
        per_structure = _per_structure_mean(err, mask_b).to(pred_b.dtype)
    return reduce_per_structure(per_structure, reduction, single=single, counts=counts)
