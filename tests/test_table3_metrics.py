"""Table 3 metrics (JODO's evaluation): bond graphs and perception, 3-D / 2-D metrics, geometry MMD, FCD, QM9 bonds."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from energyloss.experiments.molecules import bonds, metrics, qm9
from energyloss.experiments.molecules import geometry_mmd as gm
from energyloss.experiments.molecules import table3_metrics as t3
from energyloss.experiments.molecules.bonds import BondGraphs
from energyloss.experiments.molecules.data import Molecules, save_molecules

Chem = pytest.importorskip("rdkit.Chem", reason="RDKit is in the molecules extra")

EXCERPT = Path(__file__).parent / "data" / "qm9pack_excerpt"


# ---------------------------------------------------------------------------------------------------------------
# Hand-made molecules (Angstrom)


def methane(ch: float = 1.09) -> tuple[np.ndarray, list[int]]:
    v = np.array([[1.0, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]) / math.sqrt(3)
    return np.concatenate([np.zeros((1, 3)), ch * v]), [6, 1, 1, 1, 1]


def ethanol() -> tuple[np.ndarray, list[int]]:
    """MMFF-optimised ethanol (RDKit, once), atoms C C O H H H H H H."""
    pos = [
        [-0.8544, 0.2235, 0.2418],
        [0.3871, -0.3585, -0.4015],
        [1.5316, 0.3843, -0.0073],
        [-1.7476, -0.3278, -0.0651],
        [-0.9749, 1.2758, -0.0359],
        [-0.7771, 0.1892, 1.3335],
        [0.5283, -1.4032, -0.1080],
        [0.3103, -0.3138, -1.4917],
        [1.5966, 0.3305, 0.9614],
    ]
    return np.array(pos), [6, 6, 8, 1, 1, 1, 1, 1, 1]


def benzene(cc: float = 1.39, ch: float = 1.09) -> tuple[np.ndarray, list[int]]:
    ang = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(ang), np.sin(ang), np.zeros(6)], 1)
    return np.concatenate([cc * ring, (cc + ch) * ring]), [6] * 6 + [1] * 6


def ammonium(nh: float = 1.03) -> tuple[np.ndarray, list[int]]:
    pos, _ = methane(nh)
    return pos, [7, 1, 1, 1, 1]


def store(*mols: tuple[np.ndarray, list[int]]) -> Molecules:
    return Molecules.from_list([(torch.tensor(p, dtype=torch.float32), torch.tensor(z)) for p, z in mols])


def graphs_of(mols: Molecules) -> BondGraphs:
    g, rules = bonds.perceive_bond_graphs(mols)
    assert (rules > 0).all()
    return g


# ---------------------------------------------------------------------------------------------------------------
# Bond graphs


def test_bond_graphs_round_trip_select_and_validation():
    g = BondGraphs.from_list(
        [(3, [(1, 0, 1), (0, 2, 1)], [0, 1, 0]), None, (2, [(0, 1, 2)], None)], num_atoms=[3, 4, 2]
    )
    assert g.num_bonds.tolist() == [2, 0, 1] and g.perceived.tolist() == [True, False, True]
    assert g.bonds.tolist() == [[0, 1], [0, 2], [0, 1]]  # stored once, i < j
    assert g.global_bonds().tolist() == [[0, 1], [0, 2], [7, 8]]
    dense, fc = g.to_dense()
    assert dense.shape == (3, 4, 4) and torch.equal(dense, dense.transpose(1, 2)) and fc[0].tolist() == [0, 1, 0, 0]
    back = BondGraphs.from_dense(dense, torch.arange(4)[None] < g.num_atoms[:, None], fc)
    assert back.bonds.tolist() == g.bonds.tolist() and back.orders.tolist() == g.orders.tolist()
    sel = g.select([2, 0])
    assert sel.num_atoms.tolist() == [2, 3] and sel.molecule(0) == ([(0, 1, 2)], [0, 0])
    assert sel.molecule(1) == ([(0, 1, 1), (0, 2, 1)], [0, 1, 0])
    assert BondGraphs.concat([g, sel]).num_bonds.tolist() == [2, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="self-loop or repeated"):
        BondGraphs.from_list([(2, [(0, 1, 1), (1, 0, 1)], None)])
    with pytest.raises(ValueError, match="beyond"):
        BondGraphs.from_list([(2, [(0, 2, 1)], None)])
    with pytest.raises(ValueError, match="1, 2, 3 or 4"):
        BondGraphs.from_list([(2, [(0, 1, 5)], None)])
    with pytest.raises(ValueError, match="symmetric"):
        BondGraphs.from_dense(torch.tensor([[[0, 1], [0, 0]]]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        g.check_matches(store(methane()))


# ---------------------------------------------------------------------------------------------------------------
# Bond perception from 3-D structures


def test_perceive_methane_ethanol_benzene_kekule_and_neutral():
    mols = store(methane(), ethanol(), benzene())
    g = graphs_of(mols)
    assert g.num_bonds.tolist() == [4, 8, 12]
    assert (g.formal_charges == 0).all()
    assert sorted(g.orders[g.bond_ptr[2] : g.bond_ptr[3]].tolist()) == [1] * 9 + [2] * 3  # Kekulé benzene
    smiles = []
    for k in range(3):
        b, c = g.molecule(k)
        mol = bonds.rdkit_molecule(mols.molecule(k)[1].tolist(), b, c)
        Chem.SanitizeMol(mol)
        smiles.append(bonds.canonical_smiles(mol))
    assert smiles == ["C", "CCO", "c1ccccc1"]


def test_resonance_forms_share_a_skeleton_other_molecules_do_not():
    zwitterion, neutral = "NC1=C([O-])C=CNC1=[NH2+]", "Nc1[nH]ccc(=O)c1N"  # QM9 26615: QM9's SMILES and ours
    assert bonds._skeleton(zwitterion) == bonds._skeleton(neutral) is not None
    assert bonds._skeleton("CC=O") != bonds._skeleton("C=CO")  # tautomers: the hydrogen moved
    assert bonds._skeleton("not a smiles") is None


def test_perception_failure_is_reported_not_guessed():
    pos, _ = methane()
    crowded = (np.concatenate([pos, [[0.0, 0.0, -1.09]]]), [6, 1, 1, 1, 1, 1])  # a carbon with five hydrogens
    assert bonds.perceive_bonds(crowded[1], crowded[0]) is None
    assert bonds.perceive_bonds([6], np.array([[0.0, 0, np.nan]])) is None
    g, rules = bonds.perceive_bond_graphs(store(methane(), crowded))
    assert rules.tolist() == [1, 0] and g.perceived.tolist() == [True, False] and g.num_bonds.tolist() == [4, 0]
    r, _ = t3.graph_metrics(store(methane(), crowded), g)
    assert r["molecule_stability"] == 0.5 and r["validity"] == 0.5 and r["completeness"] == 0.5


# ---------------------------------------------------------------------------------------------------------------
# 3-D and 2-D metrics


def test_3d_metrics_agree_with_the_edm_metrics_on_real_molecules():
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    ours, _ = t3.graph_metrics(mols, t3.distance_bond_graphs(mols), valences=metrics.EDM_VALENCES, use_charges=False)
    edm = metrics.evaluate_molecules(mols)
    for key in ("atom_stability", "molecule_stability", "validity", "uniqueness", "valid_and_unique"):
        assert ours[key] == edm[key], key
    assert ours["completeness"] <= ours["validity"]


def test_completeness_of_a_two_fragment_molecule_is_zero():
    pos_a, z_a = methane()
    pos_b, z_b = ethanol()
    pair = (np.concatenate([pos_a, pos_b + 8.0]), z_a + z_b)  # methane and ethanol 8 Å apart: one "molecule"
    mols = store(pair, ethanol())
    r3, summ = t3.graph_metrics(mols, t3.distance_bond_graphs(mols), valences=metrics.EDM_VALENCES, use_charges=False)
    assert r3["validity"] == 1.0 and r3["completeness"] == 0.5 and summ[0][1] == 2
    assert summ[0][2] == summ[1][2]  # the largest fragment of the pair is ethanol
    assert r3["uniqueness"] == 0.5 and r3["valid_and_unique"] == 0.5
    r2, _ = t3.graph_metrics(mols, graphs_of(mols))
    assert r2["completeness"] == 0.5 and r2["molecule_stability"] == 1.0


def test_charged_atom_stability_and_validity_with_and_without_charges():
    mols = store(ammonium(), methane())
    four = [(0, k, 1) for k in range(1, 5)]
    g = BondGraphs.from_list([(5, four, [1, 0, 0, 0, 0]), (5, four, None)])  # NH4+ and neutral methane
    with_c, _ = t3.graph_metrics(mols, g)
    without, _ = t3.graph_metrics(mols, g, use_charges=False)
    assert with_c["molecule_stability"] == 1.0 and with_c["validity"] == 1.0
    assert without["molecule_stability"] == 0.5 and without["validity"] == 0.5  # a neutral 4-valent N
    assert t3.graph_stability(mols.atomic_numbers, g).tolist() == [True] * 10
    assert t3.graph_stability(mols.atomic_numbers, g, use_charges=False).tolist() == [False] + [True] * 9
    # a C+ with four bonds is unstable under JODO's table (C+ allows 3 bonds)
    cation = BondGraphs.from_list([(5, four, [1, 0, 0, 0, 0])])
    assert t3.graph_stability(store(methane()).atomic_numbers, cation).tolist() == [False] + [True] * 4
    # EDM's neutral table ignores charges
    edm = t3.graph_stability(mols.atomic_numbers, g, valences=metrics.EDM_VALENCES)
    assert edm.tolist() == [False] + [True] * 9


def test_aromatic_bonds_are_kekulised_for_stability():
    mols = store(benzene())
    ring = [(k, (k + 1) % 6, 4) for k in range(6)] + [(k, k + 6, 1) for k in range(6)]
    g = BondGraphs.from_list([(12, ring, None)])
    r, summ = t3.graph_metrics(mols, g)
    assert r["molecule_stability"] == 1.0 and r["validity"] == 1.0 and summ[0][3] == "c1ccccc1"
    assert sorted(summ[0][4]) == [1] * 9 + [2] * 3
    # without kekulisation the aromatic carbons would sum to 4 (1.5 + 1.5 + 1): still counted in half units
    assert t3._valence2(g)[:6].tolist() == [8] * 6


# ---------------------------------------------------------------------------------------------------------------
# Geometry: values and MMD


def _rdkit_values(mols: Molecules, g: BondGraphs, symbols: dict[str, list[str]]) -> dict[str, dict[str, list]]:
    """Independent reference: loops over RDKit's own bond / angle / dihedral functions."""
    from rdkit.Chem import rdMolTransforms as T

    names = {1: "1", 2: "2", 3: "3", 4: "12"}
    out = {kind: {s: [] for s in syms} for kind, syms in symbols.items()}
    for k in range(len(mols)):
        pos, z = mols.molecule(k)
        b, _ = g.molecule(k)
        mol = bonds.rdkit_molecule(z.tolist(), b, positions=pos.double().numpy())
        conf = mol.GetConformer()
        sym = [a.GetSymbol() for a in mol.GetAtoms()]
        order = {frozenset((i, j)): o for i, j, o in b}
        nbrs = {a: [n.GetIdx() for n in mol.GetAtomWithIdx(a).GetNeighbors()] for a in range(mol.GetNumAtoms())}

        def piece(i, j, sym=sym, order=order):
            return f"{sym[i]}{names[order[frozenset((i, j))]]}{sym[j]}"

        def put(kind, fwd, rev, value):
            for s in (fwd, rev):
                if s in out[kind]:
                    out[kind][s].append(value)
                    return

        for i, j, _ in b:
            put("bond", piece(i, j), piece(j, i), T.GetBondLength(conf, i, j))
        for c in nbrs:
            for x in nbrs[c]:
                for y in nbrs[c]:
                    if x < y:
                        put("angle", f"{piece(x, c)}-{piece(c, y)}", f"{piece(y, c)}-{piece(c, x)}",
                            T.GetAngleDeg(conf, x, c, y))  # fmt: skip
        for i, j, _ in b:
            for x in nbrs[i]:
                for y in nbrs[j]:
                    if x != j and y != i:
                        value = T.GetDihedralDeg(conf, x, i, j, y)
                        if not math.isnan(value):
                            fwd = f"{piece(x, i)}-{piece(i, j)}-{piece(j, y)}"
                            rev = f"{piece(y, j)}-{piece(j, i)}-{piece(i, x)}"
                            put("dihedral", fwd, rev, value)
    return out


