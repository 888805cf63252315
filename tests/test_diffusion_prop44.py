r"""Numerical tests of Propositions 4.4 and 4.5: the energy objective's minimiser is the score (up to rigid
motions), and its Monte Carlo estimator has less variance than the MSE's.

**The toy problem.** An :math:`SE(2)`-invariant density of triangles in the plane (zero centre of mass):
:math:`x_0 = R_\theta y + \tau\eta`, :math:`\theta \sim U[0, 2\pi)`, :math:`\eta` standard normal. Given a noisy
:math:`x_t = \alpha x_0 + \sigma\epsilon`, the posterior :math:`p(x_0 \mid x_t)` is a mixture over :math:`\theta`
of isotropic Gaussians, computed exactly on a grid of angles. So we know the score term
:math:`\epsilon^\star = \mathbb E[\epsilon \mid x_t] = (x_t - \alpha\bar x)/\sigma`, :math:`\bar x = \mathbb E[x_0
\mid x_t]` (Tweedie: :math:`-\sigma\nabla\log p(x_t)`, the MSE's minimiser), and can sample the posterior.

**What is checked** (:func:`check_prop44`, for a loss given as a function), on posterior samples :math:`x^{(k)}`
with weights :math:`w_k` (every grid angle with antithetic Gaussian draws, so :math:`\sum_k w_k x^{(k)} = \bar x`
exactly):

1. the optimiser starts at :math:`\hat\epsilon = 0` (:math:`\hat x = x_t/\alpha`, no denoising), a relative
   distance 1 from the score, and minimises :math:`\sum_k w_k E(\hat x, x^{(k)})`; :math:`\hat\epsilon_{dist}` is
   its minimum-norm representative (the proper rigid copy of :math:`\hat x` closest to :math:`x_t/\alpha`, by
   Kabsch);
2. **Prop. 4.4 (Eq. 12-13):** :math:`\|\hat\epsilon_{dist} - \epsilon^\star\| / \|\epsilon^\star\| < 10\%`
   (measured 1-5 %: the remainder is of relative order :math:`\tau/|y|`, the width of the data density over the
   size of the configuration, and halves with :math:`\tau`);
3. **the first-order condition before linearisation:** the proof linearises the distances (Eq. 39-43). Without
   that step, the constant-coefficient energy of a triangle (whose three distances are free) is minimised exactly
   where :math:`d_{ij}(\hat x) = \sum_k w_k d_{ij}(x^{(k)})`: checked to 1e-7 relative (measured below 1e-10);
4. **the remainder, in size and direction:** :math:`\hat\epsilon_{dist} - \epsilon^\star` is the Jensen gap
   :math:`g = \sum_k w_k d(x^{(k)}) - d(\bar x)` carried back by the linearisation, :math:`\Delta =
   -\tfrac\alpha\sigma J(\bar x)^+ g`; the residual :math:`\|\hat\epsilon_{dist} - \epsilon^\star - \Delta\|`
   must stay below 5 % of :math:`\|\Delta\|` (measured below 0.1 %).

Checks 3 and 4 use the same samples as the minimisation, so they carry no Monte Carlo error: only the
optimiser's and the linearisation's, far below the tolerances.

Why the old test (optimiser started at the score) could not fail: the score is a stationary point, to first
order, of every objective of this family. Why checks 3-4 are needed: to first order (Eq. 42) *every* positive
weighting of *any* increasing function of the distances has the same minimisers, so a squared-distance loss or
inverse coefficients pass check 2. They move the minimiser to :math:`\sqrt{\mathbb E[d^2]}` or to the harmonic
mean of the distances: check 3 sees 6e-5 to 4e-4, check 4 residuals of 0.9-3.2 times :math:`\|\Delta\|`. A
non-rigid graph (two edges of the triangle) has a flex in its kernel and loses the score's flex component:
checks 2-4 fail at order 1. :func:`test_every_mutant_is_caught` runs the check on each mutant and asserts that it
reports these failures.

**Prop. 4.5** (:func:`test_prop45_variance_reduction`): from ``R = 120`` independent sets of ``N = 8`` i.i.d.
posterior samples, the MSE estimator :math:`\hat\epsilon_{MSE} = (x_t - \alpha\,\mathrm{mean}_k x^{(k)})/\sigma`
and the minimum-norm energy estimator. Eq. 46 holds sample by sample, :math:`\hat\epsilon_{dist} - \mathbb
E\hat\epsilon_{dist} \approx P(\hat\epsilon_{MSE} - \mathbb E\hat\epsilon_{MSE})` with :math:`P` the projector off
the rigid motions (measured: 0.8 % apart), so :math:`\mathrm{tr\,Cov}[\hat\epsilon_{dist}] =
\mathrm{tr}(P\,\mathrm{Cov}[\hat\epsilon_{MSE}])` to rounding. The variance removed is the rotation direction's,
about 1/4 of the total here (the posterior is nearly isotropic in the 4 zero-centre-of-mass dimensions; measured
24 %); its estimate from ``R`` repetitions has a relative standard error of :math:`\sqrt{2/R} \approx 0.13`, so
the test asks for at least 10 % (Eq. 50 with a margin of more than 4 standard errors). Bias: the MSE estimator
is within 4 standard errors of the score, the energy estimator within 4 of the score plus the Jensen remainder
:math:`\Delta` (here 0.1 standard errors: "Bias ≈ 0").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from energyloss import pair_energy_loss
from energyloss.alignment import apply_rigid, kabsch_align

D = torch.float64
Y = torch.tensor([[1.0, 0.0], [-0.5, 0.9], [-0.4, -0.8]], dtype=D)
Y = Y - Y.mean(0)
PAIRS = torch.tensor([[0, 0, 1], [1, 2, 2]])  # every pair of the triangle
PATH = torch.tensor([[0, 1], [1, 2]])  # two edges: not rigid (a flex at vertex 1)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (K, 3, 2), (K, 3, 2) -> (K,)


def _rot(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _zero_com(v: torch.Tensor) -> torch.Tensor:
    return v - v.mean(-2, keepdim=True)


def _distances(x: torch.Tensor) -> torch.Tensor:
    return (x[..., PAIRS[0], :] - x[..., PAIRS[1], :]).norm(dim=-1)


@dataclass
class Posterior:
    xt: torch.Tensor  # (3, 2)
    alpha: float
    sigma: float
    weights: torch.Tensor  # (A,) angle weights, sum 1
    means: torch.Tensor  # (A, 3, 2) per-angle posterior means of x_0
    std: float  # shared posterior std of x_0 (per coordinate, zero-COM subspace)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights[:, None, None] * self.means).sum(0)

    @property
    def score(self) -> torch.Tensor:
        """E[eps | x_t] = (x_t - alpha E[x_0 | x_t]) / sigma = -sigma grad log p(x_t) (Tweedie)."""
        return (self.xt - self.alpha * self.mean) / self.sigma


def posterior(sigma: float, tau: float, seed: int, *, n_angles: int = 720) -> Posterior:
    g = torch.Generator().manual_seed(seed)
    alpha = math.sqrt(1 - sigma**2)
    angle = torch.rand((), generator=g, dtype=D) * 2 * math.pi
    x0 = _zero_com(Y @ _rot(angle).T + tau * torch.randn(3, 2, generator=g, dtype=D))
    xt = _zero_com(alpha * x0 + sigma * torch.randn(3, 2, generator=g, dtype=D))
    theta = torch.arange(n_angles, dtype=D) * (2 * math.pi / n_angles)
    centres = Y @ _rot(theta).mT  # (A, 3, 2): R_theta y
    var = alpha**2 * tau**2 + sigma**2
    w = torch.softmax(-((xt - alpha * centres) ** 2).sum((-1, -2)) / (2 * var), 0)
    keep = w > 1e-12 * w.max()
    means = (tau**2 * alpha * xt + sigma**2 * centres[keep]) / var
    return Posterior(xt, alpha, sigma, w[keep] / w[keep].sum(), means, math.sqrt(tau**2 * sigma**2 / var))


def antithetic_samples(post: Posterior, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every kept angle with +-z Gaussian draws: the weighted sample mean is exactly the posterior mean."""
    z = _zero_com(torch.randn(draws, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=D))
    z = torch.cat([z, -z])
    samples = (post.means[:, None] + post.std * z[None]).reshape(-1, 3, 2)
    weights = (post.weights[:, None] / z.shape[0]).expand(-1, z.shape[0]).reshape(-1)
    return samples, weights


