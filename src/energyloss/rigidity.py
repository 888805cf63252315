r"""Sparse rigid graphs for the energy loss (paper §4.3, App. A.5, Eq. 57).

The pair energy loss (Eq. 7) sums over all :math:`N(N-1)/2` pairs. Summing over the edges :math:`\mathcal E` of a
graph instead costs :math:`O(|\mathcal E|)` and keeps the global minimisers (the :math:`E(D)` images of the
target, and nothing else) exactly when the framework (graph, target positions) is *globally rigid*: every
placement with the same edge lengths is congruent to the target. For generic positions this is a property of the
graph alone (Gortler, Healy and Thurston 2010), and random :math:`k`-regular graphs with :math:`k = 2D` are
globally rigid with high probability (App. A.5, Fig. 5).

This module provides

- :func:`random_regular_graph`: random :math:`k`-regular simple graphs, seeded by a ``torch.Generator``;
- :func:`rigidity_matrix`, :func:`is_rigid` and :func:`is_globally_rigid`: generic (infinitesimal) rigidity by
  the rank of the rigidity matrix and generic global rigidity by the stress-matrix test, in *exact* arithmetic;
- :class:`RigidGraphPool`: per number of vertices, a pool of verified globally rigid random graphs, sampled per
  structure for padded or ragged batches;
- :func:`distance_automorphisms` and :func:`symmetrize_edges`: the automorphism group of the target's distance
  matrix (and atom types) and the union of a graph's images under it (Eq. 57);
- :func:`sparse_pair_energy_loss`: the energy loss over pool graphs.

How the rigidity tests stay exact
---------------------------------
Generic rank is the rank of the rigidity matrix at *random* positions. Floating-point ranks need a singular-value
threshold, and the decision can flip with round-off on large or badly conditioned frameworks. Here positions are
uniform random integers modulo the prime :math:`p = 2^{31} - 1` and every rank is computed by Gaussian
elimination over the finite field :math:`\mathbb F_p` (int64 numpy; products stay below :math:`2^{62}`). This is
exact, and the error is one-sided:

- a minor that is non-zero modulo :math:`p` is a non-zero integer polynomial, so a rank reached over
  :math:`\mathbb F_p` is a lower bound of the generic rank: a ``True`` answer is a certificate (rigidity by
  Asimow-Roth, global rigidity by Connelly's sufficient condition applied to the stress found);
- a ``False`` answer is wrong only if the random point hits the zero set of a non-zero polynomial of degree at
  most :math:`DN`, which happens with probability at most :math:`DN/p` per trial (Schwartz-Zippel), i.e.
  :math:`< 10^{-6}` for :math:`N \le 500`; ``trials`` independent draws multiply these probabilities.

The cost is :math:`O((DN)^3)` integer operations per trial (a few ms at :math:`N = 30`, about 0.1 s at
:math:`N = 128`, :math:`D = 3`), so the tests are meant for the molecule and shape sizes of the paper, not for
graphs with many thousands of vertices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_SYMMETRY_TOL",
    "RigidGraphPool",
    "SymmetrizedEdges",
    "complete_graph",
    "distance_automorphisms",
    "is_globally_rigid",
    "is_rigid",
    "orbit_random_graph",
    "random_regular_graph",
    "rigidity_matrix",
    "sparse_pair_energy_loss",
    "symmetrize_edges",
]

#: The prime of the finite field used for exact ranks (a Mersenne prime; products of two residues fit in int64).
PRIME = 2_147_483_647
#: Default number of independent random placements tried by the rigidity tests (a ``True`` is a certificate).
DEFAULT_TRIALS = 2
#: Default tolerance (in the units of the target positions) under which two distances count as equal.
DEFAULT_SYMMETRY_TOL = 1e-3
#: How many times :func:`random_regular_graph` restarts the pairing before giving up.
MAX_PAIRING_RESTARTS = 1000


# ---------------------------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------------------------


def _check_count(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _edges_tensor(keys: np.ndarray, n: int) -> Tensor:
    """Sorted unique pair keys ``i * n + j`` (``i < j``) to a ``(2, E)`` LongTensor."""
    keys = np.unique(keys)
    return torch.from_numpy(np.stack([keys // max(n, 1), keys % max(n, 1)]).astype(np.int64))


def complete_graph(n: int) -> Tensor:
    r"""The edges of the complete graph :math:`K_n`, each unordered pair once.

    Args:
        n: number of vertices.

    Returns:
        ``(2, n(n-1)/2)`` LongTensor with ``edges[0] < edges[1]``, sorted.

    Example:
        >>> complete_graph(3)
        tensor([[0, 0, 1],
                [1, 2, 2]])
    """
    n = _check_count(n, "n", minimum=0)
    i, j = torch.triu_indices(n, n, offset=1)
    return torch.stack([i, j])


def _try_pairing(degrees: np.ndarray, generator: torch.Generator | None) -> np.ndarray | None:
    """One run of the pairing (configuration) model with rejection of loops and multi-edges, round by round.

    Stubs are shuffled and paired; valid pairs are kept and the rejected stubs are reshuffled, until all are
    used (success, returns the pair keys) or no valid pair is left among the remaining stubs (failure, ``None``).
    """
    n = degrees.size
    stubs = np.repeat(np.arange(n, dtype=np.int64), degrees)
    keys = np.empty(0, dtype=np.int64)
    while stubs.size:
        perm = torch.randperm(stubs.size, generator=generator).numpy()
        pairs = stubs[perm].reshape(-1, 2)
        a, b = pairs.min(axis=1), pairs.max(axis=1)
        key = a * n + b
        ok = (a != b) & ~np.isin(key, keys)
        _, first = np.unique(key, return_index=True)
        is_first = np.zeros(key.size, dtype=bool)
        is_first[first] = True
        ok &= is_first
        keys = np.concatenate([keys, key[ok]])
        stubs = pairs[~ok].ravel()
        if stubs.size and not ok.any() and not _pairable(stubs, keys, n):
            return None
    return keys


def _pairable(stubs: np.ndarray, keys: np.ndarray, n: int) -> bool:
    """Whether two distinct remaining stub vertices are not yet adjacent (so the pairing can go on)."""
    verts = np.unique(stubs)
    if verts.size < 2:
        return False
    a, b = np.triu_indices(verts.size, k=1)
    return bool((~np.isin(verts[a] * n + verts[b], keys)).any())


def random_regular_graph(n: int, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    r"""A random :math:`k`-regular simple graph on ``n`` vertices (paper App. A.5).

    Pairing model with rejection, as in Steger and Wormald (1999) and ``networkx.random_regular_graph``: the
    :math:`nk` half-edges ("stubs") are shuffled and paired, loops and repeated edges are rejected and their stubs
    re-paired, and the whole draw restarts if it gets stuck. The distribution is asymptotically uniform for fixed
    :math:`k` (exactly uniform it is not). Vertex labels are exchangeable.

    Special cases:

    - ``k >= n - 1``: the complete graph :math:`K_n` (a :math:`k`-regular simple graph cannot exist);
    - ``k == 0``: no edges;
    - ``n * k`` odd (no :math:`k`-regular graph exists): one vertex, chosen uniformly at random, gets degree
      :math:`k + 1` and all others degree :math:`k`, so :math:`|\mathcal E| = (nk + 1)/2`. Adding an edge's worth
      of degree keeps the graph at least as rigid as its neighbours in :math:`k`.

    Args:
        n: number of vertices, ``n >= 1``.
        k: degree, ``k >= 0``.
        generator: ``torch.Generator`` for the randomness (the global torch RNG when ``None``).

    Returns:
        ``(2, E)`` LongTensor, each undirected edge once with ``edges[0] < edges[1]``, sorted; ``E = nk/2``.

    Example:
        >>> edges = random_regular_graph(10, 4, generator=torch.Generator().manual_seed(0))
        >>> edges.shape, torch.bincount(edges.flatten(), minlength=10).tolist()
        (torch.Size([2, 20]), [4, 4, 4, 4, 4, 4, 4, 4, 4, 4])
    """
    n = _check_count(n, "n", minimum=1)
    k = _check_count(k, "k", minimum=0)
    if k >= n - 1:
        return complete_graph(n)
    if k == 0:
        return torch.empty(2, 0, dtype=torch.long)
    degrees = np.full(n, k, dtype=np.int64)
    if (n * k) % 2:
        degrees[int(torch.randint(n, (1,), generator=generator))] += 1
    for _ in range(MAX_PAIRING_RESTARTS):
        keys = _try_pairing(degrees, generator)
        if keys is not None:
            return _edges_tensor(keys, n)
    raise RuntimeError(f"random_regular_graph: no {k}-regular graph on {n} vertices after {MAX_PAIRING_RESTARTS} tries")


def _canonical_edges(edges, n: int, *, name: str = "edges") -> np.ndarray:
    """Validate ``edges`` (``(2, E)`` integer) against ``n`` vertices; return unique ``(E', 2)`` pairs ``i < j``."""
    arr = edges.detach().cpu().numpy() if isinstance(edges, Tensor) else np.asarray(edges)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, E), got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer vertex indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name} holds vertex indices outside [0, {n}): min {arr.min()}, max {arr.max()}")
    if (arr[0] == arr[1]).any():
        raise ValueError(f"{name} holds a self-loop ({int(arr[0][arr[0] == arr[1]][0])}, same); remove it")
    a, b = np.minimum(arr[0], arr[1]), np.maximum(arr[0], arr[1])
    keys = np.unique(a * n + b)
    return np.stack([keys // n, keys % n], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# rigidity
# ---------------------------------------------------------------------------------------------------------------


def rigidity_matrix(edges: Tensor, positions: Tensor) -> Tensor:
    r"""The rigidity matrix :math:`R(p)` of a framework: the Jacobian of the squared edge lengths, halved.

    Row :math:`e = \{i, j\}` holds :math:`p_i - p_j` in the columns of vertex :math:`i` and :math:`p_j - p_i` in those
    of vertex :math:`j` (vertex-major: column ``i * D + a``). Its kernel holds the infinitesimal motions and its
    left kernel the equilibrium stresses.

    Args:
        edges: ``(2, E)`` long vertex pairs.
        positions: ``(N, D)`` vertex positions (any real or integer dtype).

    Returns:
        ``(E, N * D)`` tensor of ``positions.dtype``.

    Example:
        >>> rigidity_matrix(torch.tensor([[0], [1]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[-3., -4.,  3.,  4.]])
    """
    if positions.dim() != 2:
        raise ValueError(f"positions must have shape (N, D), got {tuple(positions.shape)}")
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise ValueError(f"edges must have shape (2, E), got {tuple(edges.shape)}")
    n, d = positions.shape
    num = edges.shape[1]
    diff = positions[edges[0]] - positions[edges[1]]
    out = positions.new_zeros(num, n, d)
    rows = torch.arange(num)
    out[rows, edges[0]] = diff
    out[rows, edges[1]] = -diff
    return out.reshape(num, n * d)


def _max_rank(n: int, d: int) -> int:
    """Generic rank of the complete framework's rigidity matrix: C(n,2) if n <= d+1, else dn - C(d+1,2)."""
    if n <= d + 1:
        return n * (n - 1) // 2
    return d * n - d * (d + 1) // 2


def _echelon_mod(a: np.ndarray, p: int = PRIME) -> tuple[np.ndarray, list[int]]:
    """Row echelon form over GF(p) by forward elimination: (non-zero rows with unit pivots, pivot columns)."""
    a = np.array(a, dtype=np.int64) % p
    rows, cols = a.shape
    pivots: list[int] = []
    r = 0
    for c in range(cols):
        if r == rows:
            break
        nz = np.flatnonzero(a[r:, c])
        if nz.size == 0:
            continue
        piv = r + int(nz[0])
        if piv != r:
            a[[r, piv]] = a[[piv, r]]
        a[r, c:] = a[r, c:] * pow(int(a[r, c]), p - 2, p) % p
        below = r + 1 + np.flatnonzero(a[r + 1 :, c])
        if below.size:
            a[below, c:] = (a[below, c:] - (a[below, c, None] * a[r, c:][None, :]) % p) % p
        pivots.append(c)
        r += 1
    return a[:r], pivots


def _rank_mod(a: np.ndarray, p: int = PRIME) -> int:
    if a.size == 0:
        return 0
    return len(_echelon_mod(a, p)[1])


def _kernel_vector_mod(echelon: np.ndarray, pivots: list[int], free_values: np.ndarray, p: int = PRIME) -> np.ndarray:
    """The kernel vector of an echelon form whose free coordinates are ``free_values`` (back substitution)."""
    cols = echelon.shape[1]
    x = np.zeros(cols, dtype=np.int64)
    free = np.setdiff1d(np.arange(cols), np.asarray(pivots, dtype=np.int64))
    x[free] = free_values
    for i in range(len(pivots) - 1, -1, -1):
        # terms < p^2 are reduced before summing: at most `cols` terms < p, no int64 overflow
        x[pivots[i]] = (-int(((echelon[i] * x) % p).sum())) % p
    return x


def _random_residues(shape: Sequence[int], generator: torch.Generator | None) -> np.ndarray:
    return torch.randint(0, PRIME, tuple(shape), generator=generator, dtype=torch.int64).numpy()


def _rigidity_matrix_mod(pairs: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rigidity matrix over GF(p) for integer positions ``pos`` (N, D) and pairs (E, 2)."""
    n, d = pos.shape
    num = pairs.shape[0]
    out = np.zeros((num, n, d), dtype=np.int64)
    diff = (pos[pairs[:, 0]] - pos[pairs[:, 1]]) % PRIME
    rows = np.arange(num)
    out[rows, pairs[:, 0]] = diff
    out[rows, pairs[:, 1]] = (-diff) % PRIME
    return out.reshape(num, n * d)


def _check_dim(d) -> int:
    return _check_count(d, "d", minimum=1)


def _check_trials(trials) -> int:
    return _check_count(trials, "trials", minimum=1)


def is_rigid(
    edges: Tensor, n: int, d: int, *, generator: torch.Generator | None = None, trials: int = DEFAULT_TRIALS
) -> bool:
    r"""Whether the graph is generically (infinitesimally) rigid in :math:`\mathbb R^d`.

    Asimow-Roth: a graph is generically rigid iff its rigidity matrix at generic positions has rank
    :math:`dn - d(d+1)/2` (or :math:`n(n-1)/2` when :math:`n \le d + 1`, where only complete graphs are rigid).
    Ranks are exact, over :math:`\mathbb F_p` at random integer positions (see the module notes): ``True`` is
    certain, ``False`` is wrong with probability below :math:`(dn/p)^{\text{trials}}`.

    Args:
        edges: ``(2, E)`` long vertex pairs (either orientation; duplicates are merged; no self-loops).
        n: number of vertices (isolated vertices count).
        d: dimension.
        generator: ``torch.Generator`` for the random positions.
        trials: independent random placements tried before answering ``False``.

    Returns:
        ``bool``.

    Example:
        >>> square = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
        >>> is_rigid(square, 4, 2), is_rigid(torch.cat([square, torch.tensor([[0], [2]])], 1), 4, 2)
        (False, True)
    """
    n = _check_count(n, "n", minimum=1)
    d, trials = _check_dim(d), _check_trials(trials)
    pairs = _canonical_edges(edges, n)
    target = _max_rank(n, d)
    if pairs.shape[0] < target:
        return False  # Maxwell count: too few edges
    if target == 0:
        return True
    for _ in range(trials):
        pos = _random_residues((n, d), generator)
        if _rank_mod(_rigidity_matrix_mod(pairs, pos)) == target:
            return True
    return False


def _random_stress_matrix_rank(pairs: np.ndarray, n: int, d: int, generator: torch.Generator | None) -> int:
    """One trial of the stress test: rank of a random stress matrix, or -1 if the placement is not rigid."""
    pos = _random_residues((n, d), generator)
    rt = _rigidity_matrix_mod(pairs, pos).T  # (dn, E): its kernel is the stress space
    echelon, pivots = _echelon_mod(rt)
    if len(pivots) < _max_rank(n, d):
        return -1
    num_free = pairs.shape[0] - len(pivots)
    if num_free == 0:
        return 0
    omega = _kernel_vector_mod(echelon, pivots, _random_residues((num_free,), generator))
    stress = np.zeros((n, n), dtype=np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    stress[i, j] = (-omega) % PRIME
    stress[j, i] = (-omega) % PRIME
    np.add.at(stress, (i, i), omega)
    np.add.at(stress, (j, j), omega)
    return _rank_mod(stress % PRIME)


def is_globally_rigid(
    edges: Tensor, n: int, d: int, *, generator: torch.Generator | None = None, trials: int = DEFAULT_TRIALS
) -> bool:
    r"""Whether the graph is generically globally rigid in :math:`\mathbb R^d`.

    Gortler-Healy-Thurston (2010) with Connelly (2005): for :math:`n \ge d + 2` a graph is generically globally
    rigid iff a generic framework has an equilibrium stress :math:`\omega` (:math:`\omega^\top R(p) = 0`) whose
    stress matrix :math:`\Omega_{ij} = -\omega_{ij}`, :math:`\Omega_{ii} = \sum_j \omega_{ij}` has rank
    :math:`n - d - 1` (the maximum). The test draws random positions, checks rigidity there (a globally rigid
    graph is rigid) and computes the rank of the stress matrix of a random stress. For :math:`n \le d + 1` the
    answer is "complete graph". Exact arithmetic over :math:`\mathbb F_p` (see the module notes): ``True`` is
    certain, ``False`` is wrong with probability below about :math:`(2dn/p)^{\text{trials}}`.

    Args:
        edges: ``(2, E)`` long vertex pairs (either orientation; duplicates are merged; no self-loops).
        n: number of vertices.
        d: dimension.
        generator: ``torch.Generator`` for the random positions and stress.
        trials: independent random placements tried before answering ``False``.

    Returns:
        ``bool``.

    Example:
        >>> wheel = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 2, 3, 4, 1]])  # hub 0, rim 1-2-3-4
        >>> is_globally_rigid(wheel, 5, 2), is_globally_rigid(wheel, 5, 3)
        (True, False)
    """
    n = _check_count(n, "n", minimum=1)
    d, trials = _check_dim(d), _check_trials(trials)
    pairs = _canonical_edges(edges, n)
    if n <= d + 1:
        return pairs.shape[0] == n * (n - 1) // 2
    if pairs.shape[0] < _max_rank(n, d) + 1:
        return False  # globally rigid graphs on n >= d + 2 vertices are redundantly rigid
    for _ in range(trials):
        if _random_stress_matrix_rank(pairs, n, d, generator) == n - d - 1:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# pools of globally rigid graphs
# ---------------------------------------------------------------------------------------------------------------


def _derived_seed(seed: int, n: int) -> int:
    """A seed for vertex count ``n`` that depends only on ``(seed, n)`` (not on the order pools are built)."""
    return int(np.random.SeedSequence([seed, n]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


class RigidGraphPool:
    r"""Pools of random :math:`k`-regular graphs, verified globally rigid in :math:`\mathbb R^d`, per vertex count.

    The sparse energy loss draws one graph per structure from the pool of its size (paper App. A.5: 100 graphs per
    size, :math:`k = 2D`). Pools are built lazily, on the first request for a size, and cached. The graphs for size
    ``n`` depend only on ``(seed, n)``: two pools with the same ``(d, k, size, seed)`` are identical, whatever
    order their sizes are requested in. Candidates that fail :func:`is_globally_rigid` are discarded (and
    counted in :attr:`rejected`). For ``n <= k + 1`` every graph of the pool is the complete graph.

    Args:
        d: dimension of the point clouds.
        k: degree of the random regular graphs; default ``2 * d``.
        size: number of graphs per vertex count.
        seed: base seed of the pool.
        verify: check global rigidity of every candidate (turn off only for sizes too large to test).
        max_rejections: give up (``RuntimeError``) after this many rejected candidates for one size; default
            ``10 * size``.

    Example:
        >>> pool = RigidGraphPool(2, size=4, seed=0)
        >>> pool.graphs(6).shape  # 4 graphs of 6 * 4 / 2 = 12 edges
        torch.Size([4, 2, 12])
        >>> pool.sample(6, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 12])
    """

    def __init__(
        self,
        d: int,
        *,
        k: int | None = None,
        size: int = 100,
        seed: int = 0,
        verify: bool = True,
        max_rejections: int | None = None,
    ) -> None:
        self.d = _check_dim(d)
        self.k = 2 * self.d if k is None else _check_count(k, "k", minimum=0)
        self.size = _check_count(size, "size", minimum=1)
        self.seed = int(seed)
        self.verify = bool(verify)
        self.max_rejections = 10 * self.size if max_rejections is None else int(max_rejections)
        self._cache: dict[int, Tensor] = {}
        #: number of candidate graphs rejected as not globally rigid, per vertex count
        self.rejected: dict[int, int] = {}

    def __repr__(self) -> str:
        return (
            f"RigidGraphPool(d={self.d}, k={self.k}, size={self.size}, seed={self.seed}, built={sorted(self._cache)})"
        )

    def graphs(self, n: int) -> Tensor:
        """All graphs of the pool for ``n`` vertices: ``(size, 2, E_n)`` LongTensor (built on first use)."""
        n = _check_count(n, "n", minimum=1)
        if n not in self._cache:
            self._cache[n] = self._build(n)
        return self._cache[n]

    def _build(self, n: int) -> Tensor:
        if self.k >= n - 1:
            self.rejected[n] = 0
            return complete_graph(n).unsqueeze(0).expand(self.size, -1, -1).contiguous()
        gen = torch.Generator().manual_seed(_derived_seed(self.seed, n))
        found: list[Tensor] = []
        rejected = 0
        while len(found) < self.size:
            edges = random_regular_graph(n, self.k, generator=gen)
            if not self.verify or is_globally_rigid(edges, n, self.d, generator=gen):
                found.append(edges)
                continue
            rejected += 1
            if rejected > self.max_rejections:
                raise RuntimeError(
                    f"RigidGraphPool: {rejected} random {self.k}-regular graphs on {n} vertices were not globally "
                    f"rigid in {self.d}-D (found {len(found)} of {self.size}); increase k"
                )
        self.rejected[n] = rejected
        return torch.stack(found)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """One graph for ``n`` vertices drawn uniformly from the pool: ``(2, E_n)``."""
        pool = self.graphs(n)
        return pool[int(torch.randint(pool.shape[0], (1,), generator=generator))]

    def batch_edges(self, mask: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Edges for a dense padded batch: one pool graph per structure, over its real atoms.

        Structure ``b`` with :math:`n_b` real atoms at positions ``nonzero(mask[b])`` gets a graph drawn from the
        pool of size :math:`n_b`, relabelled onto those positions. Structures have different edge counts, so the
        lists are padded to the longest with pairs ``(p, q)`` where ``p`` is a padded atom of that structure
        (one exists: edge counts grow with :math:`n_b`, so only structures smaller than the largest need
        padding). :func:`~energyloss.atomistic.pair_energy_loss` given the same ``mask`` ignores every pair that
        touches a padded atom, so padding adds exactly zero energy and gradient; all indices lie in ``[0, N)``
        and no pair is a self-loop.

        Args:
            mask: ``(B, N)`` bool, ``True`` for real atoms.
            generator: ``torch.Generator`` for the draws.

        Returns:
            ``(B, 2, E_max)`` LongTensor on ``mask.device``.

        Example:
            >>> pool = RigidGraphPool(2, size=2)
            >>> mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
            >>> pool.batch_edges(mask, generator=torch.Generator().manual_seed(0))[0]  # K3 padded to K4's 6 pairs
            tensor([[0, 0, 1, 3, 3, 3],
                    [1, 2, 2, 0, 0, 0]])
        """
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a (B, N) bool tensor, got {got}")
        mask_cpu = mask.cpu()
        per: list[Tensor] = []
        for row in mask_cpu:
            idx = torch.nonzero(row).flatten()
            if idx.numel():
                per.append(idx[self.sample(idx.numel(), generator=generator)])
            else:
                per.append(torch.zeros(2, 0, dtype=torch.long))
        e_max = max((e.shape[1] for e in per), default=0)
        out = torch.zeros(len(per), 2, e_max, dtype=torch.long)
        for b, (row, e) in enumerate(zip(mask_cpu, per, strict=True)):
            out[b, :, : e.shape[1]] = e
            if e.shape[1] < e_max:
                pad = int(torch.nonzero(~row).flatten()[0])
                out[b, 0, e.shape[1] :] = pad
                out[b, 1, e.shape[1] :] = 1 if pad == 0 else 0
        return out.to(mask.device)

    def ragged_edges(
        self, batch: Tensor, *, generator: torch.Generator | None = None, num_structures: int | None = None
    ) -> Tensor:
        r"""Edges for a ragged batch (PyG ``batch`` vector): one pool graph per structure, in global row indices.

        Args:
            batch: ``(M,)`` long structure index of each row (sorted or not).
            generator: ``torch.Generator`` for the draws.
            num_structures: number of structures ``B``; default ``batch.max() + 1``.

        Returns:
            ``(2, E_total)`` LongTensor of row indices into the ragged ``(M, D)`` tensor, on ``batch.device``.
        """
        if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.dtype not in (torch.int64, torch.int32):
            got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"batch must be an (M,) integer tensor of structure indices, got {got}")
        b_cpu = batch.cpu().long()
        num = (int(b_cpu.max()) + 1 if b_cpu.numel() else 0) if num_structures is None else int(num_structures)
        out: list[Tensor] = []
        for b in range(num):
            idx = torch.nonzero(b_cpu == b).flatten()
            if idx.numel():
                out.append(idx[self.sample(idx.numel(), generator=generator)])
        edges = torch.cat(out, dim=1) if out else torch.zeros(2, 0, dtype=torch.long)
        return edges.to(batch.device)


