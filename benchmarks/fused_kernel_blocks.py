"""Time the fused Triton pair-energy kernel (value + gradient) for several block shapes, on CUDA.

Usage: ``python benchmarks/fused_kernel_blocks.py`` (prints a Markdown table of median ms per case and shape).
The library's defaults are ``energyloss._triton_kernels.BLOCK_I, BLOCK_J, NUM_WARPS``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from energyloss import _triton_kernels as K
from energyloss.coefficients import ExponentialCoefficients

SHAPES = [(32, 64, 4), (64, 64, 4), (64, 64, 8), (128, 64, 8), (64, 128, 8), (128, 128, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["256x29", "512x27", "1x3000", "1x30000", "1x300000"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    coeff = ExponentialCoefficients()
    print(f"# fused kernel, exp coefficients, float32, median ms of {args.repeats}, {torch.cuda.get_device_name(0)}\n")
    print("| case | " + " | ".join(f"{bi}x{bj}, {w} warps" for bi, bj, w in SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for case in args.cases:
        batch, n = (int(x) for x in case.split("x"))
        gen = torch.Generator().manual_seed(0)
        target = torch.randn(batch, n, 3, generator=gen).cuda()
        pred = target + 0.1 * torch.randn(batch, n, 3, generator=gen).cuda()
        mask = None
        if batch > 1:
            sizes = torch.randint(max(1, n // 3), n + 1, (batch,), generator=gen)
            mask = (torch.arange(n)[None] < sizes[:, None]).cuda()
        cells = []
        for bi, bj, w in SHAPES:
            times = []
            for i in range(args.repeats + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                K.pair_energy_and_grad(pred, target, mask, coeff, True, block_i=bi, block_j=bj, num_warps=w)
                torch.cuda.synchronize()
                if i:
                    times.append(1000 * (time.perf_counter() - t0))
            cells.append(f"{statistics.median(times):.3g}")
        print(f"| {case} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
