"""GEOM-Drugs in the ``geom_drugs_30.npy`` row format used by EDM and its descendants (paper Table 2).

**The format.** One float array of shape ``(total_atoms, 5)``; each row is ``(conformer id, atomic number, x,
y, z)`` with positions in Angstrom. Rows of one conformer are contiguous and a new conformer starts where the
id changes. EDM's ``build_geom_dataset.py`` writes it from GEOM's ``drugs_crude.msgpack``, keeping the 30
lowest-energy conformers of every molecule (hence "_30"); the ids count conformers, not molecules, so the
file does not say which conformers belong to the same molecule.

**The split (EDM's).** Conformers are permuted with the permutation stored next to the data as
``geom_permutation.npy``; the first ``int(0.1 n)`` permuted conformers are validation, the next
``int(0.1 n)`` test, the rest training. Because the split is over conformers, conformers of one molecule
can fall into different splits (as in EDM). Without the stored permutation, pass ``seed`` to draw a new one
(results are then not comparable with EDM's split).

**Getting the data.** GEOM itself is not shipped here (nor downloadable from the machine this was built on).
EDM's ``data/geom/README.md`` gives the recipe: download GEOM's ``rdkit_folder`` archive (Axelrod &
Gomez-Bombarelli 2022, Harvard Dataverse, doi:10.7910/DVN/JNGTDF, about 50 GB:
``wget https://dataverse.harvard.edu/api/access/datafile/4360331``), untar it, ``pip install msgpack`` and run
EDM's ``build_geom_dataset.py --conformations 30`` (its ``--data_dir`` holding ``drugs_crude.msgpack``), which
writes ``geom_drugs_30.npy``. EDM's split permutation ``geom_permutation.npy`` is committed in EDM's repository
(``ehoogeboom/e3_diffusion_for_molecules``, ``data/geom/geom_permutation.npy``); put it next to the ``.npy``
file. The default place of both is ``$ENERGYLOSS_CACHE/geom/`` (else ``~/.cache/energyloss/geom/``,
:func:`default_geom_path`). The elements are EDM's 16 GEOM types (:data:`GEOM_ELEMENTS`); the largest molecule
has 181 atoms.

**Streaming (what training uses).** :func:`geom_drugs_datasets` never loads the file whole: one streamed pass
(:func:`scan_geom_file`, plain chunked reads, so the resident memory stays at one chunk) finds where every
conformer starts, checks the rows (integer ids, GEOM atomic numbers, finite positions, contiguous conformers) and
counts the elements; the result (:class:`GeomIndex`, 20 bytes per conformer) is cached next to the file as
``geom_drugs_30.npy.index-v1.npz`` (or under ``$ENERGYLOSS_CACHE/geom/`` when that folder is read-only) and
reused while the file's size and modification time are unchanged. The array itself is opened with
``np.load(mmap_mode="r")`` and a batch reads only its own conformers' rows (:class:`GeomDrugsDataset`); batches
are padded to their own largest conformer, as EDM's default (random-order) GEOM loader does; nothing is bucketed
by size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import ELEMENT_SYMBOLS, Molecules, batch_padded, batch_ragged, node_count_histogram

__all__ = [
    "EDM_ATOM_TYPES",
    "EDM_N_NODES",
    "GEOM_ELEMENTS",
    "GEOM_FILE",
    "GEOM_MAX_ATOMS",
    "PERMUTATION_FILE",
    "GeomDataMissing",
    "GeomDrugsDataset",
    "GeomIndex",
    "default_geom_path",
    "edm_checks",
    "geom_card",
    "geom_drugs_datasets",
    "geom_index",
    "geom_split",
    "load_geom_drugs",
    "read_geom_conformers",
    "scan_geom_file",
    "write_synthetic_geom",
]

#: Atomic numbers of EDM's 16 GEOM-Drugs atom types (one-hot columns, in EDM's order).
GEOM_ELEMENTS: tuple[int, ...] = (1, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 33, 35, 53, 80, 83)
GEOM_SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: EDM's ``max_n_nodes`` of GEOM-Drugs with hydrogens.
GEOM_MAX_ATOMS = 181
GEOM_FILE = "geom_drugs_30.npy"
PERMUTATION_FILE = "geom_permutation.npy"
INDEX_VERSION = 1
#: Rows per read of the streamed pass (5 float64 columns: 40 MiB per chunk).
SCAN_CHUNK_ROWS = 1 << 20

_HOW_TO_GET = (
    "get GEOM's rdkit_folder archive (Harvard Dataverse doi:10.7910/DVN/JNGTDF, "
    "https://dataverse.harvard.edu/api/access/datafile/4360331, about 50 GB), untar it and run EDM's "
    "build_geom_dataset.py --conformations 30 on its drugs_crude.msgpack "
    "(github.com/ehoogeboom/e3_diffusion_for_molecules, data/geom/README.md); put geom_drugs_30.npy and EDM's "
    "data/geom/geom_permutation.npy in one folder and pass --geom-path FILE (default: {default})"
)


class GeomDataMissing(FileNotFoundError):
    """The GEOM-Drugs file (or its split permutation) is not where it was looked for; the message says how to get it."""


def default_geom_path() -> Path:
    """``$ENERGYLOSS_CACHE/geom/geom_drugs_30.npy``, else ``~/.cache/energyloss/geom/geom_drugs_30.npy``."""
    from .qm9 import default_cache_dir

    return default_cache_dir() / "geom" / GEOM_FILE


def _missing(what: str, path: Path) -> GeomDataMissing:
    return GeomDataMissing(f"no {what} at {path}: " + _HOW_TO_GET.format(default=default_geom_path()))


# --------------------------------------------------------------------------------------------------------------
# The streamed index


@dataclasses.dataclass(frozen=True)
class GeomIndex:
    """Where every conformer of a ``geom_drugs_30.npy``-style file lies: one entry per conformer, in file order.

    Attributes:
        starts: ``(n,)`` int64, first row of each conformer.
        counts: ``(n,)`` int32, its atoms (rows).
        ids: ``(n,)`` int64, the file's conformer ids.
        n_rows: rows of the file.
        element_counts: atomic number -> atoms, over the whole file.
    """

    starts: np.ndarray
    counts: np.ndarray
    ids: np.ndarray
    n_rows: int
    element_counts: dict[int, int]

    def __len__(self) -> int:
        return int(self.starts.shape[0])


def _layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` file (opened memory-mapped, nothing read)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(array, np.memmap):
        raise ValueError(f"{path}: not a plain .npy array")
    if array.ndim != 2 or array.shape[1] != 5:
        raise ValueError(
            f"{path}: expected rows of (conformer id, atomic number, x, y, z), shape (M, 5); got {array.shape}"
        )
    if not array.flags.c_contiguous:
        raise ValueError(f"{path}: the array must be stored in C (row-major) order")
    if array.dtype.kind != "f":
        raise ValueError(f"{path}: expected a float array, got dtype {array.dtype}")
    layout = (tuple(array.shape), array.dtype, int(array.offset))
    del array
    return layout


def scan_geom_file(path: str | os.PathLike, *, chunk_rows: int = SCAN_CHUNK_ROWS) -> GeomIndex:
    """One streamed pass over a ``geom_drugs_30.npy``-style file: conformer boundaries, checks, element counts.

    The file is read ``chunk_rows`` rows at a time with plain reads (no memory map, so the resident memory stays
    at one chunk plus the index). Raises ``ValueError`` naming the row for a non-integer conformer id, an atomic
    number outside :data:`GEOM_ELEMENTS`, a non-finite position, or a conformer whose rows are not contiguous.
    """
    path = Path(path)
    (n_rows, _), dtype, offset = _layout(path)
    if n_rows == 0:
        raise ValueError(f"{path}: the file holds no rows")
    allowed = np.zeros(max(GEOM_ELEMENTS) + 1, dtype=bool)
    allowed[list(GEOM_ELEMENTS)] = True
    starts: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    elements = np.zeros(max(GEOM_ELEMENTS) + 1, dtype=np.int64)
    last_id: int | None = None
    with open(path, "rb") as f:
        f.seek(offset)
        for a in range(0, n_rows, chunk_rows):
            rows = min(chunk_rows, n_rows - a)
            block = np.fromfile(f, dtype=dtype, count=5 * rows).reshape(rows, 5)
            conf = block[:, 0].astype(np.int64)
            bad = np.flatnonzero(conf != block[:, 0])
            if bad.size:
                raise ValueError(f"{path}: row {a + bad[0]}: conformer id {float(block[bad[0], 0])} is not an integer")
            z = block[:, 1].astype(np.int64)
            bad = np.flatnonzero((z != block[:, 1]) | (z < 0) | (z >= allowed.size))
            if not bad.size:
                bad = np.flatnonzero(~allowed[z])
            if bad.size:
                raise ValueError(
                    f"{path}: row {a + bad[0]}: atomic number {float(block[bad[0], 1])} is not one of EDM's GEOM "
                    f"elements {list(GEOM_ELEMENTS)}"
                )
            bad = np.flatnonzero(~np.isfinite(block[:, 2:]).all(1))
            if bad.size:
                raise ValueError(f"{path}: row {a + bad[0]}: non-finite position {block[bad[0], 2:].tolist()}")
            change = np.flatnonzero(conf[1:] != conf[:-1]) + 1
            if last_id is None or conf[0] != last_id:
                change = np.concatenate([[0], change])
            starts.append(change + a)
            ids.append(conf[change])
            elements += np.bincount(z, minlength=elements.size)
            last_id = int(conf[-1])
    start = np.concatenate(starts).astype(np.int64)
    conf_ids = np.concatenate(ids).astype(np.int64)
    order = np.argsort(conf_ids, kind="stable")
    repeat = np.flatnonzero(conf_ids[order][1:] == conf_ids[order][:-1])
    if repeat.size:
        again = int(order[repeat[0] + 1])
        raise ValueError(
            f"{path}: row {start[again]}: conformer id {conf_ids[again]} reappears after other conformers "
            "(the rows of a conformer must be contiguous)"
        )
    counts = np.diff(np.concatenate([start, [n_rows]])).astype(np.int32)
    return GeomIndex(
        starts=start,
        counts=counts,
        ids=conf_ids,
        n_rows=int(n_rows),
        element_counts={int(k): int(v) for k, v in enumerate(elements) if v},
    )


def _index_key(path: Path) -> dict[str, object]:
    st = path.stat()
    shape, dtype, _ = _layout(path)
    return {
        "version": INDEX_VERSION,
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "shape": list(shape),
        "dtype": str(dtype),
    }


def _index_locations(path: Path) -> list[Path]:
    from .qm9 import default_cache_dir

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return [
        path.with_name(f"{path.name}.index-v{INDEX_VERSION}.npz"),
        default_cache_dir() / "geom" / f"index-{digest}-v{INDEX_VERSION}.npz",
    ]


def _read_index(location: Path, key: dict[str, object]) -> GeomIndex | None:
    import json

    try:
        with np.load(location, allow_pickle=False) as npz:
            if json.loads(str(npz["key"])) != key:
                return None
            z, c = npz["element_z"], npz["element_n"]
            return GeomIndex(
                starts=npz["starts"],
                counts=npz["counts"],
                ids=npz["ids"],
                n_rows=int(npz["n_rows"]),
                element_counts={int(a): int(b) for a, b in zip(z, c, strict=True)},
            )
    except (OSError, ValueError, KeyError):
        return None


def _write_index(location: Path, key: dict[str, object], index: GeomIndex) -> None:
    import json

    from ..runs import atomic_save

    location.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(
                f,
                key=np.array(json.dumps(key)),
                starts=index.starts,
                counts=index.counts,
                ids=index.ids,
                n_rows=np.array(index.n_rows),
                element_z=np.array(list(index.element_counts), dtype=np.int64),
                element_n=np.array(list(index.element_counts.values()), dtype=np.int64),
            )

    atomic_save(location, save)


def geom_index(path: str | os.PathLike, *, chunk_rows: int = SCAN_CHUNK_ROWS, cache: bool = True) -> GeomIndex:
    """The :class:`GeomIndex` of ``path``: from its cache when the file is unchanged, else one :func:`scan_geom_file`.

    The cache is ``<path>.index-v1.npz`` next to the file, or ``$ENERGYLOSS_CACHE/geom/index-<hash>-v1.npz``
    when that folder cannot be written; it is keyed by the file's size, modification time, shape and dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing("GEOM-Drugs file", path)
    if not cache:
        return scan_geom_file(path, chunk_rows=chunk_rows)
    key = _index_key(path)
    locations = _index_locations(path)
    for location in locations:
        if location.is_file():
            found = _read_index(location, key)
            if found is not None:
                return found
    index = scan_geom_file(path, chunk_rows=chunk_rows)
    for location in locations:
        try:
            _write_index(location, key, index)
            break
        except OSError:
            continue
    return index


