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

__all__ = ["assert_invariant", "invariance_errors", "random_orthogonal", "random_rotation", "random_rotations"]


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


def random_rotations(
    n: int, d: int = 3, *, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> Tensor:
    r"""``n`` Haar-uniform random proper rotations ``(n, d, d)`` (determinant +1): the one sampler of the project.

    For ``d = 3`` a standard normal 4-vector normalised to the unit sphere is a uniform unit quaternion :math:`q`,
    and :math:`q \mapsto R(q)` pushes the uniform measure on :math:`S^3` to the Haar measure on SO(3); otherwise
    the QR decomposition of a Gaussian matrix with the sign fix, one column flipped where the determinant is
    negative. Drawn in float64 on the CPU from ``generator`` (results do not depend on the device), then cast.

    Example:
        >>> r = random_rotations(2, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(r @ r.mT, torch.eye(3).expand(2, 3, 3), atol=1e-6), torch.linalg.det(r).round().tolist()
        (True, [1.0, 1.0])
    """
    if d == 3:
        q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        w, x, y, z = q.unbind(-1)
        rot = torch.stack(
            [
                1 - 2 * (y * y + z * z),
                2 * (x * y - z * w),
                2 * (x * z + y * w),
                2 * (x * y + z * w),
                1 - 2 * (x * x + z * z),
                2 * (y * z - x * w),
                2 * (x * z - y * w),
                2 * (y * z + x * w),
                1 - 2 * (x * x + y * y),
            ],
            dim=-1,
        ).reshape(n, 3, 3)
    else:
        a = torch.randn(n, d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        rot = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        flip = torch.linalg.det(rot) < 0
        rot[flip, :, 0] = -rot[flip, :, 0]
    return rot.to(dtype=dtype, device=device)


def random_rotation(d: int, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """One Haar-uniform random proper rotation ``(d, d)``: :func:`random_rotations` with ``n = 1``.

    Example:
        >>> r = random_rotation(3, generator=torch.Generator().manual_seed(1))
        >>> round(float(torch.linalg.det(r)), 6)
        1.0
    """
    return random_rotations(1, d, generator=generator, dtype=dtype)[0]


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
