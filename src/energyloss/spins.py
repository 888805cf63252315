r"""Energy losses for Ising spin systems on a square lattice (paper §5, App. A.6).

**Conventions.** Spins live on an ``L x L`` square lattice and take the values ``+1`` / ``-1``. A model
predicts one logit per site, :math:`z_i = \log q(\hat y_i = +1) - \log q(\hat y_i = -1)`, which defines the
product distribution :math:`q(\hat{\mathbf y}) = \prod_i q_i(\hat y_i)` with magnetisation
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

**Inputs are checked, never broadcast silently.** Logits and targets of a loss must have the same shape
``(..., L, L)``; couplings are ``(..., 2, L, L)`` with the same leading dimensions as the logits, or none (one
lattice shared by the whole batch). A CNN output ``(B, 1, L, L)`` is refused with a hint to squeeze its channel
dimension, instead of broadcasting to ``(B, B, L, L)``. Targets must be +1 / -1 (a ``{0, 1}`` or bool tensor is
refused with the conversion to use), logits / couplings must be finite, and :func:`local_field_energy_loss`
refuses an ``h0`` that leaves a site weight :math:`w_i \le 0`, naming an ``h0`` that would do. The value checks
cost one host synchronisation per call and are skipped while ``torch.compile`` traces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._reduction import reduce_per_structure

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


# ----------------------------------------------------------------------------------------------------
# validation helpers


class _ValueChecks:
    """Value checks of (possibly accelerator) tensors, resolved with one host synchronisation.

    Each check is a 0-dim bool tensor, ``True`` when it failed, with a function building the message (run only
    on failure). :meth:`raise_first` stacks them, reads them once and raises a ``ValueError`` for the first
    failure. Skipped while ``torch.compile`` traces: a data-dependent branch would break the graph.
    """

    def __init__(self) -> None:
        self._failed: list[Tensor] = []
        self._messages: list[Callable[[], str]] = []

    def add(self, failed: Tensor, message: Callable[[], str]) -> None:
        self._failed.append(failed.reshape(()))
        self._messages.append(message)

    def finite(self, x: Tensor, name: str) -> None:
        if x.is_floating_point():
            self.add(~torch.isfinite(x).all(), lambda: _nonfinite_message(x, name))

    def spins(self, x: Tensor, name: str) -> None:
        """``x`` holds +1 / -1 only."""
        self.add(((x != 1) & (x != -1)).any(), lambda: _spin_message(x, name))

    def unit_interval(self, x: Tensor, name: str) -> None:
        """``x`` holds spins or magnetisations: values in [-1, 1] (NaN fails)."""
        self.add((~((x >= -1) & (x <= 1))).any(), lambda: _unit_interval_message(x, name))

    def raise_first(self) -> None:
        if not self._failed or torch.compiler.is_compiling():
            return
        failed = torch.stack([f.to(self._failed[0].device) for f in self._failed]).tolist()  # the one sync
        for flag, message in zip(failed, self._messages, strict=True):
            if flag:
                raise ValueError(message())


def _examples(values: Tensor, k: int = 3) -> str:
    return ", ".join(f"{v:g}" for v in values.flatten()[:k].double().tolist())


def _nonfinite_message(x: Tensor, name: str) -> str:
    bad = ~torch.isfinite(x)
    return (
        f"{name} must be finite, got {int(bad.sum())} NaN / inf entries of {x.numel()} "
        f"(e.g. {_examples(x[bad])}) in {name} of shape {tuple(x.shape)}"
    )


def _spin_message(x: Tensor, name: str) -> str:
    bad = (x != 1) & (x != -1)
    if bool(((x == 0) | (x == 1)).all()):
        return (
            f"{name} must hold spins +1 / -1, got values in {{0, 1}} (shape {tuple(x.shape)}); "
            f"convert with 2 * {name} - 1"
        )
    return (
        f"{name} must hold spins +1 / -1 only, got {int(bad.sum())} of {x.numel()} entries that are neither "
        f"(e.g. {_examples(x[bad])}) in {name} of shape {tuple(x.shape)}"
    )


def _unit_interval_message(x: Tensor, name: str) -> str:
    bad = ~((x >= -1) & (x <= 1))
    return (
        f"{name} must hold spins +1 / -1 or magnetisations in [-1, 1], got {int(bad.sum())} of {x.numel()} "
        f"entries outside (e.g. {_examples(x[bad])}) in {name} of shape {tuple(x.shape)}"
    )


_SPIN_DTYPE_HINT = "; spins are +1 / -1: convert a bool or {{0, 1}} tensor with 2 * {name}.float() - 1"


def _check_tensor(x: object, name: str, *, floating: bool = False, hint: str = "") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}{hint}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real floating-point or integer tensor, got dtype {x.dtype}{hint}")


def _channel_hint(expected: tuple[int, ...], **named: Tensor) -> str:
    """A hint for a tensor that is ``expected`` with an extra channel dimension of 1 (a CNN's ``(B, 1, H, W)``)."""
    for name, x in named.items():
        if x.dim() >= 3 and x.shape[-3] == 1 and tuple(x.squeeze(-3).shape) == tuple(expected):
            return f"; if {name} is a CNN output (B, 1, H, W), squeeze its channel dimension: {name}.squeeze(-3)"
    return ""


def _check_couplings(
    couplings: Tensor, *, periodic: bool, checks: _ValueChecks, name: str = "couplings"
) -> tuple[int, int]:
    """Type and shape of ``couplings: (..., 2, H, W)``; queues its value checks (finite, open boundary zeros)."""
    _check_tensor(couplings, name)
    if couplings.dim() < 3 or couplings.shape[-3] != 2:
        raise ValueError(f"{name} must have shape (..., 2, L, L) (or (..., 2, H, W)), got {tuple(couplings.shape)}")
    height, width = (int(v) for v in couplings.shape[-2:])
    if periodic and (height < 2 or width < 2):
        raise ValueError(f"periodic lattices need both sides >= 2, got {name} of shape {tuple(couplings.shape)}")
    checks.finite(couplings, name)
    if not periodic and height > 0 and width > 0:
        # A silently ignored coupling would be a wrong energy.
        outside = (couplings[..., 0, :, -1] != 0).any() | (couplings[..., 1, -1, :] != 0).any()
        checks.add(
            outside,
            lambda: (
                f"{name}: with open boundaries the last column of channel 0 and the last row of channel 1 "
                "must be zero (they are not bonds); pass periodic=True for a torus"
            ),
        )
    return height, width


def _check_energy_inputs(
    sites: dict[str, Tensor], couplings: Tensor, *, periodic: bool, spins: tuple[str, ...] = ()
) -> None:
    """Inputs of the energy functions: site tensors ``(..., H, W)`` and ``couplings: (..., 2, H, W)``.

    Leading (batch) dimensions must be equal, or absent on a tensor shared by the batch (one configuration
    against many coupling sets, or many configurations on one lattice); nothing else broadcasts. The names in
    ``spins`` must hold +1 / -1, the other site tensors values in [-1, 1].
    """
    checks = _ValueChecks()
    lattice = _check_couplings(couplings, periodic=periodic, checks=checks)
    for name, x in sites.items():
        _check_tensor(x, name, hint=_SPIN_DTYPE_HINT.format(name=name) if name in spins else "")
        if x.dim() < 2 or tuple(x.shape[-2:]) != lattice:
            raise ValueError(
                f"{name} must have shape (..., {lattice[0]}, {lattice[1]}) to match couplings "
                f"{tuple(couplings.shape)}, got {tuple(x.shape)}"
            )
    named = {name: tuple(x.shape[:-2]) for name, x in sites.items()}
    named["couplings"] = tuple(couplings.shape[:-3])
    batched = {name: shape for name, shape in named.items() if shape}
    if len(set(batched.values())) > 1:
        got = ", ".join(f"{name} {shape}" for name, shape in batched.items())
        expected = (*couplings.shape[:-3], *lattice)
        raise ValueError(
            "leading (batch) dimensions must be equal, or absent on a tensor shared by the batch (nothing else is "
            f"broadcast); got {got}" + _channel_hint(expected, **sites)
        )
    for name, x in sites.items():
        (checks.spins if name in spins else checks.unit_interval)(x, name)
    checks.raise_first()


def _check_loss_inputs(
    logits: Tensor,
    *,
    target: Tensor | None = None,
    couplings: Tensor | None = None,
    periodic: bool = False,
    checks: _ValueChecks | None = None,
) -> _ValueChecks:
    """Inputs of the losses: ``logits: (..., H, W)``, ``target`` of the same shape (+1 / -1), and
    ``couplings: (..., 2, H, W)`` with the leading dimensions of ``logits`` or none.

    Raises ``TypeError`` / ``ValueError`` for types and shapes at once; returns the queued value checks, to which
    a loss may add its own before calling :meth:`_ValueChecks.raise_first`.
    """
    checks = _ValueChecks() if checks is None else checks
    _check_tensor(logits, "logits", floating=True)
    if couplings is not None:
        height, width = _check_couplings(couplings, periodic=periodic, checks=checks)
        if logits.dim() < 2 or tuple(logits.shape[-2:]) != (height, width):
            raise ValueError(
                f"logits must have shape (..., {height}, {width}) to match couplings {tuple(couplings.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        if couplings.dim() > 3 and couplings.shape[:-3] != logits.shape[:-2]:
            raise ValueError(
                f"couplings {tuple(couplings.shape)} and logits {tuple(logits.shape)} have different batch "
                f"dimensions {tuple(couplings.shape[:-3])} and {tuple(logits.shape[:-2])}: couplings must be "
                f"(2, {height}, {width}) (one lattice for the whole batch) or "
                f"{(*logits.shape[:-2], 2, height, width)} (one per lattice of logits); nothing is broadcast"
                + _channel_hint((*couplings.shape[:-3], height, width), logits=logits)
            )
    elif logits.dim() < 2:
        raise ValueError(f"logits must have shape (..., L, L) (one logit per lattice site), got {tuple(logits.shape)}")
    checks.finite(logits, "logits")
    if target is not None:
        _check_tensor(target, "target", hint=_SPIN_DTYPE_HINT.format(name="target"))
        if target.shape != logits.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape "
                "(..., L, L), one target spin per logit; nothing is broadcast"
                + _channel_hint(tuple(target.shape), logits=logits)
                + _channel_hint(tuple(logits.shape), target=target)
            )
        checks.spins(target, "target")
    return checks


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


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


def _energy(spins: Tensor, couplings: Tensor, periodic: bool) -> Tensor:
    right = _shift(spins, 1, -1, periodic=periodic)
    down = _shift(spins, 1, -2, periodic=periodic)
    return -(couplings[..., 0, :, :] * spins * right + couplings[..., 1, :, :] * spins * down).sum(dim=(-2, -1))


def _fields(spins: Tensor, couplings: Tensor, periodic: bool) -> Tensor:
    jh = couplings[..., 0, :, :]
    jv = couplings[..., 1, :, :]
    # right and down neighbours through this site's bonds, left and up through the neighbours' bonds
    field = jh * _shift(spins, 1, -1, periodic=periodic) + jv * _shift(spins, 1, -2, periodic=periodic)
    field = field + _shift(jh * spins, -1, -1, periodic=periodic) + _shift(jv * spins, -1, -2, periodic=periodic)
    return field


def ising_energy(spins: Tensor, couplings: Tensor, *, periodic: bool = False) -> Tensor:
    r"""Ising energy :math:`E(\mathbf y) = -\sum_{\langle ij\rangle} J_{ij} y_i y_j` of a configuration.

    The energy is a polynomial without self-interaction, so for a product distribution with magnetisations
    :math:`m_i` it also gives the exact expectation: :math:`E_q[E] = E(\mathbf m)`.

    Args:
        spins: ``(..., L, L)`` spins (+1 / -1) or magnetisations in [-1, 1].
        couplings: ``(..., 2, L, L)`` bond couplings (see the module docstring). Leading dimensions must equal
            those of ``spins``, or be absent on one of the two (many configurations on one lattice, or one
            configuration against many coupling sets).
        periodic: wrap the lattice into a torus.

    Returns:
        ``(...)`` one energy per lattice.

    Raises:
        TypeError: an argument is not a real tensor.
        ValueError: a shape does not match, ``spins`` leaves [-1, 1] or is NaN, ``couplings`` is not finite, or
            open-boundary couplings are non-zero outside the lattice.

    Example:
        >>> J = torch.zeros(2, 2, 2)
        >>> J[0, 0, 0] = 1.0  # bond (0,0)-(0,1)
        >>> J[1, 0, 1] = -0.5  # bond (0,1)-(1,1)
        >>> ising_energy(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), J)
        tensor(-1.5000)
    """
    _check_energy_inputs({"spins": spins}, couplings, periodic=periodic)
    return _energy(spins, couplings, periodic)


def local_fields(spins: Tensor, couplings: Tensor, *, periodic: bool = False) -> Tensor:
    r"""Local fields :math:`h_i(\mathbf y) = \sum_{j \sim i} J_{ij} y_j` (:math:`h_i^{LF}` at h0 = 0).

    Flipping spin :math:`i` changes the energy by :math:`\Delta E_i = 2 y_i h_i(\mathbf y)`, so a
    configuration is stable against every single flip (e.g. a ground state) iff :math:`y_i h_i \ge 0`.

    Args:
        spins: ``(..., L, L)`` spins (+1 / -1) or magnetisations in [-1, 1].
        couplings: ``(..., 2, L, L)`` bond couplings; leading dimensions as in :func:`ising_energy`.
        periodic: wrap the lattice into a torus.

    Returns:
        ``(..., L, L)`` the field at every site.

    Raises:
        TypeError, ValueError: as for :func:`ising_energy`.

    Example:
        >>> J = torch.zeros(2, 1, 3)
        >>> J[0, 0, :2] = torch.tensor([1.0, -2.0])  # a chain of three sites
        >>> local_fields(torch.tensor([[1.0, 1.0, -1.0]]), J)
        tensor([[ 1.,  3., -2.]])
    """
    _check_energy_inputs({"spins": spins}, couplings, periodic=periodic)
    return _fields(spins, couplings, periodic)


def local_field_weights(target: Tensor, couplings: Tensor, *, h0: float = DEFAULT_H0, periodic: bool = False) -> Tensor:
    r"""Per-site weights :math:`w_i = y_i h_i(\mathbf y) + h_0` of the local-field energy.

    :math:`y_i h_i = \Delta E_i / 2` is half the energy cost of flipping spin :math:`i` in the data. It
    lies in :math:`[-4, 4]` for couplings in [-1, 1] (at most four neighbours), and is :math:`\ge 0` at a
    ground state, so :math:`w_i > 0` everywhere for :math:`h_0 > 4` (any data) or :math:`h_0 > 0` (ground
    states). Any ``h0`` is accepted here (to study the condition); :func:`local_field_energy_loss` refuses
    one that leaves a weight :math:`\le 0`.

    Args:
        target: ``(..., L, L)`` the data configuration, +1 / -1.
        couplings: ``(..., 2, L, L)`` bond couplings; leading dimensions as in :func:`ising_energy`.
        h0: offset added to every weight.
        periodic: wrap the lattice into a torus.

    Returns:
        ``(..., L, L)`` the weights. They depend on data only (use detached inputs to keep them constant).

    Raises:
        TypeError, ValueError: as for :func:`ising_energy`; also when ``target`` is not +1 / -1.

    Example:
        >>> J = torch.zeros(2, 1, 2)
        >>> J[0, 0, 0] = -1.0  # antiferromagnetic pair
        >>> local_field_weights(torch.tensor([[1.0, -1.0]]), J, h0=0.5)
        tensor([[1.5000, 1.5000]])
    """
    _check_energy_inputs({"target": target}, couplings, periodic=periodic, spins=("target",))
    return target * _fields(target, couplings, periodic) + h0


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

    Args:
        pred: ``(..., L, L)`` predicted spins, or magnetisations in [-1, 1] (the energy is linear, so this gives
            the expectation under q).
        target: ``(..., L, L)`` data spins, +1 / -1.
        couplings: ``(..., 2, L, L)`` bond couplings. Leading dimensions of the three arguments must be equal,
            or absent on the ones shared by the batch.
        h0: weight offset (default 5, > 4). Any value is accepted here, as in :func:`local_field_weights`.
        periodic: wrap the lattice into a torus.

    Returns:
        ``(...)`` one energy per lattice, zero at the data.

    Raises:
        TypeError, ValueError: as for :func:`local_field_weights`; also when ``pred`` leaves [-1, 1].

    Example:
        >>> J = torch.zeros(2, 1, 2)
        >>> J[0, 0, 0] = 1.0
        >>> y = torch.tensor([[1.0, 1.0]])
        >>> local_field_energy(torch.tensor([[1.0, -1.0]]), y, J, h0=0.0)  # = E(pred) - E(y) = 1 - (-1)
        tensor(2.)
    """
    _check_energy_inputs({"pred": pred, "target": target}, couplings, periodic=periodic, spins=("target",))
    weights = target * _fields(target, couplings, periodic) + h0
    return (weights * (1 - target * pred)).sum(dim=(-2, -1))


# ----------------------------------------------------------------------------------------------------
# distributions over spins


def magnetisation(logits: Tensor) -> Tensor:
    r"""Mean spin :math:`m_i = q(+1) - q(-1) = \tanh(z_i / 2)` of the product distribution of ``logits``.

    Args:
        logits: ``(...)`` logits, any shape.

    Returns:
        ``(...)`` magnetisations in [-1, 1].

    Example:
        >>> magnetisation(torch.tensor([0.0, 100.0]))
        tensor([0., 1.])
    """
    return torch.tanh(logits / 2)


def spins_from_logits(logits: Tensor) -> Tensor:
    r"""Most likely configuration :math:`\hat y_i = \operatorname{sign}(z_i)`, with ties (z = 0) sent to +1.

    Args:
        logits: ``(...)`` logits, any shape.

    Returns:
        ``(...)`` spins +1 / -1 in the dtype of ``logits``.

    Example:
        >>> spins_from_logits(torch.tensor([-0.3, 0.0, 2.0]))
        tensor([-1.,  1.,  1.])
    """
    one = torch.ones_like(logits)
    return torch.where(logits >= 0, one, -one)


def _entropy(logits: Tensor) -> Tensor:
    p = torch.sigmoid(logits)
    per_site = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
    return per_site.sum(dim=(-2, -1))


def spin_entropy(logits: Tensor) -> Tensor:
    r"""Exact entropy :math:`S[q] = -\sum_i q_i \log q_i + (1 - q_i)\log(1 - q_i)`, :math:`q_i = \sigma(z_i)`.

    Computed with log-sigmoids, so it is finite with finite gradients for any finite logits (it tends to 0 as
    :math:`|z| \to \infty`).

    Args:
        logits: ``(..., L, L)`` one logit per site.

    Returns:
        ``(...)`` entropy (nats) of each lattice's product distribution.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        ValueError: ``logits`` has fewer than 2 dimensions or holds NaN / inf.

    Example:
        >>> spin_entropy(torch.zeros(1, 2))  # two fair coins
        tensor(1.3863)
    """
    _check_loss_inputs(logits).raise_first()
    return _entropy(logits)


def _free_energy(logits: Tensor, field: Tensor, temperature: float, log_partition: bool) -> Tensor:
    u = (2.0 / temperature) * field.detach().to(logits.dtype)
    p = torch.sigmoid(logits)
    # KL(Bern(sigmoid z) || Bern(sigmoid u)) with log sigmoid(x) = logsigmoid(x); exact zero when z == u.
    kl = p * (F.logsigmoid(logits) - F.logsigmoid(u)) + (1 - p) * (F.logsigmoid(-logits) - F.logsigmoid(-u))
    per_instance = kl.sum(dim=(-2, -1))
    if not log_partition:
        log_z = torch.logaddexp(u / 2, -u / 2).sum(dim=(-2, -1))
        per_instance = per_instance - log_z
    return per_instance


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

    Args:
        logits: ``(..., L, L)`` model logits :math:`z_i`.
        field: ``(..., L, L)`` coefficients :math:`a_i` of the linear energy, or fewer leading dimensions
            (expanded to ``logits``, never the other way). Detached: no gradient is taken through it.
        temperature: :math:`T > 0`.
        log_partition: include :math:`\log Z` (default) so that the loss is the KL divergence, >= 0.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions, after summing over sites.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor, or ``field`` not a real tensor.
        ValueError: ``field`` does not expand to the shape of ``logits``, either holds NaN / inf, or
            ``temperature`` / ``reduction`` is invalid.

    Example:
        >>> a = torch.tensor([[1.0, -2.0]])
        >>> free_energy_loss(2 * a / 0.5, a, temperature=0.5)  # at the Boltzmann distribution
        tensor(0.)
    """
    _check_temperature(temperature)
    checks = _check_loss_inputs(logits)
    _check_tensor(field, "field")
    try:
        field = field.expand_as(logits)
    except RuntimeError:
        raise ValueError(
            f"field must have the shape of logits {tuple(logits.shape)} (or fewer leading dimensions, expanded to "
            f"it), got {tuple(field.shape)}"
        ) from None
    checks.finite(field, "field")
    checks.raise_first()
    return reduce_per_structure(_free_energy(logits, field, temperature, log_partition), reduction)


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
    everywhere iff all :math:`w_i > 0` (guaranteed for :math:`h_0 > 4` with couplings in [-1, 1], and for
    :math:`h_0 > 0` when the data is a ground state). That condition is checked: an ``h0`` leaving some
    :math:`w_i \le 0` raises ``ValueError`` naming the smallest ``h0`` that would do for this data and the one
    that does for any data on these couplings (:math:`\max_i \sum_j |J_{ij}|`). Not invariant to the global
    flip of ``target``: see :func:`flip_invariant_loss`.

    Args:
        logits: ``(..., L, L)`` model logits.
        target: ``(..., L, L)`` data spins, +1 / -1 (float or integer dtype), the shape of ``logits``.
            Detached.
        couplings: ``(..., 2, L, L)`` bond couplings with the leading dimensions of ``logits``, or ``(2, L, L)``
            shared by the batch. Detached.
        h0: weight offset (default 5).
        temperature: :math:`T` (default 0.1, paper App. C.3).
        periodic: wrap the lattice into a torus.
        log_partition: include :math:`\log Z` (default): the loss is then a KL divergence, >= 0 and 0 at the
            optimum.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions, after summing over sites.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` is not floating point, or ``target`` / ``couplings`` not a real (non-bool) tensor.
        ValueError: shapes do not match (no broadcasting, e.g. of a ``(B, 1, L, L)`` CNN output), ``target`` is
            not +1 / -1, ``logits`` / ``couplings`` hold NaN / inf, open-boundary couplings are non-zero
            outside the lattice, ``h0`` leaves a weight :math:`w_i \le 0`, or ``temperature`` / ``reduction`` is
            invalid.

    Example:
        >>> J = torch.zeros(2, 1, 2)
        >>> J[0, 0, 0] = 1.0
        >>> y = torch.tensor([[1.0, 1.0]])
        >>> good = local_field_energy_loss(torch.tensor([[5.0, 5.0]]), y, J)
        >>> bad = local_field_energy_loss(torch.tensor([[5.0, -5.0]]), y, J)
        >>> bool(good < bad)
        True
    """
    _check_temperature(temperature)
    if not math.isfinite(float(h0)):
        raise ValueError(f"h0 must be a finite number, got {h0!r}")
    checks = _check_loss_inputs(logits, target=target, couplings=couplings, periodic=periodic)
    target = target.detach().to(logits.dtype)
    couplings = couplings.detach().to(logits.dtype)
    flip_cost = target * _fields(target, couplings, periodic)  # y_i h_i
    weights = flip_cost + h0
    checks.add((weights <= 0).any(), lambda: _h0_message(h0, weights, flip_cost, couplings, periodic))
    checks.raise_first()
    return reduce_per_structure(_free_energy(logits, weights * target, temperature, log_partition), reduction)


def _h0_message(h0: float, weights: Tensor, flip_cost: Tensor, couplings: Tensor, periodic: bool) -> str:
    bad = weights <= 0
    any_data = _fields(torch.ones_like(couplings[..., 0, :, :]), couplings.abs(), periodic)
    return (
        f"h0={h0:g} leaves {int(bad.sum())} of {bad.numel()} site weights w_i = y_i h_i + h0 <= 0 (smallest "
        f"{float(weights.min()):.4g}), so target is not the minimiser of local_field_energy_loss; for this target "
        f"and these couplings any h0 > {float(-flip_cost.min()):.4g} will do, and for any target on these couplings "
        f"h0 > {float(any_data.max()):.4g} (the largest sum of |J_ij| over a site's bonds; 4 for couplings in "
        "[-1, 1])"
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

    Args:
        logits: ``(..., L, L)`` model logits.
        couplings: ``(..., 2, L, L)`` bond couplings with the leading dimensions of ``logits``, or ``(2, L, L)``
            shared by the batch. Detached.
        temperature: :math:`T` (default 0.1).
        periodic: wrap the lattice into a torus.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions, after summing over sites.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` is not floating point, or ``couplings`` not a real (non-bool) tensor.
        ValueError: shapes do not match (no broadcasting, e.g. of a ``(B, 1, L, L)`` CNN output), ``logits`` /
            ``couplings`` hold NaN / inf, open-boundary couplings are non-zero outside the lattice, or
            ``temperature`` / ``reduction`` is invalid.

    Example:
        >>> J = torch.zeros(2, 1, 2)
        >>> J[0, 0, 0] = 1.0
        >>> aligned = true_energy_loss(torch.tensor([[9.0, 9.0]]), J)
        >>> opposed = true_energy_loss(torch.tensor([[9.0, -9.0]]), J)
        >>> bool(aligned < opposed)
        True
    """
    _check_temperature(temperature)
    _check_loss_inputs(logits, couplings=couplings, periodic=periodic).raise_first()
    energy = _energy(magnetisation(logits), couplings.detach().to(logits.dtype), periodic)
    return reduce_per_structure(energy / temperature - _entropy(logits), reduction)


# ----------------------------------------------------------------------------------------------------
# classification baselines


def spin_cross_entropy_loss(logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Per-site binary cross-entropy :math:`-\sum_i \log \sigma(y_i z_i)`, summed over the lattice.

    Args:
        logits: ``(..., L, L)`` model logits.
        target: ``(..., L, L)`` data spins, +1 / -1 (float or integer dtype), the shape of ``logits``.
            Detached.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions, after summing over sites.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` is not floating point, or ``target`` is bool / not a tensor.
        ValueError: the shapes differ (no broadcasting), ``target`` is not +1 / -1 (e.g. {0, 1}, 0.5, NaN),
            ``logits`` holds NaN / inf, or ``reduction`` is invalid.

    Example:
        >>> spin_cross_entropy_loss(torch.zeros(1, 2), torch.ones(1, 2))  # 2 log 2
        tensor(1.3863)
    """
    _check_loss_inputs(logits, target=target).raise_first()
    per_instance = -F.logsigmoid(target.detach().to(logits.dtype) * logits).sum(dim=(-2, -1))
    return reduce_per_structure(per_instance, reduction)


def spin_margin_loss(logits: Tensor, target: Tensor, *, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Per-site hinge (margin) loss :math:`\sum_i \max(0, \mathrm{margin} - y_i z_i)` over the lattice.

    Args:
        logits: ``(..., L, L)`` model logits.
        target: ``(..., L, L)`` data spins, +1 / -1 (float or integer dtype), the shape of ``logits``.
            Detached.
        margin: required logit margin (default 1).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions, after summing over sites.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError, ValueError: as for :func:`spin_cross_entropy_loss`.

    Example:
        >>> spin_margin_loss(torch.tensor([[2.0, 0.5]]), torch.ones(1, 2))
        tensor(0.5000)
    """
    _check_loss_inputs(logits, target=target).raise_first()
    per_instance = F.relu(margin - target.detach().to(logits.dtype) * logits).sum(dim=(-2, -1))
    return reduce_per_structure(per_instance, reduction)


def flip_invariant_loss(
    loss: Callable[..., Tensor], logits: Tensor, target: Tensor, *args, reduction: str = "mean", **kwargs
) -> Tensor:
    r"""Global-flip-invariant supervised spin loss :math:`\min(\ell(z, \mathbf y), \ell(z, -\mathbf y))`.

    The Ising energy is unchanged by flipping every spin, so a ground state is only defined up to that flip;
    this takes, per instance, the better of the target and its flip (the discrete analogue of the paper's
    symmetry-invariant losses). The gradient flows through the smaller branch.

    Args:
        loss: a loss ``loss(logits, target, *args, reduction=..., **kwargs)`` such as
            :func:`spin_cross_entropy_loss`, :func:`spin_margin_loss` or :func:`local_field_energy_loss` (its
            weights are flip-invariant). It validates the inputs.
        logits: ``(..., L, L)`` model logits.
        target: ``(..., L, L)`` data spins, +1 / -1.
        *args: passed on to ``loss`` (e.g. the couplings).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch dimensions.
        **kwargs: passed on to ``loss``.

    Returns:
        Scalar, or ``(...)`` for ``reduction="none"``.

    Raises:
        TypeError, ValueError: those of ``loss``.

    Example:
        >>> y = torch.tensor([[1.0, -1.0]])
        >>> a = flip_invariant_loss(spin_cross_entropy_loss, torch.tensor([[-3.0, 3.0]]), y)
        >>> b = spin_cross_entropy_loss(torch.tensor([[3.0, -3.0]]), y)
        >>> bool(torch.isclose(a, b))
        True
    """
    as_is = loss(logits, target, *args, reduction="none", **kwargs)
    flipped = loss(logits, -target, *args, reduction="none", **kwargs)
    return reduce_per_structure(torch.minimum(as_is, flipped), reduction)