def test_geometry_values_match_rdkit_on_ethanol_benzene_and_qm9():
    mols = Molecules.concat([store(ethanol(), benzene()), qm9.read_qm9_csv(EXCERPT, progress=False)])
    g = graphs_of(mols)
    symbols = {
        "bond": ["C1H", "C1C", "C1O", "O1H", "C2C", "N1C", "C3C", "C2O"],
        "angle": ["C1C-C1H", "C1O-O1H", "H1C-C1H", "C2C-C1H", "C1C-C1O", "C2C-C1C", "O1C-C1H"],
        "dihedral": ["H1C-C1C-C1O", "H1C-C1O-O1H", "C1C-C1O-O1H", "H1C-C2C-C1H", "H1C-C1C-C1H", "C1C-C2C-C1C"],
    }
    ours = gm.geometry_values(
        mols, g, bond_symbols=symbols["bond"], angle_symbols=symbols["angle"], dihedral_symbols=symbols["dihedral"]
    )
    ref = _rdkit_values(mols, g, symbols)
    for kind in symbols:
        for s in symbols[kind]:
            a, b = np.sort(ours[kind][s]), np.sort(np.array(ref[kind][s]))
            assert a.shape == b.shape, (kind, s)
            assert np.allclose(a, b, atol=1e-6), (kind, s)
    assert len(ours["bond"]["O1H"]) == 1 + 8  # ethanol's O-H and QM9's
    assert len(ours["angle"]["C2C-C1H"]) > 0 and len(ours["dihedral"]["H1C-C1O-O1H"]) >= 2  # 2 in ethanol


