r"""Exact ground states of two-dimensional Ising spin glasses.

Energy :math:`E(\mathbf s) = -\sum_{\langle ij\rangle} J_{ij} s_i s_j` on an ``H x W`` lattice with the coupling
layout of :mod:`energyloss.spins` (``couplings[0, r, c]`` joins ``(r, c)``-``(r, c+1)``, ``couplings[1, r, c]``
joins ``(r, c)``-``(r+1, c)``). Everything here is numpy / float64 on single instances.

Methods
-------
``"matching"`` (open boundaries only; exact, about a millisecond for 16 x 16)
    An open lattice is planar. Call a bond *unsatisfied* when :math:`J_{ij} s_i s_j < 0`; then
    :math:`E = -\sum |J| + 2 \sum_{\text{unsat}} |J|`. Around each plaquette the number of unsatisfied bonds has
    the parity of its number of negative couplings (the product of :math:`s_i s_j` around a cycle is 1), and on
    a planar graph any bond set with these parities is the unsatisfied set of some configuration. The ground
    state is therefore a minimum-weight set of dual edges (weights :math:`|J|`) with odd degree exactly at the
    frustrated plaquettes, the outer face absorbing any parity: minimum-weight perfect matching on the dual
    lattice, solved with ``pymatching`` (sparse blossom). The spins are rebuilt along a spanning tree.

    *Weight rounding.* pymatching works with integer weights: integral float weights are used as they are,
    any others are rescaled and rounded, which can return a slightly sub-optimal state. We therefore pass
    integers only: the couplings are scaled by the largest power of two that keeps every weight below
    pymatching's limit (``2**24 - 1``), which is exact when the couplings lie on a dyadic grid (as
    :func:`random_couplings` draws them, step ``2**-22``). When they do not, ``method="auto"`` uses the MILP
    instead, and ``method="matching"`` raises. The returned energy is recomputed from the spins and checked
    against the matching weight.

``"milp"`` (any boundary; exact; about 0.3 s open, 1.3 s periodic for 16 x 16)
    Binary spins :math:`x_i` and bond variables :math:`d_{ij} = x_i \oplus x_j` (four linear inequalities each)
    minimising :math:`\sum J_{ij} d_{ij}`, strengthened with the cycle inequalities of every plaquette
    (:math:`\sum_{F} d - \sum_{C \setminus F} d \le |F| - 1` for odd subsets :math:`F` of its four bonds), solved by
    HiGHS through :func:`scipy.optimize.milp` with a zero relative gap (the integer program of the paper,
    Billionnet and Elloumi 2007, with the cuts that make it fast).

``"brute_force"`` (tiny lattices; for tests)
    Enumerates every configuration with the first spin fixed.

Every method returns the ground state in the *canonical* labelling (first site ``+1``): the energy is invariant
to flipping every spin, so ground states come in pairs.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "COUPLING_GRID",
    "brute_force_ground_state",
    "canonical",
    "energy",
    "ground_state",
    "lattice_bonds",
    "matching_ground_state",
    "milp_ground_state",
    "random_couplings",
]

#: Generated couplings are multiples of 1 / COUPLING_GRID, so the matching solver works with exact integers.
COUPLING_GRID = 2**22
#: pymatching's largest edge weight (its weights are 32-bit integers with 8 bits of headroom).
MATCHING_MAX_WEIGHT = 2**24 - 1
#: Spin configurations enumerated per chunk by the brute-force solver.
_BRUTE_FORCE_CHUNK = 1 << 14
#: Largest lattice the brute-force solver accepts (2**(sites-1) configurations).
BRUTE_FORCE_MAX_SITES = 24


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"the spin-glass ground-state solver needs {module!r}: pip install 'energyloss[spins]'"
        ) from err


def _check(couplings: np.ndarray, periodic: bool) -> np.ndarray:
    couplings = np.asarray(couplings, dtype=np.float64)
    if couplings.ndim != 3 or couplings.shape[0] != 2:
        raise ValueError(f"couplings must have shape (2, H, W), got {couplings.shape}")
    if not np.all(np.isfinite(couplings)):
        raise ValueError("couplings must be finite")
    height, width = couplings.shape[1:]
    if periodic and (height < 2 or width < 2):
        raise ValueError(f"periodic lattices need both sides >= 2, got couplings of shape {couplings.shape}")
    if not periodic and (np.any(couplings[0, :, -1] != 0) or np.any(couplings[1, -1, :] != 0)):
        raise ValueError(
            "couplings: with open boundaries the last column of channel 0 and the last row of channel 1 "
            "must be zero (they are not bonds); pass periodic=True for a torus"
        )
    return couplings


@functools.lru_cache(maxsize=32)
def lattice_bonds(height: int, width: int, *, periodic: bool = False) -> np.ndarray:
    """Every bond of the lattice once, as rows ``(channel, r, c, site_i, site_j)`` (sites ``r * W + c``).

    >>> lattice_bonds(2, 2).tolist()
    [[0, 0, 0, 0, 1], [0, 1, 0, 2, 3], [1, 0, 0, 0, 2], [1, 0, 1, 1, 3]]
    """
    rows = []
    for r in range(height):
        for c in range(width if periodic else width - 1):
            rows.append((0, r, c, r * width + c, r * width + (c + 1) % width))
    for r in range(height if periodic else height - 1):
        for c in range(width):
            rows.append((1, r, c, r * width + c, ((r + 1) % height) * width + c))
    out = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    out.setflags(write=False)
    return out


def energy(spins: np.ndarray, couplings: np.ndarray, *, periodic: bool = False) -> np.ndarray:
    r"""Ising energy :math:`-\sum J_{ij} s_i s_j` in float64; ``spins: (..., H, W)``, ``couplings: (..., 2, H, W)``.

    Batch dimensions broadcast. With open boundaries the couplings that are not bonds must be zero.

    >>> J = np.zeros((2, 1, 2)); J[0, 0, 0] = 0.5
    >>> float(energy(np.array([[1, -1]]), J))
    0.5
    """
    couplings = np.asarray(couplings, dtype=np.float64)
    s = np.asarray(spins, dtype=np.float64)
    if couplings.ndim < 3 or couplings.shape[-3] != 2 or s.shape[-2:] != couplings.shape[-2:]:
        raise ValueError(f"need spins (..., H, W) and couplings (..., 2, H, W); got {s.shape} and {couplings.shape}")
    if not periodic and (np.any(couplings[..., 0, :, -1] != 0) or np.any(couplings[..., 1, -1, :] != 0)):
        raise ValueError(
            "couplings: with open boundaries the last column of channel 0 and the last row of channel 1 must be zero"
        )
    right = np.roll(s, -1, axis=-1)
    down = np.roll(s, -1, axis=-2)
    # open boundaries: the wrapped terms meet zero couplings
    return -(couplings[..., 0, :, :] * s * right + couplings[..., 1, :, :] * s * down).sum(axis=(-2, -1))


def canonical(spins: np.ndarray) -> np.ndarray:
    """Flip configurations ``(..., H, W)`` so that the first site is ``+1`` (the label convention).

    >>> canonical(np.array([[-1, 1], [1, 1]])).tolist()
    [[1, -1], [-1, -1]]
    """
    spins = np.asarray(spins)
    return spins * np.where(spins[..., :1, :1] < 0, -1, 1).astype(spins.dtype)


def random_couplings(
    height: int,
    width: int | None = None,
    *,
    rng: np.random.Generator,
    periodic: bool = False,
    low: float = -1.0,
    high: float = 1.0,
    grid: int | None = COUPLING_GRID,
) -> np.ndarray:
    """Couplings ``(2, H, W)`` drawn from ``U[low, high]`` (float32), zero where open boundaries have no bond.

    With ``grid`` the values are rounded to multiples of ``1 / grid`` (default ``2**-22``, below float32
    resolution near 1), which makes the matching solver exact; ``grid=None`` keeps the raw draws.

    >>> J = random_couplings(3, rng=np.random.default_rng(0))
    >>> J.shape, J.dtype, bool(J[0, :, -1].any() or J[1, -1, :].any())
    ((2, 3, 3), dtype('float32'), False)
    """
    width = height if width is None else width
    values = rng.uniform(low, high, size=(2, height, width))
    if grid is not None:
        values = np.round(values * grid) / grid
    values = values.astype(np.float32)
    if not periodic:
        values[0, :, -1] = 0
        values[1, -1, :] = 0
    return values


# ---------------------------------------------------------------------------------------------------------------


def brute_force_ground_state(couplings: np.ndarray, *, periodic: bool = False) -> tuple[np.ndarray, float]:
    """Exact ground state by enumeration (at most ``BRUTE_FORCE_MAX_SITES`` sites); canonical labelling.

    >>> J = np.zeros((2, 2, 2)); J[0, :, 0] = -1.0; J[1, 0, :] = 1.0
    >>> s, e = brute_force_ground_state(J)
    >>> s.tolist(), e
    ([[1, -1], [1, -1]], -4.0)
    """
    couplings = _check(couplings, periodic)
    height, width = couplings.shape[1:]
    n = height * width
    if n > BRUTE_FORCE_MAX_SITES:
        raise ValueError(f"brute force is limited to {BRUTE_FORCE_MAX_SITES} sites, got {height} x {width}")
    if n == 1:
        return np.ones((1, 1), dtype=np.int8), 0.0
    bonds = lattice_bonds(height, width, periodic=periodic)
    weights = couplings[bonds[:, 0], bonds[:, 1], bonds[:, 2]]
    best_e, best_code = np.inf, 0
    total = 1 << (n - 1)  # site 0 fixed to +1
    for start in range(0, total, _BRUTE_FORCE_CHUNK):
        codes = np.arange(start, min(total, start + _BRUTE_FORCE_CHUNK), dtype=np.int64)
        bits = (codes[:, None] >> np.arange(n - 1)) & 1
        s = np.concatenate([np.ones((len(codes), 1)), 1 - 2 * bits], axis=1)
        e = -(weights * s[:, bonds[:, 3]] * s[:, bonds[:, 4]]).sum(axis=1)
        k = int(np.argmin(e))
        if e[k] < best_e:
            best_e, best_code = float(e[k]), int(codes[k])
    bits = (best_code >> np.arange(n - 1)) & 1
    spins = np.concatenate([[1], 1 - 2 * bits]).astype(np.int8).reshape(height, width)
    return spins, float(energy(spins, couplings, periodic=periodic))


def _integer_scale(weights: np.ndarray) -> float | None:
    """Largest power of two ``s`` with ``s * max(w) <= MATCHING_MAX_WEIGHT``, if all ``s * w`` are integers."""
    top = float(np.max(weights)) if weights.size else 0.0
    if top == 0.0:
        return 1.0
    scale = 2.0 ** np.floor(np.log2(MATCHING_MAX_WEIGHT / top))
    scaled = weights * scale  # exact: power-of-two scaling
    return float(scale) if np.all(scaled == np.round(scaled)) else None


@functools.lru_cache(maxsize=32)
def _dual_lattice(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """For each open-lattice bond the two plaquettes it separates (``-1`` = the outer face)."""
    bonds = lattice_bonds(height, width, periodic=False)
    faces = np.full((len(bonds), 2), -1, dtype=np.int64)
    n_cols = width - 1
    for k, (channel, r, c, _, _) in enumerate(bonds):
        if channel == 0:  # horizontal bond: plaquettes above (r-1, c) and below (r, c)
            if r >= 1:
                faces[k, 0] = (r - 1) * n_cols + c
            if r <= height - 2:
                faces[k, 1] = r * n_cols + c
        else:  # vertical bond: plaquettes left (r, c-1) and right (r, c)
            if c >= 1:
                faces[k, 0] = r * n_cols + c - 1
            if c <= width - 2:
                faces[k, 1] = r * n_cols + c
    return bonds, faces


def _spins_from_unsatisfied(couplings: np.ndarray, unsat: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Rebuild spins along a comb spanning tree (row 0, then every column) from the unsatisfied bonds."""
    height, width = couplings.shape[1:]
    relation = np.where(couplings[bonds[:, 0], bonds[:, 1], bonds[:, 2]] < 0, -1, 1) * np.where(unsat, -1, 1)
    rel = np.ones((2, height, width), dtype=np.int64)
    rel[bonds[:, 0], bonds[:, 1], bonds[:, 2]] = relation
    spins = np.ones((height, width), dtype=np.int64)
    spins[0, 1:] = np.cumprod(rel[0, 0, : width - 1])
    spins[1:, :] = spins[0][None, :] * np.cumprod(rel[1, : height - 1, :], axis=0)
    return spins.astype(np.int8)


