"""The losses on a CUDA device agree with the CPU (run on a GPU machine; skipped where torch sees no GPU)."""

from __future__ import annotations

import pytest
import torch

from energyloss import kabsch_mse_loss, pair_energy_loss
from energyloss.rigidity import random_regular_graph

from conftest import TOL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _value_and_grad(pred, target, **kw):
    p = pred.clone().requires_grad_(True)
    loss = pair_energy_loss(p, target, **kw)
    loss.backward()
    return loss.detach().cpu(), p.grad.cpu()


@pytest.mark.parametrize("chunk", [None, 64, "auto"])
@pytest.mark.parametrize("scheme", ["constant", "inverse", "exp"])
def test_dense_and_blocked_energy_match_cpu(scheme, chunk, gen):
    sizes = [300, 171, 40]
    pred = torch.randn(3, 300, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(3, 300, 3, generator=gen, dtype=torch.float64)
    mask = torch.arange(300).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    kw = dict(mask=mask, coefficients=scheme, chunk_size=chunk, reduction="sum")
    cpu = _value_and_grad(pred, target, **kw)
    kw["mask"] = mask.cuda()
    gpu = _value_and_grad(pred.cuda(), target.cuda(), **kw)
    assert torch.allclose(gpu[0], cpu[0], **TOL[torch.float64])
    assert torch.allclose(gpu[1], cpu[1], **TOL[torch.float64])


def test_large_float32_energy_matches_float64(gen):
    """N = 5000 (the automatic single-block path on CUDA) in float32 against a float64 evaluation."""
    pred = torch.randn(5000, 3, generator=gen, dtype=torch.float64).cuda()
    target = (pred + 0.1 * torch.randn(5000, 3, generator=gen, dtype=torch.float64).cuda()).contiguous()
    exact = _value_and_grad(pred, target, coefficients="exp", chunk_size=512)
    fast = _value_and_grad(pred.float(), target.float(), coefficients="exp")
    assert torch.allclose(fast[0].double(), exact[0], rtol=1e-4)
    assert torch.allclose(fast[1].double(), exact[1], rtol=1e-3, atol=1e-4 * exact[1].abs().max().item())


def test_sparse_energy_and_kabsch_match_cpu(gen):
    pred = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    edges = random_regular_graph(500, 6, generator=gen)
    cpu = _value_and_grad(pred, target, edges=edges, coefficients="inverse")
    gpu = _value_and_grad(pred.cuda(), target.cuda(), edges=edges.cuda(), coefficients="inverse")
    assert torch.allclose(gpu[0], cpu[0], **TOL[torch.float64])
    assert torch.allclose(gpu[1], cpu[1], **TOL[torch.float64])
    assert torch.allclose(kabsch_mse_loss(pred.cuda(), target.cuda()).cpu(), kabsch_mse_loss(pred, target))


def test_fused_kernel_is_chosen_and_matches_the_blocked_kernel(gen):
    from energyloss import _triton_kernels
    from energyloss.coefficients import ExponentialCoefficients

    if not _triton_kernels.available():
        pytest.skip("Triton is not installed: the blocked kernel is the only CUDA path")
    pred = torch.randn(2, 1000, 3, generator=gen, dtype=torch.float64).cuda()
    target = torch.randn(2, 1000, 3, generator=gen, dtype=torch.float64).cuda()
    mask = (torch.arange(1000)[None] < torch.tensor([[1000], [517]])).cuda()
    assert _triton_kernels.supports(pred, ExponentialCoefficients())
    fused = _value_and_grad(pred, target, mask=mask, coefficients="exp", reduction="sum")
    blocked = _value_and_grad(pred, target, mask=mask, coefficients="exp", reduction="sum", chunk_size="auto")
    assert torch.allclose(fused[0], blocked[0], **TOL[torch.float64])
    assert torch.allclose(fused[1], blocked[1], **TOL[torch.float64])
