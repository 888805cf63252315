"""The loss-speed targets of the fused-kernel work, measured interleaved in one process.

``python benchmarks/kernel_targets.py [--threads 2] [--repeats 15] [--quick] [--out FILE.json]``

Every case times forward + backward (float32) of several methods on the same inputs, round-robin: repeat ``r``
runs each method once before repeat ``r + 1`` starts, so slow drifts of a shared machine hit every method alike.
Medians are reported, with the ratios the targets are stated in. Methods:

- ``energy``: :func:`energyloss.pair_energy_loss` as a user calls it (exponential springs; the fused numba kernel);
- ``blocked``: the same loss forced onto the portable blocked PyTorch kernel (``chunk_size="auto"``: the kernel
  before the fused one, the reference);
- ``naive``: the authors' dense formulation, ``(B, N, N, D)`` differences, ``torch.norm``, autograd;
- ``mse``: :func:`energyloss.mse_loss`;
- ``sparse`` / ``sparse_torch``: the energy over a random ``2D``-regular graph, fused / PyTorch edge kernel;
- ``kabsch`` / ``kabsch_authors``: :func:`energyloss.kabsch_mse_loss` and a batched Kabsch written the way the
  authors' forks do it (centre both by their row means, SVD of the cross-covariance, flip, rotate, MSE);
- ``cutoff``: the energy with ``cutoff=`` (cell list of the target).

Also measured: the first call of a fresh process with an empty numba cache (compilation) and with the cache warm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import energyloss as el


def naive_energy(pred, target):
    n = pred.shape[1]
    d_pred = torch.norm(pred[:, :, None, :] - pred[:, None, :, :], dim=-1)
    d_target = torch.norm(target[:, :, None, :] - target[:, None, :, :], dim=-1)
    adjacency = 1.0 - torch.eye(n, dtype=pred.dtype)
    return (0.5 * adjacency * torch.exp(-d_target) * (d_target - d_pred) ** 2).sum((1, 2)).mean()


def kabsch_authors(pred, target):
    p = target - target.mean(1, keepdim=True)  # the detached target is rotated onto the detached prediction
    q = pred.detach() - pred.detach().mean(1, keepdim=True)
    u, _, vh = torch.linalg.svd(p.mT @ q)
    d = torch.sign(torch.linalg.det(vh.mT @ u.mT))
    vh = torch.cat([vh[:, :-1], vh[:, -1:] * d[:, None, None]], 1)
    rot = vh.mT @ u.mT
    return ((p @ rot.mT - pred) ** 2).mean()


def inputs(bsz, n, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = spread * torch.randn(bsz, n, 3, generator=g)
    pred = (target + 0.1 * torch.randn(bsz, n, 3, generator=g)).requires_grad_()
    mask = None
    if bsz > 1:  # QM9-like padded batch: sizes uniform in [n // 3, n]
        sizes = torch.randint(max(1, n // 3), n + 1, (bsz,), generator=g)
        mask = torch.arange(n)[None] < sizes[:, None]
    return pred, target, mask


def methods_for(case, pred, target, mask, n):
    exp = "exp"
    table = {
        "energy": lambda: el.pair_energy_loss(pred, target, mask=mask, coefficients=exp),
        "blocked": lambda: el.pair_energy_loss(pred, target, mask=mask, coefficients=exp, chunk_size="auto"),
        "naive": lambda: naive_energy(pred, target),
        "mse": lambda: el.mse_loss(pred, target, mask=mask),
        "kabsch": lambda: el.kabsch_mse_loss(pred, target, mask=mask),
        "kabsch_authors": lambda: kabsch_authors(pred, target),
    }
    if "sparse" in case["methods"] or "sparse_torch" in case["methods"]:
        edges = el.random_regular_graph(n, 6, generator=torch.Generator().manual_seed(0))
        scheme = el.ExponentialCoefficients()
        table["sparse"] = lambda: el.pair_energy_loss(pred, target, edges=edges, coefficients=exp)
        table["sparse_torch"] = lambda: el.pair_energy_loss(pred, target, edges=edges, coefficients=lambda d: scheme(d))
    if "cutoff" in case["methods"]:
        table["cutoff"] = lambda: el.pair_energy_loss(pred, target, coefficients=exp, cutoff=case["cutoff"])
    return {m: table[m] for m in case["methods"]}


def measure_spreads(case, repeats):
    """One method on structures of several spreads, interleaved: the spread's own cost, free of machine drift."""
    (method,) = case["methods"]
    fns = {}
    for spread in case["spreads"]:
        pred, target, mask = inputs(case["batch"], case["n"], spread)
        fns[f"{method} spread {spread:g}"] = (pred, methods_for(case, pred, target, mask, case["n"])[method])
    times = {k: [] for k in fns}
    for pred, fn in fns.values():
        pred.grad = None
        fn().backward()
    for _ in range(case.get("repeats", repeats)):
        for key, (pred, fn) in fns.items():
            pred.grad = None
            t0 = time.perf_counter()
            fn().backward()
            times[key].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def measure(case, repeats):
    if "spreads" in case:
        return measure_spreads(case, repeats)
    if "box" in case:  # uniform density (atoms per cubic length scale): a liquid-like structure
        n = case["n"]
        side = (n / case["box"]) ** (1 / 3)
        g = torch.Generator().manual_seed(0)
        target = side * torch.rand(1, n, 3, generator=g)
        pred = (target + 0.1 * torch.randn(1, n, 3, generator=g)).requires_grad_()
        mask = None
    else:
        pred, target, mask = inputs(case["batch"], case["n"], case.get("spread", 1.0))
    fns = methods_for(case, pred, target, mask, case["n"])
    times = {m: [] for m in fns}
    for fn in fns.values():  # warm-up (compilation, allocator)
        pred.grad = None
        fn().backward()
    reps = case.get("repeats", repeats)
    for _ in range(reps):
        for m, fn in fns.items():
            pred.grad = None
            t0 = time.perf_counter()
            fn().backward()
            times[m].append(time.perf_counter() - t0)
    return {m: 1000 * statistics.median(v) for m, v in times.items()}


