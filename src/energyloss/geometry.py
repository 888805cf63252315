r"""Geometry primitives: safe distances, masks, centring and batch layouts.

Every loss of the library accepts three layouts of a batch of point clouds:

- one structure ``(N, D)``;
- a dense padded batch ``(B, N, D)`` with an optional boolean ``mask`` ``(B, N)`` (``True`` = real atom);
- a ragged batch ``(M, D)`` with a PyG-style ``batch`` vector ``(M,)`` of structure indices (sorted or not,
  values ``0 .. B-1``).

Distances use :func:`safe_norm`, whose gradient at a zero vector is zero instead of NaN (the plain
``sqrt(sum(x**2))`` backward gives ``0 * inf = NaN`` for coincident points and padding).

Padding is inert: :func:`as_dense_batch` replaces every masked-out row by zeros (``torch.where``, not a product, so
NaN, inf or 1e20 there cannot leak), and gradients at padded rows are exactly zero. A structure without any real
atom (an all-``False`` mask row, or a gap in a ``batch`` vector) has loss 0 and is left out of ``reduction="mean"``.

Value checks (NaN in the target, negative ``batch`` entries, edge indices out of range) read tensor values, which
on a GPU is a host synchronisation per call and under ``torch.compile`` a graph break. They run only on CPU tensors
and outside compilation, unless :func:`set_value_checks` says otherwise; shape and dtype checks always run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "as_dense_batch",
    "center",
    "centroid",
    "check_pair_inputs",
    "edge_distances",
    "pairwise_distances",
    "value_checks_enabled",
    "safe_norm",
    "set_value_checks",
    "to_dense_batch",
    "to_ragged",
]


_VALUE_CHECKS = {"mode": "cpu"}
_VALUE_CHECK_MODES = ("cpu", "always", "never")


@contextlib.contextmanager
def _restore(previous: str) -> Iterator[None]:
    try:
        yield
    finally:
        _VALUE_CHECKS["mode"] = previous


def set_value_checks(mode: str) -> contextlib.AbstractContextManager[None]:
    """Choose where the input checks that read tensor values run: ``"cpu"`` (default), ``"always"`` or ``"never"``.

    ``"cpu"`` checks CPU tensors only (free there), never while ``torch.compile`` traces; ``"always"`` also checks
    GPU tensors (one host synchronisation per check, for debugging); ``"never"`` skips them. Usable as a plain call
    or as a context manager that restores the previous mode.

    Example:
        >>> with set_value_checks("never"):
        ...     value_checks_enabled(torch.zeros(1))
        False
        >>> value_checks_enabled(torch.zeros(1))
        True
    """
    if mode not in _VALUE_CHECK_MODES:
        raise ValueError(f"mode must be one of {_VALUE_CHECK_MODES}, got {mode!r}")
    previous = _VALUE_CHECKS["mode"]
    _VALUE_CHECKS["mode"] = mode
    return _restore(previous)


def value_checks_enabled(t: Tensor) -> bool:
    """Whether value-reading input checks run for a tensor on ``t``'s device now (see :func:`set_value_checks`)."""
    mode = _VALUE_CHECKS["mode"]
    if mode == "never" or torch.compiler.is_compiling():
        return False
    return mode == "always" or t.device.type == "cpu"


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
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, 0.0).sum(dim=-2, keepdim=True)
    return total / m.sum(dim=-2, keepdim=True).clamp_min(1).to(x.dtype)


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
    return centred if mask is None else torch.where(mask.unsqueeze(-1), centred, 0.0)


def to_dense_batch(
    x: Tensor,
    batch: Tensor,
    *,
    num_structures: int | None = None,
    max_num_nodes: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Ragged ``(M, F)`` rows with a ``batch`` vector to a dense padded ``(B, N_max, F)`` tensor and mask.

    Rows keep their relative order inside each structure; padding is zero. A structure index that never occurs
    (a gap, e.g. ``[0, 0, 2, 2]``) gives an all-padding structure, which every loss scores 0 and leaves out of its
    mean.

    Args:
        x: ``(M, F)`` rows (e.g. atom positions).
        batch: ``(M,)`` long structure index of each row, values in ``[0, B)``.
        num_structures: ``B`` (PyG's ``batch_size``); defaults to ``batch.max() + 1``.
        max_num_nodes: ``N_max``; defaults to the size of the largest structure. With both hints given nothing
            reads ``batch``'s values on the host: no GPU synchronisation, and ``torch.compile`` needs no graph
            break. Rows beyond ``max_num_nodes`` in a structure are an error (on the CPU) or undefined (elsewhere).

    Returns:
        ``(dense (B, N_max, F), mask (B, N_max) bool)``.

    Example:
        >>> dense, mask = to_dense_batch(torch.arange(3.0).unsqueeze(-1), torch.tensor([0, 1, 1]))
        >>> dense.squeeze(-1), mask
        (tensor([[0., 0.],
                [1., 2.]]), tensor([[ True, False],
                [ True,  True]]))
    """
    if batch.dim() != 1 or x.dim() < 1 or batch.shape[0] != x.shape[0]:
        raise ValueError(f"batch must have shape (M,) with M = x.shape[0]; got x {_shape(x)} and batch {_shape(batch)}")
    if num_structures is None:
        num = int(batch.max()) + 1 if batch.numel() > 0 else 0
    else:
        num = num_structures
    counts = torch.zeros(num, dtype=torch.long, device=batch.device).index_add_(0, batch, torch.ones_like(batch))
    if max_num_nodes is None:
        n_max = int(counts.max()) if counts.numel() > 0 else 0
    else:
        n_max = max_num_nodes
        if value_checks_enabled(batch) and counts.numel() and int(counts.max()) > n_max:
            raise ValueError(f"max_num_nodes={n_max} but a structure of batch has {int(counts.max())} rows")
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
        if value_checks_enabled(batch) and batch.numel() and int(batch.min()) < 0:
            raise ValueError("batch must hold non-negative structure indices")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor, got {got}")
        if mask.shape != pred.shape[:-1]:
            raise ValueError(
                f"mask must have shape {tuple(pred.shape[:-1])} (pred's shape without D), got {_shape(mask)}"
            )
    if value_checks_enabled(target):
        finite = torch.isfinite(target).all(-1)
        if mask is not None:
            finite = finite | ~mask
        if not bool(finite.all()):
            raise ValueError("target contains NaN or inf values at real (unmasked) atoms")


def as_dense_batch(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    batch_size: int | None = None,
    max_num_nodes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Bring a validated pair to the dense padded layout, with padded rows set to zero (inert padding).

    ``batch_size`` / ``max_num_nodes`` are the :func:`to_dense_batch` hints for ragged input.

    Returns:
        ``(pred (B, N, D), target (B, N, D), mask (B, N) or None, single)`` where ``single`` tells that the
        input was one unbatched ``(N, D)`` structure.
    """
    if batch is not None:
        pred_d, mask_d = to_dense_batch(pred, batch, num_structures=batch_size, max_num_nodes=max_num_nodes)
        target_d, _ = to_dense_batch(target, batch, num_structures=batch_size, max_num_nodes=max_num_nodes)
        return pred_d, target_d, mask_d, False
    single = pred.dim() == 2
    if single:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if mask is not None:
        keep = mask.unsqueeze(-1)
        pred, target = torch.where(keep, pred, 0.0), torch.where(keep, target, 0.0)
    return pred, target, mask, single
