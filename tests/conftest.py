"""Shared fixtures: every test is seeded; float32 and float64 tolerances."""

from __future__ import annotations

import os
import socket

import pytest
import torch

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def random_rotation(d: int, gen: torch.Generator, dtype=torch.float64, proper: bool = True) -> torch.Tensor:
    """A Haar-random rotation (``proper``) or orthogonal matrix, from the library's one sampler."""
    from energyloss.testing import random_orthogonal
    from energyloss.testing import random_rotation as rotation

    return (rotation(d, generator=gen) if proper else random_orthogonal(d, generator=gen)).to(dtype)


def dense_pair_reference(pred, target, mask, coeff):
    """Complete-graph energies ``(B,)`` and gradients ``(B, N, D)`` in float64 by autograd over all pairs.

    The well-conditioned reference of the fused kernels: the blocked kernel's ``p_i * sum(w) - sum(w p_j)`` form
    cancels next to the 1.6e13 springs of coincident targets, and its rounding there varies with BLAS threading.
    """
    from energyloss.geometry import pairwise_distances

    p = pred.detach().double().clone().requires_grad_()
    t = target.detach().double()
    d_p, d_t = pairwise_distances(p), pairwise_distances(t)
    valid = ~torch.eye(p.shape[1], dtype=torch.bool)
    if mask is not None:
        valid = valid & mask[:, :, None] & mask[:, None, :]
    e = 0.5 * torch.where(valid, coeff(d_t) * (d_t - d_p) ** 2, 0.0).sum((-1, -2))
    (grad,) = torch.autograd.grad(e.sum(), p)
    return e.detach(), grad


def free_port() -> int:
    """A free TCP port on the loopback interface (for gloo process groups in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_train_worker(rank, world, port, out_dir, cfg, spec="energy:exp"):
    """One rank of a gloo data-parallel ``train_model`` run (``torch.multiprocessing.spawn`` target)."""
    from energyloss.experiments.molecules import train as T

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        T.train_model(cfg, spec, out_dir, show_progress=False)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture
def one_thread():
    """One intra-op thread while a test runs (tiny tensors: much faster than several on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
