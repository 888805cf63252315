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

**Getting the data.** GEOM itself is not downloadable from this machine (no internet besides package
registries) and is not shipped here. Users get ``drugs_crude.msgpack`` from the GEOM dataset (Axelrod &
Gomez-Bombarelli 2022, Harvard Dataverse, doi:10.7910/DVN/JNGTDF, the ``rdkit_folder``/``drugs_crude``
archive) and run EDM's ``build_geom_dataset.py --conformations 30`` to get ``geom_drugs_30.npy``; peers
also re-host the processed file (see EDM's README). The elements are EDM's 16 GEOM types
(:data:`GEOM_ELEMENTS`); the largest molecule has 181 atoms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .data import Molecules

__all__ = ["GEOM_ELEMENTS", "geom_split", "load_geom_drugs", "read_geom_conformers"]

#: Atomic numbers of EDM's 16 GEOM-Drugs atom types (one-hot columns, in EDM's order).
GEOM_ELEMENTS: tuple[int, ...] = (1, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 33, 35, 53, 80, 83)
GEOM_SPLITS: tuple[str, ...] = ("train", "valid", "test")


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