# ---------------------------------------------------------------------------------------------------------------
# automorphisms and symmetrisation (Eq. 57)
# ---------------------------------------------------------------------------------------------------------------


def _distance_classes(x: np.ndarray, tol: float) -> np.ndarray:
    """Integer colour of every pair: distances are sorted and cut wherever two neighbours differ by more than tol."""
    diff = x[:, None, :] - x[None, :, :]
    dist = np.sqrt((diff * diff).sum(-1))
    flat = dist.ravel()
    order = np.argsort(flat, kind="stable")
    jumps = np.diff(flat[order]) > tol
    cls = np.empty(flat.size, dtype=np.int64)
    cls[order] = np.concatenate([[0], np.cumsum(jumps)])
    return cls.reshape(dist.shape)


def _refine(colours: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Colour refinement (1-WL) on the complete edge-coloured graph until the partition is stable."""
    n = colours.size
    colours = np.unique(colours, return_inverse=True)[1].astype(np.int64)
    while True:
        width = int(colours.max()) + 1
        codes = np.sort(classes * width + colours[None, :], axis=1)
        sig = np.concatenate([colours[:, None], codes], axis=1)
        new = np.unique(sig, axis=0, return_inverse=True)[1].reshape(n).astype(np.int64)
        if new.max() == colours.max():
            return new
        colours = new


def _search(classes: np.ndarray, colours: np.ndarray, order: np.ndarray, fixed: np.ndarray, v: int, w: int):
    """Backtracking search for one automorphism fixing ``fixed`` pointwise and mapping ``v`` to ``w`` (or None).

    The caller has checked that ``v -> w`` is consistent with the fixed points. Vertices are mapped in ``order``;
    the candidates of a vertex are the unused vertices of its colour whose distance classes to every image so
    far match.
    """
    n = colours.size
    sigma = np.full(n, -1, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    sigma[fixed] = fixed
    used[fixed] = True
    sigma[v] = w
    used[w] = True
    dom = [*fixed.tolist(), v]
    rest = [u for u in order.tolist() if sigma[u] < 0]
    if not rest:
        return sigma

    def candidates(u: int) -> list[int]:
        d_arr = np.asarray(dom, dtype=np.int64)
        ok = (~used) & (colours == colours[u])
        ok &= (classes[:, sigma[d_arr]] == classes[u, d_arr][None, :]).all(axis=1)
        return np.flatnonzero(ok).tolist()

    cands: list[list[int]] = [[] for _ in rest]
    cands[0] = candidates(rest[0])
    level = 0
    while level >= 0:
        u = rest[level]
        if sigma[u] >= 0:  # coming back to this level: undo its previous choice
            used[sigma[u]] = False
            sigma[u] = -1
            dom.pop()
        if not cands[level]:
            level -= 1
            continue
        x = cands[level].pop()
        sigma[u] = x
        used[x] = True
        dom.append(u)
        if level + 1 == len(rest):
            return sigma
        level += 1
        cands[level] = candidates(rest[level])
    return None


def _orbit(v: int, gens: list[np.ndarray]) -> set[int]:
    seen = {v}
    frontier = [v]
    while frontier:
        u = frontier.pop()
        for g in gens:
            x = int(g[u])
            if x not in seen:
                seen.add(x)
                frontier.append(x)
    return seen


def _automorphisms(target: Tensor, atom_types: Tensor | None, tol: float) -> tuple[list[np.ndarray], int]:
    """A strong generating set of Aut(distance classes, atom types) and the group order (Schreier-Sims style)."""
    if not isinstance(target, Tensor) or target.dim() != 2:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be an (N, D) tensor, got {got}")
    if not (isinstance(tol, int | float) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    x = target.detach().cpu().double().numpy()
    n = x.shape[0]
    if atom_types is None:
        types = np.zeros(n, dtype=np.int64)
    else:
        if not isinstance(atom_types, Tensor) or atom_types.shape != (n,):
            got = tuple(atom_types.shape) if isinstance(atom_types, Tensor) else type(atom_types).__name__
            raise ValueError(f"atom_types must be an ({n},) tensor (one type per row of target), got {got}")
        types = atom_types.detach().cpu().numpy()
        types = np.unique(types, return_inverse=True)[1].reshape(n).astype(np.int64)
    if n <= 1:
        return [], 1
    classes = _distance_classes(x, tol)
    colours = _refine(types, classes)
    cell_size = np.bincount(colours)[colours]
    base = np.lexsort((np.arange(n), -cell_size))  # big cells first
    gens: list[np.ndarray] = []
    order = 1
    for t in range(n - 1, -1, -1):
        v = int(base[t])
        fixed = base[:t]
        same = (colours == colours[v]) & (classes[:, fixed] == classes[v, fixed][None, :]).all(axis=1)
        same[fixed] = False
        orbit = _orbit(v, gens)
        for w in np.flatnonzero(same).tolist():
            if w in orbit:
                continue
            sigma = _search(classes, colours, base, fixed, v, w)
            if sigma is not None:
                gens.append(sigma)
                orbit = _orbit(v, gens)
        order *= len(orbit)
    return gens, order


def distance_automorphisms(
    target: Tensor, *, atom_types: Tensor | None = None, tol: float = DEFAULT_SYMMETRY_TOL
) -> Tensor:
    r"""Generators of :math:`\mathrm{Aut}(\Delta y)`: the permutations that preserve the target distance matrix.

    A permutation :math:`\sigma` is an automorphism when :math:`\|y_{\sigma(i)} - y_{\sigma(j)}\| = \|y_i - y_j\|`
    for all pairs (up to ``tol``) and, if given, ``atom_types[sigma(i)] == atom_types[i]``. Equality up to a
    tolerance is made transitive first: all pair distances are sorted and split into classes wherever two
    consecutive values differ by more than ``tol``; automorphisms are then the exact automorphisms of this
    edge-coloured complete graph, found by colour refinement and a backtracking search along a stabiliser chain
    (each level keeps one automorphism per new orbit point, so the returned set generates the whole group).

    Args:
        target: ``(N, D)`` positions.
        atom_types: optional ``(N,)`` integer (or any comparable) labels that automorphisms must preserve.
        tol: distances closer than this (in the units of ``target``) are equal.

    Returns:
        ``(S, N)`` LongTensor: row ``s`` maps vertex ``i`` to ``out[s, i]``; ``S = 0`` for a trivial group.

    Example:
        >>> square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> distance_automorphisms(square).shape[1]
        4
    """
    gens, _ = _automorphisms(target, atom_types, tol)
    if not gens:
        return torch.zeros(0, target.shape[0], dtype=torch.long)
    return torch.from_numpy(np.stack(gens))


class SymmetrizedEdges(NamedTuple):
    """Result of :func:`symmetrize_edges`."""

    #: ``(2, E_sym)`` LongTensor, each undirected edge once with ``edges[0] < edges[1]``, sorted
    edges: Tensor
    #: number of edges added to the (deduplicated) input edges
    num_added: int
    #: order of the automorphism group used
    group_order: int


def _close_under(pairs: np.ndarray, gens: list[np.ndarray], n: int) -> np.ndarray:
    """Sorted unique pair keys ``i * n + j`` of the smallest superset of ``pairs`` invariant under ``gens``."""
    keys = np.unique(pairs[:, 0] * n + pairs[:, 1])
    while gens and keys.size:
        a0, b0 = keys // n, keys % n
        images = [keys]
        for g in gens:
            a, b = g[a0], g[b0]
            images.append(np.minimum(a, b) * n + np.maximum(a, b))
        new = np.unique(np.concatenate(images))
        if new.size == keys.size:
            break
        keys = new
    return keys


def _keys_to_edges(keys: np.ndarray, n: int, device) -> Tensor:
    if keys.size == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    return _edges_tensor(keys, n).to(device)


def _check_target(target) -> None:
    if not isinstance(target, Tensor) or target.dim() != 2:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be an (N, D) tensor, got {got}")


def symmetrize_edges(
    edges: Tensor, target: Tensor, *, atom_types: Tensor | None = None, tol: float = DEFAULT_SYMMETRY_TOL
) -> SymmetrizedEdges:
    r"""Symmetrise an edge set over the automorphisms of the target (paper App. A.5, Eq. 57).

    .. math:: A_{\text{sym}} = \textstyle\sum_{g \in \mathrm{Aut}(\Delta y)} g \cdot A \cdot g^{-1} \quad(> 0),

    i.e. the union of the images of the edge set under every automorphism of the target distance matrix (and
    atom types), see :func:`distance_automorphisms`. It is computed as the closure of the edge set under a
    generating set, which is the same union. With complete edges the energy loss gives symmetric atoms the
    same gradients (Theorem 4.2); a sparse graph breaks this unless it is symmetrised. The result contains the
    input edges, so it stays globally rigid if they were; it grows by up to the orbit sizes (Eq. 58).

    Args:
        edges: ``(2, E)`` long vertex pairs into ``target``'s rows.
        target: ``(N, D)`` target positions.
        atom_types: optional ``(N,)`` labels automorphisms must preserve.
        tol: distance tolerance, see :func:`distance_automorphisms`.

    Returns:
        :class:`SymmetrizedEdges` ``(edges (2, E_sym), num_added, group_order)``.

    Example:
        >>> square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> out = symmetrize_edges(torch.tensor([[0], [1]]), square)  # one side -> all four sides
        >>> out.edges.tolist(), out.num_added, out.group_order
        ([[0, 0, 1, 2], [1, 3, 2, 3]], 3, 8)
    """
    _check_target(target)
    n = target.shape[0]
    pairs = _canonical_edges(edges, n)
    gens, order = _automorphisms(target, atom_types, tol)
    keys = _close_under(pairs, gens, n)
    device = edges.device if isinstance(edges, Tensor) else target.device
    return SymmetrizedEdges(_keys_to_edges(keys, n, device), int(keys.size - pairs.shape[0]), int(order))


def orbit_random_graph(
    target: Tensor,
    k: int,
    *,
    atom_types: Tensor | None = None,
    tol: float = DEFAULT_SYMMETRY_TOL,
    generator: torch.Generator | None = None,
) -> SymmetrizedEdges:
    r"""The paper's symmetric sparse graph for one molecule (App. A.5): random edges per orbit, then Eq. 57.

    The vertices are split into orbits of :math:`\mathrm{Aut}(\Delta y)` (with atom types); the smallest vertex of
    each orbit picks ``min(k, N - 1)`` distinct partners uniformly among all other vertices, and the union of
    these edges is symmetrised with :func:`symmetrize_edges`. Unlike a symmetrised pool graph, the result is *not*
    checked for global rigidity (test it with :func:`is_globally_rigid` if needed); ``num_added`` counts the
    edges added to the representatives' edges.

    Args:
        target: ``(N, D)`` target positions.
        k: partners per orbit representative.
        atom_types: optional ``(N,)`` labels automorphisms must preserve.
        tol: distance tolerance, see :func:`distance_automorphisms`.
        generator: ``torch.Generator`` for the partners.

    Returns:
        :class:`SymmetrizedEdges`.

    Example:
        >>> hexagon = torch.tensor([[1.0, 0.0], [0.5, 0.866], [-0.5, 0.866], [-1.0, 0.0], [-0.5, -0.866],
        ...                         [0.5, -0.866]])
        >>> out = orbit_random_graph(hexagon, 1, generator=torch.Generator().manual_seed(0))
        >>> out.group_order, out.edges.shape[1] in (6, 3)  # one orbit: all sides, all long or all short diagonals
        (12, True)
    """
    _check_target(target)
    k = _check_count(k, "k", minimum=0)
    n = target.shape[0]
    gens, order = _automorphisms(target, atom_types, tol)
    reps = [v for v in range(n) if min(_orbit(v, gens)) == v]
    chosen: list[np.ndarray] = []
    for v in reps:
        others = np.delete(np.arange(n, dtype=np.int64), v)
        pick = others[torch.randperm(others.size, generator=generator).numpy()[: min(k, n - 1)]]
        chosen.append(np.stack([np.minimum(pick, v), np.maximum(pick, v)], axis=1))
    pairs = np.unique(np.concatenate(chosen), axis=0) if chosen else np.empty((0, 2), dtype=np.int64)
    keys = _close_under(pairs, gens, n)
    return SymmetrizedEdges(_keys_to_edges(keys, n, target.device), int(keys.size - pairs.shape[0]), int(order))


# ---------------------------------------------------------------------------------------------------------------
# the sparse energy loss
# ---------------------------------------------------------------------------------------------------------------


def sparse_pair_energy_loss(
    pred: Tensor,
    target: Tensor,
    *,
    pool: RigidGraphPool | None = None,
    edges: Tensor | None = None,
    coefficients="constant",
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    generator: torch.Generator | None = None,
    normalize: str | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The sparse energy loss (paper §4.3): Eq. 7 summed over the edges of a globally rigid graph.

    .. math:: E(\hat y, y) = \sum_{\{i,j\} \in \mathcal E} k_{ij}(y)\big(\|y_i - y_j\| - \|\hat y_i - \hat y_j\|\big)^2

    With a :class:`RigidGraphPool`, every structure of the batch gets its own graph drawn from the pool of its
    size (a fresh draw per call); with ``edges``, the given graph(s) are used. Everything else (coefficients,
    layouts, ``normalize``, ``reduction``) is :func:`energyloss.atomistic.pair_energy_loss`, which this calls.
    Cost :math:`O(kN)` instead of :math:`O(N^2)`; the global minimisers stay the rigid motions of the target
    because the graphs are globally rigid.

    Args:
        pred: ``(N, D)``, ``(B, N, D)`` or ragged ``(M, D)`` predicted positions.
        target: same shape as ``pred``.
        pool: a :class:`RigidGraphPool` with ``pool.d == D`` (exactly one of ``pool`` and ``edges``).
        edges: ``(2, E)`` or ``(B, 2, E)`` pairs, as for ``pair_energy_loss``.
        coefficients: coefficient scheme, see :mod:`energyloss.coefficients`.
        mask: ``(B, N)`` (or ``(N,)``) bool for the dense layout.
        batch: ``(M,)`` structure index for the ragged layout.
        generator: ``torch.Generator`` for the pool draws.
        normalize: ``None`` | ``"atoms"`` | ``"pairs"``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        The reduced loss.

    Example:
        >>> y = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
        >>> pool = RigidGraphPool(2, size=3)
        >>> float(sparse_pair_energy_loss(y.flip(-1), y, pool=pool))  # a reflection of the target costs nothing
        0.0
    """
    from .atomistic import pair_energy_loss

    if (pool is None) == (edges is None):
        raise ValueError("pass exactly one of pool (a RigidGraphPool) and edges (a (2, E) LongTensor)")
    if pool is not None:
        if not isinstance(pool, RigidGraphPool):
            raise TypeError(f"pool must be a RigidGraphPool, got {type(pool).__name__}")
        if not isinstance(pred, Tensor) or pred.dim() not in (2, 3):
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"pred must have shape (N, D), (B, N, D) or ragged (M, D), got {got}")
        if pred.shape[-1] != pool.d:
            raise ValueError(f"pool holds graphs rigid in {pool.d}-D but pred has D = {pred.shape[-1]}")
        if batch is not None:
            edges = pool.ragged_edges(batch, generator=generator)
        elif pred.dim() == 2 and mask is None:
            edges = pool.sample(pred.shape[0], generator=generator)
        elif pred.dim() == 2:
            edges = pool.batch_edges(mask.reshape(1, -1), generator=generator)[0]
        else:
            full = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
            edges = pool.batch_edges(full if mask is None else mask, generator=generator)
        edges = edges.to(pred.device)
    return pair_energy_loss(
        pred,
        target,
        coefficients=coefficients,
        edges=edges,
        mask=mask,
        batch=batch,
        normalize=normalize,
        reduction=reduction,
    )
