"""``energyloss eval-molecules``: stability, validity, uniqueness (and novelty) of molecules in a file.

::

    energyloss eval-molecules SAMPLES.{npz,pt,xyz,sdf} [--limit N] [--json] [--novelty-against qm9-train]
    energyloss eval-molecules --reference qm9-train [--limit N] [--json]

File formats: the project's sample format (``.npz`` / ``.pt`` with ``positions (B, N, 3)`` and
``atomic_numbers (B, N)``, see :mod:`energyloss.experiments.molecules.data`), multi-molecule XYZ and SDF.
``--reference qm9-{train,valid,test}`` evaluates the data set itself (the "Data" row of EDM's tables).
``--limit N`` keeps the first N molecules. ``--json`` prints one JSON object with ``atom_stability``,
``molecule_stability``, ``validity``, ``uniqueness``, ``novelty`` (fractions in [0, 1]; ``null`` when not
computed), counts, the bond / valence tables and the RDKit version; otherwise a Markdown table is printed.

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
    torch.set_num_threads(1)
    n_jobs = args.jobs if args.jobs is not None else metrics.default_n_jobs()
    splits = None
    source = args.reference if args.reference is not None else str(args.path)
    try:
        if args.reference is not None:
            splits = qm9.load_qm9(cache_dir=args.cache_dir, progress=not args.json)
            molecules = splits[args.reference.split("-", 1)[1]]
            if args.limit is not None:
                molecules = molecules.select(torch.arange(min(args.limit, len(molecules))))
            screened = data.screen_molecules(molecules)
        else:
            screened = data.load_screened(args.path, limit=args.limit)
        summary = screened.summary()
        if not len(screened.molecules):
            raise ValueError(f"{source}: no molecule to evaluate" + (f" ({summary})" if summary else ""))
        if summary:
            print(f"energyloss eval-molecules: note: {source}: {summary}", file=sys.stderr)
        reference = None
        if args.novelty_against == "qm9-train" and not args.no_rdkit:
            reference = qm9.qm9_reference_smiles(cache_dir=args.cache_dir, n_jobs=n_jobs, splits=splits)
        start = time.perf_counter()
        result = metrics.evaluate_molecules(
            screened.molecules, reference_smiles=reference, use_rdkit=not args.no_rdkit, n_jobs=n_jobs
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
        "seconds": round(time.perf_counter() - start, 2),
        "n_jobs": n_jobs,
    }
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0
