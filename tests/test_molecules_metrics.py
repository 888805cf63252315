"""Molecule metrics: bond orders on hand-made molecules, stability, RDKit validity, accumulation and DDP."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from energyloss.experiments.molecules import eval_cli, metrics, qm9
from energyloss.experiments.molecules.data import ELEMENT_SYMBOLS, Molecules, save_molecules
from energyloss.experiments.molecules.metrics import (
    EDM_BOND_TABLE,
    EDM_VALENCES,
    MoleculeMetrics,
    atom_stability,
    bond_orders,
    evaluate_molecules,
    molecule_smiles,
    molecule_stability,
)

Chem = pytest.importorskip("rdkit.Chem", reason="RDKit is in the molecules extra")

EXCERPT = Path(__file__).parent / "data" / "qm9pack_excerpt"


# ---------------------------------------------------------------------------------------------------------------
# Hand-made molecules (Angstrom)


def methane(ch: float = 1.09) -> tuple[torch.Tensor, list[int]]:
    v = torch.tensor([[1.0, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]) / math.sqrt(3)
    return torch.cat([torch.zeros(1, 3), ch * v]), [6, 1, 1, 1, 1]


def ethene(cc: float = 1.33, ch: float = 1.09) -> tuple[torch.Tensor, list[int]]:
    c = cc / 2
    dx, dy = ch * math.cos(math.pi / 3), ch * math.sin(math.pi / 3)
    pos = [[-c, 0, 0], [c, 0, 0], [-c - dx, dy, 0], [-c - dx, -dy, 0], [c + dx, dy, 0], [c + dx, -dy, 0]]
    return torch.tensor(pos), [6, 6, 1, 1, 1, 1]


def ethyne(cc: float = 1.20, ch: float = 1.06) -> tuple[torch.Tensor, list[int]]:
    c = cc / 2
    return torch.tensor([[-c, 0, 0], [c, 0, 0], [-c - ch, 0, 0], [c + ch, 0, 0]]), [6, 6, 1, 1]


def hcn(hc: float = 1.066, cn: float = 1.156) -> tuple[torch.Tensor, list[int]]:
    return torch.tensor([[0.0, 0, 0], [hc, 0, 0], [hc + cn, 0, 0]]), [1, 6, 7]


def benzene(sides: tuple[float, float] = (1.397, 1.397), ch: float = 1.09) -> tuple[torch.Tensor, list[int]]:
    """Equiangular hexagon with alternating side lengths (equal sides: the aromatic geometry)."""
    pts, p = [], torch.zeros(2, dtype=torch.float64)
    for k in range(6):
        pts.append(p.clone())
        angle = math.pi / 3 * k
        p = p + sides[k % 2] * torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    ring = torch.stack(pts)
    ring = ring - ring.mean(0)
    hyd = ring + ch * ring / ring.norm(dim=-1, keepdim=True)
    xy = torch.cat([ring, hyd]).float()
    return torch.cat([xy, torch.zeros(12, 1)], dim=1), [6] * 6 + [1] * 6


def as_batch(*mols: tuple[torch.Tensor, list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return Molecules.from_list([(p, torch.tensor(z)) for p, z in mols]).to_padded()


def heavy_smiles(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromSmiles(smiles)), isomericSmiles=False)


# ---------------------------------------------------------------------------------------------------------------
# Bond orders


def test_bond_orders_of_hand_made_molecules():
    pos, z = methane()
    o = bond_orders(pos, torch.tensor(z))
    assert o[0, 1:].tolist() == [1, 1, 1, 1] and int(o[1:, 1:].sum()) == 0
    pos, z = ethene()
    o = bond_orders(pos, torch.tensor(z))
    assert int(o[0, 1]) == 2 and o[0, 2:4].tolist() == [1, 1] and o[1, 4:].tolist() == [1, 1]
    pos, z = ethyne()
    o = bond_orders(pos, torch.tensor(z))
    assert int(o[0, 1]) == 3 and int(o[0, 2]) == 1 and int(o[1, 3]) == 1 and int(o[0, 3]) == 0
    pos, z = hcn()
    o = bond_orders(pos, torch.tensor(z))
    assert o.tolist() == [[0, 1, 0], [1, 0, 3], [0, 3, 0]]
    for mol in (methane(), ethene(), ethyne(), hcn()):
        o = bond_orders(mol[0], torch.tensor(mol[1]))
        assert torch.equal(o, o.T) and int(o.diagonal().abs().sum()) == 0


def test_benzene_kekule_vs_aromatic_geometry():
    # Kekule geometry (alternating 1.34 / 1.46 A): alternating double / single, every carbon has valence 4.
    pos, z = benzene((1.34, 1.46))
    o = bond_orders(pos, torch.tensor(z))
    ring = [int(o[k, (k + 1) % 6]) for k in range(6)]
    assert ring == [2, 1, 2, 1, 2, 1]
    assert bool(molecule_stability(pos, torch.tensor(z)))
    assert heavy_smiles(molecule_smiles(pos[None], torch.tensor([z]))[0]) == "c1ccccc1"
    # The real aromatic geometry (all C-C 1.397 A) is above EDM's double threshold (134 + 5 pm): all single,
    # carbons have valence 3, the molecule is unstable. This is EDM's table working as published; orders are
    # never "aromatic", so nothing can be cast to single by accident.
    pos, z = benzene((1.397, 1.397))
    o = bond_orders(pos, torch.tensor(z))
    assert [int(o[k, (k + 1) % 6]) for k in range(6)] == [1] * 6
    stable = atom_stability(pos, torch.tensor(z))
    assert stable.tolist() == [False] * 6 + [True] * 6


def test_thresholds_follow_the_table_and_margins():
    # C-C: single below 154 + 10 pm, double below 134 + 5, triple below 120 + 3.
    for d, order in [(1.635, 1), (1.645, 0), (1.395, 1), (1.385, 2), (1.235, 2), (1.225, 3)]:
        pos = torch.tensor([[0.0, 0, 0], [d, 0, 0]], dtype=torch.float64)
        assert int(bond_orders(pos, torch.tensor([6, 6]))[0, 1]) == order, d
    # C-F has no double entry: short distances stay single.
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    assert int(bond_orders(pos, torch.tensor([6, 9]))[0, 1]) == 1
    # Pairs absent from the single table never bond (B-C), whatever the distance.
    assert int(bond_orders(pos, torch.tensor([5, 6]))[0, 1]) == 0
    # Symmetric lookup: C=S is double in both atom orders (EDM's dictionary had it under C only).
    pos = torch.tensor([[0.0, 0, 0], [1.60, 0, 0]])
    assert int(bond_orders(pos, torch.tensor([6, 16]))[0, 1]) == 2 == int(bond_orders(pos, torch.tensor([16, 6]))[0, 1])


def reference_bond_order(a: str, b: str, d_angstrom: float) -> int:
    """EDM's rule written as plain nested conditions over the table's dictionaries (independent code path)."""

    def length(table, x, y):
        return table.get((x, y), table.get((y, x)))

    d = 100 * d_angstrom
    s = length(EDM_BOND_TABLE.single, a, b)
    if s is None or not d < s + 10:
        return 0
    dbl = length(EDM_BOND_TABLE.double, a, b)
    if dbl is None or not d < dbl + 5:
        return 1
    tri = length(EDM_BOND_TABLE.triple, a, b)
    if tri is not None and d < tri + 3:
        return 3
    return 2


def test_vectorised_orders_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    pos, z, mask = mols.to_padded()
    pos = (pos + 0.03 * torch.randn(pos.shape, generator=g) * mask[..., None]).double()  # move near thresholds
    orders = bond_orders(pos, z, mask=mask)
    for b in range(len(mols)):
        n = int(mask[b].sum())
        for i in range(n):
            for j in range(n):
                sym_i, sym_j = ELEMENT_SYMBOLS[int(z[b, i])], ELEMENT_SYMBOLS[int(z[b, j])]
                expected = 0 if i == j else reference_bond_order(sym_i, sym_j, float((pos[b, i] - pos[b, j]).norm()))
                assert int(orders[b, i, j]) == expected, (b, i, j)
    assert int(orders[~mask].abs().sum()) == 0


def test_padding_is_ignored_and_bad_inputs_are_named():
    pos, z, mask = as_batch(methane(), hcn())
    garbage = pos.clone()
    garbage[~mask] = 0.5  # padding placed right on top of real atoms
    assert torch.equal(bond_orders(garbage, z, mask=mask), bond_orders(pos, z, mask=mask))
    with pytest.raises(ValueError, match=r"atomic_numbers must have shape \(2, 5\)"):
        bond_orders(pos, z[:, :3])
    with pytest.raises(ValueError, match=r"positions must have shape \(\.\.\., N, 3\)"):
        bond_orders(pos[..., :2], z)
    with pytest.raises(TypeError, match="integer"):
        bond_orders(pos, z.float())
    with pytest.raises(ValueError, match="atomic number 0 as real"):
        bond_orders(pos, z, mask=torch.ones_like(mask))


# ---------------------------------------------------------------------------------------------------------------
# Stability


def test_stability_of_good_and_broken_structures():
    good = [methane(), ethene(), ethyne(), hcn(), benzene((1.34, 1.46))]
    pos, z, mask = as_batch(*good)
    assert molecule_stability(pos, z, mask=mask).tolist() == [True] * 5
    # Broken: one methane H pulled to 2 A (C valence 3, lone H valence 0); a pentavalent carbon; neutral NH4.
    pulled, zc = methane()
    pulled = pulled.clone()
    pulled[4] = pulled[4] / 1.09 * 2.0
    axial = torch.tensor([[0.0, 0, 1.09], [0, 0, -1.09]])
    equatorial = 1.09 * torch.tensor([[1.0, 0, 0], [-0.5, 0.8660, 0], [-0.5, -0.8660, 0]])
    ch5 = (torch.cat([torch.zeros(1, 3), axial, equatorial]), [6, 1, 1, 1, 1, 1])
    nh4 = (methane(1.01)[0], [7, 1, 1, 1, 1])
    pos, z, mask = as_batch((pulled, zc), ch5, nh4)
    stable = atom_stability(pos, z, mask=mask)
    assert stable[0, :5].tolist() == [False, True, True, True, False]
    assert stable[1, :6].tolist() == [False] + [True] * 5
    assert stable[2, :5].tolist() == [False] + [True] * 4
    assert molecule_stability(pos, z, mask=mask).tolist() == [False, False, False]
    r = evaluate_molecules(pos, z, mask=mask, use_rdkit=False)
    assert r["atom_stability"] == pytest.approx(12 / 16) and r["molecule_stability"] == 0.0


def test_valence_table_contents():
    lookup = EDM_VALENCES.lookup()
    assert lookup[6].nonzero().flatten().tolist() == [4]
    assert lookup[15].nonzero().flatten().tolist() == [3, 5]
    assert not bool(lookup[2].any())  # helium: not in the table, never stable
    assert EDM_BOND_TABLE.key == "edm@1" and EDM_VALENCES.key == "edm@1"
    assert EDM_BOND_TABLE.margins == (10.0, 5.0, 3.0)


# ---------------------------------------------------------------------------------------------------------------
# RDKit


def test_rdkit_validity_and_largest_fragment():
    # Valid: ethene. Invalid: neutral NH4 (N valence 4 fails sanitisation).
    smiles = molecule_smiles(*as_batch(ethene(), (methane(1.01)[0], [7, 1, 1, 1, 1]))[:2])
    assert heavy_smiles(smiles[0]) == "C=C" and smiles[1] is None
    # Methane and a far-away water: the SMILES is the larger fragment's (5 atoms beat 3).
    water = torch.tensor([[10.0, 0, 0], [10.96, 0, 0], [9.76, 0.93, 0]])
    pos, z = methane()
    smi = molecule_smiles(torch.cat([pos, water])[None], torch.tensor([[*z, 8, 1, 1]]))[0]
    assert heavy_smiles(smi) == "C"
    # An under-bonded carbon (methyl) is unstable but RDKit-valid (it adds an implicit hydrogen).
    pos, z = methane()
    assert not bool(molecule_stability(pos[:4], torch.tensor(z[:4])))
    assert molecule_smiles(pos[None, :4], torch.tensor([z[:4]]))[0] is not None
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        metrics.smiles_from_graph([6, 6], [(0, 1, 4)])


def test_excerpt_graphs_match_qm9_smiles():
    """For every stable QM9 molecule of the excerpt, the inferred graph is QM9's own (SMILES column)."""
    import csv

    rows = []
    for path in sorted(EXCERPT.glob("qm9_part*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    pos, z, mask = mols.to_padded()
    stable = molecule_stability(pos, z, mask=mask).tolist()
    smiles = molecule_smiles(pos, z, mask=mask)
    assert sum(stable) == 28 and sum(s is not None for s in smiles) == 36
    for row, ok, smi in zip(rows, stable, smiles, strict=True):
        if ok:
            assert heavy_smiles(smi) == Chem.MolToSmiles(Chem.MolFromSmiles(row["SMILES"]), isomericSmiles=False)


def test_functional_ratios():
    assert metrics.validity([]) is None and metrics.uniqueness([None]) is None
    assert metrics.uniqueness(["C", "C", "O", None]) == pytest.approx(2 / 3)
    assert metrics.novelty(["C", "O", "N", None], ["C"]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------------
# Accumulation


def excerpt_batch():
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    return mols, *mols.to_padded()


def test_one_batch_equals_many_batches_and_merge():
    mols, pos, z, mask = excerpt_batch()
    reference = {"C", "CO", "N#CC#N"}
    one = MoleculeMetrics(reference_smiles=reference)
    one.update(pos, z, mask=mask)
    expected = one.compute()
    assert expected["n_molecules"] == 40 and expected["validity"] == pytest.approx(36 / 40)
    assert expected["molecule_stability"] == pytest.approx(28 / 40)
    assert expected["rdkit_version"] == metrics.rdkit_version() and expected["bond_table"] == "edm@1"

    many = MoleculeMetrics(reference_smiles=reference)
    for a, b in [(0, 1), (1, 13), (13, 14), (14, 40)]:
        part = mols.select(torch.arange(a, b))
        p, q, m = part.to_padded(pad_to=29)  # different padding width per update
        many.update(p, q, mask=m)
    assert many.compute() == expected

    left, right = MoleculeMetrics(reference_smiles=reference), MoleculeMetrics(reference_smiles=reference)
    left.update_molecules(mols.select(torch.arange(0, 40, 2)))
    right.update_molecules(mols.select(torch.arange(1, 40, 2)))
    assert left.merge(right).compute() == expected
    assert evaluate_molecules(mols, reference_smiles=reference) == expected
    small_chunks = MoleculeMetrics(reference_smiles=reference, chunk_size=3)
    small_chunks.update(pos, z, mask=mask)
    assert small_chunks.compute() == expected

    one.reset()
    empty = one.compute()
    assert empty["n_molecules"] == 0 and empty["atom_stability"] is None and empty["uniqueness"] is None
    with pytest.raises(ValueError, match="different bond or valence tables"):
        left.merge(MoleculeMetrics(bond_table=metrics.BondLengthTable("x", "0", {}, {}, {}, (10, 5, 3))))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mols = qm9.read_qm9_csv(EXCERPT, progress=False)
        metric = MoleculeMetrics(reference_smiles={"C", "CO"})
        part = mols.select(torch.arange(rank * 13, 40 if rank else 13))  # uneven shares: 13 and 27 molecules
        metric.update_molecules(part)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metric.compute()))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_all_reduce_matches_single_process(tmp_path):
    """Two gloo ranks with uneven shares: every rank's compute() equals the one-process result."""
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    expected = evaluate_molecules(mols, reference_smiles={"C", "CO"})
    world = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    for rank in range(world):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected


# ---------------------------------------------------------------------------------------------------------------
# The eval-molecules command


def test_eval_cli_on_sample_file_and_xyz(tmp_path, capsys):
    from energyloss.cli import main

    mols, pos, z, mask = excerpt_batch()
    path = save_molecules(tmp_path / "samples.npz", pos, z, mask=mask)
    assert main(["eval-molecules", str(path), "--json", "--jobs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = evaluate_molecules(mols)
    for key in ("atom_stability", "molecule_stability", "validity", "uniqueness", "n_molecules"):
        assert out[key] == expected[key]
        if key != "n_molecules":
            assert 0.0 <= out[key] <= 1.0
    xyz = "".join(
        f"{n}\n\n"
        + "".join(
            f"{ELEMENT_SYMBOLS[int(a)]} {x:.6f} {y:.6f} {w:.6f}\n" for a, (x, y, w) in zip(zz, pp.tolist(), strict=True)
        )
        for n, (pp, zz) in ((int(k), mols.molecule(i)) for i, k in enumerate(mols.num_atoms[:5]))
    )
    (tmp_path / "five.xyz").write_text(xyz)
    assert main(["eval-molecules", str(tmp_path / "five.xyz"), "--limit", "3", "--jobs", "1"]) == 0
    table = capsys.readouterr().out
    assert "| molecule stability (%) |" in table and "3 molecules" in table
    with pytest.raises(SystemExit):
        main(["eval-molecules", str(path), "--reference", "qm9-train"])
    assert eval_cli.DESCRIPTION


def test_eval_cli_reference_split_and_novelty(tmp_path, capsys):
    from energyloss.cli import main

    cache = tmp_path / "cache"
    qm9.prepare_qm9(cache_dir=cache, source="qm9pack", source_dir=EXCERPT, n_train=30, progress=False)
    args = ["eval-molecules", "--reference", "qm9-test", "--cache-dir", str(cache), "--json", "--jobs", "1"]
    assert main([*args, "--novelty-against", "qm9-train"]) == 0
    out = json.loads(capsys.readouterr().out)
    splits = qm9.load_qm9(cache_dir=cache, on_invalid="raise")
    train_pos, train_z, train_mask = splits["train"].to_padded()
    train_smiles = {s for s in molecule_smiles(train_pos, train_z, mask=train_mask) if s is not None}
    expected = evaluate_molecules(splits["test"], reference_smiles=train_smiles)
    assert out["n_molecules"] == 4 and out["novelty"] == expected["novelty"] and out["novelty_against"] == "qm9-train"
    assert out["molecule_stability"] == expected["molecule_stability"]
    # the training SMILES are cached next to the data, keyed by data checksum, bond table and RDKit version
    stored = json.loads((cache / "qm9" / "qm9-train-smiles-v1.json").read_text())
    assert set(stored["smiles"]) == train_smiles and stored["key"]["bond_table"] == "edm@1"
    assert main([*args[:-2], "--limit", "2", "--no-rdkit"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_molecules"] == 2 and out["validity"] is None


WATER = "3\nwater\nO 0.0 0.0 0.0\nH 0.9572 0.0 0.0\nH -0.24 0.9266 0.0\n"


def test_empty_and_non_finite_molecules_are_excluded_not_scored():
    water = (torch.tensor([[0.0, 0, 0], [0.9572, 0, 0], [-0.24, 0.9266, 0]]), [8, 1, 1])
    pos, z, mask = as_batch(water, methane(), water)
    pos = torch.cat([pos, torch.zeros(2, 5, 3)])  # two empty rows
    z = torch.cat([z, torch.zeros(2, 5, dtype=torch.long)])
    mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)])
    pos[2, 1, 0] = float("nan")  # the second water has a NaN coordinate
    pos[0, 4] = float("nan")  # NaN on padding is ignored
    r = evaluate_molecules(pos, z, mask=mask)
    assert r["n_molecules"] == 2 and r["n_excluded_empty"] == 2 and r["n_excluded_non_finite"] == 1
    assert r["n_atoms"] == 8 and r["molecule_stability"] == 1.0 and r["validity"] == 1.0
    only_empty = evaluate_molecules(torch.zeros(3, 2, 3), torch.zeros(3, 2, dtype=torch.long))
    assert only_empty["n_molecules"] == 0 and only_empty["molecule_stability"] is None
    assert only_empty["validity"] is None and only_empty["n_excluded_empty"] == 3
    # the counts are sums: merged / split updates agree
    a, b = MoleculeMetrics(), MoleculeMetrics()
    a.update(pos[:3], z[:3], mask=mask[:3])
    b.update(pos[3:], z[3:], mask=mask[3:])
    assert a.merge(b).compute() == r


def test_eval_cli_excludes_unscorable_records_with_a_note(tmp_path, capsys):
    from energyloss.cli import main

    path = tmp_path / "samples.xyz"
    path.write_text(WATER + "0\n\n" * 3 + "1\nnan\nC nan 0 0\n")  # one water, three empty, one NaN
    assert main(["eval-molecules", str(path), "--json", "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["n_records"] == 5 and out["n_molecules"] == 1 and out["molecule_stability"] == 1.0
    assert out["n_excluded_empty"] == 3 and out["n_excluded_non_finite"] == 1 and out["n_excluded_no_3d"] == 0
    assert out["excluded_records"] == {"empty": [1, 2, 3], "non_finite_positions": [4], "no_3d_coordinates": []}
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and str(path) in note[0] and "4 of 5 records excluded" in note[0]
    assert main(["eval-molecules", str(path), "--jobs", "1", "--no-rdkit"]) == 0
    assert "4 of 5 records excluded, not scored: 3 empty (records 1, 2, 3)" in capsys.readouterr().out

    from rdkit.Chem import AllChem

    sdf = tmp_path / "m.sdf"
    writer = Chem.SDWriter(str(sdf))
    for smi, embed in (("O", True), ("CO", False)):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if embed:
            AllChem.EmbedMolecule(mol, randomSeed=0)
        else:
            AllChem.Compute2DCoords(mol)  # 2-D only: excluded
        writer.write(mol)
    writer.close()
    assert main(["eval-molecules", str(sdf), "--json", "--jobs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["n_molecules"] == 1 and out["n_excluded_no_3d"] == 1 and out["excluded_records"]["no_3d_coordinates"] == [1]
    )


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("neg.npz", None, r"neg\.npz: molecule 0, atom 1: atomic number -1 is outside 1\.\.86"),
        ("bad.xyz", WATER + "1\n\nXx 0 0 0\n", r"bad\.xyz:8: record 1: unknown element 'Xx'"),
        ("junk.npz", b"junk", r"junk\.npz: cannot be read as a \.npz file"),
        ("empty.xyz", "0\n\n0\n\n", r"empty\.xyz: no molecule to evaluate \(2 of 2 records excluded"),
        ("missing.npz", "absent", r"no such file: .*missing\.npz"),
    ],
)
def test_eval_cli_reports_bad_files_in_one_line_with_exit_status_2(tmp_path, capsys, name, content, match):
    from energyloss.cli import main

    path = tmp_path / name
    if name == "neg.npz":
        np.savez(path, positions=np.zeros((1, 3, 3)), atomic_numbers=np.array([[8, -1, 1]]))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content != "absent":
        path.write_text(content)
    assert main(["eval-molecules", str(path), "--jobs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("energyloss eval-molecules: error: "), captured.err
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in captured.err


def test_speed_path_is_vectorised():
    """Bond inference for many molecules is one tensor op per chunk (shape check, no timing)."""
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(64, 29, 3, generator=g) * 3
    z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (64, 29), generator=g)]
    orders = bond_orders(pos, z)
    assert orders.shape == (64, 29, 29) and orders.dtype == torch.int64
    per_molecule = torch.stack([bond_orders(pos[b], z[b]) for b in range(64)])
    assert torch.equal(orders, per_molecule)
    assert np.isin(orders.unique().numpy(), [0, 1, 2, 3]).all()


def test_non_finite_samples_can_count_as_failures():
    from energyloss.experiments.molecules.metrics import MoleculeMetrics

    water = torch.tensor([[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]])
    z = torch.tensor([[8, 1, 1]])
    bad = water.clone()
    bad[0, 1, 0] = float("nan")
    positions, numbers = torch.cat([water, bad]), torch.cat([z, z])
    mask = torch.ones(2, 3, dtype=torch.bool)
    excluded = MoleculeMetrics(use_rdkit=False)
    excluded.update(positions, numbers, mask=mask)
    failed = MoleculeMetrics(use_rdkit=False, non_finite="fail")
    failed.update(positions, numbers, mask=mask)
    a, b = excluded.compute(), failed.compute()
    assert a["n_molecules"] == 1 and a["n_excluded_non_finite"] == 1 and a["molecule_stability"] == 1.0
    assert b["n_molecules"] == 2 and b["n_excluded_non_finite"] == 0 and b["molecule_stability"] == 0.5
    assert b["atom_stability"] == 0.5
