r"""Predict Ising spin-glass ground states with a CNN trained by the local-field free energy (paper §5, Eq. 15-16).

Each instance is a 4 x 4 lattice with open boundaries and couplings ``J`` uniform in [-1, 1], stored as
``couplings (B, 2, L, L)`` (channel 0: bonds to the right neighbour, channel 1: to the one below; the last
column / row are not bonds and are zero). The ground state of so small a lattice is found by enumerating all
2^16 configurations (checked with ``energyloss.spins.ising_energy``). A small ResNet-style CNN (the shape of
App. C.3's network, much smaller) maps the couplings to one logit per site.

Two losses train the same network, both made invariant to the global spin flip (a ground state is only defined
up to it) with ``flip_invariant_loss``:

- ``local_field_energy_loss``: the free energy of the local-field energy (Eq. 15-16), which weights each site
  by how much flipping it would cost in energy;
- ``spin_cross_entropy_loss``: per-site cross-entropy, every site equally.

Reported: the residual energy ``E(sign(logits)) - E(ground state)`` per site on held-out instances (0 means the
ground state was found), and the fraction of instances solved exactly. At this toy scale the two losses are
close; which one wins depends on the seed and the budget (the paper's comparison is Table 5, reproduced in
docs/results/spins.md). The example shows the API, not a benchmark.

Run: ``python examples/spins_cnn.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from energyloss.spins import (
    flip_invariant_loss,
    ising_energy,
    local_field_energy_loss,
    spin_cross_entropy_loss,
    spins_from_logits,
)

L = 4


def random_couplings(count: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, 2, L, L)`` couplings uniform in [-1, 1], zero on the non-bonds of open boundaries."""
    couplings = 2 * torch.rand(count, 2, L, L, generator=generator) - 1
    couplings[:, 0, :, -1] = 0
    couplings[:, 1, -1, :] = 0
    return couplings


def ground_states(couplings: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Exact ground states ``(B, L, L)`` by enumerating all 2^(L*L) configurations.

    The energy is linear in the bond products ``y_i y_j``, so the energies of all configurations for a chunk
    of instances are one matrix product; the result is checked against ``ising_energy``.
    """
    codes = torch.arange(2 ** (L * L))
    configs = ((codes[:, None] >> torch.arange(L * L)) & 1).float().mul(2).sub(1).view(-1, L, L)  # (2^16, L, L)
    right, down = torch.zeros_like(configs), torch.zeros_like(configs)
    right[:, :, :-1], down[:, :-1, :] = configs[:, :, 1:], configs[:, 1:, :]
    bonds = torch.stack([configs * right, configs * down], 1).flatten(1)  # (2^16, 2 L^2), laid out as couplings
    states, energies = [], []
    for j in couplings.split(chunk):
        e_min, best = (-bonds @ j.flatten(1).T).min(0)
        states.append(configs[best])
        energies.append(e_min)
    states = torch.cat(states)
    assert torch.allclose(ising_energy(states, couplings), torch.cat(energies), atol=1e-4)
    return states


class ResNet(nn.Module):
    """3x3 stem, pre-activation residual blocks (BatchNorm, ReLU, 3x3 conv), 1x1 head: one logit per site."""

    def __init__(self, channels: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))
            for _ in range(depth)
        )
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, couplings: torch.Tensor) -> torch.Tensor:
        x = self.stem(couplings)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x).squeeze(1)  # (B, L, L) logits: the losses refuse a (B, 1, L, L) channel dimension


def train(loss_name: str, couplings, targets, steps: int, seed: int) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(len(couplings), (64,), generator=gen)
        j, y = couplings[idx], targets[idx]
        logits = model(j)
        if loss_name == "local-field energy":
            # temperature and h0 as in the paper's spin experiment (App. C.3)
            loss = flip_invariant_loss(local_field_energy_loss, logits, y, j, h0=5.0, temperature=0.1)
        else:
            loss = flip_invariant_loss(spin_cross_entropy_loss, logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % (steps // 2) == 0:
            print(f"  {loss_name:18s} step {step:4d}  loss {loss.item():.4f}")
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    couplings = random_couplings(1152, gen)
    targets = ground_states(couplings)
    train_j, train_y, test_j, test_y = couplings[:1024], targets[:1024], couplings[1024:], targets[1024:]
    e_ground = ising_energy(test_y, test_j)

    result = {}
    random_spins = torch.where(torch.rand(test_y.shape, generator=gen) < 0.5, -1.0, 1.0)
    baseline = float((ising_energy(random_spins, test_j) - e_ground).mean()) / L**2
    print(f"random spins: residual energy per site {baseline:.3f}")
    for name in ("local-field energy", "cross-entropy"):
        model = train(name, train_j, train_y, args.steps, seed=1)
        with torch.no_grad():
            residual = ising_energy(spins_from_logits(model(test_j)), test_j) - e_ground
        result[name] = float(residual.mean()) / L**2
        solved = float((residual < 1e-5).float().mean())
        print(f"{name:18s}: residual energy per site {result[name]:.3f}, ground state found for {solved:.0%}")
        assert -1e-5 <= result[name] < 0.5 * baseline
    return result


if __name__ == "__main__":
    main()
