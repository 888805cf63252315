"""GEOM-Drugs: the streamed index and dataset, EDM's split, the GEOM stability tables, training through the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from energyloss.experiments.molecules import geom
from energyloss.experiments.molecules.data import MoleculeDataset
from energyloss.experiments.molecules.geom_tables import (
    EDM_GEOM_BOND_TABLE,
    EDM_GEOM_TABLES,
    EDM_GEOM_VALENCES,
    GEOM_REVISITED_TABLES,
    GEOM_REVISITED_VALENCES,
    STABILITY_TABLES,
)
from energyloss.experiments.molecules.metrics import (
    AROMATIC,
    EDM_BOND_TABLE,
    EDM_VALENCES,
    MoleculeMetrics,
    atom_stability,
    graph_atom_stability,
    molecule_stability,
)

from conftest import ddp_train_worker, free_port

# ---------------------------------------------------------------------------------------------------------------
# A generated file in EDM's geom_drugs_30.npy format


def write_geom_file(
    folder: Path, *, n_molecules: int = 6, conformers: int = 3, max_atoms: int = 181, seed: int = 0
) -> tuple[Path, list[int]]:
    """``geom_drugs_30.npy`` (rows: conformer id, Z, x, y, z; EDM's 16 elements; one molecule of ``max_atoms``
    atoms; ``conformers`` conformers per molecule, consecutive ids) and a seeded ``geom_permutation.npy``.
    Returns the path and the atoms per conformer."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [max_atoms] + rng.integers(3, min(max_atoms, 40) + 1, size=n_molecules - 1).tolist()
    rows, counts, conf = [], [], 0
    for m, n in enumerate(sizes):
        z = rng.choice([1, 6, 7, 8], size=n, p=[0.45, 0.4, 0.08, 0.07])
        if m == 0:
            z[:16] = geom.GEOM_ELEMENTS
        base = rng.normal(scale=3.0, size=(n, 3))
        for _ in range(conformers):
            rows.append(np.column_stack([np.full(n, conf), z, base + 0.1 * rng.normal(size=(n, 3))]))
            counts.append(n)
            conf += 1
    path = folder / "geom_drugs_30.npy"
    np.save(path, np.concatenate(rows).astype(np.float64))
    np.save(folder / "geom_permutation.npy", np.random.RandomState(seed).permutation(conf).astype(np.int32))
    return path, counts


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYLOSS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------------------
# The streamed index


def test_streamed_index_matches_the_whole_file_reader_for_any_chunk(tmp_path, cache):
    path, counts = write_geom_file(tmp_path / "g")
    whole = geom.read_geom_conformers(path)
    for chunk in (1, 7, 181, 10_000):
        index = geom.scan_geom_file(path, chunk_rows=chunk)
        assert index.counts.tolist() == counts == whole.num_atoms.tolist()
        assert index.starts.tolist() == whole.ptr[:-1].tolist() and index.ids.tolist() == whole.ids.tolist()
        assert index.n_rows == sum(counts) and sum(index.element_counts.values()) == sum(counts)
        assert set(index.element_counts) == set(geom.GEOM_ELEMENTS)


def test_index_is_cached_next_to_the_file_and_redone_when_the_file_changes(tmp_path, cache, monkeypatch):
    path, counts = write_geom_file(tmp_path / "g")
    first = geom.geom_index(path)
    stored = path.with_name("geom_drugs_30.npy.index-v1.npz")
    assert stored.is_file()

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index was not used")

    with monkeypatch.context() as m:
        m.setattr(geom, "scan_geom_file", no_scan)
        again = geom.geom_index(path)
    assert again.starts.tolist() == first.starts.tolist() and again.element_counts == first.element_counts
    path2, counts2 = write_geom_file(tmp_path / "g", n_molecules=4, seed=1)  # same name, other content
    assert path2 == path and geom.geom_index(path).counts.tolist() == counts2 != counts
    # a data folder that cannot take the index: the cache folder does
    path3, _ = write_geom_file(tmp_path / "h")
    path3.with_name("geom_drugs_30.npy.index-v1.npz").mkdir()  # a directory where the file would go
    geom.geom_index(path3)
    assert len(list((cache / "geom").glob("index-*-v1.npz"))) == 1


