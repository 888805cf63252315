"""QM9 as used by EDM and the paper: read offline from the ``qm9pack`` wheel (or downloaded), split, cached.

**The data.** QM9 (Ramakrishnan et al. 2014) has 133,885 molecules; 3,054 of them failed the authors'
consistency check ("uncharacterized.txt") and are dropped, leaving 130,831 molecules of H, C, N, O, F with up
to 29 atoms, positions in Angstrom (B3LYP/6-31G(2df,p) geometries).

**Sources.**

- ``qm9pack`` (default, offline): the PyPI package by QM9's first author ships all 130,831 characterised
  molecules as CSV inside its wheel. ``import qm9pack`` fails with current setuptools (it imports
  ``pkg_resources``), so we never import it: :func:`qm9pack_data_dir` finds its folder with
  ``importlib.util.find_spec`` and :func:`read_qm9_csv` reads the ``qm9_part*.csv`` files (columns ``Index``,
  ``N_atoms``, ``Elements``, ``XYZ_Ang``) with the standard library.
- ``figshare`` (needs internet): the canonical archive ``dsgdb9nsd.xyz.tar.bz2`` (figshare file 3195389) and
  the exclusion list ``uncharacterized.txt`` (file 3195404), as EDM downloads them; :func:`download_qm9_raw`
  verifies their MD5 checksums and retries, :func:`read_gdb9_tarball` reads them.

Both give the same molecules in the same order (sorted by QM9 index).

**The split (EDM's, from Cormorant).** With the ``N = 130,831`` characterised molecules sorted by QM9 index::

    perm  = numpy.random.RandomState(0).permutation(N)   # same stream as np.random.seed(0); np.random.permutation
    n_train = 100_000; n_test = int(0.1 * N) = 13_083; n_valid = N - n_train - n_test = 17_748
    train = sorted(perm[:n_train]); valid = sorted(perm[n_train:n_train + n_valid]); test = sorted(rest)

Within a split, molecules stay in QM9-index order because EDM selects them by filtering the archive's
members in archive order. The training split reproduces the atom-count histogram and element counts EDM
ships in ``configs/datasets_config.py`` (:data:`EDM_TRAIN_N_ATOMS_HISTOGRAM`, :data:`EDM_TRAIN_ELEMENT_COUNTS`;
:func:`edm_checks` compares them).

**The cache.** :func:`prepare_qm9` writes ``<cache>/qm9/qm9-v1.pt`` (ragged float32 positions, uint8 atomic
numbers, per-split counts and QM9 indices; about 31 MB) and then a manifest ``qm9-v1.json`` with the file's
size and SHA-256 and the split sizes. :func:`load_qm9` checks the manifest, the checksum and the tensors'
consistency before using the cache; a missing, partial (no manifest) or corrupt cache (including a manifest
without a field the loader needs) is rebuilt (with a warning giving the path and the reason) or, with
``on_invalid="raise"``, reported as :class:`CacheError`. Temporary files left by a preparation that was killed
(``qm9-v1.pt.tmp-<pid>``) are removed on the next load (:func:`remove_stale_temporaries`). The cache folder
is ``--cache-dir``, else ``$ENERGYLOSS_CACHE``, else ``~/.cache/energyloss``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import re
import sys
import tarfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from energyloss.experiments import runs as _runs

from .data import MoleculeDataset, Molecules, atomic_number, element_counts, node_count_histogram

__all__ = [
    "CACHE_VERSION",
    "EDM_TRAIN_ELEMENT_COUNTS",
    "EDM_TRAIN_N_ATOMS_HISTOGRAM",
    "FIGSHARE_FILES",
    "N_EXCLUDED",
    "N_GDB9",
    "N_QM9",
    "N_TRAIN",
    "QM9_ELEMENTS",
    "SPLITS",
    "CacheError",
    "DownloadError",
    "cache_path",
    "dataset_card",
    "default_cache_dir",
    "download_qm9_raw",
    "edm_checks",
    "file_checksum",
    "load_qm9",
    "prepare_qm9",
    "qm9_dataset",
    "qm9_reference_smiles",
    "qm9pack_data_dir",
    "read_excluded_ids",
    "read_gdb9_tarball",
    "read_qm9_csv",
    "remove_stale_temporaries",
    "split_indices",
    "verify_cache",
]

#: Atomic numbers of QM9's elements (H, C, N, O, F): the one-hot columns, in EDM's order.
QM9_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)
N_GDB9 = 133_885
N_EXCLUDED = 3_054
N_QM9 = N_GDB9 - N_EXCLUDED  # 130,831
N_TRAIN = 100_000
SPLIT_SEED = 0
TEST_FRACTION = 0.1
MAX_ATOMS = 29
SPLITS: tuple[str, ...] = ("train", "valid", "test")
CACHE_FORMAT = "energyloss-qm9"
CACHE_VERSION = 1

# fmt: off
#: EDM's QM9 (with H) training-set atom-count histogram, from its ``configs/datasets_config.py``.
EDM_TRAIN_N_ATOMS_HISTOGRAM: dict[int, int] = {
    3: 1, 4: 4, 5: 5, 6: 9, 7: 16, 8: 49, 9: 124, 10: 362, 11: 807, 12: 1689, 13: 3060, 14: 5136, 15: 7796,
    16: 10644, 17: 13025, 18: 13364, 19: 13832, 20: 9482, 21: 9970, 22: 3393, 23: 4848, 24: 539, 25: 1506,
    26: 48, 27: 266, 29: 25,
}
# fmt: on
#: EDM's QM9 training-set atom counts per element (its ``atom_types``), same file.
EDM_TRAIN_ELEMENT_COUNTS: dict[str, int] = {"H": 923_537, "C": 635_559, "N": 101_476, "O": 140_202, "F": 2_323}

#: The canonical files on figshare (collection 978904): name -> (file id, size in bytes or None, MD5).
FIGSHARE_FILES: dict[str, tuple[int, int | None, str]] = {
    "dsgdb9nsd.xyz.tar.bz2": (3195389, 86_144_227, "ad1ebd51ee7f5b3a6e32e974e5d54012"),
    "uncharacterized.txt": (3195404, None, "a361887bacb427b8a0ce7903d92a53b4"),
}
FIGSHARE_URL = "https://ndownloader.figshare.com/files/{file_id}"


class CacheError(RuntimeError):
    """The QM9 cache is missing, partial, corrupt or from another format version."""


class DownloadError(RuntimeError):
    """A download failed after all retries, or its checksum did not match."""


# --------------------------------------------------------------------------------------------------------------
# Locations


def default_cache_dir() -> Path:
    """``$ENERGYLOSS_CACHE`` if set, else ``~/.cache/energyloss``."""
    env = os.environ.get("ENERGYLOSS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "energyloss"


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached tensor file ``<cache_dir>/qm9/qm9-v1.pt`` (its manifest: same name, ``.json``)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "qm9" / f"qm9-v{CACHE_VERSION}.pt"


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` package, found without importing it."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline QM9 source needs the qm9pack package: pip install 'energyloss[qm9]' "
            "(or use source='figshare' with internet access)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not any(folder.glob("qm9_part*.csv")):
        raise FileNotFoundError(f"qm9pack is installed but {folder} has no qm9_part*.csv files")
    return folder


def _qm9pack_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("qm9pack")
    except Exception:  # metadata lookups can fail in many ways; the version is informative only
        return None


# --------------------------------------------------------------------------------------------------------------
# Readers


def _progress(iterable: Iterable, *, desc: str, total: int | None, enabled: bool) -> Iterator:
    from ..runs import progress

    return progress(iterable, desc=desc, total=total, disable=not enabled)


def _parse_elements(text: str) -> list[int]:
    return [atomic_number(s.strip().strip("'\"")) for s in text.strip("[]").split(",") if s.strip()]


def read_qm9_csv(folder: str | os.PathLike, *, progress: bool = True, total: int | None = None) -> Molecules:
    """Read every ``qm9_part*.csv`` file of ``folder`` (the layout of the ``qm9pack`` wheel).

    Each row needs the columns ``Index`` (QM9 index, 1-based), ``N_atoms``, ``Elements`` (``['C','H',...]``)
    and ``XYZ_Ang`` (``[[x,y,z],...]`` in Angstrom); other columns are ignored. Rows are returned sorted by
    index as a :class:`~energyloss.experiments.molecules.data.Molecules` store with ``ids`` = QM9 index and
    float32 positions (as EDM stores them). ``total`` is the expected number of rows, for the progress bar.

    Raises ``ValueError`` naming the file and row when a row is inconsistent (atom count, coordinates) or an
    index repeats.
    """
    folder = Path(folder)
    files = sorted(
        folder.glob("qm9_part*.csv"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
    )
    if not files:
        raise FileNotFoundError(f"no qm9_part*.csv files in {folder}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    ids: list[int] = []
    zs: list[list[int]] = []
    coords: list[np.ndarray] = []

    def rows() -> Iterator[tuple[Path, int, dict[str, str]]]:
        for path in files:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                missing = {"Index", "N_atoms", "Elements", "XYZ_Ang"} - set(reader.fieldnames or ())
                if missing:
                    raise ValueError(f"{path}: missing columns {sorted(missing)}")
                for k, row in enumerate(reader, start=2):
                    yield path, k, row

    for path, line, row in _progress(rows(), desc="reading QM9 CSV", total=total, enabled=progress):
        z = _parse_elements(row["Elements"])
        xyz = np.array(row["XYZ_Ang"].replace("[", " ").replace("]", " ").split(","), dtype=np.float64)
        n = int(row["N_atoms"])
        if len(z) != n or xyz.size != 3 * n:
            raise ValueError(f"{path}:{line}: N_atoms={n} but {len(z)} elements and {xyz.size} coordinates")
        ids.append(int(row["Index"]))
        zs.append(z)
        coords.append(xyz.reshape(n, 3))
    return _assemble(ids, zs, coords, source=str(folder))


def _assemble(ids: list[int], zs: list[list[int]], coords: list[np.ndarray], *, source: str) -> Molecules:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: repeated QM9 indices")
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    num = np.asarray([len(zs[i]) for i in order], dtype=np.int64)
    pos = np.concatenate([coords[i] for i in order]) if len(order) else np.zeros((0, 3))
    z = np.concatenate([np.asarray(zs[i], dtype=np.int64) for i in order]) if len(order) else np.zeros(0, np.int64)
    return Molecules(
        positions=torch.from_numpy(pos.astype(np.float32)),
        atomic_numbers=torch.from_numpy(z),
        num_atoms=torch.from_numpy(num),
        ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)[order]),
    )


def read_excluded_ids(path: str | os.PathLike) -> set[int]:
    """QM9 indices (1-based) listed in ``uncharacterized.txt``: the first field of every line that is an integer.

    This is EDM's rule; the canonical file yields exactly 3,054 indices.
    """
    excluded = set()
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            excluded.add(int(fields[0]))
    return excluded


def _parse_gdb9_xyz(text: str, name: str) -> tuple[list[int], np.ndarray]:
    lines = text.splitlines()
    n = int(lines[0].split()[0])
    z, xyz = [], []
    for line in lines[2 : 2 + n]:
        fields = line.replace("*^", "e").split()
        z.append(atomic_number(fields[0]))
        xyz.append([float(v) for v in fields[1:4]])
    if len(z) != n:
        raise ValueError(f"{name}: announces {n} atoms, has {len(z)}")
    return z, np.asarray(xyz, dtype=np.float64).reshape(n, 3)


def read_gdb9_tarball(
    tar_path: str | os.PathLike, excluded_path: str | os.PathLike, *, progress: bool = True
) -> Molecules:
    """Read the canonical ``dsgdb9nsd.xyz.tar.bz2`` and drop the molecules listed in ``uncharacterized.txt``.

    Members are named ``dsgdb9nsd_<index>.xyz``; positions are read from columns 2-4 of the atom lines (with
    the archive's ``*^`` exponent notation). Returns molecules sorted by QM9 index, ids = index.
    """
    excluded = read_excluded_ids(excluded_path)
    ids: list[int] = []
    zs: list[list[int]] = []
    coords: list[np.ndarray] = []
    with tarfile.open(tar_path, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xyz")]
        for member in _progress(members, desc="reading QM9 archive", total=len(members), enabled=progress):
            match = re.search(r"(\d+)\.xyz$", member.name)
            if match is None:
                raise ValueError(f"{tar_path}: unexpected member name {member.name!r}")
            index = int(match.group(1))
            if index in excluded:
                continue
            fh = archive.extractfile(member)
            assert fh is not None  # isfile() members always have data
            z, xyz = _parse_gdb9_xyz(fh.read().decode("utf-8"), member.name)
            ids.append(index)
            zs.append(z)
            coords.append(xyz)
    return _assemble(ids, zs, coords, source=str(tar_path))


def file_checksum(path: str | os.PathLike, *, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``"sha256"``, ``"md5"``, ...), read in chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_qm9_raw(
    dest: str | os.PathLike,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    opener: Callable[..., Any] | None = None,
) -> dict[str, Path]:
    """Download the canonical QM9 archive and exclusion list from figshare into ``dest``, verifying MD5s.

    Files already present with the right checksum are kept. Each file is fetched to ``<name>.part`` and
    renamed only after its size and MD5 match :data:`FIGSHARE_FILES`. Failed attempts are retried
    ``retries`` times with exponential back-off (2, 4, 8 s). Raises :class:`DownloadError` with the URL, the
    last error and the offline alternative. ``opener`` defaults to ``urllib.request.urlopen``.
    """
    import urllib.request

    opener = opener or urllib.request.urlopen
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, (file_id, size, md5) in FIGSHARE_FILES.items():
        target = dest / name
        out[name] = target
        if target.is_file() and file_checksum(target, algorithm="md5") == md5:
            continue
        url = FIGSHARE_URL.format(file_id=file_id)
        part = target.with_name(target.name + ".part")
        last_error: str = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(2.0**attempt)
            try:
                with opener(url, timeout=timeout) as response, part.open("wb") as fh:
                    while block := response.read(1 << 20):
                        fh.write(block)
            except OSError as err:  # URLError, HTTPError, timeouts and connection resets are all OSErrors
                last_error = f"{type(err).__name__}: {err}"
                continue
            got_size, got_md5 = part.stat().st_size, file_checksum(part, algorithm="md5")
            if (size is None or got_size == size) and got_md5 == md5:
                part.replace(target)
                break
            last_error = f"checksum mismatch: got {got_size} bytes, md5 {got_md5}; expected {size} bytes, md5 {md5}"
        else:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"could not download {name} from {url} after {retries + 1} attempts ({last_error}). "
                "Without internet, use the offline copy instead: pip install 'energyloss[qm9]' "
                "and source='qm9pack'."
            )
    return out


# --------------------------------------------------------------------------------------------------------------
# Split


def split_indices(
    n_molecules: int, *, seed: int = SPLIT_SEED, n_train: int = N_TRAIN, test_fraction: float = TEST_FRACTION
) -> dict[str, np.ndarray]:
    """EDM's (Cormorant's) split of ``n_molecules`` molecules into positions 0..n-1, each split sorted.

    ``perm = RandomState(seed).permutation(n)``; train = ``perm[:n_train]``, test size ``int(test_fraction *
    n)``, valid = the rest, taken in the order train, valid, test from ``perm``.

    >>> {k: len(v) for k, v in split_indices(130_831).items()}
    {'train': 100000, 'valid': 17748, 'test': 13083}
    >>> split_indices(10, n_train=6)["test"].tolist()
    [5]
    """
    n_test = int(test_fraction * n_molecules)
    n_valid = n_molecules - n_train - n_test
    if n_train < 1 or n_valid < 0:
        raise ValueError(f"n_train={n_train} and n_test={n_test} do not fit in n_molecules={n_molecules}")
    perm = np.random.RandomState(seed).permutation(n_molecules)
    train, valid, test = np.split(perm, [n_train, n_train + n_valid])
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


# --------------------------------------------------------------------------------------------------------------
# Cache


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


STALE_TEMPORARY_SECONDS = _runs.STALE_TEMPORARY_SECONDS


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp-<pid>`` files of :func:`~energyloss.experiments.runs.atomic_save` whose writer is gone
    (or that are over a day old)."""
    return _runs.remove_stale_temporaries(folder, "*.tmp-*", r"\.tmp-(\d+)$")


