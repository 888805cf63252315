r"""Train a stack of shape regressors (one loss, one ``N``, many augmentation angles / learning rates / seeds).

All models of a group share the loss and the number of vertices ``N``; each has its own augmentation angle,
learning rate and seed. A model with seed ``s`` is initialised from ``s`` and sees the training set of seed ``s``
in the batch order of seed ``s``, whatever its loss, angle or learning rate: comparisons across losses and
angles use common random numbers. The MLP is the paper's ``1 -> 64 -> 64 -> 2N`` with ReLU, fed the radius.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from energyloss.experiments.losses import LossSpec, make_position_loss, parse_loss_spec
from energyloss.experiments.runs import derive_seed, live_bars, progress

from .config import has_options
from .data import ShapeData, regular_polygon
from .metrics import shape_metrics
from .models import StackedAdam, StackedMLP

__all__ = ["ModelSpec", "make_shape_loss", "predict", "seed_of", "spec_fields", "train_group"]


@dataclass(frozen=True)
class ModelSpec:
    """One model of a group: its augmentation angle (radians), learning rate and seed."""

    theta_aug: float
    lr: float
    seed: int


def seed_of(*parts: object) -> int:
    """The seed of a random stream of the experiment: :func:`~energyloss.experiments.runs.derive_seed` of the parts.

    Every part is passed as its string (``0`` as ``"0"``, ``None`` as ``"None"``), the encoding the experiment has
    always used, so the seeds, and every trained number, are those of earlier runs.

    Example:
        >>> seed_of(0, "order") == seed_of(0, "order") != seed_of(1, "order")
        True
    """
    return derive_seed(*(str(part) for part in parts))


def make_shape_loss(loss: str | LossSpec, *, pool=None, generator: torch.Generator | None = None):
    r"""The per-structure loss ``fn(pred (B, N, 2), target (B, N, 2)) -> (B,)`` of a loss spec, for shapes.

    :func:`energyloss.experiments.losses.make_position_loss` in 2-D with ``normalize="pairs"``: the energy is a
    mean per pair, as the MSE is a mean per coordinate (Adam is insensitive to a global scale of the loss, so this
    only fixes the units of the logged values; the authors' shape code takes a mean over ``B * N^2`` entries with
    ``k = 2.6 exp(-d)``, the same up to a constant factor). ``sparse_energy`` draws one graph per structure and
    step from ``pool`` (a :class:`~energyloss.rigidity.RigidGraphPool`) with ``generator``.

    Example:
        >>> from energyloss.experiments.shapes.data import regular_polygon
        >>> y = regular_polygon(torch.tensor([1.0, 2.0]), 6)
        >>> make_shape_loss("energy:exp")(y.flip(-1), y)  # a reflection of the target costs nothing
        tensor([0., 0.])
    """
    return make_position_loss(loss, dim=2, normalize="pairs", pool=pool, generator=generator)


def spec_fields(loss: str | LossSpec) -> dict:
    """The loss fields of a record: ``loss``, ``coefficients`` and, for a spec with options, ``loss_spec``.

    Example:
        >>> spec_fields("energy:exp"), spec_fields("sparse_energy:exp:k=6")["loss_spec"]
        ({'loss': 'energy', 'coefficients': 'exp'}, 'sparse_energy:exp:k=6')
    """
    spec = parse_loss_spec(loss)
    fields = {"loss": spec.name, "coefficients": spec.coefficients}
    if has_options(spec):
        fields["loss_spec"] = str(spec)
    return fields


def predict(mlp: StackedMLP, radius: Tensor, n_vertices: int, *, chunk: int = 4096) -> Tensor:
    """Predictions of every model for the same radii: ``radius (S,) -> (M, S, N, 2)`` on the CPU, no gradients.

    Example:
        >>> predict(StackedMLP((1, 8, 10), seeds=[0, 1]), torch.tensor([1.0, 2.0, 3.0]), 5).shape
        torch.Size([2, 3, 5, 2])
    """
    outs = []
    device = mlp.weights[0].device
    with torch.no_grad():
        for r in radius.to(device).split(chunk):
            x = r.view(1, -1, 1).expand(mlp.num_models, -1, -1)
            outs.append(mlp(x).view(mlp.num_models, r.shape[0], n_vertices, 2))
    return torch.cat(outs, dim=1).cpu()


def _evaluate(pred: Tensor, radius: Tensor, n_vertices: int, alive: Tensor) -> list[dict[str, float]]:
    target = regular_polygon(radius, n_vertices)  # the metrics are rotation invariant: no need for the angles
    alive = alive.cpu()
    out = []
    for m in range(pred.shape[0]):
        if bool(alive[m]):
            out.append(shape_metrics(pred[m], target, radius))
        else:
            out.append(shape_metrics(torch.full_like(pred[m], float("nan")), target, radius))
    return out


def train_group(
    loss: str | LossSpec,
    n_vertices: int,
    specs: Sequence[ModelSpec],
    *,
    train_sets: dict[int, ShapeData],
    val: ShapeData,
    test: ShapeData,
    epochs: int,
    batch_size: int,
    hidden: Sequence[int] = (64, 64),
    pool=None,
    figure_radius: Tensor | None = None,
    figure_specs: Sequence[int] = (),
    desc: str = "",
    device: str | torch.device = "cpu",
) -> tuple[list[dict], dict[int, list]]:
    r"""Train ``len(specs)`` MLPs with one loss and return their records (validation and test metrics).

    Args:
        loss: the loss spec (see :func:`make_shape_loss`), e.g. ``"energy:exp"``.
        n_vertices: ``N``.
        specs: one :class:`ModelSpec` per model.
        train_sets: the training :class:`ShapeData` of every seed used in ``specs`` (all of one size).
        val, test: validation and test shapes (radii; the metrics ignore the rotation).
        epochs: passes over the training set; batch_size: shapes per step and model (the last partial batch of an
            epoch is dropped).
        hidden: hidden widths of the MLP.
        pool: :class:`energyloss.rigidity.RigidGraphPool` (``sparse_energy`` only).
        figure_radius: ``(F,)`` radii whose predictions are returned for the sample figures.
        figure_specs: indices into ``specs`` of the models whose figure predictions are wanted.
        desc: label of a live progress bar over the steps, drawn only where
            :func:`~energyloss.experiments.runs.live_bars` allows (a terminal); ``""``: none. It never prints plain
            lines (the caller logs one line per group).
        device: where the models train (data are drawn on the CPU, metrics computed on the CPU).

    Returns:
        ``(records, figure)``: one dict per spec (in order) and ``{spec index: (F, N, 2) nested list}``.

    Example:
        >>> from energyloss.experiments.shapes.data import sample_shapes
        >>> data = sample_shapes(64, generator=torch.Generator().manual_seed(0))
        >>> specs = [ModelSpec(theta_aug=math.pi, lr=1e-2, seed=0), ModelSpec(theta_aug=0.0, lr=1e-2, seed=0)]
        >>> records, _ = train_group("mse", 5, specs, train_sets={0: data}, val=data, test=data, epochs=1,
        ...                          batch_size=32)
        >>> [(r["theta_aug"], r["lr"]) for r in records] == [(math.pi, 0.01), (0.0, 0.01)]
        True
    """
    if not specs:
        return [], {}
    seeds = sorted({s.seed for s in specs})
    missing = [s for s in seeds if s not in train_sets]
    if missing:
        raise ValueError(f"train_sets has no training set for seeds {missing}")
    n_train = len(train_sets[seeds[0]])
    if any(len(train_sets[s]) != n_train for s in seeds):
        raise ValueError("all training sets of a group must have the same size")
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the training set size ({n_train})")

    m_count = len(specs)
    device = torch.device(device)
    seed_row = torch.tensor([seeds.index(s.seed) for s in specs], device=device)
    radius_all = torch.stack([train_sets[s].radius for s in seeds]).to(device)  # (S, n_train)
    u_all = torch.stack([train_sets[s].u for s in seeds]).to(device)
    theta = torch.tensor([s.theta_aug for s in specs], dtype=radius_all.dtype, device=device).unsqueeze(-1)  # (M, 1)
    order_gens = [torch.Generator().manual_seed(seed_of(s, "batch-order")) for s in seeds]
    loss = parse_loss_spec(loss)
    graph_gen = torch.Generator().manual_seed(seed_of(loss.name, loss.coefficients, n_vertices, "graphs"))
    loss_fn = make_shape_loss(loss, pool=pool, generator=graph_gen)

    mlp = StackedMLP((1, *hidden, 2 * n_vertices), seeds=[seed_of(s.seed, "init") for s in specs]).to(device)
    opt = StackedAdam(list(mlp.parameters()), lr=[s.lr for s in specs])
    alive = torch.ones(m_count, dtype=torch.bool, device=device)
    last_epoch_loss = torch.zeros(m_count, dtype=torch.float64, device=device)

    start = time.perf_counter()
    total = epochs * steps_per_epoch
    bar = progress(range(total), desc=desc, total=total, disable=not (desc and live_bars()))
    perms = None
    for step in bar:
        k = step % steps_per_epoch
        if k == 0:
            perms = torch.stack([torch.randperm(n_train, generator=g) for g in order_gens]).to(device)  # (S, n_train)
            if step // steps_per_epoch == epochs - 1:
                last_epoch_loss.zero_()
        idx = perms[:, k * batch_size : (k + 1) * batch_size][seed_row]  # (M, B)
        radius = torch.gather(radius_all[seed_row], 1, idx)
        rotation = torch.gather(u_all[seed_row], 1, idx) * theta
        target = regular_polygon(radius, n_vertices, rotation=rotation)  # (M, B, N, 2)
        pred = mlp(radius.unsqueeze(-1)).view(m_count, batch_size, n_vertices, 2)
        alive &= torch.isfinite(pred.detach()).flatten(1).all(1)
        # A diverged model is frozen: its prediction is replaced by the target (zero loss) and its rate set to 0.
        pred = torch.where(alive.view(-1, 1, 1, 1), pred, target)
        per_model = loss_fn(pred.flatten(0, 1), target.flatten(0, 1)).view(m_count, batch_size).mean(1)
        finite = torch.isfinite(per_model.detach())
        if not bool(finite.all()):
            alive &= finite
            per_model = torch.where(finite, per_model, torch.zeros_like(per_model))
        opt.lr = torch.where(alive, opt.lr, torch.zeros_like(opt.lr))
        opt.zero_grad()
        per_model.sum().backward()
        opt.step()
        if step // steps_per_epoch == epochs - 1:
            last_epoch_loss += per_model.detach().double() / steps_per_epoch
    seconds = time.perf_counter() - start

    val_pred = predict(mlp, val.radius, n_vertices)
    test_pred = predict(mlp, test.radius, n_vertices)
    val_metrics = _evaluate(val_pred, val.radius, n_vertices, alive)
    test_metrics = _evaluate(test_pred, test.radius, n_vertices, alive)
    records = []
    for m, spec in enumerate(specs):
        rec = {
            "task": "regression",
            **spec_fields(loss),
            "theta_aug": spec.theta_aug,
            "theta_aug_over_pi": spec.theta_aug / math.pi,
            "n_vertices": n_vertices,
            "seed": spec.seed,
            "lr": spec.lr,
            **test_metrics[m],
            **{f"val_{k}": v for k, v in val_metrics[m].items()},
            "train_loss": float(last_epoch_loss[m]) if bool(alive[m]) else float("nan"),
            "diverged": not bool(alive[m]),
            "epochs": epochs,
            "n_train": n_train,
            "batch_size": batch_size,
            "train_seconds": seconds / m_count,
        }
        records.append(rec)
    figure = {}
    if figure_radius is not None and figure_specs:
        fig_pred = predict(mlp, figure_radius, n_vertices)
        figure = {int(i): fig_pred[int(i)].tolist() for i in figure_specs}
    return records, figure