def matching_ground_state(couplings: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact ground state of an open-boundary lattice by matching on the dual lattice (see module docstring).

    Raises ``ValueError`` if the couplings cannot be scaled to exact integer weights (use the MILP then).

    >>> J = random_couplings(4, rng=np.random.default_rng(1))
    >>> s, e = matching_ground_state(J)
    >>> s.shape, s[0, 0], bool(np.isclose(e, energy(s, J)))
    ((4, 4), np.int8(1), True)
    """
    couplings = _check(couplings, False)
    height, width = couplings.shape[1:]
    bonds, faces = _dual_lattice(height, width)
    values = couplings[bonds[:, 0], bonds[:, 1], bonds[:, 2]]
    weights = np.abs(values)
    scale = _integer_scale(weights)
    if scale is None:
        raise ValueError(
            "matching_ground_state needs couplings on a dyadic grid (exact integer weights for pymatching); "
            "use random_couplings(grid=...) or milp_ground_state"
        )
    unsat = np.zeros(len(bonds), dtype=bool)
    n_faces = max(height - 1, 0) * max(width - 1, 0)
    negative = values < 0
    frustrated = np.zeros(n_faces, dtype=np.int64)
    for side in (0, 1):
        inner = faces[:, side] >= 0
        np.add.at(frustrated, faces[inner, side], negative[inner].astype(np.int64))
    syndrome = (frustrated % 2).astype(np.uint8)
    if syndrome.any():
        pymatching = _need("pymatching")
        graph = pymatching.Matching()
        for k in range(len(bonds)):
            a, b = faces[k]
            w = float(weights[k] * scale)
            if a >= 0 and b >= 0:
                graph.add_edge(int(a), int(b), fault_ids=k, weight=w, merge_strategy="smallest-weight")
            elif a >= 0 or b >= 0:
                graph.add_boundary_edge(int(max(a, b)), fault_ids=k, weight=w, merge_strategy="smallest-weight")
        graph.ensure_num_fault_ids(len(bonds))
        unsat = graph.decode(syndrome).astype(bool)
    spins = _spins_from_unsatisfied(couplings, unsat, bonds)
    e = float(energy(spins, couplings))
    expected = -weights.sum() + 2 * weights[unsat].sum()
    if not np.isclose(e, expected, rtol=0, atol=1e-9 * max(1.0, weights.sum())):
        raise RuntimeError(f"matching solution is inconsistent: energy {e} but matching weight gives {expected}")
    return spins, e


def _plaquettes(height: int, width: int, periodic: bool, bond_index: dict) -> list[tuple[int, int, int, int]]:
    out = []
    rows = range(height) if periodic else range(height - 1)
    cols = range(width) if periodic else range(width - 1)
    for r in rows:
        for c in cols:
            out.append(
                (
                    bond_index[(0, r, c)],
                    bond_index[(1, r, (c + 1) % width)],
                    bond_index[(0, (r + 1) % height, c)],
                    bond_index[(1, r, c)],
                )
            )
    return out


def milp_ground_state(
    couplings: np.ndarray,
    *,
    periodic: bool = False,
    plaquette_cuts: bool = True,
    time_limit: float | None = None,
) -> tuple[np.ndarray, float]:
    """Exact ground state by integer programming (HiGHS via scipy), any boundary; canonical labelling.

    Raises ``RuntimeError`` if HiGHS stops without proving optimality (e.g. at ``time_limit`` seconds).

    >>> J = random_couplings(3, rng=np.random.default_rng(2), periodic=True)
    >>> s, e = milp_ground_state(J, periodic=True)
    >>> bool(np.isclose(e, brute_force_ground_state(J, periodic=True)[1]))
    True
    """
    couplings = _check(couplings, periodic)
    _need("scipy")
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    height, width = couplings.shape[1:]
    n = height * width
    bonds = lattice_bonds(height, width, periodic=periodic)
    m = len(bonds)
    if m == 0:
        return np.ones((height, width), dtype=np.int8), 0.0
    values = couplings[bonds[:, 0], bonds[:, 1], bonds[:, 2]]
    rows, cols, data, lo, hi = [], [], [], [], []

    def add(terms, lower, upper):
        k = len(lo)
        for col, coef in terms:
            rows.append(k)
            cols.append(col)
            data.append(coef)
        lo.append(lower)
        hi.append(upper)

    for k, (_, _, _, i, j) in enumerate(bonds):
        d = n + k
        if i == j:  # cannot happen for sides >= 2, kept for safety
            continue
        add([(d, 1.0), (i, -1.0), (j, 1.0)], 0.0, np.inf)  # d >= x_i - x_j
        add([(d, 1.0), (i, 1.0), (j, -1.0)], 0.0, np.inf)  # d >= x_j - x_i
        add([(d, 1.0), (i, -1.0), (j, -1.0)], -np.inf, 0.0)  # d <= x_i + x_j
        add([(d, 1.0), (i, 1.0), (j, 1.0)], -np.inf, 2.0)  # d <= 2 - x_i - x_j
    if plaquette_cuts and height >= 2 and width >= 2:
        index = {(int(b[0]), int(b[1]), int(b[2])): k for k, b in enumerate(bonds)}
        for cycle in _plaquettes(height, width, periodic, index):
            if len(set(cycle)) < 4:  # degenerate plaquettes of 2-wide tori
                continue
            for mask in range(16):
                odd = [cycle[t] for t in range(4) if mask >> t & 1]
                if len(odd) % 2 == 0:
                    continue
                terms = [(n + e, 1.0 if e in odd else -1.0) for e in cycle]
                add(terms, -np.inf, len(odd) - 1.0)
    matrix = coo_matrix((data, (rows, cols)), shape=(len(lo), n + m)).tocsr()
    cost = np.concatenate([np.zeros(n), values])
    lower = np.zeros(n + m)
    upper = np.ones(n + m)
    upper[0] = 0.0  # canonical labelling: x_0 = 0 means spin +1
    options = {"mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(
        cost,
        integrality=np.ones(n + m),
        bounds=Bounds(lower, upper),
        constraints=LinearConstraint(matrix, np.asarray(lo), np.asarray(hi)),
        options=options,
    )
    if result.status != 0 or result.x is None:
        raise RuntimeError(f"HiGHS did not prove optimality: {result.message}")
    spins = (1 - 2 * np.round(result.x[:n])).astype(np.int8).reshape(height, width)
    return spins, float(energy(spins, couplings, periodic=periodic))


def ground_state(couplings: np.ndarray, *, periodic: bool = False, method: str = "auto") -> tuple[np.ndarray, float]:
    """Exact ground state ``(spins (H, W) int8 with spins[0, 0] = +1, energy)`` of one instance.

    ``method``: ``"auto"`` (matching for open boundaries with dyadic couplings, else the MILP),
    ``"matching"``, ``"milp"`` or ``"brute_force"``. ``energy`` is always :func:`energy` of the returned spins.

    >>> J = random_couplings(4, rng=np.random.default_rng(3))
    >>> s, e = ground_state(J)
    >>> bool(np.isclose(e, brute_force_ground_state(J)[1]))
    True
    """
    if method == "auto":
        checked = _check(couplings, periodic)
        if not periodic and _integer_scale(np.abs(checked).ravel()) is not None:
            method = "matching"
        else:
            method = "milp"
    if method == "matching":
        if periodic:
            raise ValueError("method='matching' needs open boundaries (a planar lattice); use 'milp'")
        return matching_ground_state(couplings)
    if method == "milp":
        return milp_ground_state(couplings, periodic=periodic)
    if method == "brute_force":
        return brute_force_ground_state(couplings, periodic=periodic)
    raise ValueError(f"method must be 'auto', 'matching', 'milp' or 'brute_force', got {method!r}")