def test_angle_counting_like_jodo():
    mols = store(ethanol())
    g = graphs_of(mols)
    each = gm.geometry_values(mols, g, angle_symbols=["H1C-C1H"], dihedral_symbols=[])
    jodo = gm.geometry_values(mols, g, angle_symbols=["H1C-C1H"], dihedral_symbols=[], angle_counting="jodo")
    # the H atoms (indices 3-8) come after their carbons: each H-C-H angle has no end-atom enumeration in JODO
    assert len(each["angle"]["H1C-C1H"]) == 3 + 1 and len(jodo["angle"]["H1C-C1H"]) == 0
    with pytest.raises(ValueError, match="angle_counting"):
        gm.geometry_values(mols, g, angle_counting="twice")


def _naive_mmd(x, y):
    t = torch.cat([torch.as_tensor(x), torch.as_tensor(y)]).double()
    n = len(t)
    d2 = (t[:, None] - t[None, :]) ** 2
    base = d2.sum() / (n * n - n) / 4
    k = sum(torch.exp(-d2 / (base * 2**i)) for i in range(5))
    m = len(x)
    return float(k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean())


def test_mmd_definition_identical_and_shifted_sets_and_binning():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.09, 0.01, 300), rng.normal(1.10, 0.012, 200)
    assert gm.mmd(x, y, method="exact") == pytest.approx(_naive_mmd(x, y), rel=1e-12)
    assert abs(gm.mmd(x, x)) < 1e-12
    assert gm.mmd(x, x + 0.05) > 2 * gm.mmd(x, y) > 0
    assert gm.mmd(np.ones(5), np.ones(3)) == 0.0 and math.isnan(gm.mmd([], [1.0]))
    # the FFT path agrees with the exact sum, also with an outlier and for angle-like values
    for a, b in ((x, y), (np.append(x, 3.0), y), (rng.uniform(-180, 180, 500), rng.normal(60, 10, 400))):
        exact, binned = gm.mmd(a, b, method="exact"), gm.mmd(a, b, method="binned")
        assert abs(binned - exact) <= 1e-6 * abs(exact) + 1e-12
    with pytest.raises(ValueError, match="finite"):
        gm.mmd([np.nan], [1.0])


