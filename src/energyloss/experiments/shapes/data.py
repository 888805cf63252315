r"""Regular polygons with rotation augmentation (paper §6.1).

A sample is a radius :math:`r \sim U[r_{min}, r_{max}]` (paper: ``[0.3, 5]``) and a rotation angle
:math:`\phi \sim U[-\theta_{aug}, \theta_{aug}]`; its target is the regular ``N``-gon of radius ``r`` with vertex
``k`` at angle :math:`2\pi k / N + \phi` (a fixed, counter-clockwise vertex order):

.. math:: y_k = r\,(\cos(2\pi k/N + \phi),\; \sin(2\pi k/N + \phi)), \qquad k = 0, \ldots, N-1 .

The network sees only ``r``; the rotation is the augmentation that makes the target ambiguous.

Differences from the authors' code (``shape_generation/datasets.py``): there the rotation is drawn from
:math:`U(0, 2\pi a)` for an ``aug_angle`` fraction ``a`` of a full turn (one-sided), and the default radius range is
``[0.3, 10]``. We follow the paper's text: a symmetric interval in radians and ``[0.3, 5]``.

Data are stored compactly as ``(radius, u)`` with ``u ~ U[-1, 1]`` and ``rotation = u * theta_aug``: the same
seed gives the same radii and the same *relative* rotations at every ``theta_aug`` (common random numbers across
the sweep); targets are built on the fly by :func:`regular_polygon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PAPER_RADIUS_RANGE", "ShapeData", "polygon_angles", "regular_polygon", "sample_shapes"]

#: Radius range of the paper (§6.1); the authors' code defaults to ``(0.3, 10)``.
PAPER_RADIUS_RANGE = (0.3, 5.0)


def polygon_angles(n_vertices: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    r"""Vertex angles :math:`2\pi k / N`, ``k = 0 .. N-1``, of the canonical regular ``N``-gon: ``(N,)``.

    Example:
        >>> polygon_angles(4)
        tensor([0.0000, 1.5708, 3.1416, 4.7124])
    """
    if not isinstance(n_vertices, int) or n_vertices < 3:
        raise ValueError(f"n_vertices must be an int >= 3, got {n_vertices!r}")
    return 2 * math.pi * torch.arange(n_vertices, dtype=dtype, device=device) / n_vertices


def regular_polygon(radius: Tensor, n_vertices: int, *, rotation: Tensor | None = None) -> Tensor:
    r"""Regular polygons :math:`y_k = r (\cos(2\pi k/N + \phi), \sin(2\pi k/N + \phi))` centred at the origin.

    Args:
        radius: ``(...)`` radii ``r`` (circumradius: every vertex is at distance ``r`` from the centre).
        n_vertices: ``N >= 3``.
        rotation: ``(...)`` angles :math:`\phi` in radians (same shape as ``radius``); ``None`` means 0.

    Returns:
        ``(..., N, 2)`` vertices in the fixed counter-clockwise order ``k = 0 .. N-1``.

    Example:
        >>> regular_polygon(torch.tensor(2.0), 4, rotation=torch.tensor(math.pi / 2)).round(decimals=4) + 0.0
        tensor([[ 0.,  2.],
                [-2.,  0.],
                [ 0., -2.],
                [ 2.,  0.]])
    """
    radius = torch.as_tensor(radius)
    if not radius.is_floating_point():
        raise TypeError(f"radius must be a floating-point tensor, got dtype {radius.dtype}")
    angles = polygon_angles(n_vertices, dtype=radius.dtype, device=radius.device)
    if rotation is not None:
        rotation = torch.as_tensor(rotation, dtype=radius.dtype, device=radius.device)
        if rotation.shape != radius.shape:
            raise ValueError(
                f"rotation must have the shape of radius {tuple(radius.shape)}, got {tuple(rotation.shape)}"
            )
        angles = angles + rotation.unsqueeze(-1)
    r = radius.unsqueeze(-1)
    return torch.stack((r * torch.cos(angles), r * torch.sin(angles)), dim=-1)


@dataclass(frozen=True)
class ShapeData:
    r"""A set of shapes stored as radii and unit rotation draws.

    Attributes:
        radius: ``(S,)`` radii.
        u: ``(S,)`` draws of :math:`U[-1, 1]`; the rotation of sample ``s`` is ``u[s] * theta_aug``.
    """

    radius: Tensor
    u: Tensor

    def __len__(self) -> int:
        return self.radius.shape[0]

    def rotation(self, theta_aug: float) -> Tensor:
        """``(S,)`` rotation angles in ``[-theta_aug, theta_aug]``."""
        return self.u * theta_aug

    def targets(self, n_vertices: int, theta_aug: float) -> Tensor:
        """``(S, N, 2)`` rotated regular polygons."""
        return regular_polygon(self.radius, n_vertices, rotation=self.rotation(theta_aug))


def sample_shapes(
    n_samples: int,
    *,
    generator: torch.Generator,
    radius_range: tuple[float, float] = PAPER_RADIUS_RANGE,
    dtype: torch.dtype = torch.float32,
) -> ShapeData:
    r"""Draw ``n_samples`` radii :math:`r \sim U[r_{min}, r_{max}]` and rotation draws :math:`u \sim U[-1, 1]`.

    Args:
        n_samples: number of shapes ``S``.
        generator: the ``torch.Generator`` that makes the draw reproducible.
        radius_range: ``(r_min, r_max)`` with ``0 < r_min <= r_max``.
        dtype: floating dtype of the result.

    Returns:
        :class:`ShapeData` with ``(S,)`` tensors ``radius`` and ``u``.

    Example:
        >>> data = sample_shapes(3, generator=torch.Generator().manual_seed(0))
        >>> data.targets(5, math.pi).shape
        torch.Size([3, 5, 2])
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    lo, hi = (float(v) for v in radius_range)
    if not 0 < lo <= hi:
        raise ValueError(f"radius_range must satisfy 0 < r_min <= r_max, got {radius_range!r}")
    radius = lo + (hi - lo) * torch.rand(n_samples, generator=generator, dtype=dtype)
    u = 2 * torch.rand(n_samples, generator=generator, dtype=dtype) - 1
    return ShapeData(radius=radius, u=u)
