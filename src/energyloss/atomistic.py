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

Three evaluation paths compute the same definition and are tested equal:

- *dense*: all pair distances at once, ``(B, N, N)`` intermediates; the fastest for small structures;
- *chunked*: tiles of rows with a hand-written backward, extra memory ``O(N * tile)``; chosen automatically when
  ``B * N * N`` exceeds :data:`DENSE_MAX_PAIRS`, or forced with ``chunk_size``;
- *edge list*: gathers only the listed pairs, ``O(E)`` time and memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .coefficients import Coefficients, resolve_coefficients
from .geometry import as_dense_batch, check_pair_inputs, edge_distances, pairwise_distances

__all__ = ["DENSE_MAX_PAIRS", "TILE_ELEMENTS", "pair_energy_loss", "reduce_per_structure"]

#: Above this many pair entries ``B * N * N`` the complete-graph loss switches from the dense path to the chunked
#: path (unless ``chunk_size`` is given). At the default the dense intermediates stay below ~100 MB in float32.
DENSE_MAX_PAIRS = 2**22

#: Pair entries per tile of the chunked path when ``chunk_size="auto"``: each tile has ``chunk_size`` rows and
#: ``TILE_ELEMENTS // N`` of them fit, so the working set is a few ``(rows, N)`` float tensors.
TILE_ELEMENTS = 2**18

_NORMALIZE = (None, "atoms", "pairs")
_REDUCTIONS = ("none", "mean", "sum")


def reduce_per_structure(values: Tensor, reduction: str, *, single: bool = False) -> Tensor:
    """Reduce a ``(B,)`` tensor of per-structure losses: ``"none"`` | ``"mean"`` | ``"sum"``.

    With ``single=True`` (the input was one unbatched structure) ``"none"`` returns a 0-dim tensor.

    Example:
        >>> reduce_per_structure(torch.tensor([1.0, 3.0]), "mean")
        tensor(2.)
    """
    if reduction == "none":
        return values[0] if single else values
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_options(normalize: str | None, reduction: str) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


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
    if edges.numel() == 0:
        return
    if int(edges.min()) < 0 or int(edges.max()) >= num_nodes:
        raise ValueError(
            f"edges hold node indices in [{int(edges.min())}, {int(edges.max())}] but must lie in [0, {num_nodes})"
        )
    src, dst = (edges[0], edges[1]) if shared else (edges[:, 0], edges[:, 1])
    if bool((src == dst).any()):
        raise ValueError("edges contain self-loops (i, i); list each pair of distinct atoms once")


def _pair_terms(pred_d: Tensor, target_d: Tensor, coeff: Coefficients, valid: Tensor | None) -> Tensor:
    """``k(d_t) * (d_t - d_p)**2`` with invalid pairs contributing exactly zero (value and gradient)."""
    k = coeff(target_d)
    if valid is not None:
        k = torch.where(valid, k, torch.zeros_like(k))
    return k * (target_d - pred_d).square()


def _dense_energy(pred: Tensor, target: Tensor, mask: Tensor | None, coeff: Coefficients) -> Tensor:
    n = pred.shape[-2]
    valid = torch.ones(n, n, dtype=torch.bool, device=pred.device).triu(1)
    if mask is not None:
        valid = valid & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return _pair_terms(pairwise_distances(pred), pairwise_distances(target), coeff, valid).sum((-1, -2))


def _tile_distances(rows: Tensor, cols: Tensor) -> Tensor:
    # Exact differences (no |a|^2 + |b|^2 - 2ab cancellation): the loss needs accurate small distances.
    return torch.cdist(rows, cols, compute_mode="donot_use_mm_for_euclid_dist")


class _ChunkedPairEnergy(torch.autograd.Function):
    """Complete-graph energy of one structure, tile by tile, with a hand-written backward.

    Rows ``[a, b)`` are paired with columns ``[a, N)`` so that each unordered pair is visited once. The gradient
    of ``sum_{i<j} k (d_t - d_p)^2`` for row ``i`` is ``sum_j w_ij (p_i - p_j)`` with ``w = 2 k (d_p - d_t) / d_p``,
    i.e. ``p_i * rowsum(w) - w @ p``: two matrix products per tile.
    """

    @staticmethod
    def forward(ctx, pred, target, mask, coeff, rows_per_tile):  # type: ignore[override]
        ctx.save_for_backward(pred, target, mask)
        ctx.coeff, ctx.rows = coeff, rows_per_tile
        total = pred.new_zeros(())
        for _, _, dp, dt, k in _tiles(pred, target, mask, coeff, rows_per_tile):
            total = total + (k * (dt - dp).square()).sum()
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        pred, target, mask = ctx.saved_tensors
        grad = torch.zeros_like(pred)
        for a, b, dp, dt, k in _tiles(pred, target, mask, ctx.coeff, ctx.rows):
            positive = dp > 0
            w = torch.where(positive, 2.0 * k * (dp - dt) / torch.where(positive, dp, torch.ones_like(dp)), 0.0)
            rows, cols = pred[a:b], pred[a:]
            grad[a:b] += rows * w.sum(1, keepdim=True) - w @ cols
            grad[a:] += cols * w.sum(0).unsqueeze(-1) - w.transpose(0, 1) @ rows
        return grad * grad_out, None, None, None, None


