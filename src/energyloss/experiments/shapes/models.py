r"""Many small MLPs trained at once: stacked weights, batched matmuls and a per-model-learning-rate Adam.

The shape experiment trains hundreds of tiny networks (losses x learning rates x seeds x augmentation angles). One
``(M, B, F)`` batched matmul per layer runs ``M`` independent MLPs far faster on a CPU than ``M`` separate
``nn.Sequential`` models; the losses are summed over models, so each model's gradient is exactly the gradient of
its own loss. :class:`StackedAdam` is Adam (Kingma and Ba 2015, the ``torch.optim.Adam`` update without weight
decay) with one learning rate per model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["StackedAdam", "StackedMLP"]

_ACTIVATIONS = {"relu": torch.relu, "silu": nn.functional.silu}


class StackedMLP(nn.Module):
    r"""``M`` independent MLPs ``sizes[0] -> ... -> sizes[-1]`` evaluated with batched matmuls.

    Layer ``l`` of model ``m`` computes :math:`h \mapsto h W^{(l)}_m + b^{(l)}_m`, with the activation between
    layers (none after the last). Each model is initialised like ``torch.nn.Linear`` (weights and biases
    :math:`U[-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}}]`) from its own seed, so a model's initial weights
    depend only on its seed, not on which other models share the stack.

    Args:
        sizes: layer widths, e.g. ``(1, 64, 64, 40)`` for the paper's 1 -> 64 -> 64 -> 2N MLP.
        seeds: one integer seed per model (``M = len(seeds)``).
        activation: ``"relu"`` (paper) or ``"silu"``.

    Shapes:
        ``forward(x)``: ``x (M, B, sizes[0]) -> (M, B, sizes[-1])``.

    Example:
        >>> mlp = StackedMLP((1, 8, 3), seeds=[0, 1])
        >>> mlp(torch.ones(2, 5, 1)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, sizes: Sequence[int], *, seeds: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must list at least two positive widths, got {tuple(sizes)}")
        if len(seeds) < 1:
            raise ValueError("seeds must hold at least one seed (one per model)")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation = activation
        weights, biases = [], []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            weights.append(torch.empty(len(seeds), fan_in, fan_out))
            biases.append(torch.empty(len(seeds), 1, fan_out))
        for m, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            for w, b in zip(weights, biases, strict=True):
                bound = 1.0 / math.sqrt(w.shape[1])
                w[m].uniform_(-bound, bound, generator=gen)
                b[m].uniform_(-bound, bound, generator=gen)
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)

    @property
    def num_models(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != self.num_models or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"x must have shape ({self.num_models}, B, {self.sizes[0]}), got {tuple(x.shape)}")
        act = _ACTIVATIONS[self.activation]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = act(x)
        return x


class StackedAdam:
    r"""Adam with one learning rate per stacked model.

    For every parameter ``p`` of shape ``(M, ...)`` and model ``m``:

    .. math:: m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
       p \leftarrow p - \eta_m \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    which is ``torch.optim.Adam``'s update (tested equal) with :math:`\eta_m` = ``lr[m]``.

    Args:
        params: tensors whose first dimension indexes the ``M`` models.
        lr: ``(M,)`` learning rates (sequence or tensor).
        betas, eps: as in ``torch.optim.Adam``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2, 3))
        >>> opt = StackedAdam([p], lr=[0.1, 0.0])
        >>> p.sum().backward(); opt.step()
        >>> p.detach()[:, 0]
        tensor([0.9000, 1.0000])
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        lr: Sequence[float] | Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params must hold at least one tensor")
        self.lr = torch.as_tensor(lr, dtype=torch.float32).flatten().to(self.params[0].device)
        for p in self.params:
            if p.shape[0] != self.lr.shape[0]:
                raise ValueError(f"every parameter needs a leading model dimension {self.lr.shape[0]}, got {p.shape}")
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t
        c2 = math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            lr = self.lr.to(p).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr / c1 * m / (v.sqrt() / c2 + self.eps))
