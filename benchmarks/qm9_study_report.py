"""Tables and the convergence plot of the CPU-scale QM9 study (docs/results/qm9.md §1c, issue 15).

Reads the run folders that ``benchmarks/qm9_cpu_study.sh`` writes (``seed-S/``, ``lr-*/``, ``frac-0.5/``,
``matrix/<loss>/``; each ``<folder>/<loss-tag>/metrics.json``) and prints Markdown:

1. MSE vs energy(exp) over the seeds: mean ± std (population, over the seeds that reached the epoch; ``n`` says
   how many) of atom stability, molecule stability, validity, uniqueness and the nearest-neighbour-distance W1 at
   every evaluation, and the per-seed difference energy - MSE at the last one;
2. the learning-rate check (4 epochs, seed 0: lr 5e-4, 1e-3 from ``seed-0`` at epoch 4, 2e-3, 4e-3, 8e-3) and the rate
   it picks per loss;
3. the one-seed matrix (MAE, Kabsch, sparse energy, the four coefficient schemes) beside seed 0's MSE / energy;
4. 50 % of the training data, same steps;
   with ``--tuned``, 3 and 4 also for the tuned study folders, each loss family at its own rate, with atom stability
   at every evaluation;
5. the other denoisers (``model-gdm/``, ``model-egnn/``: GDM without augmentation and EDM's EGNN, seed 0) beside
   seed 0's GDM-aug, at epoch 4 (EGNN's budget) and at the last evaluation.

Unfinished runs are reported with the epochs they have reached. The plot (``--plot``) shows the mean over seeds
with a band of ± one std (and every seed thin) for atom stability, validity and the NN W1.

    python benchmarks/qm9_study_report.py runs/qm9-study --plot docs/results/qm9/cpu_study_seeds.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from energyloss.experiments.runs import mean_std

METRICS = (
    ("atom_stability", "atom stab. %", 100.0),
    ("molecule_stability", "mol. stab. %", 100.0),
    ("validity", "valid %", 100.0),
    ("uniqueness", "unique %", 100.0),
    ("nn_distance_w1", "NN W1 Å", 1.0),
)
PAIR = ("energy:exp", "mse")


def load_records(folder: Path) -> dict[str, list[dict]]:
    """``{loss spec: records}`` of the run folders under ``folder`` (one per loss tag)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/metrics.json")):
        try:
            records = json.loads(path.read_text())["records"]
        except (OSError, ValueError, KeyError):
            print(f"skipping unreadable {path}", file=sys.stderr)
            continue
        if records:
            out[records[0]["loss"]] = records
    return out


