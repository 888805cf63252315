r"""The pair energy loss for atomistic systems (paper Eq. 7, §4, §4.1, §4.3).

For a target structure :math:`y \in \mathbb{R}^{n \times d}` and a prediction :math:`\hat y`,

.. math::

    E(\hat y, y) = \sum_{\{i, j\} \in \mathcal{E}} k_{ij}(y)\,\big(\|y_i - y_j\| - \|\hat y_i - \hat y_j\|\big)^2,

summed over *unordered* pairs :math:`\{i, j\}`: all pairs of real atoms by default (the complete graph), or the
pairs of an explicit edge list (the sparse loss of §4.3 over a globally rigid graph).

Convention. Eq. 7 of the paper writes :math:`\sum_{i,j} \tfrac12 k_{ij}(\ldots)^2` over *ordered* pairs; every
unordered pair appears twice, so the two are the same number. The authors' code does the same and then folds a
:math:`1/n` (number of real atoms) into the coefficients; that is ``normalize="atoms"`` here. Their "constant" EDM
loss with ``1/n`` equals ``pair_energy_loss(..., coefficients="constant", normalize="atoms", reduction="none")``.

Properties (tested): invariant under :math:`E(d)` acting on either argument and under the permutations that fix
the target distance matrix and the coefficients (Prop. 4.2); zero exactly at :math:`g \cdot y` (Cor. 4.3);
coefficients and target distances are detached, so gradients flow to ``pred`` only; coincident predicted points
and padding give zero, finite gradients.

Evaluation paths, tested equal to each other and to a textbook loop:

- *complete graph*: one blocked kernel with a hand-written gradient computed in the same pass (the gradient is only
  ``O(N D)``, so it is stored instead of an autograd graph of ``O(N^2)`` intermediates). Small inputs are a single
  block, i.e. the dense evaluation vectorised over the batch; when ``B * N * N`` exceeds :data:`DENSE_MAX_PAIRS`
  (or ``chunk_size`` asks for it) the atoms are cut into blocks, each unordered pair of blocks visited once, so
  extra memory is ``O(B * block^2)`` whatever ``N``;
- *complete graph on CUDA*: a fused Triton kernel (:mod:`energyloss._triton_kernels`) for the built-in coefficient
  schemes, ``D <= 4`` and the automatic block size, when Triton is installed: each pair is formed in registers and
  nothing of size ``N^2`` is written; the blocked kernel above is the fallback and the reference;
- *edge list*: gathers only the listed pairs, ``O(E)`` time and memory, gradient again computed in the same pass;
- *ragged*: ``batch`` vectors are brought to the padded layout (complete graph) or used directly (edge lists).

Both kernels return the gradient they computed alongside the value, so the loss is first-order differentiable (a
second backward raises an error); this is what makes them fast and ``O(N)`` in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _numba_kernels, _triton_kernels
from ._reduction import REDUCTIONS as _REDUCTIONS
from ._reduction import reduce_per_structure
from .coefficients import Coefficients, resolve_coefficients
from .geometry import as_dense_batch, centroid, check_pair_inputs, value_checks_enabled

__all__ = ["DENSE_MAX_PAIRS", "TILE_ELEMENTS", "pair_energy_loss", "reduce_per_structure"]

#: Per device type: up to this many pair entries ``B * N * N`` the complete-graph loss is evaluated as one block
#: (dense); above it in square blocks of ``TILE_ELEMENTS`` pair entries (chunked), unless ``chunk_size`` says
#: otherwise. Device types not listed use the ``"cuda"`` values.
DENSE_MAX_PAIRS = {"cpu": 2**20, "cuda": 2**26}

#: Pair entries ``B * block * block`` per block of the chunked evaluation: small enough to stay in cache.
#: On CPU blocks stay in cache; on a GPU they must be large enough to keep the device busy (few kernel launches).
TILE_ELEMENTS = {"cpu": 2**16, "cuda": 2**24}

_NORMALIZE = (None, "atoms", "pairs")


def _check_options(normalize: str | None, reduction: str) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def check_cutoff(cutoff: float | None, normalize: str | None) -> None:
    """Validate ``pair_energy_loss``'s ``cutoff`` (``None`` or a positive finite distance, not with ``"pairs"``)."""
    if cutoff is None:
        return
    if isinstance(cutoff, bool) or not isinstance(cutoff, int | float) or not 0 < cutoff < float("inf"):
        raise ValueError(f"cutoff must be None or a positive finite distance, got {cutoff!r}")
    if normalize == "pairs":
        raise ValueError("cutoff cannot be combined with normalize='pairs' (kept pairs are not counted)")


