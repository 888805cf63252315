"""``energyloss eval-molecules``: stability, validity, uniqueness (and novelty) of molecules in a file.

::

    energyloss eval-molecules SAMPLES.{npz,pt,xyz,sdf} [--limit N] [--json] [--novelty-against qm9-train]
    energyloss eval-molecules --reference qm9-train [--limit N] [--json]
    energyloss eval-molecules SAMPLES.npz --table3 [--table3-reference qm9-test|none] [--no-fcd] [--sample N]

File formats: the project's sample format (``.npz`` / ``.pt`` with ``positions (B, N, 3)`` and
``atomic_numbers (B, N)``, see :mod:`energyloss.experiments.molecules.data`), multi-molecule XYZ and SDF.
``--reference qm9-{train,valid,test}`` evaluates the data set itself (the "Data" row of EDM's tables).
``--limit N`` keeps the first N molecules. ``--json`` prints one JSON object with ``atom_stability``,
``molecule_stability``, ``validity``, ``uniqueness``, ``novelty`` (fractions in [0, 1]; ``null`` when not
computed), counts, the bond / valence tables and the RDKit version; otherwise a Markdown table is printed.

``--table3`` adds the metrics of the paper's Table 3 (JODO's evaluation, see
:mod:`energyloss.experiments.molecules.table3_metrics`) under the key ``table3``: 3-D validity and completeness, 2-D
stability / validity / completeness / uniqueness / novelty from the file's bonds (``bond_orders`` and
``formal_charges`` in ``.npz`` / ``.pt``, the bonds of an SDF file) or, if it has none, from bonds perceived from
the 3-D structures (``table3.2d.bonds_source`` says which), the FCD (needs the optional ``fcd_torch``) and the
bond-length / angle / dihedral MMD against QM9's test split with bonds (``--table3-reference none`` skips FCD and
MMD). With ``--reference qm9-*`` the split's molecules come with their bonds from the QM9 bond cache, and the
molecules whose bonds disagree with QM9's SMILES are left out of every metric (``n_excluded_bonds``).
``--sample N`` evaluates a random subset of N molecules (``--seed``, default 0) instead of all.

Molecules that cannot be scored (empty ones, NaN / inf coordinates, SDF records without 3-D coordinates) are
left out with their record numbers (``n_records``, ``n_excluded_*``, ``excluded_records``; a note on stderr).
A file that cannot be read (missing, truncated, an unknown element or an atomic number outside 1..86, ...) is
reported as one line on stderr naming the file and the record, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DESCRIPTION = "Evaluate molecules (stability, RDKit validity, uniqueness, novelty) from a file or a data set."

_REFERENCES = ("qm9-train", "qm9-valid", "qm9-test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=None, help="molecules file: .npz / .pt (project format), .xyz, .sdf")
    parser.add_argument("--reference", choices=_REFERENCES, default=None, help="evaluate a data-set split instead")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N molecules")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--novelty-against",
        choices=["qm9-train", "none"],
        default="none",
        help="reference set for novelty (its SMILES are computed once and cached)",
    )
    parser.add_argument("--no-rdkit", action="store_true", help="stability only (no validity / uniqueness / novelty)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes for the RDKit part (default: CPU count, <= 8)"
    )
    parser.add_argument("--table3", action="store_true", help="add the paper's Table 3 metrics (JODO's evaluation)")
    parser.add_argument(
        "--table3-reference",
        choices=["qm9-test", "none"],
        default="qm9-test",
        help="reference set for the FCD and the geometry MMD of --table3 (none: skip both)",
    )
    parser.add_argument("--no-fcd", action="store_true", help="--table3 without the FCD")
    parser.add_argument("--sample", type=int, default=None, metavar="N", help="evaluate a random subset of N molecules")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample and of the MMD subsampling")
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="cache folder (default: $ENERGYLOSS_CACHE or ~/.cache/energyloss)",
    )


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table (percentages) followed by the provenance line."""
    from ..runs import markdown_table

    names = [
        ("atom_stability", "atom stability (%)"),
        ("molecule_stability", "molecule stability (%)"),
        ("validity", "validity (%)"),
        ("uniqueness", "uniqueness (% of valid)"),
        ("valid_and_unique", "valid and unique (%)"),
        ("novelty", "novelty (% of unique)"),
    ]
    rows = [{"metric": label, "value": _percent(result.get(key))} for key, label in names]
    table = markdown_table(rows, ["metric", "value"])
    excluded = f"; {result['excluded_summary']}" if result.get("excluded_summary") else ""
    return (
        f"{table}\n\n{result['n_molecules']} molecules, {result['n_atoms']} atoms from {result.get('input')}; "
        f"bond table {result['bond_table']}, valence table {result['valence_table']}, "
        f"RDKit {result['rdkit_version']}{excluded}"
    )


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4f}"


