"""Molecules with bonds: ragged bond graphs, bonds perceived from 3-D structures, QM9 with bonds (cached).

**Bond graphs.** :class:`BondGraphs` stores, for a ragged set of molecules (aligned with a
:class:`~energyloss.experiments.molecules.data.Molecules` store), every bond once as a pair of *local* atom indices
``i < j`` with an order, plus one formal charge per atom. Orders are 1 (single), 2 (double), 3 (triple) and 4
(aromatic, JODO's fourth edge type). Everything this module *produces* is Kekulé (orders 1-3): aromatic rings are
written as alternating single and double bonds, as in the QM9 SDF file JODO trains on; order 4 is only *accepted*
from files and models (the metrics kekulise it, see :mod:`~energyloss.experiments.molecules.table3_metrics`).

**Bonds from 3-D structures** (:func:`perceive_bonds`, :func:`perceive_bond_graphs`). RDKit's
``rdDetermineBonds.DetermineBonds`` (Kim and Kim's xyz2mol algorithm) with the molecule's total charge (0 for QM9):

1. connectivity from covalent radii (``DetermineConnectivity``, RDKit's default factor 1.3);
2. bond orders and formal charges that satisfy every atom's valence with the given total charge
   (``DetermineBondOrders``, charged fragments allowed);
3. if step 2 fails (in QM9: strained bicyclic cages, where the radii rule adds a bond across a small ring), the
   connectivity is recomputed with extended Hückel (YAeHMOP, ``useHueckel=True``; about 5 times slower, so only for
   these) and step 2 repeated;
4. the result must pass RDKit sanitisation (``DetermineBondOrders`` can return an over-valent carbon; that counts
   as a failure of the rule) and is kekulised (``Kekulize(clearAromaticFlags=True)``): orders 1-3 only.

``method="radii"`` / ``"hueckel"`` use only one connectivity rule; ``"auto"`` (the default) is the sequence above.
A molecule for which every rule fails has no graph (``BondGraphs.perceived`` is False); the metrics count it as
2-D unstable and invalid. The rule never looks at a reference SMILES.

**QM9 with bonds** (:func:`prepare_qm9_bonds`, :func:`load_qm9_bonds`). The bonds of every molecule of a QM9 split
are perceived as above and **checked against QM9's own SMILES** (the ``SMILES`` column of the ``qm9pack`` CSV files,
or the relaxed-geometry SMILES of the figshare XYZ files): both are written as RDKit canonical SMILES without
hydrogens and without stereochemistry (charges kept) and must be equal. A molecule is *excluded* (never silently
kept) when the perception failed, when the two SMILES differ, or when QM9's SMILES cannot be parsed; the manifest
lists every excluded molecule with its QM9 index, the reason and both SMILES. :func:`load_qm9_bonds` returns the
agreeing molecules (in split order, EDM's split as in :mod:`~energyloss.experiments.molecules.qm9`) with their
graphs.

The cache is one file per split, ``<cache>/qm9/qm9-{split}-bonds-v1.pt``, with a JSON manifest beside it; both are
written atomically (temporary file, then rename). The manifest's ``key`` holds the SHA-256 of the QM9 data file, the
RDKit version, the perception method and the format version; a cache whose key differs from the current one, or
whose size or checksum does not match its manifest, is rebuilt (with a warning).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import functools
import json
import os
import re
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runs import atomic_save
from .data import Molecules

__all__ = [
    "AROMATIC_CODE",
    "BONDS_VERSION",
    "PERCEPTION_METHODS",
    "BondGraphs",
    "QM9Bonds",
    "bonds_cache_path",
    "canonical_smiles",
    "load_bond_graphs",
    "load_qm9_bonds",
    "perceive_bond_graphs",
    "perceive_bonds",
    "prepare_qm9_bonds",
    "qm9_source_smiles",
    "rdkit_molecule",
]

#: Code of an aromatic bond in stored orders (JODO's fourth edge type; valence 1.5); only accepted as input.
AROMATIC_CODE = 4
BONDS_FORMAT = "energyloss-qm9-bonds"
BONDS_VERSION = 1
PERCEPTION_METHODS: tuple[str, ...] = ("auto", "radii", "hueckel")
#: Per-molecule status codes stored in the cache.
STATUS_AGREES, STATUS_FAILED, STATUS_DISAGREES, STATUS_NO_REFERENCE = 0, 1, 2, 3
_STATUS_NAMES = {
    STATUS_AGREES: "agrees",
    STATUS_FAILED: "perception_failed",
    STATUS_DISAGREES: "disagrees_with_qm9_smiles",
    STATUS_NO_REFERENCE: "qm9_smiles_unparsable",
}
#: Which connectivity rule gave the graph: 0 none (failed), 1 covalent radii, 2 extended Hueckel.
_RULE_CODES = {"radii": 1, "hueckel": 2}


# --------------------------------------------------------------------------------------------------------------
# The ragged graph store


@dataclasses.dataclass(frozen=True)
class BondGraphs:
    """Bonds and formal charges of many molecules, stored ragged like :class:`~.data.Molecules`.

    Attributes
    ----------
    num_atoms : (n,) int64, atoms per molecule (must match the molecules the graphs belong to).
    formal_charges : (M,) int64, one per atom, molecules concatenated.
    num_bonds : (n,) int64, bonds per molecule.
    bonds : (E, 2) int64, *local* atom indices ``i < j`` of each bond, molecules concatenated.
    orders : (E,) int64, 1 / 2 / 3 / 4 (aromatic).
    perceived : (n,) bool, False for molecules without a graph (bond perception failed; they have no bonds).

    Examples
    --------
    >>> g = BondGraphs.from_list([(3, [(0, 1, 1), (0, 2, 1)], [0, 0, 0]), (2, [(0, 1, 2)], None)])  # water, O2
    >>> len(g), g.num_bonds.tolist(), g.global_bonds().tolist()
    (2, [2, 1], [[0, 1], [0, 2], [3, 4]])
    >>> g.to_dense()[0][1].tolist()
    [[0, 2, 0], [2, 0, 0], [0, 0, 0]]
    """

    num_atoms: torch.Tensor
    formal_charges: torch.Tensor
    num_bonds: torch.Tensor
    bonds: torch.Tensor
    orders: torch.Tensor
    perceived: torch.Tensor

    def __post_init__(self) -> None:
        n_atoms, fc, nb, bonds, orders, ok = (
            self.num_atoms,
            self.formal_charges,
            self.num_bonds,
            self.bonds,
            self.orders,
            self.perceived,
        )
        if n_atoms.ndim != 1 or nb.shape != n_atoms.shape or ok.shape != n_atoms.shape:
            raise ValueError("num_atoms, num_bonds and perceived must all have shape (n,)")
        if fc.shape != (int(n_atoms.sum()),):
            raise ValueError(f"formal_charges must have shape ({int(n_atoms.sum())},); got {tuple(fc.shape)}")
        if bonds.ndim != 2 or bonds.shape[1] != 2 or orders.shape != bonds.shape[:1]:
            raise ValueError(f"bonds must be (E, 2) and orders (E,); got {tuple(bonds.shape)}, {tuple(orders.shape)}")
        if int(nb.sum()) != bonds.shape[0]:
            raise ValueError(f"num_bonds sums to {int(nb.sum())} but there are {bonds.shape[0]} bonds")
        if bonds.numel():
            if bool((bonds[:, 0] >= bonds[:, 1]).any()) or int(bonds.min()) < 0:
                raise ValueError("every bond must be stored once as local indices i < j (i >= 0)")
            size = torch.repeat_interleave(n_atoms, nb)
            if bool((bonds[:, 1] >= size).any()):
                raise ValueError("a bond refers to an atom index beyond its molecule's atom count")
            if bool(((orders < 1) | (orders > AROMATIC_CODE)).any()):
                raise ValueError("bond orders must be 1, 2, 3 or 4 (aromatic)")
        if bool((~ok & (nb > 0)).any()):
            raise ValueError("a molecule without a perceived graph cannot have bonds")

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_list(
        cls,
        graphs: Sequence[tuple[int, Sequence[tuple[int, int, int]], Sequence[int] | None] | None],
        *,
        num_atoms: Sequence[int] | None = None,
    ) -> BondGraphs:
        """From ``(n_atoms, [(i, j, order), ...], charges or None)`` per molecule; ``None`` = no graph.

        A ``None`` entry needs ``num_atoms`` (the atom count of every molecule). Bonds may be given in either
        direction; each unordered pair must appear once.
        """
        counts, charges, nb, pairs, orders, ok = [], [], [], [], [], []
        for k, graph in enumerate(graphs):
            if graph is None:
                if num_atoms is None:
                    raise ValueError(f"molecule {k} has no graph: pass num_atoms")
                n = int(num_atoms[k])
                counts.append(n)
                charges.extend([0] * n)
                nb.append(0)
                ok.append(False)
                continue
            n, bond_list, fcs = graph
            counts.append(int(n))
            charges.extend([0] * int(n) if fcs is None else [int(c) for c in fcs])
            if fcs is not None and len(fcs) != int(n):
                raise ValueError(f"molecule {k}: {len(fcs)} formal charges for {n} atoms")
            seen = set()
            for i, j, o in bond_list:
                a, b = (int(i), int(j)) if int(i) < int(j) else (int(j), int(i))
                if a == b or (a, b) in seen:
                    raise ValueError(f"molecule {k}: bond ({i}, {j}) is a self-loop or repeated")
                seen.add((a, b))
                pairs.append((a, b))
                orders.append(int(o))
            nb.append(len(seen))
            ok.append(True)
        return cls(
            num_atoms=torch.tensor(counts, dtype=torch.int64),
            formal_charges=torch.tensor(charges, dtype=torch.int64),
            num_bonds=torch.tensor(nb, dtype=torch.int64),
            bonds=torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
            orders=torch.tensor(orders, dtype=torch.int64),
            perceived=torch.tensor(ok, dtype=torch.bool),
        )

    @classmethod
    def from_dense(
        cls,
        orders: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray,
        formal_charges: torch.Tensor | np.ndarray | None = None,
    ) -> BondGraphs:
        """From dense ``orders: (B, N, N)`` (0 = no bond; JODO's edge types), ``mask: (B, N)`` and ``(B, N)`` charges.

        The matrix must be symmetric on real atoms; entries touching padding are ignored. Real atoms come first.
        """
        o = torch.as_tensor(orders).long()
        m = torch.as_tensor(mask).bool()
        if o.ndim != 3 or o.shape[1] != o.shape[2] or o.shape[:2] != m.shape:
            raise ValueError(f"orders must be (B, N, N) matching mask (B, N); got {tuple(o.shape)}, {tuple(m.shape)}")
        pair = m[:, :, None] & m[:, None, :]
        o = torch.where(pair, o, torch.zeros_like(o))
        if not torch.equal(o, o.transpose(1, 2)):
            raise ValueError("bond orders must be symmetric on real atoms")
        if bool(torch.diagonal(o, dim1=1, dim2=2).any()):
            raise ValueError("bond orders must be zero on the diagonal")
        b, i, j = torch.nonzero(torch.triu(o, diagonal=1), as_tuple=True)  # sorted by molecule
        n = m.sum(-1)
        fc = torch.zeros(m.shape, dtype=torch.int64) if formal_charges is None else torch.as_tensor(formal_charges)
        if fc.shape != m.shape:
            raise ValueError(f"formal_charges must have shape {tuple(m.shape)}; got {tuple(fc.shape)}")
        return cls(
            num_atoms=n.long(),
            formal_charges=fc.long()[m],
            num_bonds=torch.bincount(b, minlength=m.shape[0]).long(),
            bonds=torch.stack([i, j], 1).long(),
            orders=o[b, i, j],
            perceived=torch.ones(m.shape[0], dtype=torch.bool),
        )

    # access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.num_atoms.shape[0])

    @functools.cached_property
    def atom_ptr(self) -> torch.Tensor:
        """``(n + 1,)`` atom offsets."""
        return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.num_atoms, 0)])

    @functools.cached_property
    def bond_ptr(self) -> torch.Tensor:
        """``(n + 1,)`` bond offsets: molecule ``k`` owns bonds ``bond_ptr[k]:bond_ptr[k + 1]``."""
        return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.num_bonds, 0)])

    @functools.cached_property
    def _lists(self) -> tuple[list, list, list, list, list]:
        """Python lists for :meth:`molecule` (computed once: per-molecule tensor slicing is slow)."""
        return (
            self.bond_ptr.tolist(),
            self.atom_ptr.tolist(),
            self.bonds.tolist(),
            self.orders.tolist(),
            self.formal_charges.tolist(),
        )

    def global_bonds(self) -> torch.Tensor:
        """``(E, 2)`` bonds as indices into the concatenated atoms of all molecules."""
        offset = torch.repeat_interleave(self.atom_ptr[:-1], self.num_bonds)
        return self.bonds + offset[:, None]

    def molecule(self, k: int) -> tuple[list[tuple[int, int, int]], list[int]]:
        """``([(i, j, order), ...], charges)`` of molecule ``k``."""
        bp, ap, pairs, orders, charges = self._lists
        a, b = bp[k], bp[k + 1]
        bonds = [(i, j, o) for (i, j), o in zip(pairs[a:b], orders[a:b], strict=True)]
        return bonds, charges[ap[k] : ap[k + 1]]

    def select(self, indices: torch.Tensor | Sequence[int]) -> BondGraphs:
        """The graphs at ``indices`` (any order, repeats allowed)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)

        def gather(ptr: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            c = counts[idx]
            starts = ptr[:-1][idx]
            new = torch.cumsum(c, 0) - c
            return torch.arange(int(c.sum())) + torch.repeat_interleave(starts - new, c)

        atoms = gather(self.atom_ptr, self.num_atoms)
        bonds = gather(self.bond_ptr, self.num_bonds)
        return BondGraphs(
            num_atoms=self.num_atoms[idx].clone(),
            formal_charges=self.formal_charges[atoms],
            num_bonds=self.num_bonds[idx].clone(),
            bonds=self.bonds[bonds],
            orders=self.orders[bonds],
            perceived=self.perceived[idx].clone(),
        )

    def to_dense(self, *, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``orders: (n, N, N)`` (symmetric, 0 = no bond) and ``formal_charges: (n, N)`` (0 on padding)."""
        width = int(self.num_atoms.max()) if len(self) else 0
        width = width if pad_to is None else int(pad_to)
        dense = torch.zeros(len(self), width, width, dtype=torch.int64)
        mol = torch.repeat_interleave(torch.arange(len(self)), self.num_bonds)
        dense[mol, self.bonds[:, 0], self.bonds[:, 1]] = self.orders
        dense[mol, self.bonds[:, 1], self.bonds[:, 0]] = self.orders
        fc = torch.zeros(len(self), width, dtype=torch.int64)
        atom_mol = torch.repeat_interleave(torch.arange(len(self)), self.num_atoms)
        slot = torch.arange(self.formal_charges.shape[0]) - self.atom_ptr[:-1][atom_mol]
        fc[atom_mol, slot] = self.formal_charges
        return dense, fc

    def check_matches(self, molecules: Molecules) -> None:
        """Raise ``ValueError`` unless these graphs have one entry per molecule with the same atom counts."""
        if len(self) != len(molecules) or not torch.equal(self.num_atoms, molecules.num_atoms):
            raise ValueError(
                f"bond graphs ({len(self)} molecules) do not match the molecules ({len(molecules)}): atom counts differ"
            )

    @staticmethod
    def concat(parts: Sequence[BondGraphs]) -> BondGraphs:
        """One store with all graphs of ``parts`` in order."""
        if not parts:
            return BondGraphs.from_list([])
        return BondGraphs(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(BondGraphs)))


# --------------------------------------------------------------------------------------------------------------
# RDKit helpers


def _rdkit():
    try:
        from rdkit import Chem, rdBase
    except ImportError as err:  # pragma: no cover - rdkit is in the molecules extra
        raise ImportError("bond graphs from RDKit need RDKit: pip install 'energyloss[molecules]'") from err
    return Chem, rdBase


def rdkit_molecule(
    atomic_numbers: Sequence[int],
    bonds: Sequence[tuple[int, int, int]],
    formal_charges: Sequence[int] | None = None,
    positions: np.ndarray | None = None,
):
    """An unsanitised RDKit ``RWMol`` with these atoms, bonds (order 1-3, 4 = aromatic) and formal charges.

    Hydrogens are ordinary atoms (``NoImplicit`` is not set, so sanitisation may add implicit hydrogens to
    under-bonded atoms, as in EDM and JODO). ``positions`` (n, 3) adds a conformer.

    >>> from rdkit import Chem
    >>> Chem.MolToSmiles(rdkit_molecule([6, 8], [(0, 1, 2)]))
    'C=O'
    """
    Chem, _ = _rdkit()
    types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 4: Chem.BondType.AROMATIC}
    mol = Chem.RWMol()
    for k, z in enumerate(atomic_numbers):
        atom = Chem.Atom(int(z))
        if formal_charges is not None and int(formal_charges[k]):
            atom.SetFormalCharge(int(formal_charges[k]))
        mol.AddAtom(atom)
    for i, j, o in bonds:
        mol.AddBond(int(i), int(j), types[int(o)])
        if int(o) == AROMATIC_CODE:
            mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    if positions is not None:
        from rdkit.Geometry import Point3D

        conf = Chem.Conformer(len(atomic_numbers))
        for k, p in enumerate(np.asarray(positions, dtype=np.float64).tolist()):
            conf.SetAtomPosition(k, Point3D(*p))
        mol.AddConformer(conf, assignId=True)
    return mol


def canonical_smiles(mol) -> str:
    """RDKit canonical SMILES without hydrogens and stereochemistry (formal charges kept) of a sanitised molecule.

    This is the form in which perceived graphs are compared with QM9's SMILES.

    >>> from rdkit import Chem
    >>> canonical_smiles(Chem.AddHs(Chem.MolFromSmiles("C/C=C/C")))
    'CC=CC'
    """
    Chem, rdBase = _rdkit()
    mol = Chem.Mol(mol)
    with rdBase.BlockLogs():
        Chem.RemoveStereochemistry(mol)
        mol = Chem.RemoveHs(mol, sanitize=True)
        return Chem.MolToSmiles(mol, isomericSmiles=False)


def _smiles_key(smiles: str) -> str | None:
    """QM9's SMILES in the comparison form of :func:`canonical_smiles` (``None`` if RDKit cannot parse it)."""
    Chem, rdBase = _rdkit()
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else canonical_smiles(mol)


@contextlib.contextmanager
def _c_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null (YAeHMOP, behind ``useHueckel``, prints warnings from C)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (AttributeError, ValueError):  # closed or replaced streams
        pass
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no real descriptors (embedded interpreters): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).fflush(None)  # flush C stdio buffers while they still point to /dev/null
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _determine(base, rule: str, charge: int):
    Chem, rdBase = _rdkit()
    from rdkit.Chem import rdDetermineBonds

    mol = Chem.RWMol(base)
    with rdBase.BlockLogs():
        if rule == "hueckel":
            with _c_output_silenced():
                rdDetermineBonds.DetermineBonds(mol, charge=charge, useHueckel=True, embedChiral=False)
        else:
            rdDetermineBonds.DetermineBonds(mol, charge=charge, embedChiral=False)
        Chem.SanitizeMol(mol)  # DetermineBondOrders can return over-valent atoms: a failure like any other
        Chem.Kekulize(mol, clearAromaticFlags=True)
    return mol


def perceive_bonds(
    atomic_numbers: Sequence[int], positions: np.ndarray, *, charge: int = 0, method: str = "auto"
) -> tuple[list[tuple[int, int, int]], list[int], str] | None:
    """Kekulé bonds and formal charges of one molecule from its 3-D structure (see the module docstring).

    Returns ``([(i, j, order), ...] with i < j, formal charges, rule)`` where ``rule`` is ``"radii"`` or
    ``"hueckel"`` (the connectivity rule that worked), or ``None`` if no rule gives a valid structure.

    >>> import numpy as np
    >>> pos = np.array([[0.0, 0, 0], [1.21, 0, 0]])  # O=O
    >>> perceive_bonds([8, 8], pos)
    ([(0, 1, 2)], [0, 0], 'radii')
    """
    if method not in PERCEPTION_METHODS:
        raise ValueError(f"method must be one of {PERCEPTION_METHODS}; got {method!r}")
    z = [int(a) for a in atomic_numbers]
    pos = np.asarray(positions, dtype=np.float64).reshape(len(z), 3)
    if not z:
        return [], [], "radii"
    if not np.isfinite(pos).all():
        return None
    base = rdkit_molecule(z, [], positions=pos)
    rules = ("radii", "hueckel") if method == "auto" else (method,)
    for rule in rules:
        try:
            mol = _determine(base, rule, charge)
        except Exception:  # RDKit raises ValueError / RuntimeError / its own types for unassignable structures
            continue
        bonds = []
        for bond in mol.GetBonds():
            i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
            bonds.append((i, j, int(round(bond.GetBondTypeAsDouble()))))
        bonds.sort()
        return bonds, [a.GetFormalCharge() for a in mol.GetAtoms()], rule
    return None


def _perceive_chunk(args: tuple[list[tuple[list[int], np.ndarray]], int, str]) -> list:
    items, charge, method = args
    return [perceive_bonds(z, pos, charge=charge, method=method) for z, pos in items]


def _molecule_items(molecules: Molecules) -> list[tuple[list[int], np.ndarray]]:
    ptr = molecules.ptr.tolist()
    pos = molecules.positions.double().numpy()
    z = molecules.atomic_numbers.tolist()
    return [(z[a:b], pos[a:b]) for a, b in zip(ptr[:-1], ptr[1:], strict=True)]


def _map_perception(items: list, charge: int, method: str, n_jobs: int, progress: bool, desc: str) -> list:
    from ..runs import progress as _progress

    size = 500
    chunks = [(items[k : k + size], charge, method) for k in range(0, len(items), size)]
    out: list = []
    if n_jobs <= 1 or len(items) < 2 * size:
        for chunk in _progress(chunks, desc=desc, total=len(chunks), disable=not progress):
            out.extend(_perceive_chunk(chunk))
        return out
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
        results = pool.map(_perceive_chunk, chunks)
        for part in _progress(results, desc=desc, total=len(chunks), disable=not progress):
            out.extend(part)
    return out


def perceive_bond_graphs(
    molecules: Molecules,
    *,
    charge: int = 0,
    method: str = "auto",
    n_jobs: int = 1,
    progress: bool = False,
) -> tuple[BondGraphs, np.ndarray]:
    """Bond graphs of every molecule (:func:`perceive_bonds`), and which rule gave each (0 failed, 1 radii, 2 Hückel).

    ``n_jobs > 1`` spreads the work over processes (from 1,000 molecules up).
    """
    if method not in PERCEPTION_METHODS:
        raise ValueError(f"method must be one of {PERCEPTION_METHODS}; got {method!r}")
    results = _map_perception(_molecule_items(molecules), charge, method, n_jobs, progress, "perceiving bonds")
    graphs = []
    rules = np.zeros(len(results), dtype=np.uint8)
    for k, (res, n) in enumerate(zip(results, molecules.num_atoms.tolist(), strict=True)):
        if res is None:
            graphs.append(None)
        else:
            graphs.append((n, res[0], res[1]))
            rules[k] = _RULE_CODES[res[2]]
    return BondGraphs.from_list(graphs, num_atoms=molecules.num_atoms.tolist()), rules


# --------------------------------------------------------------------------------------------------------------
# Bonds in molecule files


def load_bond_graphs(path: str | os.PathLike, ids: torch.Tensor | Sequence[int] | None = None) -> BondGraphs | None:
    """The bonds stored in a molecule file, or ``None`` if it has none.

    - ``.npz`` / ``.pt`` in the project's sample format: the optional ``bond_orders: (B, N, N)`` array (0 = no bond,
      1-3, 4 aromatic; JODO's edge types) and ``formal_charges: (B, N)`` (default 0), as written by
      :func:`~energyloss.experiments.molecules.data.save_molecules` with ``bonds=``;
    - ``.sdf``: the bonds and formal charges of every record (RDKit, unsanitised; aromatic bonds stay order 4);
    - ``.xyz``: never.

    ``ids`` selects records (the record numbers of a screened file, see
    :func:`~energyloss.experiments.molecules.data.load_screened`); default all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    graphs: BondGraphs | None
    if suffix in (".npz", ".pt"):
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("bond_orders") is None:
            return None
        orders = torch.as_tensor(np.asarray(data["bond_orders"])).long()
        pos = np.asarray(data["positions"])
        b, n = (1, pos.shape[0]) if pos.ndim == 2 else pos.shape[:2]
        orders = orders.reshape(b, n, n)
        if data.get("mask") is not None:
            mask = torch.as_tensor(np.asarray(data["mask"])).bool().reshape(b, n)
        elif data.get("atomic_numbers") is not None:
            mask = torch.as_tensor(np.asarray(data["atomic_numbers"])).reshape(b, n) > 0
        else:
            raise ValueError(f"{path}: bonds need 'mask' or 'atomic_numbers' to tell real atoms from padding")
        fc = data.get("formal_charges")
        fc_t = None if fc is None else torch.as_tensor(np.asarray(fc)).long().reshape(b, n)
        try:
            graphs = BondGraphs.from_dense(orders, mask, fc_t)
        except ValueError as err:
            raise ValueError(f"{path}: bond_orders: {err}") from None
    elif suffix in (".sdf", ".mol"):
        Chem, rdBase = _rdkit()
        items = []
        with rdBase.BlockLogs():
            for k, mol in enumerate(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)):
                if mol is None:
                    raise ValueError(f"{path}: record {k} could not be parsed by RDKit")
                bonds = []
                for bond in mol.GetBonds():
                    t = bond.GetBondType()
                    order = AROMATIC_CODE if t == Chem.BondType.AROMATIC else int(round(bond.GetBondTypeAsDouble()))
                    if order not in (1, 2, 3, AROMATIC_CODE):
                        raise ValueError(f"{path}: record {k}: unsupported bond type {t}")
                    bonds.append((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), order))
                items.append((mol.GetNumAtoms(), bonds, [a.GetFormalCharge() for a in mol.GetAtoms()]))
        graphs = BondGraphs.from_list(items)
    else:
        return None
    return graphs if ids is None else graphs.select(torch.as_tensor(ids, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------------------
# QM9 with bonds


def bonds_cache_path(split: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/qm9/qm9-{split}-bonds-v1.pt`` (its manifest: same name, ``.json``)."""
    from . import qm9

    return qm9.cache_path(cache_dir).with_name(f"qm9-{split}-bonds-v{BONDS_VERSION}.pt")


def _read_csv_smiles(folder: Path, wanted: set[int]) -> dict[int, str]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out: dict[int, str] = {}
    for path in sorted(folder.glob("qm9_part*.csv")):
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if "SMILES" not in (reader.fieldnames or ()):
                raise ValueError(f"{path}: no SMILES column to check the bonds against")
            for row in reader:
                index = int(row["Index"])
                if index in wanted:
                    out[index] = row["SMILES"]
    return out


def _read_tarball_smiles(folder: Path, wanted: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    with tarfile.open(folder / "dsgdb9nsd.xyz.tar.bz2", "r:*") as archive:
        for member in archive:
            match = re.search(r"(\d+)\.xyz$", member.name)
            if not member.isfile() or match is None or int(match.group(1)) not in wanted:
                continue
            fh = archive.extractfile(member)
            assert fh is not None  # isfile() members always have data
            lines = fh.read().decode("utf-8").splitlines()
            n = int(lines[0].split()[0])
            out[int(match.group(1))] = lines[n + 3].split()[1]  # GDB-17 SMILES, then B3LYP-relaxed SMILES
    return out


def qm9_source_smiles(manifest: Mapping[str, Any], indices: Sequence[int]) -> tuple[dict[int, str], str]:
    """QM9's own SMILES of the molecules with these QM9 indices, read from the source the cache was built from.

    ``qm9pack`` CSV: the ``SMILES`` column; figshare archive: the second (B3LYP-relaxed) SMILES of each XYZ file.
    Returns ``(index -> SMILES, description of the source)``; raises ``FileNotFoundError`` if the source is gone.
    """
    source = manifest.get("source", {})
    folder = Path(source.get("path", ""))
    wanted = {int(i) for i in indices}
    if source.get("kind") == "qm9pack-csv":
        if not any(folder.glob("qm9_part*.csv")):
            raise FileNotFoundError(f"the QM9 source {folder} (qm9pack CSV files) is gone: cannot read its SMILES")
        return _read_csv_smiles(folder, wanted), f"qm9pack CSV 'SMILES' column ({folder})"
    if source.get("kind") == "figshare":
        if not (folder / "dsgdb9nsd.xyz.tar.bz2").is_file():
            raise FileNotFoundError(f"the QM9 archive in {folder} is gone: cannot read its SMILES")
        return _read_tarball_smiles(folder, wanted), f"figshare XYZ files, relaxed-geometry SMILES ({folder})"
    raise ValueError(f"unknown QM9 source kind {source.get('kind')!r}: cannot read its SMILES")


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _current_key(data_sha256: str, method: str, charge: int) -> dict[str, Any]:
    from .metrics import rdkit_version

    return {
        "format": BONDS_FORMAT,
        "version": BONDS_VERSION,
        "data_sha256": data_sha256,
        "rdkit": rdkit_version(),
        "method": method,
        "total_charge": charge,
    }


def _verify_bonds(path: Path, key: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a valid bonds cache with this key, else ``CacheError`` saying why."""
    from . import qm9

    mpath = _manifest_path(path)
    if not path.is_file():
        raise qm9.CacheError(f"missing: {path} does not exist")
    if not mpath.is_file():
        raise qm9.CacheError(f"partial: {path} has no manifest {mpath.name}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise qm9.CacheError(f"corrupt: manifest {mpath} is unreadable ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("key") != dict(key):
        raise qm9.CacheError(f"stale: {mpath} was built for other data, RDKit version or method")
    if path.stat().st_size != manifest.get("bytes") or qm9.file_checksum(path) != manifest.get("sha256"):
        raise qm9.CacheError(f"corrupt: {path} does not match the size / SHA-256 in its manifest")
    return manifest


def _skeleton(smiles: str) -> str | None:
    """Canonical SMILES of the molecule's skeleton: every atom (hydrogens explicit), every bond single, no charges.

    Two SMILES with the same skeleton describe the same atoms, connectivity and hydrogen positions and differ only
    in bond orders and formal charges (resonance forms, e.g. a zwitterion and its neutral form).
    """
    Chem, rdBase = _rdkit()
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None
        mol = Chem.RWMol(Chem.AddHs(mol))
        for bond in mol.GetBonds():
            bond.SetBondType(Chem.BondType.SINGLE)
            bond.SetIsAromatic(False)
        for atom in mol.GetAtoms():
            atom.SetFormalCharge(0)
            atom.SetIsAromatic(False)
            atom.SetNoImplicit(True)
            atom.SetNumExplicitHs(0)
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
        return Chem.MolToSmiles(mol)


def _build_split(
    split: str,
    molecules: Molecules,
    reference: Mapping[int, str],
    source_text: str,
    key: Mapping[str, Any],
    path: Path,
    *,
    method: str,
    charge: int,
    n_jobs: int,
    progress: bool,
) -> dict[str, Any]:
    from . import qm9

    start = time.perf_counter()
    graphs, rules = perceive_bond_graphs(molecules, charge=charge, method=method, n_jobs=n_jobs, progress=progress)
    perceive_seconds = time.perf_counter() - start
    ids = molecules.ids.tolist()
    status = np.zeros(len(ids), dtype=np.uint8)
    excluded = []
    z_all = molecules.atomic_numbers.tolist()
    ptr = molecules.ptr.tolist()
    Chem, rdBase = _rdkit()
    perceived = graphs.perceived.tolist()
    for k, index in enumerate(ids):
        ref = reference.get(index)
        ref_key = None if ref is None else _smiles_key(ref)
        ours = None
        if not perceived[k]:
            status[k] = STATUS_FAILED
        else:
            bonds, fcs = graphs.molecule(k)
            mol = rdkit_molecule(z_all[ptr[k] : ptr[k + 1]], bonds, fcs)
            with rdBase.BlockLogs():
                Chem.SanitizeMol(mol)
            ours = canonical_smiles(mol)
            if ref_key is None:
                status[k] = STATUS_NO_REFERENCE
            elif ours != ref_key:
                status[k] = STATUS_DISAGREES
        if status[k] != STATUS_AGREES:
            entry = {"qm9_index": index, "reason": _STATUS_NAMES[int(status[k])], "perceived": ours, "qm9_smiles": ref}
            if status[k] == STATUS_DISAGREES:
                # same atoms, connectivity and hydrogens, other bond orders / charges: another resonance form
                skeleton = _skeleton(ours)
                entry["same_skeleton"] = skeleton is not None and skeleton == _skeleton(ref)
            excluded.append(entry)
    seconds = time.perf_counter() - start
    payload = {
        "format": BONDS_FORMAT,
        "version": BONDS_VERSION,
        "ids": molecules.ids.to(torch.int32),
        "num_atoms": graphs.num_atoms.to(torch.int16),
        "formal_charges": graphs.formal_charges.to(torch.int8),
        "num_bonds": graphs.num_bonds.to(torch.int16),
        "bonds": graphs.bonds.to(torch.int16),
        "orders": graphs.orders.to(torch.uint8),
        "perceived": graphs.perceived,
        "status": torch.from_numpy(status),
        "rule": torch.from_numpy(rules),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _manifest_path(path).unlink(missing_ok=True)
    atomic_save(path, lambda tmp: torch.save(payload, tmp))
    counts = {name: int((status == code).sum()) for code, name in _STATUS_NAMES.items()}
    manifest = {
        "key": dict(key),
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": qm9.file_checksum(path),
        "split": split,
        "n_molecules": len(ids),
        "counts": counts,
        "n_excluded": len(excluded),
        "n_disagreeing_same_skeleton": sum(1 for e in excluded if e.get("same_skeleton")),
        "connectivity_rule": {"radii": int((rules == 1).sum()), "hueckel": int((rules == 2).sum())},
        "check": "RDKit canonical SMILES without H and stereo, perceived graph vs QM9's SMILES: " + source_text,
        "seconds": {"perception": round(perceive_seconds, 1), "total": round(seconds, 1), "n_jobs": n_jobs},
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "excluded": excluded,
    }
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_save(_manifest_path(path), lambda tmp: tmp.write_text(text))
    return manifest


def prepare_qm9_bonds(
    *,
    cache_dir: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "valid", "test"),
    method: str = "auto",
    charge: int = 0,
    n_jobs: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Build (unless valid ones exist and not ``force``) the bond caches of these QM9 splits; return their manifests.

    Builds the QM9 cache itself first if needed. On one (shared) core the test split (13,083 molecules) takes about
    15 s and all 130,831 molecules about 3 minutes (see ``docs/results/jodo.md``); ``n_jobs`` spreads the bond
    perception over processes.
    """
    from . import qm9

    if method not in PERCEPTION_METHODS:
        raise ValueError(f"method must be one of {PERCEPTION_METHODS}; got {method!r}")
    unknown = [s for s in splits if s not in qm9.SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {qm9.SPLITS}")
    data = qm9.load_qm9(cache_dir=cache_dir, progress=progress)
    source_manifest = qm9.verify_cache(qm9.cache_path(cache_dir))
    key = _current_key(source_manifest["sha256"], method, charge)
    out: dict[str, dict[str, Any]] = {}
    todo = []
    for split in splits:
        path = bonds_cache_path(split, cache_dir)
        qm9.remove_stale_temporaries(path.parent)
        if not force:
            try:
                out[split] = _verify_bonds(path, key)
                continue
            except qm9.CacheError as err:
                if not str(err).startswith("missing"):
                    warnings.warn(f"QM9 bond cache is invalid and will be rebuilt: {err}", stacklevel=2)
        todo.append(split)
    if not todo:
        return out
    wanted = [i for split in todo for i in data[split].ids.tolist()]
    reference, source_text = qm9_source_smiles(source_manifest, wanted)
    for split in todo:
        out[split] = _build_split(
            split,
            data[split],
            reference,
            source_text,
            key,
            bonds_cache_path(split, cache_dir),
            method=method,
            charge=charge,
            n_jobs=n_jobs,
            progress=progress,
        )
    return out


@dataclasses.dataclass(frozen=True)
class QM9Bonds:
    """One QM9 split with bonds: the kept molecules, their graphs and the manifest of the bond cache.

    Attributes:
        molecules: the molecules whose perceived bonds agree with QM9's SMILES (``ids`` = QM9 index), in split order.
        graphs: their bond graphs (Kekulé orders 1-3, formal charges).
        manifest: counts, excluded molecules with reasons, timings, key.
    """

    molecules: Molecules
    graphs: BondGraphs
    manifest: dict[str, Any]


def load_qm9_bonds(
    split: str = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    method: str = "auto",
    n_jobs: int = 1,
    progress: bool = True,
    include_excluded: bool = False,
) -> QM9Bonds:
    """A QM9 split with bonds (built and cached on first use; see :func:`prepare_qm9_bonds`).

    ``include_excluded=True`` also returns the molecules whose bonds disagree with QM9's SMILES (never the ones
    whose perception failed); the default leaves them all out. The count left out is ``manifest["n_excluded"]``.
    """
    from . import qm9

    manifest = prepare_qm9_bonds(cache_dir=cache_dir, splits=(split,), method=method, n_jobs=n_jobs, progress=progress)[
        split
    ]
    path = bonds_cache_path(split, cache_dir)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        graphs = BondGraphs(
            num_atoms=payload["num_atoms"].long(),
            formal_charges=payload["formal_charges"].long(),
            num_bonds=payload["num_bonds"].long(),
            bonds=payload["bonds"].long().reshape(-1, 2),
            orders=payload["orders"].long(),
            perceived=payload["perceived"].bool(),
        )
        status = payload["status"].long()
        ids = payload["ids"].long()
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise qm9.CacheError(f"corrupt: {path} cannot be read ({type(err).__name__}: {err})") from err
    molecules = qm9.load_qm9(cache_dir=cache_dir, progress=progress)[split]
    if not torch.equal(molecules.ids, ids):
        raise qm9.CacheError(f"corrupt: {path} lists other molecules than the QM9 cache's {split} split")
    graphs.check_matches(molecules)
    keep = (status == STATUS_AGREES) | (include_excluded & (status == STATUS_DISAGREES))
    idx = keep.nonzero().flatten()
    return QM9Bonds(molecules.select(idx), graphs.select(idx), manifest)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the QM9 bond caches and print their manifests (without the excluded lists) as JSON.

    ``python -m energyloss.experiments.molecules.bonds [--splits train,valid,test] [--jobs N] [--cache-dir DIR]
    [--force] [--no-progress]``
    """
    import argparse

    from . import qm9

    parser = argparse.ArgumentParser(prog="python -m energyloss.experiments.molecules.bonds", description=main.__doc__)
    parser.add_argument("--splits", default="train,valid,test", help="comma-separated QM9 splits")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the bond perception")
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $ENERGYLOSS_CACHE or ~/.cache/energyloss)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the caches are valid")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    start = time.perf_counter()
    try:
        manifests = prepare_qm9_bonds(
            cache_dir=args.cache_dir, splits=splits, n_jobs=args.jobs, force=args.force, progress=not args.no_progress
        )
    except (ValueError, OSError, qm9.CacheError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    out = {split: {k: v for k, v in m.items() if k != "excluded"} for split, m in manifests.items()}
    out["seconds_this_call"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
