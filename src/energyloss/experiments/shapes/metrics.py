r"""Shape metrics: the paper's quality (App. C.1), the authors' variant, and two scale-aware errors.

Per predicted shape :math:`\hat y \in \mathbb R^{N \times 2}` (centred on its own centroid):

- :math:`\sigma_{\Delta\theta}`: population standard deviation of the ``N`` angular gaps between consecutive
  vertices, sorted by their angle around the centroid, the wrap-around gap included (the gaps sum to
  :math:`2\pi`);
- :math:`\sigma_\rho`: population standard deviation of the vertices' distances :math:`\rho_k` to the centroid,
  and :math:`\bar\rho` their mean.

Quality, as defined in App. C.1 (``quality``), uses the ground-truth radius ``r`` and is averaged per shape:

.. math:: Q = \frac{1}{S} \sum_s -\ln\!\Big( \frac{\sigma_{\Delta\theta,s}}{2\pi} + \frac{\sigma_{\rho,s}}{r_s}
   \Big) .

The authors' code (``shape_generation/models_regression.get_metrics``) differs in two ways: it divides by the
*predicted* mean radius :math:`\bar\rho` and takes the log of the *mean* score (``quality_authors``):

.. math:: Q_{authors} = -\ln\!\Big( \frac{1}{S} \sum_s \frac{\sigma_{\Delta\theta,s}}{2\pi} +
   \frac{\sigma_{\rho,s}}{\bar\rho_s} \Big) .

``quality_log_mean`` is the paper's score (ground-truth ``r``) with the authors' log-of-mean aggregation, to tell
the two differences apart. Scores are floored at :data:`SCORE_FLOOR` (an exact polygon in float64 would give
:math:`-\ln 0 = \infty`).

Both qualities are *blind to scale*: a regular polygon shrunk to a point scores as well as the right one. Two
scale-aware errors complete the picture:

- ``distance_rmse``: :math:`\sqrt{\operatorname{mean}_{i<j} (\|\hat y_i - \hat y_j\| - \|y_i - y_j\|)^2} / r`,
  averaged over shapes; invariant to rotations, translations *and reflections* of the prediction (the energy loss
  may legitimately predict the mirror image, which a proper Kabsch alignment cannot undo);
- ``radius_ratio``: :math:`\bar\rho / r` averaged over shapes (1 for the right size; the MSE optimum under
  rotation augmentation :math:`U[-a, a]` is :math:`\sin(a)/a`).

``orientation_spread`` is :math:`1 - |\operatorname{mean}_s e^{i\varphi_s}|`, with :math:`\varphi_s` the angle of
vertex 0 around the centroid of shape ``s``: 0 when every shape has the same orientation (a canonical pose), close
to 1 for orientations spread uniformly over the circle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from energyloss import center, pairwise_distances

__all__ = ["SCORE_FLOOR", "distance_rmse", "orientation_spread", "quality_scores", "radius_ratio", "shape_metrics"]

#: Smallest per-shape score :math:`\sigma_{\Delta\theta}/2\pi + \sigma_\rho/r` used inside the logarithm
#: (caps a single shape's quality at :math:`-\ln 10^{-12} \approx 27.6`).
SCORE_FLOOR = 1e-12


def _check_shapes(points: Tensor, radius: Tensor) -> None:
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 2 or points.shape[1] < 2:
        got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must have shape (S, N, 2) with N >= 2, got {got}")
    if not isinstance(radius, Tensor) or radius.shape != points.shape[:1]:
        got = tuple(radius.shape) if isinstance(radius, Tensor) else type(radius).__name__
        raise ValueError(f"radius must have shape ({points.shape[0]},), got {got}")


def quality_scores(points: Tensor, radius: Tensor) -> dict[str, Tensor]:
    r"""Per-shape regularity statistics of predicted polygons (see the module docstring).

    Args:
        points: ``(S, N, 2)`` predicted vertices (any order: they are sorted by angle here).
        radius: ``(S,)`` ground-truth radii ``r``.

    Returns:
        dict of ``(S,)`` float64 tensors: ``sigma_angle`` (:math:`\sigma_{\Delta\theta}`), ``sigma_radius``
        (:math:`\sigma_\rho`), ``mean_radius`` (:math:`\bar\rho`), ``score`` (with ``r``) and
        ``score_authors`` (with :math:`\bar\rho`).

    Example:
        >>> square = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
        >>> float(quality_scores(square, torch.tensor([1.0]))["score"]) < 1e-7
        True
    """
    _check_shapes(points, radius)
    c = center(points.detach().to(torch.float64))
    theta, _ = torch.sort(torch.atan2(c[..., 1], c[..., 0]), dim=-1)
    gaps = torch.diff(torch.cat([theta, theta[:, :1] + 2 * math.pi], dim=-1), dim=-1)
    rho = torch.linalg.vector_norm(c, dim=-1)
    sigma_angle = gaps.std(dim=-1, correction=0)
    sigma_radius = rho.std(dim=-1, correction=0)
    mean_radius = rho.mean(dim=-1)
    r = radius.detach().to(torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    return {
        "sigma_angle": sigma_angle,
        "sigma_radius": sigma_radius,
        "mean_radius": mean_radius,
        "score": sigma_angle / (2 * math.pi) + sigma_radius / r,
        "score_authors": sigma_angle / (2 * math.pi) + sigma_radius / mean_radius.clamp_min(tiny),
    }


def distance_rmse(points: Tensor, target: Tensor, radius: Tensor) -> Tensor:
    r"""Per-shape root mean square pair-distance error, relative to the radius: ``(S,)`` float64.

    .. math:: \sqrt{\tfrac{2}{N(N-1)} \sum_{i<j} (\|\hat y_i - \hat y_j\| - \|y_i - y_j\|)^2} \,/\, r

    Args:
        points: ``(S, N, 2)`` predictions; target: ``(S, N, 2)`` ground truth; radius: ``(S,)``.

    Example:
        >>> y = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
        >>> distance_rmse(y * torch.tensor([1.0, -1.0]), y, torch.tensor([1.0]))  # a mirror image: no error
        tensor([0.], dtype=torch.float64)
    """
    _check_shapes(points, radius)
    if target.shape != points.shape:
        raise ValueError(f"target must have the shape of points {tuple(points.shape)}, got {tuple(target.shape)}")
    n = points.shape[1]
    iu = torch.triu_indices(n, n, offset=1)
    dp = pairwise_distances(points.detach().to(torch.float64))[:, iu[0], iu[1]]
    dt = pairwise_distances(target.detach().to(torch.float64))[:, iu[0], iu[1]]
    return (dp - dt).square().mean(-1).sqrt() / radius.detach().to(torch.float64)


def radius_ratio(points: Tensor, radius: Tensor) -> Tensor:
    r"""Per-shape mean distance of the predicted vertices to their centroid, over ``r``: ``(S,)`` float64.

    Example:
        >>> radius_ratio(torch.tensor([[[2.0, 0.0], [-2.0, 0.0]]]), torch.tensor([4.0]))
        tensor([0.5000], dtype=torch.float64)
    """
    _check_shapes(points, radius)
    return quality_scores(points, radius)["mean_radius"] / radius.detach().to(torch.float64)


def orientation_spread(points: Tensor) -> float:
    r"""Spread of the orientations of ``(S, N, 2)`` shapes: :math:`1 - |\operatorname{mean}_s e^{i\varphi_s}|`.

    Example:
        >>> from energyloss.experiments.shapes.data import regular_polygon
        >>> r = torch.ones(4)
        >>> orientation_spread(regular_polygon(r, 5))  # all in the same pose
        0.0
        >>> round(orientation_spread(regular_polygon(r, 5, rotation=torch.tensor([0, 1, 2, 3]) * math.pi / 2)), 6)
        1.0
    """
    c = center(points.detach().to(torch.float64))
    phi = torch.atan2(c[:, 0, 1], c[:, 0, 0])
    resultant = torch.complex(torch.cos(phi).mean(), torch.sin(phi).mean()).abs()
    return float(max(0.0, 1.0 - float(resultant)))


def shape_metrics(points: Tensor, target: Tensor, radius: Tensor) -> dict[str, float]:
    r"""All metrics of a set of predictions, aggregated over shapes.

    Args:
        points: ``(S, N, 2)`` predictions; target: ``(S, N, 2)`` ground truth; radius: ``(S,)``.

    Returns:
        ``quality`` (App. C.1: mean over shapes of :math:`-\ln` score, ground-truth ``r``), ``quality_log_mean``
        (:math:`-\ln` of the mean score, ground-truth ``r``), ``quality_authors`` (:math:`-\ln` of the mean score
        with the predicted mean radius, as in the authors' code), ``sigma_angle`` and ``sigma_radius_rel``
        (means of :math:`\sigma_{\Delta\theta}/2\pi` and :math:`\sigma_\rho / r`), ``distance_rmse`` and
        ``radius_ratio`` (means over shapes), ``orientation_spread``. Non-finite predictions give ``nan`` entries.

    Example:
        >>> from energyloss.experiments.shapes.data import regular_polygon
        >>> r = torch.tensor([1.0, 3.0])
        >>> m = shape_metrics(regular_polygon(r, 6), regular_polygon(r, 6), r)
        >>> m["quality"] > 10, round(m["distance_rmse"], 6), round(m["radius_ratio"], 6)
        (True, 0.0, 1.0)
    """
    if not bool(torch.isfinite(points).all()):
        nan = float("nan")
        keys = ("quality", "quality_log_mean", "quality_authors", "sigma_angle", "sigma_radius_rel")
        return {**dict.fromkeys(keys, nan), "distance_rmse": nan, "radius_ratio": nan, "orientation_spread": nan}
    s = quality_scores(points, radius)
    r = radius.detach().to(torch.float64)
    return {
        "quality": float(-torch.log(s["score"].clamp_min(SCORE_FLOOR)).mean()),
        "quality_log_mean": float(-torch.log(s["score"].mean().clamp_min(SCORE_FLOOR))),
        "quality_authors": float(-torch.log(s["score_authors"].mean().clamp_min(SCORE_FLOOR))),
        "sigma_angle": float((s["sigma_angle"] / (2 * math.pi)).mean()),
        "sigma_radius_rel": float((s["sigma_radius"] / r).mean()),
        "distance_rmse": float(distance_rmse(points, target, radius).mean()),
        "radius_ratio": float((s["mean_radius"] / r).mean()),
        "orientation_spread": orientation_spread(points),
    }
