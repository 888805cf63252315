"""Fused CPU kernels (numba) for the pair energy and its gradient: complete graph and edge lists.

Chosen automatically by :func:`energyloss.pair_energy_loss` for CPU tensors with the built-in coefficient schemes
(:func:`energyloss.coefficients.builtin_scheme`) when numba is installed; everything else takes the portable
blocked PyTorch kernel of :mod:`energyloss.atomistic`, which is also the reference the fused kernels are tested
against (float32 and float64, values and gradients). Set ``ENERGYLOSS_NUMBA=0`` to switch them off.

- Compiled on first use per (scheme, dtype), a few seconds, and cached on disk by numba (``NUMBA_CACHE_DIR``, by
  default ``__pycache__`` beside this file, or a user cache directory when that is not writable): later processes
  load the machine code in well under a second.
- Threads follow ``torch.get_num_threads()`` (capped by numba's ``NUMBA_NUM_THREADS``), and a call leaves torch's
  thread count as it found it (numba's OpenMP layer would otherwise reset it). Calls from several Python threads are
  serialised by a lock (numba's ``workqueue`` threading layer is not re-entrant).
- Both are wrapped as ``torch.library`` custom operators (``energyloss::pair_energy``, ``energyloss::edge_energy``)
  with shape functions, so ``torch.compile(fullgraph=True)`` traces through them without a graph break.
- Deterministic: for given inputs and thread count the result is bitwise reproducible (every task owns its
  gradient buffer; buffers are summed in a fixed order). Single structures split into ``max(8, threads)`` tasks,
  so runs with up to 8 threads agree bitwise too.
- The value is accumulated in float64 per task; far exponential springs are exactly zero (no denormal arithmetic,
  see :func:`energyloss.coefficients.exp_cutoff`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .coefficients import builtin_scheme, exp_cutoff

__all__ = ["MAX_DIM", "available", "edge_energy_and_grad", "pair_energy_and_grad", "supports", "supports_edges"]

#: Largest spatial dimension of the complete-graph kernel (coordinates are padded to 3); edge lists take any D.
MAX_DIM = 3
#: A padded batch with at least this many structures runs one task per structure; smaller batches split rows.
BATCH_TASKS = 16
#: Edge lists with fewer edges than this run in one task (threads would cost more than they save).
EDGE_SPLIT_MIN = 16384
#: With a ``cutoff``, structures of at least this many atoms use the cell list of their target (``O(N)`` pairs);
#: smaller ones the dense kernel with the cutoff applied to each pair.
CELL_LIST_MIN_ATOMS = 2048
#: ``cutoff=None`` is passed to the kernels as this distance (no pair is farther).
NO_CUTOFF = float("inf")

#: Below this many pair entries ``B * N * N`` the kernels run single-threaded: waking the thread pool would cost
#: more than the work (N = 30: 0.45k pairs).
SERIAL_MAX_PAIRS = 2**15

_LOCK = threading.Lock()
_NO_MASK = np.zeros((0, 0), dtype=np.bool_)

# The operators are defined with the low-level torch.library API: torch.library.custom_op would wrap the kernels in
# torch._disable_dynamo, whose first call imports torch._dynamo (2-3 s) in every process.
_LIB = torch.library.Library("energyloss", "DEF")
_LIB.define(
    "pair_energy(Tensor pred, Tensor target, Tensor? mask, int scheme, float k0, float aux, float cutoff,"
    " bool need_grad) -> (Tensor, Tensor)"
)
_LIB.define(
    "edge_energy(Tensor pred, Tensor target, Tensor src, Tensor dst, Tensor owner, Tensor? valid, int num,"
    " int scheme, float k0, float aux, float cutoff, bool need_grad) -> (Tensor, Tensor)"
)


# Decided once at import (find_spec does not import numba); a plain global, so torch.compile traces no lookup.
_AVAILABLE = os.environ.get("ENERGYLOSS_NUMBA", "1") != "0" and importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether numba is installed here (and the kernels are not switched off by ``ENERGYLOSS_NUMBA=0``)."""
    return _AVAILABLE


def supports(pred: Tensor, coeff: object) -> bool:
    """Whether :func:`pair_energy_and_grad` handles these inputs: CPU, float32/64, ``D <= 3``, a built-in scheme."""
    return (
        pred.device.type == "cpu"
        and pred.dtype in (torch.float32, torch.float64)
        and 1 <= pred.shape[-1] <= MAX_DIM
        and builtin_scheme(coeff) is not None
        and available()
    )


def supports_edges(pred: Tensor, coeff: object) -> bool:
    """Whether :func:`edge_energy_and_grad` handles these inputs: CPU, float32/64, a built-in scheme."""
    return (
        pred.device.type == "cpu"
        and pred.dtype in (torch.float32, torch.float64)
        and builtin_scheme(coeff) is not None
        and available()
    )


