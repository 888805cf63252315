"""The JODO-style joint diffusion model (issue 16, item 2): network symmetries, loss, sampling."""

from __future__ import annotations

import pytest
import torch

from energyloss.experiments.molecules.jodo import (
    TOY_MOLECULES,
    CosineSchedule,
    JodoConfig,
    JodoDiffusion,
    JodoGraphTransformer,
)

TINY = JodoConfig(hidden=32, edge_hidden=16, layers=2, heads=4, local_heads=1, rbf=8, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(mols=None, pad_to=None, dtype=torch.float32):
    mols = TOY_MOLECULES if mols is None else mols
    width = pad_to or max(len(z) for _, z, _ in mols)
    b = len(mols)
    pos = torch.zeros(b, width, 3, dtype=dtype)
    z = torch.zeros(b, width, dtype=torch.int64)
    bonds = torch.zeros(b, width, width, dtype=torch.int64)
    for k, (p, zz, bl) in enumerate(mols):
        n = len(zz)
        pos[k, :n] = torch.tensor(p, dtype=dtype)
        z[k, :n] = torch.tensor(zz)
        for i, j, o in bl:
            bonds[k, i, j] = bonds[k, j, i] = o
    mask = z > 0
    return pos, z, mask, bonds, torch.zeros_like(z)


def _random_inputs(model: JodoDiffusion, pad_to=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos, z, mask, bonds, fc = _batch(pad_to=pad_to, dtype=torch.float64)
    x, h, e = model.encode(pos, z, mask, bonds, fc)
    ex, eh, ee = model._noise(x, h, e, mask, g)
    t = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    a, s = model.schedule.marginal(t)
    zx = a[:, None, None] * x + s[:, None, None] * ex
    zh = a[:, None, None] * h + s[:, None, None] * eh
    ze = a[:, None, None, None] * e + s[:, None, None, None] * ee
    return zx, zh, ze, t, mask


def _rotation(seed=0, reflect=False):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = JodoDiffusion(TINY).double().eval()
    # make the coordinate updates non-trivial (their last layer starts at zero)
    for block in m.net.blocks:
        torch.nn.init.normal_(block.coord_mlp[-1].weight, std=0.3)
    return m


def test_schedule():
    sch = CosineSchedule()
    t = torch.linspace(0.0, sch.T, 50, dtype=torch.float64)
    a, s = sch.marginal(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a))
    assert float(a[0]) == pytest.approx(1.0) and float(a[-1]) < 0.02
    assert bool((a[1:] < a[:-1]).all())


@pytest.mark.parametrize("reflect", [False, True])
@torch.no_grad()
def test_e3_equivariance(model, reflect):
    zx, zh, ze, t, mask = _random_inputs(model)
    out = model.net(zx, zh, ze, t, mask)
    rot, shift = _rotation(1, reflect), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    m = mask[..., None].double()
    moved = (zx @ rot.T + shift) * m
    cond = (out[0] @ rot.T * m, out[1], out[2])
    out_r = model.net(moved, zh, ze, t, mask, cond=None)
    assert torch.allclose(out_r[0], out[0] @ rot.T * m, atol=1e-9)
    assert torch.allclose(out_r[1], out[1], atol=1e-9)
    assert torch.allclose(out_r[2], out[2], atol=1e-9)
    # with self-conditioning inputs rotated as well
    base = model.net(zx, zh, ze, t, mask, cond=out)
    rotated = model.net(moved, zh, ze, t, mask, cond=cond)
    assert torch.allclose(rotated[0], base[0] @ rot.T * m, atol=1e-9)
    assert torch.allclose(rotated[1], base[1], atol=1e-9) and torch.allclose(rotated[2], base[2], atol=1e-9)
    # the coordinate update is not the identity, and keeps the centroid
    assert float((out[0] - zx * m).abs().max()) > 1e-3
    assert torch.allclose(out[0].sum(1), torch.zeros(4, 3, dtype=torch.float64), atol=1e-9)


@torch.no_grad()
def test_permutation_equivariance(model):
    zx, zh, ze, t, mask = _random_inputs(model)
    k = 2  # ethanol: 9 atoms, the widest row is benzene (12); permute its real atoms only
    n = int(mask[k].sum())
    perm = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(3)), torch.arange(n, zx.shape[1])])
    out = model.net(zx, zh, ze, t, mask)
    pz = (zx.clone(), zh.clone(), ze.clone())
    pz[0][k], pz[1][k] = zx[k][perm], zh[k][perm]
    pz[2][k] = ze[k][perm][:, perm]
    out_p = model.net(*pz, t, mask)
    assert torch.allclose(out_p[0][k], out[0][k][perm], atol=1e-9)
    assert torch.allclose(out_p[1][k], out[1][k][perm], atol=1e-9)
    assert torch.allclose(out_p[2][k], out[2][k][perm][:, perm], atol=1e-9)
    for other in (0, 1, 3):
        assert torch.allclose(out_p[0][other], out[0][other], atol=1e-12)


