"""Shared fixtures: every test is seeded; float32 and float64 tolerances."""

from __future__ import annotations

import pytest
import torch

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def random_rotation(d: int, gen: torch.Generator, dtype=torch.float64, proper: bool = True) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if proper and torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)
