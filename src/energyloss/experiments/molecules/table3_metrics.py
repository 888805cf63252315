r"""The metrics of the paper's Table 3 (JODO's evaluation), re-implemented: 3-D, 2-D, FCD and geometry MMD.

JODO (Huang et al. 2023) evaluates generated molecules in three groups; Table 3 of the paper reports atom and
molecule stability, validity and completeness from the first, the FCD, and the three MMDs of the third.

**3-D** (``"3d"``; JODO's ``get_edm_metric``): bonds are inferred from distances with EDM's bond-length table
(:func:`~energyloss.experiments.molecules.metrics.bond_orders`, orders 1-3, no charges).

- atom / molecule stability: EDM's valence check, exactly as :mod:`~energyloss.experiments.molecules.metrics`;
- validity: the RDKit molecule with these bonds passes ``Chem.SanitizeMol``;
- completeness: valid *and* one fragment (the largest fragment is the whole molecule);
- uniqueness, novelty: on the SMILES of the largest fragment of each valid molecule.

**2-D** (``"2d"``; JODO's ``get_2D_edm_metric``): from *given* bonds and formal charges (a model's bond types, the
bonds of an SDF file, or the bonds of QM9; see :mod:`~energyloss.experiments.molecules.bonds`). Where a file has
no bonds, they are perceived from the 3-D structure (:func:`~energyloss.experiments.molecules.bonds.perceive_bonds`,
RDKit's ``DetermineBonds`` with total charge 0) and ``bonds_source`` says so; a molecule whose bonds cannot be
perceived is 2-D unstable and invalid.

- stability: an atom is stable when the sum of its bond orders (aromatic = 1.5, after trying to kekulise) is an
  allowed valence *for its formal charge* (:data:`JODO_CHARGED_VALENCES`, JODO's ``allowed_fc_bonds``: e.g. N
  allows 2 or 3 neutral, 2-4 as N+; an element without an entry for the atom's charge uses its neutral entry, as
  in JODO); ``use_charges=False`` checks every atom as neutral;
- validity, completeness, uniqueness, novelty: as for 3-D, on the RDKit molecule with the given bonds and charges.

**Ratios.** Stability, validity and completeness are fractions of all molecules. ``uniqueness`` = distinct valid
SMILES / valid molecules (EDM's definition) and ``valid_and_unique`` = distinct valid SMILES / all molecules
(JODO's "Unique"); ``novelty`` = distinct valid SMILES absent from the reference / distinct valid SMILES (EDM) and
``valid_unique_novel`` = the same count / all molecules (JODO's "Novelty").

**FCD** (Fréchet ChemNet Distance, Preuer et al. 2018; JODO uses MOSES' ``fcd_torch``): between the ChemNet
activations of the distinct SMILES (whole molecule, no stereo) of the valid molecules and of the reference (test)
molecules. Needs the optional ``fcd_torch`` package (``pip install 'energyloss[fcd]'``), whose wheel ships the
ChemNet weights, so it runs offline. Table 3's FCD is the 3-D one (bonds from distances); the 2-D one is reported
too.

**Geometry MMD** (:mod:`~energyloss.experiments.molecules.geometry_mmd`): bond lengths, bond angles and dihedral
angles of the top-8 QM9 symbols over *all* molecules with their 2-D bonds, against the reference set's values
(JODO's code passes every 2-D-built molecule, although it names the list ``complete_rdmols``;
``mmd_molecules="complete"`` keeps only the complete ones).

Every result carries ``version`` (:data:`TABLE3_METRICS_VERSION`), the bond / valence tables and the RDKit version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runs import atomic_save
from . import geometry_mmd as _geo
from .bonds import AROMATIC_CODE, BondGraphs, perceive_bond_graphs, rdkit_molecule
from .data import Molecules
from .metrics import (
    EDM_BOND_TABLE,
    EDM_VALENCES,
    PAIR_BUDGET,
    BondLengthTable,
    ChargedValenceTable,
    ValenceTable,
    bond_orders,
    rdkit_version,
    valence_stable,
)

__all__ = [
    "JODO_CHARGED_VALENCES",
    "TABLE3_METRICS_VERSION",
    "Table3Reference",
    "distance_bond_graphs",
    "evaluate_table3",
    "fcd_available",
    "fcd_statistics",
    "frechet_chemnet_distance",
    "graph_metrics",
    "graph_stability",
    "qm9_table3_reference",
    "rdkit_summaries",
]

#: Version of these definitions; recorded in every result (bump when a number can change).
TABLE3_METRICS_VERSION = "1"
_CHARGE_RANGE = range(-4, 5)


# --------------------------------------------------------------------------------------------------------------
# Valences with formal charges


def _jodo_allowed(
    entries: Mapping[str, Mapping[int, tuple[int, ...]] | tuple[int, ...]],
) -> dict[str, dict[int, tuple[int, ...]]]:
    """JODO's rule in the explicit per-charge form of :class:`~.metrics.ChargedValenceTable`.

    A plain tuple holds for every charge; a charge missing from an element's dict gets the neutral entry.
    """
    out = {}
    for symbol, entry in entries.items():
        per_charge = dict(entry) if isinstance(entry, Mapping) else {}
        neutral = per_charge.get(0, ()) if isinstance(entry, Mapping) else tuple(entry)
        out[symbol] = {c: tuple(per_charge.get(c, neutral)) for c in _CHARGE_RANGE}
    return out


#: JODO's ``allowed_fc_bonds`` (``evaluation/bond_analyze.py``): valences by element and formal charge, as a
#: :class:`~energyloss.experiments.molecules.metrics.ChargedValenceTable` (every charge -4..4 listed explicitly).
JODO_CHARGED_VALENCES = ChargedValenceTable(
    name="jodo",
    version="1",
    allowed=_jodo_allowed(
        {
            "H": {0: (1,), 1: (0,), -1: (0,)},
            "C": {0: (3, 4), 1: (3,), -1: (3,)},
            "N": {0: (2, 3), 1: (2, 3, 4), -1: (2,)},
            "O": {0: (2,), 1: (3,), -1: (1,)},
            "F": {0: (1,), -1: (0,)},
            "B": (3,),
            "Al": (3,),
            "Si": (4,),
            "P": {0: (3, 5), 1: (4,)},
            "S": {0: (2, 6), 1: (2, 3), 2: (4,), 3: (5,), -1: (3,)},
            "Cl": (1,),
            "As": (3,),
            "Br": {0: (1,), 1: (2,)},
            "I": (1,),
            "Hg": (1, 2),
            "Bi": (3, 5),
            "Se": (2, 4, 6),
        }
    ),
    source="JODO (Huang et al. 2023), evaluation/bond_analyze.py allowed_fc_bonds; note neutral C allows 3 or 4 "
    "and neutral N 2 or 3 there. A charge JODO does not list for an element uses its neutral valences (JODO's "
    "rule); charges outside -4..4 are never stable.",
)


# --------------------------------------------------------------------------------------------------------------
# Graphs from distances (the 3-D metrics) and stability of graphs


def _check_finite(molecules: Molecules) -> None:
    if not bool(torch.isfinite(molecules.positions).all()):
        raise ValueError("positions must be finite: screen the molecules first (data.screen_molecules)")


def distance_bond_graphs(molecules: Molecules, *, table: BondLengthTable = EDM_BOND_TABLE) -> BondGraphs:
    """Bond graphs inferred from distances with EDM's table (orders 1-3, charges 0): the graphs of the 3-D metrics."""
    _check_finite(molecules)
    parts = []
    width = int(molecules.num_atoms.max()) if len(molecules) else 1
    step = max(1, PAIR_BUDGET // max(1, width * width))
    for part in molecules.chunks(step) if len(molecules) else []:
        pos, z, mask = part.to_padded()
        orders = bond_orders(pos, z, mask=mask, table=table)
        fc = torch.zeros_like(z)
        parts.append(BondGraphs.from_dense(orders, mask, fc))
    return BondGraphs.concat(parts) if parts else BondGraphs.from_list([])


def _valence2(graphs: BondGraphs, orders: torch.Tensor | None = None) -> torch.Tensor:
    """Twice each atom's valence (integer; aromatic bonds count 1.5, i.e. 3 half-units)."""
    o = graphs.orders if orders is None else orders
    half = torch.where(o == AROMATIC_CODE, torch.full_like(o, 3), 2 * o)
    gb = graphs.global_bonds()
    m = int(graphs.num_atoms.sum())
    return torch.zeros(m, dtype=torch.int64).index_add_(0, gb[:, 0], half).index_add_(0, gb[:, 1], half)


def graph_stability(
    atomic_numbers: torch.Tensor,
    graphs: BondGraphs,
    *,
    valences: ChargedValenceTable | ValenceTable = JODO_CHARGED_VALENCES,
    use_charges: bool = True,
    orders: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whether each atom (ragged, ``(M,)``) has an allowed valence given its bonds (and formal charge).

    The check is :func:`~energyloss.experiments.molecules.metrics.valence_stable`: with a charged table the atom's
    formal charge picks the allowed valences (``use_charges=False``: every atom as if neutral); EDM's neutral
    :class:`~energyloss.experiments.molecules.metrics.ValenceTable` accepts only neutral atoms with an integer
    valence. Aromatic bonds count 1.5. Atoms of molecules without a perceived graph are unstable. ``orders``
    overrides ``graphs.orders`` (the kekulised orders).

    >>> g = BondGraphs.from_list([(5, [(0, k, 1) for k in range(1, 5)], [1, 0, 0, 0, 0])])  # NH4+
    >>> z = torch.tensor([7, 1, 1, 1, 1])
    >>> graph_stability(z, g).tolist(), graph_stability(z, g, use_charges=False).tolist()
    ([True, True, True, True, True], [False, True, True, True, True])
    """
    valence = _valence2(graphs, orders).double() / 2
    z = atomic_numbers.long()
    charges = graphs.formal_charges if use_charges else torch.zeros_like(graphs.formal_charges)
    if isinstance(valences, ValenceTable) and not use_charges:
        charges = None
    stable = valence_stable(valence, z, valence_table=valences, formal_charges=charges, mask=torch.ones_like(z) > 0)
    has_graph = torch.repeat_interleave(graphs.perceived, graphs.num_atoms)
    return stable & has_graph


# --------------------------------------------------------------------------------------------------------------
# RDKit: validity, fragments, SMILES


def _summaries(items: Sequence[tuple[list[int], list[tuple[int, int, int]], list[int] | None]]) -> list[tuple]:
    from rdkit import Chem, rdBase

    out = []
    with rdBase.BlockLogs():
        for z, bonds, charges in items:
            mol = rdkit_molecule(z, bonds, charges)
            kekule = None
            if any(o == AROMATIC_CODE for _, _, o in bonds):  # JODO kekulises before counting valences
                trial = Chem.Mol(mol)
                try:
                    Chem.Kekulize(trial, clearAromaticFlags=True)
                    kekule = [int(round(b.GetBondTypeAsDouble())) for b in trial.GetBonds()]
                except Exception:  # not kekulisable: aromatic bonds keep 1.5
                    kekule = None
            if Chem.SanitizeMol(mol, catchErrors=True) != Chem.SanitizeFlags.SANITIZE_NONE:
                out.append((False, 0, None, None, kekule))
                continue
            frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
            largest = max(frags, key=lambda m: m.GetNumAtoms()) if frags else mol
            try:
                whole = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
            except Exception:  # RemoveHs re-sanitises; keep the explicit-H form if that fails
                whole = Chem.MolToSmiles(mol, isomericSmiles=False)
            out.append((True, len(frags), Chem.MolToSmiles(largest), whole, kekule))
    return out


def rdkit_summaries(
    molecules: Molecules, graphs: BondGraphs, *, use_charges: bool = True, n_jobs: int = 1
) -> list[tuple[bool, int, str | None, str | None, list[int] | None]]:
    """Per molecule: ``(valid, fragments, largest-fragment SMILES, whole-molecule SMILES without H, Kekulé orders)``.

    Valid means ``Chem.SanitizeMol`` succeeds on the molecule with the graph's bonds (and formal charges unless
    ``use_charges=False``); molecules without a perceived graph are invalid. The largest-fragment SMILES is the one
    :mod:`~energyloss.experiments.molecules.metrics` uses for uniqueness and novelty; the whole-molecule SMILES
    (no hydrogens, no stereo) is the FCD input. The last entry lists the kekulised bond orders of molecules with
    aromatic bonds (``None`` otherwise, or if RDKit cannot kekulise them).
    """
    graphs.check_matches(molecules)
    z_all = molecules.atomic_numbers.tolist()
    ptr = molecules.ptr.tolist()
    items, where = [], []
    perceived = graphs.perceived.tolist()
    for k in range(len(molecules)):
        if not perceived[k]:
            continue
        bonds, charges = graphs.molecule(k)
        items.append((z_all[ptr[k] : ptr[k + 1]], bonds, charges if use_charges else None))
        where.append(k)
    results = _map(items, n_jobs)
    out: list[tuple] = [(False, 0, None, None, None)] * len(molecules)
    for k, r in zip(where, results, strict=True):
        out[k] = r
    return out


def _map(items: list, n_jobs: int) -> list:
    if n_jobs <= 1 or len(items) < 20_000:
        return _summaries(items)
    import concurrent.futures
    import multiprocessing

    size = max(250, len(items) // (8 * n_jobs))
    chunks = [items[k : k + size] for k in range(0, len(items), size)]
    with concurrent.futures.ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [r for part in pool.map(_summaries, chunks) for r in part]


def _ratio(num: int | None, den: int) -> float | None:
    return None if num is None or not den else num / den


def graph_metrics(
    molecules: Molecules,
    graphs: BondGraphs,
    *,
    valences: ChargedValenceTable | ValenceTable = JODO_CHARGED_VALENCES,
    use_charges: bool = True,
    reference_smiles: Iterable[str] | None = None,
    n_jobs: int = 1,
) -> tuple[dict[str, Any], list[tuple]]:
    """Stability, validity, completeness, uniqueness and novelty of molecules with these bond graphs.

    The 2-D metrics with JODO's charged valences; with EDM's :class:`~.metrics.ValenceTable` and the graphs of
    :func:`distance_bond_graphs` these are the 3-D metrics. Returns ``(metrics, per-molecule RDKit summaries)``
    (see :func:`rdkit_summaries`; the summaries feed the FCD).
    """
    summaries = rdkit_summaries(molecules, graphs, use_charges=use_charges, n_jobs=n_jobs)
    kekule_orders = graphs.orders.clone()
    bp = graphs.bond_ptr.tolist()
    for k, s in enumerate(summaries):
        if s[4] is not None:
            kekule_orders[bp[k] : bp[k + 1]] = torch.tensor(s[4], dtype=torch.int64)
    stable = graph_stability(molecules.atomic_numbers, graphs, valences=valences, use_charges=use_charges,
                             orders=kekule_orders)  # fmt: skip
    n = len(molecules)
    n_atoms = int(molecules.num_atoms.sum())
    mol_of_atom = molecules.batch
    unstable_per_mol = torch.zeros(n, dtype=torch.int64).index_add_(0, mol_of_atom, (~stable).long())
    n_valid = sum(1 for s in summaries if s[0])
    n_complete = sum(1 for s in summaries if s[0] and s[1] == 1)
    distinct = {s[2] for s in summaries if s[0]}
    ref = None if reference_smiles is None else frozenset(reference_smiles)
    n_novel = None if ref is None else len(distinct - ref)
    result = {
        "n_molecules": n,
        "n_atoms": n_atoms,
        "atom_stability": _ratio(int(stable.sum()), n_atoms),
        "molecule_stability": _ratio(int((unstable_per_mol == 0).sum()), n),
        "n_valid": n_valid,
        "validity": _ratio(n_valid, n),
        "n_complete": n_complete,
        "completeness": _ratio(n_complete, n),
        "n_unique": len(distinct),
        "uniqueness": _ratio(len(distinct), n_valid),
        "valid_and_unique": _ratio(len(distinct), n),
        "n_novel": n_novel,
        "novelty": _ratio(n_novel, len(distinct)),
        "valid_unique_novel": _ratio(n_novel, n),
        "valence_table": valences.key,
        "charges_used": bool(use_charges and isinstance(valences, ChargedValenceTable)),
    }
    return result, summaries


# --------------------------------------------------------------------------------------------------------------
# FCD (optional: fcd_torch ships the ChemNet weights in its wheel)


def fcd_available() -> bool:
    """Whether ``fcd_torch`` (and so the FCD) is installed."""
    import importlib.util

    return importlib.util.find_spec("fcd_torch") is not None


def _chemnet(device: str = "cpu"):
    """ChemNet as packaged by ``fcd_torch`` (its model loader and SMILES one-hot encoder; weights in the wheel)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fcd_torch import FCD
            from fcd_torch.utils import SmilesDataset
    except ImportError as err:
        raise ImportError(
            "the FCD needs fcd_torch (its wheel ships the ChemNet weights): pip install 'energyloss[fcd]'"
        ) from err
    return FCD(device=device, n_jobs=1).model.to(device).eval(), SmilesDataset


def _activations(smiles: Sequence[str], device: str, batch_size: int) -> np.ndarray:
    from rdkit import rdBase

    model, dataset = _chemnet(device)
    loader = torch.utils.data.DataLoader(dataset(list(smiles), canonize=True), batch_size=batch_size)
    out = []
    with torch.inference_mode(), rdBase.BlockLogs():  # the canonicalisation warns about lone H atoms
        for batch in loader:
            out.append(model(batch.transpose(1, 2).float().to(device)).cpu().double().numpy())
    return np.concatenate(out)


def fcd_statistics(smiles: Iterable[str], *, device: str = "cpu", batch_size: int = 512) -> dict[str, np.ndarray]:
    """Mean ``mu`` (512,) and covariance ``sigma`` (512, 512) of ChemNet's activations over the distinct SMILES.

    The SMILES are canonicalised by RDKit first (as ``fcd_torch`` does).
    """
    unique = sorted(set(smiles))
    if len(unique) < 2:
        raise ValueError(f"the FCD needs at least 2 distinct valid molecules; got {len(unique)}")
    act = _activations(unique, device, batch_size)
    return {"mu": act.mean(0), "sigma": np.cov(act.T)}


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2))`` (Fréchet distance of two Gaussians), as in ``fcd_torch``."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # nearly singular product: regularise
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FCD: imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_chemnet_distance(
    smiles: Iterable[str], reference: Mapping[str, np.ndarray] | Iterable[str], *, device: str = "cpu"
) -> float:
    """FCD between the distinct SMILES and a reference (its SMILES, or :func:`fcd_statistics` of them)."""
    gen = fcd_statistics(smiles, device=device)
    ref = reference if isinstance(reference, Mapping) else fcd_statistics(reference, device=device)
    return _frechet(ref["mu"], ref["sigma"], gen["mu"], gen["sigma"])