@torch.no_grad()
def test_padding_independence(model):
    a = _random_inputs(model, pad_to=None, seed=5)
    b = _random_inputs(model, pad_to=16, seed=5)
    # the noise draws differ with the width: copy the narrow inputs into the wide layout
    zx, zh, ze, t, mask = b
    w = a[0].shape[1]
    zx = torch.zeros_like(zx)
    zh = torch.zeros_like(zh)
    ze = torch.randn_like(ze) * 5  # garbage on padded pairs must not matter
    zx[:, :w], zh[:, :w], ze[:, :w, :w] = a[0], a[1], a[2]
    zx[:, w:] = 7.0
    zh[:, w:] = -3.0
    out_a = model.net(*a)
    out_b = model.net(zx, zh, ze, t, mask)
    assert torch.allclose(out_b[0][:, :w], out_a[0], atol=1e-9)
    assert torch.allclose(out_b[1][:, :w], out_a[1], atol=1e-9)
    assert torch.allclose(out_b[2][:, :w, :w], out_a[2], atol=1e-9)
    assert float(out_b[0][:, w:].abs().max()) == 0.0 and float(out_b[2][:, w:].abs().max()) == 0.0
    # and within the narrow batch: padded slots of small molecules are zero, bond outputs are symmetric
    assert float(out_a[1][0, 3:].abs().max()) == 0.0
    assert torch.allclose(out_a[2], out_a[2].transpose(1, 2))


@pytest.mark.parametrize("spec", ["kabsch_mse", "mse", "energy:exp", "energy:inverse:k0=3.7", "mae"])
def test_loss_finite_and_gradients_flow(spec):
    torch.manual_seed(0)
    model = JodoDiffusion(TINY, position_loss=spec)
    pos, z, mask, bonds, fc = _batch()
    for self_cond in (False, True):
        model.zero_grad()
        out = model.loss(pos, z, mask, bonds, fc, self_condition=self_cond, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out["loss"])
        for key in ("positions", "types", "bonds", "weight"):
            assert out[key].shape == (4,) and bool(torch.isfinite(out[key]).all())
        out["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        # the positions reach the loss through the coordinate head
        assert float(model.net.blocks[-1].coord_mlp[-1].weight.grad.abs().sum()) > 0


def test_loss_is_deterministic_with_a_generator():
    torch.manual_seed(0)
    model = JodoDiffusion(TINY).eval()
    pos, z, mask, bonds, fc = _batch()
    a = model.loss(pos, z, mask, bonds, fc, generator=torch.Generator().manual_seed(4))["loss"]
    b = model.loss(pos, z, mask, bonds, fc, generator=torch.Generator().manual_seed(4))["loss"]
    assert torch.equal(a, b)


def test_loss_weighting_matches_jodo():
    """Per molecule: sqrt(alpha/sigma) * (1 * pos + 0.25 * types + 0.1 * bonds), then the batch mean."""
    torch.manual_seed(0)
    model = JodoDiffusion(TINY).eval()
    pos, z, mask, bonds, fc = _batch()
    t = torch.tensor([0.1, 0.3, 0.6, 0.95])
    out = model.loss(pos, z, mask, bonds, fc, t=t, self_condition=False, generator=torch.Generator().manual_seed(2))
    a, s = model.schedule.marginal(t)
    assert torch.allclose(out["weight"], torch.sqrt(a / s))
    expect = (out["weight"] * (out["positions"] + 0.25 * out["types"] + 0.1 * out["bonds"])).mean()
    assert torch.allclose(out["loss"], expect)


@pytest.mark.parametrize("spec", ["energy:exp", "energy:inverse", "kabsch_mse"])
def test_position_term_is_rotation_invariant(spec):
    model = JodoDiffusion(TINY, position_loss=spec).double()
    g = torch.Generator().manual_seed(0)
    pos, z, mask, bonds, fc = _batch(dtype=torch.float64)
    x, _, _ = model.encode(pos, z, mask, bonds, fc)
    m = mask[..., None].double()
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)) * m
    pred = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)) * m
    pred = pred - (pred.sum(1, keepdim=True) / m.sum(1, keepdim=True)) * m
    rot = _rotation(2)
    base = model.position_term(pred, x, noisy, mask)
    assert bool((base > 0).all())
    if spec.startswith("energy"):
        # the energy only sees distances: rotating the prediction (alone) changes nothing
        assert torch.allclose(model.position_term(pred @ rot.T, x, noisy, mask), base, atol=1e-10)
        assert torch.allclose(model.position_term(pred, x @ rot.T, noisy, mask), base, atol=1e-10)
        # JODO's scale: exp -> 24 exp(-d) / n over unordered pairs
        if spec == "energy:exp":
            d, dh = torch.cdist(x[0, :3], x[0, :3]), torch.cdist(pred[0, :3], pred[0, :3])
            ref = (24.0 * torch.exp(-d) * (d - dh) ** 2).triu(1).sum() / 3
            assert float(base[0]) == pytest.approx(float(ref), rel=1e-6)
    else:
        # the noise-aligned target: a rotated clean target is aligned back onto the same noisy sample
        assert torch.allclose(model.position_term(pred, x @ rot.T, noisy, mask), base, atol=1e-8)
        # rotating the whole frame (prediction and noisy sample) leaves the loss unchanged
        assert torch.allclose(model.position_term(pred @ rot.T, x, noisy @ rot.T, mask), base, atol=1e-8)


