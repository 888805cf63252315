"""QM9 / GEOM data: readers, EDM's split, the verified cache, batching and file formats.

Tests never read the real qm9pack data: they use synthetic CSV files written here and a 40-molecule excerpt in
tests/data/qm9pack_excerpt.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from energyloss.experiments.molecules import data, data_cli, geom, qm9
from energyloss.experiments.molecules.data import (
    ELEMENT_SYMBOLS,
    MoleculeDataset,
    Molecules,
    batch_padded,
    batch_ragged,
    collate_padded,
    collate_ragged,
    load_molecules,
    node_count_histogram,
    sample_node_counts,
    save_molecules,
)

EXCERPT = Path(__file__).parent / "data" / "qm9pack_excerpt"
SYMBOLS = ("H", "C", "N", "O", "F")


def synthetic_qm9(rng: np.random.Generator, n: int = 40) -> list[tuple[int, list[str], np.ndarray]]:
    """``n`` random molecules with distinct QM9-like indices, in random order."""
    indices = rng.choice(np.arange(1, 500), size=n, replace=False)
    out = []
    for index in indices:
        k = int(rng.integers(2, 9))
        out.append((int(index), [SYMBOLS[i] for i in rng.integers(0, 5, size=k)], rng.normal(size=(k, 3)) * 2))
    return out


def write_qm9pack_csv(folder: Path, molecules, *, parts: int = 2) -> Path:
    """Write molecules in the qm9pack CSV layout (quoted lists, 10 decimals), spread over ``parts`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "XYZ_file,Index,SMILES,N_atoms,Elements,XYZ_Ang,HOMO_au\n"
    chunks = np.array_split(np.arange(len(molecules)), parts)
    for p, chunk in enumerate(chunks, start=1):
        lines = [header]
        for i in chunk:
            index, symbols, xyz = molecules[i]
            elements = "[" + ",".join(f"'{s}'" for s in symbols) + "]"
            coords = "[" + ",".join("[" + ",".join(f"{v:.10f}" for v in row) + "]" for row in xyz) + "]"
            lines.append(f'"dsgdb9nsd_{index:06d}.xyz",{index},"C",{len(symbols)},"{elements}","{coords}",-0.25\n')
        (folder / f"qm9_part{p}.csv").write_text("".join(lines))
    return folder


@pytest.fixture
def synthetic(tmp_path):
    mols = synthetic_qm9(np.random.default_rng(0))
    return mols, write_qm9pack_csv(tmp_path / "src", mols)


# ---------------------------------------------------------------------------------------------------------------
# Readers


def test_read_qm9_csv_sorts_by_index_and_parses(synthetic):
    mols, folder = synthetic
    got = qm9.read_qm9_csv(folder, progress=False)
    expected = sorted(mols, key=lambda m: m[0])
    assert got.ids.tolist() == [m[0] for m in expected]
    for i, (_, symbols, xyz) in enumerate(expected):
        pos, z = got.molecule(i)
        assert [ELEMENT_SYMBOLS[int(a)] for a in z] == symbols
        assert pos.dtype == torch.float32
        torch.testing.assert_close(pos, torch.tensor(np.round(xyz, 10), dtype=torch.float32))


def test_read_qm9_csv_reports_inconsistent_rows(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "qm9_part1.csv").write_text(
        'XYZ_file,Index,N_atoms,Elements,XYZ_Ang\n"a.xyz",1,3,"[\'C\',\'H\']","[[0,0,0],[1,0,0]]"\n'
    )
    with pytest.raises(ValueError, match=r"qm9_part1.csv:2: N_atoms=3 but 2 elements"):
        qm9.read_qm9_csv(folder, progress=False)
    with pytest.raises(FileNotFoundError):
        qm9.read_qm9_csv(tmp_path / "nowhere", progress=False)


def test_read_real_qm9pack_excerpt():
    mols = qm9.read_qm9_csv(EXCERPT, progress=False)
    assert len(mols) == 40
    assert mols.ids[0] == 1 and bool((mols.ids[1:] > mols.ids[:-1]).all())
    pos, z = mols.molecule(0)  # QM9 molecule 1 is methane
    assert z.tolist() == [6, 1, 1, 1, 1]
    d = (pos[1:] - pos[0]).norm(dim=-1)
    torch.testing.assert_close(d, torch.full((4,), 1.0919), atol=2e-3, rtol=0)
    assert int(mols.num_atoms.max()) <= qm9.MAX_ATOMS


def test_qm9pack_dir_is_found_without_import_or_reports_the_extra(monkeypatch):
    monkeypatch.setattr(qm9.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"energyloss\[qm9\]"):
        qm9.qm9pack_data_dir()


def _xyz_block(index: int, symbols, xyz) -> str:
    lines = [str(len(symbols)), f"gdb {index}\t157.7\t157.7\t157.7\t0.\t13.21"]
    for s, (x, y, z) in zip(symbols, xyz, strict=True):
        lines.append(f"{s}\t{x:.10f}\t{y:.10f}\t{z:.6f}*^0\t-0.5")
    lines += ["1341.3\t1562.7", "C\tC", "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4"]
    return "\n".join(lines) + "\n"


def test_read_gdb9_tarball_drops_excluded_and_matches_csv(tmp_path):
    mols = synthetic_qm9(np.random.default_rng(1), n=6)
    tar_path = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(tar_path, "w:bz2") as archive:
        for index, symbols, xyz in mols:
            body = _xyz_block(index, symbols, xyz).encode()
            info = tarfile.TarInfo(f"dsgdb9nsd_{index:06d}.xyz")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    excluded = mols[2][0]
    (tmp_path / "uncharacterized.txt").write_text(f"header line\n  Index   Ecalc\n  {excluded}  -1.0\n\nfooter 1\n")
    got = qm9.read_gdb9_tarball(tar_path, tmp_path / "uncharacterized.txt", progress=False)
    kept = sorted((m for m in mols if m[0] != excluded), key=lambda m: m[0])
    assert got.ids.tolist() == [m[0] for m in kept]
    csv_mols = qm9.read_qm9_csv(write_qm9pack_csv(tmp_path / "csv", kept, parts=1), progress=False)
    torch.testing.assert_close(got.positions, csv_mols.positions)
    assert torch.equal(got.atomic_numbers, csv_mols.atomic_numbers)


def test_download_reports_checksum_failure_without_network(tmp_path):
    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    calls = []

    def opener(url, timeout):
        calls.append(url)
        return FakeResponse(b"not the archive")

    with pytest.raises(qm9.DownloadError, match=r"checksum mismatch.*energyloss\[qm9\]"):
        qm9.download_qm9_raw(tmp_path, retries=0, opener=opener)
    assert calls == ["https://ndownloader.figshare.com/files/3195389"]
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.bz2"))


# ---------------------------------------------------------------------------------------------------------------
# Split


def test_split_recipe_sizes_and_equivalence_with_edm_calls():
    splits = qm9.split_indices(qm9.N_QM9)
    assert {k: len(v) for k, v in splits.items()} == {"train": 100_000, "valid": 17_748, "test": 13_083}
    assert qm9.N_QM9 == 130_831 and 13_083 == int(0.1 * 130_831)
    allidx = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(allidx), np.arange(qm9.N_QM9))
    for v in splits.values():
        assert np.all(np.diff(v) > 0)
    # EDM / Cormorant: np.random.seed(0); np.random.permutation(N); split train, valid, test in that order.
    # The legacy global-state calls are the point here: they are the exact calls EDM makes.
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(0)  # noqa: NPY002
        perm = np.random.permutation(qm9.N_QM9)  # noqa: NPY002
    finally:
        np.random.set_state(state)  # noqa: NPY002
    assert np.array_equal(splits["train"], np.sort(perm[:100_000]))
    assert np.array_equal(splits["valid"], np.sort(perm[100_000:117_748]))
    assert np.array_equal(splits["test"], np.sort(perm[117_748:]))


def test_split_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_train"):
        qm9.split_indices(100, n_train=95)


# ---------------------------------------------------------------------------------------------------------------
# Cache


def _prepare(tmp_path, folder):
    return qm9.prepare_qm9(
        cache_dir=tmp_path / "cache", source="qm9pack", source_dir=folder, n_train=20, progress=False
    )


def _load(tmp_path, folder, **kw):
    return qm9.load_qm9(
        cache_dir=tmp_path / "cache", source="qm9pack", source_dir=folder, n_train=20, progress=False, **kw
    )


def test_cache_round_trip_and_split(tmp_path, synthetic):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    manifest = qm9.verify_cache(path)
    assert manifest["n_molecules"] == {"train": 20, "valid": 16, "test": 4}
    assert manifest["canonical_qm9"] is False
    splits = _load(tmp_path, folder)
    allmols = qm9.read_qm9_csv(folder, progress=False)
    idx = qm9.split_indices(40, n_train=20)
    for name in qm9.SPLITS:
        ref = allmols.select(torch.from_numpy(idx[name]))
        assert torch.equal(splits[name].ids, ref.ids)
        assert torch.equal(splits[name].positions, ref.positions)
        assert torch.equal(splits[name].atomic_numbers, ref.atomic_numbers)


def test_missing_cache_is_built(tmp_path, synthetic):
    _, folder = synthetic
    assert not qm9.cache_path(tmp_path / "cache").exists()
    splits = _load(tmp_path, folder, on_invalid="raise")  # missing is not an error: it is built
    assert len(splits["train"]) == 20
    qm9.verify_cache(qm9.cache_path(tmp_path / "cache"))


def test_unwritable_cache_folder_fails_before_the_build(tmp_path, synthetic, monkeypatch):
    _, folder = synthetic
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(qm9, "_build", lambda *a: pytest.fail("built before checking the cache folder"))
    with pytest.raises(OSError, match=r"cannot create the cache folder .*file.qm9"):
        qm9.prepare_qm9(cache_dir=blocker, source="qm9pack", source_dir=folder, n_train=20, progress=False)


def test_corrupt_cache_is_reported_or_rebuilt(tmp_path, synthetic):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    good = _load(tmp_path, folder)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(qm9.CacheError, match="corrupt: SHA-256"):
        qm9.verify_cache(path)
    with pytest.raises(qm9.CacheError, match="corrupt"):
        _load(tmp_path, folder, on_invalid="raise")
    with pytest.warns(UserWarning, match="rebuilt: corrupt"):
        again = _load(tmp_path, folder)
    assert torch.equal(again["train"].positions, good["train"].positions)
    qm9.verify_cache(path)


def test_partial_and_truncated_cache_detected(tmp_path, synthetic):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    manifest = path.with_suffix(".json")
    saved = manifest.read_text()
    manifest.unlink()
    with pytest.raises(qm9.CacheError, match="partial"):
        qm9.verify_cache(path)
    manifest.write_text(saved)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(qm9.CacheError, match="corrupt: .* 100 bytes"):
        qm9.verify_cache(path)
    with pytest.warns(UserWarning, match="rebuilt"):
        assert len(_load(tmp_path, folder)["valid"]) == 16


def test_incompatible_or_inconsistent_manifest_detected(tmp_path, synthetic):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    mpath = path.with_suffix(".json")
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(qm9.CacheError, match="incompatible"):
        qm9.verify_cache(path)
    mpath.write_text(json.dumps({**manifest, "n_molecules": {"train": 21, "valid": 15, "test": 4}}))
    with pytest.raises(qm9.CacheError, match="does not match the manifest"):
        _load(tmp_path, folder, on_invalid="raise")
    mpath.write_text("{not json")
    with pytest.raises(qm9.CacheError, match="unreadable"):
        qm9.verify_cache(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("n_molecules"),
        lambda m: m.pop("n_atoms"),
        lambda m: m["n_molecules"].pop("test"),
        lambda m: m.update(n_atoms="many"),
        lambda m: m.pop("sha256"),
        lambda m: m.update(split={}),
    ],
    ids=["no-n_molecules", "no-n_atoms", "no-test-count", "bad-n_atoms", "no-sha256", "no-n_train"],
)
def test_manifest_missing_fields_is_corrupt_and_rebuilt(tmp_path, synthetic, change):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    mpath = path.with_suffix(".json")
    manifest = json.loads(mpath.read_text())
    change(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(qm9.CacheError, match=rf"corrupt: manifest {re.escape(str(mpath))} lacks or has malformed"):
        qm9.verify_cache(path)
    with pytest.raises(qm9.CacheError, match="lacks or has malformed"):
        _load(tmp_path, folder, on_invalid="raise")
    with pytest.warns(UserWarning, match=rf"rebuilt: corrupt: manifest {re.escape(str(mpath))}"):
        splits = _load(tmp_path, folder)
    assert len(splits["test"]) == 4
    assert qm9.verify_cache(path)["n_molecules"] == {"train": 20, "valid": 16, "test": 4}


def test_stale_temporary_cache_files_are_removed(tmp_path, synthetic):
    _, folder = synthetic
    path = _prepare(tmp_path, folder)
    dead = path.with_name(f"{path.name}.tmp-999999999")  # its writer is gone
    live = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # a live writer: kept
    old = path.with_name(f"qm9-train-smiles-v1.json.tmp-{os.getpid()}")  # live pid but a day old
    for p in (dead, live, old):
        p.write_bytes(b"partial")
    stale = time.time() - qm9.STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (stale, stale))
    _load(tmp_path, folder, on_invalid="raise")
    assert not dead.exists() and not old.exists() and live.exists()
    live.unlink()
    dead.write_bytes(b"partial")
    _prepare(tmp_path, folder)  # preparing cleans up too
    assert not dead.exists()


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYLOSS_CACHE", str(tmp_path / "env-cache"))
    assert qm9.default_cache_dir() == tmp_path / "env-cache"
    assert qm9.cache_path() == tmp_path / "env-cache" / "qm9" / "qm9-v1.pt"
    assert qm9.cache_path(tmp_path / "flag") == tmp_path / "flag" / "qm9" / "qm9-v1.pt"
    monkeypatch.delenv("ENERGYLOSS_CACHE")
    assert qm9.default_cache_dir() == Path.home() / ".cache" / "energyloss"


def test_qm9_dataset_and_dataset_frac(tmp_path, synthetic):
    _, folder = synthetic
    splits = _load(tmp_path, folder)
    full = qm9.qm9_dataset("train", splits=splits)
    assert len(full) == 20 and full.elements == qm9.QM9_ELEMENTS
    half = qm9.qm9_dataset("train", splits=splits, dataset_frac=0.5, seed=3)
    assert len(half) == 10
    assert torch.equal(
        half.molecules.ids, qm9.qm9_dataset("train", splits=splits, dataset_frac=0.5, seed=3).molecules.ids
    )
    assert set(half.molecules.ids.tolist()) <= set(full.molecules.ids.tolist())
    with pytest.raises(ValueError, match="split"):
        qm9.qm9_dataset("validation", splits=splits)


def test_card_and_edm_checks():
    mols = Molecules.from_list([(torch.zeros(3, 3), torch.tensor([8, 1, 1])), (torch.zeros(1, 3), torch.tensor([6]))])
    card = qm9.dataset_card({"train": mols})
    assert card == {
        "train": {"n_molecules": 2, "n_atoms_histogram": {1: 1, 3: 1}, "element_counts": {"H": 2, "C": 1, "O": 1}}
    }
    assert not any(qm9.edm_checks(card).values())
    edm_like = {
        "train": {
            "n_molecules": 100_000,
            "n_atoms_histogram": {str(k): v for k, v in qm9.EDM_TRAIN_N_ATOMS_HISTOGRAM.items()},  # as after JSON
            "element_counts": dict(qm9.EDM_TRAIN_ELEMENT_COUNTS),
        },
        "valid": {"n_molecules": 17_748},
        "test": {"n_molecules": 13_083},
    }
    assert all(qm9.edm_checks(edm_like).values())
    assert sum(qm9.EDM_TRAIN_N_ATOMS_HISTOGRAM.values()) == 100_000


def test_data_cli_summary_prints_the_card(tmp_path, synthetic, capsys):
    from energyloss.cli import main

    _, folder = synthetic
    argv = ["data", "qm9", "--summary", "--cache-dir", str(tmp_path / "c"), "--source-dir", str(folder)]
    assert main([*argv, "--n-train", "20", "--no-progress"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert [card[s]["n_molecules"] for s in qm9.SPLITS] == [20, 16, 4]
    assert sum(card["train"]["n_atoms_histogram"].values()) == 20
    assert set(card["train"]["element_counts"]) <= set(SYMBOLS)
    assert card["edm_checks"]["split_sizes_match_edm"] is False
    assert data_cli.DESCRIPTION


# ---------------------------------------------------------------------------------------------------------------
# Molecules store and batching


def random_molecules(seed: int = 0, n: int = 7) -> Molecules:
    g = torch.Generator().manual_seed(seed)
    mols = []
    for _ in range(n):
        k = int(torch.randint(1, 6, (1,), generator=g))
        z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (k,), generator=g)]
        mols.append((torch.randn(k, 3, generator=g) + 5.0, z))
    return Molecules.from_list(mols, ids=range(100, 100 + n))


def test_molecules_select_padded_round_trip():
    mols = random_molecules()
    pos, z, mask = mols.to_padded()
    assert pos.shape == (7, int(mols.num_atoms.max()), 3)
    assert bool((pos[~mask] == 0).all()) and bool((z[~mask] == 0).all())
    back = Molecules.from_padded(pos, z, mask, ids=mols.ids)
    assert torch.equal(back.positions, mols.positions) and torch.equal(back.atomic_numbers, mols.atomic_numbers)
    picked = mols.select([4, 1, 1])
    for k, i in enumerate([4, 1, 1]):
        for a, b in zip(picked.molecule(k), mols.molecule(i), strict=True):
            assert torch.equal(a, b)
    assert picked.ids.tolist() == [104, 101, 101]
    assert torch.equal(Molecules.concat(list(mols.chunks(3))).positions, mols.positions)


def test_molecules_validation_errors():
    with pytest.raises(ValueError, match=r"positions must have shape \(M, 3\)"):
        Molecules(torch.zeros(2, 2), torch.ones(2, dtype=torch.long), torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_atoms sums to 3"):
        Molecules(torch.zeros(2, 3), torch.ones(2, dtype=torch.long), torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="prefix"):
        Molecules.from_padded(torch.zeros(1, 3, 3), torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="pad_to"):
        random_molecules().to_padded(pad_to=1)


def test_padded_and_ragged_batches_agree_and_are_centred():
    mols = random_molecules()
    elements = (1, 6, 7, 8, 9)
    padded = batch_padded(mols, elements=elements)
    ragged = batch_ragged(mols, elements=elements)
    mask = padded["mask"]
    torch.testing.assert_close(padded["positions"][mask], ragged["positions"], atol=1e-6, rtol=0)
    assert torch.equal(padded["one_hot"][mask], ragged["one_hot"])
    assert torch.equal(padded["charges"][mask], ragged["atomic_numbers"].float())
    assert bool((padded["positions"][~mask] == 0).all()) and bool((padded["one_hot"][~mask] == 0).all())
    torch.testing.assert_close(padded["positions"].sum(1), torch.zeros(len(mols), 3), atol=1e-5, rtol=0)
    assert torch.equal(ragged["batch"], torch.repeat_interleave(torch.arange(len(mols)), mols.num_atoms))
    assert torch.equal(padded["one_hot"].argmax(-1)[mask], ragged["one_hot"].argmax(-1))
    assert torch.equal(torch.tensor(elements)[ragged["one_hot"].argmax(-1)], mols.atomic_numbers)
    with pytest.raises(ValueError, match=r"atomic numbers \[.*\] are not in elements"):
        batch_padded(mols, elements=(1, 6))


def test_collate_matches_vectorised_batches_and_dataloader():
    ds = MoleculeDataset(random_molecules(), elements=(1, 6, 7, 8, 9))
    idx = [3, 0, 6, 2]
    for layout, collate in (("padded", collate_padded), ("ragged", collate_ragged)):
        a, b = collate([ds[i] for i in idx]), ds.get_batch(idx, layout=layout)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=f"{layout}:{k}")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_ragged)
    assert sum(int(b["num_atoms"].sum()) for b in loader) == int(ds.molecules.num_atoms.sum())
    with pytest.raises(IndexError):
        ds[7]
    with pytest.raises(ValueError, match="layout"):
        ds.get_batch(idx, layout="dense")


def test_subset_fraction_is_seeded():
    ds = MoleculeDataset(random_molecules(n=50), elements=(1, 6, 7, 8, 9))
    a, b, c = ds.subset(0.3, seed=1), ds.subset(0.3, seed=1), ds.subset(0.3, seed=2)
    assert len(a) == 15 and torch.equal(a.molecules.ids, b.molecules.ids)
    assert not torch.equal(a.molecules.ids, c.molecules.ids)
    assert bool((a.molecules.ids[1:] > a.molecules.ids[:-1]).all())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            ds.subset(bad)


def test_node_count_histogram_and_sampling():
    hist = node_count_histogram(torch.tensor([3, 5, 5, 5]))
    assert hist == {3: 1, 5: 3}
    draws = sample_node_counts(hist, 20_000, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 5}
    assert abs(float((draws == 5).float().mean()) - 0.75) < 0.02
    with pytest.raises(ValueError, match="empty"):
        sample_node_counts({}, 3)


# ---------------------------------------------------------------------------------------------------------------
# File formats


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_sample_format_round_trip(tmp_path, suffix):
    mols = random_molecules()
    pos, z, mask = mols.to_padded()
    path = save_molecules(tmp_path / f"s{suffix}", pos, z, mask=mask)
    back = load_molecules(path)
    assert torch.equal(back.positions, mols.positions) and torch.equal(back.atomic_numbers, mols.atomic_numbers)


def test_sample_format_one_hot_variant_and_errors(tmp_path):
    mols = random_molecules()
    pos, z, mask = mols.to_padded()
    elements = np.array([1, 6, 7, 8, 9])
    one_hot = (z[..., None].numpy() == elements).astype(np.float32)
    np.savez(tmp_path / "oh.npz", positions=pos.numpy(), one_hot=one_hot, elements=elements, mask=mask.numpy())
    assert torch.equal(load_molecules(tmp_path / "oh.npz").atomic_numbers, mols.atomic_numbers)
    np.savez(tmp_path / "bad.npz", positions=pos.numpy())
    with pytest.raises(ValueError, match="atomic_numbers"):
        load_molecules(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", positions=pos.numpy(), atomic_numbers=z.numpy(), format=np.array("x"))
    with pytest.raises(ValueError, match="format"):
        load_molecules(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="unknown format"):
        (tmp_path / "m.cif").write_text("")
        load_molecules(tmp_path / "m.cif")


def test_read_xyz_and_sdf(tmp_path):
    text = "3\nwater\nO 0.0 0.0 0.0\nH 0.9572 0.0 0.0\n1 -0.24*^0 0.9266 0.0\n\n1\n\nC 1 2 3 extra\n"
    (tmp_path / "m.xyz").write_text(text)
    mols = load_molecules(tmp_path / "m.xyz")
    assert mols.num_atoms.tolist() == [3, 1] and mols.atomic_numbers.tolist() == [8, 1, 1, 6]
    torch.testing.assert_close(mols.positions[2], torch.tensor([-0.24, 0.9266, 0.0]))
    (tmp_path / "bad.xyz").write_text("3\nx\nO 0 0 0\n")
    with pytest.raises(ValueError, match="announces 3 atoms"):
        load_molecules(tmp_path / "bad.xyz")

    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(tmp_path / "m.sdf"))
    for smi in ("CO", "C#N"):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        writer.write(mol)
    writer.close()
    sdf = load_molecules(tmp_path / "m.sdf")
    assert sdf.num_atoms.tolist() == [6, 3] and sdf.atomic_numbers[:2].tolist() == [6, 8]


# ---------------------------------------------------------------------------------------------------------------
# GEOM-Drugs


def write_geom(path: Path, sizes, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for conf, n in enumerate(sizes):
        z = rng.choice(geom.GEOM_ELEMENTS, size=n)
        rows.append(np.column_stack([np.full(n, conf), z, rng.normal(size=(n, 3))]))
    data = np.concatenate(rows).astype(np.float64)
    np.save(path, data)
    return data


def test_geom_reader_and_edm_split(tmp_path):
    sizes = [3, 5, 2, 7, 4, 4, 6, 3, 5, 9]
    data = write_geom(tmp_path / "geom_drugs_30.npy", sizes)
    mols = geom.read_geom_conformers(tmp_path / "geom_drugs_30.npy")
    assert mols.num_atoms.tolist() == sizes and mols.ids.tolist() == list(range(10))
    torch.testing.assert_close(mols.positions, torch.tensor(data[:, 2:], dtype=torch.float32))
    perm = np.array([4, 9, 0, 1, 2, 3, 5, 6, 7, 8])
    np.save(tmp_path / "geom_permutation.npy", perm)
    splits = geom.load_geom_drugs(tmp_path / "geom_drugs_30.npy")
    assert splits["valid"].ids.tolist() == [4] and splits["test"].ids.tolist() == [9]
    assert splits["train"].ids.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    small = geom.load_geom_drugs(tmp_path / "geom_drugs_30.npy", max_atoms=4)
    assert small["train"].ids.tolist() == [0, 2, 5, 7] and small["test"].ids.tolist() == []
    seeded = geom.load_geom_drugs(tmp_path / "geom_drugs_30.npy", seed=0)
    assert sorted(sum((s.ids.tolist() for s in seeded.values()), [])) == list(range(10))


def test_geom_reader_errors(tmp_path):
    np.save(tmp_path / "bad_shape.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"shape \(M, 5\)"):
        geom.read_geom_conformers(tmp_path / "bad_shape.npy")
    rows = np.array([[0, 6, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=float)
    np.save(tmp_path / "noncontig.npy", rows)
    with pytest.raises(ValueError, match="contiguous"):
        geom.read_geom_conformers(tmp_path / "noncontig.npy")
    write_geom(tmp_path / "g.npy", [2, 3])
    with pytest.raises(ValueError, match="geom_permutation.npy"):
        geom.load_geom_drugs(tmp_path / "g.npy")
    with pytest.raises(ValueError, match="permutation of 0..1"):
        geom.geom_split(2, permutation=np.array([0, 0]))


# ---------------------------------------------------------------------------------------------------------------
# Bad records: one-line errors naming the file and record; what cannot be scored is screened out with a count

WATER = "3\nwater\nO 0.0 0.0 0.0\nH 0.9572 0.0 0.0\nH -0.24 0.9266 0.0\n"


def test_xyz_errors_name_file_line_and_record(tmp_path):
    cases = {
        "unknown-element": (WATER + "1\n\nQq 0 0 0\n", r":8: record 1: unknown element 'Qq'"),
        "negative-z": (WATER + "1\n\n-1 0 0 0\n", r":8: record 1: unknown element '-1'"),
        "z-too-large": (WATER + "1\n\n200 0 0 0\n", r":8: record 1: unknown element '200'"),
        "bad-float": (WATER + "1\n\nC 0 zero 0\n", r":8: record 1: could not convert"),
        "negative-count": (WATER + "-2\n\n", r":6: record 1: negative atom count -2"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / f"{name}.xyz"
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(path)) + match) as err:
            load_molecules(path)
        assert "\n" not in str(err.value)


def test_sample_file_errors_name_file_and_molecule(tmp_path):
    pos = torch.zeros(3, 4, 3)
    z = torch.tensor([[8, 1, 1, 0], [6, 1, -1, 0], [6, 6, 0, 0]])
    np.savez(tmp_path / "neg.npz", positions=pos.numpy(), atomic_numbers=z.numpy())
    with pytest.raises(ValueError, match=r"neg\.npz: molecule 1, atom 2: atomic number -1 is outside 1\.\.86"):
        load_molecules(tmp_path / "neg.npz")
    z_big = z.clone()
    z_big[1, 2] = 200
    np.savez(tmp_path / "big.npz", positions=pos.numpy(), atomic_numbers=z_big.numpy())
    with pytest.raises(ValueError, match=r"big\.npz: molecule 1, atom 2: atomic number 200 is outside"):
        load_molecules(tmp_path / "big.npz")
    mask = z_big > 0
    mask[2, 3] = True  # a real atom with Z = 0
    np.savez(tmp_path / "zero.npz", positions=pos.numpy(), atomic_numbers=z.abs().numpy(), mask=mask.numpy())
    with pytest.raises(ValueError, match=r"zero\.npz: molecule 2, atom 3: atomic number 0 is outside"):
        load_molecules(tmp_path / "zero.npz")
    holes = torch.tensor([[True, False, True, False]] * 3)
    ones = np.ones((3, 4), np.int64)
    np.savez(tmp_path / "holes.npz", positions=pos.numpy(), atomic_numbers=ones, mask=holes.numpy())
    with pytest.raises(ValueError, match=r"holes\.npz: molecule 0: mask must mark a prefix"):
        load_molecules(tmp_path / "holes.npz")
    np.savez(tmp_path / "shape.npz", positions=pos.numpy(), atomic_numbers=z.abs().numpy()[:, :3])
    with pytest.raises(ValueError, match=r"shape\.npz: atomic_numbers must have shape \(3, 4\)"):
        load_molecules(tmp_path / "shape.npz")
    good = save_molecules(tmp_path / "good.npz", pos, z.abs())
    raw = good.read_bytes()
    for name, content in (("trunc.npz", raw[: len(raw) // 2]), ("junk.npz", b"junk" * 50), ("junk.pt", b"junk")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name)) + r": cannot be read as a \.(npz|pt)"):
            load_molecules(tmp_path / name)
    # one-hot samples: an all-zero row is padding, not the first element
    one_hot = np.zeros((1, 3, 2), np.float32)
    one_hot[0, 0, 1] = one_hot[0, 1, 0] = 1
    np.savez(tmp_path / "oh.npz", positions=np.zeros((1, 3, 3)), one_hot=one_hot, elements=np.array([1, 6]))
    assert load_molecules(tmp_path / "oh.npz").atomic_numbers.tolist() == [6, 1]


def test_screening_excludes_empty_and_non_finite_with_record_numbers(tmp_path):
    nan_block = "2\nbroken\nC nan 0 0\nH 1.09 0 0\n"
    (tmp_path / "m.xyz").write_text("0\n\n" + WATER + "0\nempty\n\n" + nan_block + "1\n\nC inf 0 0\n0\n\n")
    screened = data.load_screened(tmp_path / "m.xyz")
    assert screened.n_records == 6 and len(screened.molecules) == 1
    assert screened.molecules.ids.tolist() == [1] and screened.molecules.num_atoms.tolist() == [3]
    assert screened.excluded == {"empty": [0, 2, 5], "non_finite_positions": [3, 4], "no_3d_coordinates": []}
    assert screened.summary() == (
        "5 of 6 records excluded, not scored: 3 empty (records 0, 2, 5); 2 non finite positions (records 3, 4)"
    )
    assert data.load_screened(tmp_path / "m.xyz", limit=2).excluded["empty"] == [0]
    assert len(load_molecules(tmp_path / "m.xyz")) == 6  # the plain reader keeps every record


def test_sdf_records_without_3d_coordinates(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(tmp_path / "m.sdf"))
    for smi, embed in (("CO", True), ("CCO", False), ("C#N", True)):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if embed:
            AllChem.EmbedMolecule(mol, randomSeed=0)
        else:
            AllChem.Compute2DCoords(mol)  # a 2-D depiction: z = 0, header flag 2D
        writer.write(mol)
    writer.close()
    with pytest.raises(ValueError, match=r"m\.sdf: record 1 has no 3-D coordinates"):
        load_molecules(tmp_path / "m.sdf")
    screened = data.load_screened(tmp_path / "m.sdf")
    assert screened.excluded["no_3d_coordinates"] == [1] and screened.molecules.ids.tolist() == [0, 2]
    assert screened.molecules.num_atoms.tolist() == [6, 3]
    dummy = Chem.MolFromSmiles("C*")
    AllChem.EmbedMolecule(dummy, randomSeed=0)
    writer = Chem.SDWriter(str(tmp_path / "dummy.sdf"))
    writer.write(dummy)
    writer.close()
    with pytest.raises(ValueError, match=r"dummy\.sdf: record 0, atom 1: atomic number 0 \(a dummy"):
        data.load_screened(tmp_path / "dummy.sdf")
