"""Fused CUDA kernel (Triton) for the complete-graph pair energy and its gradient.

One program owns a block of ``BI`` atoms (rows) of one structure and sweeps all atoms (columns) in blocks of ``BJ``:
per pair it forms both distances from exact coordinate differences, the spring constant, the energy term and the
gradient weight, and keeps everything in registers. Each ordered pair is visited once from each end, so the energy
is halved and no atomics are needed: the result is deterministic. Memory is ``O(B N D)``; nothing of size ``N^2``
is ever written.

Used by :func:`energyloss.pair_energy_loss` on CUDA for the built-in coefficient schemes
(:class:`~energyloss.coefficients.ConstantCoefficients`, ``InverseCoefficients``, ``InverseSquareCoefficients``,
``ExponentialCoefficients``), ``D <= 4`` and float32/float64 when Triton is importable and the automatic block size
is in effect (``chunk_size=None``); everything else takes the portable blocked PyTorch kernel. Set the environment
variable ``ENERGYLOSS_TRITON=0`` to turn it off.

The kernel also runs under Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before Triton is imported), which
is how the test suite checks it without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from energyloss.coefficients import (
    ConstantCoefficients,
    ExponentialCoefficients,
    InverseCoefficients,
    InverseSquareCoefficients,
    builtin_scheme,
    exp_cutoff,
)

__all__ = ["BLOCK_I", "BLOCK_J", "NUM_WARPS", "MAX_DIM", "available", "pair_energy_and_grad", "supports"]

#: Rows per program, columns per inner step, and warps per program of the kernel.
BLOCK_I, BLOCK_J, NUM_WARPS = 32, 64, 4
#: Largest spatial dimension handled by the kernel (one register accumulator per coordinate).
MAX_DIM = 4

_SCHEMES = {
    ConstantCoefficients: 0,
    InverseCoefficients: 1,
    InverseSquareCoefficients: 2,
    ExponentialCoefficients: 3,
}


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def pair_energy_kernel(
        P,
        T,
        M,
        PARAMS,
        E,
        G,
        n,
        n_row_blocks,
        SCHEME: tl.constexpr,
        D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        NEED_GRAD: tl.constexpr,
        BI: tl.constexpr,
        BJ: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        base = b * n * D
        rows = pid * BI + tl.arange(0, BI)
        row_in = rows < n
        row_ok = row_in
        if HAS_MASK:
            row_ok = row_ok & (tl.load(M + b * n + rows, mask=row_in, other=0) != 0)
        k0 = tl.load(PARAMS)
        aux = tl.load(PARAMS + 1)  # min_distance (inverse schemes) or length_scale (exp)
        cut = tl.load(PARAMS + 2)  # exp: springs past exp_cutoff are exactly 0
        rc = tl.load(PARAMS + 3)  # the pair cutoff on target distances (the largest float: none)

        e_acc = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
        a0 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
        a1 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
        a2 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
        a3 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
        for j0 in range(0, n, BJ):
            cols = j0 + tl.arange(0, BJ)
            col_in = cols < n
            col_ok = col_in
            if HAS_MASK:
                col_ok = col_ok & (tl.load(M + b * n + cols, mask=col_in, other=0) != 0)
            dp2 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
            dt2 = tl.zeros((BI, BJ), dtype=P.dtype.element_ty)
            for c in tl.static_range(D):
                pi = tl.load(P + base + rows * D + c, mask=row_in, other=0.0)
                pj = tl.load(P + base + cols * D + c, mask=col_in, other=0.0)
                dp = pi[:, None] - pj[None, :]
                dp2 += dp * dp
                ti = tl.load(T + base + rows * D + c, mask=row_in, other=0.0)
                tj = tl.load(T + base + cols * D + c, mask=col_in, other=0.0)
                dt = ti[:, None] - tj[None, :]
                dt2 += dt * dt
            d_p = tl.sqrt(dp2)
            d_t = tl.sqrt(dt2)
            if SCHEME == 0:
                k = tl.zeros((BI, BJ), dtype=P.dtype.element_ty) + k0
            elif SCHEME == 1:
                k = k0 / tl.maximum(d_t, aux)
            elif SCHEME == 2:
                dc = tl.maximum(d_t, aux)
                k = k0 / (dc * dc)
            else:
                x = d_t / aux
                k = tl.where(x <= cut, k0 * tl.exp(-tl.minimum(x, cut)), 0.0)
            valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :]) & (d_t <= rc)
            r = d_t - d_p
            kr = tl.where(valid, k * r, 0.0)
            e_acc += kr * r
            if NEED_GRAD:
                # d/dp_i of k (d_t - d_p)^2 is -2 k r (p_i - p_j) / d_p: weight w = k r / d_p, zero for coincident
                # predicted points (their difference vector is zero anyway: the zero subgradient). The sum of
                # w (p_i - p_j) is formed from exact differences: no cancellation far from the origin, no centring.
                positive = d_p > 0
                w = tl.where(positive, kr / tl.where(positive, d_p, 1.0), 0.0)
                for c in tl.static_range(D):
                    pi = tl.load(P + base + rows * D + c, mask=row_in, other=0.0)
                    pj = tl.load(P + base + cols * D + c, mask=col_in, other=0.0)
                    diff = pi[:, None] - pj[None, :]
                    if c == 0:
                        a0 += w * diff
                    elif c == 1:
                        a1 += w * diff
                    elif c == 2:
                        a2 += w * diff
                    else:
                        a3 += w * diff

        e_rows = tl.sum(e_acc, axis=1).to(tl.float64)
        tl.store(E + b * n_row_blocks + pid, tl.sum(e_rows, axis=0))
        if NEED_GRAD:
            for c in tl.static_range(D):
                if c == 0:
                    s = tl.sum(a0, axis=1)
                elif c == 1:
                    s = tl.sum(a1, axis=1)
                elif c == 2:
                    s = tl.sum(a2, axis=1)
                else:
                    s = tl.sum(a3, axis=1)
                tl.store(G + base + rows * D + c, -2.0 * s, mask=row_in)

    return pair_energy_kernel


@functools.cache
def available() -> bool:
    """Whether Triton can be imported here (and the kernel is not switched off by ``ENERGYLOSS_TRITON=0``)."""
    if os.environ.get("ENERGYLOSS_TRITON", "1") == "0":
        return False
    try:
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken installation
        return False
    return True


def supports(pred: Tensor, coeff: object) -> bool:
    """Whether :func:`pair_energy_and_grad` handles these inputs on their device (CUDA only)."""
    return (
        pred.device.type == "cuda"
        and pred.dtype in (torch.float32, torch.float64)
        and 1 <= pred.shape[-1] <= MAX_DIM
        and type(coeff) in _SCHEMES
        and available()
    )


@functools.lru_cache(maxsize=64)
def _params_on(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    # Cached: a fresh host-to-device copy per call would cost a synchronous transfer on every loss evaluation.
    return torch.tensor(values, dtype=dtype, device=device)


def _params(coeff: object, dtype: torch.dtype, device: torch.device, cutoff: float | None) -> Tensor:
    _, k0, aux = builtin_scheme(coeff)
    rc = torch.finfo(dtype).max if cutoff is None else min(float(cutoff), torch.finfo(dtype).max)
    return _params_on((k0, aux, exp_cutoff(dtype), rc), dtype, device)


def pair_energy_and_grad(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None,
    coeff: object,
    need_grad: bool,
    cutoff: float | None = None,
    *,
    block_i: int = BLOCK_I,
    block_j: int = BLOCK_J,
    num_warps: int = NUM_WARPS,
) -> tuple[Tensor, Tensor | None]:
    """Complete-graph energies ``(B,)`` and, if ``need_grad``, their gradient w.r.t. ``pred`` ``(B, N, D)``.

    Same contract as the blocked PyTorch kernel in :mod:`energyloss.atomistic`: ``pred`` and ``target`` are
    ``(B, N, D)`` float32/float64 on one device, ``mask`` ``(B, N)`` bool or ``None``, ``coeff`` one of the four
    built-in coefficient classes; ``cutoff`` drops the pairs whose target distance exceeds it.
    """
    bsz, n, dim = pred.shape
    if type(coeff) not in _SCHEMES or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"the Triton kernel handles the built-in coefficient schemes and D <= {MAX_DIM}")
    pred, target = pred.detach().contiguous(), target.detach().contiguous()
    n_row_blocks = max(1, -(-n // block_i))
    partial = torch.zeros(bsz, n_row_blocks, dtype=torch.float64, device=pred.device)
    grad = torch.empty_like(pred) if need_grad else pred  # never written without need_grad
    mask_bytes = mask.contiguous().to(torch.int8) if mask is not None else pred  # unused without a mask
    if n > 0 and bsz > 0:
        _kernel()[(n_row_blocks, bsz)](
            pred,
            target,
            mask_bytes,
            _params(coeff, pred.dtype, pred.device, cutoff),
            partial,
            grad,
            n,
            n_row_blocks,
            SCHEME=_SCHEMES[type(coeff)],
            D=dim,
            HAS_MASK=mask is not None,
            NEED_GRAD=need_grad,
            BI=block_i,
            BJ=block_j,
            num_warps=num_warps,
        )
    energy = (0.5 * partial.sum(1)).to(pred.dtype)
    return energy, (grad if need_grad else None)