def test_sampling_shapes_masks_and_bonds():
    torch.manual_seed(0)
    cfg = JodoConfig(hidden=32, edge_hidden=16, layers=2, heads=4, local_heads=1, rbf=8, dropout=0.0, bond_orders=5)
    model = JodoDiffusion(cfg).eval()
    hist = {3: 5, 5: 2, 9: 1}
    out = model.sample(histogram=hist, num_samples=6, steps=6, generator=torch.Generator().manual_seed(0))
    n = out.mask.sum(-1)
    b, w = out.mask.shape
    assert b == 6 and w == int(n.max()) and set(n.tolist()) <= set(hist)
    assert out.positions.shape == (b, w, 3) and out.bonds.shape == (b, w, w)
    assert out.atomic_numbers.shape == out.formal_charges.shape == (b, w)
    assert bool(torch.isfinite(out.positions).all())
    assert torch.equal(out.bonds, out.bonds.transpose(1, 2))
    assert float(torch.diagonal(out.bonds, dim1=1, dim2=2).abs().sum()) == 0
    pair = out.mask[:, :, None] & out.mask[:, None, :]
    assert float(out.bonds[~pair].abs().sum()) == 0 and int(out.bonds.max()) <= 4
    assert bool((out.atomic_numbers[out.mask] > 0).all()) and float(out.atomic_numbers[~out.mask].abs().sum()) == 0
    assert set(out.atomic_numbers[out.mask].tolist()) <= set(cfg.elements)
    assert set(out.formal_charges[out.mask].tolist()) <= set(cfg.charges)
    assert float(out.positions[~out.mask].abs().sum()) == 0
    assert torch.allclose(out.positions.sum(1), torch.zeros(b, 3), atol=1e-4)
    mols, graphs = out.molecules()
    graphs.check_matches(mols)
    # explicit atom counts, no self-conditioning
    model2 = JodoDiffusion(TINY.__class__(**{**TINY.__dict__, "self_cond": False})).eval()
    out2 = model2.sample([4, 2], steps=3)
    assert out2.mask.sum(-1).tolist() == [4, 2]


def test_encode_rejects_unknown_elements_and_charges():
    model = JodoDiffusion(TINY)
    pos, z, mask, bonds, fc = _batch()
    with pytest.raises(ValueError, match="elements"):
        model.encode(pos, torch.where(mask, torch.full_like(z, 16), z), mask, bonds, fc)
    with pytest.raises(ValueError, match="charge"):
        model.encode(pos, z, mask, bonds, torch.where(mask, torch.full_like(fc, 2), fc))
    with pytest.raises(ValueError, match="bond orders"):
        model.encode(pos, z, mask, torch.full_like(bonds, 4), fc)


def test_network_parameter_count_of_the_paper_configuration():
    net = JodoGraphTransformer(JodoConfig())
    count = sum(p.numel() for p in net.parameters())
    assert 3e6 < count < 1e7


def test_ancestral_sampler_keeps_the_forward_marginals_with_an_oracle():
    """With a network that always returns the clean data, every z_t the sampler visits is alpha_t x + sigma_t eps."""
    model = JodoDiffusion(TINY).eval()
    copies = 48
    pos, z, mask, bonds, fc = _batch([TOY_MOLECULES[3]] * copies)  # benzene
    x, h, e = model.encode(pos, z, mask, bonds, fc)
    seen = []

    def oracle(zx, zh, ze, t, m, cond=None):
        seen.append((float(t[0]), zx.clone(), zh.clone(), ze.clone()))
        return x, h, e

    model.net.forward = oracle
    out = model.sample(mask.sum(-1), steps=12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.atomic_numbers, z) and torch.equal(out.bonds, bonds)
    assert torch.allclose(out.positions, x, atol=1e-5)
    pair = (mask[:, :, None] & mask[:, None, :] & ~torch.eye(12, dtype=torch.bool))[..., None].expand_as(e)
    for t, zx, zh, ze in seen[1:]:
        a, s = model.schedule.marginal(torch.tensor(t))
        for noisy, clean, where in ((zh, h, mask[..., None].expand_as(h)), (ze, e, pair)):
            eps = ((noisy - a * clean) / s)[where]
            assert abs(float(eps.mean())) < 0.1 and abs(float(eps.std()) - 1.0) < 0.1, t
        eps_x = (zx - a * x) / s  # zero-CoM noise: variance (n - 1) / n per coordinate
        assert abs(float(eps_x.pow(2).mean()) - 11 / 12) < 0.1, t