# --------------------------------------------------------------------------------------------------------------
# The reference set (QM9 test) and the whole evaluation


@dataclasses.dataclass
class Table3Reference:
    """What generated molecules are compared with: geometry values, FCD statistics, training SMILES for novelty.

    Attributes:
        name: e.g. ``"qm9-test"``.
        geometry: :func:`~energyloss.experiments.molecules.geometry_mmd.geometry_values` of the reference set.
        fcd: :func:`fcd_statistics` of its whole-molecule SMILES, or ``None`` (no FCD).
        novelty_3d, novelty_2d: training-set SMILES (3-D rule / 2-D bonds) for novelty, or ``None``.
        info: provenance (sizes, cache keys, excluded counts).
    """

    name: str
    geometry: dict[str, dict[str, np.ndarray]]
    fcd: dict[str, np.ndarray] | None = None
    novelty_3d: frozenset[str] | None = None
    novelty_2d: frozenset[str] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _cached_json(path: Path, key: Mapping[str, Any], compute) -> Any:

    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == dict(key):
                return stored["value"]
        except (OSError, json.JSONDecodeError, AttributeError, KeyError):
            pass
    value = compute()
    text = json.dumps({"key": dict(key), "value": value})
    atomic_save(path, lambda tmp: tmp.write_text(text))
    return value


