"""Kabsch alignment and the coordinate baselines (MSE, MAE, Kabsch-aligned MSE)."""

from __future__ import annotations

import pytest
import torch

from energyloss import apply_rigid, kabsch_align, kabsch_mse_loss, mae_loss, mse_loss

from conftest import random_rotation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 3])
def test_kabsch_recovers_known_motion_with_mask_and_weights(d, dtype, gen):
    bsz, n = 4, 9
    x = torch.randn(bsz, n, d, generator=gen, dtype=dtype) + 5.0  # off-centre on purpose
    rots = torch.stack([random_rotation(d, gen, dtype) for _ in range(bsz)])
    t = torch.randn(bsz, d, generator=gen, dtype=dtype)
    y = apply_rigid(x, rots, t)
    mask = torch.ones(bsz, n, dtype=torch.bool)
    mask[0, 6:] = False
    y_noisy = torch.where(mask.unsqueeze(-1), y, torch.randn_like(y) * 100)  # garbage in padding
    weights = torch.rand(bsz, n, generator=gen, dtype=dtype) + 0.1
    for kw in (dict(mask=mask), dict(mask=mask, weights=weights)):
        r_hat, t_hat = kabsch_align(x, y_noisy, **kw)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert torch.allclose(r_hat, rots, atol=tol)
        assert torch.allclose(t_hat, t, atol=tol * 10)
        assert torch.allclose(torch.linalg.det(r_hat), torch.ones(bsz, dtype=dtype), atol=tol)


def test_kabsch_never_returns_a_reflection(gen):
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    r, _ = kabsch_align(x, mirrored)
    assert float(torch.linalg.det(r)) == pytest.approx(1.0)


def test_kabsch_mse_invariant_to_proper_motions_and_zero_at_target(gen):
    y = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    p = y + 0.2 * torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    base = kabsch_mse_loss(p, y)
    q = random_rotation(3, gen)
    assert torch.allclose(kabsch_mse_loss(p @ q.T + 1.5, y), base)
    assert torch.allclose(kabsch_mse_loss(p, y @ q.T - 2.0), base)
    assert float(kabsch_mse_loss(y @ q.T + 3.0, y)) < 1e-20


def test_kabsch_mse_gradient_only_to_pred_and_matches_manual(gen):
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    kabsch_mse_loss(p, y).backward()
    assert y.grad is None
    r, t = kabsch_align(y, p)
    aligned = apply_rigid(y.detach(), r, t)
    assert torch.allclose(p.grad, 2 * (p.detach() - aligned) / p.numel())


def test_baselines_masked_equals_loop_equals_ragged(gen):
    sizes = [4, 2, 6]
    y = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    for fn in (mse_loss, mae_loss, kabsch_mse_loss):
        dense = fn(p, y, mask=mask, reduction="none")
        loop = torch.stack([fn(p[b, :n], y[b, :n], reduction="none") for b, n in enumerate(sizes)])
        ragged = fn(p[mask], y[mask], batch=batch, reduction="none")
        assert torch.allclose(dense, loop) and torch.allclose(ragged, loop), fn.__name__


def test_mse_mae_values():
    p, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert float(mse_loss(p, y)) == pytest.approx(30 / 4)
    assert float(mae_loss(p, y)) == pytest.approx(10 / 4)
    assert float(mse_loss(p.unsqueeze(0).repeat(2, 1, 1), y.expand(2, 2, 2), reduction="sum")) == pytest.approx(15)


def test_degenerate_kabsch_is_finite():
    for x in (torch.zeros(4, 3), torch.randn(2, 3), torch.linspace(0, 1, 5).unsqueeze(-1).repeat(1, 3)):
        p = torch.randn_like(x).requires_grad_(True)
        loss = kabsch_mse_loss(p, x)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_kabsch_under_autocast_and_half_inputs(gen):
    y = torch.randn(5, 3, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r, t = kabsch_align(y.bfloat16(), y.bfloat16())
    assert r.dtype == torch.float32
    assert torch.allclose(r, torch.eye(3), atol=1e-2)


def test_alignment_bad_input():
    with pytest.raises(ValueError, match="source and target"):
        kabsch_align(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="mask must have shape"):
        kabsch_align(torch.randn(4, 3), torch.randn(4, 3), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        mse_loss(torch.randn(4, 3), torch.randn(4, 2))
