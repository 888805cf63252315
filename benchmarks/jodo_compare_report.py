"""The table of the CPU-scale Table 3 comparison (docs/results/jodo.md), beside the paper's Table 3.

Reads ``<root>/seed-S/<loss-tag>/metrics.json`` as written by ``benchmarks/jodo_cpu_compare.sh`` and prints one
Markdown row per loss (mean ± std over the seeds found, population std; the seed count in ``n``), in the paper's
columns: 3-D atom / molecule stability, validity and completeness (percent), FCD and the bond-length, bond-angle
and dihedral MMD (lower is better), plus the 2-D atom stability, validity and FCD from the sampled bonds.

    python benchmarks/jodo_compare_report.py runs/jodo-cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from energyloss.experiments.runs import mean_std

LOSSES = (("kabsch_mse", "JODO (aligned MSE)"), ("energy-inverse", "JODO + energy (inv.)"),
          ("energy-exp", "JODO + energy (exp.)"))  # fmt: skip
#: (label, getter, scale, digits): the paper's columns, then ours
COLUMNS = (
    ("at. stab. %", lambda m: m["3d"]["atom_stability"], 100, 1),
    ("mol. stab. %", lambda m: m["3d"]["molecule_stability"], 100, 1),
    ("val. %", lambda m: m["3d"]["validity"], 100, 1),
    ("compl. %", lambda m: m["3d"]["completeness"], 100, 1),
    ("FCD", lambda m: m["3d"].get("fcd"), 1, 3),
    ("bond", lambda m: m.get("geometry", {}).get("bond_length_mmd"), 1, 4),
    ("angle", lambda m: m.get("geometry", {}).get("bond_angle_mmd"), 1, 4),
    ("dihedral", lambda m: m.get("geometry", {}).get("dihedral_angle_mmd"), 1, 4),
    ("2-D at. stab. %", lambda m: m["2d"]["atom_stability"], 100, 1),
    ("2-D val. %", lambda m: m["2d"]["validity"], 100, 1),
    ("2-D FCD", lambda m: m["2d"].get("fcd"), 1, 2),
)
PAPER = (
    ("JODO (paper)", "99.2 | 93.4 | – | – | 0.885 | 0.1475 | 0.0121 | 6.29e-4"),
    ("JODO (ours, the paper's)", "99.2 | 92.8 | 95.6 | 95.5 | 0.854 | 0.1218 | 0.0110 | 5.91e-4"),
    ("JODO + Energy (Inv.)", "99.4 | 94.3 | 97.1 | 97.0 | 0.892 | 0.1125 | 0.0046 | 4.95e-4"),
    ("JODO + Energy (Exp.)", "99.6 | 96.6 | 98.4 | 98.4 | 1.495 | 0.0928 | 0.0142 | 4.97e-3"),
)


def _cell(values: list[float | None], scale: float, digits: int) -> str:
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return "–"
    mean, std = mean_std(vals)
    return f"{mean:.{digits}f}" if len(vals) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="OUT of jodo_cpu_compare.sh (holds seed-S/<loss-tag>/)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"root: no folder {args.root}")
    header = "| model | n | steps | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|---|---|---|" + "---|" * len(COLUMNS)]
    for tag, label in LOSSES:
        found = []
        for path in sorted(args.root.glob(f"seed-*/{tag}/metrics.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                print(f"skipping unreadable {path}", file=sys.stderr)
        if not found:
            lines.append(f"| {label} | 0 | not run |" + " |" * len(COLUMNS))
            continue
        steps = sorted({m["step"] for m in found})
        cells = [_cell([get(m) for m in found], scale, digits) for _, get, scale, digits in COLUMNS]
        lines.append(f"| {label} | {len(found)} | {'/'.join(map(str, steps))} | " + " | ".join(cells) + " |")
    for label, row in PAPER:
        lines.append(f"| *paper: {label}* | | – | {row} |" + " |" * (len(COLUMNS) - 8))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
