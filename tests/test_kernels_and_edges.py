"""Fused CPU kernels equal the blocked reference; padding is inert; empty structures; float32 far from the origin;
value checks and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch

import energyloss as el
from energyloss import _numba_kernels
from energyloss.atomistic import _edge_energy_and_grad, _energy_and_grad
from energyloss.coefficients import (
    ConstantCoefficients,
    ExponentialCoefficients,
    InverseCoefficients,
    InverseSquareCoefficients,
    exp_cutoff,
)
from energyloss.geometry import set_value_checks

from conftest import dense_pair_reference

needs_numba = pytest.mark.skipif(not _numba_kernels.available(), reason="needs numba")

SCHEMES = [
    ConstantCoefficients(k0=2.0),
    InverseCoefficients(k0=5.0),
    InverseSquareCoefficients(k0=16.0),
    ExponentialCoefficients(k0=42.0, length_scale=0.7),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _inputs(bsz, n, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(bsz, n, dim, generator=g, dtype=dtype)
    t = torch.randn(bsz, n, dim, generator=g, dtype=dtype)
    p[0, 3] = p[0, 4]  # coincident predicted points: zero subgradient
    t[0, 5] = t[0, 6]  # coincident target points: the inverse schemes' clamp
    mask = torch.rand(bsz, n, generator=g) < 0.8
    mask[:, 0] = True
    return p, t, mask


@needs_numba
@pytest.mark.parametrize("coeff", SCHEMES, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 37), (20, 29), (1, 300)])
def test_fused_pair_kernel_equals_thedense_pair_reference(coeff, dim, shape):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        p, t, mask = _inputs(*shape, dim, dtype)
        for m in (None, mask):
            e, g = _numba_kernels.pair_energy_and_grad(p, t, m, coeff, True)
            e_ref, g_ref = dense_pair_reference(p, t, m, coeff)  # float64 on the same (float32-rounded) inputs
            e_blk, g_blk = _energy_and_grad(p.double(), t.double(), m, coeff, shape[1], True)
            assert _rel(e_blk, e_ref) < 1e-9 and _rel(g_blk, g_ref) < 1e-9  # the blocked kernel agrees too
            assert e.dtype == dtype and g.dtype == dtype and g.shape == p.shape
            assert _rel(e.double(), e_ref) < tol and _rel(g.double(), g_ref) < tol
            e_only, none = _numba_kernels.pair_energy_and_grad(p, t, m, coeff, False)
            assert none is None and torch.equal(e_only, e)
            if m is not None:
                assert torch.all(g[~m] == 0)


@needs_numba
@pytest.mark.parametrize("coeff", SCHEMES, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("n_edges", [50, 40_000])  # one task / split into per-thread tasks
def test_fused_edge_kernel_equalsdense_pair_reference(coeff, n_edges):
    g = torch.Generator().manual_seed(1)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        rows = 500
        p = torch.randn(rows, 3, generator=g, dtype=dtype)
        t = torch.randn(rows, 3, generator=g, dtype=dtype)
        src = torch.randint(0, rows, (n_edges,), generator=g)
        dst = (src + torch.randint(1, rows, (n_edges,), generator=g)) % rows
        owner = src // 100
        valid = torch.rand(n_edges, generator=g) < 0.9
        e, grad = _numba_kernels.edge_energy_and_grad(p, t, src, dst, owner, 5, valid, coeff, True)
        e_ref, g_ref = _edge_energy_and_grad(p.double(), t.double(), src, dst, owner, 5, valid, coeff, True)
        assert _rel(e.double(), e_ref) < tol and _rel(grad.double(), g_ref) < tol


@needs_numba
def test_loss_takes_the_fused_path_and_matches_the_reference_with_gradients():
    p, t, mask = _inputs(6, 40, 3, torch.float64)
    for kwargs in ({}, {"mask": mask}, {"edges": el.random_regular_graph(40, 6, generator=torch.Generator())}):
        for coefficients in ("constant", "inverse", "inverse_square", "exp"):
            a = p.clone().requires_grad_()
            b = p.clone().requires_grad_()
            fused = el.pair_energy_loss(a, t, coefficients=coefficients, **kwargs)
            scheme = el.resolve_coefficients(coefficients)
            if "edges" in kwargs:  # the PyTorch edge kernel, via a user callable with the same values
                ref = el.pair_energy_loss(b, t, coefficients=lambda d, s=scheme: s(d), **kwargs)
                ref.backward()
                ref_grad = b.grad
            else:  # the autograd reference (the blocked kernel is checked against it above)
                energies, grads = dense_pair_reference(p, t, kwargs.get("mask"), scheme)
                ref, ref_grad = energies.mean(), grads / p.shape[0]
            fused.backward()
            assert torch.allclose(fused, ref, rtol=1e-12, atol=0)
            assert torch.allclose(a.grad, ref_grad, rtol=1e-10, atol=1e-14 * float(ref_grad.abs().max()))


@needs_numba
def test_fused_kernel_is_deterministic_and_supports_only_what_it_handles():
    p, t, mask = _inputs(1, 2000, 3, torch.float32)
    first = _numba_kernels.pair_energy_and_grad(p, t, None, SCHEMES[3], True)
    second = _numba_kernels.pair_energy_and_grad(p, t, None, SCHEMES[3], True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not _numba_kernels.supports(p, lambda d: d)  # user callables keep the blocked path
    assert not _numba_kernels.supports(torch.zeros(1, 3, 4), SCHEMES[0])  # D = 4
    assert not _numba_kernels.supports(p.half(), SCHEMES[0])


@needs_numba
def test_inline_exp_is_accurate():
    import numpy as np

    from energyloss._numba_impl import exp_negative

    for dtype, tol, slope in ((np.float32, 4e-7, 0.0), (np.float64, 4e-16, 4e-17)):
        cut = exp_cutoff(torch.float32 if dtype == np.float32 else torch.float64)
        x = np.linspace(0.0, cut, 200_001).astype(dtype)
        exact = np.exp(-x.astype(np.longdouble))
        assert np.all(np.abs(exp_negative(x, cut) - exact) / exact < tol + slope * x)
        assert np.all(exp_negative(np.array([cut * 1.01, 1e30], dtype=dtype), cut) == 0)


def test_exponential_springs_vanish_past_the_cutoff_without_denormals():
    k = ExponentialCoefficients(k0=1.0, length_scale=2.0)
    for dtype in (torch.float32, torch.float64):
        cut = exp_cutoff(dtype)
        d = torch.tensor([0.0, 2 * cut * 0.999, 2 * cut * 1.001, 1e6], dtype=dtype)
        out = k(d)
        assert out[1] > 0 and out[1] >= torch.finfo(dtype).tiny ** 0.5 * 0.99
        assert out[2] == 0 and out[3] == 0
        assert torch.equal(out[:1], torch.ones(1, dtype=dtype))


# ----------------------------------------------------------------------------------------------------------------
# inert padding, empty structures, N = 0


LOSSES = {
    "energy": lambda p, t, **kw: el.pair_energy_loss(p, t, coefficients="exp", **kw),
    "energy_blocked": lambda p, t, **kw: el.pair_energy_loss(p, t, coefficients="exp", chunk_size="auto", **kw),
    "energy_callable": lambda p, t, **kw: el.pair_energy_loss(p, t, coefficients=lambda d: 1.0 / (1.0 + d), **kw),
    "energy_edges": lambda p, t, **kw: el.pair_energy_loss(
        p, t, edges=torch.tensor([[0, 1, 2, 0], [1, 2, 3, 3]]), **kw
    ),
    "mse": el.mse_loss,
    "mae": el.mae_loss,
    "kabsch_mse": el.kabsch_mse_loss,
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("junk", [float("nan"), float("inf"), 1e20])
def test_padding_is_inert(name, junk):
    fn = LOSSES[name]
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    x = y + 0.1 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]).bool()
    clean = x.clone().requires_grad_()
    ref = fn(clean, y, mask=mask)
    ref.backward()
    dirty_x, dirty_y = x.clone(), y.clone()
    dirty_x[~mask] = junk
    dirty_y[~mask] = junk
    dirty = dirty_x.requires_grad_()
    value = fn(dirty, dirty_y, mask=mask)
    value.backward()
    assert torch.isfinite(value) and torch.allclose(value, ref, rtol=1e-12, atol=1e-15)
    assert torch.all(dirty.grad[~mask] == 0)
    assert torch.allclose(dirty.grad, clean.grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_structures_score_zero_and_leave_the_mean(name):
    fn = LOSSES[name]
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    x = y + 0.1 * torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
    per = fn(x, y, mask=mask, reduction="none")
    assert per[1] == 0
    mean = fn(x, y, mask=mask)
    assert torch.allclose(mean, (per[0] + per[2]) / 2)
    # a gap in a ragged batch vector is an empty structure too
    if name != "energy_edges":
        rows, batch = el.to_ragged(x, mask)
        trows, _ = el.to_ragged(y, mask)
        batch = torch.where(batch == 2, 2, batch)  # structures 0 and 2, none with index 1
        assert torch.allclose(fn(rows, trows, batch=batch), mean)


@pytest.mark.parametrize("name", sorted(n for n in LOSSES if n != "energy_edges"))
def test_zero_atoms_give_zero(name):
    fn = LOSSES[name]
    for shape in ((0, 3), (2, 0, 3), (0, 4, 3)):
        x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        value = fn(x, torch.zeros(shape, dtype=torch.float64))
        assert value == 0
        value.backward()
        assert x.grad is None or torch.all(x.grad == 0)


# ----------------------------------------------------------------------------------------------------------------
# layouts


def test_to_dense_batch_rejects_mismatched_lengths_and_takes_hints():
    x = torch.arange(10.0).view(5, 2)
    with pytest.raises(ValueError, match="batch must have shape"):
        el.to_dense_batch(x, torch.tensor([0, 0, 1, 1]))
    batch = torch.tensor([1, 0, 1, 1, 0])
    dense, mask = el.to_dense_batch(x, batch)
    dense_h, mask_h = el.to_dense_batch(x, batch, num_structures=3, max_num_nodes=4)
    assert torch.equal(dense_h[:2, :3], dense) and torch.equal(mask_h[:2, :3], mask)
    assert not mask_h[2].any() and not mask_h[:, 3].any()
    with pytest.raises(ValueError, match="max_num_nodes=2"):
        el.to_dense_batch(x, batch, num_structures=2, max_num_nodes=2)


def test_ragged_hints_give_the_same_losses():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 3, generator=g), torch.randn(9, 3, generator=g)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    for fn in (el.pair_energy_loss, el.mse_loss, el.mae_loss, el.kabsch_mse_loss):
        assert torch.allclose(fn(x, y, batch=batch), fn(x, y, batch=batch, batch_size=3, max_num_nodes=4))


def test_undirected_edge_index_counts_each_pair_once():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    i, j = torch.triu_indices(6, 6, offset=1)
    one_way = torch.stack([i, j])
    two_way = torch.cat([one_way, one_way.flip(0)], 1)  # PyG's undirected edge_index
    complete = el.pair_energy_loss(x, y, coefficients="exp", normalize="pairs")
    assert torch.allclose(el.pair_energy_loss(x, y, edges=one_way, coefficients="exp", normalize="pairs"), complete)
    doubled = el.pair_energy_loss(x, y, edges=two_way, coefficients="exp")
    assert torch.allclose(doubled, 2 * el.pair_energy_loss(x, y, coefficients="exp"))
    fixed = el.pair_energy_loss(x, y, edges=two_way, coefficients="exp", normalize="pairs", undirected_edges=True)
    assert torch.allclose(fixed, complete)
    with pytest.raises(ValueError, match="undirected_edges=True needs"):
        el.pair_energy_loss(x, y, undirected_edges=True)


# ----------------------------------------------------------------------------------------------------------------
# float32 far from the origin


@pytest.mark.parametrize("name", ["energy", "energy_blocked", "energy_edges", "mse", "mae", "kabsch_mse"])
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
def test_float32_accuracy_far_from_the_origin(name, offset):
    fn = LOSSES[name]
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    y = (5 * torch.randn(2, 6, 3, generator=g, dtype=torch.float64) + offset).float()
    x = ((y.double() - offset) @ q.T + 0.3 * torch.randn(2, 6, 3, generator=g, dtype=torch.float64) + offset).float()
    exact = fn(x.double(), y.double())  # the same float32 inputs, evaluated in float64
    assert abs(float(fn(x, y)) - float(exact)) <= 1e-4 * abs(float(exact))


# ----------------------------------------------------------------------------------------------------------------
# value checks and torch.compile


def test_value_checks_cpu_only_switch():
    y = torch.randn(4, 3)
    y[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        el.pair_energy_loss(y.clone(), y)
    with set_value_checks("never"):
        el.pair_energy_loss(y.clone(), y)  # not checked: no error
    with pytest.raises(ValueError, match="mode must be one of"):
        set_value_checks("sometimes")


COMPILED = {
    "energy": lambda p, t, m: el.pair_energy_loss(p, t, coefficients="exp"),
    "energy_masked": lambda p, t, m: el.pair_energy_loss(p, t, mask=m, coefficients="exp", normalize="atoms"),
    "energy_blocked": lambda p, t, m: el.pair_energy_loss(p, t, mask=m, chunk_size="auto"),
    "energy_edges": lambda p, t, m: el.pair_energy_loss(p, t, mask=m, edges=torch.tensor([[0, 1, 2], [1, 2, 3]])),
    "mse": lambda p, t, m: el.mse_loss(p, t, mask=m),
    "mae": lambda p, t, m: el.mae_loss(p, t, mask=m),
    "kabsch_mse": lambda p, t, m: el.kabsch_mse_loss(p, t, mask=m),
}


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiles_with_fullgraph(name):
    torch._dynamo.reset()
    fn = COMPILED[name]
    g = torch.Generator().manual_seed(7)
    t = torch.randn(3, 6, 3, generator=g)
    p = (t + 0.1 * torch.randn(3, 6, 3, generator=g)).requires_grad_()
    m = torch.ones(3, 6, dtype=torch.bool)
    m[1, 4:] = False
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    value = compiled(p, t, m)
    value.backward()
    grad, p.grad = p.grad, None
    eager = fn(p, t, m)
    eager.backward()
    assert torch.allclose(value, eager, rtol=1e-5) and torch.allclose(grad, p.grad, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# cutoff


def _box(n, dim, dtype, seed, density=0.1):
    g = torch.Generator().manual_seed(seed)
    side = (n / density) ** (1.0 / dim)
    t = torch.rand(1, n, dim, generator=g, dtype=dtype) * side
    return t + 0.2 * torch.randn(1, n, dim, generator=g, dtype=dtype), t


@pytest.mark.parametrize("n, dim", [(300, 3), (2600, 3), (2600, 2)])  # dense kernel / cell list / cell list in 2-D
def test_cutoff_equals_truncated_springs_on_every_path(n, dim):
    p, t = _box(n, dim, torch.float64, seed=8)
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[0, ::7] = False
    cutoff = 4.0
    exp = ExponentialCoefficients(k0=3.0, length_scale=0.8)

    def truncated(d):
        return torch.where(d <= cutoff, exp(d), 0.0)

    for m in (None, mask):
        a, b, c = (p.clone().requires_grad_() for _ in range(3))
        fused = el.pair_energy_loss(a, t, mask=m, coefficients=exp, cutoff=cutoff, normalize="atoms")
        blocked = el.pair_energy_loss(b, t, mask=m, coefficients=exp, cutoff=cutoff, chunk_size="auto")
        ref = el.pair_energy_loss(c, t, mask=m, coefficients=truncated, chunk_size="auto")
        (fused * (mask.sum() if m is not None else n)).backward()
        blocked.backward()
        ref.backward()
        n_real = n if m is None else int(mask.sum())
        assert torch.allclose(fused * n_real, ref, rtol=1e-11) and torch.allclose(blocked, ref, rtol=1e-12)
        assert torch.allclose(a.grad, c.grad, rtol=1e-9, atol=1e-13)
        assert torch.allclose(b.grad, c.grad, rtol=1e-9, atol=1e-13)


def test_cutoff_truncation_error_is_within_its_bound():
    p, t = _box(400, 3, torch.float64, seed=9, density=0.05)
    exp = ExponentialCoefficients(k0=2.0, length_scale=1.0)
    full = el.pair_energy_loss(p, t, coefficients=exp)
    for cutoff in (3.0, 6.0, 10.0):
        cut = el.pair_energy_loss(p, t, coefficients=exp, cutoff=cutoff)
        d_t = torch.cdist(t[0], t[0])
        r2 = (d_t - torch.cdist(p[0], p[0])).square()
        dropped = torch.triu(d_t > cutoff, diagonal=1)
        bound = exp(torch.tensor(cutoff, dtype=torch.float64)) * r2[dropped].sum()
        assert 0 <= full - cut <= bound
    with pytest.raises(ValueError, match="cutoff must be None or a positive"):
        el.pair_energy_loss(p, t, cutoff=0.0)
    with pytest.raises(ValueError, match="normalize='pairs'"):
        el.pair_energy_loss(p, t, cutoff=2.0, normalize="pairs")


def test_cutoff_on_edge_lists():
    p, t = _box(200, 3, torch.float64, seed=10)
    edges = el.random_regular_graph(200, 6, generator=torch.Generator().manual_seed(0))
    exp = ExponentialCoefficients()
    fused = el.pair_energy_loss(p, t, edges=edges, coefficients=exp, cutoff=3.0)
    ref = el.pair_energy_loss(p, t, edges=edges, coefficients=lambda d: torch.where(d <= 3.0, exp(d), 0.0))
    assert torch.allclose(fused, ref, rtol=1e-12)


@needs_numba
def test_the_fused_kernels_leave_torchs_thread_count_alone():
    """numba's OpenMP layer shares torch's libgomp; starting its pool must not undo torch.set_num_threads(1)."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1); import energyloss as el; "
        "x = torch.randn(64, 29, 3, requires_grad=True); y = torch.randn(64, 29, 3); "  # the parallel path
        "el.pair_energy_loss(x, y, coefficients='exp').backward(); "
        "e = torch.tensor([[0, 1] * 9000, [1, 2] * 9000]); z = torch.randn(3, 3, requires_grad=True); "
        "el.pair_energy_loss(z, torch.randn(3, 3), edges=e).backward(); "  # the split edge path
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