def _check_edges(edges: Tensor, *, num_nodes: int, num_structures: int | None) -> None:
    if not isinstance(edges, Tensor):
        raise TypeError(f"edges must be a LongTensor of shape (2, E), got {type(edges).__name__}")
    if edges.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edges must be an integer (int64) tensor, got dtype {edges.dtype}")
    shared = edges.dim() == 2 and edges.shape[0] == 2
    per_structure = num_structures is not None and edges.dim() == 3 and edges.shape[:2] == (num_structures, 2)
    if not (shared or per_structure):
        expected = "(2, E)" if num_structures is None else f"(2, E) or ({num_structures}, 2, E)"
        raise ValueError(f"edges must have shape {expected}, got {tuple(edges.shape)}")
    if edges.numel() == 0 or not value_checks_enabled(edges):
        return
    low, high = (int(v) for v in torch.aminmax(edges))
    if low < 0 or high >= num_nodes:
        raise ValueError(f"edges hold node indices in [{low}, {high}] but must lie in [0, {num_nodes})")
    src, dst = (edges[0], edges[1]) if shared else (edges[:, 0], edges[:, 1])
    if bool((src == dst).any()):
        raise ValueError("edges contain self-loops (i, i); list each pair of distinct atoms once")


#: On CUDA, blocks of at most this many distance entries use ``torch.cdist`` (fewest kernel launches), larger ones
#: :func:`_broadcast_distances` (benchmarks/distance_variants.py on an H200: cdist 1.03 ms vs 1.29 ms for a
#: 256 x 29 batch, but 23.5 ms vs 1.83 ms at N = 3000).
CUDA_CDIST_MAX_ENTRIES = 2**19


def _block_distances(a: Tensor, b: Tensor) -> Tensor:
    """``(..., I, J)`` distances between ``a (..., I, D)`` and ``b (..., J, D)`` from exact differences.

    No ``|a|^2 + |b|^2 - 2 a.b`` expansion: its cancellation error would swamp the small distance differences the
    loss measures. Values only: gradients are written by hand in :class:`_PairEnergy`. ``torch.cdist``'s difference
    kernel on the CPU and for small CUDA blocks (:data:`CUDA_CDIST_MAX_ENTRIES`), :func:`_broadcast_distances` for
    large CUDA blocks (see there why).
    """
    if a.device.type == "cpu" or a.shape[:-1].numel() * b.shape[-2] <= CUDA_CDIST_MAX_ENTRIES:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    return _broadcast_distances(a, b)


def _broadcast_distances(a: Tensor, b: Tensor) -> Tensor:
    """Same values as :func:`_block_distances`, accumulated one coordinate at a time by broadcasting.

    ``torch.cdist``'s difference kernel on CUDA reduces each output entry with a whole thread block, which for
    ``D = 3`` left the loss 18x slower than the naive ``(N, N, D)`` reference on an H200 (23.6 ms vs 1.28 ms at
    N = 3000; docs/results/loss-timing.md). Summing squared coordinate differences needs one ``(..., I, J)``
    buffer and runs at memory bandwidth.
    """
    squared = None
    for c in range(a.shape[-1]):
        diff = a[..., :, None, c] - b[..., None, :, c]
        squared = diff.square() if squared is None else squared.addcmul_(diff, diff)
    return squared.sqrt_()  # D >= 1: check_pair_inputs rejects D = 0


