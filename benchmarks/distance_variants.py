"""Time the dense energy loss with each candidate distance routine of its blocked kernel (forward + backward).

(On CUDA the library normally runs the fused Triton kernel, which has no separate distance routine; this script
forces the blocked kernel with ``chunk_size="auto"``, whose blocks equal the automatic ones for these cases.)

The routine is chosen per device in :func:`energyloss.atomistic._block_distances`; this script measures the
candidates side by side in one process so the choice rests on numbers from one run:

- ``cdist``: ``torch.cdist`` difference kernel (the CPU choice);
- ``loop``: squared coordinate differences accumulated one coordinate at a time (one ``(I, J)`` buffer);
- ``norm``: ``torch.linalg.vector_norm`` of the broadcast ``(I, J, D)`` difference tensor (fewer kernel launches).

Usage: ``python benchmarks/distance_variants.py --device cuda`` (prints a Markdown table).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import energyloss.atomistic as atomistic
from energyloss import pair_energy_loss


def _norm(a, b):
    return torch.linalg.vector_norm(a[..., :, None, :] - b[..., None, :, :], dim=-1)


def _cdist(a, b):
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


VARIANTS = {"cdist": _cdist, "loop": atomistic._broadcast_distances, "norm": _norm}


def time_case(batch: int, n: int, device: str, repeats: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(batch, n, 3, generator=gen).to(device)
    pred = (target + 0.1 * torch.randn(batch, n, 3, generator=gen).to(device)).requires_grad_(True)
    out = {}
    for name, routine in VARIANTS.items():
        if name == "cdist" and device != "cpu" and n > 3000:
            continue  # tens of seconds on CUDA at this size: that slowness is why the variants exist
        atomistic._block_distances = routine
        times = []
        for i in range(repeats + 1):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            # chunk_size="auto": the blocked kernel (where the distance routine matters), never the fused one
            pair_energy_loss(pred, target, coefficients="exp", chunk_size="auto").backward()
            if device != "cpu":
                torch.cuda.synchronize()
            if i:
                times.append((time.perf_counter() - start) * 1000)
            pred.grad = None
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", nargs="+", default=["256x29", "1x3000", "1x30000"], help="BATCHxN")
    args = parser.parse_args()
    original = atomistic._block_distances
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"# dense energy (exp) forward + backward, median ms of {args.repeats}, {name}, torch {torch.__version__}\n")
    print("| case | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS))
    try:
        for case in args.cases:
            batch, n = (int(x) for x in case.split("x"))
            res = time_case(batch, n, args.device, args.repeats)
            print(f"| {case} | " + " | ".join(f"{res[v]:.3g}" if v in res else "–" for v in VARIANTS) + " |")
    finally:
        atomistic._block_distances = original


if __name__ == "__main__":
    main()
