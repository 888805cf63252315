r"""Flow matching with the energy loss (paper App. A.7): learn to generate regular pentagons from noise.

Flow matching interpolates ``x_t = (1 - t) x + t eps`` and regresses the velocity ``u = eps - x``. A velocity
prediction ``u_hat`` implies the clean sample ``x_hat = x_t - t u_hat``, and ``|u - u_hat|^2 = |x - x_hat|^2 / t^2``;
the energy objective replaces that squared error by the pair energy: ``E(x_hat, x) / t^2``
(``energyloss.diffusion.flow_matching_loss``). The data are regular pentagons of radius 1 with a uniformly random
orientation; the energy loss does not ask the model to reproduce any particular orientation.

Sampling integrates ``dx/dt = u_hat(x, t)`` from pure noise at ``t = 1`` down to ``t = 0`` with Euler steps.

Run: ``python examples/flow_matching.py`` (a few seconds on a CPU). It prints the loss during training and, for
generated samples, how far their sorted pair distances are from those of a regular pentagon, next to the same
number for the noise they started from.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import energyloss as el
from energyloss.diffusion import flow_matching_interpolate, flow_matching_loss

N = 5  # vertices
T_MIN = 0.05  # t ~ U[T_MIN, 1]: the 1/t^2 weight is infinite at t = 0


def pentagons(count: int, generator: torch.Generator) -> torch.Tensor:
    """Regular pentagons of radius 1, each rotated by a uniformly random angle: ``(B, N, 2)``."""
    angle = 2 * math.pi * (torch.arange(N) / N + torch.rand(count, 1, generator=generator))
    return torch.stack([angle.cos(), angle.sin()], -1)


class Velocity(nn.Module):
    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * N + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * N)
        )

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([xt.flatten(1), t[:, None]], 1)).view_as(xt)


@torch.no_grad()
def sample(model: Velocity, noise: torch.Tensor, steps: int = 50) -> torch.Tensor:
    x, dt = noise, 1.0 / steps
    for k in range(steps, 0, -1):
        x = x - dt * model(x, torch.full((len(x),), k * dt))
    return x


def distance_error(x: torch.Tensor) -> float:
    """Mean absolute difference of the sorted pair distances to those of the regular pentagon."""
    iu = torch.triu_indices(N, N, 1)
    ref = el.pairwise_distances(pentagons(1, torch.Generator().manual_seed(0)))[0][iu[0], iu[1]].sort().values
    d = el.pairwise_distances(x)[:, iu[0], iu[1]].sort(-1).values
    return float((d - ref).abs().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Velocity()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(1, args.steps + 1):
        x0 = pentagons(128, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = T_MIN + (1 - T_MIN) * torch.rand(128, generator=gen)
        xt = flow_matching_interpolate(x0, noise, t)
        loss = flow_matching_loss(el.pair_energy_loss, model(xt, t), xt, x0, t, coefficients="constant")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 200 == 0:
            print(f"step {step:4d}  energy flow-matching loss {loss.item():.4f}")

    noise = torch.randn(512, N, 2, generator=torch.Generator().manual_seed(1))
    result = {"noise": distance_error(noise), "samples": distance_error(sample(model, noise))}
    print(f"pair-distance error to a regular pentagon: noise {result['noise']:.3f}, samples {result['samples']:.3f}")
    assert result["samples"] < 0.25 * result["noise"]
    return result


if __name__ == "__main__":
    main()