def test_mmd_of_a_few_values_against_a_large_reference_takes_the_fast_path(monkeypatch):
    """A symbol a poor model rarely makes (10 values) against 3,000 reference values: 9e6 reference pairs."""
    rng = np.random.default_rng(1)
    few, ref = rng.normal(1.3, 0.2, 10), rng.normal(1.33, 0.02, 3000)
    exact = gm.mmd(few, ref, method="exact")
    calls = []
    real = gm._exact_sum
    monkeypatch.setattr(gm, "_exact_sum", lambda *a, **k: calls.append(1) or real(*a, **k))
    auto = gm.mmd(few, ref)
    assert not calls  # binned, not the reference's n^2 exact pairs
    assert abs(auto - exact) <= 1e-6 * abs(exact)


def test_geometry_mmd_near_zero_for_the_same_data_and_larger_for_noise_and_shuffled_types():
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    g = graphs_of(mols)
    ref = gm.geometry_values(mols, g)
    same = gm.geometry_mmd(gm.geometry_values(mols, g), ref)
    for key in ("bond_length_mmd", "bond_angle_mmd", "dihedral_angle_mmd"):
        assert abs(same[key]) < 1e-12
    gen = torch.Generator().manual_seed(0)
    noisy = Molecules(mols.positions + 0.2 * torch.randn(mols.positions.shape, generator=gen), mols.atomic_numbers,
                      mols.num_atoms, mols.ids)  # fmt: skip
    worse = gm.geometry_mmd(gm.geometry_values(noisy, g), ref)
    assert worse["bond_length_mmd"] > 0.1 and worse["bond_angle_mmd"] > 0.01 and worse["dihedral_angle_mmd"] > 1e-3
    assert set(worse["per_symbol"]) == set(gm.QM9_BOND_SYMBOLS + gm.QM9_ANGLE_SYMBOLS + gm.QM9_DIHEDRAL_SYMBOLS)
    # subsampling is seeded: the same seed gives the same numbers
    sub = gm.geometry_mmd(gm.geometry_values(noisy, g), ref, max_samples=20, seed=3)
    assert sub == gm.geometry_mmd(gm.geometry_values(noisy, g), ref, max_samples=20, seed=3)
    empty = gm.geometry_mmd({"bond": {"C1H": np.zeros(0)}}, ref)
    assert math.isnan(empty["per_symbol"]["C1H"]["mmd"]) and math.isnan(empty["bond_length_mmd"])


