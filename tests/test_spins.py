"""Tests of energyloss.spins: Ising energies, local fields, the local-field / free-energy losses, baselines."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from energyloss.spins import (
    DEFAULT_H0,
    flip_invariant_loss,
    free_energy_loss,
    ising_energy,
    local_field_energy,
    local_field_energy_loss,
    local_field_weights,
    local_fields,
    magnetisation,
    spin_cross_entropy_loss,
    spin_entropy,
    spin_margin_loss,
    spins_from_logits,
    true_energy_loss,
)


def random_couplings(shape, *, periodic=False, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    J = torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1
    if not periodic:
        J[..., 0, :, -1] = 0
        J[..., 1, -1, :] = 0
    return J


def random_spins(shape, *, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype)


def bond_list(height, width, periodic):
    out = []
    for r in range(height):
        for c in range(width if periodic else width - 1):
            out.append(((0, r, c), (r, c), (r, (c + 1) % width)))
    for r in range(height if periodic else height - 1):
        for c in range(width):
            out.append(((1, r, c), (r, c), ((r + 1) % height, c)))
    return out


def loop_energy(spins, J, periodic):
    """Reference: an explicit loop over the bonds."""
    height, width = spins.shape
    return -sum(J[b] * spins[i] * spins[j] for b, i, j in bond_list(height, width, periodic))


def all_configurations(height, width, dtype=torch.float64):
    configs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=height * width)), dtype=dtype)
    return configs.reshape(-1, height, width)


def brute_ground_state(J, periodic=False):
    configs = all_configurations(*J.shape[-2:])
    energies = ising_energy(configs, J, periodic=periodic)
    return configs[int(torch.argmin(energies))]


# ----------------------------------------------------------------------------------------------------------------
# energies and local fields


def test_ising_energy_hand_computed_open():
    J = torch.zeros(2, 2, 2)
    J[0, 0, 0] = 1.0  # (0,0)-(0,1)
    J[0, 1, 0] = -2.0  # (1,0)-(1,1)
    J[1, 0, 0] = 0.5  # (0,0)-(1,0)
    J[1, 0, 1] = 0.25  # (0,1)-(1,1)
    y = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    # -(1*1*-1 + -2*-1*1 + 0.5*1*-1 + 0.25*-1*1) = -(-1 + 2 - 0.5 - 0.25)
    assert ising_energy(y, J).item() == pytest.approx(-0.25)


def test_ising_energy_periodic_two_by_two_counts_both_bonds():
    # on a 2 x 2 torus each neighbouring pair is joined by two bonds
    J = torch.zeros(2, 2, 2)
    J[0, 0, 0] = 1.0  # (0,0)-(0,1)
    J[0, 0, 1] = 3.0  # (0,1)-(0,0) across the seam
    y = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert ising_energy(y, J, periodic=True).item() == pytest.approx(4.0)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (4, 4), (2, 5)])
def test_ising_energy_matches_bond_loop(periodic, shape):
    J = random_couplings((2, *shape), periodic=periodic, seed=1)
    for seed in range(3):
        y = random_spins(shape, seed=seed)
        assert ising_energy(y, J, periodic=periodic).item() == pytest.approx(loop_energy(y, J, periodic).item())


def test_ising_energy_broadcasts_batches():
    J = random_couplings((5, 2, 3, 3), seed=2)
    y = random_spins((5, 3, 3), seed=3)
    batched = ising_energy(y, J)
    assert batched.shape == (5,)
    for b in range(5):
        assert batched[b].item() == pytest.approx(loop_energy(y[b], J[b], False).item())
    # one configuration against many coupling sets
    assert ising_energy(y[0], J).shape == (5,)


def test_local_fields_hand_computed():
    J = torch.zeros(2, 2, 2)
    J[0, 0, 0] = 1.0  # (0,0)-(0,1)
    J[1, 0, 0] = -0.5  # (0,0)-(1,0)
    y = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    expected = torch.tensor([[1.0 * -1 + -0.5 * 1, 1.0 * 1], [-0.5 * 1, 0.0]])
    torch.testing.assert_close(local_fields(y, J), expected)


@pytest.mark.parametrize("periodic", [False, True])
def test_single_flip_energy_change_is_twice_the_flip_cost(periodic):
    J = random_couplings((2, 4, 5), periodic=periodic, seed=4)
    y = random_spins((4, 5), seed=5)
    cost = y * local_fields(y, J, periodic=periodic)
    base = ising_energy(y, J, periodic=periodic)
    for r in range(4):
        for c in range(5):
            flipped = y.clone()
            flipped[r, c] *= -1
            delta = ising_energy(flipped, J, periodic=periodic) - base
            assert delta.item() == pytest.approx(2 * cost[r, c].item())


def test_ground_state_has_nonnegative_flip_costs():
    J = random_couplings((2, 3, 3), seed=6)
    y = brute_ground_state(J)
    assert bool((local_field_weights(y, J, h0=0.0) >= 0).all())


# ----------------------------------------------------------------------------------------------------------------
# local-field energy: the minimiser property (the derivation in local_field_energy's docstring)


def argmin_configurations(energy_fn, height, width):
    configs = all_configurations(height, width)
    values = energy_fn(configs)
    best = values.min()
    return configs[values <= best + 1e-12]


def test_local_field_energy_zero_at_data_and_first_order_exact():
    J = random_couplings((2, 4, 4), seed=7)
    y = random_spins((4, 4), seed=8)
    assert local_field_energy(y, y, J).item() == 0.0
    # h0 = 0: flipping a set of non-neighbouring spins costs exactly E(pred) - E(y)
    pred = y.clone()
    for r, c in [(0, 0), (1, 1), (2, 0), (3, 3)]:  # no two are neighbours
        pred[r, c] *= -1
    expected = ising_energy(pred, J) - ising_energy(y, J)
    assert local_field_energy(pred, y, J, h0=0.0).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("seed", range(5))
def test_data_is_unique_minimiser_for_any_data_when_h0_above_4(seed):
    J = random_couplings((2, 3, 3), seed=seed)
    y = random_spins((3, 3), seed=100 + seed)  # arbitrary data, not a ground state
    minimisers = argmin_configurations(lambda p: local_field_energy(p, y, J, h0=4.0 + 1e-6), 3, 3)
    assert len(minimisers) == 1
    torch.testing.assert_close(minimisers[0], y)


def test_worst_case_data_needs_h0_above_4():
    # a site whose four bonds are all maximally frustrated by the data: y_i h_i = -4
    J = torch.zeros(2, 3, 3)
    J[0, 1, 0] = J[0, 1, 1] = J[1, 0, 1] = J[1, 1, 1] = 1.0  # the four bonds of the centre site
    y = torch.ones(3, 3)
    y[1, 1] = -1.0
    assert local_field_weights(y, J, h0=0.0)[1, 1].item() == pytest.approx(-4.0)
    below = argmin_configurations(lambda p: local_field_energy(p, y, J, h0=3.9), 3, 3)
    assert not any(torch.equal(m, y) for m in below)
    above = argmin_configurations(lambda p: local_field_energy(p, y, J, h0=4.1), 3, 3)
    assert len(above) == 1 and torch.equal(above[0], y)


@pytest.mark.parametrize("seed", range(5))
def test_ground_state_is_unique_minimiser_for_any_positive_h0(seed):
    J = random_couplings((2, 3, 3), seed=20 + seed)
    y = brute_ground_state(J)
    minimisers = argmin_configurations(lambda p: local_field_energy(p, y, J, h0=1e-3), 3, 3)
    assert len(minimisers) == 1
    torch.testing.assert_close(minimisers[0], y)


def test_eq16_as_printed_does_not_have_the_data_as_minimiser():
    """Documents why we changed Eq. 16: sum_i (sum_j (J_ij + h0) y_j) yhat_i is minimised elsewhere."""

    def printed(pred, y, J, h0):
        ones = (J != 0).to(J.dtype)  # h0 added to the couplings of existing bonds
        return (local_fields(y, J + h0 * ones) * pred).sum(dim=(-2, -1))

    J = random_couplings((2, 3, 3), seed=30)
    y = brute_ground_state(J)
    for h0 in (0.0, 5.0):
        minimisers = argmin_configurations(lambda p, h0=h0: printed(p, y, J, h0), 3, 3)
        assert not any(torch.equal(m, y) for m in minimisers)


# ----------------------------------------------------------------------------------------------------------------
# free energies: exactness against enumeration


def enumerate_q(logits):
    """Probabilities of every configuration under the product distribution of ``logits (H, W)``."""
    configs = all_configurations(*logits.shape)
    logq = F.logsigmoid(configs * logits).sum(dim=(-2, -1))
    return configs, logq


def test_spin_entropy_matches_enumeration():
    logits = torch.tensor([[0.3, -2.0], [5.0, 0.0]], dtype=torch.float64)
    _, logq = enumerate_q(logits)
    expected = -(logq.exp() * logq).sum()
    assert spin_entropy(logits).item() == pytest.approx(expected.item())


def test_spin_entropy_stable_for_large_logits():
    logits = torch.tensor([[1e4, -1e4], [80.0, -80.0]], requires_grad=True)
    s = spin_entropy(logits)
    s.backward()
    assert math.isfinite(s.item()) and s.item() == pytest.approx(0.0, abs=1e-30)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("log_partition", [True, False])
def test_free_energy_loss_matches_enumeration(log_partition):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    field = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    T = 0.7
    configs, logq = enumerate_q(logits)
    q = logq.exp()
    energies = -(field * configs).sum(dim=(-2, -1))
    logp = -energies / T - torch.logsumexp(-energies / T, dim=0)
    kl = (q * (logq - logp)).sum()
    expected_energy = (q * energies).sum()
    entropy = -(q * logq).sum()
    expected = kl if log_partition else expected_energy / T - entropy
    got = free_energy_loss(logits, field, temperature=T, log_partition=log_partition)
    assert got.item() == pytest.approx(expected.item())


def test_free_energy_loss_zero_at_boltzmann_and_nonnegative():
    field = torch.tensor([[1.0, -0.5], [0.0, 3.0]], dtype=torch.float64)
    T = 0.1
    optimum = (2 * field / T).requires_grad_(True)
    loss = free_energy_loss(optimum, field, temperature=T)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert optimum.grad.abs().max().item() < 1e-10
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        assert free_energy_loss(torch.randn(2, 2, generator=gen) * 10, field, temperature=T).item() >= 0


@pytest.mark.parametrize("periodic", [False, True])
def test_true_energy_loss_matches_enumeration(periodic):
    J = random_couplings((2, 2, 3), periodic=periodic, seed=40)
    gen = torch.Generator().manual_seed(41)
    logits = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    configs, logq = enumerate_q(logits)
    q = logq.exp()
    T = 0.3
    expected = (q * ising_energy(configs, J, periodic=periodic)).sum() / T + (q * logq).sum()
    got = true_energy_loss(logits, J, temperature=T, periodic=periodic)
    assert got.item() == pytest.approx(expected.item())


def test_true_energy_loss_is_flip_invariant_and_prefers_ground_state():
    J = random_couplings((2, 3, 3), seed=50)
    y = brute_ground_state(J)
    z = 20.0 * y
    assert true_energy_loss(z, J).item() == pytest.approx(true_energy_loss(-z, J).item())
    other = y.clone()
    other[1, 1] *= -1
    assert true_energy_loss(z, J) < true_energy_loss(20.0 * other, J)


def test_local_field_energy_loss_matches_enumeration():
    J = random_couplings((2, 2, 3), seed=60)
    y = random_spins((2, 3), seed=61)
    gen = torch.Generator().manual_seed(62)
    logits = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    T, h0 = 0.5, 4.5
    configs, logq = enumerate_q(logits)
    q = logq.exp()
    energies = local_field_energy(configs, y, J, h0=h0)
    logp = -energies / T - torch.logsumexp(-energies / T, dim=0)
    expected = (q * (logq - logp)).sum()
    got = local_field_energy_loss(logits, y, J, h0=h0, temperature=T)
    assert got.item() == pytest.approx(expected.item())
    # without log Z: E_q[E_LF] / T - S
    no_z = local_field_energy_loss(logits, y, J, h0=h0, temperature=T, log_partition=False)
    expected_no_z = (q * energies).sum() / T + (q * logq).sum()
    # E_LF has the constant sum_i w_i, which free_energy_loss drops with log Z; compare up to it
    constant = local_field_weights(y, J, h0=h0).sum() / T
    assert (no_z + constant).item() == pytest.approx(expected_no_z.item())


@pytest.mark.parametrize("seed", range(3))
def test_local_field_energy_loss_minimiser_has_the_data_signs(seed):
    J = random_couplings((2, 4, 4), seed=70 + seed)
    y = random_spins((4, 4), seed=80 + seed)
    logits = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = local_field_energy_loss(logits, y, J, temperature=10.0)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(spins_from_logits(logits.detach()), y)
    # the optimum is the tempered target: logits 2 w y / T
    target_logits = 2 * local_field_weights(y, J) * y / 10.0
    torch.testing.assert_close(logits.detach(), target_logits, atol=1e-3, rtol=1e-3)


def test_local_field_energy_loss_ranks_predictions_by_flip_cost():
    J = random_couplings((2, 4, 4), seed=90)
    y = random_spins((4, 4), seed=91)
    cost = local_field_weights(y, J)
    cheap = int(torch.argmin(cost))
    dear = int(torch.argmax(cost))
    z = 10.0 * y
    z_cheap, z_dear = z.clone(), z.clone()
    z_cheap.view(-1)[cheap] *= -1
    z_dear.view(-1)[dear] *= -1
    assert local_field_energy_loss(z_cheap, y, J) < local_field_energy_loss(z_dear, y, J)
    # cross-entropy cannot tell the two errors apart
    assert spin_cross_entropy_loss(z_cheap, y).item() == pytest.approx(spin_cross_entropy_loss(z_dear, y).item())


# ----------------------------------------------------------------------------------------------------------------
# baselines, flip invariance, reductions, gradients


def test_cross_entropy_and_margin_match_reference():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, 3, generator=gen)
    y = random_spins((4, 3, 3), seed=4, dtype=torch.float32)
    ref = F.binary_cross_entropy_with_logits(z, (y + 1) / 2, reduction="sum") / 4
    assert spin_cross_entropy_loss(z, y).item() == pytest.approx(ref.item(), rel=1e-6)
    hinge = torch.clamp(0.5 - y * z, min=0).sum() / 4
    assert spin_margin_loss(z, y, margin=0.5).item() == pytest.approx(hinge.item(), rel=1e-6)


@pytest.mark.parametrize("loss_name", ["ce", "margin", "local"])
def test_flip_invariant_losses(loss_name):
    J = random_couplings((3, 2, 4, 4), seed=5)
    y = random_spins((3, 4, 4), seed=6)
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) * 3
    fn, args = {
        "ce": (spin_cross_entropy_loss, ()),
        "margin": (spin_margin_loss, ()),
        "local": (local_field_energy_loss, (J,)),
    }[loss_name]
    inv = flip_invariant_loss(fn, z, y, *args, reduction="none")
    torch.testing.assert_close(inv, flip_invariant_loss(fn, z, -y, *args, reduction="none"))
    torch.testing.assert_close(inv, flip_invariant_loss(fn, -z, y, *args, reduction="none"))
    torch.testing.assert_close(
        inv, torch.minimum(fn(z, y, *args, reduction="none"), fn(z, -y, *args, reduction="none"))
    )
    # the plain loss is not invariant
    assert not torch.allclose(fn(z, y, *args, reduction="none"), fn(z, -y, *args, reduction="none"))


def test_local_field_weights_are_flip_invariant():
    J = random_couplings((2, 4, 4), seed=8)
    y = random_spins((4, 4), seed=9)
    torch.testing.assert_close(local_field_weights(y, J), local_field_weights(-y, J))


def test_reductions_and_batch_shapes():
    J = random_couplings((2, 3, 2, 4, 4), seed=10)
    y = random_spins((2, 3, 4, 4), seed=11)
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    for fn in (
        lambda r: local_field_energy_loss(z, y, J, reduction=r),
        lambda r: true_energy_loss(z, J, reduction=r),
        lambda r: spin_cross_entropy_loss(z, y, reduction=r),
        lambda r: spin_margin_loss(z, y, reduction=r),
    ):
        none = fn("none")
        assert none.shape == (2, 3)
        assert fn("mean").item() == pytest.approx(none.mean().item())
        assert fn("sum").item() == pytest.approx(none.sum().item())
        # batched == per-instance
        assert none[1, 2].item() == pytest.approx(none[1, 2].item())


def test_batched_loss_equals_per_instance_loop():
    J = random_couplings((3, 2, 4, 4), seed=13, periodic=True)
    y = random_spins((3, 4, 4), seed=14)
    z = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    batched = local_field_energy_loss(z, y, J, periodic=True, reduction="none")
    for b in range(3):
        single = local_field_energy_loss(z[b], y[b], J[b], periodic=True)
        assert batched[b].item() == pytest.approx(single.item())


def test_float32_close_to_float64():
    J = random_couplings((2, 2, 5, 5), seed=16)
    y = random_spins((2, 5, 5), seed=17)
    z = torch.randn(2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(18)) * 4
    for fn in (
        lambda z, y, J: local_field_energy_loss(z, y, J),
        lambda z, y, J: true_energy_loss(z, J),
    ):
        hi = fn(z, y, J)
        lo = fn(z.float(), y.float(), J.float())
        assert lo.dtype == torch.float32
        assert lo.item() == pytest.approx(hi.item(), rel=1e-5)


def test_gradcheck_float64():
    J = random_couplings((2, 2, 3, 3), seed=19)
    y = random_spins((2, 3, 3), seed=20)
    z = torch.randn(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(21), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: local_field_energy_loss(z, y, J, temperature=0.5), (z,))
    assert torch.autograd.gradcheck(lambda z: true_energy_loss(z, J, temperature=0.5), (z,))
    assert torch.autograd.gradcheck(lambda z: spin_cross_entropy_loss(z, y), (z,))
    assert torch.autograd.gradcheck(lambda z: free_energy_loss(z, y * 0.3, temperature=0.5), (z,))


def test_no_gradient_to_targets_or_couplings():
    J = random_couplings((2, 3, 3), seed=22).requires_grad_(True)
    y = random_spins((3, 3), seed=23).requires_grad_(True)
    z = torch.randn(3, 3, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(24))
    (local_field_energy_loss(z, y, J) + true_energy_loss(z, J) + spin_cross_entropy_loss(z, y)).backward()
    assert J.grad is None and y.grad is None and z.grad is not None


def test_magnetisation_and_sign():
    z = torch.tensor([-3.0, 0.0, 0.5])
    torch.testing.assert_close(magnetisation(z), torch.sigmoid(z) - torch.sigmoid(-z))
    torch.testing.assert_close(spins_from_logits(z), torch.tensor([-1.0, 1.0, 1.0]))


def test_default_h0_guarantees_unique_minimiser():
    assert DEFAULT_H0 > 4


# ----------------------------------------------------------------------------------------------------------------
# bad inputs


def test_open_boundary_couplings_must_be_zero_outside_the_lattice():
    J = random_couplings((2, 3, 3), periodic=True, seed=25)
    y = random_spins((3, 3), seed=26)
    with pytest.raises(ValueError, match="last column of channel 0"):
        ising_energy(y, J)
    ising_energy(y, J, periodic=True)  # fine on a torus


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ising_energy(torch.ones(3, 3), torch.zeros(3, 3, 3)), r"\(\.\.\., 2, L, L\)"),
        (lambda: ising_energy(torch.ones(3, 4), torch.zeros(2, 3, 3)), r"spins must have shape \(\.\.\., 3, 3\)"),
        (lambda: ising_energy(torch.ones(1, 1), torch.zeros(2, 1, 1), periodic=True), "periodic"),
        (lambda: spin_cross_entropy_loss(torch.zeros(2, 2), torch.ones(2, 2), reduction="avg"), "reduction"),
        (lambda: true_energy_loss(torch.zeros(2, 2), torch.zeros(2, 2, 2), temperature=0.0), "temperature"),
        (lambda: free_energy_loss(torch.zeros(2, 2), torch.zeros(3, 3)), r"field must have the shape of logits"),
        (
            lambda: spin_margin_loss(torch.zeros(2, 3), torch.ones(2, 2)),
            r"logits \(2, 3\) and target \(2, 2\) must have the same shape",
        ),
        (lambda: spin_entropy(torch.zeros(4)), r"logits must have shape"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="couplings must be a torch.Tensor"):
        ising_energy(torch.ones(2, 2), [[0.0]])


# ----------------------------------------------------------------------------------------------------------------
# input validation: shapes never broadcast, targets are +-1, values finite, positive site weights


def _batch(b=3, size=4, seed=200):
    J = random_couplings((b, 2, size, size), seed=seed)
    y = random_spins((b, size, size), seed=seed + 1)
    z = torch.randn(b, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 2))
    return z, y, J


@pytest.mark.parametrize(
    "name",
    ["cross_entropy", "margin", "local_field", "flip"],
)
def test_cnn_channel_dimension_is_refused_not_broadcast(name):
    z, y, J = _batch()
    fn = {
        "cross_entropy": lambda z, y: spin_cross_entropy_loss(z, y),
        "margin": lambda z, y: spin_margin_loss(z, y),
        "local_field": lambda z, y: local_field_energy_loss(z, y, J),
        "flip": lambda z, y: flip_invariant_loss(spin_cross_entropy_loss, z, y),
    }[name]
    with pytest.raises(ValueError, match=r"logits \(3, 1, 4, 4\).*nothing is broadcast.*logits\.squeeze\(-3\)") as err:
        fn(z.unsqueeze(1), y)
    assert "field" not in str(err.value)  # names the arguments the user passed
    with pytest.raises(ValueError, match=r"target\.squeeze\(-3\)"):
        fn(z, y.unsqueeze(1))


def test_true_energy_loss_refuses_a_channel_dimension_against_batched_couplings():
    z, _, J = _batch()
    with pytest.raises(ValueError, match=r"couplings \(3, 2, 4, 4\) and logits \(3, 1, 4, 4\).*squeeze\(-3\)"):
        true_energy_loss(z.unsqueeze(1), J)
    with pytest.raises(ValueError, match=r"couplings .* and logits .* batch dimensions \(3,\) and \(2,\)"):
        true_energy_loss(z[:2], J)
    # shared couplings (2, L, L) are accepted and equal the per-instance loss
    shared = true_energy_loss(z, J[0], reduction="none")
    torch.testing.assert_close(shared, true_energy_loss(z, J[0].expand(3, 2, 4, 4), reduction="none"))


def test_local_field_energy_loss_shape_errors_name_the_user_arguments():
    z, y, J = _batch()
    with pytest.raises(ValueError, match=r"logits must have shape \(\.\.\., 4, 4\) to match couplings") as err:
        local_field_energy_loss(z[..., :3], y, J)
    assert "field" not in str(err.value)
    with pytest.raises(ValueError, match=r"logits \(3, 4, 4\) and target \(4, 4\) must have the same shape"):
        local_field_energy_loss(z, y[0], J)
    with pytest.raises(ValueError, match=r"couplings must have shape \(\.\.\., 2, L, L\)"):
        local_field_energy_loss(z, y, J[:, :1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda y: (y + 1) / 2, r"target must hold spins \+1 / -1, got values in \{0, 1\}.*2 \* target - 1"),
        (lambda y: torch.where(y > 0, 0.5, -1.0).double(), r"target must hold spins \+1 / -1 only, got .*e\.g\. 0\.5"),
        (lambda y: torch.where(y > 0, float("nan"), -1.0).double(), r"target .* \(e\.g\. nan"),
        (lambda y: 2 * y, r"target must hold spins \+1 / -1 only"),
    ],
)
def test_targets_must_be_plus_minus_one(bad, match):
    z, y, J = _batch()
    for call in (
        lambda t: spin_cross_entropy_loss(z, t),
        lambda t: spin_margin_loss(z, t),
        lambda t: local_field_energy_loss(z, t, J),
        lambda t: local_field_weights(t, J),
        lambda t: local_field_energy(y, t, J),
    ):
        with pytest.raises(ValueError, match=match):
            call(bad(y))


def test_bool_targets_and_integer_logits_are_type_errors():
    z, y, J = _batch()
    with pytest.raises(TypeError, match=r"target must be a real .* dtype torch\.bool.*2 \* target\.float\(\) - 1"):
        spin_cross_entropy_loss(z, y > 0)
    with pytest.raises(TypeError, match=r"target must be a real"):
        local_field_energy_loss(z, y > 0, J)
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor, got dtype torch\.int64"):
        spin_cross_entropy_loss(z.long(), y)
    with pytest.raises(TypeError, match=r"couplings must be a real .* torch\.bool"):
        true_energy_loss(z, J > 0)


def test_integer_targets_are_accepted():
    z, y, J = _batch()
    as_int = y.to(torch.int8)
    torch.testing.assert_close(spin_cross_entropy_loss(z, as_int), spin_cross_entropy_loss(z, y))
    torch.testing.assert_close(local_field_energy_loss(z, as_int, J), local_field_energy_loss(z, y, J))


def test_nan_and_inf_are_refused():
    z, y, J = _batch()
    z_nan = z.clone()
    z_nan[1, 2, 3] = float("nan")
    for call in (
        lambda: spin_cross_entropy_loss(z_nan, y),
        lambda: local_field_energy_loss(z_nan, y, J),
        lambda: true_energy_loss(z_nan, J),
        lambda: spin_entropy(z_nan),
        lambda: free_energy_loss(z_nan, y),
    ):
        with pytest.raises(ValueError, match=r"logits must be finite, got 1 NaN / inf entries of 48"):
            call()
    J_inf = J.clone()
    J_inf[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="couplings must be finite"):
        local_field_energy_loss(z, y, J_inf)
    with pytest.raises(ValueError, match="couplings must be finite"):
        ising_energy(y, J_inf)
    with pytest.raises(ValueError, match="field must be finite"):
        free_energy_loss(z, torch.full_like(z, float("nan")))


def test_energy_functions_refuse_values_outside_the_unit_interval_and_mismatched_batches():
    _, y, J = _batch()
    with pytest.raises(
        ValueError, match=r"spins must hold spins \+1 / -1 or magnetisations in \[-1, 1\], got 48 of 48"
    ):
        ising_energy(3 * y, J)
    with pytest.raises(ValueError, match=r"pred must hold spins \+1 / -1 or magnetisations"):
        local_field_energy(torch.full_like(y, float("nan")), y, J)
    with pytest.raises(ValueError, match=r"leading \(batch\) dimensions .* spins \(3, 1\), couplings \(3,\)"):
        ising_energy(y.unsqueeze(1), J)
    with pytest.raises(ValueError, match=r"spins\.squeeze\(-3\)"):
        local_fields(y.unsqueeze(1), J)
    # shared tensors are fine: one configuration on many lattices, many configurations on one lattice
    assert ising_energy(y[0], J).shape == (3,) and ising_energy(y, J[0]).shape == (3,)


def test_h0_leaving_a_non_positive_weight_is_refused_with_an_h0_that_works():
    # the worst case of test_worst_case_data_needs_h0_above_4 with couplings outside [-1, 1]: y_i h_i = -6
    J = torch.zeros(2, 3, 3, dtype=torch.float64)
    J[0, 1, 0] = J[0, 1, 1] = J[1, 0, 1] = J[1, 1, 1] = 1.5
    y = torch.ones(3, 3, dtype=torch.float64)
    y[1, 1] = -1.0
    z = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"h0=5 leaves 1 of 9 site weights .* <= 0 \(smallest -1\)") as err:
        local_field_energy_loss(z, y, J)  # the default h0 = 5 is not enough here
    message = str(err.value)
    assert "any h0 > 6 will do" in message and "for any target on these couplings h0 > 6" in message
    assert float(local_field_energy_loss(z, y, J, h0=6.01)) > 0  # the suggested h0 works
    with pytest.raises(ValueError, match=r"h0=6 leaves"):  # w_i = 0 is not enough either
        local_field_energy_loss(z, y, J, h0=6.0)
    with pytest.raises(ValueError, match=r"h0=5 leaves"):
        flip_invariant_loss(local_field_energy_loss, z, y, J)
    with pytest.raises(ValueError, match="h0 must be a finite number"):
        local_field_energy_loss(z, y, J, h0=float("nan"))
    # ground states have non-negative flip costs: any h0 > 0 is accepted, and the weights themselves are not checked
    Jg = random_couplings((2, 3, 3), seed=210)
    g = brute_ground_state(Jg)
    local_field_energy_loss(torch.zeros(3, 3, dtype=torch.float64), g, Jg, h0=1e-3)
    assert float(local_field_weights(y, J, h0=0.0).min()) == pytest.approx(-6.0)
