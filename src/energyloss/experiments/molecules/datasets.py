"""Training data of ``energyloss run qm9``: the QM9 or GEOM-Drugs train split, or small synthetic molecules.

Besides the molecules, a data source fixes the one-hot columns (the dataset's ``elements``: QM9's 5, EDM's 16
GEOM types), whether the nuclear charge is a feature (EDM: on QM9, off on GEOM-Drugs) and the default evaluation
protocol (:data:`~.config.DEFAULT_STABILITY_TABLES`): :func:`data_settings`.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import DEFAULT_STABILITY_TABLES, QM9_ELEMENTS, QM9Config

__all__ = [
    "check_data",
    "data_settings",
    "describe_data",
    "geom_path",
    "load_training_set",
    "reference_smiles",
    "resolve_data",
    "stability_tables",
    "synthetic_molecules",
]

# fmt: off
_TEMPLATES: tuple[tuple[tuple[int, ...], tuple[tuple[float, float, float], ...]], ...] = (
    ((6, 1, 1, 1, 1), ((0, 0, 0), (0.629, 0.629, 0.629), (-0.629, -0.629, 0.629), (-0.629, 0.629, -0.629),
                       (0.629, -0.629, -0.629))),                                        # methane
    ((8, 1, 1), ((0, 0, 0), (0.757, 0.586, 0), (-0.757, 0.586, 0))),                     # water
    ((7, 1, 1, 1), ((0, 0, 0), (0.938, 0, -0.382), (-0.469, 0.812, -0.382), (-0.469, -0.812, -0.382))),  # NH3
    ((1, 6, 7), ((0, 0, -1.066), (0, 0, 0), (0, 0, 1.156))),                              # HCN
    ((6, 8, 1, 1), ((0, 0, 0), (0, 0, 1.205), (0, 0.943, -0.587), (0, -0.943, -0.587))),  # formaldehyde
)
# fmt: on
#: Molecules of the synthetic training set.
N_SYNTHETIC = 256


def synthetic_molecules(n: int, *, seed: int = 0, jitter: float = 0.02):
    """``n`` small stable molecules (methane, water, ammonia, HCN, formaldehyde), randomly rotated and jittered.

    For tests and the ``smoke`` preset without QM9: no download, EDM-stable geometries (so the metrics mean
    something).

    Example:
        >>> mols = synthetic_molecules(10)
        >>> len(mols), int(mols.num_atoms.max()) <= 5
        (10, True)
    """
    from energyloss.testing import random_rotations

    from .data import Molecules

    gen = torch.Generator().manual_seed(seed)
    kinds = torch.randint(len(_TEMPLATES), (n,), generator=gen).tolist()
    rots = random_rotations(n, generator=gen, dtype=torch.float64)
    out = []
    for i, k in enumerate(kinds):
        z, pos = _TEMPLATES[k]
        p = torch.tensor(pos, dtype=torch.float64) @ rots[i].T
        p = p + jitter * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        out.append((p.float(), torch.tensor(z)))
    return Molecules.from_list(out)


def resolve_data(cfg: QM9Config) -> QM9Config:
    """``data="auto"`` -> ``"qm9"`` when the QM9 cache exists, else ``"synthetic"``; other values unchanged."""
    if cfg.data != "auto":
        return cfg
    from .qm9 import cache_path

    return dataclasses.replace(cfg, data="qm9" if cache_path(cfg.cache_dir).is_file() else "synthetic")


def geom_path(cfg: QM9Config):
    """The GEOM-Drugs file of ``cfg`` (``geom_path``, else :func:`~.geom.default_geom_path`)."""
    from pathlib import Path

    from .geom import default_geom_path

    return Path(cfg.geom_path).expanduser() if cfg.geom_path is not None else default_geom_path()


def check_data(cfg: QM9Config) -> None:
    """Raise before any run folder is made when the data of ``cfg`` (resolved) cannot be there.

    GEOM-Drugs: :class:`~.geom.GeomDataMissing` (one line naming the file and how to get it) when the file or its
    ``geom_permutation.npy`` is missing. QM9 builds its cache on first use, so nothing is checked.
    """
    if cfg.data != "geom-drugs":
        return
    from .geom import geom_drugs_datasets

    geom_drugs_datasets(geom_path(cfg))  # scans (and caches) the index once; cheap afterwards


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What a data source fixes in the model and its evaluation.

    Attributes:
        include_charges: the nuclear charge ``Z / 10`` is an atom feature (EDM: QM9 yes, GEOM-Drugs no).
        stability_table: name of the default evaluation protocol.
    """

    include_charges: bool
    stability_table: str