def test_parse_symbol_rejects_bad_symbols():
    assert gm.parse_symbol("C12C") == ((6, 6), (4,))
    for bad in ("CC", "C1H-C1H", "C1H-H1C-C1H-H1C", "C4H"):
        with pytest.raises(ValueError, match="bad geometry symbol"):
            gm.parse_symbol(bad)


# ---------------------------------------------------------------------------------------------------------------
# FCD (optional dependency with the ChemNet weights in its wheel)


def test_fcd_of_identical_sets_is_near_zero_and_of_different_sets_positive():
    pytest.importorskip("fcd_torch", reason="fcd_torch is in the fcd extra")
    ref = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "OCCO", "C1CC1", "CC#N"]
    stats = t3.fcd_statistics(ref)
    assert stats["mu"].shape == (512,) and stats["sigma"].shape == (512, 512)
    assert abs(t3.frechet_chemnet_distance(ref, stats)) < 1e-4
    assert t3.frechet_chemnet_distance(["FC(F)F", "FC(F)(F)F", "ClCCl", "BrC"], stats) > 1.0
    with pytest.raises(ValueError, match="at least 2"):
        t3.fcd_statistics(["C", "C"])


# ---------------------------------------------------------------------------------------------------------------
# The whole evaluation, files with bonds, QM9 with bonds