def format_table3(t3: dict[str, Any]) -> str:
    """The ``table3`` part of a result as two Markdown tables and a provenance line."""
    from ..runs import markdown_table

    names = [
        ("atom_stability", "atom stability (%)"),
        ("molecule_stability", "molecule stability (%)"),
        ("validity", "validity (%)"),
        ("completeness", "completeness (%)"),
        ("uniqueness", "uniqueness (% of valid)"),
        ("novelty", "novelty (% of unique)"),
    ]
    rows = [{"metric": label, "3-D": _percent(t3["3d"].get(k)), "2-D": _percent(t3["2d"].get(k))} for k, label in names]
    rows.append({"metric": "FCD", "3-D": _number(t3["3d"].get("fcd")), "2-D": _number(t3["2d"].get("fcd"))})
    text = "Table 3 metrics\n\n" + markdown_table(rows, ["metric", "3-D", "2-D"])
    geo = t3.get("geometry")
    if geo is not None:
        mmd_rows = [
            {"geometry MMD": label, "value": _number(geo[key])}
            for key, label in (
                ("bond_length_mmd", "bond length"),
                ("bond_angle_mmd", "bond angle"),
                ("dihedral_angle_mmd", "dihedral angle"),
            )
        ]
        text += "\n\n" + markdown_table(mmd_rows, ["geometry MMD", "value"])
    notes = [f"2-D bonds: {t3['2d']['bonds_source']}"]
    if t3["2d"].get("n_perception_failed"):
        notes.append(f"{t3['2d']['n_perception_failed']} molecules without perceivable bonds (2-D invalid)")
    notes.append(f"reference {t3['reference']}" if t3["reference"] else "no reference (no FCD / MMD)")
    if t3["3d"].get("fcd_note") and t3["3d"].get("fcd") is None:
        notes.append(f"FCD: {t3['3d']['fcd_note']}")
    return f"{text}\n\nTable 3 metrics v{t3['version']}; " + "; ".join(notes)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _usage_error(message: str) -> None:
    print(f"energyloss eval-molecules: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    import torch

    from . import data, metrics, qm9

    if (args.path is None) == (args.reference is None):
        _usage_error("give either a file PATH or --reference, not both / neither")
    if args.limit is not None and args.limit < 1:
        _usage_error(f"--limit must be >= 1; got {args.limit}")
    if args.sample is not None and args.sample < 1:
        _usage_error(f"--sample must be >= 1; got {args.sample}")
    if args.table3 and args.no_rdkit:
        _usage_error("--table3 needs RDKit: drop --no-rdkit")
    torch.set_num_threads(1)
    n_jobs = args.jobs if args.jobs is not None else metrics.default_n_jobs()
    splits = None
    graphs = None  # --table3: the bond graphs, aligned with `molecules` below
    n_excluded_bonds = None
    source = args.reference if args.reference is not None else str(args.path)
    try:
        if args.reference is not None:
            split = args.reference.split("-", 1)[1]
            if args.table3:
                from . import bonds

                with_bonds = bonds.load_qm9_bonds(
                    split, cache_dir=args.cache_dir, n_jobs=n_jobs, progress=not args.json
                )
                molecules, graphs = with_bonds.molecules, with_bonds.graphs
                n_excluded_bonds = with_bonds.manifest["n_excluded"]
            else:
                splits = qm9.load_qm9(cache_dir=args.cache_dir, progress=not args.json)
                molecules = splits[split]
            if args.limit is not None:
                molecules = molecules.select(torch.arange(min(args.limit, len(molecules))))
                graphs = None if graphs is None else graphs.select(torch.arange(len(molecules)))
            screened = data.screen_molecules(molecules)
        else:
            screened = data.load_screened(args.path, limit=args.limit)
            if args.table3:
                from . import bonds

                graphs = bonds.load_bond_graphs(args.path)
        summary = screened.summary()
        if not len(screened.molecules):
            raise ValueError(f"{source}: no molecule to evaluate" + (f" ({summary})" if summary else ""))
        if summary:
            print(f"energyloss eval-molecules: note: {source}: {summary}", file=sys.stderr)
        molecules = screened.molecules
        if args.sample is not None and args.sample < len(molecules):
            pick = torch.randperm(len(molecules), generator=torch.Generator().manual_seed(args.seed))[: args.sample]
            molecules = molecules.select(pick.sort().values)
        if graphs is not None:  # records (files) or QM9 indices (reference) -> rows of `graphs`
            if args.reference is not None:
                row = {int(i): k for k, i in enumerate(with_bonds.molecules.ids.tolist())}
                graphs = graphs.select(torch.tensor([row[int(i)] for i in molecules.ids], dtype=torch.int64))
            else:
                graphs = graphs.select(molecules.ids)
            graphs.check_matches(molecules)
        reference = None
        if args.novelty_against == "qm9-train" and not args.no_rdkit:
            reference = qm9.qm9_reference_smiles(cache_dir=args.cache_dir, n_jobs=n_jobs, splits=splits)
        start = time.perf_counter()
        result = metrics.evaluate_molecules(
            molecules, reference_smiles=reference, use_rdkit=not args.no_rdkit, n_jobs=n_jobs
        )
        seconds = time.perf_counter() - start
        table3 = None
        if args.table3:
            from . import table3_metrics

            t3_reference = None
            if args.table3_reference != "none":
                t3_reference = table3_metrics.qm9_table3_reference(
                    cache_dir=args.cache_dir,
                    fcd=not args.no_fcd,
                    novelty=args.novelty_against == "qm9-train",
                    n_jobs=n_jobs,
                    progress=not args.json,
                )
            table3 = table3_metrics.evaluate_table3(
                molecules, graphs, reference=t3_reference, fcd=not args.no_fcd, seed=args.seed, n_jobs=n_jobs
            )
            if t3_reference is not None:
                table3["reference_info"] = t3_reference.info
            if n_excluded_bonds is not None:
                table3["2d"]["bonds_source"] = (
                    f"the QM9 bond cache (perceived from the 3-D structures and checked against QM9's SMILES; "
                    f"{n_excluded_bonds} molecules of the split whose bonds disagree are left out)"
                )
    except (ValueError, OSError, ImportError, qm9.CacheError, qm9.DownloadError) as err:
        print(f"energyloss eval-molecules: error: {_one_line(err)}", file=sys.stderr)
        return 2
    excluded = screened.excluded
    result = {
        "input": source,
        "limit": args.limit,
        "novelty_against": None if reference is None else args.novelty_against,
        "n_records": screened.n_records,
        **result,
        # the file was screened before scoring: these are the molecules the metric never saw
        "n_excluded_empty": len(excluded["empty"]),
        "n_excluded_non_finite": len(excluded["non_finite_positions"]),
        "n_excluded_no_3d": len(excluded["no_3d_coordinates"]),
        "excluded_records": excluded,
        "excluded_summary": summary or None,
        "seconds": round(seconds, 2),
        "n_jobs": n_jobs,
    }
    if args.sample is not None:
        result.update(sample=args.sample, seed=args.seed)
    if table3 is not None:
        result["n_excluded_bonds"] = n_excluded_bonds
        result["table3"] = table3
    if args.json:
        print(json.dumps(result, indent=1, default=_json_default))
    else:
        print(format_table(result) + ("" if table3 is None else "\n\n" + format_table3(table3)))
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
