r"""A JODO-style joint 2-D/3-D diffusion model (Huang et al. 2023), with the energy loss as its position term.

This is a re-implementation from the description in the authors' code notes (``authors-code.md`` §5) and JODO's
paper; no JODO code is copied. It has three parts.

**The network** (:class:`JodoGraphTransformer`). A graph transformer over atoms and atom pairs of a padded batch.

* Node input: the noisy atom-type one-hot and formal-charge one-hot, the self-conditioning prediction of both, and
  a sinusoidal embedding of the diffusion time.
* Edge input: the noisy bond-type one-hot (channel 0 = no bond), the self-conditioning bond prediction, a Gaussian
  RBF encoding of the noisy distances ``|x_i - x_j|`` and of the self-conditioning distances, and the spatial
  adjacency ``1[d_ij < cutoff]``.
* Every block updates the edges from both end atoms (symmetric in ``i, j``) and the current distances. It runs
  multi-head attention biased by the edges; ``local_heads`` of the heads only see pairs within the spatial cutoff
  (JODO's extra adjacency heads). Then comes a feed-forward layer, and an EGNN-style coordinate update
  ``x_i += sum_j (x_i - x_j) / (d_ij + 1) * tanh(phi(e_ij)) / (n - 1)``.
* ``phi`` is symmetric and the normaliser is the same for every atom of a molecule, so the update keeps the
  centroid, and positions are E(3)-equivariant. Type, charge and bond outputs only see distances, so they are
  invariant. Everything is masked: padding never changes the outputs of real atoms.

**The diffusion** (:class:`JodoDiffusion`). A continuous-time VP-SDE with the cosine schedule of DPM-Solver
(``s = 0.008``, ``T = 0.9946``).

* Noising: ``z_t = alpha_t x + sigma_t eps`` for the centred positions (zero-CoM noise), the scaled atom-type and
  charge one-hots, and the bond one-hots (symmetric noise, zero on the diagonal and padding).
* The network predicts the clean data. With self-conditioning, half of the training steps first run a no-grad pass
  and feed its prediction back as input.
* Loss per molecule, as JODO's ``get_sde_graph_loss_fn``:
  ``sqrt(alpha_t / sigma_t) * (w_pos * L_pos + w_type * L_types + w_bond * L_bonds)``, with weights ``(1, 0.25,
  0.1)``. ``L_types`` is the squared error averaged over the type and charge channels and summed over atoms.
  ``L_bonds`` is the squared error averaged over the bond channels and summed over all ordered pairs.
* The position term is any spec of the loss vocabulary (:func:`~energyloss.experiments.losses.make_position_loss`):

  - ``kabsch_mse`` (the default) is JODO's *noise-aligned* loss: the clean positions are Kabsch-rotated onto the
    noisy positions ``z_t``, not onto the prediction. The squared error is averaged over the 3 coordinates and
    summed over atoms.
  - ``mse`` is the same without the alignment (JODO's ``_no_align`` configs).
  - ``energy:SCHEME`` and ``sparse_energy:...`` are the pair energy with the 1/n ("atoms") normalisation of the
    authors' JODO integration. Their default scale k0 is JODO's: 24 (exp), 3.7 (inverse), 9 (inverse_square),
    1 (constant).
  - ``mae`` goes to the vocabulary's per-atom mean.

**Sampling** (:meth:`JodoDiffusion.sample`). Ancestral sampling with the data-prediction posterior on a uniform time
grid from ``T`` to ``1e-3``, then to 0 (as JODO). Atom counts are drawn from the training histogram. Decoding is
argmax for atom types, charges and bond types (bonds are symmetrised first).

Differences from JODO are listed in :data:`DIFFERENCES_FROM_JODO`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..losses import make_position_loss, parse_loss_spec
from .data import sample_node_counts

__all__ = [
    "DIFFERENCES_FROM_JODO",
    "JODO_K0",
    "CosineSchedule",
    "JodoConfig",
    "JodoDiffusion",
    "JodoGraphTransformer",
    "JodoSample",
    "TOY_MOLECULES",
    "toy_bonded_set",
]

#: JODO's energy-loss scales per coefficient scheme (authors' ``JODO/energy_loss.py``, §1.2 of the notes).
JODO_K0: dict[str, float] = {"exp": 24.0, "inverse": 3.7, "inverse_square": 9.0, "constant": 1.0}

#: Where this model departs from JODO's released configuration, one line each.
DIFFERENCES_FROM_JODO: tuple[str, ...] = (
    "bonds are a one-hot over (none, single, double, triple[, aromatic]); JODO compresses them to 2 channels "
    "(exists, order / 3)",
    "formal charges are a one-hot over the charge values; JODO feeds the charge as one scalar channel (so the "
    "type loss here averages over 5 + 3 channels, JODO's over 5 + 1)",
    "one-hots are scaled by type_scale / charge_scale (default 0.25, EDM's 1/4); JODO maps them with its "
    "normalize_factors '1, 4, 4, 1' and centring",
    "training time t ~ U[1e-5, T] with T = 0.9946 (JODO draws up to 1, where the float32 cosine schedule is singular)",
    "the network is a compact re-implementation (edge-biased attention, local heads within the cutoff, EGNN "
    "coordinate updates), not DGT_concat layer by layer; the time embedding uses t, not the log-SNR",
)


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class JodoConfig:
    """Hyper-parameters of the JODO-style model (defaults: JODO's QM9 configuration where it applies).

    Attributes:
        elements: atomic numbers of the atom-type channels (QM9: H, C, N, O, F).
        charges: the formal-charge values of the charge channels.
        bond_orders: number of bond channels including "no bond" (4: none, single, double, triple; 5 adds
            aromatic = 4).
        hidden: node width (JODO: 256). edge_hidden: edge width.
        layers: blocks (JODO: 8). heads: attention heads (JODO: 16). local_heads: heads restricted to pairs
            within ``cutoff`` (JODO: 2 extra adjacency heads).
        mlp_ratio: feed-forward width ratio (JODO: 2). dropout: JODO 0.1.
        rbf: Gaussian RBF count; rbf_max: their largest centre (Angstrom).
        cutoff: spatial adjacency threshold in Angstrom (JODO QM9: 2).
        coords_range: bound of each layer's coordinate step (tanh scale).
        self_cond: self-conditioning.
        type_scale, charge_scale, bond_scale: scale of the clean one-hots.
    """

    elements: tuple[int, ...] = (1, 6, 7, 8, 9)
    charges: tuple[int, ...] = (-1, 0, 1)
    bond_orders: int = 4
    hidden: int = 256
    edge_hidden: int = 64
    layers: int = 8
    heads: int = 16
    local_heads: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    rbf: int = 32
    rbf_max: float = 8.0
    cutoff: float = 2.0
    coords_range: float = 2.0
    self_cond: bool = True
    type_scale: float = 0.25
    charge_scale: float = 0.25
    bond_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0 <= self.local_heads <= self.heads:
            raise ValueError(f"local_heads must be in [0, heads]; got {self.local_heads}")
        if self.bond_orders not in (4, 5):
            raise ValueError(f"bond_orders must be 4 (none, 1-3) or 5 (with aromatic); got {self.bond_orders}")
        if 0 not in self.charges:
            raise ValueError("charges must include 0")

    @property
    def n_types(self) -> int:
        return len(self.elements)

    @property
    def node_features(self) -> int:
        """Atom-type plus charge channels."""
        return len(self.elements) + len(self.charges)


# ----------------------------------------------------------------------------------------------------------------
# The network


def _pair_mask(mask: Tensor) -> Tensor:
    """``(B, N, N)`` bool: both atoms real and ``i != j``."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def _distances(x: Tensor) -> Tensor:
    """``(B, N, N)`` distances with a safe gradient at zero (diagonal and padding)."""
    diff = x[:, :, None, :] - x[:, None, :, :]
    return torch.sqrt((diff * diff).sum(-1) + 1e-8)


class _GaussianRBF(nn.Module):
    def __init__(self, count: int, max_distance: float) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, max_distance, count))
        self.gamma = 0.5 / (max_distance / max(count - 1, 1)) ** 2

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d[..., None] - self.centres) ** 2)