def test_evaluate_table3_on_perceived_and_given_bonds():
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    g = graphs_of(mols)
    reference = t3.Table3Reference("excerpt", gm.geometry_values(mols, g))
    perceived = t3.evaluate_table3(mols, None, reference=reference, fcd=False)
    given = t3.evaluate_table3(mols, g, reference=reference, fcd=False)
    assert perceived["2d"]["bonds_source"].startswith("perceived from the 3-D structures")
    assert given["2d"]["bonds_source"] == "given" and perceived["version"] == t3.TABLE3_METRICS_VERSION
    for part in ("3d", "2d"):
        assert {k: v for k, v in perceived[part].items() if k != "bonds_source"} == {
            k: v for k, v in given[part].items() if k != "bonds_source"
        }
    assert given["2d"]["molecule_stability"] == 1.0 and given["2d"]["completeness"] == 1.0
    assert given["3d"]["validity"] == 0.9 and abs(given["geometry"]["bond_length_mmd"]) < 1e-12
    shuffled_z = mols.atomic_numbers[
        torch.randperm(len(mols.atomic_numbers), generator=torch.Generator().manual_seed(1))
    ]
    shuffled = Molecules(mols.positions, shuffled_z, mols.num_atoms, mols.ids)
    bad = t3.evaluate_table3(shuffled, g, reference=reference, fcd=False)
    assert bad["2d"]["molecule_stability"] < 0.5 and bad["3d"]["molecule_stability"] < 0.5
    assert bad["geometry"]["bond_length_mmd"] > 0.01
    complete_only = t3.evaluate_table3(shuffled, g, reference=reference, fcd=False, mmd_molecules="complete")
    assert complete_only["geometry"]["molecules"] == "complete"
    assert "geometry" not in t3.evaluate_table3(mols, g)  # no reference: no MMD, no FCD


def test_sample_files_carry_bonds_and_sdf_bonds_are_read(tmp_path):
    mols = store(ammonium(), ethanol())
    pos, z, mask = mols.to_padded()
    g = BondGraphs.from_list([(5, [(0, k, 1) for k in range(1, 5)], [1, 0, 0, 0, 0])]).select([0])
    g = BondGraphs.concat([g, graphs_of(store(ethanol()))])
    dense, fc = g.to_dense(pad_to=pos.shape[1])
    for suffix in (".npz", ".pt"):
        path = save_molecules(tmp_path / f"s{suffix}", pos, z, mask=mask, bonds=dense, formal_charges=fc)
        back = bonds.load_bond_graphs(path)
        assert back.bonds.tolist() == g.bonds.tolist() and back.formal_charges.tolist() == g.formal_charges.tolist()
        assert bonds.load_bond_graphs(path, ids=[1]).num_bonds.tolist() == [8]
    assert bonds.load_bond_graphs(save_molecules(tmp_path / "plain.npz", pos, z, mask=mask)) is None
    with pytest.raises(ValueError, match="bonds must have shape"):
        save_molecules(tmp_path / "bad.npz", pos, z, mask=mask, bonds=dense[:, :2])
    sdf = tmp_path / "m.sdf"
    writer = Chem.SDWriter(str(sdf))
    for k in range(2):
        b, c = g.molecule(k)
        p, zz = mols.molecule(k)
        m = bonds.rdkit_molecule(zz.tolist(), b, c, positions=p.double().numpy())
        Chem.SanitizeMol(m)
        writer.write(m)
    writer.close()
    from_sdf = bonds.load_bond_graphs(sdf)
    assert from_sdf.num_bonds.tolist() == [4, 8] and from_sdf.formal_charges.tolist()[:5] == [1, 0, 0, 0, 0]
    assert bonds.load_bond_graphs(tmp_path / "x.xyz") is None


def _excerpt_cache(tmp_path: Path, *, tamper: bool = False) -> tuple[Path, Path]:
    source = tmp_path / "source"
    shutil.copytree(EXCERPT, source)
    if tamper:  # QM9 index 1 (methane) gets another SMILES: its bonds must then be reported and excluded
        path = source / "qm9_part1.csv"
        csv.field_size_limit(sys.maxsize)
        rows = list(csv.DictReader(path.open(newline="")))
        rows[0]["SMILES"] = "CC"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    cache = tmp_path / "cache"
    qm9.prepare_qm9(cache_dir=cache, source="qm9pack", source_dir=source, n_train=30, progress=False)
    return cache, source


