"""Module wrappers, the shipped invariance utilities and geometry primitives."""

from __future__ import annotations

import pytest
import torch

import energyloss
from energyloss import center, pairwise_distances, safe_norm, to_dense_batch, to_ragged
from energyloss.nn import KabschMSELoss, MAELoss, MSELoss, PairEnergyLoss
from energyloss.testing import assert_invariant, invariance_errors, random_orthogonal, random_rotation


def test_modules_call_the_functions(gen):
    y = torch.randn(2, 5, 3, generator=gen)
    p = torch.randn(2, 5, 3, generator=gen)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    e = torch.tensor([[0, 1], [1, 2]])
    m = PairEnergyLoss(coefficients="exp", normalize="atoms", reduction="sum")
    assert torch.equal(
        m(p, y, mask=mask, edges=e),
        energyloss.pair_energy_loss(p, y, mask=mask, edges=e, coefficients="exp", normalize="atoms", reduction="sum"),
    )
    assert "exp" in repr(m)
    for module, fn in ((MSELoss(), energyloss.mse_loss), (MAELoss(), energyloss.mae_loss)):
        assert torch.equal(module(p, y, mask=mask), fn(p, y, mask=mask))
    assert torch.equal(KabschMSELoss(reduction="none")(p, y), energyloss.kabsch_mse_loss(p, y, reduction="none"))


def test_assert_invariant_catches_a_non_invariant_loss(gen):
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    p = y + 0.3
    with pytest.raises(AssertionError, match="rotation"):
        assert_invariant(energyloss.mse_loss, p, y, generator=gen)
    errors = invariance_errors(energyloss.kabsch_mse_loss, p, y, generator=gen, translations=True)
    assert errors["rotation"] < 1e-9 and errors["translation"] < 1e-9
    assert errors["reflection"] > 1e-3  # Kabsch with proper rotations is not reflection-invariant


def test_random_matrices(gen):
    q = random_orthogonal(4, generator=gen)
    assert torch.allclose(q @ q.T, torch.eye(4, dtype=q.dtype), atol=1e-12)
    dets = {round(float(torch.linalg.det(random_rotation(3, generator=gen)))) for _ in range(10)}
    assert dets == {1}


def test_safe_norm_gradient_at_zero_and_value():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    n = safe_norm(x)
    n.sum().backward()
    assert torch.equal(n.detach(), torch.tensor([0.0, 5.0]))
    assert torch.allclose(x.grad, torch.tensor([[0.0, 0.0], [0.6, 0.8]]))
    x = torch.randn(4, 3, requires_grad=True)
    pairwise_distances(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_center_and_layout_roundtrip(gen):
    x = torch.randn(3, 4, 2, generator=gen)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    c = center(x, mask=mask)
    assert torch.allclose((c * mask.unsqueeze(-1)).sum(1), torch.zeros(3, 2), atol=1e-6)
    rows, batch = to_ragged(x, mask)
    dense, mask2 = to_dense_batch(rows, batch)
    assert torch.equal(mask2, mask[:, :4]) and torch.equal(dense[mask2], x[mask])


def test_spin_and_sparse_modules_call_the_functions(gen):
    from energyloss.nn import (
        LocalFieldEnergyLoss,
        SparsePairEnergyLoss,
        SpinCrossEntropyLoss,
        SpinMarginLoss,
        TrueEnergyLoss,
    )

    couplings = torch.rand(2, 2, 4, 4, generator=gen) * 2 - 1
    couplings[:, 0, :, -1] = 0
    couplings[:, 1, -1, :] = 0
    logits = torch.randn(2, 4, 4, generator=gen)
    target = torch.where(torch.rand(2, 4, 4, generator=gen) > 0.5, 1.0, -1.0)
    kw = dict(h0=5.0, temperature=0.2)
    assert torch.equal(
        LocalFieldEnergyLoss(**kw)(logits, target, couplings),
        energyloss.local_field_energy_loss(logits, target, couplings, **kw),
    )
    assert torch.equal(TrueEnergyLoss()(logits, couplings), energyloss.true_energy_loss(logits, couplings))
    assert torch.equal(SpinCrossEntropyLoss()(logits, target), energyloss.spin_cross_entropy_loss(logits, target))
    assert torch.equal(SpinMarginLoss()(logits, target), energyloss.spin_margin_loss(logits, target))

    pool = energyloss.RigidGraphPool(3, size=2, seed=0)
    y = torch.randn(2, 6, 3, generator=gen)
    p = y + 0.1
    module = SparsePairEnergyLoss(pool, coefficients="exp")
    a = module(p, y, generator=torch.Generator().manual_seed(5))
    b = energyloss.sparse_pair_energy_loss(
        p, y, pool=pool, coefficients="exp", generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(a, b) and a > 0