@functools.cache
def _impl():
    from . import _numba_impl

    return _numba_impl


@functools.lru_cache(maxsize=256)
def _params(scheme: tuple[int, float, float], dtype: torch.dtype, cutoff: float) -> np.ndarray:
    """The kernels' constants in the data dtype (cached: building them costs more than a small kernel call)."""
    _, k0, aux = scheme
    # an infinite cutoff becomes the largest finite float: the kernels are compiled assuming no infinities
    rc = min(cutoff, torch.finfo(dtype).max)
    values = np.array([k0, aux, exp_cutoff(dtype), 1.0 / aux, 0.0, 1.0, rc], dtype=np.float64)
    out = values.astype(np.float32 if dtype == torch.float32 else np.float64)
    out.setflags(write=False)
    return out


@contextlib.contextmanager
def _kernel_section() -> Iterator[int]:
    """Hold the kernel lock and use torch's thread count; yields that count (clipped to numba's pool).

    Keeps torch's own count as it was: numba's OpenMP threading layer shares libgomp with torch, and starting its
    pool resets the OpenMP thread count to ``NUMBA_NUM_THREADS``, so without this a one-thread run
    (``torch.set_num_threads(1)``) would run torch on every core from its first energy call on.
    """
    with _LOCK:
        wanted = torch.get_num_threads()
        try:
            yield _impl().set_threads(wanted)
        finally:
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)