def _fmt(mean: float, std: float | None, scale: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    digits = 1 if scale == 100.0 else 3
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def seeds_table(study: Path | dict[str, Path]) -> tuple[str, dict]:
    """Markdown of part 1 and ``{loss: {epoch: {metric: [values over seeds]}}}`` for the plot.

    ``study`` is one study folder, or ``{loss: folder}`` to pair each loss's ``seed-*`` runs from its own folder
    (each loss at its own learning rate: the ``LR=<rate> LOSSES=<loss>`` studies of the queue)."""
    sources = study if isinstance(study, dict) else dict.fromkeys(PAIR, study)
    by_seed: dict[int, dict[str, list[dict]]] = defaultdict(dict)
    for loss, folder in sources.items():
        for path in sorted(folder.glob("seed-*")):
            if path.is_dir() and loss in (runs := load_records(path)):
                by_seed[int(path.name.split("-")[1])][loss] = runs[loss]
    curves: dict[str, dict[float, dict[str, list[float]]]] = {
        loss: defaultdict(lambda: defaultdict(list)) for loss in PAIR
    }
    for runs in by_seed.values():
        for loss in PAIR:
            for r in runs.get(loss, []):
                for key, _, _ in METRICS:
                    curves[loss][round(r["epoch"], 3)][key].append(r[key])
    lines = [
        "| epoch | loss | n | " + " | ".join(label for _, label, _ in METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    epochs = sorted({e for loss in PAIR for e in curves[loss]})
    for epoch in epochs:
        for loss in PAIR:
            cell = curves[loss].get(epoch)
            if not cell:
                continue
            n = len(cell["atom_stability"])
            stats = []
            for key, _, scale in METRICS:
                mean, std = mean_std(cell[key])
                stats.append(_fmt(mean, std if n > 1 else None, scale))
            lines.append(f"| {epoch:g} | {loss} | {n} | " + " | ".join(stats) + " |")
    # the paired difference at the last common evaluation of each seed
    diff_rows = []
    for seed, runs in sorted(by_seed.items()):
        if not all(loss in runs for loss in PAIR):
            continue
        common = {r["step"] for r in runs[PAIR[0]]} & {r["step"] for r in runs[PAIR[1]]}
        if not common:
            continue
        last = max(common)  # a seed still training: its last evaluation that both losses have reached
        a, b = (next(r for r in runs[loss] if r["step"] == last) for loss in PAIR)
        diff_rows.append((seed, a["epoch"], {key: (a[key] or 0) - (b[key] or 0) for key, _, _ in METRICS}))
    text = "\n".join(lines)
    if diff_rows:
        text += (
            "\n\nEnergy minus MSE at the last evaluation both have reached, per seed (same steps, batch, data order"
            " and noise):\n\n"
        )
        text += "| seed | epoch | " + " | ".join(label for _, label, _ in METRICS) + " |\n"
        text += "|---|---|" + "---|" * len(METRICS) + "\n"
        for seed, epoch, d in diff_rows:
            text += f"| {seed} | {epoch:g} | " + " | ".join(_fmt(d[k], None, s) for k, _, s in METRICS) + " |\n"
        if len(diff_rows) > 1 and len({epoch for _, epoch, _ in diff_rows}) == 1:  # a mean only at one epoch
            text += (
                "| mean ± std | | "
                + " | ".join(_fmt(*mean_std([d[k] for _, _, d in diff_rows]), s) for k, _, s in METRICS)
                + " |\n"
            )
    return text, curves


def record_at(records: list[dict], epoch: float) -> dict | None:
    """The record of the evaluation at ``epoch``, or ``None`` if the run has not reached it."""
    return next((r for r in records if abs(r["epoch"] - epoch) < 1e-6), None)


def final_rows(rows: list[tuple[str, str, list[dict]]], *, at_epoch: float | None = None) -> str:
    """One row per ``(label, loss, records)``: the record at ``at_epoch`` (default the last) and how far it got."""
    out = ["| run | loss | epoch | " + " | ".join(label for _, label, _ in METRICS) + " |",
           "|---|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    for label, loss, records in rows:
        pick = records[-1] if records else None
        if at_epoch is not None:
            pick = record_at(records, at_epoch)
        if pick is None:
            reached = f"{records[-1]['epoch']:g} so far" if records else "not run"
            out.append(f"| {label} | {loss} | {reached} |" + " |" * len(METRICS))
            continue
        out.append(
            f"| {label} | {loss} | {pick['epoch']:g} | "
            + " | ".join(_fmt(pick[k], None, s) for k, _, s in METRICS)
            + " |"
        )
    return "\n".join(out)


def curve_table(
    rows: list[tuple[str, str, list[dict]]], *, key: str = "atom_stability", scale: float = 100.0, by: str = "epoch"
) -> str:
    """One row per ``(label, loss, records)``, one column per evaluation (``by`` its ``"epoch"`` or its training
    ``"step"``, over every row): ``key`` there (scaled), empty where a run has not reached it. Runs on different
    amounts of data (50 % data, same steps) line up by step, not by epoch."""
    points = sorted({round(r[by], 6) for _, _, records in rows for r in records})
    out = ["| run | loss | " + " | ".join(f"{by} {p:g}" for p in points) + " |",
           "|---|---|" + "---|" * len(points)]  # fmt: skip
    for label, loss, records in rows:
        at = {round(r[by], 6): r for r in records}
        cells = ["" if p not in at else _fmt(at[p][key], None, scale) for p in points]
        out.append(f"| {label} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def tuned_rows(tuned: dict[str, Path]) -> tuple[list, list]:
    """The one-seed runs of the tuned study folders (``--tuned``), each loss family at its own rate: the matrix
    (each folder's seed 0 of its loss, then its ``matrix/*`` runs) and the 50 % data runs beside the full-data
    seed 0; as ``(label, loss, records)`` rows for :func:`final_rows` / :func:`curve_table`."""
    matrix, fraction = [], []
    for loss, folder in tuned.items():
        rate, seed0 = seed0_lr(folder), load_records(folder / "seed-0").get(loss, [])
        matrix.append((f"seed-0, lr {rate}", loss, seed0))
        for run in sorted((folder / "matrix").glob("*")) if (folder / "matrix").is_dir() else []:
            for other, records in load_records(run).items():
                matrix.append((f"matrix, lr {rate}", other, records))
        fraction.append((f"50 % data, lr {rate}", loss, load_records(folder / "frac-0.5").get(loss, [])))
        fraction.append((f"100 % data (seed-0), lr {rate}", loss, seed0))
    return matrix, fraction


def lr_choice(lr_rows: list[tuple[str, str, list[dict]]], *, at_epoch: float = 4.0) -> str:
    """One line per loss: the learning rate with the highest atom stability at ``at_epoch`` (validity breaks ties),
    once every rate of the check has reached it."""
    lines = []
    for loss in PAIR:
        scored = []
        for label, row_loss, records in lr_rows:
            if row_loss != loss:
                continue
            scored.append((label, record_at(records, at_epoch)))
        if not scored or any(pick is None for _, pick in scored):
            lines.append(f"- {loss}: not every rate has reached epoch {at_epoch:g} yet")
            continue
        label, best = max(scored, key=lambda item: (item[1]["atom_stability"], item[1]["validity"]))
        lines.append(
            f"- {loss}: best {label} at epoch {at_epoch:g} ({100 * best['atom_stability']:.1f} % atom stability,"
            f" {100 * best['validity']:.1f} % valid)"
        )
    return "\n" + "\n".join(lines)


def seed0_lr(study: Path) -> str:
    """The learning rate of ``seed-0`` as the lr check labels it: from its config.json (a study run with ``LR=``
    trains seed 0 at that rate), else the ``default`` preset's 1e-3."""
    for path in sorted((study / "seed-0").glob("*/config.json")):
        try:
            return np.format_float_scientific(json.loads(path.read_text())["lr"], trim="-", exp_digits=1)
        except (OSError, ValueError, KeyError):
            continue
    return "1e-3"


#: The learning-rate check's rates for both losses (beside seed 0's); other ``lr-<rate>`` folders are extra checks.
PLANNED_RATES = ("5e-4", "2e-3", "4e-3", "8e-3")


def _is_rate(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def lr_folders(study: Path) -> list[tuple[str, str]]:
    """``(rate label, folder name)`` of the learning-rate check, by rate: the planned ``lr-*`` folders (reported
    as not run while missing), ``seed-0`` at its configured rate, and any other ``lr-<rate>`` folder found."""
    found = {p.name[3:] for p in study.glob("lr-*") if p.is_dir() and _is_rate(p.name[3:])}
    rows = [(lr, f"lr-{lr}") for lr in sorted(set(PLANNED_RATES) | found)]
    rows.append((seed0_lr(study), "seed-0"))
    return sorted(rows, key=lambda row: float(row[0]))


def plot(curves: dict, path: Path, *, title: str = "QM9, GDM-aug 4 x 64, CPU: mean ± std over seeds") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in METRICS if m[0] in ("atom_stability", "validity", "nn_distance_w1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    colours = {"energy:exp": "tab:red", "mse": "tab:blue"}
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for loss in PAIR:
            epochs = sorted(curves[loss])
            if not epochs:
                continue
            stats = np.array([mean_std(curves[loss][e][key]) for e in epochs]) * scale  # (epochs, 2)
            mean, std = stats[:, 0], stats[:, 1]
            n = max(len(curves[loss][e][key]) for e in epochs)
            ax.plot(epochs, mean, color=colours[loss], label=f"{loss} (≤{n} seeds)")
            ax.fill_between(epochs, mean - std, mean + std, color=colours[loss], alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's output folder (OUT of qm9_cpu_study.sh)")
    parser.add_argument("--plot", type=Path, help="write the convergence plot with bands here")
    parser.add_argument(
        "--tuned",
        metavar="LOSS=DIR",
        action="append",
        default=[],
        help=f"pair each loss of {', '.join(PAIR)} at its own rate: the seeds of LOSS come from study folder DIR "
        "(both needed); printed after the seeds of STUDY, and --tuned-plot plots them",
    )
    parser.add_argument("--tuned-plot", type=Path, help="the convergence plot of the --tuned seeds")
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        parser.error(f"study: no folder {args.study}")
    tuned: dict[str, Path] = {}
    for item in args.tuned:
        loss, sep, folder = item.partition("=")
        if not sep or loss not in PAIR:
            parser.error(f"--tuned: expected LOSS=DIR with LOSS one of {', '.join(PAIR)}, got {item!r}")
        if not Path(folder).is_dir():
            parser.error(f"--tuned: no folder {folder}")
        tuned[loss] = Path(folder)
    if args.tuned and set(tuned) != set(PAIR):
        parser.error(f"--tuned: give a folder for each of {', '.join(PAIR)}")
    if args.tuned_plot and not tuned:
        parser.error("--tuned-plot needs --tuned")
    text, curves = seeds_table(args.study)
    print("### MSE vs energy(exp), over seeds\n\n" + text)
    if tuned:
        rates = {loss: seed0_lr(folder) for loss, folder in tuned.items()}
        where = ", ".join(f"{loss} lr {rates[loss]} ({folder})" for loss, folder in tuned.items())
        tuned_text, tuned_curves = seeds_table(tuned)
        print(f"\n### MSE vs energy(exp) at the tuned rates, over seeds: {where}\n\n" + tuned_text)
        if args.tuned_plot:
            each = ", ".join(f"{loss} {rate}" for loss, rate in rates.items())
            plot(tuned_curves, args.tuned_plot, title=f"QM9, GDM-aug 4 x 64, CPU, tuned rates ({each}): mean ± std")
        matrix, fraction = tuned_rows(tuned)
        print("\n### One seed of every loss at its family's tuned rate (seed 0, last evaluation reached)\n")
        print(final_rows(matrix))
        print("\nAtom stability (%) at every evaluation:\n\n" + curve_table(matrix))
        print("\n### 50 % of the training data at the tuned rates, same steps (seed 0, last evaluation)\n")
        print(final_rows(fraction))
        print("\nAtom stability (%) at every evaluation, by training step:\n\n" + curve_table(fraction, by="step"))
    seed0 = load_records(args.study / "seed-0")
    lr_rows = []
    for lr, folder in lr_folders(args.study):
        runs = load_records(args.study / folder)
        planned = folder == "seed-0" or lr in PLANNED_RATES
        for loss in PAIR:
            if planned or loss in runs:  # a check of one loss (lr-1.6e-2: MSE only) has no row for the other
                lr_rows.append((f"lr {lr}", loss, runs.get(loss, [])))
    print("\n### Learning-rate check (seed 0, epoch 4)\n\n" + final_rows(lr_rows, at_epoch=4.0))
    print(lr_choice(lr_rows))
    matrix = [("seed-0", loss, seed0.get(loss, [])) for loss in PAIR]
    for folder in sorted((args.study / "matrix").glob("*")) if (args.study / "matrix").is_dir() else []:
        for loss, records in load_records(folder).items():
            matrix.append((f"matrix/{folder.name}", loss, records))
    print("\n### One seed of every loss (seed 0, last evaluation reached)\n\n" + final_rows(matrix))
    frac = load_records(args.study / "frac-0.5")
    frac_rows = [("50 % data", loss, frac.get(loss, [])) for loss in PAIR]
    frac_rows += [("100 % data", loss, seed0.get(loss, [])) for loss in PAIR]
    print("\n### 50 % of the training data, same steps (seed 0, last evaluation)\n\n" + final_rows(frac_rows))
    models = [("gdm-aug (seed-0)", loss, seed0.get(loss, [])) for loss in PAIR]
    for name in ("gdm", "egnn"):
        runs = load_records(args.study / f"model-{name}")
        models += [(name, loss, runs.get(loss, [])) for loss in PAIR]
    print("\n### Other denoisers (seed 0), epoch 4\n\n" + final_rows(models, at_epoch=4.0))
    print("\n### Other denoisers (seed 0), last evaluation\n\n" + final_rows(models))
    if args.plot:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
