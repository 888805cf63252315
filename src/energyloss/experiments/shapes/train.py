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

__all__ = [
    "ModelSpec",
    "StackedGroup",
    "evaluate_models",
    "group_record",
    "guarded_step",
    "make_shape_loss",
    "predict",
    "seed_of",
    "spec_fields",
    "stack_group",
    "train_group",
]


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


@dataclass(frozen=True)
class StackedGroup:
    """The training data of a group, stacked over its seeds, and where each model finds its own.

    A model with seed ``s`` sees the training set of seed ``s`` in the batch order of seed ``s``
    (``seed_of(s, "batch-order")``), whatever its loss, angle or learning rate.
    """

    seeds: list[int]
    seed_row: Tensor  # (M,) long: each model's row in the stacked tensors
    radius: Tensor  # (S, n_train)
    u: Tensor  # (S, n_train) the uniform draws that, times each model's angle, rotate the shapes
    theta: Tensor  # (M, 1) each model's augmentation angle
    n_train: int
    steps_per_epoch: int

    @property
    def m_count(self) -> int:
        return int(self.seed_row.shape[0])

    def batches(self, epochs: int, batch_size: int):
        """``(step, radius (M, B), rotation (M, B))`` for every step of ``epochs`` epochs (the last partial batch of
        an epoch dropped); each epoch draws a new order per seed, at its first step."""
        order_gens = [torch.Generator().manual_seed(seed_of(s, "batch-order")) for s in self.seeds]
        device = self.radius.device
        perms = None
        for step in range(epochs * self.steps_per_epoch):
            k = step % self.steps_per_epoch
            if k == 0:
                perms = torch.stack([torch.randperm(self.n_train, generator=g) for g in order_gens]).to(device)
            idx = perms[:, k * batch_size : (k + 1) * batch_size][self.seed_row]  # (M, B)
            radius = torch.gather(self.radius[self.seed_row], 1, idx)
            yield step, radius, torch.gather(self.u[self.seed_row], 1, idx) * self.theta


def stack_group(
    specs: Sequence[ModelSpec], train_sets: dict[int, ShapeData], batch_size: int, device: torch.device
) -> StackedGroup:
    """Stack the training sets of the seeds of ``specs`` on ``device``; errors name what is missing or unequal.

    Example:
        >>> from energyloss.experiments.shapes.data import sample_shapes
        >>> data = {s: sample_shapes(10, generator=torch.Generator().manual_seed(s)) for s in (0, 1)}
        >>> group = stack_group([ModelSpec(0.0, 1e-2, 1), ModelSpec(1.0, 1e-2, 0)], data, 4, torch.device("cpu"))
        >>> group.seed_row.tolist(), group.steps_per_epoch, [b[1].shape for b in group.batches(1, 4)]
        ([1, 0], 2, [torch.Size([2, 4]), torch.Size([2, 4])])
    """
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
    radius = torch.stack([train_sets[s].radius for s in seeds]).to(device)
    return StackedGroup(
        seeds=seeds,
        seed_row=torch.tensor([seeds.index(s.seed) for s in specs], device=device),
        radius=radius,
        u=torch.stack([train_sets[s].u for s in seeds]).to(device),
        theta=torch.tensor([s.theta_aug for s in specs], dtype=radius.dtype, device=device).unsqueeze(-1),
        n_train=n_train,
        steps_per_epoch=steps_per_epoch,
    )


def guarded_step(per_model: Tensor, alive: Tensor, opt: StackedAdam) -> Tensor:
    """One step of the stacked optimiser on the per-model losses ``(M,)``; returns the losses it stepped on.

    A model whose loss is not finite is frozen from this step on: ``alive`` (``(M,)`` bool) is cleared for it in
    place, its loss counts as 0 and its learning rate is set to 0 (and stays so for every model ``alive`` marks
    dead).
    """
    finite = torch.isfinite(per_model.detach())
    if not bool(finite.all()):
        alive &= finite
        per_model = torch.where(finite, per_model, torch.zeros_like(per_model))
    opt.lr = torch.where(alive, opt.lr, torch.zeros_like(opt.lr))
    opt.zero_grad()
    per_model.sum().backward()
    opt.step()
    return per_model


