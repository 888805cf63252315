"""Diffusion and flow-matching adapters (Eq. 3, 11, App. A.7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from energyloss import mse_loss, pair_energy_loss
from energyloss.diffusion import (
    NoiseSchedule,
    diffusion_sample_loss,
    eps_from_x0,
    flow_matching_interpolate,
    flow_matching_loss,
    flow_matching_x0_from_velocity,
    polynomial_schedule,
    x0_from_eps,
)


def sum_sq(pred, target, *, reduction="none"):
    per = (pred - target).square().flatten(1).sum(1)
    return per if reduction == "none" else per.mean()


def test_polynomial_schedule_shape_monotone_endpoints():
    a2 = polynomial_schedule(1000, precision=1e-5)
    assert a2.shape == (1001,)
    assert np.all(np.diff(a2) < 0)
    assert a2[0] == pytest.approx(1 - 1e-5, abs=1e-4) and a2[-1] == pytest.approx(1e-5, rel=1e-2)
    sched = NoiseSchedule.polynomial(1000)
    t = torch.arange(0, 1001, 100)
    a, s = sched.alpha(t, dtype=torch.float64), sched.sigma(t, dtype=torch.float64)
    assert torch.allclose(a**2 + s**2, torch.ones(len(t), dtype=torch.float64))
    assert sched.snr(torch.tensor([0]))[0] > 1e4 and sched.snr(torch.tensor([1000]))[0] < 1e-4


def test_schedule_rejects_bad_steps():
    sched = NoiseSchedule.polynomial(10)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        sched.alpha(torch.tensor([11]))
    with pytest.raises(TypeError, match="integer"):
        sched.alpha(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="steps"):
        polynomial_schedule(0)


def test_eps_x0_roundtrip(gen):
    x0, eps = torch.randn(3, 4, 3, generator=gen), torch.randn(3, 4, 3, generator=gen)
    alpha = torch.tensor([0.9, 0.5, 0.1])
    sigma = (1 - alpha**2).sqrt()
    zt = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    assert torch.allclose(x0_from_eps(zt, eps, alpha, sigma), x0, atol=1e-5)
    assert torch.allclose(eps_from_x0(zt, x0, alpha, sigma), eps, atol=1e-4)


def test_snr_weighted_sample_mse_equals_eps_mse(gen):
    """Eq. 3: ||eps - eps_hat||^2 = SNR_t ||x - x_hat||^2."""
    x0 = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    eps_hat = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.99, 0.7, 0.3, 0.05], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    zt = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    got = diffusion_sample_loss(sum_sq, eps_hat, zt, x0, alpha, sigma, reduction="none")
    assert torch.allclose(got, sum_sq(eps_hat, eps))


def test_energy_diffusion_loss_zero_for_rigidly_moved_prediction_and_ragged_equals_dense(gen):
    x0 = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.8, 0.4], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    eps = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    zt = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    # a prediction whose implied x0 is a translated copy of the target: zero energy, non-zero MSE
    eps_shift = eps_from_x0(zt, x0 + 1.0, alpha, sigma)
    e = diffusion_sample_loss(pair_energy_loss, eps_shift, zt, x0, alpha, sigma, coefficients="exp")
    assert float(e) < 1e-20
    assert float(diffusion_sample_loss(mse_loss, eps_shift, zt, x0, alpha, sigma)) > 0.1
    eps_hat = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    dense = diffusion_sample_loss(pair_energy_loss, eps_hat, zt, x0, alpha, sigma, mask=mask, reduction="none")
    batch = torch.tensor([0] * 6 + [1] * 4)
    ragged = diffusion_sample_loss(
        pair_energy_loss, eps_hat[mask], zt[mask], x0[mask], alpha, sigma, batch=batch, reduction="none"
    )
    assert torch.allclose(dense, ragged)


def test_flow_matching_mse_equals_velocity_mse(gen):
    """A.7: ||u - u_hat||^2 = ||x - x_hat||^2 / t^2."""
    x0, noise = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), torch.randn(3, 4, 2, generator=gen)
    noise = noise.double()
    t = torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64)
    xt = flow_matching_interpolate(x0, noise, t)
    u = (xt - x0) / t[:, None, None]
    assert torch.allclose(u, noise - x0)
    u_hat = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    got = flow_matching_loss(sum_sq, u_hat, xt, x0, t, reduction="none")
    assert torch.allclose(got, sum_sq(u_hat, u))
    assert torch.allclose(flow_matching_x0_from_velocity(xt, u, t), x0)


def test_flow_matching_rejects_t_zero():
    x = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="t must be > 0"):
        flow_matching_loss(pair_energy_loss, x, x, x, torch.tensor([0.0]))


def test_bad_weighting():
    x = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="weighting"):
        diffusion_sample_loss(pair_energy_loss, x, x, x, torch.ones(1), torch.ones(1), weighting="min-snr")


def test_schedule_values_follow_the_default_or_requested_dtype():
    sched = NoiseSchedule.polynomial(50)
    t = torch.tensor([0, 25, 50])
    for fn in (sched.alpha, sched.sigma, sched.snr):
        assert fn(t).dtype == torch.float32
        assert fn(t, dtype=torch.float64).dtype == torch.float64
        # computed in float64 whatever the output dtype
        torch.testing.assert_close(fn(t), fn(t, dtype=torch.float64).float())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert sched.alpha(t).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
    # a float32 network can consume zt built from the schedule
    net = torch.nn.Linear(3, 3)
    x0, eps = torch.randn(3, 4, 3), torch.randn(3, 4, 3)
    zt = sched.alpha(t)[:, None, None] * x0 + sched.sigma(t)[:, None, None] * eps
    assert zt.dtype == torch.float32 and net(zt).shape == (3, 4, 3)


def test_mse_inside_diffusion_equals_the_averaged_eps_mse(gen):
    """The docstring's claim: SNR-weighted mse_loss (averaged, not summed) is mse_loss on the noise."""
    x0 = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    eps_hat = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.95, 0.6, 0.2], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    zt = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    got = diffusion_sample_loss(mse_loss, eps_hat, zt, x0, alpha, sigma, mask=mask, reduction="none")
    torch.testing.assert_close(got, mse_loss(eps_hat, eps, mask=mask, reduction="none"))


