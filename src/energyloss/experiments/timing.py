"""Loss wall time and peak memory versus the number of atoms (paper Tables 10-11), and beyond.

For each N, each loss is timed forward + backward on one structure ``(1, N, D)`` (and on a padded batch of
QM9-sized molecules): the median over repeats after a warm-up call. Methods:

- ``mse``, ``kabsch_mse``: the library's baselines;
- ``energy``: :func:`energyloss.pair_energy_loss` over all pairs (exponential coefficients) with its automatic
  choice of kernel: the fused numba kernel on the CPU, the fused Triton kernel on CUDA where Triton is installed,
  else the blocked PyTorch kernel;
- ``energy_blocked``: the same loss forced onto the blocked PyTorch kernel (``chunk_size="auto"``);
- ``sparse_energy``: the same loss over a random ``2D``-regular graph (:func:`energyloss.rigidity.random_regular_graph`,
  generated before timing, as the paper pre-generates its graphs);
- ``naive_energy``: an in-benchmark reference written the way the authors' code does it: ``(B, N, N, D)`` difference
  tensors, ``torch.norm``, a dense adjacency mask, autograd.

On the CPU every cell runs in a fresh subprocess and its peak memory is the growth of the process's peak resident set
(``VmHWM``, reset before the cell) over its resident set before the cell. On CUDA it is
``torch.cuda.max_memory_allocated`` over the memory allocated before the cell. A cell that would exceed the memory
limit, or whose predicted time exceeds ``--max-cell-seconds``, is skipped and marked so.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import torch

from energyloss.experiments.runs import (
    log,
    machine_info,
    markdown_table,
    open_run_folder,
    progress,
    write_csv,
    write_json,
    write_summary,
)

__all__ = [
    "CONFIG",
    "DESCRIPTION",
    "METHODS",
    "OPTION_HELP",
    "PRESETS",
    "Config",
    "measure_cell",
    "naive_energy",
    "run_config",
    "run_grid",
    "tables",
]

DESCRIPTION = "Loss wall time and peak memory versus N (Tables 10-11): MSE, Kabsch, dense/sparse energy, naive dense"

#: The benchmark's methods. ``mse``, ``kabsch_mse``, ``energy`` and ``sparse_energy`` are losses of the vocabulary
#: (:data:`energyloss.experiments.losses.POSITION_LOSSES`) but are timed through the public API calls of
#: :func:`_loss_fn`, not :func:`~energyloss.experiments.losses.make_position_loss`: that returns per-structure values
#: (``reduction="none"``, then a mean to differentiate), normalises the energies per pair, draws a sparse graph per
#: structure and call, and cannot force the blocked kernel, so it would time something else.
METHODS = ("mse", "kabsch_mse", "energy", "energy_blocked", "sparse_energy", "naive_energy")
#: Measured unless ``--methods`` says otherwise (``energy_blocked`` is the portable kernel the fused ones replace).
DEFAULT_METHODS = ("mse", "kabsch_mse", "energy", "energy_blocked", "sparse_energy", "naive_energy")
QUADRATIC = {"energy", "energy_blocked", "naive_energy"}


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (30, 300, 3000, 30000, 300000)
    methods: tuple[str, ...] = DEFAULT_METHODS
    dim: int = 3
    repeats: int = 5
    qm9_batch: int = 256
    qm9_atoms: int = 29
    device: str = "cpu"
    threads: int = 0
    max_cell_seconds: float = 120.0
    memory_limit_gb: float = 0.0
    seed: int = 0
    in_process: bool = False

    def validate(self) -> Config:
        """Raise ``ValueError`` naming the first bad option (as its flag); return ``self``."""
        if not self.sizes:
            raise ValueError("--sizes: give at least one number of atoms")
        if any(n < 1 for n in self.sizes):
            raise ValueError(f"--sizes: every N must be a positive integer, got {','.join(map(str, self.sizes))}")
        if not self.methods:
            raise ValueError("--methods: give at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods: a method is given twice in {','.join(self.methods)}")
        for name in ("dim", "repeats", "qm9_atoms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)}: must be a positive integer, got {getattr(self, name)}")
        for name in ("qm9_batch", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)}: must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.max_cell_seconds) and self.max_cell_seconds > 0):
            raise ValueError(f"--max-cell-seconds: must be a positive number, got {self.max_cell_seconds:g}")
        if not (math.isfinite(self.memory_limit_gb) and self.memory_limit_gb >= 0):
            raise ValueError(f"--memory-limit-gb: must be >= 0 (0: 60% of RAM), got {self.memory_limit_gb:g}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"--device: not a torch device (or auto): {self.device!r}") from None
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


CONFIG = Config

PRESETS = {
    "smoke": Config(sizes=(30, 300), repeats=2, qm9_batch=8, max_cell_seconds=10.0),
    "default": Config(),
    "paper": Config(repeats=20),
}

OPTION_HELP: dict[str, str] = {
    "sizes": "numbers of atoms N",
    "methods": "what to time, from " + ", ".join(METHODS),
    "dim": "spatial dimension D",
    "repeats": "timed calls per cell (median reported)",
    "qm9_batch": "batch size of the QM9-sized padded row (0: skip it)",
    "qm9_atoms": "atoms of the largest molecule of the QM9-sized row",
    "device": "cpu, cuda or auto",
    "threads": "torch CPU threads (0: torch's default)",
    "max_cell_seconds": "skip cells predicted to take longer",
    "memory_limit_gb": "skip cells above this (0: 60%% of RAM, or 80%% of the GPU's)",
    "seed": "seed of the random structures",
    "in_process": "CPU: no subprocess per cell (less isolated memory)",
}


# ----------------------------------------------------------------------------------------------------------------
# one cell


def naive_energy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' dense formulation: (B, N, N, D) differences, torch.norm, dense adjacency, ordered pairs."""
    n = pred.shape[1]
    d_pred = torch.norm(pred[:, :, None, :] - pred[:, None, :, :], dim=-1)
    d_target = torch.norm(target[:, :, None, :] - target[:, None, :, :], dim=-1)
    adjacency = 1.0 - torch.eye(n, device=pred.device, dtype=pred.dtype)
    k = torch.exp(-d_target)
    return (0.5 * adjacency * k * (d_target - d_pred) ** 2).sum((1, 2)).mean()


