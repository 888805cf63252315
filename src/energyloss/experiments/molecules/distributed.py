"""torch.distributed helpers of the molecule trainer (torchrun: gloo on CPUs, NCCL on GPUs; rank-0 I/O)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = ["all_reduce_sum", "destroy", "dist", "maybe_init_distributed", "rank_world", "resolve_device"]


def dist():
    """``torch.distributed`` when a process group is initialised, else ``None``."""
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    d = dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def maybe_init_distributed(device: str) -> bool:
    """Initialise torch.distributed from torchrun's environment (``WORLD_SIZE > 1``); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist() is not None:
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def destroy() -> None:
    """End the process group if one is running."""
    d = dist()
    if d is not None:
        d.destroy_process_group()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is available, else the CPU; ``"cuda"`` -> ``cuda:LOCAL_RANK``."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device in ("cuda", "auto"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` over ranks (float64); the values themselves without a process group."""
    d = dist()
    if d is None:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    d.all_reduce(t, op=d.ReduceOp.SUM)
    return t.tolist()
