r"""The one loss vocabulary of the experiments: a spec grammar, its parser, and a factory over the public API.

Positional losses (shapes, molecules, timing) are written ``NAME[:SCHEME[:OPTIONS]]``:

=====================================  ==========================================================================
``mse``, ``mae``                       :func:`energyloss.mse_loss`, :func:`energyloss.mae_loss`
``kabsch_mse`` (alias ``kabsch``)      :func:`energyloss.kabsch_mse_loss`: MSE after the proper rigid alignment
``energy:SCHEME[:k0=X]``               :func:`energyloss.pair_energy_loss` over all pairs (Eq. 7)
``sparse_energy:SCHEME[:k=K,symmetrize,k0=X]``
                                       the same over one random globally rigid ``K``-regular graph per structure
                                       (:class:`energyloss.rigidity.RigidGraphPool`, default ``K = 2D``);
                                       ``symmetrize`` closes each graph under the target's automorphisms (Eq. 57)
=====================================  ==========================================================================

``SCHEME`` is any key of :data:`energyloss.coefficients.COEFFICIENT_SCHEMES` (``constant``, ``inverse``,
``inverse_square``, ``exp``); a bare ``energy`` means ``energy:exp``. Adding a scheme to that table makes it
available to every experiment; adding a loss is one entry of :data:`POSITION_LOSSES` and one branch of
:func:`make_position_loss`. Spin losses are their own family, :data:`SPIN_LOSSES`, parsed by
:func:`parse_spin_loss`.

Every spec has one canonical spelling (``str(spec)``), a display label (``spec.label``, e.g. ``energy[exp]``)
and a file-system tag (``spec.tag``, e.g. ``energy-exp``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = [
    "COEFFICIENT_LOSSES",
    "POSITION_LOSSES",
    "SPIN_LOSSES",
    "LossSpec",
    "coefficient_schemes",
    "draw_pool_edges",
    "make_coefficients",
    "make_position_loss",
    "parse_loss_spec",
    "parse_loss_specs",
    "parse_spin_loss",
]

#: Positional losses, name -> one-line description (the order is the order of tables).
POSITION_LOSSES: dict[str, str] = {
    "mse": "mean squared error",
    "mae": "mean absolute error",
    "kabsch_mse": "MSE after the proper rigid (Kabsch) alignment of the target",
    "energy": "pair spring energy over all pairs (Eq. 7)",
    "sparse_energy": "pair spring energy over a random globally rigid graph per structure (§4.3)",
}
#: Losses that take a coefficient scheme.
COEFFICIENT_LOSSES = ("energy", "sparse_energy")
_ALIASES = {"kabsch": "kabsch_mse"}
_DEFAULT_SCHEME = "exp"
_OPTION_NAMES = ("k", "k0", "symmetrize")

#: Spin losses (paper §6.3), name -> one-line description.
SPIN_LOSSES: dict[str, str] = {
    "cross_entropy": "per-site binary cross-entropy on the logits",
    "margin": "hinge on the spin margin",
    "local_energy": "local-field free-energy loss (Eq. 16)",
    "true_energy": "Ising free energy of the predicted spins, no labels",
    "cross_entropy_flip": "cross-entropy, minimum over the global flip",
    "margin_flip": "margin, minimum over the global flip",
    "local_energy_flip": "local-field energy, minimum over the global flip",
}


def coefficient_schemes() -> list[str]:
    """The coefficient scheme names accepted in specs (read from the library's registry at call time)."""
    from energyloss.coefficients import COEFFICIENT_SCHEMES

    return sorted(COEFFICIENT_SCHEMES)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A parsed positional loss spec (see the module docstring for the grammar).

    Attributes:
        name: a key of :data:`POSITION_LOSSES`.
        coefficients: the scheme of the energy losses, ``None`` for the others.
        k0: coefficient scale (``None``: the experiment's default).
        degree: ``k`` of the sparse graphs (``None``: ``2D``).
        symmetrize: close each sparse graph under the target's automorphisms (Eq. 57).
    """

    name: str
    coefficients: str | None = None
    k0: float | None = None
    degree: int | None = None
    symmetrize: bool = False

    def __str__(self) -> str:
        if self.coefficients is None:
            return self.name
        options = []
        if self.degree is not None:
            options.append(f"k={self.degree}")
        if self.symmetrize:
            options.append("symmetrize")
        if self.k0 is not None:
            options.append(f"k0={self.k0:g}")
        return f"{self.name}:{self.coefficients}" + (":" + ",".join(options) if options else "")

    @property
    def label(self) -> str:
        """Display name, e.g. ``energy[exp]``, ``sparse_energy[exp,sym]``, ``mse``.

        Example:
            >>> parse_loss_spec("energy").label, parse_loss_spec("sparse_energy:inverse:symmetrize").label
            ('energy[exp]', 'sparse_energy[inverse,sym]')
        """
        if self.coefficients is None:
            return self.name
        extra = [self.coefficients]
        if self.degree is not None:
            extra.append(f"k={self.degree}")
        if self.symmetrize:
            extra.append("sym")
        if self.k0 is not None:
            extra.append(f"k0={self.k0:g}")
        return f"{self.name}[{','.join(extra)}]"

    @property
    def tag(self) -> str:
        """A file-system-safe name, e.g. ``energy-exp``, ``sparse_energy-exp-k6-sym``.

        Example:
            >>> parse_loss_spec("sparse_energy:exp:k=6,symmetrize").tag, parse_loss_spec("kabsch").tag
            ('sparse_energy-exp-k6-sym', 'kabsch_mse')
        """
        if self.coefficients is None:
            return self.name
        parts = [self.name, self.coefficients]
        if self.degree is not None:
            parts.append(f"k{self.degree}")
        if self.symmetrize:
            parts.append("sym")
        if self.k0 is not None:
            parts.append(f"k0_{self.k0:g}")
        return "-".join(parts)


def _valid_names() -> str:
    return (
        ", ".join(POSITION_LOSSES)
        + " (energy losses take ':SCHEME', SCHEME one of "
        + ", ".join(coefficient_schemes())
        + ")"
    )


def parse_loss_spec(spec: str | LossSpec) -> LossSpec:
    """Parse ``NAME[:SCHEME[:OPTIONS]]`` into a :class:`LossSpec`; ``ValueError`` lists the valid names.

    Example:
        >>> parse_loss_spec("energy:inverse:k0=5")
        LossSpec(name='energy', coefficients='inverse', k0=5.0, degree=None, symmetrize=False)
        >>> str(parse_loss_spec("sparse_energy")), str(parse_loss_spec("kabsch"))
        ('sparse_energy:exp', 'kabsch_mse')
    """
    if isinstance(spec, LossSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a loss spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    name = _ALIASES.get(name.strip().replace("-", "_"), name.strip().replace("-", "_"))
    if name not in POSITION_LOSSES:
        raise ValueError(f"unknown loss {spec!r}; choose from {_valid_names()}")
    scheme, _, options = rest.partition(":")
    scheme = scheme.strip()
    if name not in COEFFICIENT_LOSSES:
        if rest:
            raise ValueError(f"loss {name!r} takes no coefficients or options, got {spec!r}")
        return LossSpec(name)
    scheme = scheme or _DEFAULT_SCHEME
    if scheme not in coefficient_schemes():
        raise ValueError(
            f"unknown coefficient scheme {scheme!r} in {spec!r}; choose from {', '.join(coefficient_schemes())}"
        )
    k0 = degree = None
    symmetrize = False
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = item.partition("=")
        try:
            if key == "k0" and eq:
                k0 = float(value)
                if not k0 > 0:
                    raise ValueError
            elif key == "k" and eq and name == "sparse_energy":
                degree = int(value)
                if degree < 1:
                    raise ValueError
            elif key == "symmetrize" and not eq and name == "sparse_energy":
                symmetrize = True
            else:
                allowed = "k0=X" + (", k=K, symmetrize" if name == "sparse_energy" else "")
                raise KeyError(allowed)
        except KeyError as err:
            raise ValueError(f"unknown option {item!r} in {spec!r}; {name} takes {err.args[0]}") from None
        except ValueError:
            raise ValueError(f"bad value in {item!r} of {spec!r}: k0 must be > 0 and k a positive integer") from None
    return LossSpec(name, scheme, k0, degree, symmetrize)


def parse_loss_specs(specs: str | Iterable[str | LossSpec]) -> tuple[LossSpec, ...]:
    """Parse a comma-separated list or a sequence of specs; options of one spec may not contain commas there.

    A comma-separated string splits on commas that start a new loss name, so
    ``"mse,sparse_energy:exp:k=6,symmetrize"`` is two specs.

    Example:
        >>> [str(s) for s in parse_loss_specs("mse,sparse_energy:exp:k=6,symmetrize,energy")]
        ['mse', 'sparse_energy:exp:k=6,symmetrize', 'energy:exp']
    """
    if isinstance(specs, str):
        pieces: list[str] = []
        for piece in (p.strip() for p in specs.split(",")):
            if not piece:
                continue
            head = piece.partition("=")[0].strip()
            if pieces and ":" in pieces[-1] and head in _OPTION_NAMES:
                pieces[-1] += "," + piece  # an option of the previous spec (k=6, symmetrize)
            else:
                pieces.append(piece)
        specs = pieces
    out = tuple(parse_loss_spec(s) for s in specs)
    if not out:
        raise ValueError("no loss given")
    return out


def parse_spin_loss(name: str) -> str:
    """Check a spin loss name (``ValueError`` lists them); returns it.

    Example:
        >>> parse_spin_loss("local_energy")
        'local_energy'
    """
    key = name.strip().replace("-", "_")
    if key not in SPIN_LOSSES:
        raise ValueError(f"unknown spin loss {name!r}; choose from {', '.join(SPIN_LOSSES)}")
    return key


PositionLoss = Callable[..., Tensor]


def make_coefficients(scheme: str, *, k0: float | None = None):
    """The coefficient object of a scheme name with scale ``k0`` (``None``: the scheme's own default).

    Example:
        >>> make_coefficients("inverse", k0=3.7)
        InverseCoefficients(k0=3.7, min_distance=1e-06)
    """
    from energyloss.coefficients import COEFFICIENT_SCHEMES

    if scheme not in COEFFICIENT_SCHEMES:
        raise ValueError(f"coefficients must be one of {sorted(COEFFICIENT_SCHEMES)}, got {scheme!r}")
    return COEFFICIENT_SCHEMES[scheme]() if k0 is None else COEFFICIENT_SCHEMES[scheme](k0=float(k0))


def make_position_loss(
    spec: str | LossSpec,
    *,
    dim: int,
    normalize: str | None = "pairs",
    k0: float | None = None,
    pool=None,
    generator: torch.Generator | None = None,
    coefficients=None,
) -> PositionLoss:
    r"""The per-structure loss ``fn(pred (B, N, D), target (B, N, D), mask=None (B, N)) -> (B,)`` of a spec.

    Built only from the public library API. The energy losses use ``normalize`` (``"pairs"``: a mean per pair,
    the units of the MSE; ``"atoms"``: per atom, EDM's convention; ``None``: the sum of Eq. 7) and the scale
    ``spec.k0``, else ``k0``, else the scheme's default.

    Args:
        spec: a spec string or :class:`LossSpec`.
        dim: the space dimension ``D`` (the sparse graphs' pool is built for it, ``k = 2D`` by default).
        normalize: see above; ignored by ``mse``, ``mae`` and ``kabsch_mse``.
        k0: default coefficient scale when the spec gives none.
        pool: a :class:`~energyloss.rigidity.RigidGraphPool` to draw sparse graphs from (default: a new pool of
            100 graphs per size, seed 0, for ``dim`` and the spec's degree).
        generator: ``torch.Generator`` of the per-structure graph draws.
        coefficients: a coefficient callable that replaces the scheme (e.g. feature-distance coefficients).

    Example:
        >>> y = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
        >>> make_position_loss("energy:exp", dim=2)(y.flip(-1), y)  # a reflection costs nothing
        tensor([0.])
        >>> make_position_loss("mse", dim=2)(y + 1, y)
        tensor([1.])
    """
    import energyloss as el

    spec = parse_loss_spec(spec)
    if spec.name == "mse":
        return lambda p, t, mask=None: el.mse_loss(p, t, mask=mask, reduction="none")
    if spec.name == "mae":
        return lambda p, t, mask=None: el.mae_loss(p, t, mask=mask, reduction="none")
    if spec.name == "kabsch_mse":
        return lambda p, t, mask=None: el.kabsch_mse_loss(p, t, mask=mask, reduction="none")
    if coefficients is None:
        coefficients = make_coefficients(spec.coefficients, k0=spec.k0 if spec.k0 is not None else k0)
    if spec.name == "energy":
        return lambda p, t, mask=None: el.pair_energy_loss(
            p, t, mask=mask, coefficients=coefficients, normalize=normalize, reduction="none"
        )
    if pool is None:
        pool = el.RigidGraphPool(dim, k=spec.degree, size=100, seed=0)

    def sparse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        edges = _draw_edges(pool, pred.shape[0], pred.shape[1], mask, generator)
        if spec.symmetrize:  # per structure: the closed graphs differ in size
            return torch.stack(
                [
                    el.pair_energy_loss(
                        pred[b, :n],
                        target[b, :n],
                        edges=e.to(pred.device),
                        coefficients=coefficients,
                        normalize=normalize,
                        reduction="none",
                    ).reshape(())
                    for b, (n, e) in enumerate(_symmetrized(edges, target, mask))
                ]
            )
        return el.pair_energy_loss(
            pred,
            target,
            mask=mask,
            edges=edges.to(pred.device),
            coefficients=coefficients,
            normalize=normalize,
            reduction="none",
        )

    return sparse


def draw_pool_edges(pool, num_atoms: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """One graph per structure from ``pool`` (a :class:`~energyloss.rigidity.RigidGraphPool`), for a padded batch.

    Structures are padded with real atoms first, so structure ``b`` with ``n_b`` atoms takes a graph of the pool
    for ``n_b`` vertices as it is. Draws are vectorised per atom count (one ``randint`` per distinct size, in
    increasing size). Shorter edge lists are padded with the pair ``(n_b, 0)``, which touches the first padded
    slot and is ignored by :func:`energyloss.pair_energy_loss` given the batch's mask (the largest structure has
    the longest list, so every padded list has a padded slot).

    Args:
        pool: graphs per vertex count. num_atoms: ``(B,)`` atom counts. generator: for the draws.

    Returns:
        ``(B, 2, E_max)`` LongTensor on the CPU.

    Example:
        >>> from energyloss.rigidity import RigidGraphPool
        >>> edges = draw_pool_edges(RigidGraphPool(3, size=2), torch.tensor([3, 4]))
        >>> edges.shape, edges[0].tolist()  # K3 padded to the 6 pairs of K4 with (3, 0)
        (torch.Size([2, 2, 6]), [[0, 0, 1, 3, 3, 3], [1, 2, 2, 0, 0, 0]])
    """
    counts = torch.as_tensor(num_atoms, dtype=torch.long).cpu()
    sizes = sorted(set(counts.tolist()))
    graphs = {s: pool.graphs(s) for s in sizes}
    e_max = max((g.shape[-1] for g in graphs.values()), default=0)
    out = torch.zeros(counts.numel(), 2, e_max, dtype=torch.long)
    for s, g in graphs.items():
        rows = torch.nonzero(counts == s).flatten()
        pick = torch.randint(g.shape[0], (rows.numel(),), generator=generator)
        e = g.shape[-1]
        out[rows, :, :e] = g[pick]
        if e < e_max:
            out[rows, 0, e:] = s
    return out


def _draw_edges(pool, b: int, n: int, mask: Tensor | None, generator) -> Tensor:
    """``(B, 2, E)``: one pool graph per structure (all of ``n`` vertices without a mask)."""
    if mask is None:
        graphs = pool.graphs(n)
        pick = torch.randint(graphs.shape[0], (b,), generator=generator)
        return graphs[pick]
    return draw_pool_edges(pool, mask.sum(-1), generator=generator)


def _symmetrized(edges: Tensor, target: Tensor, mask: Tensor | None) -> list[tuple[int, Tensor]]:
    """``(n_b, (2, E_b))`` per structure: its graph closed under its target's automorphisms (Eq. 57)."""
    from energyloss.rigidity import symmetrize_edges

    out = []
    for b in range(edges.shape[0]):
        n = int(mask[b].sum()) if mask is not None else target.shape[1]
        e = edges[b]
        e = e[:, (e[0] < n) & (e[1] < n)]
        out.append((n, symmetrize_edges(e, target[b, :n].detach().cpu()).edges))
    return out