def _build(source: str, source_dir: str | os.PathLike | None, progress: bool) -> tuple[Molecules, dict[str, Any]]:
    if source == "auto":
        source = "qm9pack" if importlib.util.find_spec("qm9pack") is not None or source_dir else "figshare"
    if source == "qm9pack":
        folder = Path(source_dir) if source_dir is not None else qm9pack_data_dir()
        info = {"kind": "qm9pack-csv", "path": str(folder), "qm9pack_version": _qm9pack_version()}
        return read_qm9_csv(folder, progress=progress, total=None if source_dir else N_QM9), info
    if source == "figshare":
        raw = Path(source_dir) if source_dir is not None else default_cache_dir() / "qm9" / "raw"
        files = download_qm9_raw(raw)
        info = {"kind": "figshare", "path": str(raw)}
        mols = read_gdb9_tarball(files["dsgdb9nsd.xyz.tar.bz2"], files["uncharacterized.txt"], progress=progress)
        return mols, info
    raise ValueError(f"source must be 'auto', 'qm9pack' or 'figshare'; got {source!r}")


def prepare_qm9(
    *,
    cache_dir: str | os.PathLike | None = None,
    source: str = "auto",
    source_dir: str | os.PathLike | None = None,
    n_train: int = N_TRAIN,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build the cache (unless a valid one exists and not ``force``) and return its path.

    Parameters
    ----------
    cache_dir : cache root (default :func:`default_cache_dir`).
    source : ``"qm9pack"`` (offline CSV), ``"figshare"`` (download) or ``"auto"`` (qm9pack if installed).
    source_dir : folder of ``qm9_part*.csv`` files (qm9pack layout) or of the raw figshare files; default the
        installed qm9pack / ``<cache>/qm9/raw``.
    n_train : training-set size of the split (100,000 for QM9; smaller for small test files).
    force : rebuild even if the cache is valid.
    progress : show progress bars.
    """
    path = cache_path(cache_dir)
    if path.parent.is_dir():
        remove_stale_temporaries(path.parent)
    if not force:
        try:
            if verify_cache(path)["split"]["n_train"] == n_train:
                return path
        except CacheError:
            pass
    try:  # before the build (seconds to minutes): a folder that cannot be written fails at once
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the cache folder {path.parent}: {err.strerror or err}") from None
    molecules, source_info = _build(source, source_dir, progress)
    canonical = len(molecules) == N_QM9
    if canonical and int(molecules.num_atoms.max()) > MAX_ATOMS:
        raise ValueError(f"QM9 molecules have at most {MAX_ATOMS} atoms; the source has a larger one")
    splits = split_indices(len(molecules), n_train=n_train)
    payload: dict[str, Any] = {"format": CACHE_FORMAT, "version": CACHE_VERSION}
    for name in SPLITS:
        part = molecules.select(torch.from_numpy(splits[name]))
        payload[name] = {
            "positions": part.positions.contiguous(),
            "atomic_numbers": part.atomic_numbers.to(torch.uint8),
            "num_atoms": part.num_atoms.to(torch.int16),
            "ids": part.ids.to(torch.int32),
        }
    _manifest_path(path).unlink(missing_ok=True)  # a data file without manifest reads as "partial"
    _runs.atomic_save(path, lambda tmp: torch.save(payload, tmp))
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": file_checksum(path),
        "canonical_qm9": canonical,
        "source": source_info,
        "split": {"seed": SPLIT_SEED, "n_train": n_train, "test_fraction": TEST_FRACTION},
        "n_molecules": {name: int(len(splits[name])) for name in SPLITS},
        "n_atoms": {name: int(payload[name]["num_atoms"].sum()) for name in SPLITS},
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    _runs.atomic_save(_manifest_path(path), lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return path


def verify_cache(path: str | os.PathLike) -> dict[str, Any]:
    """Check a cache file against its manifest; return the manifest or raise :class:`CacheError` saying why.

    Checks, in order: the file exists; the manifest exists (else the cache is partial), has this format and
    version and every field the loader reads (``bytes``, ``sha256``, ``split.n_train``, ``n_molecules`` and
    ``n_atoms`` per split); the file's size and SHA-256 match the manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"missing: {path} does not exist")
    mpath = _manifest_path(path)
    if not mpath.is_file():
        raise CacheError(f"partial: {path} has no manifest {mpath.name} (interrupted preparation?)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"corrupt: manifest {mpath} is unreadable ({err})") from err
    if not isinstance(manifest, dict):
        raise CacheError(f"corrupt: manifest {mpath} is not a JSON object")
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise CacheError(
            f"incompatible: {mpath} is format {manifest.get('format')!r} v{manifest.get('version')}, "
            f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}"
        )
    _check_manifest_fields(manifest, mpath)
    size = path.stat().st_size
    if size != manifest.get("bytes"):
        raise CacheError(f"corrupt: {path} has {size} bytes, the manifest says {manifest.get('bytes')}")
    digest = file_checksum(path)
    if digest != manifest.get("sha256"):
        raise CacheError(f"corrupt: SHA-256 of {path} is {digest}, the manifest says {manifest.get('sha256')}")
    return manifest


def _check_manifest_fields(manifest: Mapping[str, Any], mpath: Path) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not is_int(manifest.get("bytes")):
        problems.append("'bytes' (int)")
    if not isinstance(manifest.get("sha256"), str):
        problems.append("'sha256' (str)")
    split = manifest.get("split")
    if not isinstance(split, dict) or not is_int(split.get("n_train")):
        problems.append("'split.n_train' (int)")
    for key in ("n_molecules", "n_atoms"):
        counts = manifest.get(key)
        if not isinstance(counts, dict) or not all(is_int(counts.get(name)) for name in SPLITS):
            problems.append(f"'{key}' (an int per split {', '.join(SPLITS)})")
    if problems:
        raise CacheError(f"corrupt: manifest {mpath} lacks or has malformed {', '.join(problems)}")


def _read_cache(path: Path, manifest: Mapping[str, Any]) -> dict[str, Molecules]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means a corrupt cache
        raise CacheError(f"corrupt: {path} cannot be loaded ({type(err).__name__}: {err})") from err
    out = {}
    for name in SPLITS:
        try:
            part = payload[name]
            mols = Molecules(
                positions=part["positions"].float(),
                atomic_numbers=part["atomic_numbers"].long(),
                num_atoms=part["num_atoms"].long(),
                ids=part["ids"].long(),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CacheError(f"corrupt: split {name!r} of {path} is malformed ({err})") from err
        if len(mols) != manifest["n_molecules"][name] or int(mols.num_atoms.sum()) != manifest["n_atoms"][name]:
            raise CacheError(f"corrupt: split {name!r} of {path} does not match the manifest's counts")
        out[name] = mols
    return out


def load_qm9(
    *,
    cache_dir: str | os.PathLike | None = None,
    on_invalid: str = "rebuild",
    source: str = "auto",
    source_dir: str | os.PathLike | None = None,
    n_train: int = N_TRAIN,
    progress: bool = True,
) -> dict[str, Molecules]:
    """The three splits as :class:`~energyloss.experiments.molecules.data.Molecules` stores (ids = QM9 index).

    A valid cache loads in about a second. A missing cache is built. An invalid one (partial, corrupt,
    other version) is rebuilt with a ``UserWarning`` giving the reason if ``on_invalid="rebuild"``, or raises
    :class:`CacheError` if ``on_invalid="raise"``. ``source``, ``source_dir``, ``n_train``: see
    :func:`prepare_qm9`.
    """
    if on_invalid not in ("rebuild", "raise"):
        raise ValueError(f"on_invalid must be 'rebuild' or 'raise'; got {on_invalid!r}")
    path = cache_path(cache_dir)
    if path.parent.is_dir():
        remove_stale_temporaries(path.parent)
    try:
        manifest = verify_cache(path)
        return _read_cache(path, manifest)
    except CacheError as err:
        missing = str(err).startswith("missing")
        if on_invalid == "raise" and not missing:
            raise
        if not missing:
            warnings.warn(f"QM9 cache is invalid and will be rebuilt: {err}", stacklevel=2)
    path = prepare_qm9(
        cache_dir=cache_dir, source=source, source_dir=source_dir, n_train=n_train, force=True, progress=progress
    )
    return _read_cache(path, verify_cache(path))


def qm9_dataset(
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    dataset_frac: float = 1.0,
    seed: int = 0,
    center: bool = True,
    splits: Mapping[str, Molecules] | None = None,
) -> MoleculeDataset:
    """A :class:`~energyloss.experiments.molecules.data.MoleculeDataset` over one QM9 split.

    ``dataset_frac < 1`` keeps a seeded random subset (paper Fig. 4; EDM subsets every split the same way).
    Pass ``splits`` (from :func:`load_qm9`) to avoid reading the cache again.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    splits = splits if splits is not None else load_qm9(cache_dir=cache_dir)
    ds = MoleculeDataset(splits[split], elements=QM9_ELEMENTS, center=center)
    return ds if dataset_frac == 1.0 else ds.subset(dataset_frac, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# Card and checks


def dataset_card(splits: Mapping[str, Molecules]) -> dict[str, Any]:
    """Per split: ``n_molecules``, ``n_atoms_histogram`` (atom count -> molecules), ``element_counts``.

    >>> mols = Molecules.from_list([(torch.zeros(2, 3), torch.tensor([1, 1]))])
    >>> dataset_card({"train": mols})
    {'train': {'n_molecules': 1, 'n_atoms_histogram': {2: 1}, 'element_counts': {'H': 2}}}
    """
    return {
        name: {
            "n_molecules": len(mols),
            "n_atoms_histogram": node_count_histogram(mols),
            "element_counts": element_counts(mols),
        }
        for name, mols in splits.items()
    }


def edm_checks(card: Mapping[str, Any]) -> dict[str, bool]:
    """Compare a card's training split with EDM's shipped statistics and QM9's split sizes."""
    train = card.get("train", {})
    sizes = {name: card.get(name, {}).get("n_molecules") for name in SPLITS}
    return {
        "split_sizes_match_edm": sizes == {"train": N_TRAIN, "valid": 17_748, "test": 13_083},
        "train_n_atoms_histogram_matches_edm": {int(k): v for k, v in train.get("n_atoms_histogram", {}).items()}
        == EDM_TRAIN_N_ATOMS_HISTOGRAM,
        "train_element_counts_match_edm": dict(train.get("element_counts", {})) == EDM_TRAIN_ELEMENT_COUNTS,
    }


def qm9_reference_smiles(
    *,
    cache_dir: str | os.PathLike | None = None,
    split: str = "train",
    n_jobs: int = 1,
    splits: Mapping[str, Molecules] | None = None,
) -> set[str]:
    """Distinct largest-fragment SMILES of a QM9 split (for novelty), cached next to the data.

    Computed with :func:`~energyloss.experiments.molecules.metrics.molecule_smiles` and EDM's bond table, and
    cached as JSON keyed by the data file's SHA-256, the bond table and the RDKit version (any change
    recomputes it).
    """
    from .metrics import EDM_BOND_TABLE, molecule_smiles, rdkit_version

    path = cache_path(cache_dir)
    try:
        manifest = verify_cache(path) if path.is_file() else None
    except CacheError:
        manifest = None  # load_qm9 below reports it and rebuilds
    if splits is None or manifest is None:
        splits = load_qm9(cache_dir=cache_dir)
        manifest = verify_cache(path)
    key = {"data_sha256": manifest["sha256"], "bond_table": EDM_BOND_TABLE.key, "rdkit": rdkit_version()}
    ref_path = path.with_name(f"qm9-{split}-smiles-v{CACHE_VERSION}.json")
    if ref_path.is_file():
        try:
            stored = json.loads(ref_path.read_text())
            if stored.get("key") == key:
                return set(stored["smiles"])
        except (OSError, json.JSONDecodeError, AttributeError, KeyError):
            pass  # recompute below
    smiles: set[str] = set()
    for part in splits[split].chunks(50_000):
        pos, z, mask = part.to_padded()
        smiles.update(s for s in molecule_smiles(pos, z, mask=mask, n_jobs=n_jobs) if s is not None)
    body = json.dumps({"key": key, "smiles": sorted(smiles)})
    _runs.atomic_save(ref_path, lambda tmp: tmp.write_text(body))
    return smiles
