"""``energyloss data``: prepare a data set into the cache and print its card.

::

    energyloss data qm9 [--summary] [--cache-dir DIR] [--source auto|qm9pack|figshare] [--force]
    energyloss data geom-drugs [PATH] [--summary] [--seed N]

``qm9`` builds (or verifies) the cached QM9 tensors and prints the cache path; with ``--summary`` it prints one
JSON object instead: for each split (``train``, ``valid``, ``test``) ``n_molecules``, ``n_atoms_histogram``
(atom count -> molecules) and ``element_counts`` (symbol -> atoms), plus the source, the split recipe and
``edm_checks`` (whether the training split matches the statistics EDM ships). Progress goes to stderr, so
stdout stays parseable.

``geom-drugs`` indexes EDM's ``geom_drugs_30.npy`` (default ``$ENERGYLOSS_CACHE/geom/geom_drugs_30.npy``) in one
streamed pass, caches the index next to it and prints the split sizes; ``--summary`` prints its card: per split
``n_molecules`` (conformers) and ``n_atoms_histogram``, the file's rows, conformers, largest conformer and element
counts, and the split recipe. A missing file (or ``geom_permutation.npy``) is one line on stderr naming it and
saying how to get it, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = "Prepare a molecule data set (qm9, geom-drugs) into the cache and print its card."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["qm9", "geom-drugs"], help="which data set")
    parser.add_argument(
        "path", nargs="?", default=None, help="geom-drugs: the geom_drugs_30.npy file (default: in the cache folder)"
    )
    parser.add_argument("--summary", action="store_true", help="print the data set card as one JSON object")
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="cache folder (default: $ENERGYLOSS_CACHE or ~/.cache/energyloss)",
    )
    parser.add_argument(
        "--source",
        default="auto",
        choices=["auto", "qm9pack", "figshare"],
        help="qm9: offline qm9pack wheel, or the canonical figshare download (needs internet)",
    )
    parser.add_argument(
        "--source-dir", default=None, metavar="DIR", help="qm9: folder of qm9_part*.csv files or of the raw downloads"
    )
    parser.add_argument(
        "--n-train", type=int, default=None, help="qm9: training-set size (default 100000; for small custom sources)"
    )
    parser.add_argument("--force", action="store_true", help="qm9: rebuild the cache even if it is valid")
    parser.add_argument("--seed", type=int, default=None, help="geom-drugs: new split seed if no stored permutation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _qm9(args: argparse.Namespace) -> int:
    from . import qm9

    n_train = args.n_train if args.n_train is not None else qm9.N_TRAIN
    progress = not args.no_progress
    path = qm9.prepare_qm9(
        cache_dir=args.cache_dir,
        source=args.source,
        source_dir=args.source_dir,
        n_train=n_train,
        force=args.force,
        progress=progress,
    )
    manifest = qm9.verify_cache(path)
    if not args.summary:
        counts = ", ".join(f"{k} {v}" for k, v in manifest["n_molecules"].items())
        print(f"QM9 ready: {path} ({counts})")
        return 0
    splits = qm9.load_qm9(cache_dir=args.cache_dir, on_invalid="raise", n_train=n_train, progress=progress)
    card = qm9.dataset_card(splits)
    out = {
        "dataset": "qm9",
        **card,
        "source": manifest["source"],
        "split": {
            **manifest["split"],
            "recipe": "perm = numpy.random.RandomState(seed).permutation(N); train = perm[:n_train], "
            "valid = next N - n_train - int(test_fraction*N), test = the rest; each split sorted by QM9 index",
        },
        "edm_checks": qm9.edm_checks(card),
        "cache": {"path": str(path), "sha256": manifest["sha256"]},
    }
    print(json.dumps(out, indent=1))
    return 0


def _geom(args: argparse.Namespace) -> int:
    from . import geom

    path = args.path
    if path is None and args.cache_dir is not None:
        from pathlib import Path

        path = Path(args.cache_dir).expanduser() / "geom" / geom.GEOM_FILE
    try:
        splits = geom.geom_drugs_datasets(path, seed=args.seed)
    except (OSError, ValueError) as err:
        print(f"energyloss data geom-drugs: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    first = splits["train"]
    if args.summary:
        card = geom.geom_card(splits)
        stored = args.seed is None
        card["split"] = {
            "permutation": str(first.path.with_name(geom.PERMUTATION_FILE)) if stored else None,
            "seed": args.seed,
            "recipe": "conformers in file order, permuted by EDM's stored geom_permutation.npy (or "
            "numpy.random.RandomState(seed).permutation(n)); valid = first int(0.1 n), test = next int(0.1 n), "
            "train = the rest (conformers of one molecule can fall into different splits, as in EDM)",
        }
        print(json.dumps({"dataset": "geom-drugs", **card}, indent=1))
    else:
        counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        print(f"GEOM-Drugs ready: {first.path} ({first.index.n_rows:,} rows; conformers: {counts})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dataset == "qm9":
        return _qm9(args)
    return _geom(args)