def qm9_table3_reference(
    *,
    cache_dir: str | os.PathLike | None = None,
    split: str = "test",
    fcd: bool = True,
    novelty: bool = False,
    n_jobs: int = 1,
    progress: bool = True,
    device: str = "cpu",
) -> Table3Reference:
    """The QM9 reference of Table 3: the test split with bonds (geometry, FCD statistics), optionally training SMILES.

    Builds the QM9 and bond caches if needed (:func:`~energyloss.experiments.molecules.bonds.load_qm9_bonds`). The
    FCD statistics (a minute of ChemNet on CPU) and the 2-D training SMILES are cached next to the data, keyed by
    the bond cache's SHA-256 and the package versions. ``fcd=True`` without ``fcd_torch`` installed leaves ``fcd``
    as ``None`` (and ``info["fcd"]`` says why).
    """
    from . import bonds as _bonds
    from . import qm9

    ref = _bonds.load_qm9_bonds(split, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
    info: dict[str, Any] = {
        "split": split,
        "n_molecules": len(ref.molecules),
        "n_excluded": ref.manifest["n_excluded"],
        "bonds_sha256": ref.manifest["sha256"],
    }
    geometry = _geo.geometry_values(ref.molecules, ref.graphs)
    fcd_stats = None
    if fcd and not fcd_available():
        info["fcd"] = "skipped: fcd_torch is not installed (pip install 'energyloss[fcd]')"
    elif fcd:
        from importlib.metadata import version

        summaries = rdkit_summaries(ref.molecules, ref.graphs, n_jobs=n_jobs)
        key = {"bonds_sha256": ref.manifest["sha256"], "fcd_torch": version("fcd_torch"), "rdkit": rdkit_version()}
        path = _bonds.bonds_cache_path(split, cache_dir).with_name(
            f"qm9-{split}-fcd-stats-v{TABLE3_METRICS_VERSION}.json"
        )

        def compute() -> dict[str, list]:
            stats = fcd_statistics([s[3] for s in summaries if s[0]], device=device)
            return {"mu": stats["mu"].tolist(), "sigma": stats["sigma"].tolist()}

        value = _cached_json(path, key, compute)
        fcd_stats = {"mu": np.asarray(value["mu"]), "sigma": np.asarray(value["sigma"])}
        info["fcd"] = f"statistics of {len({s[3] for s in summaries if s[0]})} distinct {split} SMILES"
    novelty_3d = novelty_2d = None
    if novelty:
        novelty_3d = frozenset(qm9.qm9_reference_smiles(cache_dir=cache_dir, n_jobs=n_jobs))
        train = _bonds.load_qm9_bonds("train", cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
        key = {"bonds_sha256": train.manifest["sha256"], "rdkit": rdkit_version()}
        path = _bonds.bonds_cache_path("train", cache_dir).with_name(
            f"qm9-train-smiles-2d-v{TABLE3_METRICS_VERSION}.json"
        )

        def compute_train() -> list[str]:
            summ = rdkit_summaries(train.molecules, train.graphs, n_jobs=n_jobs)
            return sorted({s[2] for s in summ if s[0]})

        novelty_2d = frozenset(_cached_json(path, key, compute_train))
        info["novelty"] = "QM9 train: 3-D SMILES from EDM's bond table, 2-D SMILES from the perceived bonds"
    return Table3Reference(f"qm9-{split}", geometry, fcd_stats, novelty_3d, novelty_2d, info)


def _fcd_of(summaries: Sequence[tuple], reference: Table3Reference | None, device: str) -> tuple[float | None, str]:
    if reference is None or reference.fcd is None:
        return None, "no FCD reference" if reference is None else reference.info.get("fcd", "no FCD statistics")
    smiles = {s[3] for s in summaries if s[0]}
    if len(smiles) < 2:
        return None, f"only {len(smiles)} distinct valid molecule(s)"
    return frechet_chemnet_distance(smiles, reference.fcd, device=device), f"{len(smiles)} distinct SMILES"


def evaluate_table3(
    molecules: Molecules,
    graphs: BondGraphs | None = None,
    *,
    reference: Table3Reference | None = None,
    bond_table: BondLengthTable = EDM_BOND_TABLE,
    valences_3d: ValenceTable = EDM_VALENCES,
    valences_2d: ChargedValenceTable = JODO_CHARGED_VALENCES,
    use_charges: bool = True,
    perception_method: str = "auto",
    fcd: bool = True,
    mmd: bool = True,
    mmd_molecules: str = "all",
    angle_counting: str = "each",
    max_samples: int | None = 20_000,
    seed: int = 0,
    n_jobs: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """All Table 3 metrics of a set of molecules (module docstring), with timings.

    Parameters
    ----------
    molecules : the molecules (finite positions; screen files first).
    graphs : their bonds and formal charges; ``None`` perceives them from the 3-D structures.
    reference : the reference for FCD, MMD and novelty (:func:`qm9_table3_reference`); ``None`` skips them.
    fcd, mmd : compute the FCD / the geometry MMD (needs ``reference``).
    mmd_molecules : ``"all"`` (JODO's code) or ``"complete"`` (2-D-complete molecules only).
    angle_counting, max_samples, seed : see :func:`~energyloss.experiments.molecules.geometry_mmd.geometry_mmd`.
    """
    if mmd_molecules not in ("all", "complete"):
        raise ValueError(f"mmd_molecules must be 'all' or 'complete'; got {mmd_molecules!r}")
    _check_finite(molecules)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    graphs_3d = distance_bond_graphs(molecules, table=bond_table)
    r3, summ3 = graph_metrics(
        molecules,
        graphs_3d,
        valences=valences_3d,
        use_charges=False,
        reference_smiles=None if reference is None else reference.novelty_3d,
        n_jobs=n_jobs,
    )
    r3["bond_table"] = bond_table.key
    seconds["3d"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if graphs is None:
        graphs, rules = perceive_bond_graphs(molecules, method=perception_method, n_jobs=n_jobs)
        source = (
            f"perceived from the 3-D structures (RDKit {rdkit_version()} rdDetermineBonds, total charge 0, "
            f"method {perception_method!r}): the file has no bonds"
        )
        n_failed = int((rules == 0).sum())
    else:
        graphs.check_matches(molecules)
        source, n_failed = "given", 0
    seconds["bond_perception"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r2, summ2 = graph_metrics(
        molecules,
        graphs,
        valences=valences_2d,
        use_charges=use_charges,
        reference_smiles=None if reference is None else reference.novelty_2d,
        n_jobs=n_jobs,
    )
    r2.update(bonds_source=source, n_perception_failed=n_failed)
    seconds["2d"] = time.perf_counter() - t0
    result: dict[str, Any] = {
        "version": TABLE3_METRICS_VERSION,
        "reference": None if reference is None else reference.name,
        "3d": r3,
        "2d": r2,
    }
    if fcd and reference is not None:
        t0 = time.perf_counter()
        r3["fcd"], r3["fcd_note"] = _fcd_of(summ3, reference, device)
        r2["fcd"], r2["fcd_note"] = _fcd_of(summ2, reference, device)
        seconds["fcd"] = time.perf_counter() - t0
    if mmd and reference is not None:
        t0 = time.perf_counter()
        sel_mols, sel_graphs = molecules, graphs
        if mmd_molecules == "complete":
            idx = torch.tensor([k for k, s in enumerate(summ2) if s[0] and s[1] == 1], dtype=torch.int64)
            sel_mols, sel_graphs = molecules.select(idx), graphs.select(idx)
        values = _geo.geometry_values(sel_mols, sel_graphs, angle_counting=angle_counting)
        seconds["geometry_values"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        geo = _geo.geometry_mmd(values, reference.geometry, max_samples=max_samples, seed=seed)
        seconds["mmd"] = time.perf_counter() - t1
        geo.update(molecules=mmd_molecules, angle_counting=angle_counting, max_samples=max_samples, seed=seed)
        result["geometry"] = geo
    result["rdkit_version"] = rdkit_version()
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result
