r"""EDM-style molecule diffusion whose positional term is any loss of the library (paper §4.2, §6.2, Eq. 3, 11).

A molecule is positions :math:`x \in \mathbb R^{n \times 3}` (centred, Angstrom / ``norm_factors[0]``) and
features :math:`h = [\text{one-hot} / f_1, Z / f_2]` (EDM's ``normalize_factors = [1, 4, 10]``). Training draws a
step :math:`t \sim U\{1, \dots, T\}` and noise :math:`\epsilon = (\epsilon_x, \epsilon_h)` (position noise
centred over the real atoms), forms :math:`z_t = \alpha_t (x, h) + \sigma_t \epsilon`, and the denoiser predicts
:math:`\hat\epsilon = \phi(z_t, t / T)`. Per molecule, with :math:`F` feature channels and :math:`n` atoms,

.. math::

    \ell = \tfrac12 \Big( \frac{\|\epsilon_h - \hat\epsilon_h\|^2}{(3 + F)\, n} + w\, \ell_x \Big)

where the positional term :math:`\ell_x` is (``position_loss``):

=================  =============================================================================================
``"mse"``          :math:`\|\epsilon_x - \hat\epsilon_x\|^2 / ((3+F) n)`: EDM's objective, equal to
                   :math:`\mathrm{SNR}_t \|x - \hat x\|^2 / ((3+F) n)` (Eq. 3)
``"mae"``          :math:`\|\epsilon_x - \hat\epsilon_x\|_1 / ((3+F) n)` (the authors' ``mae`` mode)
``"kabsch_mse"``   :math:`\mathrm{SNR}_t\,\frac{3}{3+F}\,\mathrm{KabschMSE}(\hat x, x)` (the authors' ``kabsch``)
``"energy"``       :math:`\mathrm{SNR}_t\, E(\hat x, x) / n` with :func:`energyloss.pair_energy_loss` (Eq. 11)
``"sparse_energy"``  the same over a globally rigid random graph per molecule, drawn from a
                   :class:`~energyloss.rigidity.RigidGraphPool`
                   (:func:`~energyloss.experiments.losses.draw_pool_edges`; the sparse loss of
                   :func:`energyloss.rigidity.sparse_pair_energy_loss`)
=================  =============================================================================================

and :math:`\hat x = (z_{t,x} - \sigma_t \hat\epsilon_x) / \alpha_t` (:func:`energyloss.diffusion.x0_from_eps`;
the SNR-weighted sample-space terms go through :func:`energyloss.diffusion.diffusion_sample_loss`). The energy's
spring coefficients :math:`k_{ij}` are computed from the **target positions only**. The positional weight
:math:`w` and learning rate default to the paper's Tables 6-7 (:func:`~.registry.paper_hyperparameters`); the
coefficient scales :math:`k_0` default to the authors' EDM constants (:data:`AUTHORS_K0`: ``42 exp(-d)``, ``5 / d``,
``16 / d^2``, ``1``), because Tables 6-7's weights were tuned with them.

Differences from the authors' EDM fork (authors-code.md §3), all deliberate:

- the MSE denominators use each molecule's own atom count ``n``, not the padded width of the batch (so a
  molecule's loss does not depend on its batch-mates, which also makes data-parallel training exact);
- coefficients use target positions only (theirs mix scaled one-hot and charge channels into the distance:
  ``coefficient_distance="features"`` reproduces that, for the dense energy);
- :math:`t = 0` is not drawn in training (EDM replaces that 1-in-1001 term by a discretised likelihood
  :math:`L_0`), and the network-independent terms (KL prior, :math:`\log p(N)`) are omitted: neither changes the
  gradient of the other terms;
- ``"mae"`` keeps the :math:`\epsilon`-MSE on the features (theirs applies L1 there too);
- the sparse loss draws a graph per molecule from a pool of globally rigid 6-regular graphs (100 per size,
  unsymmetrised; the paper symmetrises over automorphisms for QM9).

Sampling is EDM's ancestral sampler (:meth:`MoleculeDiffusion.sample`), optionally on a strided grid of fewer
steps (the posterior :math:`q(z_s \mid z_t, \hat x)` is exact for any :math:`s < t`), with the atom count of
each molecule drawn from the training set's histogram.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from energyloss.diffusion import NoiseSchedule, diffusion_sample_loss
from energyloss.experiments.losses import make_coefficients as scheme_coefficients
from energyloss.experiments.losses import make_position_loss, parse_loss_spec
from energyloss.geometry import center, pairwise_distances

from .config import PRECISIONS

__all__ = ["AUTHORS_K0", "MoleculeDiffusion", "make_coefficients"]

#: The coefficient scales :math:`k_0` of the authors' EDM fork (authors-code.md §1.2), per scheme; a scheme not
#: listed here uses its own default scale.
AUTHORS_K0: dict[str, float] = {"constant": 1.0, "inverse": 5.0, "inverse_square": 16.0, "exp": 42.0}


def make_coefficients(name: str, *, k0: float | None = None):
    """The coefficient callable for a scheme name with scale ``k0`` (default: the authors' :data:`AUTHORS_K0`).

    Example:
        >>> make_coefficients("exp")
        ExponentialCoefficients(k0=42.0, length_scale=1.0)
    """
    return scheme_coefficients(name, k0=AUTHORS_K0.get(name) if k0 is None else k0)


class _FeatureDistanceCoefficients:
    """The authors' EDM coefficients: the scheme applied to distances between ``[x, h]`` rows, not positions.

    Called by the dense path of :func:`~energyloss.pair_energy_loss` with the ``(B, N, N)`` target distances,
    it returns ``scheme(|[x,h]_i - [x,h]_j|)`` of the same shape (and refuses any other layout).
    """

    def __init__(self, scheme, features: Tensor) -> None:
        self.scheme = scheme
        self.feature_distances = pairwise_distances(features)

    def __call__(self, distance: Tensor) -> Tensor:
        if distance.shape != self.feature_distances.shape:
            raise ValueError(
                f"feature-distance coefficients need the dense (B, N, N) layout {tuple(self.feature_distances.shape)},"
                f" got distances of shape {tuple(distance.shape)}"
            )
        return self.scheme(self.feature_distances.to(distance.dtype))


class MoleculeDiffusion(nn.Module):
    r"""EDM-style diffusion over (positions, atom features) with a selectable positional loss.

    Args:
        dynamics: the denoiser, ``dynamics(x: (B,N,3), h: (B,N,F), t: (B,), mask: (B,N)) -> (eps_x, eps_h)``
            (see :mod:`energyloss.experiments.molecules.models`).
        n_types: number of one-hot atom types ``K``; ``F = K + 1`` with charges, ``K`` without.
        include_charges: append :math:`Z / f_2` as a feature (EDM's QM9 setting).
        steps: diffusion steps ``T`` of the polynomial schedule (power 2, precision 1e-5).
        position_loss: a loss spec of :mod:`energyloss.experiments.losses` (``"mse"``, ``"energy:inverse"``,
            ``"sparse_energy:exp:k=6,symmetrize"``, ...) or a :class:`~energyloss.experiments.losses.LossSpec`.
        coefficients: coefficient scheme of an energy loss given without one (``position_loss="energy"``);
            ``k0`` its scale (default: the spec's ``k0``, else :data:`AUTHORS_K0`).
        position_weight: :math:`w`.
        norm_factors: EDM's ``(f_0, f_1, f_2)`` for positions, one-hot and charges.
        pool: a :class:`~energyloss.rigidity.RigidGraphPool` (3-D) for ``"sparse_energy"``.
        coefficient_distance: ``"positions"`` (the paper: :math:`k_{ij} = k(\|x_i - x_j\|)`) or ``"features"``
            (the authors' EDM fork: :math:`k(\|[x, h]_i - [x, h]_j\|)` over positions and scaled features;
            dense ``"energy"`` only).
        precision: ``"fp32"``, or ``"bf16"``: the denoiser runs under ``torch.autocast`` with bfloat16 (training
            and sampling); its outputs are cast back, so the loss, the optimiser and the sampler stay float32.

    Example:
        >>> from energyloss.experiments.molecules.models import GNNDynamics
        >>> model = MoleculeDiffusion(GNNDynamics(6, hidden_nf=8, n_layers=1), n_types=5, steps=10,
        ...                           position_loss="energy")
        >>> x = center(torch.randn(2, 3, 3))
        >>> one_hot = torch.nn.functional.one_hot(torch.tensor([[1, 0, 0], [1, 3, 0]]), 5).float()
        >>> charges = torch.tensor([[6.0, 1, 1], [6, 8, 1]])
        >>> mask = torch.ones(2, 3, dtype=torch.bool)
        >>> noise = model.draw_noise(2, 3, generator=torch.Generator().manual_seed(0))
        >>> out = model(x, one_hot, charges, mask, noise)
        >>> out["loss"].shape, bool(torch.isfinite(out["loss"]).all())
        (torch.Size([2]), True)
    """

    def __init__(
        self,
        dynamics: nn.Module,
        *,
        n_types: int,
        include_charges: bool = True,
        steps: int = 1000,
        position_loss: str = "mse",
        coefficients: str = "exp",
        k0: float | None = None,
        position_weight: float = 1.0,
        norm_factors: Sequence[float] = (1.0, 4.0, 10.0),
        pool=None,
        coefficient_distance: str = "positions",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        spec = parse_loss_spec(position_loss)
        if spec.coefficients is not None and isinstance(position_loss, str) and ":" not in position_loss:
            spec = dataclasses.replace(spec, coefficients=coefficients)  # legacy form: position_loss="energy"
        if spec.name == "sparse_energy" and pool is None:
            raise ValueError("position_loss='sparse_energy' needs pool (a RigidGraphPool in 3-D)")
        if coefficient_distance not in ("positions", "features"):
            raise ValueError(f"coefficient_distance must be 'positions' or 'features', got {coefficient_distance!r}")
        if coefficient_distance == "features" and spec.name != "energy":
            raise ValueError("coefficient_distance='features' is implemented for position_loss='energy' only")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if len(norm_factors) != 3:
            raise ValueError(f"norm_factors must hold 3 numbers (positions, one-hot, charges), got {norm_factors!r}")
        self.dynamics = dynamics
        self.n_types = int(n_types)
        self.include_charges = bool(include_charges)
        self.n_features = self.n_types + int(self.include_charges)
        self.schedule = NoiseSchedule.polynomial(steps)
        self.steps = int(steps)
        self.loss_spec = spec
        self.position_loss = spec.name
        self.coefficients = make_coefficients(
            spec.coefficients or coefficients, k0=spec.k0 if spec.k0 is not None else k0
        )
        self.position_weight = float(position_weight)
        self.norm_factors = tuple(float(f) for f in norm_factors)
        self.pool = pool
        self.coefficient_distance = coefficient_distance
        self.precision = precision

    def _denoise(self, x: Tensor, h: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The network's predictions ``(B, N, 3), (B, N, F)`` in the inputs' dtype (bf16 autocast inside only)."""
        if self.precision == "fp32":
            return self.dynamics(x, h, t, mask)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            pred_x, pred_h = self.dynamics(x, h, t, mask)
        return pred_x.to(x.dtype), pred_h.to(h.dtype)

    # -- encoding ------------------------------------------------------------------------------------------------

    def encode(self, positions: Tensor, one_hot: Tensor, charges: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled, centred positions ``(B, N, 3)`` and features ``h: (B, N, F)``, zero on padding."""
        if one_hot.shape != (*positions.shape[:2], self.n_types):
            raise ValueError(
                f"one_hot must have shape {(*positions.shape[:2], self.n_types)}, got {tuple(one_hot.shape)}"
            )
        m = mask.unsqueeze(-1).to(positions.dtype)
        x = center(positions, mask=mask) / self.norm_factors[0]
        parts = [one_hot.to(positions.dtype) * m / self.norm_factors[1]]
        if self.include_charges:
            parts.append(charges.to(positions.dtype).unsqueeze(-1) * m / self.norm_factors[2])
        return x, torch.cat(parts, -1)

    def draw_noise(
        self,
        batch_size: int,
        n_max: int,
        *,
        generator: torch.Generator | None = None,
        rotations: bool = False,
    ) -> dict[str, Tensor]:
        """Random inputs of one training step, drawn on the CPU from ``generator``.

        ``t: (B,)`` steps in ``[1, T]``, ``eps: (B, n_max, 3 + F)`` standard normal (centred and masked in
        :meth:`forward`), and with ``rotations`` a Haar-random ``rotation: (B, 3, 3)`` per molecule (GDM-aug).
        Drawn for a whole (global) batch, rows can be sliced per data-parallel rank and columns cut to a
        shard's padded width: every molecule's randomness depends only on its row.
        """
        from energyloss.testing import random_rotations

        noise = {
            "t": torch.randint(1, self.steps + 1, (batch_size,), generator=generator),
            "eps": torch.randn(batch_size, n_max, 3 + self.n_features, generator=generator),
        }
        if rotations:
            noise["rotation"] = random_rotations(batch_size, generator=generator)
        return noise

    # -- training objective --------------------------------------------------------------------------------------

    def _position_term(
        self,
        pred_x: Tensor,
        z_x: Tensor,
        x: Tensor,
        eps_x: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        mask: Tensor,
        gen,
        h: Tensor | None = None,
    ) -> Tensor:
        denom = (3 + self.n_features) * mask.sum(-1).clamp_min(1).to(x.dtype)
        m = mask.unsqueeze(-1)
        kind = self.position_loss
        if kind == "mse":
            return torch.where(m, (pred_x - eps_x).square(), 0.0).sum((1, 2)) / denom
        if kind == "mae":
            return torch.where(m, (pred_x - eps_x).abs(), 0.0).sum((1, 2)) / denom
        coefficients = self.coefficients
        if self.coefficient_distance == "features":
            coefficients = _FeatureDistanceCoefficients(self.coefficients, torch.cat([x, h], -1).detach())
        fn = make_position_loss(
            self.loss_spec, dim=3, normalize="atoms", pool=self.pool, generator=gen, coefficients=coefficients
        )
        per = diffusion_sample_loss(
            lambda p, t, *, mask, reduction: fn(p, t, mask), pred_x, z_x, x, alpha, sigma, mask=mask, reduction="none"
        )
        return per * (3.0 / (3 + self.n_features)) if kind == "kabsch_mse" else per

    def forward(
        self,
        positions: Tensor,
        one_hot: Tensor,
        charges: Tensor,
        mask: Tensor,
        noise: Mapping[str, Tensor],
        *,
        edge_generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        r"""Per-molecule training loss :math:`\ell` (module docstring) of a padded batch.

        Args:
            positions: ``(B, N, 3)`` Angstrom (centred here). one_hot: ``(B, N, K)``. charges: ``(B, N)``
                (atomic numbers as floats). mask: ``(B, N)`` bool.
            noise: from :meth:`draw_noise` (``eps`` may be wider than ``N``: it is cut to ``N`` columns).
            edge_generator: generator for the sparse loss's graph draws.

        Returns:
            dict of ``(B,)`` tensors: ``loss`` (:math:`\ell`), ``position`` (:math:`\ell_x`, before the weight),
            ``types`` (the feature :math:`\epsilon`-MSE) and ``t``.
        """
        x, h = self.encode(positions, one_hot, charges, mask)
        device, dtype = x.device, x.dtype
        if "rotation" in noise:
            x = x @ noise["rotation"].to(device=device, dtype=dtype).mT
        t = noise["t"].to(device)
        n = x.shape[1]
        eps = noise["eps"][:, :n].to(device=device, dtype=dtype)
        if eps.shape[:2] != x.shape[:2]:
            raise ValueError(f"noise['eps'] has shape {tuple(noise['eps'].shape)}; need at least {tuple(x.shape[:2])}")
        m = mask.unsqueeze(-1)
        eps_x = center(eps[..., :3], mask=mask)
        eps_h = torch.where(m, eps[..., 3:], 0.0)
        alpha = self.schedule.alpha(t).to(dtype)
        sigma = self.schedule.sigma(t).to(dtype)
        z_x = alpha[:, None, None] * x + sigma[:, None, None] * eps_x
        z_h = alpha[:, None, None] * h + sigma[:, None, None] * eps_h
        pred_x, pred_h = self._denoise(z_x, z_h, t.to(dtype) / self.steps, mask)
        denom = (3 + self.n_features) * mask.sum(-1).clamp_min(1).to(dtype)
        types = torch.where(m, (pred_h - eps_h).square(), 0.0).sum((1, 2)) / denom
        position = self._position_term(pred_x, z_x, x, eps_x, alpha, sigma, mask, edge_generator, h)
        loss = 0.5 * (types + self.position_weight * position)
        return {"loss": loss, "position": position.detach(), "types": types.detach(), "t": t}

    # -- sampling -----------------------------------------------------------------------------------------------

    def _sampling_grid(self, steps: int | None) -> list[int]:
        """Descending steps ``T = t_0 > t_1 > ... > 0`` of a (possibly strided) ancestral sampler."""
        steps = self.steps if steps is None else int(steps)
        if not 1 <= steps <= self.steps:
            raise ValueError(f"sampling steps must lie in [1, {self.steps}], got {steps}")
        grid = torch.linspace(self.steps, 0, steps + 1, dtype=torch.float64).round().long().tolist()
        return sorted(set(grid), reverse=True)

    @torch.no_grad()
    def sample(
        self,
        num_atoms: Tensor,
        *,
        elements: Sequence[int],
        steps: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        r"""Ancestral sampling (EDM) of molecules with the given atom counts.

        From :math:`z_T \sim \mathcal N(0, I)` (positions centred), for consecutive grid steps :math:`s < t`:

        .. math:: z_s = \frac{z_t}{\alpha_{t|s}} - \frac{\sigma^2_{t|s}}{\alpha_{t|s}\sigma_t}\hat\epsilon
            + \frac{\sigma_{t|s}\sigma_s}{\sigma_t}\,\xi, \qquad
            \alpha^2_{t|s} = \alpha^2_t / \alpha^2_s,\ \sigma^2_{t|s} = 1 - \alpha^2_{t|s}

        and finally :math:`\hat x = (z_0 - \sigma_0 \hat\epsilon) / \alpha_0`; atom types are the argmax of the
        one-hot channels. (EDM adds a last noise of std :math:`\sigma_0 / \alpha_0 \approx 0.003` to
        :math:`\hat x`; we return the mean.)

        Args:
            num_atoms: ``(B,)`` atom counts. elements: atomic numbers of the one-hot columns.
            steps: sampling steps (default ``T``; fewer gives a strided grid). generator: CPU generator for
                the noise. device: where the network runs (default: where its parameters are).

        Returns:
            dict with ``positions: (B, N, 3)`` Angstrom, ``atomic_numbers: (B, N)`` (0 on padding) and
            ``mask: (B, N)``, ``N = max(num_atoms)``.
        """
        if device is None:
            device = next(self.dynamics.parameters()).device
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        b, n = num_atoms.numel(), int(num_atoms.max())
        mask = (torch.arange(n)[None, :] < num_atoms[:, None]).to(device)
        width = 3 + self.n_features
        a2 = self.schedule.alphas2

        def gaussian() -> Tensor:
            z = torch.randn(b, n, width, generator=generator).to(device)
            return torch.cat([center(z[..., :3], mask=mask), torch.where(mask[..., None], z[..., 3:], 0.0)], -1)

        def predict(z: Tensor, t: int) -> Tensor:
            tt = torch.full((b,), t / self.steps, device=device)
            ex, eh = self._denoise(z[..., :3], z[..., 3:], tt, mask)
            return torch.cat([ex, eh], -1)

        z = gaussian()
        grid = self._sampling_grid(steps)
        for t, s in zip(grid[:-1], grid[1:], strict=True):
            a2t, a2s = float(a2[t]), float(a2[s])
            alpha_ts = math.sqrt(a2t / a2s)
            sigma2_ts = -math.expm1(math.log(a2t) - math.log(a2s))
            sigma_t, sigma_s = math.sqrt(1 - a2t), math.sqrt(1 - a2s)
            eps_hat = predict(z, t)
            mu = z / alpha_ts - (sigma2_ts / (alpha_ts * sigma_t)) * eps_hat
            z = mu + (math.sqrt(sigma2_ts) * sigma_s / sigma_t) * gaussian()
        a20 = float(a2[0])
        xh = (z - math.sqrt(1 - a20) * predict(z, 0)) / math.sqrt(a20)
        positions = center(xh[..., :3], mask=mask) * self.norm_factors[0]
        kinds = xh[..., 3 : 3 + self.n_types].argmax(-1)
        el = torch.as_tensor(list(elements), dtype=torch.long, device=device)
        if el.numel() != self.n_types:
            raise ValueError(f"elements has {el.numel()} entries but the model has {self.n_types} atom types")
        atomic_numbers = torch.where(mask, el[kinds], 0)
        return {"positions": positions, "atomic_numbers": atomic_numbers, "mask": mask}
