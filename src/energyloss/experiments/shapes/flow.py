r"""Generative variant (App. A.7): conditional flow matching of regular polygons, MSE versus energy loss.

A velocity network :math:`\hat u_\theta(x_t, t, r)` (an MLP on the flattened ``(N, 2)`` sample, the time and the
radius) is trained on :math:`x_t = (1 - t)\,x + t\,\epsilon`, :math:`\epsilon \sim \mathcal N(0, I)`,
:math:`t \sim U[t_{min}, 1]`, with the library's adapter :func:`energyloss.diffusion.flow_matching_loss`:

.. math:: \mathcal L = \frac{1}{t^2}\, L\big(x_t - t\,\hat u_\theta,\; x\big),

where ``L`` is a sample-space loss. With ``L`` the MSE this *is* the usual velocity regression
:math:`\|u - \hat u\|^2` (per coordinate); with the pair energy loss it is the paper's energy objective for flow
matching. Samples are drawn by Euler integration of :math:`dx/dt = \hat u` from :math:`t = 1` (noise) to
:math:`t = 0`, and scored with the same metrics as the regression.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from energyloss.diffusion import flow_matching_interpolate, flow_matching_loss
from energyloss.experiments.losses import LossSpec, parse_loss_spec
from energyloss.experiments.runs import live_bars, progress

from .data import ShapeData, regular_polygon
from .models import StackedAdam, StackedMLP
from .train import ModelSpec, evaluate_models, group_record, guarded_step, make_shape_loss, seed_of, stack_group

__all__ = ["sample_flow", "train_flow_group"]


def _velocity(mlp: StackedMLP, xt: Tensor, t: Tensor, radius: Tensor) -> Tensor:
    """``xt (M, B, N, 2)``, ``t (M, B)``, ``radius (M, B)`` -> velocity ``(M, B, N, 2)``."""
    feats = torch.cat([xt.flatten(2), t.unsqueeze(-1), radius.unsqueeze(-1)], dim=-1)
    return mlp(feats).view_as(xt)


def sample_flow(
    mlp: StackedMLP,
    radius: Tensor,
    n_vertices: int,
    *,
    steps: int,
    generator: torch.Generator,
    noise_scale: float = 1.0,
) -> Tensor:
    r"""Euler samples of every model for the same radii: ``radius (S,) -> (M, S, N, 2)``.

    Integrates :math:`x \leftarrow x - \Delta t\, \hat u(x, t, r)` on a uniform grid from ``t = 1`` to ``t = 0``
    (``steps`` steps), starting from Gaussian noise of standard deviation ``noise_scale`` (the same draw for every
    model).

    Example:
        >>> mlp = StackedMLP((2 * 5 + 2, 16, 2 * 5), seeds=[0, 1, 2])
        >>> sample_flow(mlp, torch.ones(4), 5, steps=3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 4, 5, 2])
    """
    m = mlp.num_models
    s = radius.shape[0]
    device = mlp.weights[0].device
    noise = noise_scale * torch.randn(s, n_vertices, 2, generator=generator, dtype=radius.dtype)
    x = noise.to(device).unsqueeze(0).expand(m, -1, -1, -1).clone()
    r = radius.to(device).unsqueeze(0).expand(m, -1)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=radius.dtype)
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((m, s), float(grid[k]), dtype=radius.dtype, device=device)
            x = x - float(grid[k] - grid[k + 1]) * _velocity(mlp, x, t, r)
    return x.cpu()


def train_flow_group(
    loss: str | LossSpec,
    n_vertices: int,
    specs: Sequence[ModelSpec],
    *,
    train_sets: dict[int, ShapeData],
    val: ShapeData,
    test: ShapeData,
    epochs: int,
    batch_size: int,
    hidden: Sequence[int] = (128, 128, 128),
    t_min: float = 1e-3,
    noise_scale: float = 1.0,
    sample_steps: int = 100,
    pool=None,
    figure_radius: Tensor | None = None,
    figure_specs: Sequence[int] = (),
    desc: str = "",
    device: str | torch.device = "cpu",
) -> tuple[list[dict], dict[int, list]]:
    r"""Train ``len(specs)`` conditional flow-matching MLPs with one sample-space loss; sample and score them.

    Arguments as in :func:`energyloss.experiments.shapes.train.train_group`, plus ``hidden`` (widths of the velocity
    MLP, SiLU), ``t_min`` (smallest training time: the :math:`1/t^2` weight is infinite at 0), ``noise_scale``
    (standard deviation of the noise :math:`\epsilon`, in the units of the shapes) and ``sample_steps`` (Euler
    steps). The metrics are those of the samples for the validation / test radii.
    """
    if not specs:
        return [], {}
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    device = torch.device(device)
    group = stack_group(specs, train_sets, batch_size, device)
    m_count = group.m_count
    noise_gens = [torch.Generator().manual_seed(seed_of(s, "flow-noise")) for s in group.seeds]
    loss = parse_loss_spec(loss)
    graph_gen = torch.Generator().manual_seed(seed_of(loss.name, loss.coefficients, n_vertices, "flow-graphs"))
    per_structure = make_shape_loss(loss, pool=pool, generator=graph_gen)

    def sample_loss(pred: Tensor, target: Tensor, *, reduction: str = "none") -> Tensor:
        return per_structure(pred, target)

    mlp = StackedMLP(
        (2 * n_vertices + 2, *hidden, 2 * n_vertices),
        seeds=[seed_of(s.seed, "flow-init") for s in specs],
        activation="silu",
    ).to(device)
    opt = StackedAdam(list(mlp.parameters()), lr=[s.lr for s in specs])
    alive = torch.ones(m_count, dtype=torch.bool, device=device)
    last_epoch_loss = torch.zeros(m_count, dtype=torch.float64, device=device)
    start = time.perf_counter()
    total = epochs * group.steps_per_epoch
    batches = group.batches(epochs, batch_size)
    for step, radius, rotation in progress(batches, desc=desc, total=total, disable=not (desc and live_bars())):
        x0 = regular_polygon(radius, n_vertices, rotation=rotation)
        draws = [
            (
                noise_scale * torch.randn(batch_size, n_vertices, 2, generator=g),
                t_min + (1 - t_min) * torch.rand(batch_size, generator=g),
            )
            for g in noise_gens
        ]
        noise = torch.stack([d[0] for d in draws]).to(device)[group.seed_row]  # (M, B, N, 2)
        t = torch.stack([d[1] for d in draws]).to(device)[group.seed_row]  # (M, B)
        xt = flow_matching_interpolate(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(x0)
        v = _velocity(mlp, xt, t, radius)
        alive &= torch.isfinite(v.detach()).flatten(1).all(1)
        v = torch.where(alive.view(-1, 1, 1, 1), v, noise - x0)  # frozen models: the exact velocity, zero loss
        per_model = flow_matching_loss(
            sample_loss, v.flatten(0, 1), xt.flatten(0, 1), x0.flatten(0, 1), t.flatten(), reduction="none"
        )
        per_model = guarded_step(per_model.view(m_count, batch_size).mean(1), alive, opt)
        if step // group.steps_per_epoch == epochs - 1:
            last_epoch_loss += per_model.detach().double() / group.steps_per_epoch
    seconds = time.perf_counter() - start

    sample_gen = torch.Generator().manual_seed(seed_of("flow-samples"))
    results = {}
    for name, data in (("val", val), ("test", test)):
        samples = sample_flow(
            mlp, data.radius, n_vertices, steps=sample_steps, generator=sample_gen, noise_scale=noise_scale
        )
        results[name] = evaluate_models(samples, data.radius, n_vertices, alive)
    records = [
        group_record(
            "flow_matching",
            loss,
            spec,
            n_vertices,
            results["test"][m],
            results["val"][m],
            last_epoch_loss[m],
            alive[m],
            epochs=epochs,
            n_train=group.n_train,
            batch_size=batch_size,
            sample_steps=sample_steps,
            noise_scale=noise_scale,
            train_seconds=seconds / m_count,
        )
        for m, spec in enumerate(specs)
    ]
    figure = {}
    if figure_radius is not None and figure_specs:
        samples = sample_flow(
            mlp, figure_radius, n_vertices, steps=sample_steps, generator=sample_gen, noise_scale=noise_scale
        )
        figure = {int(i): samples[int(i)].tolist() for i in figure_specs}
    return records, figure
