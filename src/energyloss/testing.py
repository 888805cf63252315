"""Invariance checks for users' own losses, shipped with the library (in the spirit of ``e3nn.util.test``).

Example:
    >>> import torch
    >>> from energyloss import pair_energy_loss
    >>> from energyloss.testing import assert_invariant
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    >>> assert_invariant(pair_energy_loss, y + 0.1, y, generator=g)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["assert_invariant", "invariance_errors", "random_orthogonal", "random_rotation"]


def random_orthogonal(d: int, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """Haar-uniform random orthogonal ``(d, d)`` matrix (QR of a Gaussian matrix with the sign fix).

    Example:
        >>> q = random_orthogonal(3, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(q @ q.T, torch.eye(3, dtype=q.dtype))
        True
    """
    a = torch.randn(d, d, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def random_rotation(d: int, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """Haar-uniform random proper rotation ``(d, d)`` (determinant +1).

    Example:
        >>> r = random_rotation(3, generator=torch.Generator().manual_seed(1))
        >>> round(float(torch.linalg.det(r)), 6)
        1.0
    """
    q = random_orthogonal(d, generator=generator, dtype=dtype)
    if torch.linalg.det(q) < 0:
        q = q.clone()
        q[:, 0] = -q[:, 0]
    return q


def _transform(x: Tensor, q: Tensor, t: Tensor) -> Tensor:
    return x @ q.to(x.dtype).T + t.to(x.dtype)


def invariance_errors(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    *,
    n_trials: int = 3,
    reflections: bool = True,
    translations: bool = True,
    permutations: Iterable[Tensor] = (),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Largest absolute change of ``loss_fn(pred, target)`` under each family of transformations.

    For random orthogonal maps ``g`` (rotations, and reflections if ``reflections``) and translations, checks
    ``loss(g pred, target)``, ``loss(pred, g target)`` and ``loss(g pred, g' target)``; for each permutation ``s``
    (an index tensor over the atoms, e.g. an automorphism of the target's distance matrix), ``loss(pred[..., s, :],
    target)`` and ``loss(pred, target[..., s, :])``. Inputs are ``(..., N, D)``.

    Returns:
        ``{"rotation": err, "reflection": err, "translation": err, "permutation": err}`` (absent families omitted).
    """
    d = pred.shape[-1]
    base = loss_fn(pred, target)
    errors: dict[str, float] = {}

    def record(name: str, value: Tensor) -> None:
        errors[name] = max(errors.get(name, 0.0), float((value - base).abs().max()))

    zero = torch.zeros(d, dtype=torch.float64)
    for _ in range(n_trials):
        q1, q2 = random_rotation(d, generator=generator), random_rotation(d, generator=generator)
        record("rotation", loss_fn(_transform(pred, q1, zero), target))
        record("rotation", loss_fn(pred, _transform(target, q2, zero)))
        record("rotation", loss_fn(_transform(pred, q1, zero), _transform(target, q2, zero)))
        if reflections:
            m = torch.eye(d, dtype=torch.float64)
            m[0, 0] = -1.0
            record("reflection", loss_fn(_transform(pred, q1 @ m, zero), target))
            record("reflection", loss_fn(pred, _transform(target, m @ q2, zero)))
        if translations:
            t1 = torch.randn(d, generator=generator, dtype=torch.float64)
            t2 = torch.randn(d, generator=generator, dtype=torch.float64)
            record("translation", loss_fn(_transform(pred, torch.eye(d, dtype=torch.float64), t1), target))
            record("translation", loss_fn(pred, _transform(target, torch.eye(d, dtype=torch.float64), t2)))
    for perm in permutations:
        record("permutation", loss_fn(pred[..., perm, :], target))
        record("permutation", loss_fn(pred, target[..., perm, :]))
    return errors


def assert_invariant(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    **kwargs,
) -> None:
    """Raise ``AssertionError`` if ``loss_fn`` is not invariant (see :func:`invariance_errors` for ``kwargs``).

    The tolerance is ``atol + rtol * |loss|``, by default ``1e-9`` / ``1e-9`` for float64 and ``1e-5`` / ``1e-4``
    for float32 inputs.
    """
    double = pred.dtype == torch.float64
    atol = (1e-9 if double else 1e-5) if atol is None else atol
    rtol = (1e-9 if double else 1e-4) if rtol is None else rtol
    scale = float(loss_fn(pred, target).abs().max())
    errors = invariance_errors(loss_fn, pred, target, **kwargs)
    bad = {k: v for k, v in errors.items() if v > atol + rtol * scale}
    if bad:
        raise AssertionError(
            f"loss is not invariant: largest changes {bad} (loss {scale:.3g}, atol {atol}, rtol {rtol})"
        )