def group_record(
    task: str,
    loss: LossSpec,
    spec: ModelSpec,
    n_vertices: int,
    test_metrics: dict,
    val_metrics: dict,
    train_loss: Tensor,
    alive: Tensor,
    **run: object,
) -> dict:
    """The record of one model of a group: its loss, angle, seed and rate, test and ``val_`` metrics, its mean loss
    over the last epoch (NaN when it diverged) and the run's settings ``run`` (in the order given)."""
    return {
        "task": task,
        **spec_fields(loss),
        "theta_aug": spec.theta_aug,
        "theta_aug_over_pi": spec.theta_aug / math.pi,
        "n_vertices": n_vertices,
        "seed": spec.seed,
        "lr": spec.lr,
        **test_metrics,
        **{f"val_{k}": v for k, v in val_metrics.items()},
        "train_loss": float(train_loss) if bool(alive) else math.nan,
        "diverged": not bool(alive),
        **run,
    }


def evaluate_models(pred: Tensor, radius: Tensor, n_vertices: int, alive: Tensor) -> list[dict[str, float]]:
    """The metrics of every model's shapes ``pred (M, S, N, 2)`` for the radii ``radius (S,)``: one dict per model;
    a model that ``alive (M,)`` marks diverged scores as all-NaN shapes."""
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
    device = torch.device(device)
    group = stack_group(specs, train_sets, batch_size, device)
    loss = parse_loss_spec(loss)
    graph_gen = torch.Generator().manual_seed(seed_of(loss.name, loss.coefficients, n_vertices, "graphs"))
    loss_fn = make_shape_loss(loss, pool=pool, generator=graph_gen)

    mlp = StackedMLP((1, *hidden, 2 * n_vertices), seeds=[seed_of(s.seed, "init") for s in specs]).to(device)
    opt = StackedAdam(list(mlp.parameters()), lr=[s.lr for s in specs])
    alive = torch.ones(group.m_count, dtype=torch.bool, device=device)
    last_epoch_loss = torch.zeros(group.m_count, dtype=torch.float64, device=device)

    start = time.perf_counter()
    total = epochs * group.steps_per_epoch
    batches = group.batches(epochs, batch_size)
    for step, radius, rotation in progress(batches, desc=desc, total=total, disable=not (desc and live_bars())):
        target = regular_polygon(radius, n_vertices, rotation=rotation)  # (M, B, N, 2)
        pred = mlp(radius.unsqueeze(-1)).view(group.m_count, batch_size, n_vertices, 2)
        alive &= torch.isfinite(pred.detach()).flatten(1).all(1)
        # A diverged model is frozen: its prediction is replaced by the target (zero loss) and its rate set to 0.
        pred = torch.where(alive.view(-1, 1, 1, 1), pred, target)
        per_model = loss_fn(pred.flatten(0, 1), target.flatten(0, 1)).view(group.m_count, batch_size).mean(1)
        per_model = guarded_step(per_model, alive, opt)
        if step // group.steps_per_epoch == epochs - 1:
            last_epoch_loss += per_model.detach().double() / group.steps_per_epoch
    seconds = time.perf_counter() - start

    val_metrics = evaluate_models(predict(mlp, val.radius, n_vertices), val.radius, n_vertices, alive)
    test_metrics = evaluate_models(predict(mlp, test.radius, n_vertices), test.radius, n_vertices, alive)
    records = [
        group_record(
            "regression",
            loss,
            spec,
            n_vertices,
            test_metrics[m],
            val_metrics[m],
            last_epoch_loss[m],
            alive[m],
            epochs=epochs,
            n_train=group.n_train,
            batch_size=batch_size,
            train_seconds=seconds / group.m_count,
        )
        for m, spec in enumerate(specs)
    ]
    figure = {}
    if figure_radius is not None and figure_specs:
        fig_pred = predict(mlp, figure_radius, n_vertices)
        figure = {int(i): fig_pred[int(i)].tolist() for i in figure_specs}
    return records, figure
