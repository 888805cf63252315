r"""The loss's share of one QM9 diffusion training step (paper Table 10).

For one padded batch of QM9 training molecules, :func:`step_breakdown` times, each as the median of
``repeats`` runs after warm-up (with ``torch.cuda.synchronize`` around GPU work):

- ``forward``: the denoiser's forward pass on the noisy batch;
- ``loss[<name>]``: the positional loss alone, from the network's output (forward only: what the paper's
  "Loss computation" row measures), for MSE, MAE, Kabsch-aligned MSE, the energy (exp coefficients) and the
  sparse energy. The sparse loss is timed with its edges given, as the authors' data loader supplies them;
  ``edges[sparse]`` is the separate cost of drawing one pool graph per molecule on the CPU
  (:func:`~energyloss.experiments.losses.draw_pool_edges`, what the trainer does each step) and
  ``edges[batch_edges]`` that of :meth:`energyloss.rigidity.RigidGraphPool.batch_edges` (a Python loop over the
  molecules);
- ``loss_backward[<name>]``: the loss's own backward to the network output (not in the paper's table);
- ``backward``: the backward pass of the whole training loss through the network;
- ``optimizer``: one Adam step.

Run it as ``python -m energyloss.experiments.molecules.step_timing [--device cuda] [--batch-size 512]
[--model gdm] [--nf 256 --layers 9] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from energyloss.alignment import kabsch_mse_loss
from energyloss.atomistic import pair_energy_loss
from energyloss.diffusion import diffusion_sample_loss
from energyloss.rigidity import RigidGraphPool

from ..losses import draw_pool_edges
from .diffusion_model import MoleculeDiffusion, make_coefficients
from .models import build_dynamics, count_parameters

__all__ = ["step_breakdown"]


def _timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """``(milliseconds, fn(*args))``, synchronising the GPU before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    value = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - t0), value


def step_breakdown(
    batch: dict[str, torch.Tensor],
    *,
    model: str = "gdm",
    hidden_nf: int = 256,
    n_layers: int = 9,
    device: str | torch.device = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Median milliseconds of each part of a training step on ``batch`` (keys as in the module docstring).

    ``batch``: a padded batch with ``positions (B, N, 3)``, ``one_hot (B, N, 5)``, ``charges (B, N)``,
    ``mask (B, N)`` (see :func:`~.data.batch_padded`).

    Example:
        >>> from energyloss.experiments.molecules.train import synthetic_molecules
        >>> from energyloss.experiments.molecules.data import batch_padded
        >>> b = batch_padded(synthetic_molecules(4), elements=(1, 6, 7, 8, 9))
        >>> r = step_breakdown(b, hidden_nf=8, n_layers=1, repeats=1, warmup=0)
        >>> sorted(k for k in r["ms"] if k.startswith("loss["))
        ['loss[energy]', 'loss[kabsch_mse]', 'loss[mae]', 'loss[mse]', 'loss[sparse_energy]']
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    dyn = build_dynamics(model, 6, hidden_nf=hidden_nf, n_layers=n_layers)
    diff = MoleculeDiffusion(dyn, n_types=5, position_loss="mse").to(device)
    opt = torch.optim.Adam(diff.parameters(), lr=1e-4)
    pos, oh, ch, mask = (batch[k].to(device) for k in ("positions", "one_hot", "charges", "mask"))
    bsz, n = mask.shape
    noise = diff.draw_noise(bsz, n, generator=torch.Generator().manual_seed(seed))
    x, h = diff.encode(pos, oh, ch, mask)
    t = noise["t"].to(device)
    alpha, sigma = diff.schedule.alpha(t).float(), diff.schedule.sigma(t).float()
    from energyloss.geometry import center

    eps = noise["eps"].to(device)
    eps_x = center(eps[..., :3], mask=mask)
    z_x = alpha[:, None, None] * x + sigma[:, None, None] * eps_x
    z_h = alpha[:, None, None] * h + sigma[:, None, None] * torch.where(mask[..., None], eps[..., 3:], 0.0)
    tt = t.float() / diff.steps
    coeff = make_coefficients("exp")
    pool = RigidGraphPool(3, size=100, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    edges = pool.batch_edges(mask.cpu(), generator=gen).to(device)  # builds the pools of the sizes present
    denom = 9 * mask.sum(-1).float()

    losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mse": lambda p: (torch.where(mask[..., None], (p - eps_x).square(), 0.0).sum((1, 2)) / denom).mean(),
        "mae": lambda p: (torch.where(mask[..., None], (p - eps_x).abs(), 0.0).sum((1, 2)) / denom).mean(),
        "kabsch_mse": lambda p: diffusion_sample_loss(kabsch_mse_loss, p, z_x, x, alpha, sigma, mask=mask),
        "energy": lambda p: diffusion_sample_loss(
            pair_energy_loss, p, z_x, x, alpha, sigma, mask=mask, coefficients=coeff, normalize="atoms"
        ),
        "sparse_energy": lambda p: diffusion_sample_loss(
            pair_energy_loss, p, z_x, x, alpha, sigma, mask=mask, edges=edges, coefficients=coeff, normalize="atoms"
        ),
    }
    samples: dict[str, list[float]] = {}

    def record(key: str, ms: float, i: int) -> None:
        if i >= warmup:
            samples.setdefault(key, []).append(ms)

    for i in range(warmup + repeats):
        ms, (pred_x, pred_h) = _timed(device, dyn, z_x, z_h, tt, mask)
        record("forward", ms, i)
        values = {}
        for name, fn in losses.items():
            ms, values[name] = _timed(device, fn, pred_x)
            record(f"loss[{name}]", ms, i)
            leaf = pred_x.detach().requires_grad_(True)
            ms, _ = _timed(device, torch.Tensor.backward, fn(leaf))
            record(f"loss_backward[{name}]", ms, i)
        ms, _ = _timed(device, lambda: draw_pool_edges(pool, mask.sum(-1), generator=gen).to(device))
        record("edges[sparse]", ms, i)
        ms, _ = _timed(device, pool.batch_edges, mask.cpu())
        record("edges[batch_edges]", ms, i)
        total = values["energy"] + (pred_h - eps[..., 3:]).square().mean()
        opt.zero_grad(set_to_none=True)
        ms, _ = _timed(device, total.backward)
        record("backward", ms, i)
        ms, _ = _timed(device, opt.step)
        record("optimizer", ms, i)
    ms = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: (max(v) - min(v)) / 2 for k, v in samples.items()}
    step = ms["forward"] + ms["backward"] + ms["optimizer"]
    return {
        "ms": ms,
        "half_range_ms": spread,
        "loss_share_of_step": {k[5:-1]: ms[k] / (step + ms[k]) for k in ms if k.startswith("loss[")},
        "batch_size": bsz,
        "padded_atoms": n,
        "model": model,
        "hidden_nf": hidden_nf,
        "n_layers": n_layers,
        "parameters": count_parameters(dyn),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--model", default="gdm")
    parser.add_argument("--nf", type=int, default=256)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    from .qm9 import qm9_dataset

    ds = qm9_dataset("train", cache_dir=args.cache_dir)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[: args.batch_size]
    result = step_breakdown(
        ds.get_batch(idx),
        model=args.model,
        hidden_nf=args.nf,
        n_layers=args.layers,
        device=args.device,
        repeats=args.repeats,
        seed=args.seed,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
