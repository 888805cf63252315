"""ResNet-style CNN mapping lattice couplings to one spin logit per site (paper App. C.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SpinResNet", "coupling_features"]


def coupling_features(couplings: Tensor, *, periodic: bool = False) -> Tensor:
    """Four input channels per site: the couplings to its right, down, left and up neighbours.

    ``couplings: (B, 2, H, W)`` -> ``(B, 4, H, W)``. Channels 0 and 1 are the couplings themselves; the left and
    up couplings are the same numbers moved onto the site they also touch (zero beyond open boundaries), so
    every site sees its four bonds without the network having to learn the offset.

    >>> J = torch.zeros(1, 2, 2, 2); J[0, 0, 0, 0] = 0.5
    >>> coupling_features(J)[0, 2].tolist()  # left coupling of site (0, 1) is 0.5
    [[0.0, 0.5], [0.0, 0.0]]
    """
    if couplings.dim() != 4 or couplings.shape[1] != 2:
        raise ValueError(f"couplings must have shape (B, 2, H, W), got {tuple(couplings.shape)}")
    right, down = couplings[:, 0], couplings[:, 1]
    if periodic:
        left = torch.roll(right, shifts=1, dims=-1)
        up = torch.roll(down, shifts=1, dims=-2)
    else:
        left = nn.functional.pad(right[..., :, :-1], (1, 0))
        up = nn.functional.pad(down[..., :-1, :], (0, 0, 1, 0))
    return torch.stack([right, down, left, up], dim=1)


class _Block(nn.Module):
    def __init__(self, channels: int, padding_mode: str):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(torch.relu(self.norm(x)))


class SpinResNet(nn.Module):
    """Residual CNN: 3x3 stem, ``depth`` pre-activation residual blocks (BN, ReLU, 3x3 conv), 1x1 head.

    The paper's network is "a 6 layer ResNet type architecture with 256 hidden layer size" (C.3); we read
    that as ``depth=6`` blocks of ``channels=256``. Convolutions pad with zeros for open lattices and wrap
    for periodic ones.

    Input ``couplings: (B, 2, H, W)``; output logits ``(B, H, W)`` (positive = spin up).

    >>> net = SpinResNet(channels=8, depth=2)
    >>> net(torch.zeros(3, 2, 5, 5)).shape
    torch.Size([3, 5, 5])
    """

    def __init__(self, *, channels: int = 256, depth: int = 6, periodic: bool = False):
        super().__init__()
        mode = "circular" if periodic else "zeros"
        self.periodic = periodic
        self.stem = nn.Conv2d(4, channels, 3, padding=1, padding_mode=mode)
        self.blocks = nn.Sequential(*[_Block(channels, mode) for _ in range(depth)])
        self.out_norm = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, couplings: Tensor) -> Tensor:
        x = self.stem(coupling_features(couplings, periodic=self.periodic))
        x = self.blocks(x)
        return self.head(torch.relu(self.out_norm(x))).squeeze(1)
