"""Random regular graphs, exact rigidity tests, graph pools, symmetrisation (Eq. 57) and the sparse energy loss."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from energyloss.atomistic import pair_energy_loss
from energyloss.rigidity import (
    RigidGraphPool,
    complete_graph,
    distance_automorphisms,
    is_globally_rigid,
    is_rigid,
    orbit_random_graph,
    random_regular_graph,
    rigidity_matrix,
    sparse_pair_energy_loss,
    symmetrize_edges,
)

from conftest import random_rotation


def E(pairs) -> torch.Tensor:
    return torch.tensor(list(pairs), dtype=torch.long).reshape(-1, 2).T.contiguous()


def cycle(n):
    return [(i, (i + 1) % n) for i in range(n)]


def wheel(rim):
    """Hub ``rim`` joined to a cycle on ``0 .. rim-1`` (``rim + 1`` vertices)."""
    return cycle(rim) + [(i, rim) for i in range(rim)]


def edge_set(edges: torch.Tensor) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in edges.T.tolist()}


def degrees(edges: torch.Tensor, n: int) -> list[int]:
    return torch.bincount(edges.flatten(), minlength=n).tolist()


# ----------------------------------------------------------------------------------------------------------------
# random regular graphs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(10, 4), (30, 6), (17, 4), (50, 3), (8, 7), (100, 2)])
def test_random_regular_graph_is_simple_and_regular(n, k, gen):
    edges = random_regular_graph(n, k, generator=gen)
    assert edges.dtype == torch.long and edges.shape == (2, n * k // 2)
    assert bool((edges[0] < edges[1]).all())  # no loops, canonical orientation
    assert len(edge_set(edges)) == edges.shape[1]  # no multi-edges
    assert degrees(edges, n) == [k] * n


def test_random_regular_graph_special_cases(gen):
    assert torch.equal(random_regular_graph(5, 4, generator=gen), complete_graph(5))
    assert torch.equal(random_regular_graph(5, 9, generator=gen), complete_graph(5))
    assert random_regular_graph(6, 0, generator=gen).shape == (2, 0)
    assert random_regular_graph(1, 3, generator=gen).shape == (2, 0)
    assert complete_graph(4).shape == (2, 6)


def test_random_regular_graph_odd_degree_sum(gen):
    """n * k odd: exactly one vertex has degree k + 1, all others k."""
    for n, k in [(9, 3), (11, 5), (31, 3)]:
        edges = random_regular_graph(n, k, generator=gen)
        deg = sorted(degrees(edges, n))
        assert deg == [k] * (n - 1) + [k + 1]
        assert edges.shape[1] == (n * k + 1) // 2
        assert len(edge_set(edges)) == edges.shape[1]


def test_random_regular_graph_reproducible_and_varied():
    a = random_regular_graph(20, 4, generator=torch.Generator().manual_seed(7))
    b = random_regular_graph(20, 4, generator=torch.Generator().manual_seed(7))
    c = random_regular_graph(20, 4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_regular_graph_is_roughly_uniform_over_edges():
    """Every pair is about equally likely to be an edge (probability k / (n - 1))."""
    gen = torch.Generator().manual_seed(0)
    n, k, draws = 8, 3, 400
    counts = torch.zeros(n, n)
    for _ in range(draws):
        e = random_regular_graph(n, k, generator=gen)
        counts[e[0], e[1]] += 1
    freq = counts[torch.triu_indices(n, n, 1).unbind()] / draws
    assert float((freq - k / (n - 1)).abs().max()) < 0.12


@pytest.mark.parametrize(("n", "k", "err"), [(0, 2, ValueError), (5, -1, ValueError), (5.0, 2, TypeError)])
def test_random_regular_graph_bad_input(n, k, err):
    with pytest.raises(err, match="n|k"):
        random_regular_graph(n, k)


# ----------------------------------------------------------------------------------------------------------------
# rigidity: known cases
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_complete_graphs_are_globally_rigid(d, gen):
    for n in range(1, 9):
        assert is_rigid(complete_graph(n), n, d, generator=gen)
        assert is_globally_rigid(complete_graph(n), n, d, generator=gen)


def test_small_n_needs_the_complete_graph(gen):
    """n <= d + 1: only the complete graph is (globally) rigid."""
    path = E([(0, 1), (1, 2)])
    assert not is_rigid(path, 3, 2, generator=gen) and not is_globally_rigid(path, 3, 2, generator=gen)
    assert not is_globally_rigid(E([(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)]), 4, 3, generator=gen)
    assert not is_globally_rigid(torch.zeros(2, 0, dtype=torch.long), 2, 2, generator=gen)


@pytest.mark.parametrize("n", [4, 5, 7, 10])
def test_cycles_are_flexible_in_2d_and_globally_rigid_in_1d(n, gen):
    c = E(cycle(n))
    assert not is_rigid(c, n, 2, generator=gen)
    assert not is_globally_rigid(c, n, 2, generator=gen)
    assert is_globally_rigid(c, n, 1, generator=gen)  # 2-connected graphs are globally rigid on the line


def test_triangle_is_globally_rigid_in_2d(gen):
    assert is_globally_rigid(E(cycle(3)), 3, 2, generator=gen)


@pytest.mark.parametrize("rim", [3, 4, 5, 8, 12])
def test_wheels_are_globally_rigid_in_2d(rim, gen):
    w = E(wheel(rim))
    assert is_rigid(w, rim + 1, 2, generator=gen)
    assert is_globally_rigid(w, rim + 1, 2, generator=gen)


def test_wheel_is_not_rigid_in_3d(gen):
    assert not is_rigid(E(wheel(6)), 7, 3, generator=gen)


def test_two_k4_sharing_two_vertices_rigid_not_globally_rigid(gen):
    pairs = set(itertools.combinations([0, 1, 2, 3], 2)) | set(itertools.combinations([0, 1, 4, 5], 2))
    g = E(sorted(pairs))
    assert is_rigid(g, 6, 2, generator=gen)
    assert not is_globally_rigid(g, 6, 2, generator=gen)


def test_triangular_prism_rigid_not_globally_rigid(gen):
    prism = E([(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (0, 3), (1, 4), (2, 5)])
    assert is_rigid(prism, 6, 2, generator=gen)
    assert not is_globally_rigid(prism, 6, 2, generator=gen)


def test_complete_bipartite_graphs(gen):
    """K33 is isostatic in 2-D; K44 is globally rigid in 2-D; K55 is redundantly rigid and 5-connected in 3-D yet
    not globally rigid (Connelly's counterexample to Hendrickson's sufficiency conjecture)."""

    def kmn(m, n):
        return E([(i, m + j) for i in range(m) for j in range(n)])

    assert is_rigid(kmn(3, 3), 6, 2, generator=gen) and not is_globally_rigid(kmn(3, 3), 6, 2, generator=gen)
    assert is_globally_rigid(kmn(4, 4), 8, 2, generator=gen)
    assert is_rigid(kmn(5, 5), 10, 3, generator=gen) and not is_globally_rigid(kmn(5, 5), 10, 3, generator=gen)


@pytest.mark.parametrize("d", [2, 3])
def test_complete_minus_an_edge_on_d_plus_2_vertices(d, gen):
    n = d + 2
    g = complete_graph(n)[:, 1:]  # drop edge (0, 1): isostatic, no stress
    assert is_rigid(g, n, d, generator=gen)
    assert not is_globally_rigid(g, n, d, generator=gen)


def test_disconnected_and_isolated_vertices(gen):
    two_triangles = E([(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)])
    assert not is_rigid(two_triangles, 6, 2, generator=gen)
    assert not is_globally_rigid(complete_graph(5), 6, 2, generator=gen)  # vertex 5 isolated


def test_edge_orientation_and_duplicates_do_not_matter(gen):
    w = E(wheel(5))
    messy = torch.cat([w, w.flip(0)], dim=1)
    assert is_globally_rigid(messy, 6, 2, generator=gen)


def float_reference(edges, n, d, rng):
    """Textbook float64 version (SVD ranks with a relative threshold) of the rigidity and stress tests."""
    x = rng.standard_normal((n, d))
    r = rigidity_matrix(edges, torch.from_numpy(x)).numpy()
    u, s, _ = np.linalg.svd(r)
    rank = int((s > s.max() * max(r.shape) * 1e-12).sum())
    target = n * (n - 1) // 2 if n <= d + 1 else d * n - d * (d + 1) // 2
    if rank < target:
        return False, False
    if n <= d + 1:
        return True, edges.shape[1] == n * (n - 1) // 2
    stresses = u[:, rank:]
    if stresses.shape[1] == 0:
        return True, False
    w = stresses @ rng.standard_normal(stresses.shape[1])
    omega = np.zeros((n, n))
    i, j = edges.numpy()
    omega[i, j] = omega[j, i] = -w
    np.add.at(omega, (i, i), w)
    np.add.at(omega, (j, j), w)
    so = np.linalg.svd(omega, compute_uv=False)
    return True, int((so > so.max() * n * 1e-10).sum()) == n - d - 1


@pytest.mark.parametrize(("n", "k", "d"), [(6, 3, 2), (7, 3, 2), (8, 4, 2), (10, 5, 3), (9, 6, 3), (12, 4, 3)])
def test_exact_tests_agree_with_float_reference(n, k, d, gen):
    rng = np.random.default_rng(0)
    for _ in range(15):
        edges = random_regular_graph(n, k, generator=gen)
        exact = (is_rigid(edges, n, d, generator=gen), is_globally_rigid(edges, n, d, generator=gen))
        assert exact == float_reference(edges, n, d, rng)


def test_rigidity_matrix_is_half_jacobian_of_squared_lengths(gen):
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    edges = E([(0, 1), (1, 2), (2, 4), (0, 3)])

    def half_sq(z):
        diff = z[edges[0]] - z[edges[1]]
        return 0.5 * (diff * diff).sum(-1)

    jac = torch.autograd.functional.jacobian(half_sq, x).reshape(4, 15)
    assert torch.allclose(rigidity_matrix(edges, x), jac)
    # trivial motions are in the kernel: a translation and an infinitesimal rotation
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for v in (torch.ones(5, 3, dtype=torch.float64), x @ rot.T):
        assert torch.allclose(rigidity_matrix(edges, x) @ v.reshape(-1), torch.zeros(4, dtype=torch.float64))


def test_rigidity_bad_input():
    with pytest.raises(ValueError, match="self-loop"):
        is_rigid(E([(0, 0), (0, 1)]), 3, 2)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        is_globally_rigid(E([(0, 5)]), 3, 2)
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        is_rigid(torch.zeros(3, 4, dtype=torch.long), 5, 2)
    with pytest.raises(TypeError, match="integer"):
        is_rigid(torch.zeros(2, 1), 5, 2)
    with pytest.raises(ValueError, match="d must be"):
        is_rigid(complete_graph(3), 3, 0)
    with pytest.raises(ValueError, match="trials"):
        is_rigid(complete_graph(3), 3, 2, trials=0)


# ----------------------------------------------------------------------------------------------------------------
# pools
# ----------------------------------------------------------------------------------------------------------------


def test_pool_graphs_are_regular_and_globally_rigid():
    pool = RigidGraphPool(2, size=6, seed=3)
    graphs = pool.graphs(12)
    assert graphs.shape == (6, 2, 24) and pool.k == 4
    check = torch.Generator().manual_seed(99)
    for g in graphs:
        assert degrees(g, 12) == [4] * 12
        assert is_globally_rigid(g, 12, 2, generator=check)


def test_pool_reproducible_from_seed_and_order_independent():
    a, b = RigidGraphPool(3, size=5, seed=11), RigidGraphPool(3, size=5, seed=11)
    a_first = a.graphs(9)
    a.graphs(14)
    b.graphs(14)  # built in the other order
    assert torch.equal(a_first, b.graphs(9))
    assert torch.equal(a.graphs(14), b.graphs(14))
    assert not torch.equal(RigidGraphPool(3, size=5, seed=12).graphs(14), a.graphs(14))


def test_pool_small_sizes_are_complete():
    pool = RigidGraphPool(3, size=4)
    for n in range(1, 8):  # k = 6 >= n - 1
        assert all(torch.equal(g, complete_graph(n)) for g in pool.graphs(n))
    assert repr(pool).startswith("RigidGraphPool(d=3, k=6")


def test_pool_gives_up_when_k_is_too_small():
    with pytest.raises(RuntimeError, match="not globally rigid"):
        RigidGraphPool(2, k=2, size=3, max_rejections=5).graphs(10)  # cycles are never rigid in 2-D


def test_pool_batch_edges_respect_mask_and_padding():
    pool = RigidGraphPool(2, size=4, seed=0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 0, 1, 1, 1, 1], [1] * 9, [0] * 9], dtype=torch.bool)
    edges = pool.batch_edges(mask, generator=torch.Generator().manual_seed(0))
    assert edges.shape == (4, 2, 18)  # 9 atoms * 4 / 2
    for b in range(4):
        real = mask[b]
        n_b = int(real.sum())
        e = edges[b]
        both_real = real[e[0]] & real[e[1]]
        assert int(both_real.sum()) == (0 if n_b == 0 else (n_b * 4 // 2 if n_b > 5 else n_b * (n_b - 1) // 2))
        assert bool((e[0] != e[1]).all())  # padding pairs are not self-loops
        assert bool((~real[e[0, ~both_real]] | ~real[e[1, ~both_real]]).all())  # padding touches a padded atom
        if n_b:
            idx = torch.nonzero(real).flatten()
            relabel = {int(v): i for i, v in enumerate(idx)}
            local = torch.tensor([[relabel[int(v)] for v in row] for row in e[:, both_real].tolist()])
            assert is_globally_rigid(local, n_b, 2)


def test_pool_ragged_edges_stay_inside_structures():
    pool = RigidGraphPool(3, size=3, seed=1)
    batch = torch.tensor([1, 0, 1, 0, 0, 2, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    edges = pool.ragged_edges(batch, generator=torch.Generator().manual_seed(0))
    assert bool((batch[edges[0]] == batch[edges[1]]).all())
    counts = torch.bincount(batch[edges[0]], minlength=3).tolist()
    assert counts == [21, 30, 0]  # 7 atoms: C(7, 2) = 21 (k = 6 >= 6); 10 atoms: 30; 1 atom: none


# ----------------------------------------------------------------------------------------------------------------
# automorphisms and symmetrisation
# ----------------------------------------------------------------------------------------------------------------


def benzene(dtype=torch.float64):
    ring = [(1.39 * math.cos(t * math.pi / 3), 1.39 * math.sin(t * math.pi / 3), 0.0) for t in range(6)]
    hyd = [(2.48 * math.cos(t * math.pi / 3), 2.48 * math.sin(t * math.pi / 3), 0.0) for t in range(6)]
    return torch.tensor(ring + hyd, dtype=dtype), torch.tensor([6] * 6 + [1] * 6)


def methane(dtype=torch.float64):
    h = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=dtype) * 0.629
    return torch.cat([torch.zeros(1, 3, dtype=dtype), h]), torch.tensor([6, 1, 1, 1, 1])


def group_elements(gens: torch.Tensor, n: int) -> set[tuple[int, ...]]:
    identity = tuple(range(n))
    seen, frontier = {identity}, [identity]
    while frontier:
        p = frontier.pop()
        for g in gens.tolist():
            q = tuple(g[i] for i in p)
            if q not in seen:
                seen.add(q)
                frontier.append(q)
    return seen


def brute_force_automorphisms(x, types, tol=1e-6):
    n = x.shape[0]
    dist = torch.cdist(x, x)
    out = set()
    for perm in itertools.permutations(range(n)):
        p = list(perm)
        if torch.equal(types[p], types) and bool(((dist[p][:, p] - dist).abs() <= tol).all()):
            out.add(tuple(p))
    return out


def assert_invariant_edges(edges, elements):
    s = edge_set(edges)
    for p in elements:
        assert {(min(p[a], p[b]), max(p[a], p[b])) for a, b in s} == s


def test_automorphisms_of_methane_match_brute_force():
    x, t = methane()
    gens = distance_automorphisms(x, atom_types=t)
    elements = group_elements(gens, 5)
    assert len(elements) == 24  # T_d acts as S_4 on the hydrogens
    assert elements == brute_force_automorphisms(x, t)


def test_automorphisms_of_benzene():
    x, t = benzene()
    elements = group_elements(distance_automorphisms(x, atom_types=t), 12)
    assert len(elements) == 12  # D_6h acts on the atoms as D_6 (the mirror plane fixes every atom)
    dist = torch.cdist(x, x)
    for p in elements:
        p = list(p)
        assert torch.equal(t[p], t)
        assert torch.allclose(dist[p][:, p], dist, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "order"), [("square", 8), ("polygon20", 40), ("cube", 48), ("icosahedron", 120), ("random", 1)]
)
def test_group_orders_of_known_shapes(name, order):
    phi = (1 + 5**0.5) / 2
    shapes = {
        "square": [[1, 0], [0, 1], [-1, 0], [0, -1]],
        "polygon20": [[math.cos(2 * math.pi * j / 20), math.sin(2 * math.pi * j / 20)] for j in range(20)],
        "cube": list(itertools.product([0, 1], repeat=3)),
        "icosahedron": [v for a in (-1, 1) for b in (-phi, phi) for v in ((0, a, b), (a, b, 0), (b, 0, a))],
        "random": torch.randn(15, 3, generator=torch.Generator().manual_seed(0)).tolist(),
    }
    x = torch.tensor(shapes[name], dtype=torch.float64)
    out = symmetrize_edges(torch.tensor([[0], [1]]), x, tol=1e-6)
    assert out.group_order == order
    assert len(group_elements(distance_automorphisms(x, tol=1e-6), x.shape[0])) == order


@pytest.mark.parametrize("molecule", [benzene, methane])
def test_symmetrized_pool_graph_is_invariant(molecule):
    x, t = molecule()
    n = x.shape[0]
    pool = RigidGraphPool(3, size=3, seed=0)
    elements = group_elements(distance_automorphisms(x, atom_types=t), n)
    for g in pool.graphs(n):
        out = symmetrize_edges(g, x, atom_types=t)
        assert_invariant_edges(out.edges, elements)
        assert edge_set(g) <= edge_set(out.edges)
        assert out.num_added == out.edges.shape[1] - g.shape[1]
        assert out.group_order == len(elements)


def test_symmetrization_makes_the_sparse_loss_permutation_invariant(gen):
    """Theorem 4.2 for sparse edges: E(sigma . pred, y) = E(pred, y) for sigma in Aut, once edges are symmetric."""
    x, t = benzene()
    elements = sorted(group_elements(distance_automorphisms(x, atom_types=t), 12))
    edges = random_regular_graph(12, 3, generator=gen)
    sym = symmetrize_edges(edges, x, atom_types=t).edges
    pred = x + 0.3 * torch.randn(12, 3, generator=gen, dtype=torch.float64)
    base = pair_energy_loss(pred, x, edges=sym)
    raw_base = pair_energy_loss(pred, x, edges=edges)
    raw_changed = False
    for p in elements:
        inv = torch.argsort(torch.tensor(p))
        permuted = pred[inv]  # atom p[i] of the permuted prediction is atom i of pred
        assert torch.allclose(pair_energy_loss(permuted, x, edges=sym), base, rtol=1e-12)
        raw_changed |= not torch.allclose(pair_energy_loss(permuted, x, edges=edges), raw_base, rtol=1e-6)
    assert raw_changed  # the raw random graph is not invariant


def test_symmetrize_tolerance():
    x, t = benzene()
    noisy = x + 1e-5 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert symmetrize_edges(complete_graph(12), noisy, atom_types=t, tol=1e-3).group_order == 12
    assert symmetrize_edges(complete_graph(12), noisy, atom_types=t, tol=1e-8).group_order == 1


def test_symmetrize_asymmetric_target_adds_nothing(gen):
    x = torch.randn(10, 3, generator=gen)
    edges = random_regular_graph(10, 3, generator=gen)
    out = symmetrize_edges(edges, x)
    assert out.num_added == 0 and out.group_order == 1 and edge_set(out.edges) == edge_set(edges)


def test_symmetrize_atom_types_restrict_the_group():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert symmetrize_edges(complete_graph(4), square, atom_types=torch.tensor([0, 1, 0, 1])).group_order == 4


def test_orbit_random_graph_is_invariant():
    x, t = benzene()
    out = orbit_random_graph(x, 3, atom_types=t, generator=torch.Generator().manual_seed(0))
    assert out.group_order == 12
    assert_invariant_edges(out.edges, group_elements(distance_automorphisms(x, atom_types=t), 12))
    assert out.edges.shape[1] >= 6  # each of the two orbits (C, H) has a representative with 3 partners


def test_symmetrize_bad_input():
    with pytest.raises(ValueError, match="target"):
        symmetrize_edges(complete_graph(3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="atom_types"):
        symmetrize_edges(complete_graph(3), torch.zeros(3, 2), atom_types=torch.zeros(4))
    with pytest.raises(ValueError, match="tol"):
        symmetrize_edges(complete_graph(3), torch.zeros(3, 2), tol=-1.0)


# ----------------------------------------------------------------------------------------------------------------
# the sparse energy loss
# ----------------------------------------------------------------------------------------------------------------


def minimise(edges, target, *, seed, steps=300):
    """LBFGS on the sparse loss from a random start; returns the final prediction and loss."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(target.shape, generator=g, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [pred], lr=1.0, max_iter=steps, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = pair_energy_loss(pred, target, edges=edges)
        loss.backward()
        return loss

    opt.step(closure)
    return pred.detach(), float(pair_energy_loss(pred.detach(), target, edges=edges))