# --------------------------------------------------------------------------------------------------------------
# The dataset


class GeomDrugsDataset(torch.utils.data.Dataset):
    """A map-style dataset over some conformers of a ``geom_drugs_30.npy``-style file, read on demand.

    The same interface as :class:`~energyloss.experiments.molecules.data.MoleculeDataset` (items, ``get_batch``,
    ``subset``, ``node_count_histogram``, ``elements``, ``num_atoms``), but the array stays on disk: it is opened
    with ``np.load(mmap_mode="r")`` in each process that reads it (the memory map is not pickled) and a batch reads
    only its own conformers' rows. ``get_batch`` pads to the batch's largest conformer.

    Parameters
    ----------
    path : the ``(M, 5)`` array file.
    index : its :class:`GeomIndex`.
    conformers : positions into the index (file order) of this dataset's conformers, in dataset order.
    elements : atomic numbers of the one-hot columns (default :data:`GEOM_ELEMENTS`).
    center : subtract each conformer's mean position.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        index: GeomIndex,
        conformers: np.ndarray | Sequence[int],
        *,
        elements: Sequence[int] = GEOM_ELEMENTS,
        center: bool = True,
    ) -> None:
        self.path = Path(path)
        self.index = index
        self.conformers = np.asarray(conformers, dtype=np.int64).reshape(-1)
        self.elements = tuple(int(e) for e in elements)
        self.center = center
        unknown = sorted(set(index.element_counts) - set(self.elements))
        if unknown:
            raise ValueError(f"{self.path} holds atomic numbers {unknown} that are not in elements {self.elements}")
        self._starts = index.starts[self.conformers]
        self.num_atoms = torch.from_numpy(index.counts[self.conformers].astype(np.int64))
        self.ids = torch.from_numpy(index.ids[self.conformers])
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # each process opens its own memory map
        return state

    def array(self) -> np.ndarray:
        """The file's ``(M, 5)`` array, memory-mapped read-only (opened on first use)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            handle = getattr(self._array, "_mmap", None)
            if handle is not None and hasattr(mmap, "MADV_RANDOM"):  # batches jump around: no read-ahead
                with contextlib.suppress(OSError, ValueError):
                    handle.madvise(mmap.MADV_RANDOM)
        return self._array

    def __len__(self) -> int:
        return int(self.conformers.shape[0])

    def read(self, indices: torch.Tensor | Sequence[int]) -> Molecules:
        """The conformers at ``indices`` (positions in this dataset) as a ragged store; reads only their rows."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).numpy()
        array = self.array()
        counts = self.num_atoms.numpy()[idx]
        rows = [np.asarray(array[s : s + c]) for s, c in zip(self._starts[idx].tolist(), counts.tolist(), strict=True)]
        block = np.concatenate(rows) if rows else np.zeros((0, 5))
        return Molecules(
            positions=torch.from_numpy(np.ascontiguousarray(block[:, 2:5], dtype=np.float32)),
            atomic_numbers=torch.from_numpy(block[:, 1].astype(np.int64)),
            num_atoms=torch.from_numpy(counts.astype(np.int64)),
            ids=self.ids[torch.from_numpy(idx)],
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} conformers")
        b = batch_ragged(self.read([i % len(self)]), elements=self.elements, center=self.center)
        return {
            "positions": b["positions"],
            "atomic_numbers": b["atomic_numbers"],
            "one_hot": b["one_hot"],
            "charges": b["charges"],
            "num_atoms": b["num_atoms"][0],
            "ids": b["ids"][0],
        }

    def get_batch(self, indices: torch.Tensor | Sequence[int], *, layout: str = "padded") -> dict[str, torch.Tensor]:
        """The batch of conformers ``indices`` in ``layout`` ``"padded"`` (to the batch's largest) or ``"ragged"``."""
        mols = self.read(indices)
        if layout == "padded":
            return batch_padded(mols, elements=self.elements, center=self.center)
        if layout == "ragged":
            return batch_ragged(mols, elements=self.elements, center=self.center)
        raise ValueError(f"layout must be 'padded' or 'ragged'; got {layout!r}")

    def select(self, indices: torch.Tensor | Sequence[int]) -> GeomDrugsDataset:
        """The conformers at ``indices`` as a new dataset (same file)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).numpy()
        return GeomDrugsDataset(self.path, self.index, self.conformers[idx], elements=self.elements, center=self.center)

    def subset(self, fraction: float, *, seed: int = 0) -> GeomDrugsDataset:
        """A random ``int(fraction * len)`` conformers, kept in dataset order (as ``MoleculeDataset.subset``)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
        n_keep = int(fraction * len(self))
        if n_keep < 1:
            raise ValueError(f"fraction={fraction} keeps no conformer of {len(self)}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.select(torch.sort(perm[:n_keep]).values)

    def node_count_histogram(self) -> dict[int, int]:
        """Atom count -> number of conformers."""
        return node_count_histogram(self.num_atoms)


def _permutation(path: Path, permutation_path: str | os.PathLike | None, seed: int | None) -> np.ndarray | None:
    perm_file = Path(permutation_path) if permutation_path is not None else path.with_name(PERMUTATION_FILE)
    if permutation_path is None and seed is not None:
        return None
    if not perm_file.is_file():
        if permutation_path is None:
            raise _missing(f"split permutation {PERMUTATION_FILE} next to the data (or pass a split seed)", perm_file)
        raise _missing("split permutation", perm_file)
    return np.load(perm_file, allow_pickle=False)


def geom_drugs_datasets(
    path: str | os.PathLike | None = None,
    *,
    permutation_path: str | os.PathLike | None = None,
    seed: int | None = None,
    max_atoms: int | None = None,
    center: bool = True,
) -> dict[str, GeomDrugsDataset]:
    """EDM's train / valid / test splits of a ``geom_drugs_30.npy``-style file, as streaming datasets.

    ``path`` defaults to :func:`default_geom_path`; the split permutation to ``geom_permutation.npy`` next to it
    (``seed`` draws a new one instead, not EDM's split). ``max_atoms`` drops larger conformers after splitting,
    as :func:`load_geom_drugs`. A missing file raises :class:`GeomDataMissing` (a ``FileNotFoundError``) whose one
    line names the path and says how to get the data.
    """
    path = Path(path).expanduser() if path is not None else default_geom_path()
    index = geom_index(path)
    perm = _permutation(path, permutation_path, seed)
    splits = geom_split(len(index), permutation=perm, seed=seed)
    out = {}
    for name in GEOM_SPLITS:
        ds = GeomDrugsDataset(path, index, splits[name], center=center)
        if max_atoms is not None:
            ds = ds.select(torch.nonzero(ds.num_atoms <= max_atoms).flatten())
        out[name] = ds
    return out


def geom_card(datasets: dict[str, GeomDrugsDataset]) -> dict[str, object]:
    """Per split ``n_molecules`` (conformers) and ``n_atoms_histogram``; the file's rows, conformers and elements;
    ``edm_checks`` (:func:`edm_checks`: whether the whole file has EDM's statistics).

    Element counts are over the whole file (the streamed pass counts them; per split they would need every row).
    """
    first = next(iter(datasets.values()))
    index = first.index
    return {
        **{
            name: {"n_molecules": len(ds), "n_atoms_histogram": ds.node_count_histogram()}
            for name, ds in datasets.items()
        },
        "file": {
            "path": str(first.path),
            "n_rows": index.n_rows,
            "n_conformers": len(index),
            "max_atoms": int(index.counts.max()),
            "element_counts": {ELEMENT_SYMBOLS[z]: n for z, n in sorted(index.element_counts.items())},
        },
        "edm_checks": edm_checks(index),
    }


def read_geom_conformers(path: str | os.PathLike) -> Molecules:
    """Read a ``geom_drugs_30.npy``-style file into a :class:`~energyloss.experiments.molecules.data.Molecules`.

    The array is memory-mapped while reading. ``ids`` are the file's conformer ids; positions become float32.
    Raises ``ValueError`` if the array is not ``(rows, 5)``, an atomic number is not a positive integer, or a
    conformer id reappears after another one (rows of a conformer must be contiguous).
    """
    data = np.load(Path(path), mmap_mode="r", allow_pickle=False)
    if data.ndim != 2 or data.shape[1] != 5:
        raise ValueError(
            f"{path}: expected rows of (conformer id, atomic number, x, y, z), shape (M, 5); got {data.shape}"
        )
    conf = np.asarray(data[:, 0]).astype(np.int64)
    z_float = np.asarray(data[:, 1])
    z = z_float.astype(np.int64)
    if z.size and (not np.array_equal(z, z_float) or int(z.min()) <= 0):
        raise ValueError(f"{path}: column 1 must hold positive integer atomic numbers")
    starts = np.concatenate([[0], np.nonzero(conf[1:] != conf[:-1])[0] + 1]) if conf.size else np.zeros(0, np.int64)
    ids = conf[starts]
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: the rows of a conformer must be contiguous (an id reappears later in the file)")
    num = np.diff(np.concatenate([starts, [conf.size]]))
    return Molecules(
        positions=torch.from_numpy(np.asarray(data[:, 2:5], dtype=np.float32).copy()),
        atomic_numbers=torch.from_numpy(z),
        num_atoms=torch.from_numpy(num.astype(np.int64)),
        ids=torch.from_numpy(ids),
    )


def geom_split(
    n_conformers: int,
    *,
    permutation: np.ndarray | None = None,
    seed: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """EDM's GEOM split: positions into the conformer list, in permuted order.

    ``permutation`` (EDM's stored ``geom_permutation.npy``) or ``seed`` (a fresh
    ``RandomState(seed).permutation``) must be given. Valid = first ``int(val_fraction * n)`` permuted
    conformers, test = next ``int(test_fraction * n)``, train = the rest.

    >>> {k: v.tolist() for k, v in geom_split(10, permutation=np.arange(10)[::-1]).items()}
    {'train': [7, 6, 5, 4, 3, 2, 1, 0], 'valid': [9], 'test': [8]}
    """
    if permutation is None:
        if seed is None:
            raise ValueError("pass EDM's stored permutation (geom_permutation.npy) or a seed for a new one")
        permutation = np.random.RandomState(seed).permutation(n_conformers)
    perm = np.asarray(permutation, dtype=np.int64)
    if perm.shape != (n_conformers,) or not np.array_equal(np.sort(perm), np.arange(n_conformers)):
        raise ValueError(f"permutation must be a permutation of 0..{n_conformers - 1}; got shape {perm.shape}")
    n_val = int(n_conformers * val_fraction)
    n_test = int(n_conformers * test_fraction)
    return {"train": perm[n_val + n_test :], "valid": perm[:n_val], "test": perm[n_val : n_val + n_test]}


def load_geom_drugs(
    path: str | os.PathLike,
    *,
    permutation_path: str | os.PathLike | None = None,
    seed: int | None = None,
    max_atoms: int | None = None,
) -> dict[str, Molecules]:
    """The train / valid / test splits of a ``geom_drugs_30.npy``-style file.

    Parameters
    ----------
    path : the ``(M, 5)`` array file.
    permutation_path : EDM's ``geom_permutation.npy``; default: that name next to ``path`` if it exists.
    seed : draw a new permutation instead (when no stored one is available).
    max_atoms : drop conformers with more atoms, *after* splitting (EDM filters before permuting, which only
        works with a permutation made for the filtered list; filtering after keeps the split's conformers).
    """
    path = Path(path)
    molecules = read_geom_conformers(path)
    perm = None
    perm_file = Path(permutation_path) if permutation_path is not None else path.with_name("geom_permutation.npy")
    if permutation_path is not None or (seed is None and perm_file.is_file()):
        perm = np.load(perm_file, allow_pickle=False)
    splits = geom_split(len(molecules), permutation=perm, seed=seed)
    out = {}
    for name in GEOM_SPLITS:
        part = molecules.select(torch.from_numpy(splits[name]))
        if max_atoms is not None:
            part = part.select(torch.nonzero(part.num_atoms <= max_atoms).flatten())
        out[name] = part
    return out


# --------------------------------------------------------------------------------------------------------------
# EDM's statistics of the file

# fmt: off
#: Atom count -> conformers of EDM's ``geom_with_h["n_nodes"]`` (``configs/datasets_config.py``): 6,922,516
#: conformers, 322,877,623 atoms. EDM samples the atom count of its GEOM molecules from it.
EDM_N_NODES: dict[int, int] = {
    3: 1, 4: 3, 5: 9, 6: 2, 7: 8, 8: 23, 9: 23, 10: 50, 11: 109, 12: 168, 13: 280, 14: 402, 15: 583, 16: 597,
    17: 949, 18: 1284, 19: 1862, 20: 2674, 21: 3599, 22: 6109, 23: 8693, 24: 13604, 25: 17419, 26: 25672,
    27: 31647, 28: 43809, 29: 56697, 30: 70400, 31: 82655, 32: 104100, 33: 122776, 34: 140834, 35: 164888,
    36: 185451, 37: 194541, 38: 218549, 39: 231232, 40: 243300, 41: 253349, 42: 268341, 43: 272081, 44: 276917,
    45: 276839, 46: 274747, 47: 272126, 48: 262709, 49: 250157, 50: 244781, 51: 228898, 52: 215338, 53: 203728,
    54: 191697, 55: 180518, 56: 163843, 57: 152055, 58: 136536, 59: 120393, 60: 107292, 61: 94635, 62: 83179,
    63: 68384, 64: 61517, 65: 48867, 66: 37685, 67: 32859, 68: 27367, 69: 20981, 70: 18699, 71: 14791, 72: 11921,
    73: 9933, 74: 9037, 75: 6538, 76: 6374, 77: 4036, 78: 4189, 79: 3842, 80: 3277, 81: 2925, 82: 1843, 83: 2060,
    84: 1394, 85: 1514, 86: 1357, 87: 1346, 88: 999, 89: 300, 90: 390, 91: 510, 92: 510, 93: 240, 94: 721, 95: 360,
    96: 360, 97: 390, 98: 330, 99: 540, 100: 258, 101: 210, 102: 60, 103: 180, 104: 206, 105: 60, 106: 390,
    107: 180, 108: 180, 109: 150, 110: 120, 111: 360, 112: 120, 113: 210, 114: 60, 115: 30, 116: 210, 117: 270,
    118: 450, 119: 240, 120: 228, 121: 120, 122: 30, 123: 420, 124: 240, 125: 210, 126: 158, 127: 180, 128: 60,
    129: 30, 130: 120, 131: 30, 132: 120, 133: 60, 134: 240, 135: 169, 136: 240, 137: 30, 138: 270, 139: 180,
    140: 270, 141: 150, 142: 60, 143: 60, 144: 240, 145: 180, 146: 150, 147: 150, 148: 90, 149: 90, 151: 30,
    152: 60, 155: 90, 159: 30, 160: 60, 165: 30, 171: 30, 175: 30, 176: 60, 181: 30
}
#: Atomic number -> atoms of EDM's ``geom_with_h["atom_types"]`` (the same 322,877,623 atoms).
EDM_ATOM_TYPES: dict[int, int] = {
    1: 143905848, 5: 290, 6: 129988623, 7: 20266722, 8: 21669359, 9: 1481844, 13: 1, 14: 250, 15: 36290,
    16: 3999872, 17: 1224394, 33: 4, 35: 298702, 53: 5377, 80: 13, 83: 34,
}
# fmt: on


def edm_checks(index: GeomIndex) -> dict[str, bool]:
    """Whether a file's atom-count histogram and element counts (over all its conformers) are EDM's statistics.

    EDM ships them in ``configs/datasets_config.py`` (:data:`EDM_N_NODES`, :data:`EDM_ATOM_TYPES`); both sum to the
    same 322,877,623 atoms, which suggests they cover the whole file (not checked against a real file here).
    """
    histogram = node_count_histogram(torch.from_numpy(index.counts.astype(np.int64)))
    return {
        "n_atoms_histogram_matches_edm": histogram == EDM_N_NODES,
        "element_counts_match_edm": dict(index.element_counts) == EDM_ATOM_TYPES,
    }


# --------------------------------------------------------------------------------------------------------------
# A generated file in the same format (tests, smoke runs without the real data)

#: Element weights of :func:`write_synthetic_geom` (roughly GEOM-Drugs' atom frequencies; every type occurs).
_SYNTHETIC_WEIGHTS = {1: 0.44, 6: 0.40, 7: 0.063, 8: 0.067, 9: 0.005, 16: 0.012, 17: 0.004, 35: 0.001}


def write_synthetic_geom(
    folder: str | os.PathLike,
    *,
    n_molecules: int = 40,
    conformers: int = 3,
    max_atoms: int = GEOM_MAX_ATOMS,
    seed: int = 0,
    dtype: type = np.float64,
) -> Path:
    """Write a small GEOM-format ``geom_drugs_30.npy`` and its ``geom_permutation.npy`` into ``folder``.

    Not GEOM: ``n_molecules`` random chain "molecules" (3 to ``max_atoms`` atoms, one of exactly ``max_atoms``;
    every one of EDM's 16 element types occurs) with ``conformers`` rotated and jittered copies each, stored as
    EDM's ``build_geom_dataset.py`` stores conformers (consecutive ids, one row per atom), and a seeded split
    permutation. For tests and smoke runs of ``--data geom-drugs``; returns the path of the ``.npy`` file.
    """
    from energyloss.testing import random_rotations

    if n_molecules < 1 or conformers < 1 or not 3 <= max_atoms:
        raise ValueError("n_molecules and conformers must be >= 1 and max_atoms >= 3")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    others = [z for z in GEOM_ELEMENTS if z not in _SYNTHETIC_WEIGHTS]
    weights = dict(_SYNTHETIC_WEIGHTS) | dict.fromkeys(others, 0.001)
    zs, ps = np.array(list(weights)), np.array(list(weights.values()))
    sizes = rng.integers(3, max_atoms + 1, size=n_molecules)
    sizes[0] = max_atoms
    rots = random_rotations(n_molecules * conformers, generator=torch.Generator().manual_seed(seed)).double().numpy()
    rows, conf = [], 0
    for m, n in enumerate(sizes.tolist()):
        z = rng.choice(zs, size=n, p=ps / ps.sum())
        if m == 0:
            z[: len(GEOM_ELEMENTS)] = GEOM_ELEMENTS[: min(n, len(GEOM_ELEMENTS))]
        steps = rng.normal(size=(n, 3))
        chain = np.cumsum(1.5 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
        for _ in range(conformers):
            pos = (chain + 0.05 * rng.normal(size=chain.shape)) @ rots[conf].T
            rows.append(np.column_stack([np.full(n, conf, dtype=np.float64), z, pos]))
            conf += 1
    path = folder / GEOM_FILE
    np.save(path, np.concatenate(rows).astype(dtype))
    np.save(folder / PERMUTATION_FILE, np.random.RandomState(seed).permutation(conf).astype(np.int32))
    return path
