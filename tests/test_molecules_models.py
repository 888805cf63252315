"""Denoisers of the molecule experiments: EGNN equivariance, GNN padding isolation, Haar rotations."""

from __future__ import annotations

import pytest
import torch

from energyloss.experiments.molecules.models import (
    EGNNDynamics,
    GNNDynamics,
    build_dynamics,
    count_parameters,
)
from energyloss.testing import random_rotations

from conftest import random_rotation

F = 6


def _inputs(gen, b=3, n=6, dtype=torch.float64):
    x = torch.randn(b, n, 3, generator=gen, dtype=dtype)
    h = torch.randn(b, n, F, generator=gen, dtype=dtype)
    t = torch.rand(b, generator=gen, dtype=dtype)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 5:] = False
    x = torch.where(mask[..., None], x, 0.0)
    h = torch.where(mask[..., None], h, 0.0)
    return x, h, t, mask


def _net(kind, dtype=torch.float64):
    torch.manual_seed(0)
    net = (EGNNDynamics if kind == "egnn" else GNNDynamics)(F, hidden_nf=16, n_layers=3)
    return net.to(dtype)


@pytest.mark.parametrize("proper", [True, False])
def test_egnn_is_e3_equivariant(gen, proper):
    net = _net("egnn")
    x, h, t, mask = _inputs(gen)
    q = random_rotation(3, gen, proper=proper)
    shift = torch.randn(1, 1, 3, generator=gen, dtype=torch.float64)
    moved = torch.where(mask[..., None], x @ q.T + shift, 0.0)
    ex, eh = net(x, h, t, mask)
    ex2, eh2 = net(moved, h, t, mask)
    torch.testing.assert_close(ex2, torch.where(mask[..., None], ex @ q.T, 0.0), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(eh2, eh, rtol=1e-9, atol=1e-10)


def test_egnn_is_permutation_equivariant(gen):
    net = _net("egnn")
    x, h, t, _ = _inputs(gen)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    perm = torch.randperm(x.shape[1], generator=gen)
    ex, eh = net(x, h, t, mask)
    ex2, eh2 = net(x[:, perm], h[:, perm], t, mask)
    torch.testing.assert_close(ex2, ex[:, perm])
    torch.testing.assert_close(eh2, eh[:, perm])


def test_gnn_is_not_rotation_equivariant(gen):
    # coordinates are plain features: the test above would fail for GDM (which is why GDM-aug exists)
    net = _net("gnn")
    x, h, t, mask = _inputs(gen)
    q = random_rotation(3, gen)
    ex, _ = net(x, h, t, mask)
    ex2, _ = net(x @ q.T, h, t, mask)
    assert (ex2 - ex @ q.T).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["egnn", "gnn"])
def test_outputs_centred_and_zero_on_padding(gen, kind):
    net = _net(kind)
    x, h, t, mask = _inputs(gen)
    ex, eh = net(x, h, t, mask)
    m = mask[..., None].double()
    assert torch.allclose((ex * m).sum(1), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)
    assert ex[~mask].abs().max() == 0 and eh[~mask].abs().max() == 0


@pytest.mark.parametrize("kind", ["egnn", "gnn"])
def test_padding_never_reaches_real_atoms(gen, kind):
    """Whatever padded slots hold (huge values, inf excluded), and however many there are, real outputs match."""
    net = _net(kind)
    x, h, t, mask = _inputs(gen)
    ex, eh = net(x, h, t, mask)
    pad = ~mask[..., None]
    x_junk = torch.where(pad, 1e3 * torch.randn(x.shape, generator=gen, dtype=x.dtype), x)
    h_junk = torch.where(pad, 1e3 * torch.randn(h.shape, generator=gen, dtype=h.dtype), h)
    ex2, eh2 = net(x_junk, h_junk, t, mask)
    assert torch.equal(ex2[mask], ex[mask]) and torch.equal(eh2[mask], eh[mask])
    # three more padded columns
    wide = lambda v: torch.cat([v, torch.full((v.shape[0], 3, v.shape[-1]), 7.0, dtype=v.dtype)], 1)
    wmask = torch.cat([mask, torch.zeros(mask.shape[0], 3, dtype=torch.bool)], 1)
    ex3, eh3 = net(wide(x), wide(h), t, wmask)
    torch.testing.assert_close(ex3[:, : x.shape[1]], ex, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(eh3[:, : x.shape[1]], eh, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["egnn", "gnn"])
def test_molecule_output_independent_of_batch_mates(gen, kind):
    net = _net(kind)
    x, h, t, mask = _inputs(gen)
    ex, eh = net(x, h, t, mask)
    n0 = int(mask[0].sum())
    ex0, eh0 = net(x[:1, :n0], h[:1, :n0], t[:1], mask[:1, :n0])
    torch.testing.assert_close(ex0[0], ex[0, :n0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(eh0[0], eh[0, :n0], rtol=1e-12, atol=1e-13)


def test_gradients_finite_with_padding_and_coincident_atoms(gen):
    for kind in ("egnn", "gnn"):
        net = _net(kind, torch.float32)
        x, h, t, mask = (v.float() if v.is_floating_point() else v for v in _inputs(gen))
        x = x.clone()
        x[2, 1] = x[2, 0]  # two atoms at the same place
        x.requires_grad_(True)
        ex, eh = net(x, h, t, mask)
        (ex.square().sum() + eh.square().sum()).backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_bad_inputs_and_names():
    net = GNNDynamics(F, hidden_nf=8, n_layers=1)
    x, h, t, mask = torch.zeros(2, 3, 3), torch.zeros(2, 3, F), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"h must have shape \(2, 3, 6\)"):
        net(x, torch.zeros(2, 3, 5), t, mask)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(2, 3, 2), h, t, mask)
    with pytest.raises(ValueError, match="mask"):
        net(x, h, t, mask.float())
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, h, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="unknown model"):
        build_dynamics("transformer", F, hidden_nf=8, n_layers=1)
    assert count_parameters(build_dynamics("egnn", F, hidden_nf=8, n_layers=1)) > 0


def test_random_rotations_are_haar_distributed():
    r = random_rotations(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(r @ r.mT, eye.expand_as(r), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(len(r), dtype=torch.float64), atol=1e-12)
    # Haar moments on SO(3): E[R] = 0, E[R_ij^2] = 1/3, E[tr(R)^2] = 1 (the 3-D representation is irreducible);
    # the rotation angle has density (1 - cos a) / pi, so P(a < pi/2) = 1/2 - 1/pi.
    assert r.mean(0).abs().max() < 0.02
    assert (r.square().mean(0) - 1 / 3).abs().max() < 0.01
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(float(tr.square().mean()) - 1.0) < 0.04
    angle = torch.arccos(((tr - 1) / 2).clamp(-1, 1))
    assert abs(float((angle < torch.pi / 2).double().mean()) - (0.5 - 1 / torch.pi)) < 0.01
    # reproducible from the generator
    a = random_rotations(3, generator=torch.Generator().manual_seed(5))
    b = random_rotations(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
