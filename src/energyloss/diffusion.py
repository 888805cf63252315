r"""Adapters that put any sample-space loss inside diffusion and flow-matching objectives (§4.2, Eq. 3, 11, A.7).

Diffusion (variance preserving, EDM's notation). A clean sample :math:`x` is noised as
:math:`z_t = \alpha_t x + \sigma_t \epsilon`. A network predicting :math:`\hat\epsilon` implies the clean-sample
prediction :math:`\hat x = (z_t - \sigma_t \hat\epsilon) / \alpha_t`, and

.. math:: \|\epsilon - \hat\epsilon\|^2 = \frac{\alpha_t^2}{\sigma_t^2} \|x - \hat x\|^2 = \mathrm{SNR}_t\,
   \|x - \hat x\|^2 .

So the usual :math:`\epsilon`-MSE is an SNR-weighted sample-space MSE (Eq. 3), and replacing that MSE by another
sample-space loss, such as :func:`energyloss.pair_energy_loss`, gives Eq. 11: :func:`diffusion_sample_loss`.

Flow matching (App. A.7). With :math:`x_t = (1 - t) x + t \epsilon` and the conditional velocity
:math:`u = (x_t - x) / t = \epsilon - x`, a velocity prediction implies :math:`\hat x = x_t - t \hat u`, and
:math:`\|u - \hat u\|^2 = \|x - \hat x\|^2 / t^2`; the energy objective is :math:`E(\hat x, x) / t^2`:
:func:`flow_matching_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._reduction import reduce_per_structure

__all__ = [
    "NoiseSchedule",
    "diffusion_sample_loss",
    "eps_from_x0",
    "flow_matching_interpolate",
    "flow_matching_loss",
    "flow_matching_x0_from_velocity",
    "polynomial_schedule",
    "x0_from_eps",
]

SampleLoss = Callable[..., Tensor]


def polynomial_schedule(steps: int, *, power: float = 2.0, precision: float = 1e-5, clip: float = 1e-3) -> np.ndarray:
    r"""EDM's polynomial noise schedule: :math:`\alpha_t^2` for :math:`t = 0, \ldots, T` (``steps + 1`` values).

    :math:`\alpha^2(s) = (1 - (s / (T+1))^{p})^2` on the grid :math:`s = 0 .. T+1` (``steps + 1`` points,
    ``linspace(0, T+1, T+1)``); successive ratios :math:`\alpha^2_t / \alpha^2_{t-1}` are clipped to at least
    ``clip`` and re-accumulated (this keeps the last steps from collapsing to zero); finally
    :math:`\alpha^2 \leftarrow (1 - 2 s)\,\alpha^2 + s` with ``s = precision``, so :math:`\alpha^2_0 \approx 1` and
    :math:`\alpha^2_T \approx s`. This is Hoogeboom et al. (2022)'s ``polynomial_2`` with precision ``1e-5``.

    Args:
        steps: number of diffusion steps ``T``.
        power: polynomial power ``p``.
        precision: the floor ``s``.
        clip: smallest allowed ratio of successive :math:`\alpha^2`.

    Returns:
        ``(T + 1,)`` float64 array of :math:`\alpha_t^2`, decreasing from about 1 to about ``precision``.

    Example:
        >>> a2 = polynomial_schedule(1000)
        >>> a2.shape, round(float(a2[0]), 4), float(a2[-1]) < 1e-4
        ((1001,), 1.0, True)
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n = steps + 1
    s = np.linspace(0, n, n)
    alphas2 = (1 - np.power(s / n, power)) ** 2
    alphas2 = np.concatenate([np.ones(1), alphas2])
    ratios = np.clip(alphas2[1:] / alphas2[:-1], clip, 1.0)
    alphas2 = np.cumprod(ratios)
    return (1 - 2 * precision) * alphas2 + precision