def test_qm9_bonds_are_checked_against_qm9_smiles_cached_and_rebuilt(tmp_path):
    cache, _ = _excerpt_cache(tmp_path, tamper=True)
    manifests = bonds.prepare_qm9_bonds(cache_dir=cache, progress=False)
    assert set(manifests) == {"train", "valid", "test"}
    total = sum(m["n_molecules"] for m in manifests.values())
    assert total == 40
    excluded = [e for m in manifests.values() for e in m["excluded"]]
    assert [e["qm9_index"] for e in excluded] == [1]
    assert excluded[0]["reason"] == "disagrees_with_qm9_smiles" and excluded[0]["perceived"] == "C"
    assert excluded[0]["same_skeleton"] is False
    split = next(s for s, m in manifests.items() if m["n_excluded"])
    assert manifests[split]["counts"]["disagrees_with_qm9_smiles"] == 1
    loaded = bonds.load_qm9_bonds(split, cache_dir=cache, progress=False)
    assert len(loaded.molecules) == manifests[split]["n_molecules"] - 1 and 1 not in loaded.molecules.ids.tolist()
    loaded.graphs.check_matches(loaded.molecules)
    assert (
        len(bonds.load_qm9_bonds(split, cache_dir=cache, progress=False, include_excluded=True).molecules)
        == (manifests[split]["n_molecules"])
    )
    path = bonds.bonds_cache_path(split, cache)
    stored = json.loads(path.with_suffix(".json").read_text())
    assert stored["key"]["data_sha256"] == qm9.verify_cache(qm9.cache_path(cache))["sha256"]
    assert stored["key"]["rdkit"] == metrics.rdkit_version() and stored["sha256"] == qm9.file_checksum(path)
    # a corrupt file is rebuilt, with a warning naming the reason
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="corrupt"):
        again = bonds.prepare_qm9_bonds(cache_dir=cache, splits=(split,), progress=False)
    assert again[split]["counts"] == manifests[split]["counts"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bonds.prepare_qm9_bonds(cache_dir=cache, splits=(split,), progress=False)  # valid now: no rebuild
    with pytest.raises(ValueError, match="unknown split"):
        bonds.prepare_qm9_bonds(cache_dir=cache, splits=("nope",), progress=False)


def test_eval_cli_table3_with_and_without_bonds(tmp_path, capsys):
    from energyloss.cli import main

    cache, _ = _excerpt_cache(tmp_path)
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    pos, z, mask = mols.to_padded()
    plain = save_molecules(tmp_path / "plain.npz", pos, z, mask=mask)
    dense, fc = graphs_of(mols).to_dense(pad_to=pos.shape[1])
    with_bonds = save_molecules(tmp_path / "bonded.npz", pos, z, mask=mask, bonds=dense, formal_charges=fc)
    base = ["--json", "--jobs", "1", "--cache-dir", str(cache), "--no-fcd"]
    assert main(["eval-molecules", str(plain), "--table3", *base]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = metrics.evaluate_molecules(mols)
    assert out["molecule_stability"] == expected["molecule_stability"] and out["validity"] == expected["validity"]
    assert out["table3"]["2d"]["bonds_source"].startswith("perceived")
    assert out["table3"]["reference"] == "qm9-test" and out["table3"]["geometry"]["bond_length_mmd"] >= 0
    assert main(["eval-molecules", str(with_bonds), "--table3", *base, "--sample", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_molecules"] == 10 and out["table3"]["2d"]["bonds_source"] == "given" and out["sample"] == 10
    assert out["table3"]["2d"]["molecule_stability"] == 1.0
    # the data row: a split with its bonds, in Markdown
    assert main(["eval-molecules", "--reference", "qm9-test", "--table3", "--jobs", "1", "--cache-dir", str(cache),
                 "--no-fcd", "--table3-reference", "none"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "| completeness (%) |" in table and "2-D bonds: the QM9 bond cache" in table and "no reference" in table
    # without --table3 the output is unchanged
    assert main(["eval-molecules", str(with_bonds), "--json", "--jobs", "1"]) == 0
    assert "table3" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["eval-molecules", str(plain), "--table3", "--no-rdkit"])
