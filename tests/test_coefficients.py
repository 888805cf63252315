"""Coefficient schemes, including Taylor expansions of pair potentials (App. A.3)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from energyloss import (
    COEFFICIENT_SCHEMES,
    ConstantCoefficients,
    ExponentialCoefficients,
    InverseCoefficients,
    InverseSquareCoefficients,
    PotentialCoefficients,
    lennard_jones,
    morse,
    pair_energy_loss,
    resolve_coefficients,
)

D = torch.tensor([0.5, 1.0, 1.7, 4.0], dtype=torch.float64)


def test_closed_forms():
    assert torch.allclose(ConstantCoefficients(k0=3.0)(D), torch.full_like(D, 3.0))
    assert torch.allclose(InverseCoefficients(k0=2.0)(D), 2.0 / D)
    assert torch.allclose(InverseSquareCoefficients(k0=2.0)(D), 2.0 / D**2)
    assert torch.allclose(ExponentialCoefficients(k0=2.0, length_scale=0.5)(D), 2.0 * torch.exp(-D / 0.5))


def test_names_mean_default_classes():
    assert set(COEFFICIENT_SCHEMES) == {"constant", "inverse", "inverse_square", "exp"}
    for name, cls in COEFFICIENT_SCHEMES.items():
        assert resolve_coefficients(name) == cls()
    fn = lambda d: d
    assert resolve_coefficients(fn) is fn


def test_inverse_schemes_are_finite_at_zero_distance():
    zero = torch.zeros(3)
    assert torch.isfinite(InverseCoefficients()(zero)).all()
    assert torch.isfinite(InverseSquareCoefficients()(zero)).all()


@pytest.mark.parametrize("depth, width", [(1.0, 1.0), (2.5, 0.7), (0.3, 3.0)])
def test_morse_taylor_expansion_is_constant_2_D_a2(depth, width):
    k = PotentialCoefficients(partial(morse, depth=depth, width=width))(D)
    assert torch.allclose(k, torch.full_like(D, 2 * depth * width**2), rtol=1e-10)


@pytest.mark.parametrize("epsilon", [1.0, 0.25])
def test_lennard_jones_taylor_expansion_is_72_eps_over_r2(epsilon):
    k = PotentialCoefficients(partial(lennard_jones, epsilon=epsilon))(D)
    assert torch.allclose(k, 72 * epsilon / D**2, rtol=1e-10)


def test_fixed_potential_curvature_and_clamp():
    harmonic = PotentialCoefficients(lambda r: 3.0 * r**2, equilibrium=False)
    assert torch.allclose(harmonic(D), torch.full_like(D, 6.0))
    # Lennard-Jones with a fixed minimum at 1: curvature is negative beyond the inflection point; clamp it.
    fixed = PotentialCoefficients(lambda r: lennard_jones(r, torch.ones_like(r)), equilibrium=False, min_value=0.0)
    k = fixed(D)
    assert k[-1] == 0.0 and k[1] == pytest.approx(72.0)


def test_potential_coefficients_inside_loss_under_no_grad():
    y = torch.randn(5, 3, dtype=torch.float64)
    p = y + 0.1
    with torch.no_grad():
        a = pair_energy_loss(p, y, coefficients=PotentialCoefficients(partial(lennard_jones, epsilon=1.0)))
    b = pair_energy_loss(p, y, coefficients=InverseSquareCoefficients(k0=72.0))
    assert torch.allclose(a, b)


def test_non_elementwise_potential_is_rejected():
    with pytest.raises(ValueError, match="elementwise"):
        PotentialCoefficients(lambda r, r0: r.sum())(D)


@pytest.mark.parametrize("cls", [ConstantCoefficients, InverseCoefficients, InverseSquareCoefficients])
def test_bad_k0(cls):
    with pytest.raises(ValueError, match="k0"):
        cls(k0=-1.0)
    with pytest.raises(ValueError, match="length_scale"):
        ExponentialCoefficients(length_scale=0.0)


def test_potential_coefficients_are_finite_for_coincident_target_atoms():
    from functools import partial

    from energyloss.coefficients import PotentialCoefficients, lennard_jones

    k = PotentialCoefficients(partial(lennard_jones, epsilon=1.0))
    out = k(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.isfinite(out).all() and out[0] > 0
    assert torch.allclose(out[1:], 72.0 / torch.tensor([1.0, 4.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="min_distance"):
        PotentialCoefficients(lennard_jones, min_distance=0.0)