def _time_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half - 1, 1))
    args = (t * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], -1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], -1)


class _Block(nn.Module):
    """One block: edge update, edge-biased attention (some heads local), feed-forward, coordinate update."""

    def __init__(self, cfg: JodoConfig) -> None:
        super().__init__()
        h, e = cfg.hidden, cfg.edge_hidden
        self.heads, self.local_heads, self.cutoff = cfg.heads, cfg.local_heads, cfg.cutoff
        self.coords_range = cfg.coords_range
        self.rbf = _GaussianRBF(cfg.rbf, cfg.rbf_max)
        self.node_to_edge = nn.Linear(h, 2 * e)
        self.edge_mlp = nn.Sequential(nn.Linear(3 * e + cfg.rbf + 1, 2 * e), nn.SiLU(), nn.Linear(2 * e, e))
        self.edge_norm = nn.LayerNorm(e)
        self.norm1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.edge_bias = nn.Linear(e, cfg.heads)
        self.edge_gate = nn.Linear(e, cfg.heads)
        self.out = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h)
        width = int(cfg.mlp_ratio * h)
        self.ffn = nn.Sequential(nn.Linear(h, width), nn.SiLU(), nn.Dropout(cfg.dropout), nn.Linear(width, h))
        self.drop = nn.Dropout(cfg.dropout)
        self.coord_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, 1))
        nn.init.zeros_(self.coord_mlp[-1].weight)
        nn.init.zeros_(self.coord_mlp[-1].bias)

    def forward(self, h: Tensor, e: Tensor, x: Tensor, mask: Tensor, pair: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, width = h.shape
        pf, nf = pair.to(h.dtype)[..., None], mask.to(h.dtype)[..., None]
        d = _distances(x)
        near = (d < self.cutoff) & pair
        # edges: symmetric in (i, j)
        a, c = self.node_to_edge(h).chunk(2, -1)
        ends = torch.cat([a[:, :, None] + a[:, None, :], c[:, :, None] * c[:, None, :]], -1)
        e_in = torch.cat([self.edge_norm(e), ends, self.rbf(d), near.to(h.dtype)[..., None]], -1)
        e = (e + self.edge_mlp(e_in)) * pf
        # attention over real atoms (self included), biased and gated by the edges
        q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, width // self.heads).unbind(2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(width // self.heads)
        scores = scores + self.edge_bias(e).permute(0, 3, 1, 2)
        eye = torch.eye(n, dtype=torch.bool, device=h.device)
        allowed = (mask[:, :, None] & mask[:, None, :])[:, None].expand(b, self.heads, n, n).clone()
        if self.local_heads:
            local = (near | (eye & mask[:, :, None]))[:, None]
            allowed[:, self.heads - self.local_heads :] &= local
        scores = scores.masked_fill(~allowed, float("-inf"))
        attn = torch.softmax(scores, -1).nan_to_num(0.0)  # all-masked rows (padding) give zeros
        attn = attn * torch.sigmoid(self.edge_gate(e)).permute(0, 3, 1, 2)
        msg = torch.einsum("bhij,bjhd->bihd", self.drop(attn), v).reshape(b, n, width)
        h = (h + self.out(msg)) * nf
        h = (h + self.ffn(self.norm2(h))) * nf
        # coordinates: E(3)-equivariant, centroid-preserving
        n_atoms = mask.sum(-1).clamp(min=2).to(h.dtype)
        w = torch.tanh(self.coord_mlp(e)).squeeze(-1) * pair.to(h.dtype) * self.coords_range
        diff = (x[:, :, None, :] - x[:, None, :, :]) / (d[..., None] + 1.0)
        x = (x + (w[..., None] * diff).sum(2) / (n_atoms - 1)[:, None, None]) * nf
        return h, e, x


class JodoGraphTransformer(nn.Module):
    """The denoiser: ``(x, h, e, t, mask, cond) -> (x0, h0, e0)`` on padded batches.

    Shapes: ``x (B, N, 3)``, ``h (B, N, F)`` (type + charge channels), ``e (B, N, N, K)`` (bond channels),
    ``t (B,)``, ``mask (B, N)`` bool; ``cond`` is ``None`` or a previous prediction ``(x0, h0, e0)``.
    """

    def __init__(self, cfg: JodoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        f, k = cfg.node_features, cfg.bond_orders
        self.rbf = _GaussianRBF(cfg.rbf, cfg.rbf_max)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.node_in = nn.Linear(2 * f, cfg.hidden)
        self.edge_in = nn.Sequential(
            nn.Linear(2 * k + 2 * cfg.rbf + 1, cfg.edge_hidden), nn.SiLU(), nn.Linear(cfg.edge_hidden, cfg.edge_hidden)
        )
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.layers)])
        self.node_out = nn.Sequential(
            nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, f)
        )
        self.edge_out = nn.Sequential(
            nn.LayerNorm(cfg.edge_hidden),
            nn.Linear(cfg.edge_hidden, cfg.edge_hidden),
            nn.SiLU(),
            nn.Linear(cfg.edge_hidden, k),
        )

    def forward(
        self,
        x: Tensor,
        h: Tensor,
        e: Tensor,
        t: Tensor,
        mask: Tensor,
        cond: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        mask = mask.bool()
        pair = _pair_mask(mask)
        nf, pf = mask.to(x.dtype)[..., None], pair.to(x.dtype)[..., None]
        x = _center(x * nf, mask)
        if cond is None:
            cx, ch, ce = torch.zeros_like(x), torch.zeros_like(h), torch.zeros_like(e)
            cd = torch.zeros_like(e[..., 0])
        else:
            cx, ch, ce = cond
            cd = _distances(cx) * pair.to(x.dtype)
        d = _distances(x)
        hid = (
            self.node_in(torch.cat([h, ch], -1))
            + self.time_mlp(_time_embedding(t.to(x.dtype), self.cfg.hidden))[:, None]
        )
        hid = hid * nf
        near = ((d < self.cfg.cutoff) & pair).to(x.dtype)[..., None]
        e_in = torch.cat([e, ce, self.rbf(d), self.rbf(cd) * pf, near], -1)
        eh = self.edge_in(e_in)
        eh = 0.5 * (eh + eh.transpose(1, 2)) * pf
        for block in self.blocks:
            hid, eh, x = block(hid, eh, x, mask, pair)
        x0 = _center(x, mask)
        h0 = self.node_out(hid) * nf
        e0 = self.edge_out(eh)
        e0 = 0.5 * (e0 + e0.transpose(1, 2)) * pf
        return x0, h0, e0


def _center(x: Tensor, mask: Tensor) -> Tensor:
    """Subtract each molecule's centroid over real atoms; padding is set to 0."""
    m = mask.to(x.dtype)[..., None]
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
    return (x - mean) * m


# ----------------------------------------------------------------------------------------------------------------
# The diffusion


class CosineSchedule:
    """DPM-Solver's continuous cosine VP schedule: ``alpha_t = cos(((t + s)/(1 + s)) pi/2) / cos((s/(1 + s)) pi/2)``."""

    s = 0.008
    T = 0.9946

    def log_alpha(self, t: Tensor) -> Tensor:
        s = self.s
        log0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))
        log_alpha = torch.log(torch.cos((t.double() + s) / (1.0 + s) * math.pi / 2.0)) - log0
        # alpha_t <= 1 for t >= 0; at t = 0 torch's vectorised cos/log and libm's may differ by an ulp, and a
        # log_alpha of +1e-17 would make sigma_t = sqrt(-expm1(2 log_alpha)) NaN (seen on an AMD EPYC)
        return log_alpha.clamp(max=0.0)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` in the dtype of ``t`` (computed in float64)."""
        la = self.log_alpha(t)
        alpha = torch.exp(la)
        sigma = torch.sqrt(-torch.expm1(2.0 * la))
        return alpha.to(t.dtype), sigma.to(t.dtype)


@dataclasses.dataclass
class JodoSample:
    """Decoded samples of :meth:`JodoDiffusion.sample` (padded, real atoms first).

    Attributes:
        positions: ``(B, N, 3)`` Angstrom, centred, 0 on padding.
        atomic_numbers: ``(B, N)`` int64, 0 on padding.
        formal_charges: ``(B, N)`` int64, 0 on padding.
        bonds: ``(B, N, N)`` int64 bond orders (0 none, 1-3, 4 aromatic), symmetric, zero diagonal and padding.
        mask: ``(B, N)`` bool.
    """

    positions: Tensor
    atomic_numbers: Tensor
    formal_charges: Tensor
    bonds: Tensor
    mask: Tensor

    def molecules(self):
        """The samples as a :class:`~.data.Molecules` store and a :class:`~.bonds.BondGraphs` store."""
        from .bonds import BondGraphs
        from .data import Molecules

        mols = Molecules.from_padded(self.positions.cpu(), self.atomic_numbers.cpu(), self.mask.cpu())
        graphs = BondGraphs.from_dense(self.bonds.cpu(), self.mask.cpu(), self.formal_charges.cpu())
        return mols, graphs


def _randn(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise on ``like``'s device and dtype, drawn on the generator's device."""
    device = like.device if generator is None else generator.device
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class JodoDiffusion(nn.Module):
    """Joint diffusion of positions, atom types, formal charges and bonds around a :class:`JodoGraphTransformer`.

    Args:
        cfg: the model configuration.
        position_loss: a spec of the loss vocabulary (see the module docstring); default JODO's ``kabsch_mse``.
        loss_weights: ``(positions, atom types + charges, bonds)`` (JODO: ``(1, 0.25, 0.1)``).
        k0: scale of the energy coefficients (default: :data:`JODO_K0` of the scheme, unless the spec gives one).
    """

    def __init__(
        self,
        cfg: JodoConfig | None = None,
        *,
        position_loss: str = "kabsch_mse",
        loss_weights: tuple[float, float, float] = (1.0, 0.25, 0.1),
        k0: float | None = None,
        t_min: float = 1e-5,
    ) -> None:
        super().__init__()
        self.cfg = cfg or JodoConfig()
        self.net = JodoGraphTransformer(self.cfg)
        self.schedule = CosineSchedule()
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.t_min = float(t_min)
        self.position_spec = parse_loss_spec(position_loss)
        spec = self.position_spec
        self._vocab_loss = None
        if spec.name not in ("kabsch_mse", "mse"):
            scale = k0 if k0 is not None else JODO_K0.get(spec.coefficients or "", None)
            self._vocab_loss = make_position_loss(spec, dim=3, normalize="atoms", k0=scale)
        charges = torch.tensor(self.cfg.charges, dtype=torch.int64)
        self.register_buffer("charge_values", charges, persistent=False)
        self.register_buffer("element_values", torch.tensor(self.cfg.elements, dtype=torch.int64), persistent=False)

    # encoding ---------------------------------------------------------------------------------------------------
    def encode(
        self, positions: Tensor, atomic_numbers: Tensor, mask: Tensor, bonds: Tensor, formal_charges: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Clean ``(x, h, e)``: centred positions, scaled type+charge one-hots, scaled bond one-hots (0 off pairs)."""
        mask = mask.bool()
        z = atomic_numbers.long()
        type_idx = (z[..., None] == self.element_values.to(z.device)).long().argmax(-1)
        if bool((~(z[..., None] == self.element_values.to(z.device)).any(-1) & mask).any()):
            raise ValueError(f"atomic numbers outside the model's elements {self.cfg.elements}")
        fc = formal_charges.long()
        charge_hit = fc[..., None] == self.charge_values.to(fc.device)
        if bool((~charge_hit.any(-1) & mask).any()):
            raise ValueError(f"formal charges outside the model's charge values {self.cfg.charges}")
        nf = mask.to(positions.dtype)[..., None]
        h = (
            torch.cat(
                [
                    nn.functional.one_hot(type_idx, self.cfg.n_types).to(positions.dtype) * self.cfg.type_scale,
                    charge_hit.to(positions.dtype) * self.cfg.charge_scale,
                ],
                -1,
            )
            * nf
        )
        b = bonds.long()
        if bool((b >= self.cfg.bond_orders).any()) or bool((b < 0).any()):
            raise ValueError(f"bond orders must be in [0, {self.cfg.bond_orders - 1}]")
        pf = _pair_mask(mask).to(positions.dtype)[..., None]
        e = nn.functional.one_hot(b, self.cfg.bond_orders).to(positions.dtype) * self.cfg.bond_scale * pf
        return _center(positions, mask), h, e

    def _noise(self, x: Tensor, h: Tensor, e: Tensor, mask: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor]:
        nf = mask.to(x.dtype)[..., None]
        ex = _center(_randn(x.shape, x, generator), mask)
        eh = _randn(h.shape, x, generator) * nf
        ee = _randn(e.shape, x, generator)
        ee = torch.triu(ee.permute(0, 3, 1, 2), diagonal=1)
        ee = (ee + ee.transpose(-1, -2)).permute(0, 2, 3, 1) * _pair_mask(mask).to(x.dtype)[..., None]
        return ex, eh, ee

    # loss -------------------------------------------------------------------------------------------------------
    def loss(
        self,
        positions: Tensor,
        atomic_numbers: Tensor,
        mask: Tensor,
        bonds: Tensor,
        formal_charges: Tensor,
        *,
        t: Tensor | None = None,
        self_condition: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The training loss of a padded batch: ``{"loss": scalar, "positions", "types", "bonds", "weight": (B,)}``.

        ``t`` (``(B,)``) and ``self_condition`` fix the otherwise random time and self-conditioning choice.
        """
        mask = mask.bool()
        x, h, e = self.encode(positions, atomic_numbers, mask, bonds, formal_charges)
        bsz = x.shape[0]
        if t is None:
            draw = x.device if generator is None else generator.device
            u = torch.rand(bsz, device=draw, dtype=x.dtype, generator=generator).to(x.device)
            t = u * (self.schedule.T - self.t_min) + self.t_min
        alpha, sigma = self.schedule.marginal(t)
        ex, eh, ee = self._noise(x, h, e, mask, generator)
        zx, zh, ze = (_expand(alpha, v) * v + _expand(sigma, n) * n for v, n in ((x, ex), (h, eh), (e, ee)))
        if self_condition is None:
            draw_device = "cpu" if generator is None else generator.device
            self_condition = self.cfg.self_cond and bool(torch.rand((), generator=generator, device=draw_device) < 0.5)
        cond = None
        if self_condition:
            with torch.no_grad():
                cond = tuple(v.detach() for v in self.net(zx, zh, ze, t, mask, None))
        px, ph, pe = self.net(zx, zh, ze, t, mask, cond)
        l_pos = self.position_term(px, x, zx, mask)
        l_types = ((ph - h) ** 2).mean(-1).sum(-1)
        l_bonds = ((pe - e) ** 2).mean(-1).sum((-1, -2))
        w0, w1, w2 = self.loss_weights
        weight = torch.sqrt(alpha / sigma)
        per = weight * (w0 * l_pos + w1 * l_types + w2 * l_bonds)
        return {"loss": per.mean(), "positions": l_pos, "types": l_types, "bonds": l_bonds, "weight": weight}

    def position_term(self, pred: Tensor, target: Tensor, noisy: Tensor, mask: Tensor) -> Tensor:
        """Per-molecule position loss ``(B,)`` of the configured spec (the target is the centred clean positions)."""
        import energyloss as el

        if self.position_spec.name == "kabsch_mse":
            # JODO's noise alignment: rotate the clean target onto the noisy sample (both centred), no gradient
            rot, _ = el.kabsch_align(target.detach(), noisy.detach(), mask=mask)
            target = target @ rot.transpose(-1, -2)
            target = _center(target, mask)
        if self._vocab_loss is None:
            return ((pred - target) ** 2).mean(-1).mul(mask.to(pred.dtype)).sum(-1)
        return self._vocab_loss(pred, target.detach(), mask)

    # sampling ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        num_atoms: Tensor | Sequence[int] | None = None,
        *,
        histogram: Mapping[int, int] | None = None,
        num_samples: int | None = None,
        steps: int = 1000,
        eps: float = 1e-3,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> JodoSample:
        """Ancestral sampling (data-prediction posterior), decoded to atoms, charges and a bond-order matrix.

        Give ``num_atoms`` per molecule, or a ``histogram`` of training atom counts and ``num_samples``.
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        if num_atoms is None:
            if histogram is None or num_samples is None:
                raise ValueError("give num_atoms, or histogram and num_samples")
            cpu_gen = None
            if generator is not None and generator.device.type == "cpu":
                cpu_gen = generator
            num_atoms = sample_node_counts(histogram, num_samples, generator=cpu_gen)
        n = torch.as_tensor(num_atoms, dtype=torch.int64).reshape(-1)
        bsz, width = int(n.shape[0]), int(n.max())
        mask = (torch.arange(width)[None] < n[:, None]).to(device)
        dtype = torch.float32
        shapes = (
            torch.zeros(bsz, width, 3, device=device, dtype=dtype),
            torch.zeros(bsz, width, self.cfg.node_features, device=device, dtype=dtype),
            torch.zeros(bsz, width, width, self.cfg.bond_orders, device=device, dtype=dtype),
        )
        gen = generator
        zx, zh, ze = self._noise(*shapes, mask, gen)
        ts = torch.linspace(self.schedule.T, eps, steps, device=device, dtype=torch.float64)
        ss = torch.cat([ts[1:], torch.zeros(1, device=device, dtype=torch.float64)])
        cond = None
        px = ph = pe = None
        for t, s in zip(ts, ss, strict=True):
            a_t, s_t = (v.to(dtype) for v in self.schedule.marginal(t))
            if float(s) > 0:
                a_s, s_s = (v.to(dtype) for v in self.schedule.marginal(s))
            else:
                a_s, s_s = torch.ones((), device=device), torch.zeros((), device=device)
            a_ts = a_t / a_s
            var_ts = s_t**2 - a_ts**2 * s_s**2
            std = torch.sqrt(var_ts.clamp(min=0)) * s_s / s_t
            c_z, c_x = a_ts * s_s**2 / s_t**2, a_s * var_ts / s_t**2
            tb = torch.full((bsz,), float(t), device=device, dtype=dtype)
            px, ph, pe = self.net(zx, zh, ze, tb, mask, cond if self.cfg.self_cond else None)
            cond = (px, ph, pe)
            nx, nh, ne = self._noise(zx, zh, ze, mask, gen)
            zx = c_z * zx + c_x * px + std * nx
            zh = c_z * zh + c_x * ph + std * nh
            ze = c_z * ze + c_x * pe + std * ne
        return self.decode(px, ph, pe, mask)

    def decode(self, x: Tensor, h: Tensor, e: Tensor, mask: Tensor) -> JodoSample:
        """Argmax decoding of a (predicted) clean ``(x, h, e)``."""
        mask = mask.bool()
        k = self.cfg.n_types
        types = h[..., :k].argmax(-1)
        z = self.element_values.to(types.device)[types] * mask
        fc = self.charge_values.to(types.device)[h[..., k:].argmax(-1)] * mask
        sym = 0.5 * (e + e.transpose(1, 2))
        bonds = sym.argmax(-1) * _pair_mask(mask)
        return JodoSample(_center(x, mask), z.long(), fc.long(), bonds.long(), mask)


# ----------------------------------------------------------------------------------------------------------------
# A tiny hand-built bonded set (tests and smoke runs)


def _toy_molecules() -> tuple[tuple[list, list[int], list[tuple[int, int, int]]], ...]:
    a = 0.629  # methane: C-H 1.09 A along the cube diagonals
    water = ([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]], [8, 1, 1], [(0, 1, 1), (0, 2, 1)])
    methane = (
        [[0.0, 0.0, 0.0], [a, a, a], [-a, -a, a], [-a, a, -a], [a, -a, -a]],
        [6, 1, 1, 1, 1],
        [(0, k, 1) for k in range(1, 5)],
    )
    ethanol = (
        [
            [-1.17, -0.40, 0.0],
            [0.0, 0.56, 0.0],
            [1.19, -0.21, 0.0],
            [1.94, 0.39, 0.0],
            [-2.11, 0.16, 0.0],
            [-1.13, -1.04, 0.88],
            [-1.13, -1.04, -0.88],
            [-0.04, 1.20, 0.88],
            [-0.04, 1.20, -0.88],
        ],
        [6, 6, 8, 1, 1, 1, 1, 1, 1],
        [(0, 1, 1), (1, 2, 1), (2, 3, 1), (0, 4, 1), (0, 5, 1), (0, 6, 1), (1, 7, 1), (1, 8, 1)],
    )
    ring = [[1.39 * math.cos(k * math.pi / 3), 1.39 * math.sin(k * math.pi / 3), 0.0] for k in range(6)]
    hs = [[2.47 * math.cos(k * math.pi / 3), 2.47 * math.sin(k * math.pi / 3), 0.0] for k in range(6)]
    benzene = (
        ring + hs,
        [6] * 6 + [1] * 6,
        [(k, (k + 1) % 6, 2 if k % 2 == 0 else 1) for k in range(6)] + [(k, k + 6, 1) for k in range(6)],
    )
    return water, methane, ethanol, benzene


#: Water, methane, ethanol and Kekule benzene built by hand: ``(positions (Angstrom), Z, [(i, j, order)])``;
#: all formal charges are 0.
TOY_MOLECULES = _toy_molecules()


def toy_bonded_set(repeat: int = 1):
    """:data:`TOY_MOLECULES` ``repeat`` times, as a :class:`~.data.Molecules` store and its :class:`~.bonds.BondGraphs`.

    Example:
        >>> mols, graphs = toy_bonded_set(2)
        >>> len(mols), graphs.num_bonds.tolist()[:4]
        (8, [2, 4, 8, 12])
    """
    from .bonds import BondGraphs
    from .data import Molecules

    items = list(TOY_MOLECULES) * int(repeat)
    mols = Molecules.from_list([(torch.tensor(p), torch.tensor(z)) for p, z, _ in items])
    graphs = BondGraphs.from_list([(len(z), bonds, [0] * len(z)) for _, z, bonds in items])
    return mols, graphs
