"""Denoise point clouds given as a PyG-style ragged batch, trained with the pair energy loss (Eq. 7).

PyTorch Geometric stores a mini-batch of structures of different sizes as one ``(M, D)`` tensor of rows and a
``batch`` vector ``(M,)`` giving the structure of each row. The energy loss takes that layout as is:
``pair_energy_loss(pred, target, batch=batch)``. When ``torch_geometric`` is installed the batch is built with
``torch_geometric.data.Batch.from_data_list``; otherwise ``collate`` below builds the same ``pos`` / ``batch``
tensors by hand, so the script runs without PyG.

The task: the input is a noised copy of each structure, *randomly rotated*; the model must return the clean
structure. The pair energy compares distances only, so the unknown rotation costs nothing and no alignment is
needed; an MSE against the unrotated target would have to guess the rotation. The model is a small EGNN
(E(n)-equivariant coordinate updates from pair distances, Satorras et al. 2021) over the complete graph of each
structure.

Run: ``python examples/pyg_batch.py`` (a few seconds on a CPU). It prints the loss during training and, on
held-out structures, the Kabsch-aligned RMSD of the input and of the prediction to the clean structure.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import energyloss as el
from energyloss.testing import random_rotation

try:  # optional: the real PyG batch, if installed
    from torch_geometric.data import Batch, Data
except ImportError:
    Batch = Data = None


def make_structures(count: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Random 3-D "molecules" of 5 to 12 atoms with 4 atom types, atoms about 1.5 apart."""
    structures = []
    for _ in range(count):
        n = int(torch.randint(5, 13, (1,), generator=generator))
        steps = torch.randn(n, 3, generator=generator)
        pos = 1.5 * torch.cumsum(steps / steps.norm(dim=-1, keepdim=True), 0)  # a random walk with unit steps
        structures.append({"pos": pos - pos.mean(0), "z": torch.randint(0, 4, (n,), generator=generator)})
    return structures


def collate(structures: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pos (M, 3), z (M,), batch (M,))`` in PyG's layout: rows concatenated, ``batch[i]`` = structure of row i."""
    if Batch is not None:
        data = Batch.from_data_list([Data(pos=s["pos"], z=s["z"]) for s in structures])
        return data.pos, data.z, data.batch
    pos = torch.cat([s["pos"] for s in structures])
    z = torch.cat([s["z"] for s in structures])
    batch = torch.cat([torch.full((len(s["z"]),), i, dtype=torch.long) for i, s in enumerate(structures)])
    return pos, z, batch


def complete_edges(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs ``(src, dst)`` of distinct rows of the same structure (PyG's ``edge_index`` rows)."""
    same = batch[:, None] == batch[None, :]
    same.fill_diagonal_(False)
    src, dst = same.nonzero(as_tuple=True)
    return src, dst


class EGNNLayer(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h, x, src, dst):
        rel = x[src] - x[dst]
        m = self.message(torch.cat([h[src], h[dst], rel.square().sum(-1, keepdim=True)], -1))
        degree = torch.zeros(len(x), 1).index_add_(0, src, torch.ones(len(src), 1)).clamp_min(1)
        x = x + torch.zeros_like(x).index_add_(0, src, rel * self.coord(m)) / degree
        h = h + self.update(torch.cat([h, torch.zeros_like(h).index_add_(0, src, m)], -1))
        return h, x


class Denoiser(nn.Module):
    def __init__(self, hidden: int = 32, layers: int = 3, types: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(types, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden) for _ in range(layers))

    def forward(self, pos, z, batch):
        src, dst = complete_edges(batch)
        h, x = self.embed(z), pos
        for layer in self.layers:
            h, x = layer(h, x, src, dst)
        return x


def noisy_rotated(pos: torch.Tensor, batch: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Each structure noised, then rotated by its own random rotation."""
    rotations = torch.stack(
        [random_rotation(3, generator=generator, dtype=pos.dtype) for _ in range(int(batch.max()) + 1)]
    )
    noisy = pos + noise * torch.randn(pos.shape, generator=generator)
    return torch.einsum("mij,mj->mi", rotations[batch], noisy)


def aligned_rmsd(pred, target, batch) -> float:
    """Mean over structures of the RMSD after the best rotation + translation (Kabsch)."""
    per = el.kabsch_mse_loss(pred, target, batch=batch, reduction="none")  # mean over atoms and coordinates
    return float((3 * per).sqrt().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.5)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train, test = make_structures(512, gen), make_structures(64, gen)
    model = Denoiser()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = el.nn.PairEnergyLoss(coefficients="exp", normalize="atoms")
    print(f"PyG batches: {'torch_geometric' if Batch is not None else 'plain tensors (torch_geometric not installed)'}")

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(train), (args.batch_size,), generator=gen).tolist()
        pos, z, batch = collate([train[i] for i in idx])
        pred = model(noisy_rotated(pos, batch, args.noise, gen), z, batch)
        loss = loss_fn(pred, pos, batch=batch)  # ragged layout: rows + batch vector
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  energy loss {loss.item():.4f}")

    pos, z, batch = collate(test)
    with torch.no_grad():
        noisy = noisy_rotated(pos, batch, args.noise, torch.Generator().manual_seed(1))
        pred = model(noisy, z, batch)
    result = {"input_rmsd": aligned_rmsd(noisy, pos, batch), "prediction_rmsd": aligned_rmsd(pred, pos, batch)}
    print(f"held out: aligned RMSD input {result['input_rmsd']:.3f} -> prediction {result['prediction_rmsd']:.3f}")
    assert math.isfinite(result["prediction_rmsd"]) and result["prediction_rmsd"] < result["input_rmsd"]
    return result


if __name__ == "__main__":
    main()