def test_scan_errors_name_the_row(tmp_path, cache):
    good = np.array([[0, 6, 0, 0, 0], [0, 1, 1, 0, 0], [1, 8, 0, 0, 0]], dtype=float)
    cases = {
        "fractional-id": (np.where(np.arange(15).reshape(3, 5) == 10, 1.5, good), "row 2: conformer id 1.5"),
        "helium": (np.where(np.arange(15).reshape(3, 5) == 6, 2, good), "row 1: atomic number 2.0 is not one of"),
        "nan": (np.where(np.arange(15).reshape(3, 5) == 13, np.nan, good), "row 2: non-finite position"),
        "non-contiguous": (np.concatenate([good, good[:1]]), "row 3: conformer id 0 reappears"),
        "shape": (good[:, :4], r"shape \(M, 5\)"),
    }
    for name, (rows, match) in cases.items():
        np.save(tmp_path / f"{name}.npy", rows)
        with pytest.raises(ValueError, match=match):
            geom.scan_geom_file(tmp_path / f"{name}.npy", chunk_rows=2)


# ---------------------------------------------------------------------------------------------------------------
# Split and batches


class _RecordingArray:
    """Wraps the memory-mapped array and records every row range read."""

    def __init__(self, array):
        self.array, self.reads = array, []

    def __getitem__(self, key):
        assert isinstance(key, slice), f"expected row slices, got {key!r}"
        self.reads.append((key.start, key.stop))
        return self.array[key]


def test_edm_split_and_batches_that_read_only_their_rows(tmp_path, cache):
    path, counts = write_geom_file(tmp_path / "g", n_molecules=8)
    streamed = geom.geom_drugs_datasets(path)
    whole = geom.load_geom_drugs(path)
    for name in ("train", "valid", "test"):
        assert streamed[name].ids.tolist() == whole[name].ids.tolist()
    assert sum(len(d) for d in streamed.values()) == len(counts) == 24
    train = streamed["train"]
    assert isinstance(train.array(), np.memmap)
    reference = MoleculeDataset(whole["train"], elements=geom.GEOM_ELEMENTS)
    recorder = _RecordingArray(train.array())
    train._array = recorder
    for idx in ([0, 5, 2], [len(train) - 1], list(range(len(train)))):
        recorder.reads.clear()
        batch, expected = train.get_batch(idx), reference.get_batch(idx)
        for key in expected:
            assert torch.equal(batch[key], expected[key]), key
        # padded to the batch's own largest conformer, and only the batch's rows were read
        assert batch["positions"].shape[1] == int(train.num_atoms[idx].max())
        starts, sizes = train.index.starts[train.conformers[idx]], train.num_atoms[idx].numpy()
        assert recorder.reads == [(int(s), int(s + c)) for s, c in zip(starts, sizes, strict=True)]
    item = train[3]
    assert item["one_hot"].shape == (int(train.num_atoms[3]), 16) and item["positions"].mean(0).abs().max() < 1e-5
    assert train.node_count_histogram() == reference.node_count_histogram()
    # max_atoms filters after the split; subset is seeded and keeps dataset order
    small = geom.geom_drugs_datasets(path, max_atoms=40)
    assert all(int(d.num_atoms.max()) <= 40 for d in small.values() if len(d))
    sub = train.subset(0.5, seed=3)
    assert len(sub) == len(train) // 2 and sub.ids.tolist() == reference.subset(0.5, seed=3).molecules.ids.tolist()
    # the memory map is not pickled (DDP / spawn workers reopen the file)
    train._array = None
    train.array()
    assert len(pickle.dumps(train)) < path.stat().st_size / 4
    assert torch.equal(pickle.loads(pickle.dumps(train)).get_batch([1])["positions"], train.get_batch([1])["positions"])


def test_missing_file_and_permutation_say_how_to_get_them(tmp_path, cache):
    with pytest.raises(geom.GeomDataMissing) as err:
        geom.geom_drugs_datasets(tmp_path / "nowhere" / "geom_drugs_30.npy")
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "nowhere" / "geom_drugs_30.npy") in text
    for fact in ("10.7910/DVN/JNGTDF", "build_geom_dataset.py --conformations 30", "geom_permutation.npy"):
        assert fact in text
    assert isinstance(err.value, FileNotFoundError)
    path, _ = write_geom_file(tmp_path / "g")
    path.with_name("geom_permutation.npy").unlink()
    with pytest.raises(geom.GeomDataMissing, match="geom_permutation.npy"):
        geom.geom_drugs_datasets(path)
    assert len(geom.geom_drugs_datasets(path, seed=0)["train"]) == 16  # a fresh split on request
    with pytest.raises(geom.GeomDataMissing, match=str(cache / "geom" / "geom_drugs_30.npy")):
        geom.geom_drugs_datasets()  # the default place


