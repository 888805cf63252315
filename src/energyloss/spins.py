r"""Energy losses for Ising spin systems on a square lattice (paper §5, App. A.6).

Conventions
-----------
Spins live on an ``L x L`` square lattice and take the values ``+1`` / ``-1``. A model predicts one logit per
site, :math:`z_i = \log q(\hat y_i = +1) - \log q(\hat y_i = -1)`, which defines the product distribution
:math:`q(\hat{\mathbf y}) = \prod_i q_i(\hat y_i)` with magnetisation
:math:`m_i = E_q[\hat y_i] = \tanh(z_i/2)`.

The couplings are a tensor ``couplings: (..., 2, L, L)``: channel 0 couples site ``(r, c)`` to ``(r, c + 1)``
(horizontal bonds), channel 1 couples ``(r, c)`` to ``(r + 1, c)`` (vertical bonds); rectangular ``H x W``
lattices work the same way. With open boundaries
(the default) the last column of channel 0 and the last row of channel 1 are not bonds and must be zero; with
``periodic=True`` they wrap around. The energy is

.. math:: E(\mathbf y) = -\sum_{\langle ij \rangle} J_{ij} y_i y_j ,

each bond counted once (the paper writes :math:`-\tfrac12 \sum_{ij}` over ordered pairs, the same thing).

The losses are free energies (Eq. 15): for an energy :math:`E(\hat{\mathbf y}, \mathbf y)`,

.. math:: \mathcal J(q) = \tfrac1T E_q[E] - S[q] + \log Z = \mathrm{KL}\big(q \,\|\, p\big),
          \qquad p(\hat{\mathbf y}) \propto e^{-E(\hat{\mathbf y}, \mathbf y)/T}.

Both parts are exact for a product distribution whenever the energy has no self-interaction (the Ising energy)
or is linear in the spins (the local-field energy). See :func:`local_field_energy` for the weighting we use
and why it differs from Eq. 16 as printed.

Every loss sums over the sites of one lattice (one value per instance) and then reduces over the batch
(``reduction="mean"`` averages over all leading dimensions, ``"sum"`` adds, ``"none"`` keeps shape ``(...)``).
Divide by ``L**2`` for per-site values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_H0",
    "flip_invariant_loss",
    "free_energy_loss",
    "ising_energy",
    "local_field_energy",
    "local_field_energy_loss",
    "local_field_weights",
    "local_fields",
    "magnetisation",
    "spin_cross_entropy_loss",
    "spin_entropy",
    "spin_margin_loss",
    "spins_from_logits",
    "true_energy_loss",
]

#: Default offset of the local-field weights. Any value above 4 (the largest possible ``|y_i h_i|`` for
#: couplings in [-1, 1] and at most four neighbours) makes the data the unique minimiser for *any* data.
DEFAULT_H0 = 5.0
#: Default temperature of the free-energy losses (paper App. C.3: T = 0.1).
DEFAULT_TEMPERATURE = 0.1

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _check_couplings(couplings: Tensor, *, periodic: bool, name: str = "couplings") -> tuple[int, int]:
    if not isinstance(couplings, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(couplings).__name__}")
    if couplings.dim() < 3 or couplings.shape[-3] != 2:
        raise ValueError(f"{name} must have shape (..., 2, L, L) (or (..., 2, H, W)), got {tuple(couplings.shape)}")
    height, width = couplings.shape[-2:]
    if periodic:
        if height < 2 or width < 2:
            raise ValueError(f"periodic lattices need both sides >= 2, got {name} of shape {tuple(couplings.shape)}")
    elif height > 0 and width > 0:
        # Checked on every call: cheap, and a silently ignored coupling would be a wrong energy.
        if bool((couplings[..., 0, :, -1] != 0).any()) or bool((couplings[..., 1, -1, :] != 0).any()):
            raise ValueError(
                f"{name}: with open boundaries the last column of channel 0 and the last row of channel 1 "
                "must be zero (they are not bonds); pass periodic=True for a torus"
            )
    return height, width


def _check_sites(x: Tensor, shape: tuple[int, int], name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or tuple(x.shape[-2:]) != tuple(shape):
        raise ValueError(f"{name} must have shape (..., {shape[0]}, {shape[1]}), got {tuple(x.shape)}")


def _check_lattice(x: Tensor, name: str) -> tuple[int, int]:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (..., L, L) (one value per lattice site), got {tuple(x.shape)}")
    return tuple(x.shape[-2:])


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _reduce(per_instance: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_instance.mean()
    if reduction == "sum":
        return per_instance.sum()
    if reduction == "none":
        return per_instance
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _shift(x: Tensor, offset: int, dim: int, *, periodic: bool) -> Tensor:
    """``out[k] = x[k + offset]`` along ``dim``: wrapped if periodic, zero-filled otherwise."""
    if periodic:
        return torch.roll(x, shifts=-offset, dims=dim)
    out = torch.zeros_like(x)
    n = x.shape[dim]
    if offset > 0:
        out.narrow(dim, 0, n - offset).copy_(x.narrow(dim, offset, n - offset))
    else:
        out.narrow(dim, -offset, n + offset).copy_(x.narrow(dim, 0, n + offset))
    return out


# ----------------------------------------------------------------------------------------------------
# energies


def ising_energy(spins: Tensor, couplings: Tensor, *, periodic: bool = False) -> Tensor:
    r"""Ising energy :math:`E(\mathbf y) = -\sum_{\langle ij\rangle} J_{ij} y_i y_j` of a configuration.

    The energy is a polynomial without self-interaction, so for a product distribution with magnetisations
    :math:`m_i` it also gives the exact expectation: :math:`E_q[E] = E(\mathbf m)`.

    Parameters
    ----------
    spins : Tensor ``(..., L, L)``
        Spins (+1 / -1) or magnetisations in [-1, 1].
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings (see the module docstring); batch dimensions broadcast against ``spins``.
    periodic : bool
        Wrap the lattice into a torus.

    Returns
    -------
    Tensor ``(...)``
        One energy per lattice.

    Examples
    --------
    >>> J = torch.zeros(2, 2, 2)
    >>> J[0, 0, 0] = 1.0  # bond (0,0)-(0,1)
    >>> J[1, 0, 1] = -0.5  # bond (0,1)-(1,1)
    >>> ising_energy(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), J)
    tensor(-1.5000)
    """
    _check_sites(spins, _check_couplings(couplings, periodic=periodic), "spins")
    right = _shift(spins, 1, -1, periodic=periodic)
    down = _shift(spins, 1, -2, periodic=periodic)
    return -(couplings[..., 0, :, :] * spins * right + couplings[..., 1, :, :] * spins * down).sum(dim=(-2, -1))


def local_fields(spins: Tensor, couplings: Tensor, *, periodic: bool = False) -> Tensor:
    r"""Local fields :math:`h_i(\mathbf y) = \sum_{j \sim i} J_{ij} y_j` (:math:`h_i^{LF}` at h0 = 0).

    Flipping spin :math:`i` changes the energy by :math:`\Delta E_i = 2 y_i h_i(\mathbf y)`, so a
    configuration is stable against every single flip (e.g. a ground state) iff :math:`y_i h_i \ge 0`.

    Parameters
    ----------
    spins : Tensor ``(..., L, L)``
        Spins (+1 / -1) or magnetisations.
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings.
    periodic : bool
        Wrap the lattice into a torus.

    Returns
    -------
    Tensor ``(..., L, L)``
        The field at every site.

    Examples
    --------
    >>> J = torch.zeros(2, 1, 3)
    >>> J[0, 0, :2] = torch.tensor([1.0, -2.0])  # a chain of three sites
    >>> local_fields(torch.tensor([[1.0, 1.0, -1.0]]), J)
    tensor([[ 1.,  3., -2.]])
    """
    _check_sites(spins, _check_couplings(couplings, periodic=periodic), "spins")
    jh = couplings[..., 0, :, :]
    jv = couplings[..., 1, :, :]
    # right and down neighbours through this site's bonds, left and up through the neighbours' bonds
    field = jh * _shift(spins, 1, -1, periodic=periodic) + jv * _shift(spins, 1, -2, periodic=periodic)
    field = field + _shift(jh * spins, -1, -1, periodic=periodic) + _shift(jv * spins, -1, -2, periodic=periodic)
    return field


def local_field_weights(target: Tensor, couplings: Tensor, *, h0: float = DEFAULT_H0, periodic: bool = False) -> Tensor:
    r"""Per-site weights :math:`w_i = y_i h_i(\mathbf y) + h_0` of the local-field energy.

    :math:`y_i h_i = \Delta E_i / 2` is half the energy cost of flipping spin :math:`i` in the data. It
    lies in :math:`[-4, 4]` for couplings in [-1, 1] (at most four neighbours), and is :math:`\ge 0` at a
    ground state, so :math:`w_i > 0` everywhere for :math:`h_0 > 4` (any data) or :math:`h_0 > 0` (ground
    states).

    Parameters
    ----------
    target : Tensor ``(..., L, L)``
        The data configuration, +1 / -1.
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings.
    h0 : float
        Offset added to every weight.
    periodic : bool
        Wrap the lattice into a torus.

    Returns
    -------
    Tensor ``(..., L, L)``
        The weights (no gradient flows to them from ``target``; they depend on data only).

    Examples
    --------
    >>> J = torch.zeros(2, 1, 2)
    >>> J[0, 0, 0] = -1.0  # antiferromagnetic pair
    >>> local_field_weights(torch.tensor([[1.0, -1.0]]), J, h0=0.5)
    tensor([[1.5000, 1.5000]])
    """
    return target * local_fields(target, couplings, periodic=periodic) + h0


def local_field_energy(
    pred: Tensor, target: Tensor, couplings: Tensor, *, h0: float = DEFAULT_H0, periodic: bool = False
) -> Tensor:
    r"""Local-field energy around the data, :math:`E_{LF} = \sum_i w_i (1 - y_i \hat y_i)`.

    With :math:`w_i = y_i h_i(\mathbf y) + h_0` (:func:`local_field_weights`). This is our reading of Eq. 16
    and App. A.6, fixed so that the claims made there hold:

    * at :math:`h_0 = 0`, flipping a set of non-neighbouring spins costs exactly
      :math:`\sum_i 2 y_i h_i = E_{LF}`, so :math:`E_{LF}` is the first-order expansion of
      :math:`E(\hat{\mathbf y}) - E(\mathbf y)` in the flips;
    * :math:`E_{LF}` is linear in :math:`\hat{\mathbf y}` and zero at the data; every site with
      :math:`\hat y_i \ne y_i` adds :math:`2 w_i`. So :math:`\mathbf y` is the unique minimiser over
      :math:`\{\pm1\}^\Lambda` iff every :math:`w_i > 0`: for any data when :math:`h_0 > 4` (couplings in
      [-1, 1]; in general :math:`h_0 > \max_i \sum_j |J_{ij}|`), for ground states when :math:`h_0 > 0`.

    Eq. 16 as printed, :math:`\sum_i h_i \hat y_i` with :math:`h_i = \sum_j (J_{ij} + h_0) y_j`, has neither
    property: its sign makes the minimiser :math:`\hat y_i = -\operatorname{sign}(h_i)`, and
    :math:`h_0 \sum_j y_j` does not keep the weights positive (it even changes sign with the neighbours). The
    weight has to be the flip cost :math:`y_i h_i` of the site, which is what A.6 describes in words.

    Parameters
    ----------
    pred : Tensor ``(..., L, L)``
        Predicted spins, or magnetisations (the energy is linear, so this gives the expectation under q).
    target : Tensor ``(..., L, L)``
        Data spins, +1 / -1.
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings.
    h0 : float
        Weight offset (default 5, > 4).
    periodic : bool
        Wrap the lattice into a torus.

    Returns
    -------
    Tensor ``(...)``
        One energy per lattice, zero at the data.

    Examples
    --------
    >>> J = torch.zeros(2, 1, 2)
    >>> J[0, 0, 0] = 1.0
    >>> y = torch.tensor([[1.0, 1.0]])
    >>> local_field_energy(torch.tensor([[1.0, -1.0]]), y, J, h0=0.0)  # = E(pred) - E(y) = 1 - (-1)
    tensor(2.)
    """
    _check_sites(pred, _check_lattice(target, "target"), "pred")
    weights = local_field_weights(target, couplings, h0=h0, periodic=periodic)
    return (weights * (1 - target * pred)).sum(dim=(-2, -1))


# ----------------------------------------------------------------------------------------------------
# distributions over spins


def magnetisation(logits: Tensor) -> Tensor:
    r"""Mean spin :math:`m_i = q(+1) - q(-1) = \tanh(z_i / 2)` of the product distribution of ``logits``.

    Examples
    --------
    >>> magnetisation(torch.tensor([0.0, 100.0]))
    tensor([0., 1.])
    """
    return torch.tanh(logits / 2)


def spins_from_logits(logits: Tensor) -> Tensor:
    r"""Most likely configuration :math:`\hat y_i = \operatorname{sign}(z_i)`, with ties (z = 0) sent to +1.

    Examples
    --------
    >>> spins_from_logits(torch.tensor([-0.3, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    """
    one = torch.ones_like(logits)
    return torch.where(logits >= 0, one, -one)


def spin_entropy(logits: Tensor) -> Tensor:
    r"""Exact entropy :math:`S[q] = -\sum_i q_i \log q_i + (1 - q_i)\log(1 - q_i)`, :math:`q_i = \sigma(z_i)`.

    Computed with log-sigmoids, so it is finite with finite gradients for any finite logits (it tends to 0 as
    :math:`|z| \to \infty`).

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        One logit per site.

    Returns
    -------
    Tensor ``(...)``
        Entropy (nats) of each lattice's product distribution.

    Examples
    --------
    >>> spin_entropy(torch.zeros(1, 2))  # two fair coins
    tensor(1.3863)
    """
    _check_lattice(logits, "logits")
    p = torch.sigmoid(logits)
    per_site = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
    return per_site.sum(dim=(-2, -1))


def free_energy_loss(
    logits: Tensor,
    field: Tensor,
    *,
    temperature: float = 1.0,
    log_partition: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""Variational free energy (Eq. 15) of a product distribution for an energy linear in the spins.

    For :math:`E(\hat{\mathbf y}) = c - \sum_i a_i \hat y_i` (``field`` = :math:`a`):

    .. math:: \mathcal J = \tfrac1T E_q[E] - S[q] + \log Z
              = \sum_i \mathrm{KL}\big(\sigma(z_i) \,\|\, \sigma(2 a_i / T)\big),

    the reverse KL to the Boltzmann distribution, which is itself a product of independent spins with logits
    :math:`2 a_i / T`. It is computed in that form (stable for large ``|a| / T``), is zero exactly at
    :math:`z_i = 2 a_i / T` and does not depend on the constant :math:`c`. With ``log_partition=False`` the
    constant :math:`\log Z = \sum_i \log 2\cosh(a_i/T)` is left out, giving
    :math:`-\tfrac1T \sum_i a_i m_i - S[q]`; gradients are the same.

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        Model logits :math:`z_i`.
    field : Tensor ``(..., L, L)``
        Coefficients :math:`a_i` of the linear energy (no gradient is taken through them: detached).
    temperature : float
        :math:`T > 0`.
    log_partition : bool
        Include :math:`\log Z` (default) so that the loss is the KL divergence, >= 0.
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions, after summing over sites.

    Returns
    -------
    Tensor
        Scalar, or ``(...)`` for ``reduction="none"``.

    Examples
    --------
    >>> a = torch.tensor([[1.0, -2.0]])
    >>> free_energy_loss(2 * a / 0.5, a, temperature=0.5)  # at the Boltzmann distribution
    tensor(0.)
    """
    _check_temperature(temperature)
    _check_lattice(logits, "logits")
    try:
        field = field.expand_as(logits)
    except RuntimeError:
        raise ValueError(f"field must broadcast to logits {tuple(logits.shape)}, got {tuple(field.shape)}") from None
    u = (2.0 / temperature) * field.detach().to(logits.dtype)
    p = torch.sigmoid(logits)
    # KL(Bern(sigmoid z) || Bern(sigmoid u)) with log sigmoid(x) = logsigmoid(x); exact zero when z == u.
    kl = p * (F.logsigmoid(logits) - F.logsigmoid(u)) + (1 - p) * (F.logsigmoid(-logits) - F.logsigmoid(-u))
    per_instance = kl.sum(dim=(-2, -1))
    if not log_partition:
        log_z = torch.logaddexp(u / 2, -u / 2).sum(dim=(-2, -1))
        per_instance = per_instance - log_z
    return _reduce(per_instance, reduction)


def local_field_energy_loss(
    logits: Tensor,
    target: Tensor,
    couplings: Tensor,
    *,
    h0: float = DEFAULT_H0,
    temperature: float = DEFAULT_TEMPERATURE,
    periodic: bool = False,
    log_partition: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""Energy loss for spins (Eq. 15 with the local-field energy of Eq. 16 / App. A.6).

    .. math:: \mathcal J = \tfrac1T E_q[E_{LF}(\hat{\mathbf y}, \mathbf y)] - S[q] + \log Z
              = \sum_i \mathrm{KL}\big(\sigma(z_i) \,\|\, \sigma(2 w_i y_i / T)\big),

    with :math:`E_{LF} = \sum_i w_i (1 - y_i \hat y_i)` and flip-cost weights :math:`w_i = y_i h_i + h_0`
    (see :func:`local_field_energy` for the derivation and why Eq. 16 as printed is changed). In words: the
    reverse KL to a per-site target that is sure of :math:`y_i` in proportion to the cost of flipping it.
    The loss is convex in the magnetisations; its minimiser has :math:`\operatorname{sign}(z_i) = y_i`
    everywhere iff all :math:`w_i > 0` (guaranteed for :math:`h_0 > 4`, and for :math:`h_0 > 0` when the data
    is a ground state). Not invariant to the global flip of ``target``: see :func:`flip_invariant_loss`.

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        Model logits.
    target : Tensor ``(..., L, L)``
        Data spins, +1 / -1.
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings.
    h0 : float
        Weight offset (default 5).
    temperature : float
        :math:`T` (default 0.1, paper App. C.3).
    periodic : bool
        Wrap the lattice into a torus.
    log_partition : bool
        Include :math:`\log Z` (default): the loss is then a KL divergence, >= 0 and 0 at the optimum.
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions, after summing over sites.

    Returns
    -------
    Tensor
        Scalar, or ``(...)`` for ``reduction="none"``.

    Examples
    --------
    >>> J = torch.zeros(2, 1, 2)
    >>> J[0, 0, 0] = 1.0
    >>> y = torch.tensor([[1.0, 1.0]])
    >>> good = local_field_energy_loss(torch.tensor([[5.0, 5.0]]), y, J)
    >>> bad = local_field_energy_loss(torch.tensor([[5.0, -5.0]]), y, J)
    >>> bool(good < bad)
    True
    """
    size = _check_couplings(couplings, periodic=periodic)
    _check_sites(target, size, "target")
    _check_sites(logits, size, "logits")
    target = target.detach().to(logits.dtype)
    weights = local_field_weights(target, couplings.detach().to(logits.dtype), h0=h0, periodic=periodic)
    return free_energy_loss(
        logits, weights * target, temperature=temperature, log_partition=log_partition, reduction=reduction
    )


def true_energy_loss(
    logits: Tensor,
    couplings: Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    periodic: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""Entropy-regularised expected Ising energy :math:`\tfrac1T E_q[E] - S[q]` (the paper's "true energy").

    Exact for the product distribution: :math:`E_q[E] = -\sum_{\langle ij\rangle} J_{ij} m_i m_j` with
    :math:`m = \tanh(z/2)` (mean-field free energy over T). It does not use any data, so it is not a
    classification loss; its partition function is not computed (a constant). Invariant to the global flip
    :math:`z \to -z`.

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        Model logits.
    couplings : Tensor ``(..., 2, L, L)``
        Bond couplings.
    temperature : float
        :math:`T` (default 0.1).
    periodic : bool
        Wrap the lattice into a torus.
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions, after summing over sites.

    Returns
    -------
    Tensor
        Scalar, or ``(...)`` for ``reduction="none"``.

    Examples
    --------
    >>> J = torch.zeros(2, 1, 2)
    >>> J[0, 0, 0] = 1.0
    >>> aligned = true_energy_loss(torch.tensor([[9.0, 9.0]]), J)
    >>> opposed = true_energy_loss(torch.tensor([[9.0, -9.0]]), J)
    >>> bool(aligned < opposed)
    True
    """
    _check_temperature(temperature)
    size = _check_couplings(couplings, periodic=periodic)
    _check_sites(logits, size, "logits")
    energy = ising_energy(magnetisation(logits), couplings.detach().to(logits.dtype), periodic=periodic)
    return _reduce(energy / temperature - spin_entropy(logits), reduction)


# ----------------------------------------------------------------------------------------------------
# classification baselines


def spin_cross_entropy_loss(logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Per-site binary cross-entropy :math:`-\sum_i \log \sigma(y_i z_i)`, summed over the lattice.

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        Model logits.
    target : Tensor ``(..., L, L)``
        Data spins, +1 / -1.
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions, after summing over sites.

    Examples
    --------
    >>> spin_cross_entropy_loss(torch.zeros(1, 2), torch.ones(1, 2))  # 2 log 2
    tensor(1.3863)
    """
    _check_sites(logits, _check_lattice(target, "target"), "logits")
    per_instance = -F.logsigmoid(target.detach().to(logits.dtype) * logits).sum(dim=(-2, -1))
    return _reduce(per_instance, reduction)


def spin_margin_loss(logits: Tensor, target: Tensor, *, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Per-site hinge (margin) loss :math:`\sum_i \max(0, \mathrm{margin} - y_i z_i)` over the lattice.

    Parameters
    ----------
    logits : Tensor ``(..., L, L)``
        Model logits.
    target : Tensor ``(..., L, L)``
        Data spins, +1 / -1.
    margin : float
        Required logit margin (default 1).
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions, after summing over sites.

    Examples
    --------
    >>> spin_margin_loss(torch.tensor([[2.0, 0.5]]), torch.ones(1, 2))
    tensor(0.5000)
    """
    _check_sites(logits, _check_lattice(target, "target"), "logits")
    per_instance = F.relu(margin - target.detach().to(logits.dtype) * logits).sum(dim=(-2, -1))
    return _reduce(per_instance, reduction)


def flip_invariant_loss(
    loss: Callable[..., Tensor], logits: Tensor, target: Tensor, *args, reduction: str = "mean", **kwargs
) -> Tensor:
    r"""Global-flip-invariant supervised spin loss :math:`\min(\ell(z, \mathbf y), \ell(z, -\mathbf y))`.

    The Ising energy is unchanged by flipping every spin, so a ground state is only defined up to that flip;
    this takes, per instance, the better of the target and its flip (the discrete analogue of the paper's
    symmetry-invariant losses). The gradient flows through the smaller branch.

    Parameters
    ----------
    loss : callable
        A loss ``loss(logits, target, *args, reduction=..., **kwargs)`` such as
        :func:`spin_cross_entropy_loss`, :func:`spin_margin_loss` or :func:`local_field_energy_loss` (its
        weights are flip-invariant).
    logits : Tensor ``(..., L, L)``
        Model logits.
    target : Tensor ``(..., L, L)``
        Data spins, +1 / -1.
    *args, **kwargs
        Passed on to ``loss`` (e.g. the couplings).
    reduction : {"mean", "sum", "none"}
        Over the batch dimensions.

    Examples
    --------
    >>> y = torch.tensor([[1.0, -1.0]])
    >>> a = flip_invariant_loss(spin_cross_entropy_loss, torch.tensor([[-3.0, 3.0]]), y)
    >>> b = spin_cross_entropy_loss(torch.tensor([[3.0, -3.0]]), y)
    >>> bool(torch.isclose(a, b))
    True
    """
    as_is = loss(logits, target, *args, reduction="none", **kwargs)
    flipped = loss(logits, -target, *args, reduction="none", **kwargs)
    return _reduce(torch.minimum(as_is, flipped), reduction)