def _first_order_only() -> None:
    # Under create_graph=True autograd runs backward with grad mode on; our saved gradient is a constant, so a
    # second derivative would silently be zero. Refuse instead.
    if torch.is_grad_enabled():
        raise RuntimeError(
            "pair_energy_loss is first-order differentiable only: its kernels return the gradient computed with the "
            "value, so it cannot be differentiated twice (create_graph=True)"
        )


def _energy_and_grad(
    pred: Tensor, target: Tensor, mask: Tensor | None, coeff: Coefficients, block: int, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Complete-graph energies ``(B,)`` and, if ``need_grad``, their gradient w.r.t. ``pred`` ``(B, N, D)``.

    Atoms are cut into blocks of ``block``; each unordered pair of blocks ``(I, J)``, ``I <= J``, is visited once.
    For a pair term ``k (d_t - d_p)^2`` the gradient w.r.t. ``p_i`` is ``w_ij (p_i - p_j)`` with
    ``w = 2 k (d_p - d_t) / d_p`` (coincident points, ``d_p = 0``, contribute nothing: the zero subgradient), so a
    block contributes
    ``p_I * rowsum(w) - w @ p_J`` to rows ``I`` and ``p_J * colsum(w) - w^T @ p_I`` to rows ``J``: two small matrix
    products. A diagonal block ``I = J`` is evaluated in full (both triangles, diagonal excluded) and its energy
    halved. Extra memory is a few ``(B, block, block)`` tensors; with ``block = N`` this is the dense evaluation.
    """
    bsz, n, _ = pred.shape
    energy = pred.new_zeros(bsz)
    grad = torch.zeros_like(pred) if need_grad else None
    starts = range(0, n, block)
    for a in starts:
        p_a, t_a = pred[:, a : a + block], target[:, a : a + block]
        for b in starts[a // block :]:
            p_b, t_b = pred[:, b : b + block], target[:, b : b + block]
            d_p = _block_distances(p_a, p_b)
            d_t = _block_distances(t_a, t_b)
            k = coeff(d_t)
            valid = None if mask is None else mask[:, a : a + block, None] & mask[:, None, b : b + block]
            if a == b:
                off_diagonal = ~torch.eye(p_a.shape[1], dtype=torch.bool, device=pred.device)
                valid = off_diagonal if valid is None else valid & off_diagonal
            if valid is not None:
                k = torch.where(valid, k, torch.zeros_like(k))
            r = d_t - d_p
            kr = k * r
            e = (kr * r).sum((-1, -2))
            energy += 0.5 * e if a == b else e
            if need_grad:
                # w / (-2): 2 k (d_p - d_t) / d_p = -2 k r / d_p. At d_p = 0 the pair's points coincide, so its
                # contribution w (p_i - p_j) vanishes whatever finite w is used there (the zero subgradient).
                w = kr / torch.where(d_p > 0, d_p, 1.0)
                # (w @ p) computed as (p^T @ w^T)^T: a 3-row GEMM is much faster than a 3-column one.
                grad[:, a : a + block] += p_a * w.sum(-1, keepdim=True) - (p_b.mT @ w.mT).mT
                if a != b:
                    grad[:, b : b + block] += p_b * w.sum(-2).unsqueeze(-1) - (p_a.mT @ w).mT
    return energy, None if grad is None else grad.mul_(-2.0)


class _PairEnergy(torch.autograd.Function):
    """Complete-graph energies ``(B,)`` with the gradient computed in the same pass (it is only ``O(N D)``)."""

    @staticmethod
    def forward(ctx, pred, target, mask, coeff, block, cutoff):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0]
        if block is None:  # a fused kernel (see pair_energy_loss); the blocked one gets a truncated coeff instead
            fused = _numba_kernels if pred.device.type == "cpu" else _triton_kernels
            energy, grad = fused.pair_energy_and_grad(pred, target, mask, coeff, need_grad, cutoff)
        else:
            energy, grad = _energy_and_grad(pred, target, mask, coeff, block, need_grad)
        if grad is not None:
            ctx.save_for_backward(grad)
        return energy

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        _first_order_only()
        (grad,) = ctx.saved_tensors
        return grad * grad_out[:, None, None], None, None, None, None, None


def _block_size(bsz: int, n: int, chunk_size: int | str | None, device_type: str = "cpu") -> int:
    if isinstance(chunk_size, int):
        return chunk_size
    kind = "cpu" if device_type == "cpu" else "cuda"
    if chunk_size is None and bsz * n * n <= DENSE_MAX_PAIRS[kind]:
        return max(n, 1)
    return max(16, int((TILE_ELEMENTS[kind] / max(bsz, 1)) ** 0.5))


def _edge_energy_and_grad(
    pred: Tensor,
    target: Tensor,
    src: Tensor,
    dst: Tensor,
    owner: Tensor | None,
    num: int,
    valid: Tensor | None,
    coeff: Coefficients,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Energies ``(num,)`` over edges ``(src, dst)`` of flat rows ``pred (M, D)`` and, if asked, the gradient.

    ``owner (E,)`` says which structure each edge belongs to (``None``: all to structure 0). The gradient of
    ``k (d_t - d_p)^2`` is ``-2 k r (p_i - p_j) / d_p`` on ``p_i`` and the opposite on ``p_j``: two ``index_add``.
    """
    diff = pred.index_select(0, src) - pred.index_select(0, dst)
    d_p = torch.linalg.vector_norm(diff, dim=-1)
    d_t = torch.linalg.vector_norm(target.index_select(0, src) - target.index_select(0, dst), dim=-1)
    k = coeff(d_t)
    if valid is not None:
        k = torch.where(valid, k, torch.zeros_like(k))
    r = d_t - d_p
    kr = k * r
    terms = kr * r
    energy = terms.sum().reshape(1) if owner is None else terms.new_zeros(num).index_add_(0, owner, terms)
    if not need_grad:
        return energy, None
    g = (kr / torch.where(d_p > 0, d_p, 1.0)).unsqueeze(-1) * diff  # coincident points: diff = 0
    g = g.mul_(-2.0)
    grad = torch.zeros_like(pred).index_add_(0, src, g)
    # (index_add_ with alpha=-1 takes a slow path on CPU: negate in place instead, g is no longer needed)
    return energy, grad.index_add_(0, dst, g.neg_())


class _EdgeEnergy(torch.autograd.Function):
    """Edge-list energies ``(num,)`` with the ``O(M D)`` gradient computed in the same pass.

    ``row_owner (M,)`` is the structure of each row (``None``: a single structure); edges never cross structures,
    so the gradient of structure ``b``'s energy lives on its own rows and is scaled by its upstream gradient.
    """

    @staticmethod
    def forward(ctx, pred, target, src, dst, row_owner, num, valid, coeff, fused, cutoff):  # type: ignore[override]
        owner = None if row_owner is None else row_owner[src]
        need_grad = ctx.needs_input_grad[0]
        if fused:
            energy, grad = _numba_kernels.edge_energy_and_grad(
                pred, target, src, dst, owner, num, valid, coeff, need_grad, cutoff
            )
        else:
            energy, grad = _edge_energy_and_grad(pred, target, src, dst, owner, num, valid, coeff, need_grad)
        if grad is not None:
            ctx.save_for_backward(grad, row_owner)
        return energy

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        _first_order_only()
        grad, row_owner = ctx.saved_tensors
        scale = grad_out.reshape(()) if row_owner is None else grad_out[row_owner].unsqueeze(-1)
        return grad * scale, None, None, None, None, None, None, None, None, None


def _edge_energy(
    pred: Tensor,
    target: Tensor,
    edges: Tensor,
    *,
    mask: Tensor | None,
    batch: Tensor | None,
    coeff: Coefficients,
    batch_size: int | None = None,
    cutoff: float | None = None,
    count_pairs: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Energies, edge counts (if ``count_pairs``; else ``None``) and atom counts per structure for edge lists.

    Atom counts are returned for ragged rows only (``None`` for a dense batch, whose caller has the mask).

    Dense ``(B, N, D)`` batches are flattened to rows ``b * N + i`` so that one kernel serves every layout.
    """
    if batch is not None:  # ragged rows, global indices
        if batch_size is not None:
            num = batch_size
        else:
            num = int(batch.max()) + 1 if batch.numel() else 0
        src, dst = edges[0], edges[1]
        if value_checks_enabled(batch) and bool((batch[src] != batch[dst]).any()):
            raise ValueError("edges connect atoms of different structures (batch[edges[0]] != batch[edges[1]])")
        rows_p, rows_t, row_owner, valid = pred, target, batch, None
        n_atoms = torch.zeros(num, dtype=torch.long, device=batch.device).index_add_(0, batch, torch.ones_like(batch))
    else:
        bsz, n, d = pred.shape
        num = bsz
        offsets = (torch.arange(bsz, device=pred.device) * n).unsqueeze(-1)  # (B, 1)
        src_b = edges[0].unsqueeze(0) if edges.dim() == 2 else edges[:, 0]
        dst_b = edges[1].unsqueeze(0) if edges.dim() == 2 else edges[:, 1]
        src = (src_b + offsets).reshape(-1) if bsz > 1 else src_b.reshape(-1)
        dst = (dst_b + offsets).reshape(-1) if bsz > 1 else dst_b.reshape(-1)
        rows_p, rows_t = pred.reshape(bsz * n, d), target.reshape(bsz * n, d)
        row_owner = torch.arange(bsz, device=pred.device).repeat_interleave(n) if bsz > 1 else None
        flat_mask = None if mask is None else mask.reshape(-1)
        valid = None if flat_mask is None else flat_mask[src] & flat_mask[dst]
        n_atoms = None
    fused = _numba_kernels.supports_edges(rows_p, coeff)
    if cutoff is not None and not fused:
        coeff = _Truncated(coeff, cutoff)
    energy = _EdgeEnergy.apply(rows_p, rows_t, src, dst, row_owner, num, valid, coeff, fused, cutoff)
    if not count_pairs:
        return energy, None, n_atoms
    edge_owner = torch.zeros_like(src) if row_owner is None else row_owner[src]
    kept = torch.ones_like(src, dtype=torch.bool) if valid is None else valid
    n_pairs = torch.zeros(num, dtype=torch.long, device=pred.device).index_add_(0, edge_owner, kept.long())
    return energy, n_pairs, n_atoms


class _Truncated:
    """``coeff`` with springs beyond ``cutoff`` (target distance) set to 0: the cutoff on the PyTorch paths."""

    def __init__(self, coeff: Coefficients, cutoff: float) -> None:
        self.coeff, self.cutoff = coeff, cutoff

    def __call__(self, distance: Tensor) -> Tensor:
        return torch.where(distance <= self.cutoff, self.coeff(distance), 0.0)


def pair_energy_loss(
    pred: Tensor,
    target: Tensor,
    *,
    coefficients: str | Coefficients = "constant",
    edges: Tensor | None = None,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    normalize: str | None = None,
    reduction: str = "mean",
    chunk_size: int | str | None = None,
    undirected_edges: bool = False,
    batch_size: int | None = None,
    max_num_nodes: int | None = None,
    cutoff: float | None = None,
) -> Tensor:
    r"""Pair (spring) energy loss of paper Eq. 7: an :math:`E(d)`-invariant replacement for the MSE.

    .. math::

        E(\hat y, y) = \sum_{\{i,j\}} k_{ij}(y) \big(\|y_i - y_j\| - \|\hat y_i - \hat y_j\|\big)^2

    over unordered pairs of real atoms (or the listed ``edges``), per structure.

    Args:
        pred: predicted positions ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)``; any ``D >= 1``.
        target: target positions, same shape as ``pred``. Detached: no gradient flows to it.
        coefficients: ``"constant"`` | ``"inverse"`` | ``"inverse_square"`` | ``"exp"``, or a callable mapping
            target distances to spring constants (see :mod:`energyloss.coefficients`). Evaluated on detached
            target distances.
        edges: ``None`` for all pairs; else a long tensor ``(2, E)`` of pairs, each listed once (PyG
            ``edge_index`` layout). For a dense batch it is shared by all structures, or ``(B, 2, E)`` per
            structure; for ragged input it holds global row indices. Pairs touching padded atoms are ignored.
            A PyG ``edge_index`` that lists every pair in both directions must be passed with
            ``undirected_edges=True``, else each pair counts twice (twice the value; nothing is de-duplicated).
        mask: ``(B, N)`` (or ``(N,)``) bool, ``True`` for real atoms; dense layout only.
        batch: ``(M,)`` long structure index of each row; ragged layout only.
        normalize: ``None`` (plain sum), ``"atoms"`` (divide each structure's energy by its number of real atoms,
            as the authors' code does) or ``"pairs"`` (by its number of summed pairs).
        reduction: ``"none"`` (one value per structure: ``(B,)``, or 0-dim for ``(N, D)`` input), ``"mean"`` (over
            structures) or ``"sum"``.
        chunk_size: block size of the complete-graph evaluation. ``None``: the fused Triton kernel where it
            applies (CUDA, built-in coefficients, ``D <= 4``, Triton installed), else one block (dense) up to
            :data:`DENSE_MAX_PAIRS` pair entries ``B * N * N`` and cache-sized blocks above; an int: blocks of that
            many atoms; ``"auto"``: cache-sized blocks whatever the size. Every choice gives the same value and
            gradient (to rounding). On the CPU, ``None`` takes the fused numba kernel (built-in coefficients,
            ``D <= 3``, numba installed; :mod:`energyloss._numba_kernels`), which also serves edge lists.
        undirected_edges: ``edges`` holds each pair twice, as ``(i, j)`` and ``(j, i)`` (PyG's convention for
            undirected graphs); the sum is halved so that each pair counts once (``normalize="pairs"`` too).
        batch_size: ragged layout: the number of structures ``B`` (PyG's ``batch_size``); saves reading
            ``batch.max()`` on the host.
        max_num_nodes: ragged layout: the largest structure's size. With ``batch_size`` too, ragged input needs no
            host synchronisation (and no graph break under ``torch.compile``).
        cutoff: drop the pairs whose *target* distance exceeds ``cutoff`` (short-range springs). Meant for
            decaying schemes: with exponential springs the dropped energy is at most
            ``k0 * exp(-cutoff / length_scale) * sum (d_t - d_p)^2`` over the dropped pairs, i.e. a relative
            ``exp(-cutoff / length_scale)`` of the same pairs under constant ``k0`` springs (tested). On the CPU,
            structures of at least 2048 atoms then find their pairs through a cell list of the target, so time and
            memory grow as ``O(N)`` at fixed density; elsewhere every pair is still visited. Not with
            ``normalize="pairs"`` (the number of pairs kept is not counted).

    Padding is inert: whatever masked-out rows hold (NaN, inf, huge values) changes neither the value nor any
    gradient, and padded rows get exactly zero gradient. Structures without real atoms score 0 and are left out of
    ``reduction="mean"``. The loss is first-order differentiable only: its kernels return the gradient computed with
    the value, and a second backward (``create_graph=True``) raises ``RuntimeError``.

    Returns:
        The reduced loss, in ``pred``'s dtype (float32 for half-precision inputs, which are computed in float32).

    Example:
        >>> y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> pair_energy_loss(y @ rot.T + 3.0, y)  # a rigid motion of the target costs nothing
        tensor(0.)
        >>> pair_energy_loss(2 * y, y)  # doubling every distance: 1 + 4 + 5
        tensor(10.0000)
    """
    check_pair_inputs(pred, target, mask=mask, batch=batch)
    _check_options(normalize, reduction)
    coeff = resolve_coefficients(coefficients)
    if chunk_size is not None and chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be None, 'auto' or a positive int, got {chunk_size!r}")
    if undirected_edges and edges is None:
        raise ValueError("undirected_edges=True needs an edges tensor")
    check_cutoff(cutoff, normalize)

    compute_dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred = pred.to(compute_dtype)
        target = target.detach().to(compute_dtype)

        if edges is not None and batch is not None:
            _check_edges(edges, num_nodes=pred.shape[0], num_structures=None)
            energy, n_pairs, n_atoms = _edge_energy(
                pred,
                target,
                edges,
                mask=None,
                batch=batch,
                coeff=coeff,
                batch_size=batch_size,
                cutoff=cutoff,
                count_pairs=normalize == "pairs",
            )
            single = False
        else:
            pred_b, target_b, mask_b, single = as_dense_batch(
                pred, target, mask=mask, batch=batch, batch_size=batch_size, max_num_nodes=max_num_nodes
            )
            bsz, n = pred_b.shape[:2]
            # atom counts as a tensor only where a mask makes them differ (None: n everywhere, no extra ops)
            n_atoms = None if mask_b is None else mask_b.sum(-1)
            if edges is not None:
                _check_edges(edges, num_nodes=n, num_structures=None if single else bsz)
                energy, n_pairs, _ = _edge_energy(
                    pred_b,
                    target_b,
                    edges,
                    mask=mask_b,
                    batch=None,
                    coeff=coeff,
                    cutoff=cutoff,
                    count_pairs=normalize == "pairs",
                )
            else:
                n_pairs = None
                if normalize == "pairs":
                    n_pairs = n * (n - 1) // 2 if n_atoms is None else n_atoms * (n_atoms - 1) // 2
                fused = chunk_size is None and (
                    _numba_kernels.supports(pred_b, coeff) or _triton_kernels.supports(pred_b, coeff)
                )
                if not fused:
                    # The blocked kernel writes the gradient as p_i * sum_j w_ij - sum_j w_ij p_j, which loses
                    # digits to cancellation when the structure sits far from the origin (float32, offset 1000 for
                    # a spread of 5: 2e-4 relative error instead of 1e-6). The loss only sees differences, so
                    # centring first changes nothing else; target too, for its distances. The fused kernels sum
                    # w_ij (p_i - p_j) from exact differences and need no centring.
                    pred_b = pred_b - centroid(pred_b.detach(), mask=mask_b)
                    target_b = target_b - centroid(target_b, mask=mask_b)
                block = None if fused else _block_size(bsz, n, chunk_size, pred.device.type)
                if cutoff is not None and not fused:
                    coeff = _Truncated(coeff, cutoff)
                energy = _PairEnergy.apply(pred_b, target_b, mask_b, coeff, block, cutoff)
            if n_atoms is None:
                n_atoms = n
        if undirected_edges:
            energy = 0.5 * energy
            n_pairs = None if n_pairs is None else n_pairs // 2

        if normalize == "atoms":
            energy = energy / (max(n_atoms, 1) if isinstance(n_atoms, int) else n_atoms.clamp_min(1).to(energy.dtype))
        elif normalize == "pairs":
            energy = energy / (max(n_pairs, 1) if isinstance(n_pairs, int) else n_pairs.clamp_min(1).to(energy.dtype))
        loss = reduce_per_structure(
            energy, reduction, single=single, counts=None if isinstance(n_atoms, int) else n_atoms
        )
    return loss