def first_call_seconds() -> dict:
    code = (
        "import time, torch; t0 = time.perf_counter(); import energyloss as el; "
        "p = torch.randn(30, 3, requires_grad=True); el.pair_energy_loss(p, torch.randn(30, 3), coefficients='exp')"
        ".backward(); print(time.perf_counter() - t0)"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold cache (compiles)", "warm cache"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out[label] = float(res.stdout.strip().splitlines()[-1])
    return out


CASES = [
    {"name": "N = 30", "batch": 1, "n": 30, "methods": ["energy", "blocked", "naive", "mse"]},
    {"name": "256 x 29 padded", "batch": 256, "n": 29, "methods": ["energy", "blocked", "naive", "mse"]},
    {"name": "N = 300", "batch": 1, "n": 300, "methods": ["energy", "blocked", "naive", "mse"]},
    {"name": "N = 3,000", "batch": 1, "n": 3000, "methods": ["energy", "blocked", "naive", "mse"]},
    {"name": "N = 30,000", "batch": 1, "n": 30000, "methods": ["energy", "blocked", "mse"], "repeats": 3},
    {"name": "sparse N = 30,000", "batch": 1, "n": 30000, "methods": ["sparse", "sparse_torch", "mse"]},
    {
        "name": "N = 8,000 by spread",
        "batch": 1,
        "n": 8000,
        "spreads": [1.0, 12.0, 40.0],
        "methods": ["energy"],
        "repeats": 7,
    },
    {
        "name": "N = 8,000 by spread, blocked",
        "batch": 1,
        "n": 8000,
        "spreads": [1.0, 12.0, 40.0],
        "methods": ["blocked"],
        "repeats": 5,
    },
    {"name": "Kabsch N = 30", "batch": 1, "n": 30, "methods": ["kabsch", "kabsch_authors", "mse"]},
    {"name": "Kabsch 256 x 29", "batch": 256, "n": 29, "methods": ["kabsch", "kabsch_authors", "mse"]},
    {"name": "Kabsch N = 3,000", "batch": 1, "n": 3000, "methods": ["kabsch", "kabsch_authors", "mse"]},
    {"name": "Kabsch N = 30,000", "batch": 1, "n": 30000, "methods": ["kabsch", "kabsch_authors", "mse"]},
    {"name": "Kabsch N = 300,000", "batch": 1, "n": 300000, "methods": ["kabsch", "kabsch_authors", "mse"]},
    {
        "name": "cutoff 10, N = 300,000, density 0.1",
        "batch": 1,
        "n": 300000,
        "box": 0.1,
        "cutoff": 10.0,
        "methods": ["cutoff", "mse"],
        "repeats": 3,
    },
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "load_before": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "first_call_s": first_call_seconds(),
        "cases": {},
    }
    print(json.dumps({"first_call_s": results["first_call_s"]}), flush=True)
    cases = [c for c in CASES if c["n"] <= 300] if args.quick else CASES
    for case in cases:
        ms = measure(case, 3 if args.quick else args.repeats)
        results["cases"][case["name"]] = ms
        print(json.dumps({case["name"]: {k: round(v, 4) for k, v in ms.items()}}), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
