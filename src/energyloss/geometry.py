r"""Geometry primitives: safe distances, masks, centring and batch layouts.

Every loss of the library accepts three layouts of a batch of point clouds:

- one structure ``(N, D)``;
- a dense padded batch ``(B, N, D)`` with an optional boolean ``mask`` ``(B, N)`` (``True`` = real atom);
- a ragged batch ``(M, D)`` with a PyG-style ``batch`` vector ``(M,)`` of structure indices (sorted or not,
  values ``0 .. B-1``).

Distances use :func:`safe_norm`, whose gradient at a zero vector is zero instead of NaN (the plain
``sqrt(sum(x**2))`` backward gives ``0 * inf = NaN`` for coincident points and padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "as_dense_batch",
    "center",
    "centroid",
    "check_pair_inputs",
    "edge_distances",
    "pairwise_distances",
    "safe_norm",
    "to_dense_batch",
    "to_ragged",
]


def safe_norm(x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
    r"""Euclidean norm :math:`\|x\|` over ``dim`` whose gradient is zero (not NaN) at ``x = 0``.

    Args:
        x: ``(..., D)`` tensor.
        dim: the axis reduced.
        keepdim: keep the reduced axis with size 1.

    Returns:
        ``(...)`` tensor of norms. The value is exact (no epsilon is added); at ``x = 0`` the value is 0 and the
        gradient is the zero subgradient, as for ``torch.linalg.vector_norm``.

    Example:
        >>> x = torch.zeros(3, requires_grad=True)
        >>> safe_norm(x).backward()
        >>> x.grad
        tensor([0., 0., 0.])
    """
    sq = (x * x).sum(dim=dim, keepdim=keepdim)
    positive = sq > 0
    # Double `where`: the sqrt never sees a zero, so its backward never produces inf * 0.
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def pairwise_distances(x: Tensor) -> Tensor:
    r"""All pairwise distances :math:`\|x_i - x_j\|` with safe gradients.

    Args:
        x: ``(..., N, D)`` points.

    Returns:
        ``(..., N, N)`` symmetric distance matrices with a zero diagonal.

    Example:
        >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[0., 5.],
                [5., 0.]])
    """
    return safe_norm(x.unsqueeze(-2) - x.unsqueeze(-3))


def edge_distances(x: Tensor, edges: Tensor) -> Tensor:
    r"""Distances :math:`\|x_i - x_j\|` over the pairs listed in ``edges``.

    Args:
        x: ``(N, D)`` points, or ``(B, N, D)`` batched points.
        edges: ``(2, E)`` long pairs ``(i, j)``; with batched ``x`` either ``(2, E)`` shared by every structure or
            ``(B, 2, E)`` per structure.

    Returns:
        ``(E,)`` or ``(B, E)`` distances.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
        >>> edge_distances(x, torch.tensor([[0, 0], [1, 2]]))
        tensor([5., 1.])
    """
    if x.dim() == 2:
        return safe_norm(x[edges[0]] - x[edges[1]])
    if edges.dim() == 2:
        return safe_norm(x[:, edges[0]] - x[:, edges[1]])
    idx_i = edges[:, 0].unsqueeze(-1).expand(-1, -1, x.shape[-1])
    idx_j = edges[:, 1].unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return safe_norm(torch.gather(x, 1, idx_i) - torch.gather(x, 1, idx_j))


def centroid(x: Tensor, *, mask: Tensor | None = None) -> Tensor:
    r"""Each structure's centroid over its real atoms, shaped to broadcast against ``x``.

    Args:
        x: ``(..., N, D)`` points.
        mask: optional ``(..., N)`` bool, ``True`` for real atoms (a structure without any has centroid 0).

    Returns:
        ``(..., 1, D)`` centroids.

    Example:
        >>> centroid(torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]), mask=torch.tensor([True, True, False]))
        tensor([[2., 1.]])
    """
    if mask is None:
        return x.mean(dim=-2, keepdim=True)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp_min(1)


def center(x: Tensor, *, mask: Tensor | None = None) -> Tensor:
    r"""Subtract each structure's centroid (over real atoms only); padded rows are returned as zeros.

    Args:
        x: ``(..., N, D)`` points.
        mask: optional ``(..., N)`` bool, ``True`` for real atoms.

    Returns:
        ``(..., N, D)`` centred points.

    Example:
        >>> center(torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]), mask=torch.tensor([True, True, False]))
        tensor([[-1.,  0.],
                [ 1.,  0.],
                [ 0.,  0.]])
    """
    centred = x - centroid(x, mask=mask)
    return centred if mask is None else centred * mask.to(x.dtype).unsqueeze(-1)


def to_dense_batch(x: Tensor, batch: Tensor, *, num_structures: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Ragged ``(M, F)`` rows with a ``batch`` vector to a dense padded ``(B, N_max, F)`` tensor and mask.

    Rows keep their relative order inside each structure; padding is zero.

    Args:
        x: ``(M, F)`` rows (e.g. atom positions).
        batch: ``(M,)`` long structure index of each row, values in ``[0, B)``.
        num_structures: ``B``; defaults to ``batch.max() + 1``.

    Returns:
        ``(dense (B, N_max, F), mask (B, N_max) bool)``.

    Example:
        >>> dense, mask = to_dense_batch(torch.arange(3.0).unsqueeze(-1), torch.tensor([0, 1, 1]))
        >>> dense.squeeze(-1), mask
        (tensor([[0., 0.],
                [1., 2.]]), tensor([[ True, False],
                [ True,  True]]))
    """
    num = int(batch.max()) + 1 if (num_structures is None and batch.numel() > 0) else (num_structures or 0)
    counts = torch.bincount(batch, minlength=num)
    n_max = int(counts.max()) if counts.numel() > 0 else 0
    order = torch.argsort(batch, stable=True)
    sorted_batch = batch[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.numel(), device=batch.device) - starts[sorted_batch]
    dense = x.new_zeros((num, n_max, *x.shape[1:]))
    dense[sorted_batch, slot] = x[order]
    mask = torch.zeros((num, n_max), dtype=torch.bool, device=x.device)
    mask[sorted_batch, slot] = True
    return dense, mask