@pytest.mark.parametrize(("n", "d"), [(8, 2), (10, 3)])
def test_sparse_loss_minimum_recovers_the_target_up_to_rigid_motion(n, d):
    """Every zero of the loss over a globally rigid pool graph is congruent to the target (all N^2 distances
    match). Distance geometry has local minima, so several random starts are run; those reaching zero are checked."""
    target = torch.randn(n, d, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    edges = RigidGraphPool(d, size=2, seed=0).graphs(n)[0]
    assert edges.shape[1] == n * d < n * (n - 1) // 2
    runs = [minimise(edges, target, seed=s) for s in range(4)]
    zeros = [pred for pred, loss in runs if loss < 1e-14]
    assert zeros
    for pred in zeros:
        assert float((torch.cdist(pred, pred) - torch.cdist(target, target)).abs().max()) < 1e-6


def test_sparse_loss_minimum_is_ambiguous_without_global_rigidity():
    """A cycle is flexible in 2-D: the loss reaches zero at shapes that are not congruent to the target."""
    target = torch.randn(8, 2, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    edges = E(cycle(8))
    pred, loss = minimise(edges, target, seed=0)
    assert loss < 1e-16
    assert float((torch.cdist(pred, pred) - torch.cdist(target, target)).abs().max()) > 0.1


def test_rigid_but_not_globally_rigid_graph_has_a_non_congruent_zero():
    """Two K4 sharing two vertices: reflecting one K4's private vertices across the shared line keeps every edge
    length (loss exactly 0) but changes non-edge distances."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.2], [0.3, 1.1], [0.8, 0.9], [0.4, -0.7], [1.2, -0.5]], dtype=torch.float64)
    edges = E(sorted(set(itertools.combinations([0, 1, 2, 3], 2)) | set(itertools.combinations([0, 1, 4, 5], 2))))
    a, b = x[0], x[1]
    u = (b - a) / torch.linalg.vector_norm(b - a)
    flipped = x.clone()
    for i in (4, 5):
        v = x[i] - a
        flipped[i] = a + 2 * (v @ u) * u - v
    assert float(pair_energy_loss(flipped, x, edges=edges)) < 1e-24
    assert float((torch.cdist(flipped, flipped) - torch.cdist(x, x)).abs().max()) > 0.1
    assert float(pair_energy_loss(flipped, x)) > 0.01  # the complete loss sees the difference


@pytest.mark.parametrize("coefficients", ["constant", "inverse", "exp"])
def test_sparse_loss_layouts_agree_with_per_structure_loop(coefficients, gen):
    pool = RigidGraphPool(3, size=4, seed=2)
    sizes = [9, 5, 12]
    n_max = max(sizes)
    target = torch.randn(3, n_max, 3, generator=gen, dtype=torch.float64)
    pred = torch.randn(3, n_max, 3, generator=gen, dtype=torch.float64)
    mask = torch.arange(n_max) < torch.tensor(sizes).unsqueeze(-1)
    dense = sparse_pair_energy_loss(
        pred,
        target,
        pool=pool,
        mask=mask,
        coefficients=coefficients,
        reduction="none",
        generator=torch.Generator().manual_seed(0),
    )
    loop_gen = torch.Generator().manual_seed(0)
    loop = torch.stack(
        [
            pair_energy_loss(
                pred[b, :n], target[b, :n], edges=pool.sample(n, generator=loop_gen), coefficients=coefficients
            )
            for b, n in enumerate(sizes)
        ]
    )
    assert torch.allclose(dense, loop, rtol=1e-12)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    ragged = sparse_pair_energy_loss(
        pred[mask],
        target[mask],
        pool=pool,
        batch=batch,
        coefficients=coefficients,
        reduction="none",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(ragged, loop, rtol=1e-12)


def test_sparse_loss_is_invariant_and_zero_at_the_target(gen):
    pool = RigidGraphPool(3, size=3)
    y = torch.randn(2, 10, 3, generator=gen, dtype=torch.float64)
    q = random_rotation(3, gen, proper=False)
    moved = y @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert float(sparse_pair_energy_loss(moved, y, pool=pool, generator=gen)) < 1e-20
    single = sparse_pair_energy_loss(moved[0], y[0], pool=pool, mask=torch.ones(10, dtype=torch.bool), generator=gen)
    assert float(single) < 1e-20
    pred = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    edges = pool.sample(10, generator=gen)
    assert torch.allclose(
        sparse_pair_energy_loss(pred @ q.T, y[0], edges=edges), sparse_pair_energy_loss(pred, y[0], edges=edges)
    )


def test_sparse_loss_gradcheck(gen):
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    p = torch.randn(8, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    edges = RigidGraphPool(2, size=1).graphs(8)[0]
    assert torch.autograd.gradcheck(lambda z: sparse_pair_energy_loss(z, y, edges=edges, coefficients="exp"), (p,))


def test_sparse_loss_bad_input():
    pool = RigidGraphPool(2, size=1)
    y = torch.randn(6, 2)
    with pytest.raises(ValueError, match="exactly one"):
        sparse_pair_energy_loss(y, y)
    with pytest.raises(ValueError, match="exactly one"):
        sparse_pair_energy_loss(y, y, pool=pool, edges=complete_graph(6))
    with pytest.raises(ValueError, match="2-D but pred has D = 3"):
        sparse_pair_energy_loss(torch.randn(6, 3), torch.randn(6, 3), pool=pool)
    with pytest.raises(TypeError, match="RigidGraphPool"):
        sparse_pair_energy_loss(y, y, pool="pool")


def test_finite_field_kernel_vector_solves_the_system(gen):
    """The exact kernel vector used for random stresses: A x = 0 over GF(p) (checked with Python integers)."""
    from energyloss.rigidity import PRIME, _echelon_mod, _kernel_vector_mod

    rng = np.random.default_rng(0)
    a = rng.integers(0, PRIME, size=(6, 9))
    a[4] = (2 * a[0] + 3 * a[1]) % PRIME  # rank 5
    echelon, pivots = _echelon_mod(a)
    assert len(pivots) == 5
    x = _kernel_vector_mod(echelon, pivots, rng.integers(1, PRIME, size=4))
    assert any(x)
    residual = [sum(int(v) * int(w) for v, w in zip(row, x, strict=True)) % PRIME for row in a]
    assert residual == [0] * 6