def data_settings(data: str) -> DataSettings:
    """The :class:`DataSettings` of a resolved data source (``qm9``, ``synthetic``, ``geom-drugs``)."""
    if data not in DEFAULT_STABILITY_TABLES:
        raise ValueError(f"data must be one of {', '.join(DEFAULT_STABILITY_TABLES)} (resolved), got {data!r}")
    return DataSettings(include_charges=data != "geom-drugs", stability_table=DEFAULT_STABILITY_TABLES[data])


def stability_tables(cfg: QM9Config):
    """The :class:`~.metrics.StabilityTable` evaluations of ``cfg`` use (``stability_table``, ``auto`` resolved)."""
    from .geom_tables import get_stability_table

    name = cfg.stability_table
    if name == "auto":
        name = data_settings(resolve_data(cfg).data).stability_table
    return get_stability_table(name)


def describe_data(cfg: QM9Config, n_train: int) -> str:
    """One sentence naming the training data, for summaries (``cfg.data`` resolved)."""
    if cfg.data == "geom-drugs":
        return (
            f"GEOM-Drugs train split ({n_train:,} conformers of {geom_path(cfg)}, EDM's split by its stored "
            "geom_permutation.npy)"
        )
    if cfg.data == "qm9":
        from .qm9 import N_TRAIN

        return f"QM9 train split ({n_train:,} of the {N_TRAIN:,} molecules of EDM's split)"
    from .qm9 import cache_path

    text = f"synthetic molecules ({n_train} rotated copies of methane, water, ammonia, HCN and formaldehyde), not QM9"
    if not cache_path(cfg.cache_dir).is_file():
        text += f"; no QM9 cache at {cache_path(cfg.cache_dir)} (`energyloss data qm9` builds it)"
    return text


def load_training_set(cfg: QM9Config):
    """The training dataset (QM9 or GEOM-Drugs train split, or synthetic), subset by ``dataset_frac``.

    QM9 and synthetic: a :class:`~.data.MoleculeDataset`; GEOM-Drugs: a :class:`~.geom.GeomDrugsDataset` that
    reads each batch's rows from the memory-mapped file.
    """
    from .data import MoleculeDataset

    cfg = resolve_data(cfg)
    if cfg.data == "geom-drugs":
        from .geom import geom_drugs_datasets

        ds = geom_drugs_datasets(geom_path(cfg))["train"]
        ds = ds if cfg.dataset_frac == 1.0 else ds.subset(cfg.dataset_frac, seed=cfg.seed)
    elif cfg.data == "synthetic":
        ds = MoleculeDataset(synthetic_molecules(N_SYNTHETIC, seed=cfg.seed), elements=QM9_ELEMENTS)
        ds = ds if cfg.dataset_frac == 1.0 else ds.subset(cfg.dataset_frac, seed=cfg.seed)
    elif cfg.data == "qm9":
        from .qm9 import qm9_dataset

        ds = qm9_dataset("train", cache_dir=cfg.cache_dir, dataset_frac=cfg.dataset_frac, seed=cfg.seed)
    else:
        raise ValueError(f"data must be 'qm9', 'synthetic', 'auto' or 'geom-drugs', got {cfg.data!r}")
    if cfg.max_molecules is not None and len(ds) > cfg.max_molecules:
        ds = ds.subset((cfg.max_molecules + 0.5) / len(ds), seed=cfg.seed)
    return ds


def reference_smiles(cfg: QM9Config, train_set) -> set[str] | None:
    """SMILES of the training molecules for novelty (``None`` without RDKit, with ``novelty`` off, or on GEOM).

    EDM computes no novelty on GEOM-Drugs (millions of conformers); neither do we.
    """
    from .metrics import rdkit_version

    if not cfg.novelty or rdkit_version() is None or resolve_data(cfg).data == "geom-drugs":
        return None
    if resolve_data(cfg).data == "qm9":
        from .qm9 import qm9_reference_smiles

        return qm9_reference_smiles(cache_dir=cfg.cache_dir)
    from .metrics import molecule_smiles

    pos, z, mask = train_set.molecules.to_padded()
    return {s for s in molecule_smiles(pos, z, mask=mask) if s is not None}
