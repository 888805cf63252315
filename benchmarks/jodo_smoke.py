"""A short JODO-style training run and its Table 3 metrics: a smoke test and a step-time measurement, not a result.

Trains :mod:`energyloss.experiments.molecules.jodo` on QM9 with bonds (or on the four hand-built molecules with
``--toy``), samples from the EMA weights, scores the samples with the Table 3 metrics (no FCD or MMD unless asked)
and prints a JSON summary: parameters, seconds per step, the loss curve, the metrics.

    python benchmarks/jodo_smoke.py [--toy] [--steps 200] [--batch-size 32] [--width small|paper]
        [--loss kabsch_mse] [--samples 64] [--sampling-steps 100] [--threads 1] [--device cpu] [--out DIR]

Needs the QM9 cache and the train bond cache (``python -m energyloss.experiments.molecules.bonds``) unless
``--toy``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from energyloss.experiments.molecules.jodo import JodoConfig
from energyloss.experiments.molecules.jodo_train import JodoTrainConfig, evaluate_jodo, load_jodo_data, train_jodo

WIDTHS = {
    "small": {"hidden": 64, "edge_hidden": 32, "layers": 3, "heads": 8, "local_heads": 2, "rbf": 16, "dropout": 0.0},
    "paper": {},  # JODO's QM9 sizes (JodoConfig defaults)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="train on the four hand-built molecules")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--width", choices=sorted(WIDTHS), default="small")
    parser.add_argument("--loss", default="kabsch_mse", help="position loss spec (e.g. energy:exp, energy:inverse)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sampling-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (checkpoint, samples.npz); resumes when it exists")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_jodo_data("toy" if args.toy else "qm9", progress=False)
    load_seconds = time.perf_counter() - t0
    model_cfg = JodoConfig(**WIDTHS[args.width])
    cfg = JodoTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        position_loss=args.loss,
        checkpoint_every=0,
        log_every=max(args.steps // 10, 1),
        ema_decay=0.99,
    )
    run = train_jodo(data, model_cfg=model_cfg, cfg=cfg, out=args.out, device=args.device)
    save_to = None if args.out is None else f"{args.out}/samples.npz"
    metrics = evaluate_jodo(
        run["ema"],
        run["histogram"],
        num_samples=args.samples,
        batch_size=args.samples,
        steps=args.sampling_steps,
        save_to=save_to,
    )
    summary = {
        "data": "toy" if args.toy else "qm9-train-bonds",
        "molecules": len(data),
        "load_seconds": round(load_seconds, 1),
        "parameters": run["parameters"],
        "seconds_per_step": round(run["seconds_per_step"], 4),
        "settings": vars(args),
        "history": run["history"],
        "metrics": {k: metrics[k] for k in ("3d", "2d", "seconds", "sampling_seconds")},
    }
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