def _loss_fn(method: str, n: int, dim: int, device, generator):
    import energyloss as el
    from energyloss.rigidity import random_regular_graph

    if method == "mse":
        return lambda p, t, m: el.mse_loss(p, t, mask=m)
    if method == "kabsch_mse":
        return lambda p, t, m: el.kabsch_mse_loss(p, t, mask=m)
    if method == "energy":
        return lambda p, t, m: el.pair_energy_loss(p, t, mask=m, coefficients="exp")
    if method == "energy_blocked":  # the portable blocked PyTorch kernel, also where the fused one would apply
        return lambda p, t, m: el.pair_energy_loss(p, t, mask=m, coefficients="exp", chunk_size="auto")
    if method == "sparse_energy":
        edges = random_regular_graph(n, min(2 * dim, n - 1), generator=generator).to(device)
        return lambda p, t, m: el.pair_energy_loss(p, t, mask=m, edges=edges, coefficients="exp")
    if method == "naive_energy":
        return lambda p, t, m: naive_energy(p, t)
    raise ValueError(f"unknown method {method!r}")


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def measure_cell(method: str, n: int, batch: int, dim: int, repeats: int, device: str, seed: int) -> dict:
    """Time one (method, N, batch) cell in this process; return milliseconds and peak extra memory (MB)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, n, dim, generator=g)
    pred = target + 0.1 * torch.randn(batch, n, dim, generator=g)
    mask = None
    if batch > 1:  # QM9-like padded batch: sizes uniform in [n // 3, n]
        sizes = torch.randint(max(1, n // 3), n + 1, (batch,), generator=g)
        mask = torch.arange(n).unsqueeze(0) < sizes.unsqueeze(1)
        mask = mask.to(dev)
    target, pred = target.to(dev), pred.to(dev).requires_grad_(True)
    fn = _loss_fn(method, n, dim, dev, g)

    def call():
        pred.grad = None
        fn(pred, target, mask).backward()

    cuda = dev.type == "cuda"
    call()  # warm-up (and CUDA context / kernel loading)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak resident set (VmHWM)
        except OSError:
            pass
        base = _rss_kb("VmRSS") * 1024
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM") * 1024
    times.sort()
    return {
        "method": method,
        "n": n,
        "batch": batch,
        "ms": 1000 * times[len(times) // 2],
        "ms_min": 1000 * times[0],
        "peak_extra_mb": max(0, peak - base) / 2**20,
    }


# ----------------------------------------------------------------------------------------------------------------
# the grid


def _estimated_bytes(method: str, n: int, batch: int, dim: int) -> float:
    if method == "naive_energy":  # diffs of pred and target, their grads, norms, k, adjacency
        return batch * n * n * (4 * dim + 8) * 4.0
    return batch * n * dim * 4.0 * 40 + (2**16 * 4 * 16 if method == "energy" else 0)


def _memory_limit(cfg: Config) -> float:
    if cfg.memory_limit_gb > 0:
        return cfg.memory_limit_gb * 2**30
    if cfg.device.startswith("cuda"):
        return 0.8 * torch.cuda.get_device_properties(0).total_memory
    return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _run_cell(cfg: Config, method: str, n: int, batch: int) -> dict:
    if cfg.device.startswith("cuda") or cfg.in_process:
        return measure_cell(method, n, batch, cfg.dim, cfg.repeats, cfg.device, cfg.seed)
    cell = json.dumps(dict(method=method, n=n, batch=batch, dim=cfg.dim, repeats=cfg.repeats, seed=cfg.seed))
    code = (
        "import json, sys, torch; from energyloss.experiments import timing as T; "
        f"torch.set_num_threads({cfg.threads}) if {cfg.threads} > 0 else None; "
        "c = json.loads(sys.argv[1]); "
        "print(json.dumps(T.measure_cell(c['method'], c['n'], c['batch'], c['dim'], c['repeats'], 'cpu', c['seed'])))"
    )
    out = subprocess.run([sys.executable, "-c", code, cell], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"timing cell {method} N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_grid(cfg: Config, *, show_progress: bool = True) -> list[dict]:
    """Measure (or skip) every cell of ``cfg``: the rows ``sizes`` (one structure) and the padded QM9-sized one."""
    limit = _memory_limit(cfg)
    records: list[dict] = []
    last: dict[str, tuple[int, float]] = {}
    rows = [(n, 1) for n in cfg.sizes] + ([(cfg.qm9_atoms, cfg.qm9_batch)] if cfg.qm9_batch > 0 else [])
    cells = [(m, n, b) for n, b in rows for m in cfg.methods]
    for method, n, batch in progress(cells, desc="timing cells", disable=not show_progress):
        rec = {"method": method, "n": n, "batch": batch, "ms": None, "ms_min": None, "peak_extra_mb": None}
        if _estimated_bytes(method, n, batch, cfg.dim) > limit:
            rec["skipped"] = "memory"
        elif method in last and batch == 1 and last[method][1] > 20.0:  # extrapolate from the scaling regime only
            n_prev, ms_prev = last[method]
            power = 2 if method in QUADRATIC else 1
            predicted = ms_prev * (n / n_prev) ** power * (cfg.repeats + 1) / 1000
            if predicted > cfg.max_cell_seconds:
                rec["skipped"] = f"time (predicted {predicted:.0f} s)"
        if "skipped" not in rec:
            rec.update(_run_cell(cfg, method, n, batch))
            if batch == 1:
                last[method] = (n, rec["ms"])
        records.append(rec)
    return records


def tables(records: list[dict]) -> str:
    """Markdown tables: median ms and peak extra MB per (N, method), with the naive / ours ratio."""
    by = {(r["method"], r["n"], r["batch"]): r for r in records}
    keys = sorted({(r["n"], r["batch"]) for r in records}, key=lambda k: (k[1] > 1, k[0]))
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]

    def cell(m, n, b, key):
        r = by.get((m, n, b))
        if r is None:
            return None
        if r.get("skipped"):
            return f"skipped ({r['skipped']})"
        return round(r[key], 3 if key == "ms" else 1)

    out = []
    for key, title in (("ms", "Forward + backward, median milliseconds"), ("peak_extra_mb", "Peak extra memory, MB")):
        rows = []
        for n, b in keys:
            row = {"N": f"{n}" if b == 1 else f"{b} x {n} (padded)"}
            for m in methods:
                row[m] = cell(m, n, b, key)
            if key == "ms":
                ours, naive = by.get(("energy", n, b)), by.get(("naive_energy", n, b))
                if ours and naive and ours.get("ms") and naive.get("ms"):
                    row["naive / energy"] = float(f"{naive['ms'] / ours['ms']:.2g}")
            rows.append(row)
        cols = ["N", *methods] + (["naive / energy"] if key == "ms" else [])
        out.append(f"**{title}**\n\n" + markdown_table(rows, cols))
    return "\n\n".join(out)


def run_config(cfg: Config, *, out: str | None, preset: str) -> int:
    """Measure the grid of ``cfg`` into the run folder ``out``.

    Measurements are never resumed: a rerun in the same folder measures every cell again (timings of different
    sessions would not be comparable) and replaces the tables.
    """
    if cfg.device == "auto":
        cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = open_run_folder(out, "timing", cfg, preset=preset)
    log(f"timing: preset {preset!r}, run folder {run_dir}")
    info = machine_info()
    records = run_grid(cfg)
    write_csv(run_dir / "records.csv", records)
    write_json(run_dir / "metrics.json", {"records": records, "machine": info})
    device = info.get("gpu", "CPU") if cfg.device.startswith("cuda") else f"CPU ({info['cpu_count']} cores)"
    header = (
        f"# Loss timing ({device}, D = {cfg.dim}, {cfg.repeats} repeats, torch {info['torch']}, {info['date']})\n\n"
    )
    write_summary(run_dir, header + tables(records))
    return 0
