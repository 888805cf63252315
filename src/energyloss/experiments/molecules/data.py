"""Molecules as tensors: a ragged store, padded and ragged batches, and the file formats we read and write.

A set of molecules is stored *ragged* (:class:`Molecules`): all atoms concatenated, ``positions: (M, 3)`` in
Angstrom and ``atomic_numbers: (M,)``, plus ``num_atoms: (n,)`` per molecule. Two batch layouts come out of it:

- padded: ``positions: (B, N, 3)``, ``mask: (B, N)`` (``True`` for real atoms), padding at the origin with
  atomic number 0 (EDM's layout);
- ragged: ``positions: (M, 3)`` with a PyG-style ``batch: (M,)`` vector giving each atom's molecule, and
  ``ptr: (B + 1,)`` offsets.

Atom types come both as a one-hot over a fixed element list (QM9: H, C, N, O, F) and as ``charges``, the
nuclear charge Z as a float: that is what EDM calls "charges" (it is *not* a formal charge).

The project's sample format (what the diffusion trainer writes and ``energyloss eval-molecules`` reads) is a
``.npz`` or ``.pt`` file holding

- ``positions``: float array ``(B, N, 3)`` in Angstrom;
- ``atomic_numbers``: integer array ``(B, N)``, 0 on padding; *or* ``one_hot: (B, N, K)`` together with
  ``elements: (K,)``, the atomic numbers of the one-hot columns;
- optionally ``mask``: bool ``(B, N)`` (default: ``atomic_numbers > 0``);
- optionally ``bond_orders``: integer ``(B, N, N)``, symmetric, 0 = no bond, 1 / 2 / 3, 4 = aromatic (JODO's edge
  types), and ``formal_charges``: integer ``(B, N)``; read by :func:`~.bonds.load_bond_graphs` (the Table 3
  metrics), ignored by the readers here;
- ``format = "energyloss-molecules"`` and ``version = 1`` (written by :func:`save_molecules`, checked when
  present).

Multi-molecule XYZ files (concatenated XYZ blocks) and SDF files (via RDKit) are read too: see
:func:`load_molecules`. Every error of a reader is one line naming the file and the record (or line).
:func:`load_screened` (what ``energyloss eval-molecules`` uses) also leaves out, with their record numbers, the
molecules that cannot be scored: empty ones, ones with NaN / inf coordinates and SDF records without 3-D
coordinates (:data:`EXCLUSION_REASONS`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ELEMENT_SYMBOLS",
    "EXCLUSION_REASONS",
    "SAMPLE_FORMAT",
    "SAMPLE_FORMAT_VERSION",
    "MoleculeDataset",
    "Molecules",
    "ScreenedMolecules",
    "atomic_number",
    "batch_padded",
    "batch_ragged",
    "collate_padded",
    "collate_ragged",
    "element_counts",
    "load_molecules",
    "load_screened",
    "node_count_histogram",
    "read_sdf",
    "read_xyz",
    "sample_node_counts",
    "save_molecules",
    "screen_molecules",
]

#: Element symbols indexed by atomic number (index 0 is the padding "atom").
ELEMENT_SYMBOLS: tuple[str, ...] = tuple(
    (
        "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
        "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
        "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn"
    ).split()
)
_SYMBOL_TO_Z = {s.lower(): z for z, s in enumerate(ELEMENT_SYMBOLS) if z > 0}

SAMPLE_FORMAT = "energyloss-molecules"
SAMPLE_FORMAT_VERSION = 1
#: Largest atomic number the metrics know (their tables are indexed by Z = 0 .. MAX_ATOMIC_NUMBER).
MAX_ATOMIC_NUMBER = len(ELEMENT_SYMBOLS) - 1
#: Why :func:`load_screened` / :func:`screen_molecules` leave a molecule out (never scored).
EXCLUSION_REASONS: tuple[str, ...] = ("empty", "non_finite_positions", "no_3d_coordinates")


def atomic_number(symbol: str | int) -> int:
    """Atomic number of an element symbol (case-insensitive) or of a number given as text.

    >>> atomic_number("C"), atomic_number("cl"), atomic_number("8")
    (6, 17, 8)
    """
    text = str(symbol).strip()
    if text.isdigit():
        z = int(text)
        if 0 < z < len(ELEMENT_SYMBOLS):
            return z
    elif text.lower() in _SYMBOL_TO_Z:
        return _SYMBOL_TO_Z[text.lower()]
    raise ValueError(f"unknown element {symbol!r}; expected a symbol such as 'C' or an atomic number 1..86")


# --------------------------------------------------------------------------------------------------------------
# The ragged store


@dataclasses.dataclass(frozen=True)
class Molecules:
    """Many molecules stored ragged: atoms of all molecules concatenated.

    Attributes
    ----------
    positions : (M, 3) float tensor, Angstrom.
    atomic_numbers : (M,) int64 tensor, every entry > 0.
    num_atoms : (n,) int64 tensor, atoms per molecule; ``num_atoms.sum() == M``.
    ids : (n,) int64 tensor, an identifier per molecule (QM9 index, row number, ...).

    Examples
    --------
    >>> mols = Molecules.from_list([(torch.zeros(2, 3), torch.tensor([1, 1])), (torch.ones(1, 3), torch.tensor([8]))])
    >>> len(mols), mols.num_atoms.tolist(), mols.ptr.tolist()
    (2, [2, 1], [0, 2, 3])
    >>> pos, z, mask = mols.to_padded()
    >>> pos.shape, z.tolist(), mask.tolist()
    (torch.Size([2, 2, 3]), [[1, 1], [8, 0]], [[True, True], [True, False]])
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    num_atoms: torch.Tensor
    ids: torch.Tensor

    def __post_init__(self) -> None:
        pos, z, n, ids = self.positions, self.atomic_numbers, self.num_atoms, self.ids
        if pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError(f"positions must have shape (M, 3); got {tuple(pos.shape)}")
        if z.shape != pos.shape[:1]:
            raise ValueError(f"atomic_numbers must have shape (M,) = ({pos.shape[0]},); got {tuple(z.shape)}")
        if n.ndim != 1 or ids.shape != n.shape:
            raise ValueError(f"num_atoms and ids must both have shape (n,); got {tuple(n.shape)}, {tuple(ids.shape)}")
        if int(n.sum()) != pos.shape[0]:
            raise ValueError(f"num_atoms sums to {int(n.sum())} but there are {pos.shape[0]} atoms")
        if z.numel() and int(z.min()) <= 0:
            raise ValueError("atomic_numbers must be positive (padding is not stored in Molecules)")

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_list(
        cls, molecules: Sequence[tuple[torch.Tensor, torch.Tensor]], *, ids: Sequence[int] | None = None
    ) -> Molecules:
        """From a list of ``(positions: (n_i, 3), atomic_numbers: (n_i,))`` pairs (tensors or arrays)."""
        pos = [torch.as_tensor(p, dtype=torch.float32).reshape(-1, 3) for p, _ in molecules]
        zs = [torch.as_tensor(z, dtype=torch.int64).reshape(-1) for _, z in molecules]
        for i, (p, z) in enumerate(zip(pos, zs, strict=True)):
            if p.shape[0] != z.shape[0]:
                raise ValueError(f"molecule {i}: {p.shape[0]} positions but {z.shape[0]} atomic numbers")
        num = torch.tensor([p.shape[0] for p in pos], dtype=torch.int64)
        return cls(
            positions=torch.cat(pos) if pos else torch.zeros(0, 3),
            atomic_numbers=torch.cat(zs) if zs else torch.zeros(0, dtype=torch.int64),
            num_atoms=num,
            ids=torch.as_tensor(ids if ids is not None else range(len(pos)), dtype=torch.int64),
        )

    @classmethod
    def from_padded(
        cls,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        ids: torch.Tensor | None = None,
    ) -> Molecules:
        """From a padded batch ``positions: (B, N, 3)``, ``atomic_numbers: (B, N)``, ``mask: (B, N)``.

        ``mask`` defaults to ``atomic_numbers > 0``. Real atoms must come first in each row (EDM's layout);
        a mask with holes raises ``ValueError``.
        """
        positions = torch.as_tensor(positions)
        atomic_numbers = torch.as_tensor(atomic_numbers).long()
        if positions.ndim != 3 or positions.shape[-1] != 3:
            raise ValueError(f"positions must have shape (B, N, 3); got {tuple(positions.shape)}")
        if atomic_numbers.shape != positions.shape[:2]:
            raise ValueError(
                f"atomic_numbers must have shape (B, N) = {tuple(positions.shape[:2])}; "
                f"got {tuple(atomic_numbers.shape)}"
            )
        mask = atomic_numbers > 0 if mask is None else torch.as_tensor(mask).bool()
        if mask.shape != atomic_numbers.shape:
            raise ValueError(f"mask must have shape {tuple(atomic_numbers.shape)}; got {tuple(mask.shape)}")
        num = mask.sum(-1)
        arange = torch.arange(mask.shape[1])
        if not torch.equal(mask, arange[None, :] < num[:, None]):
            raise ValueError("mask must mark a prefix of each row (real atoms first, then padding)")
        if bool((atomic_numbers[mask] <= 0).any()):
            raise ValueError("atomic_numbers must be positive where mask is True")
        n = positions.shape[0]
        return cls(
            positions=positions[mask].float(),
            atomic_numbers=atomic_numbers[mask],
            num_atoms=num.long(),
            ids=torch.arange(n) if ids is None else torch.as_tensor(ids, dtype=torch.int64),
        )

    # access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def ptr(self) -> torch.Tensor:
        """Offsets ``(n + 1,)``: molecule ``i`` owns atoms ``ptr[i]:ptr[i + 1]``."""
        return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.num_atoms, 0)])

    @property
    def batch(self) -> torch.Tensor:
        """PyG-style ``(M,)`` vector: the molecule of every atom."""
        return torch.repeat_interleave(torch.arange(len(self)), self.num_atoms)

    def molecule(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``(n_i, 3)`` and atomic numbers ``(n_i,)`` of molecule ``i``."""
        ptr = self.ptr
        a, b = int(ptr[i]), int(ptr[i + 1])
        return self.positions[a:b], self.atomic_numbers[a:b]

    def select(self, indices: torch.Tensor | Sequence[int]) -> Molecules:
        """The molecules at ``indices`` (any order, repeats allowed), as a new store."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        counts = self.num_atoms[idx]
        starts = self.ptr[:-1][idx]
        new_starts = torch.cumsum(counts, 0) - counts
        atom_idx = torch.arange(int(counts.sum())) + torch.repeat_interleave(starts - new_starts, counts)
        return Molecules(self.positions[atom_idx], self.atomic_numbers[atom_idx], counts.clone(), self.ids[idx])

    def to_padded(self, *, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ``positions: (n, N, 3)``, ``atomic_numbers: (n, N)`` (0 on padding), ``mask: (n, N)``.

        ``N = max(num_atoms)`` unless ``pad_to`` is given (it must be at least that).
        """
        n_max = int(self.num_atoms.max()) if len(self) else 0
        width = n_max if pad_to is None else int(pad_to)
        if width < n_max:
            raise ValueError(f"pad_to={pad_to} is smaller than the largest molecule ({n_max} atoms)")
        mol = self.batch
        slot = torch.arange(self.positions.shape[0]) - self.ptr[:-1][mol]
        pos = self.positions.new_zeros(len(self), width, 3)
        z = torch.zeros(len(self), width, dtype=torch.int64)
        mask = torch.zeros(len(self), width, dtype=torch.bool)
        pos[mol, slot] = self.positions
        z[mol, slot] = self.atomic_numbers
        mask[mol, slot] = True
        return pos, z, mask

    def chunks(self, size: int) -> Iterator[Molecules]:
        """Consecutive stores of at most ``size`` molecules."""
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self))))

    @staticmethod
    def concat(parts: Sequence[Molecules]) -> Molecules:
        """One store holding all molecules of ``parts`` in order."""
        if not parts:
            return Molecules.from_list([])
        return Molecules(
            torch.cat([p.positions for p in parts]),
            torch.cat([p.atomic_numbers for p in parts]),
            torch.cat([p.num_atoms for p in parts]),
            torch.cat([p.ids for p in parts]),
        )


# --------------------------------------------------------------------------------------------------------------
# Summaries


def node_count_histogram(num_atoms: torch.Tensor | Molecules) -> dict[int, int]:
    """Atom count -> number of molecules, sorted by atom count (the prior EDM samples ``N`` from).

    >>> node_count_histogram(torch.tensor([3, 5, 3]))
    {3: 2, 5: 1}
    """
    n = num_atoms.num_atoms if isinstance(num_atoms, Molecules) else torch.as_tensor(num_atoms)
    values, counts = torch.unique(n, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def sample_node_counts(
    histogram: Mapping[int, int], num_samples: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``(num_samples,)`` atom counts with probability proportional to ``histogram[count]``.

    >>> sample_node_counts({7: 1}, 3).tolist()
    [7, 7, 7]
    """
    if not histogram:
        raise ValueError("histogram is empty")
    sizes = torch.tensor(sorted(histogram), dtype=torch.int64)
    weights = torch.tensor([float(histogram[int(s)]) for s in sizes])
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError("histogram counts must be non-negative with a positive total")
    pick = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return sizes[pick]


def element_counts(molecules: Molecules) -> dict[str, int]:
    """Element symbol -> number of atoms, in order of atomic number.

    >>> element_counts(Molecules.from_list([(torch.zeros(3, 3), torch.tensor([8, 1, 1]))]))
    {'H': 2, 'O': 1}
    """
    values, counts = torch.unique(molecules.atomic_numbers, return_counts=True)
    return {ELEMENT_SYMBOLS[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}


# --------------------------------------------------------------------------------------------------------------
# Batches


def _one_hot(atomic_numbers: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    match = atomic_numbers[..., None] == elements
    unknown = ~match.any(-1) & (atomic_numbers > 0)
    if bool(unknown.any()):
        bad = sorted({int(z) for z in atomic_numbers[unknown]})
        raise ValueError(f"atomic numbers {bad} are not in elements {elements.tolist()}")
    return match.float()


def batch_padded(
    molecules: Molecules, *, elements: Sequence[int], center: bool = True, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """A padded batch of all of ``molecules``.

    Returns a dict with ``positions: (B, N, 3)`` (centred on the mean of the real atoms if ``center``,
    :math:`x_i - \\frac{1}{n}\\sum_j x_j`; padding stays at 0), ``atomic_numbers: (B, N)`` (0 on padding),
    ``one_hot: (B, N, K)`` over ``elements``, ``charges: (B, N)`` (Z as float, 0 on padding),
    ``mask: (B, N)`` bool, ``num_atoms: (B,)``, ``ids: (B,)``.

    >>> mols = Molecules.from_list([(torch.tensor([[0.0, 0, 0], [2, 0, 0]]), torch.tensor([6, 8]))])
    >>> b = batch_padded(mols, elements=[1, 6, 7, 8, 9])
    >>> b["positions"][0, :, 0].tolist(), b["one_hot"][0].argmax(-1).tolist(), b["charges"].tolist()
    ([-1.0, 1.0], [1, 3], [[6.0, 8.0]])
    """
    pos, z, mask = molecules.to_padded(pad_to=pad_to)
    if center and len(molecules):
        n = molecules.num_atoms.clamp(min=1).to(pos.dtype)
        mean = pos.sum(1) / n[:, None]
        pos = (pos - mean[:, None, :]) * mask[..., None]
    el = torch.as_tensor(list(elements), dtype=torch.int64)
    return {
        "positions": pos,
        "atomic_numbers": z,
        "one_hot": _one_hot(z, el) * mask[..., None],
        "charges": z.to(pos.dtype),
        "mask": mask,
        "num_atoms": molecules.num_atoms.clone(),
        "ids": molecules.ids.clone(),
    }


def batch_ragged(molecules: Molecules, *, elements: Sequence[int], center: bool = True) -> dict[str, torch.Tensor]:
    """A ragged (PyG-style) batch of all of ``molecules``.

    Returns a dict with ``positions: (M, 3)`` (centred per molecule if ``center``), ``atomic_numbers: (M,)``,
    ``one_hot: (M, K)``, ``charges: (M,)``, ``batch: (M,)`` (molecule of each atom), ``ptr: (B + 1,)``,
    ``num_atoms: (B,)``, ``ids: (B,)``.

    >>> mols = Molecules.from_list([(torch.zeros(2, 3), torch.tensor([1, 1])), (torch.ones(1, 3), torch.tensor([8]))])
    >>> b = batch_ragged(mols, elements=[1, 6, 7, 8, 9])
    >>> b["batch"].tolist(), b["positions"].abs().sum().item()
    ([0, 0, 1], 0.0)
    """
    pos = molecules.positions
    batch = molecules.batch
    if center and len(molecules):
        sums = torch.zeros(len(molecules), 3, dtype=pos.dtype).index_add_(0, batch, pos)
        pos = pos - (sums / molecules.num_atoms.clamp(min=1)[:, None].to(pos.dtype))[batch]
    el = torch.as_tensor(list(elements), dtype=torch.int64)
    return {
        "positions": pos.clone(),
        "atomic_numbers": molecules.atomic_numbers.clone(),
        "one_hot": _one_hot(molecules.atomic_numbers, el),
        "charges": molecules.atomic_numbers.to(pos.dtype),
        "batch": batch,
        "ptr": molecules.ptr,
        "num_atoms": molecules.num_atoms.clone(),
        "ids": molecules.ids.clone(),
    }


def collate_padded(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a DataLoader over :class:`MoleculeDataset` items: the padded layout.

    Same keys and shapes as :func:`batch_padded`; the items are used as they are (already centred).
    """
    if not samples:
        raise ValueError("samples is empty")
    pad = torch.nn.utils.rnn.pad_sequence
    mask = pad([torch.ones(s["atomic_numbers"].shape[0], dtype=torch.bool) for s in samples], batch_first=True)
    return {
        "positions": pad([s["positions"] for s in samples], batch_first=True),
        "atomic_numbers": pad([s["atomic_numbers"] for s in samples], batch_first=True),
        "one_hot": pad([s["one_hot"] for s in samples], batch_first=True),
        "charges": pad([s["charges"] for s in samples], batch_first=True),
        "mask": mask,
        "num_atoms": torch.stack([torch.as_tensor(s["num_atoms"]) for s in samples]),
        "ids": torch.stack([torch.as_tensor(s["ids"]) for s in samples]),
    }


def collate_ragged(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a DataLoader over :class:`MoleculeDataset` items: the ragged layout.

    Same keys and shapes as :func:`batch_ragged`.
    """
    if not samples:
        raise ValueError("samples is empty")
    num = torch.stack([torch.as_tensor(s["num_atoms"]) for s in samples]).long()
    return {
        "positions": torch.cat([s["positions"] for s in samples]),
        "atomic_numbers": torch.cat([s["atomic_numbers"] for s in samples]),
        "one_hot": torch.cat([s["one_hot"] for s in samples]),
        "charges": torch.cat([s["charges"] for s in samples]),
        "batch": torch.repeat_interleave(torch.arange(len(samples)), num),
        "ptr": torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(num, 0)]),
        "num_atoms": num,
        "ids": torch.stack([torch.as_tensor(s["ids"]) for s in samples]),
    }


class MoleculeDataset(torch.utils.data.Dataset):
    """A map-style dataset over a :class:`Molecules` store.

    Each item is a dict: ``positions: (n, 3)`` (centred if ``center``), ``atomic_numbers: (n,)``,
    ``one_hot: (n, K)`` over ``elements``, ``charges: (n,)`` (Z as float), ``num_atoms`` and ``ids``
    (0-d tensors). Use :func:`collate_padded` or :func:`collate_ragged` as the DataLoader's ``collate_fn``,
    or :meth:`get_batch` to build a batch from indices directly (vectorised, same result).

    Parameters
    ----------
    molecules : the store.
    elements : atomic numbers of the one-hot columns, e.g. ``(1, 6, 7, 8, 9)`` for QM9.
    center : subtract each molecule's mean position (EDM's zero centre of mass, unweighted).

    Examples
    --------
    >>> mols = Molecules.from_list([(torch.zeros(2, 3), torch.tensor([1, 1])), (torch.ones(1, 3), torch.tensor([8]))])
    >>> ds = MoleculeDataset(mols, elements=(1, 6, 7, 8, 9))
    >>> len(ds), ds[1]["one_hot"].tolist()
    (2, [[0.0, 0.0, 0.0, 1.0, 0.0]])
    >>> collate_padded([ds[0], ds[1]])["mask"].tolist()
    [[True, True], [True, False]]
    """

    def __init__(self, molecules: Molecules, *, elements: Sequence[int], center: bool = True) -> None:
        self.molecules = molecules
        self.elements = tuple(int(e) for e in elements)
        self.center = center
        self._ptr = molecules.ptr
        self._elements = torch.tensor(self.elements, dtype=torch.int64)
        unknown = sorted(set(torch.unique(molecules.atomic_numbers).tolist()) - set(self.elements))
        if unknown:
            raise ValueError(f"molecules contain atomic numbers {unknown} that are not in elements {self.elements}")

    def __len__(self) -> int:
        return len(self.molecules)

    @property
    def num_atoms(self) -> torch.Tensor:
        """``(n,)`` atoms per molecule."""
        return self.molecules.num_atoms

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} molecules")
        i %= len(self)
        a, b = int(self._ptr[i]), int(self._ptr[i + 1])
        pos = self.molecules.positions[a:b]
        if self.center:
            pos = pos - pos.mean(0, keepdim=True)
        z = self.molecules.atomic_numbers[a:b]
        return {
            "positions": pos.clone(),
            "atomic_numbers": z.clone(),
            "one_hot": _one_hot(z, self._elements),
            "charges": z.to(pos.dtype),
            "num_atoms": self.molecules.num_atoms[i].clone(),
            "ids": self.molecules.ids[i].clone(),
        }

    def get_batch(self, indices: torch.Tensor | Sequence[int], *, layout: str = "padded") -> dict[str, torch.Tensor]:
        """The batch of molecules ``indices`` in ``layout`` ``"padded"`` or ``"ragged"``."""
        mols = self.molecules.select(indices)
        if layout == "padded":
            return batch_padded(mols, elements=self.elements, center=self.center)
        if layout == "ragged":
            return batch_ragged(mols, elements=self.elements, center=self.center)
        raise ValueError(f"layout must be 'padded' or 'ragged'; got {layout!r}")

    def subset(self, fraction: float, *, seed: int = 0) -> MoleculeDataset:
        """A random ``int(fraction * len)`` molecules (``--dataset-frac``, paper Fig. 4), kept in stored order.

        The subset is drawn with ``torch.randperm`` under a generator seeded by ``seed`` (EDM subsets with an
        unseeded ``randperm``; ours is reproducible).
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
        n_keep = int(fraction * len(self))
        if n_keep < 1:
            raise ValueError(f"fraction={fraction} keeps no molecule of {len(self)}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        keep = torch.sort(perm[:n_keep]).values
        return MoleculeDataset(self.molecules.select(keep), elements=self.elements, center=self.center)

    def node_count_histogram(self) -> dict[int, int]:
        """Atom count -> number of molecules."""
        return node_count_histogram(self.molecules)


# --------------------------------------------------------------------------------------------------------------
# Files


def save_molecules(
    path: str | os.PathLike,
    positions: torch.Tensor | np.ndarray,
    atomic_numbers: torch.Tensor | np.ndarray,
    *,
    mask: torch.Tensor | np.ndarray | None = None,
    bonds: torch.Tensor | np.ndarray | None = None,
    formal_charges: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Write molecules in the project's sample format (``.npz`` or ``.pt``, chosen by the suffix).

    ``positions: (B, N, 3)`` in Angstrom, ``atomic_numbers: (B, N)`` (0 on padding), ``mask: (B, N)``
    (default ``atomic_numbers > 0``); optionally ``bonds: (B, N, N)`` bond orders (0 none, 1-3, 4 aromatic) and
    ``formal_charges: (B, N)``, stored as ``bond_orders`` / ``formal_charges``.
    """
    path = Path(path)
    pos = torch.as_tensor(positions).detach().cpu().float()
    z = torch.as_tensor(atomic_numbers).detach().cpu().long()
    m = (z > 0) if mask is None else torch.as_tensor(mask).detach().cpu().bool()
    Molecules.from_padded(pos, z, m)  # validates shapes and the mask
    extra: dict[str, torch.Tensor] = {}
    if bonds is not None:
        extra["bond_orders"] = torch.as_tensor(bonds).detach().cpu().to(torch.uint8)
        if extra["bond_orders"].shape != (*z.shape, z.shape[-1]):
            got = tuple(extra["bond_orders"].shape)
            raise ValueError(f"bonds must have shape {(*z.shape, z.shape[-1])}; got {got}")
    if formal_charges is not None:
        extra["formal_charges"] = torch.as_tensor(formal_charges).detach().cpu().to(torch.int8)
        if extra["formal_charges"].shape != z.shape:
            raise ValueError(f"formal_charges must have shape {tuple(z.shape)}")
    if path.suffix == ".npz":
        np.savez_compressed(
            path,
            positions=pos.numpy(),
            atomic_numbers=z.numpy(),
            mask=m.numpy(),
            format=np.array(SAMPLE_FORMAT),
            version=np.array(SAMPLE_FORMAT_VERSION),
            **{k: v.numpy() for k, v in extra.items()},
        )
    elif path.suffix == ".pt":
        torch.save(
            {
                "positions": pos,
                "atomic_numbers": z,
                "mask": m,
                "format": SAMPLE_FORMAT,
                "version": SAMPLE_FORMAT_VERSION,
                **extra,
            },
            path,
        )
    else:
        raise ValueError(f"path must end in .npz or .pt; got {path.name!r}")
    return path


def _from_sample_dict(data: Mapping[str, object], source: str) -> Molecules:
    fmt = data.get("format")
    if fmt is not None and str(np.asarray(fmt)) != SAMPLE_FORMAT:
        raise ValueError(f"{source}: format is {str(np.asarray(fmt))!r}, expected {SAMPLE_FORMAT!r}")
    version = data.get("version")
    if version is not None and int(np.asarray(version)) > SAMPLE_FORMAT_VERSION:
        raise ValueError(f"{source}: format version {int(np.asarray(version))} is newer than this reader")
    if "positions" not in data:
        raise ValueError(f"{source}: no 'positions' array; keys are {sorted(data)}")
    try:
        pos = torch.as_tensor(np.asarray(data["positions"]), dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: 'positions' is not a float array ({err})") from None
    if pos.ndim == 2:  # a single molecule
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"{source}: positions must have shape (B, N, 3) or (N, 3); got {tuple(pos.shape)}")

    def per_atom(key: str, *extra: int) -> torch.Tensor:
        value = torch.as_tensor(np.asarray(data[key]))
        if value.numel() != pos.shape[0] * pos.shape[1] * int(np.prod(extra or (1,))):
            raise ValueError(
                f"{source}: {key} must have shape {(*pos.shape[:2], *extra)} to match positions "
                f"{tuple(pos.shape)}; got {tuple(value.shape)}"
            )
        return value.reshape(*pos.shape[:2], *extra)

    if "atomic_numbers" in data:
        z = per_atom("atomic_numbers")
        if z.is_floating_point() or z.dtype == torch.bool:
            raise ValueError(f"{source}: atomic_numbers must be integers; got dtype {z.dtype}")
        z = z.long()
    elif "one_hot" in data and "elements" in data:
        elements = torch.as_tensor(np.asarray(data["elements"])).long().reshape(-1)
        one_hot = per_atom("one_hot", len(elements)).float()
        # an all-zero row is padding, not the first element
        z = torch.where(one_hot.sum(-1) > 0, elements[one_hot.argmax(-1)], torch.zeros((), dtype=torch.long))
    else:
        raise ValueError(f"{source}: needs 'atomic_numbers', or 'one_hot' with 'elements'; keys are {sorted(data)}")
    mask = data.get("mask")
    if mask is None:
        _check_atomic_numbers(z, z != 0, source)  # negative values are errors, not padding
        mask_t = z > 0
    else:
        mask_t = per_atom("mask").bool()
        _check_atomic_numbers(z, mask_t, source)
    num = mask_t.sum(-1)
    holes = (mask_t != (torch.arange(mask_t.shape[1]) < num[:, None])).any(-1)
    if bool(holes.any()):
        b = int(holes.nonzero()[0])
        raise ValueError(
            f"{source}: molecule {b}: mask must mark a prefix of the row (real atoms first, then padding); "
            f"{int(holes.sum())} molecules have holes"
        )
    z = torch.where(mask_t, z, torch.zeros_like(z))
    return Molecules.from_padded(pos, z, mask_t)


def _check_atomic_numbers(z: torch.Tensor, real: torch.Tensor, source: str) -> None:
    """Every real atom's atomic number is in 1..MAX_ATOMIC_NUMBER; else one line naming molecule and atom."""
    bad = real & ((z < 1) | (z > MAX_ATOMIC_NUMBER))
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{source}: molecule {b}, atom {i}: atomic number {int(z[b, i])} is outside 1..{MAX_ATOMIC_NUMBER} "
            f"({int(bad.sum())} such atoms)"
        )


def read_xyz(path: str | os.PathLike) -> Molecules:
    """Read a file of concatenated XYZ blocks (count line, comment line, ``symbol x y z`` lines).

    Element fields may be symbols or atomic numbers; extra columns are ignored; ``*^`` exponents (as in the
    raw QM9 files) are accepted. A block announcing 0 atoms is an empty molecule (kept; :func:`screen_molecules`
    leaves it out of any score). Errors are one line, ``path:line: ...``, naming the record (0-based block).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err})") from None
    molecules = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        record = len(molecules)
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            raise ValueError(f"{path}:{i + 1}: record {record}: expected an atom count, got {lines[i]!r}") from None
        if n < 0:
            raise ValueError(f"{path}:{i + 1}: record {record}: negative atom count {n}")
        block = lines[i + 2 : i + 2 + n]
        if len(block) != n:
            raise ValueError(
                f"{path}:{i + 1}: record {record}: block announces {n} atoms but the file ends after {len(block)}"
            )
        zs, pos = [], []
        for k, line in enumerate(block):
            where = f"{path}:{i + 3 + k}: record {record}"
            fields = line.replace("*^", "e").split()
            if len(fields) < 4:
                raise ValueError(f"{where}: expected 'element x y z', got {line!r}")
            try:
                zs.append(atomic_number(fields[0]))
                pos.append([float(v) for v in fields[1:4]])
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        molecules.append((torch.tensor(pos, dtype=torch.float32).reshape(-1, 3), torch.tensor(zs, dtype=torch.int64)))
        i += 2 + n
    return Molecules.from_list(molecules)


def _read_sdf(path: str | os.PathLike) -> tuple[Molecules, list[int]]:
    """Every record of an SDF file, and the records without 3-D coordinates (stored as empty molecules)."""
    try:
        from rdkit import Chem, rdBase
    except ImportError as err:  # pragma: no cover - rdkit is in the molecules extra
        raise ImportError("reading SDF needs RDKit: pip install 'energyloss[molecules]'") from err
    molecules, flat = [], []
    with rdBase.BlockLogs():
        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
        for k, mol in enumerate(supplier):
            if mol is None:
                raise ValueError(f"{path}: record {k} could not be parsed by RDKit")
            z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.int64)
            if mol.GetNumConformers() == 0 or (z.numel() and not mol.GetConformer().Is3D()):
                flat.append(k)
                molecules.append((torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)))
                continue
            dummy = (z < 1).nonzero()
            if dummy.numel():
                i = int(dummy[0])
                raise ValueError(
                    f"{path}: record {k}, atom {i}: atomic number {int(z[i])} (a dummy or query atom) is outside "
                    f"1..{MAX_ATOMIC_NUMBER}"
                )
            pos = torch.as_tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
            molecules.append((pos, z))
    return Molecules.from_list(molecules), flat


def read_sdf(path: str | os.PathLike) -> Molecules:
    """Read the 3D coordinates and elements of every record of an SDF file (needs RDKit).

    Hydrogens are kept; bonds and charges in the file are ignored (metrics infer bonds from distances).
    Records RDKit cannot parse, records without 3-D coordinates (no conformer, or a 2-D one: the ``2D`` flag of
    the header) and dummy atoms raise ``ValueError`` naming the record (0-based). :func:`load_screened` leaves the
    records without 3-D coordinates out instead, with their numbers.
    """
    molecules, flat = _read_sdf(path)
    if flat:
        raise ValueError(
            f"{path}: record {flat[0]} has no 3-D coordinates (no conformer, or a 2-D one); "
            f"{len(flat)} of {len(molecules)} records are like this"
        )
    return molecules


def _load(path: str | os.PathLike) -> tuple[Molecules, list[int]]:
    """The molecules of a file, and (SDF only) the records without 3-D coordinates, stored empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".pt"):
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    data: object = {k: npz[k] for k in npz.files}
            else:
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated / garbage files fail in many ways (BadZipFile, EOFError, pickle, ...)
            kind = type(err).__qualname__
            if type(err).__module__ != "builtins":
                kind = f"{type(err).__module__}.{kind}"
            raise ValueError(f"{path}: cannot be read as a {suffix} file ({kind}: {err})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
        return _from_sample_dict(data, str(path)), []
    if suffix == ".xyz":
        return read_xyz(path), []
    if suffix in (".sdf", ".mol"):
        return _read_sdf(path)
    raise ValueError(f"{path}: unknown format {suffix!r}; expected .npz, .pt, .xyz or .sdf")


def load_molecules(path: str | os.PathLike) -> Molecules:
    """Read molecules from ``.npz`` / ``.pt`` (the project's sample format), ``.xyz`` or ``.sdf``.

    The format is chosen by the file suffix; see the module docstring for the sample format. Every error is a
    one-line ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file and, where there is one,
    the record; a truncated or garbage ``.npz`` / ``.pt`` is reported as such.
    """
    molecules, flat = _load(path)
    if flat:
        raise ValueError(f"{path}: record {flat[0]} has no 3-D coordinates (no conformer, or a 2-D one)")
    return molecules


@dataclasses.dataclass(frozen=True)
class ScreenedMolecules:
    """The molecules of a file that can be scored, and the records left out.

    Attributes:
        molecules: the kept molecules (``ids`` are their record numbers in the file, 0-based).
        excluded: reason (one of :data:`EXCLUSION_REASONS`) -> record numbers left out for it.
        n_records: records read.
    """

    molecules: Molecules
    excluded: dict[str, list[int]]
    n_records: int

    @property
    def n_excluded(self) -> int:
        return sum(len(v) for v in self.excluded.values())

    def summary(self) -> str:
        """One line: how many records were left out and why (with the first record numbers); ``""`` if none."""
        if not self.n_excluded:
            return ""
        parts = []
        for reason in EXCLUSION_REASONS:
            records = self.excluded.get(reason, [])
            if records:
                shown = ", ".join(str(r) for r in records[:5]) + (", ..." if len(records) > 5 else "")
                parts.append(f"{len(records)} {reason.replace('_', ' ')} (records {shown})")
        return f"{self.n_excluded} of {self.n_records} records excluded, not scored: " + "; ".join(parts)


def screen_molecules(molecules: Molecules, *, no_3d: Sequence[int] = ()) -> ScreenedMolecules:
    """Leave out the molecules that cannot be scored: empty ones and ones with NaN / inf coordinates.

    Args:
        molecules: the store; its ``ids`` are reported as record numbers.
        no_3d: positions (in ``molecules``) of records without 3-D coordinates, also left out.

    Returns:
        The kept molecules and the record numbers left out per reason.

    Example:
        >>> mols = Molecules.from_list([(torch.zeros(1, 3), torch.tensor([1])), (torch.zeros(0, 3), torch.zeros(0))])
        >>> screen_molecules(mols).excluded
        {'empty': [1], 'non_finite_positions': [], 'no_3d_coordinates': []}
    """
    n = len(molecules)
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.as_tensor(list(no_3d), dtype=torch.int64)] = True
    finite_atom = torch.isfinite(molecules.positions).all(-1)
    finite = torch.ones(n, dtype=torch.bool)
    if finite_atom.numel():
        bad_atoms = torch.zeros(n, dtype=torch.int64).index_add_(0, molecules.batch, (~finite_atom).long())
        finite = bad_atoms == 0
    empty = (molecules.num_atoms == 0) & ~flat
    non_finite = ~finite & ~flat
    keep = ~(flat | empty | non_finite)
    ids = molecules.ids
    excluded = {
        "empty": ids[empty].tolist(),
        "non_finite_positions": ids[non_finite].tolist(),
        "no_3d_coordinates": ids[flat].tolist(),
    }
    kept = molecules if bool(keep.all()) else molecules.select(keep.nonzero().flatten())
    return ScreenedMolecules(kept, excluded, n)


def load_screened(path: str | os.PathLike, *, limit: int | None = None) -> ScreenedMolecules:
    """Read a file like :func:`load_molecules` and leave out (with their record numbers) what cannot be scored.

    Records without 3-D coordinates (SDF), empty molecules and molecules with NaN / inf coordinates are excluded;
    everything else that is wrong with the file raises a one-line ``ValueError`` naming it and the record.

    Args:
        path: a ``.npz`` / ``.pt`` / ``.xyz`` / ``.sdf`` file.
        limit: keep only the first ``limit`` records (before screening).

    Returns:
        A :class:`ScreenedMolecules`.
    """
    molecules, flat = _load(path)
    if limit is not None and limit < len(molecules):
        molecules = molecules.select(torch.arange(limit))
        flat = [k for k in flat if k < limit]
    return screen_molecules(molecules, no_3d=flat)
