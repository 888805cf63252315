"""The "data row" of the Table 3 metrics: QM9 training molecules (with bonds) against the QM9 test reference.

Also evaluates perturbed copies of the same molecules, which must score clearly worse: Gaussian noise on the
positions (bonds kept) and atom types shuffled within each molecule (positions and bonds kept). Prints a Markdown
table and writes every result as JSON.

    python benchmarks/table3_data_row.py [--n 10000] [--seed 0] [--out runs/table3-data-row.json] [--no-fcd]

Needs the QM9 cache (``energyloss data qm9``); builds the bond caches of the train and test splits on first use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from energyloss.experiments.molecules import bonds, table3_metrics
from energyloss.experiments.molecules.data import Molecules


def shuffle_types(molecules: Molecules, seed: int) -> Molecules:
    """Atom types permuted within each molecule (a random permutation per molecule)."""
    g = torch.Generator().manual_seed(seed)
    keys = molecules.batch.double() + torch.rand(len(molecules.atomic_numbers), generator=g, dtype=torch.float64)
    perm = torch.argsort(keys)  # stays inside each molecule's block, random order within it
    return Molecules(molecules.positions, molecules.atomic_numbers[perm], molecules.num_atoms, molecules.ids)


def noised(molecules: Molecules, sigma: float, seed: int) -> Molecules:
    g = torch.Generator().manual_seed(seed)
    noise = sigma * torch.randn(molecules.positions.shape, generator=g)
    return Molecules(molecules.positions + noise, molecules.atomic_numbers, molecules.num_atoms, molecules.ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="training molecules to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/table3-data-row.json")
    parser.add_argument("--no-fcd", action="store_true")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    reference = table3_metrics.qm9_table3_reference(cache_dir=args.cache_dir, fcd=not args.no_fcd, progress=False)
    t_ref = time.perf_counter() - t0
    train = bonds.load_qm9_bonds("train", cache_dir=args.cache_dir, progress=False)
    pick = torch.randperm(len(train.molecules), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    pick = pick.sort().values
    mols, graphs = train.molecules.select(pick), train.graphs.select(pick)

    variants = {
        "QM9 train sample, its bonds": (mols, graphs),
        "QM9 train sample, bonds perceived": (mols, None),
        "positions + N(0, 0.1 Å)": (noised(mols, 0.1, args.seed), graphs),
        "positions + N(0, 0.3 Å)": (noised(mols, 0.3, args.seed), graphs),
        "atom types shuffled in each molecule": (shuffle_types(mols, args.seed), graphs),
    }
    results = {}
    for name, (m, g) in variants.items():
        start = time.perf_counter()
        r = table3_metrics.evaluate_table3(m, g, reference=reference, fcd=not args.no_fcd, seed=args.seed)
        r["seconds"]["total"] = round(time.perf_counter() - start, 2)
        results[name] = r
        print(f"{name}: {r['seconds']}", flush=True)

    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}"

    def num(x):
        return "–" if x is None else f"{x:.4g}"

    head = "| molecules | at. stab. | mol. stab. | val. | compl. | FCD | bond | angle | dihedral | 2-D mol. stab. |"
    print("\n" + head + "\n" + "|---" * 10 + "|")
    for name, r in results.items():
        d3, d2, geo = r["3d"], r["2d"], r["geometry"]
        print(
            f"| {name} | {pct(d3['atom_stability'])} | {pct(d3['molecule_stability'])} | {pct(d3['validity'])} | "
            f"{pct(d3['completeness'])} | {num(d3.get('fcd'))} | {num(geo['bond_length_mmd'])} | "
            f"{num(geo['bond_angle_mmd'])} | {num(geo['dihedral_angle_mmd'])} | {pct(d2['molecule_stability'])} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "n": len(mols),
        "seed": args.seed,
        "reference": reference.info,
        "reference_seconds": round(t_ref, 1),
        "train_bonds_excluded": train.manifest["n_excluded"],
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