def iid_samples(post: Posterior, n: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.multinomial(post.weights, n, replacement=True, generator=g)
    return post.means[idx] + post.std * _zero_com(torch.randn(n, 3, 2, generator=g, dtype=D))


def minimise(loss: Loss, post: Posterior, samples, weights, start: torch.Tensor) -> torch.Tensor:
    """argmin over eps_hat of sum_k w_k E((x_t - sigma eps_hat) / alpha, x^(k)), from ``start``.

    ``samples: (..., K, 3, 2)``, ``weights: (..., K)``, ``start: (..., 3, 2)``: independent problems over the
    leading dimensions are solved together (their sum is minimised).
    """
    eps = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [eps], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-18, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        x_hat = (post.xt - post.sigma * eps) / post.alpha
        per = loss(x_hat.unsqueeze(-3).expand(samples.shape).reshape(-1, 3, 2), samples.reshape(-1, 3, 2))
        value = (weights * per.reshape(weights.shape)).sum() / post.sigma**2
        value.backward()
        return value

    opt.step(closure)
    return eps.detach()


def min_norm(eps: torch.Tensor, post: Posterior) -> torch.Tensor:
    """The proper rigid copy of the implied x_hat closest to x_t / alpha, as eps (smallest |eps| in the orbit)."""
    x_hat = (post.xt - post.sigma * eps) / post.alpha
    rot, trans = kabsch_align(x_hat, (post.xt / post.alpha).expand_as(x_hat))
    return (post.xt - post.alpha * apply_rigid(x_hat, rot, trans)) / post.sigma


def _jacobian(x: torch.Tensor) -> torch.Tensor:
    """(3 pairs, 6) Jacobian of the distance map at x (3, 2)."""
    jac = torch.zeros(3, 3, 2, dtype=D)
    for p, (i, j) in enumerate(PAIRS.T.tolist()):
        u = (x[i] - x[j]) / (x[i] - x[j]).norm()
        jac[p, i], jac[p, j] = u, -u
    return jac.reshape(3, 6)


@dataclass
class Prop44:
    first_order: float  # |eps_dist - eps*| / |eps*|
    distance_identity: float  # max_ij |d_ij(x_hat) - sum_k w_k d_ij(x^(k))| / d_ij
    remainder: float  # |eps_dist - eps* - Delta| / |Delta|
    jensen: float  # |Delta| / |eps*|

    def failures(self) -> list[str]:
        out = []
        if not self.first_order < 0.1:
            out.append(f"Prop. 4.4: minimum-norm minimiser is {self.first_order:.3g} (relative) from the score")
        if not self.distance_identity < 1e-7:
            out.append(f"minimiser distances differ from the mean distances by {self.distance_identity:.3g}")
        if not self.remainder < 0.05:
            out.append(f"remainder differs from the Jensen term by {self.remainder:.3g} of its size")
        return out


def check_prop44(loss: Loss, *, sigma: float = 0.0125, tau: float = 0.05, seed: int = 0, draws: int = 8) -> Prop44:
    post = posterior(sigma, tau, seed)
    samples, weights = antithetic_samples(post, draws, seed + 1)
    assert torch.allclose((weights[:, None, None] * samples).sum(0), post.mean, atol=1e-12)
    score = post.score
    eps = min_norm(minimise(loss, post, samples, weights, torch.zeros(3, 2, dtype=D)), post)
    x_hat = (post.xt - post.sigma * eps) / post.alpha
    mean_d = (weights[:, None] * _distances(samples)).sum(0)
    gap = mean_d - _distances(post.mean)
    delta = -(post.alpha / post.sigma) * (torch.linalg.pinv(_jacobian(post.mean)) @ gap).reshape(3, 2)
    return Prop44(
        first_order=float((eps - score).norm() / score.norm()),
        distance_identity=float(((_distances(x_hat) - mean_d).abs() / mean_d).max()),
        remainder=float((eps - score - delta).norm() / delta.norm()),
        jensen=float(delta.norm() / score.norm()),
    )


def _library(p, y):
    return pair_energy_loss(p, y, reduction="none")


def _library_edges(p, y):
    return pair_energy_loss(p, y, edges=PAIRS, reduction="none")


def _squared_distances(p, y):
    return ((_distances(p) ** 2 - _distances(y) ** 2) ** 2).sum(-1)


def _inverse_coefficients(p, y):
    return pair_energy_loss(p, y, coefficients="inverse", reduction="none")


def _non_rigid_edges(p, y):
    return pair_energy_loss(p, y, edges=PATH, reduction="none")


@pytest.mark.parametrize("loss", [_library, _library_edges], ids=["complete-graph", "edge-list"])
def test_energy_minimiser_is_the_score_up_to_rigid_motions(loss):
    for seed in (0, 1, 2):  # three noisy inputs x_t
        result = check_prop44(loss, seed=seed)
        assert not result.failures(), (seed, result)
        # the remainder is the Jensen term, of relative order tau / |y|: small, but well above what checks 3-4 resolve
        assert 1e-3 < result.jensen < 0.1, result


def test_the_remainder_vanishes_as_the_density_concentrates():
    """Prop. 4.4's approximation becomes exact as the data density narrows: the remainder is linear in tau."""
    wide = check_prop44(_library, tau=0.05, sigma=0.0125)
    narrow = check_prop44(_library, tau=0.025, sigma=0.00625)
    assert not wide.failures() and not narrow.failures()
    assert 0.4 < narrow.first_order / wide.first_order < 0.6, (wide, narrow)


@pytest.mark.parametrize(
    "mutant, expected",
    [
        (_squared_distances, ["distances differ", "remainder"]),
        (_inverse_coefficients, ["distances differ", "remainder"]),
        (_non_rigid_edges, ["Prop. 4.4", "distances differ", "remainder"]),
    ],
    ids=["squared-distance-loss", "inverse-coefficients", "non-rigid-2-edge-graph"],
)
def test_every_mutant_is_caught(mutant, expected):
    """The same check, on losses that are wrong for Prop. 4.4, reports failure (on at least one of the inputs)."""
    failures = [f for seed in (0, 1, 2) for f in check_prop44(mutant, seed=seed).failures()]
    for what in expected:
        assert any(what in f for f in failures), (what, failures)


def test_prop45_variance_reduction():
    post = posterior(0.0125, 0.05, seed=3)
    score = post.score
    g = torch.Generator().manual_seed(4)
    reps, n = 120, 8
    samples = iid_samples(post, reps * n, g).reshape(reps, n, 3, 2)
    eps_mse = (post.xt - post.alpha * samples.mean(1)) / post.sigma  # (R, 3, 2)
    eps_dist = minimise(_library, post, samples, torch.full((reps, n), 1.0 / n, dtype=D), eps_mse)
    mse, dist = eps_mse.reshape(reps, 6), min_norm(eps_dist, post).reshape(reps, 6)
    cov_mse, cov_dist = torch.cov(mse.T), torch.cov(dist.T)
    # P: projector off the rigid motions at x_t (zero-COM estimators: the rotation is the only one that matters)
    rot = torch.stack([-post.xt[:, 1], post.xt[:, 0]], -1).reshape(6, 1)
    tx = torch.tensor([1.0, 0.0] * 3, dtype=D).reshape(6, 1)
    ty = torch.tensor([0.0, 1.0] * 3, dtype=D).reshape(6, 1)
    q, _ = torch.linalg.qr(torch.cat([tx, ty, rot], 1))
    proj = torch.eye(6, dtype=D) - q @ q.T
    # Eq. 46, sample by sample: the energy estimator is the MSE estimator with its rigid part projected out
    centred_dist, centred_mse = dist - dist.mean(0), (mse - mse.mean(0)) @ proj
    assert float((centred_dist - centred_mse).norm() / centred_mse.norm()) < 0.05
    tr_mse, tr_dist = float(torch.trace(cov_mse)), float(torch.trace(cov_dist))
    assert tr_dist == pytest.approx(float(torch.trace(proj @ cov_mse @ proj)), rel=0.05)
    # Eq. 50 with a margin: at least 10 % of the variance removed (expected about 25 %, standard error ~13 % of it)
    assert tr_dist < 0.9 * tr_mse, (tr_dist, tr_mse)
    # bias: the MSE estimator is unbiased; the energy's is the (small) Jensen remainder of check_prop44
    se_mse, se_dist = math.sqrt(tr_mse / reps), math.sqrt(tr_dist / reps)
    assert float((mse.mean(0).reshape(3, 2) - score).norm()) < 4 * se_mse
    samples, w = antithetic_samples(post, 8, 5)
    gap = (w[:, None] * _distances(samples)).sum(0) - _distances(post.mean)
    delta = -(post.alpha / post.sigma) * (torch.linalg.pinv(_jacobian(post.mean)) @ gap).reshape(3, 2)
    assert float((dist.mean(0).reshape(3, 2) - score - delta).norm()) < 4 * se_dist


def test_mse_minimiser_is_not_invariant_to_rigid_motions():
    """Sanity: unlike the energy, the sample MSE changes along a rigid direction (so the checks above can fail)."""
    x = Y.clone()
    rot = torch.stack([-x[:, 1], x[:, 0]], -1)
    rot = rot / rot.norm()
    post = x + 0.1 * torch.randn(100, 3, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    moved = x + 0.3 * rot

    def mse(p):
        return ((p - post) ** 2).sum((-1, -2)).mean()

    def energy(p):
        return pair_energy_loss(p.expand(100, 3, 2), post)

    assert mse(moved) - mse(x) > 0.05
    # first order in the rigid direction: the energy changes only at second order
    small = x + 1e-3 * rot
    assert abs(float(energy(small) - energy(x))) < 1e-5