@dataclass(frozen=True)
class NoiseSchedule:
    r"""Discrete variance-preserving schedule: :math:`\alpha_t`, :math:`\sigma_t = \sqrt{1 - \alpha_t^2}`, SNR.

    Built from :math:`\alpha_t^2` values for ``t = 0 .. T`` (see :func:`polynomial_schedule`), kept as given
    (float64 for :meth:`polynomial`). ``alpha(t)``, ``sigma(t)`` and ``snr(t)`` take integer step tensors ``t``
    in ``[0, T]`` and return a tensor of ``t``'s shape on ``t``'s device, computed in float64 and returned in
    ``dtype`` (default: ``torch.get_default_dtype()``, so a float32 network gets float32 ``alpha_t``).

    Example:
        >>> sched = NoiseSchedule.polynomial(100)
        >>> t = torch.tensor([0, 100])
        >>> bool(sched.snr(t)[0] > 1e4), bool(sched.snr(t)[1] < 1e-4)
        (True, True)
        >>> sched.alpha(t).dtype, sched.alpha(t, dtype=torch.float64).dtype
        (torch.float32, torch.float64)
    """

    alphas2: Tensor = field(repr=False)

    @classmethod
    def polynomial(cls, steps: int, *, power: float = 2.0, precision: float = 1e-5) -> NoiseSchedule:
        """EDM's polynomial schedule with ``steps`` steps (see :func:`polynomial_schedule`)."""
        return cls(torch.as_tensor(polynomial_schedule(steps, power=power, precision=precision)))

    @property
    def steps(self) -> int:
        return self.alphas2.numel() - 1

    def _lookup(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError("t must hold integer diffusion steps; scale continuous times by the number of steps")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.steps):
            raise ValueError(f"t must lie in [0, {self.steps}], got [{int(t.min())}, {int(t.max())}]")
        return self.alphas2.to(device=t.device, dtype=torch.float64)[t]

    @staticmethod
    def _cast(values: Tensor, dtype: torch.dtype | None) -> Tensor:
        return values.to(torch.get_default_dtype() if dtype is None else dtype)

    def alpha(self, t: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        r""":math:`\alpha_t`, in ``dtype`` (default ``torch.get_default_dtype()``)."""
        return self._cast(self._lookup(t).sqrt(), dtype)

    def sigma(self, t: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        r""":math:`\sigma_t = \sqrt{1 - \alpha_t^2}`, in ``dtype`` (default ``torch.get_default_dtype()``)."""
        return self._cast((1 - self._lookup(t)).sqrt(), dtype)

    def snr(self, t: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        r""":math:`\alpha_t^2 / \sigma_t^2`, in ``dtype`` (default ``torch.get_default_dtype()``)."""
        a2 = self._lookup(t)
        return self._cast(a2 / (1 - a2), dtype)


def _expand(v: Tensor | float, like: Tensor, batch: Tensor | None = None, *, name: str = "t") -> Tensor:
    """A per-structure ``(B,)`` tensor (or scalar) shaped to broadcast against ``like``, in ``like``'s dtype.

    ``like`` is dense ``(B, ...)``, or ragged ``(M, D)`` rows with ``batch: (M,)`` (``v`` is then gathered per
    row). A ``(B,)`` tensor that fits neither raises ``ValueError`` naming ``name``.
    """
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.dim() == 1 and v.numel() > 1:
        if batch is not None:
            v = v[batch]
        elif like.dim() == 0 or v.shape[0] != like.shape[0]:
            raise ValueError(
                f"{name} has shape {tuple(v.shape)} (one value per structure) but the samples have shape "
                f"{tuple(like.shape)}: a dense batch (B, ...) needs {name} of shape (B,); for ragged (M, D) rows "
                "pass batch="
            )
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


def x0_from_eps(
    zt: Tensor, eps: Tensor, alpha: Tensor | float, sigma: Tensor | float, *, batch: Tensor | None = None
) -> Tensor:
    r"""Clean-sample prediction :math:`\hat x = (z_t - \sigma_t \hat\epsilon) / \alpha_t`.

    ``alpha``/``sigma`` are scalars or per-structure ``(B,)`` tensors (cast to ``zt``'s dtype); ``zt``/``eps``
    are ``(B, ...)``, or ragged ``(M, D)`` rows with ``batch: (M,)``, the structure of each row (``alpha`` /
    ``sigma`` are then gathered per row).

    Example:
        >>> x0_from_eps(torch.tensor([1.0]), torch.tensor([1.0]), 0.6, 0.8)
        tensor([0.3333])
    """
    return (zt - _expand(sigma, zt, batch, name="sigma") * eps) / _expand(alpha, zt, batch, name="alpha")


def eps_from_x0(
    zt: Tensor, x0: Tensor, alpha: Tensor | float, sigma: Tensor | float, *, batch: Tensor | None = None
) -> Tensor:
    r"""Noise implied by a clean-sample prediction: :math:`\epsilon = (z_t - \alpha_t x) / \sigma_t`.

    Example:
        >>> eps_from_x0(torch.tensor([1.0]), torch.tensor([1.0]), 0.6, 0.8)
        tensor([0.5000])
    """
    return (zt - _expand(alpha, zt, batch, name="alpha") * x0) / _expand(sigma, zt, batch, name="sigma")


def diffusion_sample_loss(
    loss_fn: SampleLoss,
    eps_pred: Tensor,
    zt: Tensor,
    x0: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    weighting: str = "snr",
    reduction: str = "mean",
    **loss_kwargs,
) -> Tensor:
    r"""Eq. 11: a sample-space loss on the clean-sample prediction implied by an :math:`\epsilon` prediction.

    .. math:: \ell_t = w_t\, L\big((z_t - \sigma_t \hat\epsilon)/\alpha_t,\; x\big), \qquad
       w_t = \alpha_t^2 / \sigma_t^2 \ (\text{``snr''}) \text{ or } 1 \ (\text{``none''})

    The identity :math:`\|\epsilon - \hat\epsilon\|^2 = \mathrm{SNR}_t \|x - \hat x\|^2` holds element by
    element, so with ``weighting="snr"`` a squared error gives the :math:`\epsilon`-MSE reduced the same way:
    ``loss_fn = energyloss.mse_loss`` (a mean over atoms and coordinates) gives exactly
    ``mse_loss(eps_pred, eps)``, the usual :math:`\epsilon`-MSE of Eq. 3, and a summed squared error the summed
    one. With :func:`energyloss.pair_energy_loss` it is the paper's energy objective.

    Args:
        loss_fn: a library loss ``loss_fn(pred, target, *, reduction="none", **loss_kwargs) -> (B,)``.
        eps_pred: ``(B, N, D)`` predicted noise (or ragged ``(M, D)`` with ``batch=`` in ``loss_kwargs``).
        zt: noisy sample, same shape.
        x0: clean sample, same shape.
        alpha: ``(B,)`` per-structure :math:`\alpha_t` (also for ragged input, where it is gathered per row with
            ``batch``).
        sigma: ``(B,)`` per-structure :math:`\sigma_t`, likewise.
        weighting: ``"snr"`` or ``"none"``.
        reduction: over structures, ``"none"`` | ``"mean"`` | ``"sum"``.
        **loss_kwargs: forwarded to ``loss_fn`` (``mask``, ``batch``, ``coefficients``, ``normalize``, ...).

    Returns:
        The weighted loss; ``(B,)`` with ``reduction="none"``.

    Example:
        >>> from energyloss import pair_energy_loss
        >>> x0 = torch.randn(2, 4, 3)
        >>> eps = torch.randn(2, 4, 3)
        >>> alpha, sigma = torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.8])
        >>> zt = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
        >>> diffusion_sample_loss(pair_energy_loss, eps, zt, x0, alpha, sigma).abs() < 1e-5  # perfect prediction
        tensor(True)
    """
    if weighting not in ("snr", "none"):
        raise ValueError(f"weighting must be 'snr' or 'none', got {weighting!r}")
    alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
    # ragged input: per-structure alpha/sigma are gathered per row for the conversion
    x0_hat = x0_from_eps(zt, eps_pred, alpha, sigma, batch=loss_kwargs.get("batch"))
    per = loss_fn(x0_hat, x0, reduction="none", **loss_kwargs)
    if weighting == "snr":
        per = per * (alpha / sigma).square().to(per)
    return reduce_per_structure(per, reduction)


def flow_matching_interpolate(x0: Tensor, noise: Tensor, t: Tensor, *, batch: Tensor | None = None) -> Tensor:
    r""":math:`x_t = (1 - t)\,x + t\,\epsilon` with per-structure ``t`` ``(B,)`` in ``[0, 1]`` (App. A.7).

    ``x0``/``noise`` are ``(B, ...)``, or ragged ``(M, D)`` rows with ``batch: (M,)`` (``t`` is then gathered
    per row); the result has ``x0``'s dtype.

    Example:
        >>> flow_matching_interpolate(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
        tensor([[0.2500, 0.2500]])
    """
    t = _expand(t, x0, batch)
    return (1 - t) * x0 + t * noise


def flow_matching_x0_from_velocity(xt: Tensor, velocity: Tensor, t: Tensor, *, batch: Tensor | None = None) -> Tensor:
    r"""Clean-sample prediction :math:`\hat x = x_t - t\,\hat u` implied by a velocity prediction (App. A.7).

    Shapes as in :func:`flow_matching_interpolate` (ragged rows with ``batch``).

    Example:
        >>> flow_matching_x0_from_velocity(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([0.5]))
        tensor([[0.5000, 0.5000]])
    """
    return xt - _expand(t, xt, batch) * velocity


def flow_matching_loss(
    loss_fn: SampleLoss,
    velocity_pred: Tensor,
    xt: Tensor,
    x0: Tensor,
    t: Tensor,
    *,
    reduction: str = "mean",
    **loss_kwargs,
) -> Tensor:
    r"""App. A.7: :math:`\frac{1}{t^2} L(x_t - t\,\hat u,\; x)`, a sample-space loss inside flow matching.

    With ``loss_fn`` a squared error this equals the same squared error of the velocities,
    :math:`\|u - \hat u\|^2` for :math:`u = (x_t - x)/t` (``energyloss.mse_loss`` gives
    ``mse_loss(velocity_pred, u)``); with :func:`energyloss.pair_energy_loss` it is the paper's energy objective
    for flow matching.

    Args:
        loss_fn: ``loss_fn(pred, target, *, reduction="none", **loss_kwargs) -> (B,)``.
        velocity_pred: ``(B, N, D)`` predicted velocity (or ragged ``(M, D)`` with ``batch=`` in ``loss_kwargs``).
        xt: interpolant, same shape.
        x0: data, same shape.
        t: ``(B,)`` per-structure times in ``(0, 1]`` (also for ragged input, where they are gathered per row
            with ``batch``); ``t = 0`` is rejected for CPU tensors (the weight is infinite there; accelerator
            tensors are not checked, to avoid a device synchronisation per call).
        reduction: over structures, ``"none"`` | ``"mean"`` | ``"sum"``.
        **loss_kwargs: forwarded to ``loss_fn`` (``mask``, ``batch``, ``coefficients``, ``normalize``, ...).

    Returns:
        The weighted loss; ``(B,)`` with ``reduction="none"``.

    Example:
        >>> from energyloss import pair_energy_loss
        >>> x0, noise, t = torch.randn(3, 5, 2), torch.randn(3, 5, 2), torch.tensor([0.2, 0.5, 0.9])
        >>> xt = flow_matching_interpolate(x0, noise, t)
        >>> flow_matching_loss(pair_energy_loss, noise - x0, xt, x0, t).abs() < 1e-5  # the exact velocity
        tensor(True)
    """
    t = torch.as_tensor(t)
    # Checked for CPU tensors only: on an accelerator the check would synchronise the device at every call.
    if t.device.type == "cpu" and t.numel() and float(t.min()) <= 0:
        raise ValueError("t must be > 0 in flow_matching_loss: the 1/t^2 weight is infinite at t = 0")
    x0_hat = flow_matching_x0_from_velocity(xt, velocity_pred, t, batch=loss_kwargs.get("batch"))
    per = loss_fn(x0_hat, x0, reduction="none", **loss_kwargs)
    return reduce_per_structure(per / t.to(per).square(), reduction)
