"""The fused Triton kernel of the complete-graph energy, run by Triton's CPU interpreter (no GPU needed).

The interpreter must be switched on before Triton is imported, so the kernel runs in a fresh subprocess that saves
its outputs; the comparison with `conftest.dense_pair_reference` happens here. On a
GPU machine tests/test_cuda.py runs the compiled kernel through :func:`energyloss.pair_energy_loss`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from energyloss import _triton_kernels
from energyloss.coefficients import (
    ConstantCoefficients,
    ExponentialCoefficients,
    InverseCoefficients,
    InverseSquareCoefficients,
)

from conftest import dense_pair_reference

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs Triton (pip install triton)"
)

SCRIPT = r"""
import sys, torch
from energyloss import _triton_kernels as K
from energyloss.coefficients import (ConstantCoefficients, ExponentialCoefficients, InverseCoefficients,
                                     InverseSquareCoefficients)

schemes = [ConstantCoefficients(k0=2.0), InverseCoefficients(k0=5.0), InverseSquareCoefficients(k0=16.0),
           ExponentialCoefficients(k0=42.0, length_scale=0.7)]
g = torch.Generator().manual_seed(0)
cases = []
for dtype in (torch.float64, torch.float32):
    for i, coeff in enumerate(schemes):
        dim = 1 + i  # D = 1, 2, 3, 4, one per scheme
        p = torch.randn(3, 37, dim, generator=g, dtype=dtype)
        t = torch.randn(3, 37, dim, generator=g, dtype=dtype)
        p[0, 3] = p[0, 4]  # coincident predicted points: zero subgradient
        t[1, 5] = t[1, 6]  # coincident target points: the inverse schemes' clamp
        mask = torch.arange(37)[None] < torch.tensor([37, 20, 1])[:, None]
        for m in (None, mask):
            e, grad = K.pair_energy_and_grad(p, t, m, coeff, True, block_i=16, block_j=16)
            e_only, none = K.pair_energy_and_grad(p, t, m, coeff, False, block_i=16, block_j=16)
            assert none is None and torch.equal(e_only, e)
            cases.append((i, p, t, m, e, grad))
torch.save(cases, sys.argv[1])
"""

SCHEMES = [
    ConstantCoefficients(k0=2.0),
    InverseCoefficients(k0=5.0),
    InverseSquareCoefficients(k0=16.0),
    ExponentialCoefficients(k0=42.0, length_scale=0.7),
]


@needs_triton
def test_fused_kernel_matches_the_reference_in_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", ENERGYLOSS_TRITON="1")
    path = tmp_path / "cases.pt"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    worst = {}
    for i, p, t, m, e, grad in torch.load(path):
        if m is not None:
            assert torch.all(grad[m.logical_not()] == 0)
        e_ref, grad_ref = dense_pair_reference(p, t, m, SCHEMES[i])
        err = max(
            float(((e.double() - e_ref).abs() / e_ref.abs().clamp_min(1e-30)).max()),
            float((grad.double() - grad_ref).abs().max() / grad_ref.abs().max()),
        )
        worst[p.dtype] = max(worst.get(p.dtype, 0.0), err)
    assert worst[torch.float64] < 1e-12
    assert worst[torch.float32] < 1e-5


def test_fused_kernel_is_only_chosen_on_cuda_for_builtin_schemes():
    from energyloss.coefficients import ExponentialCoefficients

    x = torch.zeros(2, 5, 3)
    assert not _triton_kernels.supports(x, ExponentialCoefficients())  # CPU tensors: never
    with pytest.raises(ValueError, match="built-in coefficient schemes"):
        _triton_kernels.pair_energy_and_grad(x, x, None, lambda d: d, True)
    with pytest.raises(ValueError, match="D <= 4"):
        y = torch.zeros(1, 3, 5)
        _triton_kernels.pair_energy_and_grad(y, y, None, ExponentialCoefficients(), True)