def _tiles(pred: Tensor, target: Tensor, mask: Tensor, coeff: Coefficients, rows_per_tile: int):
    """Yield ``(a, b, d_pred, d_target, k)`` for row tiles ``[a, b)`` against columns ``[a, N)``.

    ``k`` is already zero on invalid pairs (padding, the diagonal and the lower triangle of the diagonal block).
    """
    n = pred.shape[0]
    for a in range(0, n, rows_per_tile):
        b = min(n, a + rows_per_tile)
        dp = _tile_distances(pred[a:b], pred[a:])
        dt = _tile_distances(target[a:b], target[a:])
        valid = mask[a:b].unsqueeze(-1) & mask[a:].unsqueeze(0)
        # strict upper triangle inside the diagonal block: column index (a + c) > row index (a + r)
        valid[:, : b - a] &= torch.ones(b - a, b - a, dtype=torch.bool, device=pred.device).triu(1)
        k = coeff(dt)
        k = torch.where(valid, k, torch.zeros_like(k))
        yield a, b, dp, dt, k


def _chunked_energy(
    pred: Tensor, target: Tensor, mask: Tensor | None, coeff: Coefficients, chunk_size: int | str
) -> Tensor:
    bsz, n, _ = pred.shape
    rows = max(1, TILE_ELEMENTS // max(n, 1)) if chunk_size == "auto" else int(chunk_size)
    energies = []
    for s in range(bsz):
        m = torch.ones(n, dtype=torch.bool, device=pred.device) if mask is None else mask[s]
        energies.append(_ChunkedPairEnergy.apply(pred[s], target[s], m, coeff, rows))
    return torch.stack(energies) if energies else pred.new_zeros(0)


def _edge_energy_dense(
    pred: Tensor, target: Tensor, mask: Tensor | None, edges: Tensor, coeff: Coefficients
) -> tuple[Tensor, Tensor]:
    """Energies ``(B,)`` and edge counts ``(B,)`` over (shared or per-structure) edges of a dense batch."""
    dp = edge_distances(pred, edges)
    dt = edge_distances(target, edges)
    if mask is None:
        valid = None
        count = torch.full((pred.shape[0],), edges.shape[-1], device=pred.device)
    else:
        if edges.dim() == 2:
            valid = mask[:, edges[0]] & mask[:, edges[1]]
        else:
            valid = torch.gather(mask, 1, edges[:, 0]) & torch.gather(mask, 1, edges[:, 1])
        count = valid.sum(-1)
    return _pair_terms(dp, dt, coeff, valid).sum(-1), count


def _edge_energy_ragged(
    pred: Tensor, target: Tensor, batch: Tensor, edges: Tensor, coeff: Coefficients
) -> tuple[Tensor, Tensor, Tensor]:
    """Energies, edge counts and atom counts per structure of a ragged batch with global edge indices."""
    num = int(batch.max()) + 1 if batch.numel() else 0
    owner = batch[edges[0]]
    if bool((owner != batch[edges[1]]).any()):
        raise ValueError("edges connect atoms of different structures (batch[edges[0]] != batch[edges[1]])")
    terms = _pair_terms(edge_distances(pred, edges), edge_distances(target, edges), coeff, None)
    energy = terms.new_zeros(num).index_add(0, owner, terms)
    return energy, torch.bincount(owner, minlength=num), torch.bincount(batch, minlength=num)


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
        mask: ``(B, N)`` (or ``(N,)``) bool, ``True`` for real atoms; dense layout only.
        batch: ``(M,)`` long structure index of each row; ragged layout only.
        normalize: ``None`` (plain sum), ``"atoms"`` (divide each structure's energy by its number of real atoms,
            as the authors' code does) or ``"pairs"`` (by its number of summed pairs).
        reduction: ``"none"`` (one value per structure: ``(B,)``, or 0-dim for ``(N, D)`` input), ``"mean"`` (over
            structures) or ``"sum"``.
        chunk_size: complete-graph path selection. ``None``: dense below :data:`DENSE_MAX_PAIRS` pair entries,
            chunked above. An int forces the chunked path with that many rows per tile; ``"auto"`` forces it with
            an automatic tile. The chunked path is first-order differentiable only (no double backward).

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

    compute_dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred = pred.to(compute_dtype)
        target = target.detach().to(compute_dtype)

        if edges is not None and batch is not None:
            _check_edges(edges, num_nodes=pred.shape[0], num_structures=None)
            energy, n_pairs, n_atoms = _edge_energy_ragged(pred, target, batch, edges, coeff)
            single = False
        else:
            pred_b, target_b, mask_b, single = as_dense_batch(pred, target, mask=mask, batch=batch)
            bsz, n = pred_b.shape[:2]
            n_atoms = torch.full((bsz,), n, device=pred.device) if mask_b is None else mask_b.sum(-1)
            if edges is not None:
                _check_edges(edges, num_nodes=n, num_structures=None if single else bsz)
                energy, n_pairs = _edge_energy_dense(pred_b, target_b, mask_b, edges, coeff)
            else:
                n_pairs = n_atoms * (n_atoms - 1) // 2
                use_chunks = chunk_size is not None or bsz * n * n > DENSE_MAX_PAIRS
                if use_chunks:
                    energy = _chunked_energy(pred_b, target_b, mask_b, coeff, chunk_size or "auto")
                else:
                    energy = _dense_energy(pred_b, target_b, mask_b, coeff)

        if normalize == "atoms":
            energy = energy / n_atoms.clamp_min(1).to(energy.dtype)
        elif normalize == "pairs":
            energy = energy / n_pairs.clamp_min(1).to(energy.dtype)
        loss = reduce_per_structure(energy, reduction, single=single)
    return loss
