r"""Spring-coefficient schemes :math:`k_{ij}(y)` of the pair energy (paper Eq. 7, §4, App. A.3).

A coefficient scheme maps the *target* pair distances :math:`d_{ij} = \|y_i - y_j\|` to spring constants
:math:`k_{ij} > 0`. Schemes are plain callables ``k(d: Tensor) -> Tensor`` applied elementwise; they never see the
prediction, and the loss evaluates them on detached distances, so no gradient flows through them.

=====================  ====================================  ==============================================
name                   class                                 :math:`k(d)`
=====================  ====================================  ==============================================
``"constant"``         :class:`ConstantCoefficients`         :math:`k_0`
``"inverse"``          :class:`InverseCoefficients`          :math:`k_0 / d`
``"inverse_square"``   :class:`InverseSquareCoefficients`    :math:`k_0 / d^2`
``"exp"``              :class:`ExponentialCoefficients`      :math:`k_0 \exp(-d / \ell)`
—                      :class:`PotentialCoefficients`        :math:`V''(d)` of any pair potential
=====================  ====================================  ==============================================

The string names mean the classes with their default arguments (``k0 = 1``, ``length_scale = 1``). The authors'
code multiplies these by hand-tuned constants (e.g. ``42 * exp(-d)`` for EDM, ``2.6 * exp(-d)`` for the shapes);
here the scale is the explicit ``k0`` argument, and it matters only relative to the other terms of an objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "COEFFICIENT_SCHEMES",
    "ConstantCoefficients",
    "ExponentialCoefficients",
    "InverseCoefficients",
    "InverseSquareCoefficients",
    "PotentialCoefficients",
    "builtin_scheme",
    "exp_cutoff",
    "lennard_jones",
    "morse",
    "resolve_coefficients",
]

Coefficients = Callable[[Tensor], Tensor]

#: Smallest target distance used by the inverse schemes, so that coincident target atoms give a large finite
#: spring instead of ``inf``. It never changes the value for ordinary distances (only ``d < eps`` is clamped).
DEFAULT_MIN_DISTANCE = 1e-6


def exp_cutoff(dtype: torch.dtype) -> float:
    r"""Largest :math:`x = d / \ell` at which :class:`ExponentialCoefficients` still returns :math:`k_0 e^{-x}`.

    Beyond it the spring is exactly 0. The cutoff is where :math:`e^{-x}` falls to about the square root of the
    smallest normal number of ``dtype``: :math:`x = (m + \tfrac12) \ln 2` with :math:`2^{-m}` just above that root
    (float32: :math:`m = 62`, :math:`x = 43.3`, :math:`e^{-x} = 1.5 \cdot 10^{-19}`; float64: :math:`m = 510`,
    :math:`x = 353.9`). Such a spring changes a sum that holds any pair within a few dozen length scales by less
    than the rounding of the sum, and dropping it keeps every kernel clear of denormal (subnormal) floats, whose
    arithmetic is up to a hundred times slower on x86 CPUs (``exp(-d)`` and the products ``k r^2`` of far pairs
    would underflow). The half-integer power of two also bounds the exponent of the fused CPU kernel's inline
    ``exp`` at :math:`m` (see :mod:`energyloss._numba_impl`).

    Example:
        >>> round(exp_cutoff(torch.float32), 2), round(exp_cutoff(torch.float64), 2)
        (43.32, 353.86)
    """
    m = int(-math.log2(torch.finfo(dtype).tiny)) // 2 - 1
    return (m + 0.5) * math.log(2.0)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class ConstantCoefficients:
    r"""Constant springs :math:`k_{ij} = k_0` (the Taylor expansion of a Morse potential, App. A.3).

    Example:
        >>> ConstantCoefficients(k0=2.0)(torch.tensor([0.5, 3.0]))
        tensor([2., 2.])
    """

    k0: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("k0", self.k0)

    def __call__(self, distance: Tensor) -> Tensor:
        return torch.full_like(distance, self.k0)


@dataclass(frozen=True)
class InverseCoefficients:
    r"""Inverse-distance springs :math:`k_{ij} = k_0 / d_{ij}`.

    ``min_distance`` clamps :math:`d` from below (coincident target atoms only).

    Example:
        >>> InverseCoefficients()(torch.tensor([0.5, 2.0]))
        tensor([2.0000, 0.5000])
    """

    k0: float = 1.0
    min_distance: float = DEFAULT_MIN_DISTANCE

    def __post_init__(self) -> None:
        _check_positive("k0", self.k0)
        _check_positive("min_distance", self.min_distance)

    def __call__(self, distance: Tensor) -> Tensor:
        return self.k0 / distance.clamp_min(self.min_distance)


@dataclass(frozen=True)
class InverseSquareCoefficients:
    r"""Inverse-square springs :math:`k_{ij} = k_0 / d_{ij}^2` (Lennard-Jones Taylor expansion, App. A.3).

    Example:
        >>> InverseSquareCoefficients(k0=4.0)(torch.tensor([1.0, 2.0]))
        tensor([4., 1.])
    """

    k0: float = 1.0
    min_distance: float = DEFAULT_MIN_DISTANCE

    def __post_init__(self) -> None:
        _check_positive("k0", self.k0)
        _check_positive("min_distance", self.min_distance)

    def __call__(self, distance: Tensor) -> Tensor:
        return self.k0 / distance.clamp_min(self.min_distance).square()


@dataclass(frozen=True)
class ExponentialCoefficients:
    r"""Exponentially decaying springs :math:`k_{ij} = k_0 \exp(-d_{ij} / \ell)`, the paper's best scheme on QM9.

    Example:
        >>> ExponentialCoefficients(k0=1.0, length_scale=2.0)(torch.tensor([0.0, 2.0]))
        tensor([1.0000, 0.3679])
    """

    k0: float = 1.0
    length_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("k0", self.k0)
        _check_positive("length_scale", self.length_scale)

    def __call__(self, distance: Tensor) -> Tensor:
        x = distance / self.length_scale
        cut = exp_cutoff(torch.promote_types(x.dtype, torch.float32))
        # exp of a clamped argument: far pairs never produce a denormal, and are then set to exactly 0 (exp_cutoff)
        return torch.where(x <= cut, self.k0 * torch.exp(-x.clamp_max(cut)), 0.0)


def morse(r: Tensor, r0: Tensor, *, depth: float = 1.0, width: float = 1.0) -> Tensor:
    r"""Morse pair potential :math:`V(r) = D\,[1 - e^{-a (r - r_0)}]^2` with depth ``D`` and width ``a``.

    Its second derivative at the equilibrium :math:`r = r_0` is :math:`2 D a^2` (paper Eq. A.4).

    Example:
        >>> morse(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor([0.])
    """
    return depth * (1.0 - torch.exp(-width * (r - r0))).square()


def lennard_jones(r: Tensor, r0: Tensor, *, epsilon: float = 1.0) -> Tensor:
    r"""12-6 Lennard-Jones potential written with its equilibrium distance: :math:`\varepsilon[(r_0/r)^{12} -
    2 (r_0/r)^6]`.

    Its second derivative at :math:`r = r_0` is :math:`72 \varepsilon / r_0^2` (paper Eq. A.6).

    Example:
        >>> lennard_jones(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor([-1.])
    """
    x6 = (r0 / r) ** 6
    return epsilon * (x6.square() - 2.0 * x6)


@dataclass(frozen=True)
class PotentialCoefficients:
    r"""Springs from the second-order Taylor expansion of any pair potential (App. A.3, generalised).

    :math:`k_{ij} = \partial^2 V / \partial r^2` evaluated at the target distance :math:`d_{ij}`, computed by
    automatic differentiation. With ``equilibrium=True`` (default) the potential is called as ``V(r, r0)`` with
    ``r0 = d_ij``, i.e. every pair sits at the minimum of its own potential, which is what the expansion of the
    paper assumes (:func:`morse` gives :math:`2 D a^2`, :func:`lennard_jones` gives :math:`72 \varepsilon / d^2`).
    With ``equilibrium=False`` the potential is a fixed function ``V(r)`` and the curvature is taken where the pair
    sits; it can then be negative, and the minimiser property of Cor. 4.3 needs :math:`k > 0`: pass
    ``min_value`` to clamp.

    Args:
        potential: elementwise, twice-differentiable torch function ``V(r, r0)`` or ``V(r)``.
        equilibrium: whether the potential takes the equilibrium distance as second argument.
        min_value: optional lower clamp of the resulting coefficients.
        min_distance: target distances are clamped from below to this before the potential sees them, so that
            coincident target atoms give a large finite spring instead of NaN (e.g. :func:`lennard_jones` at
            :math:`r = r_0 = 0`); it never changes ordinary distances.

    Example:
        >>> from functools import partial
        >>> k = PotentialCoefficients(partial(morse, depth=2.0, width=0.5))
        >>> k(torch.tensor([1.0, 3.0]))  # 2 * D * a^2 = 1
        tensor([1., 1.])
    """

    potential: Callable[..., Tensor]
    equilibrium: bool = True
    min_value: float | None = None
    min_distance: float = DEFAULT_MIN_DISTANCE

    def __post_init__(self) -> None:
        if not callable(self.potential):
            raise TypeError(f"potential must be a callable V(r, r0) or V(r), got {type(self.potential).__name__}")
        _check_positive("min_distance", self.min_distance)

    def __call__(self, distance: Tensor) -> Tensor:
        distance = distance.detach().clamp_min(self.min_distance)
        with torch.enable_grad():
            r = distance.clone().requires_grad_(True)
            v = self.potential(r, distance.detach()) if self.equilibrium else self.potential(r)
            if not isinstance(v, Tensor) or v.shape != r.shape:
                raise ValueError(
                    "potential must be elementwise: it returned shape "
                    f"{getattr(v, 'shape', type(v).__name__)} for distances of shape {tuple(r.shape)}"
                )
            (first,) = torch.autograd.grad(v.sum(), r, create_graph=True)
            (second,) = torch.autograd.grad(first.sum(), r)
        k = second.detach()
        if self.min_value is not None:
            k = k.clamp_min(self.min_value)
        return k


#: The scheme names accepted by ``coefficients=`` and the classes they stand for (with default arguments).
COEFFICIENT_SCHEMES: dict[str, type] = {
    "constant": ConstantCoefficients,
    "inverse": InverseCoefficients,
    "inverse_square": InverseSquareCoefficients,
    "exp": ExponentialCoefficients,
}


def builtin_scheme(coefficients: object) -> tuple[int, float, float] | None:
    """``(scheme id, k0, aux)`` of a built-in coefficient object, for the fused kernels; ``None`` for anything else.

    Ids: 0 constant, 1 inverse, 2 inverse square, 3 exponential. ``aux`` is ``min_distance`` for the inverse
    schemes, ``length_scale`` for the exponential one and 1 for constants. Subclasses are not built-in (they may
    override ``__call__``), so they get ``None`` and take the portable PyTorch path.

    Example:
        >>> builtin_scheme(ExponentialCoefficients(k0=42.0)), builtin_scheme(lambda d: d)
        ((3, 42.0, 1.0), None)
    """
    kind = type(coefficients)
    if kind is ConstantCoefficients:
        return 0, float(coefficients.k0), 1.0
    if kind is InverseCoefficients:
        return 1, float(coefficients.k0), float(coefficients.min_distance)
    if kind is InverseSquareCoefficients:
        return 2, float(coefficients.k0), float(coefficients.min_distance)
    if kind is ExponentialCoefficients:
        return 3, float(coefficients.k0), float(coefficients.length_scale)
    return None


def resolve_coefficients(coefficients: str | Coefficients) -> Coefficients:
    """Turn a scheme name or a callable into a coefficient callable ``k(d) -> Tensor``.

    Example:
        >>> resolve_coefficients("exp")
        ExponentialCoefficients(k0=1.0, length_scale=1.0)
    """
    if isinstance(coefficients, str):
        try:
            return COEFFICIENT_SCHEMES[coefficients]()
        except KeyError:
            raise ValueError(
                f"unknown coefficients {coefficients!r}; choose one of {sorted(COEFFICIENT_SCHEMES)} "
                "or pass a callable mapping target distances to spring constants"
            ) from None
    if callable(coefficients):
        return coefficients
    raise TypeError(f"coefficients must be a scheme name or a callable, got {type(coefficients).__name__}")
