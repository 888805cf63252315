"""The numba-compiled loops behind :mod:`energyloss._numba_kernels` (imported only when a CPU kernel first runs).

Two kernels, both returning the value and the gradient computed in one pass:

- ``pair``: the complete-graph energy of padded batches ``(B, N, D)``, ``D <= 3``. Coordinates come in as
  structure-of-arrays ``(B, 3, N)`` (``D < 3`` padded with zero coordinates, which change no distance) so that the
  inner loop over ``j > i`` reads contiguous memory and compiles to SIMD code. Each unordered pair is visited once;
  the gradient of row ``i`` is accumulated in registers and the opposite contribution to rows ``j`` is added in
  three short contiguous passes (kept apart from the main loop so that the compiler can prove the loops free of
  aliasing and vectorise them). Work is split into *tasks*: one per structure for large batches, or each structure's
  rows dealt out to ``splits`` tasks in a zig-zag order (rows near 0 hold the most pairs); every task owns its
  gradient buffer, so no two threads ever write the same memory and the result is deterministic for given inputs
  and ``splits``.
- ``edges``: an explicit edge list over flat rows ``(M, D)``, any ``D``: gathers, the same per-pair term, a scatter
  into per-task gradient buffers.

``exp`` is evaluated inline (range reduction to ``[-ln 2 / 2, ln 2 / 2]``, a Taylor polynomial, and the power of
two as a product of exact powers of two selected by the bits of the exponent) because the LLVM of the numba
wheels has no vector math library: a call to the C library's ``exp`` would keep the loop scalar. Its relative error
is below 3e-7 in float32; in float64 it is ``3e-16 + 3.4e-17 x`` (the rounding of ln 2 times the exponent: 1e-15
for springs above ``exp(-20)``, 1.2e-14 at the cutoff; a two-part ln 2 would not survive the reassociation that
fast-math allows).
The four built-in coefficient schemes are compiled as four specialisations of one kernel (the scheme id is a
compile-time constant of a closure), so the inner loop carries no branch on it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import overload

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def _exp_negative(x, cut):  # pragma: no cover - replaced by the overload below inside compiled code
    raise NotImplementedError


@overload(_exp_negative, inline="always", fastmath=True)
def _exp_negative_impl(x, cut):
    r""":math:`e^{-x}` for :math:`0 \le x \le` ``cut``, 0 above ``cut`` (``cut`` keeps the result a normal float)."""
    if x == types.float32:
        one, half, log2e, ln2 = (np.float32(v) for v in (1.0, 0.5, _LOG2E, _LN2))
        c = tuple(np.float32((-1.0) ** k / math.factorial(k)) for k in range(1, 8))
        h = tuple(np.float32(2.0 ** -(2**b)) for b in range(7))
        zero = np.float32(0.0)

        def impl32(x, cut):
            xc = min(x, cut)
            # n <= 62 for x <= cut (exp_cutoff: 62.5 ln 2). The integer clamp is a guard: with the exponent at 63
            # this loop ran 9x slower than at 62 (measured: assists on some lanes, though 2^-63 is a normal float).
            n = min(np.int32(xc * log2e + half), 62)
            f = xc - np.float32(n) * ln2
            p = c[6]
            p = p * f + c[5]
            p = p * f + c[4]
            p = p * f + c[3]
            p = p * f + c[2]
            p = p * f + c[1]
            p = p * f + c[0]
            p = p * f + one
            # 2^-n from the bits of n (n <= 126): seven exact multiplications by powers of two, branch-free
            scale = one
            scale *= h[0] if (n & 1) != 0 else one
            scale *= h[1] if (n & 2) != 0 else one
            scale *= h[2] if (n & 4) != 0 else one
            scale *= h[3] if (n & 8) != 0 else one
            scale *= h[4] if (n & 16) != 0 else one
            scale *= h[5] if (n & 32) != 0 else one
            scale *= h[6] if (n & 64) != 0 else one
            return p * scale if x <= cut else zero

        return impl32
    if x == types.float64:
        c = tuple((-1.0) ** k / math.factorial(k) for k in range(1, 14))
        h = tuple(2.0 ** -(2**b) for b in range(9))

        def impl64(x, cut):
            xc = min(x, cut)
            n = min(np.int64(xc * _LOG2E + 0.5), 510)  # x <= cut gives n <= 510; clamped as in impl32
            f = xc - np.float64(n) * _LN2
            p = c[12]
            p = p * f + c[11]
            p = p * f + c[10]
            p = p * f + c[9]
            p = p * f + c[8]
            p = p * f + c[7]
            p = p * f + c[6]
            p = p * f + c[5]
            p = p * f + c[4]
            p = p * f + c[3]
            p = p * f + c[2]
            p = p * f + c[1]
            p = p * f + c[0]
            p = p * f + 1.0
            scale = 1.0  # 2^-n from the bits of n (n <= 511), as in impl32
            scale *= h[0] if (n & 1) != 0 else 1.0
            scale *= h[1] if (n & 2) != 0 else 1.0
            scale *= h[2] if (n & 4) != 0 else 1.0
            scale *= h[3] if (n & 8) != 0 else 1.0
            scale *= h[4] if (n & 16) != 0 else 1.0
            scale *= h[5] if (n & 32) != 0 else 1.0
            scale *= h[6] if (n & 64) != 0 else 1.0
            scale *= h[7] if (n & 128) != 0 else 1.0
            scale *= h[8] if (n & 256) != 0 else 1.0
            return p * scale if x <= cut else 0.0

        return impl64
    return None


@njit(fastmath=True, cache=True)
def exp_negative(x: np.ndarray, cut: float) -> np.ndarray:
    """Elementwise :func:`_exp_negative` over an array (used by the tests of its accuracy)."""
    out = np.empty_like(x)
    c = x.dtype.type(cut)
    for i in range(x.size):
        out[i] = _exp_negative(x[i], c)
    return out


@njit(inline="always", fastmath=True)
def _spring(d, k0, aux, cut, inv_aux, scheme, vectorised):
    """Spring constant of a target distance ``d`` under scheme 0 constant, 1 inverse, 2 1/d^2 or 3 exp.

    ``vectorised``: the inline exp of :func:`_exp_negative`, for SIMD loops; else the C library's (scalar code:
    the inline version's serial chain of operations costs about 30 ns a call there, libm's a few).
    """
    if scheme == 0:
        return k0
    if scheme == 1:
        return k0 / max(d, aux)
    if scheme == 2:
        c = max(d, aux)
        return k0 / (c * c)
    x = d * inv_aux
    if vectorised:
        return k0 * _exp_negative(x, cut)
    return k0 * math.exp(-x) if x <= cut else k0 * 0


def _make_kernels(scheme: int, parallel: bool):
    """The pair, edge and cell-list kernels for one coefficient scheme (0 constant, 1 inverse, 2 1/d^2, 3 exp),
    multi-threaded or single-threaded (small inputs: no thread-pool wake-up)."""
    # Both values are read inside the kernels, so they enter their closures: each variant has its own key in
    # numba's on-disk cache, and the scheme is a compile-time constant (the inner loops carry no branch on it).

    # error_model="numpy" everywhere: Python's model checks every division for zero, a branch that keeps the
    # loops scalar (7 instead of 10 ns a pair here); the divisors are clamped or positive by construction.
    @njit(fastmath=True, boundscheck=False, cache=True, nogil=True, error_model="numpy")
    def rows(px, py, pz, tx, ty, tz, m, gx, gy, gz, w, s, splits, params):
        """Energy of the rows of task ``s`` (of ``splits``) of one structure in structure-of-arrays form; their
        gradient is added to ``gx, gy, gz``. A function of its own: with arrays passed in, the vectoriser checks
        their overlap at run time and emits SIMD loops (inlined into the task loop it kept them scalar, 2x slower).
        """
        n = px.shape[0]
        k0, aux, cut, inv_aux, zero, one = params[0], params[1], params[2], params[3], params[4], params[5]
        rc = params[6]
        period = 2 * splits
        total = 0.0
        for i in range(n):
            q = i % period
            if (q if q < splits else period - 1 - q) != s or m[i] == zero:
                continue
            xi, yi, zi = px[i], py[i], pz[i]
            ui, vi, wi = tx[i], ty[i], tz[i]
            e_i = zero
            ax = zero
            ay = zero
            az = zero
            for j in range(i + 1, n):
                dx, dy, dz = xi - px[j], yi - py[j], zi - pz[j]
                d_p = math.sqrt(dx * dx + dy * dy + dz * dz)
                ex, ey, ez = ui - tx[j], vi - ty[j], wi - tz[j]
                d_t = math.sqrt(ex * ex + ey * ey + ez * ez)
                r = d_t - d_p
                k = _spring(d_t, k0, aux, cut, inv_aux, scheme, True) if d_t <= rc else zero
                kr = k * m[j] * r
                e_i += kr * r
                # d/dp_i of k r^2 is -2 k r (p_i - p_j) / d_p; coincident points have p_i - p_j = 0
                w_ij = kr / (d_p if d_p > zero else one)
                w[j] = w_ij
                ax += w_ij * dx
                ay += w_ij * dy
                az += w_ij * dz
            for j in range(i + 1, n):
                gx[j] -= w[j] * (xi - px[j])
            for j in range(i + 1, n):
                gy[j] -= w[j] * (yi - py[j])
            for j in range(i + 1, n):
                gz[j] -= w[j] * (zi - pz[j])
            gx[i] += ax
            gy[i] += ay
            gz[i] += az
            total += e_i
        return total

    @njit(parallel=parallel, fastmath=True, boundscheck=False, cache=True, nogil=True, error_model="numpy")
    def pair(pred, tgt, mask, params, splits):
        """pred, tgt (B, N, D), D <= 3; mask (B, N) bool, or (0, 0) for none; params (k0, aux, cut, 1/aux, 0, 1,
        cutoff) in the data dtype. Returns the gradient (B, splits, N, D) and the energies (B, splits) float64."""
        nb, n, dim = pred.shape
        zero, one = params[4], params[5]
        has_mask = mask.shape[0] > 0
        splits = splits if parallel else 1
        grad = np.zeros((nb, splits, n, dim), dtype=pred.dtype)
        energy = np.zeros((nb, splits), dtype=np.float64)
        for task in prange(nb * splits):
            b = task // splits
            s = task - b * splits
            # structure-of-arrays copies, so that the loop over j reads contiguous memory (and vectorises)
            coords = np.zeros((7, n), dtype=pred.dtype)
            px, py, pz, tx, ty, tz, m = coords[0], coords[1], coords[2], coords[3], coords[4], coords[5], coords[6]
            w = np.empty(n, dtype=pred.dtype)
            gx = np.zeros(n, dtype=pred.dtype)
            gy = np.zeros(n, dtype=pred.dtype)
            gz = np.zeros(n, dtype=pred.dtype)
            for i in range(n):
                m[i] = zero if has_mask and not mask[b, i] else one
                if m[i] != zero:
                    px[i], tx[i] = pred[b, i, 0], tgt[b, i, 0]
                    if dim > 1:
                        py[i], ty[i] = pred[b, i, 1], tgt[b, i, 1]
                    if dim > 2:
                        pz[i], tz[i] = pred[b, i, 2], tgt[b, i, 2]
            total = rows(px, py, pz, tx, ty, tz, m, gx, gy, gz, w, s, splits, params)
            for i in range(n):
                grad[b, s, i, 0] = -2 * gx[i]
                if dim > 1:
                    grad[b, s, i, 1] = -2 * gy[i]
                if dim > 2:
                    grad[b, s, i, 2] = -2 * gz[i]
            energy[b, s] = total
        return grad, energy

    @njit(parallel=parallel, fastmath=True, boundscheck=False, cache=True, nogil=True, error_model="numpy")
    def edges(pos, tgt, src, dst, owner, valid, params, splits, grad, energy):
        """pos, tgt (M, D); src, dst, owner (E,) int64; valid (E,) 0/1; grad (splits, M, D) zeros; energy
        (splits, num) float64. Per task, a gather pass computes every edge's term and weight (no stores but two
        arrays, so it vectorises; coordinates past D read as 0 from a clamped index), then a scatter pass adds the
        gradient and the energies."""
        n_edges, dim = src.shape[0], pos.shape[1]
        k0, aux, cut, inv_aux, zero, one = params[0], params[1], params[2], params[3], params[4], params[5]
        rc = params[6]
        d1, d2 = min(1, dim - 1), min(2, dim - 1)
        on1 = one if dim > 1 else zero
        on2 = one if dim > 2 else zero
        splits = splits if parallel else 1
        chunk = (n_edges + splits - 1) // splits
        for s in prange(splits):
            lo, hi = s * chunk, min(n_edges, (s + 1) * chunk)
            w = np.empty(max(hi - lo, 0), dtype=pos.dtype)
            term = np.empty(max(hi - lo, 0), dtype=pos.dtype)
            for q in range(lo, hi):
                i, j = src[q], dst[q]
                dx = pos[i, 0] - pos[j, 0]
                dy = (pos[i, d1] - pos[j, d1]) * on1
                dz = (pos[i, d2] - pos[j, d2]) * on2
                ex = tgt[i, 0] - tgt[j, 0]
                ey = (tgt[i, d1] - tgt[j, d1]) * on1
                ez = (tgt[i, d2] - tgt[j, d2]) * on2
                d_p = math.sqrt(dx * dx + dy * dy + dz * dz)
                d_t = math.sqrt(ex * ex + ey * ey + ez * ez)
                k = _spring(d_t, k0, aux, cut, inv_aux, scheme, False) if d_t <= rc else zero
                r = d_t - d_p
                kr = k * (one if valid[q] != 0 else zero) * r
                term[q - lo] = kr * r
                w[q - lo] = kr / (d_p if d_p > zero else one)
            g = grad[s]
            e = energy[s]
            for q in range(lo, hi):
                i, j = src[q], dst[q]
                e[owner[q]] += term[q - lo]
                w_ij = w[q - lo]
                for c in range(dim):
                    v = w_ij * (pos[i, c] - pos[j, c])
                    g[i, c] += v
                    g[j, c] -= v

    @njit(parallel=parallel, fastmath=True, boundscheck=False, cache=True, nogil=True, error_model="numpy")
    def cells(pos, tgt, mask, params, splits, grad, energy, order, cell_start, cell_of, dims):
        """Pairs within the cutoff ``params[6]`` of one structure, found through the cell list of its target.

        pos, tgt (3, N); mask (N,) 0/1; grad (splits, 3, N) zeros; energy (splits,) float64; order, cell_start,
        cell_of, dims from :func:`build_cells`. Each unordered pair is visited once (from its lower index).
        """
        n = pos.shape[1]
        k0, aux, cut, inv_aux, zero, one = params[0], params[1], params[2], params[3], params[4], params[5]
        rc = params[6]
        nx, ny, nz = dims[0], dims[1], dims[2]
        splits = splits if parallel else 1
        period = 2 * splits
        for s in prange(splits):
            gx, gy, gz = grad[s, 0], grad[s, 1], grad[s, 2]
            total = 0.0
            for i in range(n):
                q = i % period
                if (q if q < splits else period - 1 - q) != s or mask[i] == zero:
                    continue
                xi, yi, zi = pos[0, i], pos[1, i], pos[2, i]
                ui, vi, wi = tgt[0, i], tgt[1, i], tgt[2, i]
                c = cell_of[i]
                cz = c % nz
                cy = (c // nz) % ny
                cx = c // (ny * nz)
                e_i = zero
                ax = zero
                ay = zero
                az = zero
                for ox in range(max(cx - 1, 0), min(cx + 2, nx)):
                    for oy in range(max(cy - 1, 0), min(cy + 2, ny)):
                        for oz in range(max(cz - 1, 0), min(cz + 2, nz)):
                            cell = (ox * ny + oy) * nz + oz
                            for slot in range(cell_start[cell], cell_start[cell + 1]):
                                j = order[slot]
                                if j <= i:
                                    continue
                                ex, ey, ez = ui - tgt[0, j], vi - tgt[1, j], wi - tgt[2, j]
                                d_t = math.sqrt(ex * ex + ey * ey + ez * ez)
                                if d_t > rc:
                                    continue
                                dx, dy, dz = xi - pos[0, j], yi - pos[1, j], zi - pos[2, j]
                                d_p = math.sqrt(dx * dx + dy * dy + dz * dz)
                                r = d_t - d_p
                                kr = _spring(d_t, k0, aux, cut, inv_aux, scheme, False) * mask[j] * r
                                e_i += kr * r
                                w_ij = kr / (d_p if d_p > zero else one)
                                ax += w_ij * dx
                                ay += w_ij * dy
                                az += w_ij * dz
                                gx[j] -= w_ij * dx
                                gy[j] -= w_ij * dy
                                gz[j] -= w_ij * dz
                gx[i] += ax
                gy[i] += ay
                gz[i] += az
                total += e_i
            energy[s] = total

    return pair, edges, cells


@njit(cache=True, nogil=True)
def build_cells(tgt, mask, cutoff, max_cells):
    """Counting sort of the real atoms of ``tgt (3, N)`` into cubic cells of side >= ``cutoff``.

    At most ``max_cells`` cells (the side grows for sparse structures), so memory stays ``O(N)``. Returns
    ``(order, cell_start, cell_of, dims)``: atoms of cell ``c`` are ``order[cell_start[c]:cell_start[c + 1]]``.
    """
    n = tgt.shape[1]
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for i in range(n):
        if mask[i] != 0:
            for c in range(3):
                v = tgt[c, i]
                lo[c] = min(lo[c], v)
                hi[c] = max(hi[c], v)
    side = max(cutoff, 1e-12)
    for _ in range(64):
        total = 1
        for c in range(3):
            extent = max(hi[c] - lo[c], 0.0)
            total *= int(extent / side) + 1
        if total <= max_cells:
            break
        side *= 1.25
    dims = np.empty(3, np.int64)
    for c in range(3):
        dims[c] = int(max(hi[c] - lo[c], 0.0) / side) + 1
    n_cells = dims[0] * dims[1] * dims[2]
    cell_of = np.zeros(n, np.int64)
    counts = np.zeros(n_cells + 1, np.int64)
    for i in range(n):
        if mask[i] != 0:
            ix = min(int((tgt[0, i] - lo[0]) / side), dims[0] - 1)
            iy = min(int((tgt[1, i] - lo[1]) / side), dims[1] - 1)
            iz = min(int((tgt[2, i] - lo[2]) / side), dims[2] - 1)
            cell = (ix * dims[1] + iy) * dims[2] + iz
            cell_of[i] = cell
            counts[cell + 1] += 1
    cell_start = np.cumsum(counts)
    fill = cell_start[:-1].copy()
    order = np.zeros(max(int(cell_start[-1]), 1), np.int64)
    for i in range(n):
        if mask[i] != 0:
            order[fill[cell_of[i]]] = i
            fill[cell_of[i]] += 1
    return order, cell_start, cell_of, dims


#: (scheme id, parallel) -> (pair kernel, edge kernel, cell-list kernel).
KERNELS = {(scheme, parallel): _make_kernels(scheme, parallel) for scheme in range(4) for parallel in (True, False)}


def set_threads(count: int) -> int:
    """Use ``count`` threads (clipped to numba's pool); return the number in effect."""
    count = max(1, min(int(count), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(count)
    return count