def test_flow_matching_accepts_ragged_batches_and_equals_dense(gen):
    x0 = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    v_hat = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    batch = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    xt = flow_matching_interpolate(x0, noise, t)
    xt_rows = flow_matching_interpolate(x0[mask], noise[mask], t, batch=batch)
    torch.testing.assert_close(xt_rows, xt[mask])
    torch.testing.assert_close(
        flow_matching_x0_from_velocity(xt_rows, v_hat[mask], t, batch=batch),
        flow_matching_x0_from_velocity(xt, v_hat, t)[mask],
    )
    for loss in (pair_energy_loss, mse_loss):
        dense = flow_matching_loss(loss, v_hat, xt, x0, t, mask=mask, reduction="none")
        ragged = flow_matching_loss(loss, v_hat[mask], xt_rows, x0[mask], t, batch=batch, reduction="none")
        torch.testing.assert_close(dense, ragged)
    # mse_loss of the implied sample over t^2 is mse_loss of the velocity (u = noise - x0)
    torch.testing.assert_close(
        flow_matching_loss(mse_loss, v_hat, xt, x0, t, mask=mask, reduction="none"),
        mse_loss(v_hat, noise - x0, mask=mask, reduction="none"),
    )
    # ragged rows without batch= are named, not broadcast
    with pytest.raises(ValueError, match=r"t has shape \(3,\) .* \(12, 3\).*batch="):
        flow_matching_loss(mse_loss, v_hat[mask], xt_rows, x0[mask], t)
    with pytest.raises(ValueError, match=r"sigma has shape \(2,\)"):
        x0_from_eps(xt, v_hat, torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.6]))
