"""A LightningModule-shaped model trained with ``energyloss.nn.PairEnergyLoss`` on padded batches with a mask.

The model generates a regular polygon from its number of vertices and radius (the paper's §6.1 set-up, in
miniature). Every training target is randomly rotated, so the orientation is pure noise: the pair energy loss
ignores it and the model learns the shape, while an MSE would pull every vertex towards the average over
rotations, i.e. the centre. Polygons of 3 to 8 vertices share one padded batch ``(B, 8, 2)`` with a ``mask``
``(B, 8)`` marking the real vertices.

About Lightning: the class below has the LightningModule interface (``training_step``, ``configure_optimizers``).
When ``lightning`` is importable it *is* a ``lightning.LightningModule`` and is trained by ``lightning.Trainer``;
otherwise it is a plain ``torch.nn.Module`` and the short loop in ``fit`` below does what the Trainer would do
here (zero_grad, backward, step per batch). The test suite runs the second path, since Lightning is not one of
our dependencies; the first is the same code, but we do not test it.

Run: ``python examples/lightning_module.py`` (a few seconds on a CPU). It prints the training loss and, for
fresh polygons, the mean and largest error of the predicted pair distances.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import energyloss as el

try:
    import lightning as L
except ImportError:
    L = None

MAX_VERTICES = 8
_Base = L.LightningModule if L is not None else nn.Module


def polygons(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomly rotated regular polygons: features ``(B, N, 3)``, positions ``(B, N, 2)``, mask ``(B, N)``."""
    n = torch.randint(3, MAX_VERTICES + 1, (count,), generator=generator)
    radius = 0.5 + torch.rand(count, generator=generator)
    k = torch.arange(MAX_VERTICES).expand(count, -1)
    mask = k < n[:, None]
    angle = 2 * math.pi * k / n[:, None] + 2 * math.pi * torch.rand(count, 1, generator=generator)
    pos = radius[:, None, None] * torch.stack([angle.cos(), angle.sin()], -1) * mask[..., None]
    # what the model sees per vertex: its index k / n, the size 1 / n and the radius; never the orientation
    features = torch.stack(
        [k / n[:, None], (1 / n[:, None]).expand(-1, MAX_VERTICES), radius[:, None].expand_as(k)], -1
    )
    return features * mask[..., None], pos, mask


class PolygonGenerator(_Base):
    def __init__(self, hidden: int = 128, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2)
        )
        # options are checked here, when the module is built: a typo such as reduction="avg" fails now
        self.loss = el.nn.PairEnergyLoss(coefficients="exp", normalize="atoms")
        self.lr = lr

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        features, pos, mask = batch
        loss = self.loss(self(features), pos, mask=mask)  # padded vertices are ignored
        if L is not None:
            self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(module: PolygonGenerator, loader, epochs: int) -> None:
    if L is not None:
        trainer = L.Trainer(
            max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
        )
        trainer.fit(module, loader)
        return
    opt = module.configure_optimizers()
    for epoch in range(epochs):
        for batch_idx, batch in enumerate(loader):
            loss = module.training_step(batch, batch_idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1:2d}  energy loss {loss.item():.5f}")


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(*polygons(2048, gen))
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=gen)
    module = PolygonGenerator()
    print(f"trainer: {'lightning.Trainer' if L is not None else 'plain loop (lightning not installed)'}")
    fit(module, loader, args.epochs)

    features, pos, mask = polygons(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = module(features)
    pair = mask[:, :, None] & mask[:, None, :]
    error = (el.pairwise_distances(pred) - el.pairwise_distances(pos)).abs()[pair]
    print(f"fresh polygons: pair-distance error mean {error.mean():.3f}, max {error.max():.3f} (radii 0.5 to 1.5)")
    assert error.mean() < 0.1
    return float(error.mean())


if __name__ == "__main__":
    main()