def _pair_splits(bsz: int, n: int, threads: int) -> int:
    if bsz >= BATCH_TASKS or n < 64:
        return 1
    return max(1, min(max(8, threads) // max(bsz, 1), n // 32))


# ----------------------------------------------------------------------------------------------------------------
# complete graph


def _pair_energy_cpu(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None,
    scheme: int,
    k0: float,
    aux: float,
    cutoff: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    bsz, n, dim = pred.shape
    if bsz == 0 or n == 0:
        return pred.new_zeros(bsz), torch.zeros_like(pred)
    if cutoff < NO_CUTOFF and n >= CELL_LIST_MIN_ATOMS:
        return _cell_list_energy(pred, target, mask, (scheme, k0, aux), cutoff, need_grad)
    params = _params((scheme, k0, aux), pred.dtype, cutoff)
    flags = _NO_MASK if mask is None else mask.contiguous().numpy()
    parallel = bsz * n * n >= SERIAL_MAX_PAIRS
    with _kernel_section() as threads:
        splits = _pair_splits(bsz, n, threads) if parallel else 1
        grad, energy = _impl().KERNELS[scheme, parallel][0](
            pred.contiguous().numpy(), target.contiguous().numpy(), flags, params, splits
        )
    out = torch.from_numpy(grad[:, 0] if splits == 1 else grad.sum(1)) if need_grad else pred.new_zeros(0)
    return torch.from_numpy(energy.sum(1).astype(grad.dtype)), out


def _cell_list_energy(pred, target, mask, scheme, cutoff, need_grad) -> tuple[Tensor, Tensor]:
    """The cutoff energy of large structures, one at a time, through the cell list of each target."""
    bsz, n, dim = pred.shape
    params = _params(scheme, pred.dtype, cutoff)
    impl = _impl()
    energies, grads = [], []
    with _kernel_section() as threads:
        splits = max(8, threads)
        for b in range(bsz):
            pos = torch.zeros(3, n, dtype=pred.dtype)
            tgt = torch.zeros(3, n, dtype=pred.dtype)
            pos[:dim] = pred[b].mT
            tgt[:dim] = target[b].mT
            weights = torch.ones(n, dtype=pred.dtype) if mask is None else mask[b].to(pred.dtype)
            order, cell_start, cell_of, dims = impl.build_cells(tgt.numpy(), weights.numpy(), float(cutoff), 2 * n)
            grad = torch.zeros(splits, 3, n, dtype=pred.dtype)
            energy = torch.zeros(splits, dtype=torch.float64)
            impl.KERNELS[scheme[0], True][2](
                pos.numpy(),
                tgt.numpy(),
                weights.numpy(),
                params,
                splits,
                grad.numpy(),
                energy.numpy(),
                order,
                cell_start,
                cell_of,
                dims,
            )
            energies.append(energy.sum())
            grads.append(grad.sum(0)[:dim].mT.mul(-2.0))
    out = torch.stack(grads) if need_grad else pred.new_zeros(0)
    return torch.stack(energies).to(pred.dtype), out


def _pair_energy_fake(pred, target, mask, scheme, k0, aux, cutoff, need_grad):
    return pred.new_empty(pred.shape[0]), (pred.new_empty(pred.shape) if need_grad else pred.new_empty(0))


torch.library.impl("energyloss::pair_energy", "cpu", _pair_energy_cpu, lib=_LIB)
torch.library.register_fake("energyloss::pair_energy", _pair_energy_fake, lib=_LIB)


def pair_energy_and_grad(
    pred: Tensor, target: Tensor, mask: Tensor | None, coeff: object, need_grad: bool, cutoff: float | None = None
) -> tuple[Tensor, Tensor | None]:
    """Complete-graph energies ``(B,)`` and, if ``need_grad``, their gradient w.r.t. ``pred`` ``(B, N, D)``.

    Same contract as the blocked PyTorch kernel of :mod:`energyloss.atomistic`: ``pred``, ``target`` ``(B, N, D)``
    float32/float64 CPU tensors, ``mask`` ``(B, N)`` bool or ``None`` (padded rows must hold finite values; the
    loss zeroes them first), ``coeff`` a built-in scheme. ``cutoff``: pairs whose target distance exceeds it are
    dropped; structures of at least :data:`CELL_LIST_MIN_ATOMS` atoms then visit only the pairs within it.
    """
    scheme = builtin_scheme(coeff)
    if scheme is None or not 1 <= pred.shape[-1] <= MAX_DIM:
        raise ValueError(f"the numba kernel handles the built-in coefficient schemes and D <= {MAX_DIM}")
    rc = NO_CUTOFF if cutoff is None else float(cutoff)
    # torch.compile sees the registered operator; eager calls skip the dispatcher (10 us a call on a small input)
    op = torch.ops.energyloss.pair_energy if torch.compiler.is_compiling() else _pair_energy_cpu
    energy, grad = op(pred.detach(), target.detach(), mask, *scheme, rc, need_grad)
    return energy, (grad if need_grad else None)


# ----------------------------------------------------------------------------------------------------------------
# edge lists


def _edge_energy_cpu(
    pred: Tensor,
    target: Tensor,
    src: Tensor,
    dst: Tensor,
    owner: Tensor,
    valid: Tensor | None,
    num: int,
    scheme: int,
    k0: float,
    aux: float,
    cutoff: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    n_edges = src.shape[0]
    params = _params((scheme, k0, aux), pred.dtype, cutoff)
    parallel = n_edges >= EDGE_SPLIT_MIN
    with _kernel_section() as threads:
        splits = threads if parallel else 1
        grad = torch.zeros(splits, *pred.shape, dtype=pred.dtype)
        energy = torch.zeros(splits, num, dtype=torch.float64)
        flags = valid.to(torch.uint8) if valid is not None else torch.ones(n_edges, dtype=torch.uint8)
        if n_edges:
            _impl().KERNELS[scheme, parallel][1](
                pred.contiguous().numpy(),
                target.contiguous().numpy(),
                src.to(torch.int64).numpy(),
                dst.to(torch.int64).numpy(),
                owner.to(torch.int64).numpy(),
                flags.numpy(),
                params,
                splits,
                grad.numpy(),
                energy.numpy(),
            )
    out = (grad[0] if splits == 1 else grad.sum(0)).mul_(-2.0) if need_grad else pred.new_zeros(0)
    return energy.sum(0).to(pred.dtype), out


def _edge_energy_fake(pred, target, src, dst, owner, valid, num, scheme, k0, aux, cutoff, need_grad):
    return pred.new_empty(num), (pred.new_empty(pred.shape) if need_grad else pred.new_empty(0))


torch.library.impl("energyloss::edge_energy", "cpu", _edge_energy_cpu, lib=_LIB)
torch.library.register_fake("energyloss::edge_energy", _edge_energy_fake, lib=_LIB)


def edge_energy_and_grad(
    pred: Tensor,
    target: Tensor,
    src: Tensor,
    dst: Tensor,
    owner: Tensor | None,
    num: int,
    valid: Tensor | None,
    coeff: object,
    need_grad: bool,
    cutoff: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Energies ``(num,)`` over edges ``(src, dst)`` of flat rows ``(M, D)`` and, if asked, the gradient ``(M, D)``.

    Same contract as ``energyloss.atomistic._edge_energy_and_grad``: ``owner (E,)`` is each edge's structure
    (``None``: all in structure 0), ``valid (E,)`` bool marks the edges that count (``None``: all).
    """
    scheme = builtin_scheme(coeff)
    if scheme is None:
        raise ValueError("the numba kernel handles the built-in coefficient schemes only")
    if owner is None:
        owner = torch.zeros_like(src)
    rc = NO_CUTOFF if cutoff is None else float(cutoff)
    op = torch.ops.energyloss.edge_energy if torch.compiler.is_compiling() else _edge_energy_cpu
    energy, grad = op(pred.detach(), target.detach(), src, dst, owner, valid, num, *scheme, rc, need_grad)
    return energy, (grad if need_grad else None)