def to_ragged(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    r"""Dense padded ``(B, N, F)`` with ``mask`` ``(B, N)`` to ragged rows ``(M, F)`` and a ``batch`` vector.

    Example:
        >>> rows, batch = to_ragged(torch.arange(4.0).view(2, 2, 1), torch.tensor([[True, False], [True, True]]))
        >>> rows.squeeze(-1), batch
        (tensor([0., 2., 3.]), tensor([0, 1, 1]))
    """
    batch = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand_as(mask)
    return x[mask], batch[mask]


def _shape(t: Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def check_pair_inputs(pred: Tensor, target: Tensor, *, mask: Tensor | None, batch: Tensor | None) -> None:
    """Validate a (prediction, target) pair in one of the three layouts; raise ``TypeError``/``ValueError``.

    The messages name the argument, the shape received and the shape expected.
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {_shape(pred)} and target {_shape(target)}"
        )
    if pred.dim() not in (2, 3):
        raise ValueError(f"pred must have shape (N, D), (B, N, D) or ragged (M, D); got {_shape(pred)}")
    if pred.shape[-1] < 1:
        raise ValueError(f"pred must have at least one spatial dimension D >= 1; got {_shape(pred)}")
    if not bool(torch.isfinite(target).all()):
        raise ValueError("target contains NaN or inf values")
    if batch is not None:
        if mask is not None:
            raise ValueError("pass either mask (dense padded layout) or batch (ragged layout), not both")
        if not isinstance(batch, Tensor) or batch.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"batch must be an int64 tensor of structure indices, got {type(batch).__name__}"
                + (f" of dtype {batch.dtype}" if isinstance(batch, Tensor) else "")
            )
        if pred.dim() != 2 or batch.shape != pred.shape[:1]:
            raise ValueError(
                f"with batch, pred must be ragged (M, D) and batch (M,); got pred {_shape(pred)} and "
                f"batch {_shape(batch)}"
            )
        if batch.numel() and int(batch.min()) < 0:
            raise ValueError("batch must hold non-negative structure indices")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor, got {got}")
        if mask.shape != pred.shape[:-1]:
            raise ValueError(
                f"mask must have shape {tuple(pred.shape[:-1])} (pred's shape without D), got {_shape(mask)}"
            )


def as_dense_batch(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Bring a validated pair to the dense padded layout.

    Returns:
        ``(pred (B, N, D), target (B, N, D), mask (B, N) or None, single)`` where ``single`` tells that the
        input was one unbatched ``(N, D)`` structure.
    """
    if batch is not None:
        pred_d, mask_d = to_dense_batch(pred, batch)
        target_d, _ = to_dense_batch(target, batch)
        return pred_d, target_d, mask_d, False
    if pred.dim() == 2:
        return pred.unsqueeze(0), target.unsqueeze(0), None if mask is None else mask.unsqueeze(0), True
    return pred, target, mask, False