def test_generated_smoke_file(tmp_path, cache):
    path = geom.write_synthetic_geom(tmp_path / "s", n_molecules=5, conformers=2)
    splits = geom.geom_drugs_datasets(path)
    card = geom.geom_card(splits)
    assert card["file"]["n_conformers"] == 10 and card["file"]["max_atoms"] == 181
    assert set(card["file"]["element_counts"]) == {
        "H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi"
    }  # fmt: skip


def test_edm_checks_recognise_edm_s_statistics():
    sizes = np.array(list(geom.EDM_N_NODES), dtype=np.int32)
    counts = np.repeat(sizes, list(geom.EDM_N_NODES.values()))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    index = geom.GeomIndex(starts, counts, np.arange(len(counts)), int(counts.sum()), dict(geom.EDM_ATOM_TYPES))
    assert len(index) == 6_922_516 and index.n_rows == sum(geom.EDM_ATOM_TYPES.values()) == 322_877_623
    assert geom.edm_checks(index) == {"n_atoms_histogram_matches_edm": True, "element_counts_match_edm": True}


# ---------------------------------------------------------------------------------------------------------------
# Stability tables (hand-built molecules)


def _tetrahedral(center, bond, n):
    v = torch.tensor([[1.0, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]) / math.sqrt(3)
    return center + bond * v[:n]


def methanethiol() -> tuple[torch.Tensor, torch.Tensor]:
    """CH3-SH: C-S 1.82, S-H 1.34, C-H 1.09 Angstrom (S has valence 2)."""
    theta, turns = math.radians(109.5), [math.radians(a) for a in (0, 120, 240)]
    hs = [[1.09 * math.sin(theta) * math.cos(p), 1.09 * math.sin(theta) * math.sin(p), 1.09 * math.cos(theta)]
          for p in turns]  # fmt: skip
    a, p = math.radians(96), math.radians(60)  # C-S-H angle, staggered
    h_s = [1.34 * math.sin(a) * math.cos(p), 1.34 * math.sin(a) * math.sin(p), 1.82 - 1.34 * math.cos(a)]
    pos = torch.tensor([[0.0, 0, 0], [0, 0, 1.82], *hs, h_s])
    return pos, torch.tensor([6, 16, 1, 1, 1, 1])


def ammonium() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([torch.zeros(1, 3), _tetrahedral(torch.zeros(3), 1.01, 4)]), torch.tensor([7, 1, 1, 1, 1])


def test_edm_geom_tables_are_edm_s_numbers_under_a_geom_name():
    assert torch.equal(EDM_GEOM_BOND_TABLE.thresholds(), EDM_BOND_TABLE.thresholds())
    assert EDM_GEOM_BOND_TABLE.key == "edm-geom@1" and EDM_GEOM_VALENCES.key == "edm-geom@1"
    assert dict(EDM_GEOM_VALENCES.allowed) == dict(EDM_VALENCES.allowed) and len(EDM_GEOM_VALENCES.allowed) == 16
    assert {"Al", "As", "Hg", "Bi", "B"} <= set(EDM_GEOM_VALENCES.allowed)
    assert EDM_GEOM_TABLES.validity_orders == "single" and GEOM_REVISITED_TABLES.validity_orders == "inferred"
    assert list(STABILITY_TABLES) == ["edm-v1", "edm-geom-v1", "geom-revisited-v1"]
    # C=S is listed under C only in EDM's dictionaries; EDM's GEOM lookup sorts the pair, as our symmetric table
    thr = EDM_GEOM_BOND_TABLE.thresholds()
    assert float(thr[1, 6, 16]) == float(thr[1, 16, 6]) == 165.0


def test_thiol_sulfur_edm_requires_four_bonds_revisited_allows_two():
    pos, z = methanethiol()
    assert atom_stability(pos, z, valence_table=EDM_GEOM_VALENCES).tolist() == [True, False, True, True, True, True]
    assert bool(molecule_stability(pos, z, valence_table=GEOM_REVISITED_VALENCES))


def test_charged_atoms_are_allowed_by_the_revisited_table():
    pos, z = ammonium()  # N with four bonds: only N+ has valence 4
    assert not bool(molecule_stability(pos, z, valence_table=EDM_GEOM_VALENCES))
    assert bool(molecule_stability(pos, z, valence_table=GEOM_REVISITED_VALENCES))  # charges unknown: any listed
    orders = torch.zeros(5, 5)
    orders[0, 1:] = orders[1:, 0] = 1
    neutral, plus = torch.zeros(5, dtype=torch.long), torch.tensor([1, 0, 0, 0, 0])
    assert (
        graph_atom_stability(orders, z, formal_charges=neutral, valence_table=GEOM_REVISITED_VALENCES)[0].item()
        is False
    )
    assert graph_atom_stability(orders, z, formal_charges=plus, valence_table=GEOM_REVISITED_VALENCES).all()
    assert not graph_atom_stability(orders, z, formal_charges=plus, valence_table=EDM_GEOM_VALENCES)[0]  # neutral only


def _aromatic_ring(heteroatom: int | None = None, nh: bool = False):
    """Benzene (or pyridine / pyrrole-like: atom 0 replaced) as an explicit graph with aromatic bonds 1.5."""
    n = 12
    orders = torch.zeros(n, n)
    z = torch.tensor([6] * 6 + [1] * 6)
    for k in range(6):
        orders[k, (k + 1) % 6] = orders[(k + 1) % 6, k] = AROMATIC
        orders[k, k + 6] = orders[k + 6, k] = 1
    if heteroatom is not None:
        z[0] = heteroatom
        if not nh:
            orders[0, 6] = orders[6, 0] = 0
            z[6] = 0  # that hydrogen is gone (padding)
    return orders, z


def test_aromatic_bonds_count_one_and_a_half():
    orders, z = _aromatic_ring()
    assert graph_atom_stability(orders, z, valence_table=GEOM_REVISITED_VALENCES).all()  # C: 1.5 + 1.5 + 1 = 4
    orders, z = _aromatic_ring(7)  # pyridine N: 1.5 + 1.5 = 3
    mask = z > 0
    stable = graph_atom_stability(orders, z, mask=mask, valence_table=GEOM_REVISITED_VALENCES)
    assert stable[mask].all()
    orders, z = _aromatic_ring(7, nh=True)  # pyrrole-like N-H: 1.5 + 1.5 + 1 = 4, allowed only as N+
    charges = torch.zeros(12, dtype=torch.long)
    assert not graph_atom_stability(orders, z, formal_charges=charges, valence_table=GEOM_REVISITED_VALENCES)[0]
    assert graph_atom_stability(orders, z, valence_table=GEOM_REVISITED_VALENCES)[0]
    # a carbon with three aromatic bonds (4.5) is never stable; EDM's integer table rejects any fraction
    orders, z = _aromatic_ring()
    orders[0, 6] = orders[6, 0] = 0
    orders[0, 3] = orders[3, 0] = AROMATIC
    assert not graph_atom_stability(orders, z, valence_table=GEOM_REVISITED_VALENCES)[0]
    assert not graph_atom_stability(orders, z, valence_table=EDM_GEOM_VALENCES)[0]


def test_revisited_table_contents():
    lookup = GEOM_REVISITED_VALENCES.lookup()  # [z, charge + 4, 2 * valence]
    assert lookup[16, 4].nonzero().flatten().tolist() == [4, 6, 12]  # S neutral: 2, 3, 6
    assert lookup[7, 2].nonzero().flatten().tolist() == [2]  # N(-2): 1
    assert lookup[5, 3].nonzero().flatten().tolist() == [8]  # B(-1): 4
    for z in (13, 33, 80):  # Al, As, Hg are not in the table: never stable
        assert not bool(lookup[z].any())
    assert GEOM_REVISITED_VALENCES.key == "geom-revisited@1" and "f988bc2" in GEOM_REVISITED_VALENCES.source


def test_metrics_name_the_table_and_edm_geom_validity_uses_single_bonds():
    pytest.importorskip("rdkit")
    from rdkit import Chem

    cc = 1.33
    dx, dy = 1.09 * math.cos(math.pi / 3), 1.09 * math.sin(math.pi / 3)
    ethene = [[-cc / 2, 0, 0], [cc / 2, 0, 0], [-cc / 2 - dx, dy, 0], [-cc / 2 - dx, -dy, 0]]
    ethene += [[cc / 2 + dx, dy, 0], [cc / 2 + dx, -dy, 0]]
    pos, z = torch.tensor([ethene]), torch.tensor([[6, 6, 1, 1, 1, 1]])
    results = {}
    for tables in STABILITY_TABLES.values():
        metric = MoleculeMetrics(tables=tables)
        metric.update(pos, z)
        results[tables.name] = (metric.compute(), next(iter(metric.smiles_counts)))
    assert {k: r["stability_table"] for k, (r, _) in results.items()} == {k: k for k in STABILITY_TABLES}
    assert results["edm-geom-v1"][0]["bond_table"] == "edm-geom@1"
    assert results["geom-revisited-v1"][0]["valence_table"] == "geom-revisited@1"
    assert all(r["molecule_stability"] == 1.0 and r["validity"] == 1.0 for r, _ in results.values())
    double = [b.GetBondTypeAsDouble() for b in Chem.MolFromSmiles(results["edm-v1"][1]).GetBonds()]
    single = [b.GetBondTypeAsDouble() for b in Chem.MolFromSmiles(results["edm-geom-v1"][1]).GetBonds()]
    assert 2.0 in double and 2.0 not in single  # EDM's GEOM molecules are built with single bonds only
    assert MoleculeMetrics().compute()["stability_table"] == "edm-v1"
    with pytest.raises(ValueError, match="different bond or valence tables"):
        MoleculeMetrics(tables=EDM_GEOM_TABLES).merge(MoleculeMetrics(tables=GEOM_REVISITED_TABLES))


# ---------------------------------------------------------------------------------------------------------------
# Training and the command line


def _cli(args: list[str]) -> tuple[int, str, str]:
    from energyloss.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = int(exc.code)
    return code, out.getvalue(), err.getvalue()


SMOKE = ["run", "qm9", "--preset", "smoke", "--data", "geom-drugs", "--batch-size", "4", "--epochs", "0.5"]
SMOKE += ["--eval-every", "0.25", "--n-eval-samples", "4", "--sampling-steps", "3", "--no-progress"]


def test_cli_trains_on_a_generated_geom_file(tmp_path, cache):
    path, _ = write_geom_file(tmp_path / "g", n_molecules=6)
    out = tmp_path / "run"
    code, _, err = _cli([*SMOKE, "--geom-path", str(path), "--losses", "mse,energy:exp", "--out", str(out)])
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stability_table"] == "edm-geom-v1" and "GEOM-Drugs train split (16 conformers" in metrics["data"]
    records = metrics["records"]
    assert [r["loss"] for r in records] == ["mse", "mse", "energy:exp", "energy:exp"]
    assert all(r["stability_table"] == "edm-geom-v1" and r["novelty"] is None for r in records)
    config = json.loads((out / "mse" / "config.json").read_text())
    assert config["elements"] == list(geom.GEOM_ELEMENTS) and config["include_charges"] is False
    assert config["n_train"] == 16 and config["steps_per_epoch"] == 4
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GEOM-Drugs diffusion") and "Stability table: edm-geom-v1" in summary
    from energyloss.experiments.molecules.data import load_molecules

    samples = load_molecules(out / "energy-exp" / "samples.npz")
    assert len(samples) == 4 and set(samples.atomic_numbers.tolist()) <= set(geom.GEOM_ELEMENTS)
    code, _, err = _cli(  # --stability-table switches the protocol
        [*SMOKE, "--geom-path", str(path), "--loss", "mse", "--stability-table", "geom-revisited-v1"]
        + ["--out", str(tmp_path / "r3")]
    )
    assert code == 0, err
    records = json.loads((tmp_path / "r3" / "metrics.json").read_text())["records"]
    assert {r["stability_table"] for r in records} == {"geom-revisited-v1"}


def test_cli_missing_geom_file_is_one_line_and_makes_no_run_folder(tmp_path, cache):
    missing = tmp_path / "absent" / "geom_drugs_30.npy"
    code, _, err = _cli([*SMOKE, "--geom-path", str(missing), "--loss", "mse", "--out", str(tmp_path / "run")])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(missing) in lines[0] and "10.7910/DVN/JNGTDF" in lines[0]
    assert not (tmp_path / "run").exists()


def test_data_card_of_a_generated_file(tmp_path, cache):
    path, counts = write_geom_file(tmp_path / "g", n_molecules=6)
    code, out, err = _cli(["data", "geom-drugs", str(path), "--summary"])
    assert code == 0, err
    card = json.loads(out)
    assert card["dataset"] == "geom-drugs"
    assert [card[s]["n_molecules"] for s in ("train", "valid", "test")] == [16, 1, 1]
    assert card["file"] == {
        "path": str(path),
        "n_rows": sum(counts),
        "n_conformers": 18,
        "max_atoms": 181,
        "element_counts": card["file"]["element_counts"],
    }
    assert sum(card["file"]["element_counts"].values()) == sum(counts) and card["split"]["seed"] is None
    assert card["edm_checks"] == {"n_atoms_histogram_matches_edm": False, "element_counts_match_edm": False}
    code, out, _ = _cli(["data", "geom-drugs", str(path)])
    assert code == 0 and out.startswith("GEOM-Drugs ready:") and "train 16" in out
    code, _, err = _cli(["data", "geom-drugs", str(tmp_path / "none.npy")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(tmp_path / "none.npy") in err


def test_paper_geom_preset():
    from energyloss.experiments.molecules.registry import resolve_hyperparameters

    code, out, err = _cli(["run", "qm9", "--preset", "paper-geom", "--print-config"])
    assert code == 0, err
    cfg = json.loads(out)["config"]
    assert (cfg["data"], cfg["model"], cfg["n_layers"], cfg["hidden_nf"], cfg["batch_size"], cfg["epochs"]) == (
        "geom-drugs",
        "gdm-aug",
        4,
        256,
        128,
        13.0,
    )
    assert cfg["losses"] == ["mse", "energy:exp", "sparse_energy:inverse"] and cfg["optimizer"] == "adam"
    assert cfg["stability_table"] == "auto" and cfg["geom_path"] is None
    table6 = [resolve_hyperparameters("gdm-aug", s, lr=None, position_weight=None) for s in cfg["losses"]]
    assert table6 == [(1e-3, 1.5), (4e-4, 0.05), (7e-4, 0.05)]
    code, _, err = _cli(["run", "qm9", "--preset", "paper", "--data", "geom-drugs", "--print-config"])
    assert code == 2 and "--preset paper-geom" in err and len(err.strip().splitlines()) == 1


def test_two_process_ddp_on_a_geom_file_matches_one_process(tmp_path, cache):
    from energyloss.experiments.molecules import train as T

    path, _ = write_geom_file(tmp_path / "g", n_molecules=6, max_atoms=24)
    cfg = T.QM9Config(
        data="geom-drugs",
        geom_path=str(path),
        hidden_nf=16,
        n_layers=2,
        diffusion_steps=20,
        batch_size=4,
        epochs=0.5,  # 16 conformers / 4 = 4 steps per epoch -> 2 steps of a global batch of 4
        ema_decay=0.9,
        eval_every=100.0,
        n_eval_samples=6,
        eval_batch_size=3,
        sampling_steps=3,
        novelty=False,
        checkpoint_every=1,
        device="cpu",
        threads=1,
    ).validate()
    geom.geom_index(path)  # build the index once (the ranks would each scan the file otherwise)
    T.train_model(cfg, "energy:exp", tmp_path / "single", show_progress=False)
    torch.multiprocessing.spawn(ddp_train_worker, args=(2, free_port(), str(tmp_path / "ddp"), cfg), nprocs=2)
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 2
    lr = json.loads((tmp_path / "single" / "config.json").read_text())["lr"]
    for name, value in a["model"].items():
        other = b["model"][name]
        if name == "dynamics.out.bias":  # exactly-zero gradients: Adam turns rounding noise into steps <= lr
            torch.testing.assert_close(other[:3], value[:3], rtol=0, atol=2 * lr)
            other, value = other[3:], value[3:]
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b["records"][-1]["train_loss"], a["records"][-1]["train_loss"], rtol=1e-5, atol=0)
    assert b["records"][-1]["n_samples"] == 6 and b["records"][-1]["stability_table"] == "edm-geom-v1"
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2 and config["elements"] == list(geom.GEOM_ELEMENTS)


def test_training_set_of_a_geom_config(tmp_path, cache):
    from energyloss.experiments.molecules.config import QM9Config
    from energyloss.experiments.molecules.datasets import data_settings, load_training_set, stability_tables

    path, _ = write_geom_file(tmp_path / "g", n_molecules=6)
    cfg = QM9Config(data="geom-drugs", geom_path=str(path), max_molecules=5, seed=1)
    ds = load_training_set(cfg)
    assert isinstance(ds, geom.GeomDrugsDataset) and len(ds) == 5 and ds.elements == geom.GEOM_ELEMENTS
    assert stability_tables(cfg).name == "edm-geom-v1" and not data_settings("geom-drugs").include_charges
    assert stability_tables(dataclasses.replace(cfg, data="synthetic")).name == "edm-v1"
    assert len(load_training_set(dataclasses.replace(cfg, max_molecules=None, dataset_frac=0.5))) == 8
