r"""Denoisers for molecule diffusion (paper §6.2): the EGNN of EDM and the non-equivariant GNN of "GDM".

Both networks map a noisy molecule to a noise prediction, on EDM's dense padded layout:

- ``x: (B, N, 3)`` positions, ``h: (B, N, F)`` atom features (scaled one-hot and charge), ``t: (B,)`` the
  diffusion time in ``[0, 1]``, ``mask: (B, N)`` bool (``True`` for real atoms);
- output ``(eps_x: (B, N, 3), eps_h: (B, N, F))``, with ``eps_x`` centred over the real atoms (zero centre of
  mass, the subspace EDM's position noise lives in) and both outputs zero on padding.

Messages run over every ordered pair of real atoms (the molecule's complete graph). A message is *exactly*
zero when either end is padding (``torch.where`` on the pair mask, not a multiplication that could meet an
``inf``), so nothing a padded slot holds reaches a real atom: :class:`GNNDynamics` fixes the leak of the
authors' GDM, whose message graph includes padded atoms (authors-code.md §3.4).

- :class:`EGNNDynamics` ("EDM"): E(3)-equivariant. Messages see invariant features (the current and initial
  squared distances); coordinates move along :math:`x_i - x_j` by gated amounts; the output is
  :math:`x^{(L)} - x` re-centred. Rotating, reflecting or translating the input rotates / reflects the position
  output and leaves the feature output unchanged (tested).
- :class:`GNNDynamics` ("GDM"): a message-passing network whose node input is ``[x, h, t]``, i.e. coordinates are
  plain features and the network is not equivariant. "GDM-aug" is the same network trained on molecules rotated
  by :func:`energyloss.testing.random_rotations` (Haar-uniform on SO(3); the authors compose three Euler
  rotations with uniform angles, which is not Haar-uniform).

The first layer of every pair MLP is applied as ``W_a h_i + W_b h_j + W_e e_ij`` (one linear map on the
concatenation, computed without materialising the ``(B, N, N, 2F)`` concatenation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from energyloss.geometry import center

__all__ = ["EGNNDynamics", "GNNDynamics", "build_dynamics", "count_parameters"]


def _check_inputs(x: Tensor, h: Tensor, t: Tensor, mask: Tensor, in_node_nf: int) -> None:
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"x must have shape (B, N, 3), got {tuple(x.shape)}")
    if h.shape != (*x.shape[:2], in_node_nf):
        raise ValueError(f"h must have shape {(*x.shape[:2], in_node_nf)}, got {tuple(h.shape)}")
    if t.shape != x.shape[:1]:
        raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")


def _pair_mask(mask: Tensor, *, self_loops: bool) -> Tensor:
    """``(B, N, N)`` bool: both ends real (and ``i != j`` unless ``self_loops``)."""
    pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    if not self_loops:
        pair = pair & ~torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return pair


class _PairLinear(nn.Module):
    """``W [h_i, h_j, e_ij] + b`` for all pairs, computed as ``W_a h_i + W_b h_j + W_e e_ij + b``."""

    def __init__(self, node_nf: int, edge_nf: int, out_nf: int) -> None:
        super().__init__()
        self.src = nn.Linear(node_nf, out_nf)
        self.dst = nn.Linear(node_nf, out_nf, bias=False)
        self.edge = nn.Linear(edge_nf, out_nf, bias=False) if edge_nf else None

    def forward(self, h: Tensor, edge_attr: Tensor | None) -> Tensor:
        out = self.src(h).unsqueeze(2) + self.dst(h).unsqueeze(1)  # (B, N, N, out): row i, column j
        if self.edge is not None:
            out = out + self.edge(edge_attr)
        return out


class _MessageBlock(nn.Module):
    """One message-passing update of node features (EDM's GCL): gated pair messages, sum, residual node MLP.

    .. math:: m_{ij} = \\phi_e(h_i, h_j, e_{ij})\\,\\sigma(w^\\top \\phi_e(\\cdot)), \\quad
        h_i \\leftarrow h_i + \\phi_h\\big(h_i, \\tfrac{1}{Z}\\textstyle\\sum_{j} m_{ij}\\big)
    """

    def __init__(self, nf: int, edge_nf: int, *, attention: bool, aggregation_norm: float) -> None:
        super().__init__()
        self.pair = _PairLinear(nf, edge_nf, nf)
        self.edge_mlp = nn.Sequential(nn.SiLU(), nn.Linear(nf, nf), nn.SiLU())
        self.gate = nn.Sequential(nn.Linear(nf, 1), nn.Sigmoid()) if attention else None
        self.node_mlp = nn.Sequential(nn.Linear(2 * nf, nf), nn.SiLU(), nn.Linear(nf, nf))
        self.aggregation_norm = aggregation_norm

    def forward(self, h: Tensor, edge_attr: Tensor | None, pair: Tensor, mask: Tensor) -> Tensor:
        m = self.edge_mlp(self.pair(h, edge_attr))
        if self.gate is not None:
            m = m * self.gate(m)
        m = torch.where(pair.unsqueeze(-1), m, torch.zeros((), dtype=m.dtype, device=m.device))
        agg = m.sum(2) / self.aggregation_norm
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))


class _CoordinateUpdate(nn.Module):
    """EDM's equivariant coordinate update: :math:`x_i \\leftarrow x_i + \\frac{1}{Z}\\sum_j
    \\frac{x_i - x_j}{\\|x_i - x_j\\| + c}\\, r \\tanh(\\phi_x(h_i, h_j, e_{ij}))`."""

    def __init__(self, nf: int, edge_nf: int, *, coords_range: float, norm_constant: float, aggregation_norm: float):
        super().__init__()
        self.pair = _PairLinear(nf, edge_nf, nf)
        last = nn.Linear(nf, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # start near the identity map, as EDM does
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(nf, nf), nn.SiLU(), last)
        self.coords_range = coords_range
        self.norm_constant = norm_constant
        self.aggregation_norm = aggregation_norm

    def forward(self, h: Tensor, x: Tensor, edge_attr: Tensor, pair: Tensor, mask: Tensor) -> Tensor:
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # (B, N, N, 3): x_i - x_j
        norm = torch.sqrt(diff.square().sum(-1, keepdim=True) + 1e-8)
        direction = diff / (norm + self.norm_constant)
        trans = direction * torch.tanh(self.mlp(self.pair(h, edge_attr))) * self.coords_range
        trans = torch.where(pair.unsqueeze(-1), trans, torch.zeros((), dtype=x.dtype, device=x.device))
        x = x + trans.sum(2) / self.aggregation_norm
        return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


class EGNNDynamics(nn.Module):
    r"""EDM's E(3)-equivariant noise predictor :math:`\hat\epsilon = \phi(z_t, t)` on a padded batch.

    Architecture (Hoogeboom et al. 2022, ``egnn_dynamics``): ``h <- Linear([h, t])``; ``n_layers`` equivariant
    blocks, each a gated message update of ``h`` (edge features: current and initial squared distances) followed
    by a coordinate update; output features ``Linear(h)`` and positions :math:`x^{(L)} - x`, centred.

    Args:
        in_node_nf: number of atom features ``F`` (QM9: 5 one-hot + 1 charge = 6).
        hidden_nf: width. n_layers: equivariant blocks.
        attention: sigmoid gate on messages. coords_range: total coordinate-update range (split over layers).
        norm_constant: ``c`` in the update's denominator. aggregation_norm: ``Z``, messages are summed then divided.

    Shapes: ``forward(x: (B, N, 3), h: (B, N, F), t: (B,), mask: (B, N)) -> ((B, N, 3), (B, N, F))``.

    Example:
        >>> net = EGNNDynamics(6, hidden_nf=8, n_layers=2)
        >>> x, h, mask = torch.randn(2, 4, 3), torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
        >>> eps_x, eps_h = net(x, h, torch.rand(2), mask)
        >>> eps_x.shape, eps_h.shape, bool(eps_x.mean(1).abs().max() < 1e-5)
        (torch.Size([2, 4, 3]), torch.Size([2, 4, 6]), True)
    """

    def __init__(
        self,
        in_node_nf: int,
        *,
        hidden_nf: int = 256,
        n_layers: int = 9,
        attention: bool = True,
        coords_range: float = 15.0,
        norm_constant: float = 1.0,
        aggregation_norm: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_node_nf = in_node_nf
        self.embedding = nn.Linear(in_node_nf + 1, hidden_nf)
        edge_nf = 2
        self.blocks = nn.ModuleList(
            [
                _MessageBlock(hidden_nf, edge_nf, attention=attention, aggregation_norm=aggregation_norm)
                for _ in range(n_layers)
            ]
        )
        self.updates = nn.ModuleList(
            [
                _CoordinateUpdate(
                    hidden_nf,
                    edge_nf,
                    coords_range=coords_range / n_layers,
                    norm_constant=norm_constant,
                    aggregation_norm=aggregation_norm,
                )
                for _ in range(n_layers)
            ]
        )
        self.out = nn.Linear(hidden_nf, in_node_nf)

    def forward(self, x: Tensor, h: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(x, h, t, mask, self.in_node_nf)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        m = mask.unsqueeze(-1)
        x0 = torch.where(m, x, zero)
        pair = _pair_mask(mask, self_loops=False)
        d0 = (x0.unsqueeze(2) - x0.unsqueeze(1)).square().sum(-1, keepdim=True)
        feats = torch.cat([torch.where(m, h, zero), t.to(h.dtype)[:, None, None].expand(*h.shape[:2], 1)], -1)
        hh = torch.where(m, self.embedding(feats), zero)
        xx = x0
        for block, update in zip(self.blocks, self.updates, strict=True):
            d = (xx.unsqueeze(2) - xx.unsqueeze(1)).square().sum(-1, keepdim=True)
            edge_attr = torch.cat([d, d0], -1)
            hh = block(hh, edge_attr, pair, mask)
            xx = update(hh, xx, edge_attr, pair, mask)
        eps_h = torch.where(m, self.out(hh), zero)
        eps_x = center(xx - x0, mask=mask)
        return eps_x, eps_h


class GNNDynamics(nn.Module):
    r"""The non-equivariant GNN noise predictor of "GDM": coordinates enter as plain node features.

    ``h <- Linear([x, h, t])``; ``n_layers`` gated message-passing blocks over every ordered pair of real atoms
    (self-loops included, as in EDM's GNN); ``[eps_x, eps_h] = Linear(h)``, with ``eps_x`` centred over the
    real atoms. Unlike the authors' GDM, padded atoms send no message (see the module docstring).

    Shapes: ``forward(x: (B, N, 3), h: (B, N, F), t: (B,), mask: (B, N)) -> ((B, N, 3), (B, N, F))``.

    Example:
        >>> net = GNNDynamics(6, hidden_nf=8, n_layers=2)
        >>> mask = torch.tensor([[True, True, True, False]])
        >>> eps_x, eps_h = net(torch.randn(1, 4, 3), torch.randn(1, 4, 6), torch.rand(1), mask)
        >>> eps_x[0, 3].abs().sum().item(), eps_h[0, 3].abs().sum().item()  # padding stays zero
        (0.0, 0.0)
    """

    def __init__(
        self,
        in_node_nf: int,
        *,
        hidden_nf: int = 256,
        n_layers: int = 9,
        attention: bool = True,
        aggregation_norm: float = 1.0,
        self_loops: bool = True,
    ) -> None:
        super().__init__()
        self.in_node_nf = in_node_nf
        self.self_loops = self_loops
        self.embedding = nn.Linear(3 + in_node_nf + 1, hidden_nf)
        self.blocks = nn.ModuleList(
            [
                _MessageBlock(hidden_nf, 0, attention=attention, aggregation_norm=aggregation_norm)
                for _ in range(n_layers)
            ]
        )
        self.out = nn.Linear(hidden_nf, 3 + in_node_nf)

    def forward(self, x: Tensor, h: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(x, h, t, mask, self.in_node_nf)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        m = mask.unsqueeze(-1)
        tt = t.to(h.dtype)[:, None, None].expand(*h.shape[:2], 1)
        feats = torch.where(m, torch.cat([x, h, tt], -1), zero)
        hh = torch.where(m, self.embedding(feats), zero)
        pair = _pair_mask(mask, self_loops=self.self_loops)
        for block in self.blocks:
            hh = block(hh, None, pair, mask)
        out = torch.where(m, self.out(hh), zero)
        return center(out[..., :3], mask=mask), out[..., 3:]


def build_dynamics(name: str, in_node_nf: int, *, hidden_nf: int, n_layers: int, **kwargs) -> nn.Module:
    """The denoiser network ``"gnn"`` (:class:`GNNDynamics`) or ``"egnn"`` (:class:`EGNNDynamics`); a model name of
    the registry (:mod:`.registry`, e.g. ``"gdm-aug"``) builds that model's network.

    Example:
        >>> type(build_dynamics("gdm-aug", 6, hidden_nf=8, n_layers=1)).__name__
        'GNNDynamics'
    """
    networks = {"gnn": GNNDynamics, "egnn": EGNNDynamics}
    if name not in networks:
        from .registry import get_model

        name = get_model(name).dynamics
    return networks[name](in_node_nf, hidden_nf=hidden_nf, n_layers=n_layers, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
