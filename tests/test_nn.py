"""``energyloss.nn``: options are checked at construction, and the pair energy modules are first-order only."""

from __future__ import annotations

import pytest
import torch

import energyloss as el
from energyloss import nn as elnn


def test_nn_is_an_attribute_of_the_package():
    assert el.nn is elnn and "nn" in el.__all__
    assert isinstance(el.nn.PairEnergyLoss(), torch.nn.Module)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(coefficients="expo"), ValueError, "unknown coefficients 'expo'"),
        (dict(coefficients=3.0), TypeError, "coefficients must be a scheme name or a callable"),
        (dict(normalize="atom"), ValueError, "normalize must be one of"),
        (dict(normalize=True), ValueError, "normalize must be one of"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(reduction=None), ValueError, "reduction must be one of"),
        (dict(chunk_size=0), ValueError, "chunk_size must be None, 'auto' or a positive int"),
        (dict(chunk_size=True), ValueError, "chunk_size"),
        (dict(chunk_size="big"), ValueError, "chunk_size"),
    ],
)
def test_pair_energy_loss_checks_options_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        elnn.PairEnergyLoss(**kwargs)


def test_sparse_pair_energy_loss_checks_options_at_construction():
    pool = el.RigidGraphPool(2, size=1, seed=0)
    with pytest.raises(TypeError, match="pool must be a RigidGraphPool"):
        elnn.SparsePairEnergyLoss("pool")
    with pytest.raises(ValueError, match="unknown coefficients"):
        elnn.SparsePairEnergyLoss(pool, coefficients="nope")
    with pytest.raises(ValueError, match="normalize"):
        elnn.SparsePairEnergyLoss(pool, normalize="edges")
    with pytest.raises(ValueError, match="reduction"):
        elnn.SparsePairEnergyLoss(pool, reduction="max")
    assert "pool=RigidGraphPool" in repr(elnn.SparsePairEnergyLoss(pool))


@pytest.mark.parametrize("cls", [elnn.MSELoss, elnn.MAELoss, elnn.KabschMSELoss, elnn.SpinCrossEntropyLoss])
def test_reduction_checked_at_construction(cls):
    with pytest.raises(ValueError, match="reduction must be one of"):
        cls(reduction="mea")
    cls(reduction="none")


def test_spin_modules_check_options_at_construction():
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        elnn.LocalFieldEnergyLoss(temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        elnn.TrueEnergyLoss(temperature=float("nan"))
    with pytest.raises(ValueError, match="h0 must be a finite number"):
        elnn.LocalFieldEnergyLoss(h0=float("inf"))
    with pytest.raises(TypeError, match="periodic must be a bool"):
        elnn.LocalFieldEnergyLoss(periodic="yes")
    with pytest.raises(TypeError, match="periodic"):
        elnn.TrueEnergyLoss(periodic=1)
    with pytest.raises(ValueError, match="reduction"):
        elnn.TrueEnergyLoss(reduction="")
    with pytest.raises(ValueError, match="margin must be a finite number"):
        elnn.SpinMarginLoss(margin="1")
    with pytest.raises(ValueError, match="reduction"):
        elnn.SpinMarginLoss(reduction="avg")


@pytest.mark.parametrize("reduction", elnn.REDUCTIONS)
@pytest.mark.parametrize("normalize", elnn.NORMALIZATIONS)
def test_accepted_options_match_the_functional_loss(gen, reduction, normalize):
    """What the modules accept, the functions accept too (and give the same value)."""
    y = torch.randn(2, 4, 3, generator=gen)
    p = torch.randn(2, 4, 3, generator=gen)
    for chunk_size in (None, "auto", 2):
        module = elnn.PairEnergyLoss(
            coefficients="exp", normalize=normalize, reduction=reduction, chunk_size=chunk_size
        )
        expected = el.pair_energy_loss(
            p, y, coefficients="exp", normalize=normalize, reduction=reduction, chunk_size=chunk_size
        )
        assert torch.allclose(module(p, y), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(elnn.MSELoss(reduction=reduction)(p, y), el.mse_loss(p, y, reduction=reduction))


@pytest.mark.parametrize("make", [lambda: elnn.PairEnergyLoss(), "sparse"])
def test_pair_energy_modules_are_first_order_only(gen, make):
    y = torch.randn(2, 6, 2, generator=gen)
    p = torch.randn(2, 6, 2, generator=gen, requires_grad=True)
    module = elnn.SparsePairEnergyLoss(el.RigidGraphPool(2, size=2, seed=0)) if make == "sparse" else make()
    module(p, y).backward()  # first order: fine
    assert p.grad is not None and torch.isfinite(p.grad).all()
    with pytest.raises(RuntimeError, match="first-order differentiable only"):
        (g,) = torch.autograd.grad(module(p, y), p, create_graph=True)
        g.square().sum().backward()
    for doc in (elnn.PairEnergyLoss.__doc__, elnn.SparsePairEnergyLoss.__doc__):
        assert "First-order only" in doc and "create_graph" in (doc + elnn.__doc__)


def test_plain_autograd_modules_allow_double_backward(gen):
    y = torch.randn(5, 3, generator=gen)
    p = torch.randn(5, 3, generator=gen, requires_grad=True)
    (g,) = torch.autograd.grad(elnn.MSELoss()(p, y), p, create_graph=True)
    g.square().sum().backward()
    assert torch.isfinite(p.grad).all()


def test_pair_energy_module_passes_cutoff_undirected_edges_and_ragged_hints():
    import energyloss as el

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    i, j = torch.triu_indices(6, 6, offset=1)
    two_way = torch.cat([torch.stack([i, j]), torch.stack([j, i])], 1)
    module = el.nn.PairEnergyLoss(coefficients="exp", cutoff=2.0, undirected_edges=True)
    expected = el.pair_energy_loss(x, y, coefficients="exp", cutoff=2.0)
    assert torch.allclose(module(x, y, edges=two_way), expected)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    plain = el.nn.PairEnergyLoss(coefficients="exp")
    assert torch.allclose(plain(x, y, batch=batch, batch_size=2, max_num_nodes=3), plain(x, y, batch=batch))
    with pytest.raises(ValueError, match="cutoff"):
        el.nn.PairEnergyLoss(cutoff=-1.0)
    with pytest.raises(ValueError, match="normalize='pairs'"):
        el.nn.PairEnergyLoss(cutoff=1.0, normalize="pairs")
