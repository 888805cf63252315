"""Tests of the regular-shape experiment (paper §6.1): data, metrics, stacked models, training, CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from energyloss.experiments.losses import POSITION_LOSSES, parse_loss_spec
from energyloss.experiments.shapes.config import PRESETS, ShapesConfig
from energyloss.experiments.shapes.data import polygon_angles, regular_polygon, sample_shapes
from energyloss.experiments.shapes.experiment import plan_tasks, select_best
from energyloss.experiments.shapes.flow import train_flow_group
from energyloss.experiments.shapes.metrics import distance_rmse, quality_scores, radius_ratio, shape_metrics
from energyloss.experiments.shapes.models import StackedAdam, StackedMLP
from energyloss.experiments.shapes.train import ModelSpec, guarded_step, make_shape_loss, stack_group, train_group

LOSSES = tuple(POSITION_LOSSES)


def _rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=x.dtype)
    return x @ rot.T


# --------------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("n", [3, 5, 20, 160])
def test_regular_polygon_is_regular_with_the_right_radius(n):
    radius = torch.tensor([0.3, 1.0, 4.9], dtype=torch.float64)
    rotation = torch.tensor([0.0, 1.0, -2.5], dtype=torch.float64)
    y = regular_polygon(radius, n, rotation=rotation)
    assert y.shape == (3, n, 2)
    torch.testing.assert_close(torch.linalg.vector_norm(y, dim=-1), radius[:, None].expand(3, n))
    torch.testing.assert_close(y.mean(1), torch.zeros(3, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    # consecutive vertices (fixed order, counter-clockwise) are 2 pi / N apart, starting at the rotation angle
    angle = torch.atan2(y[..., 1], y[..., 0])
    step = torch.remainder(angle.roll(-1, dims=1) - angle, 2 * math.pi)
    torch.testing.assert_close(step, torch.full_like(step, 2 * math.pi / n))
    torch.testing.assert_close(
        torch.remainder(angle[:, 0] - rotation, 2 * math.pi) % (2 * math.pi - 1e-9),
        torch.zeros(3, dtype=torch.float64),
        atol=1e-9,
        rtol=0,
    )
    # all edges have the same length 2 r sin(pi / N)
    edge = torch.linalg.vector_norm(y - y.roll(-1, dims=1), dim=-1)
    torch.testing.assert_close(edge, (2 * radius * math.sin(math.pi / n))[:, None].expand(3, n))


def test_sample_shapes_ranges_and_seeding():
    gen = torch.Generator().manual_seed(0)
    data = sample_shapes(20_000, generator=gen, radius_range=(0.3, 5.0))
    assert len(data) == 20_000
    assert float(data.radius.min()) >= 0.3 and float(data.radius.max()) <= 5.0
    assert float(data.radius.min()) < 0.31 and float(data.radius.max()) > 4.99  # covers the range
    theta = 0.7
    rot = data.rotation(theta)
    assert float(rot.min()) >= -theta and float(rot.max()) <= theta
    assert float(rot.min()) < -0.69 and float(rot.max()) > 0.69  # symmetric, both sides reached
    assert abs(float(rot.mean())) < 0.02
    again = sample_shapes(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.radius, data.radius) and torch.equal(again.u, data.u)
    targets = data.targets(7, theta)
    assert targets.shape == (20_000, 7, 2)
    # the first vertex sits at the sampled rotation angle
    torch.testing.assert_close(torch.atan2(targets[:, 0, 1], targets[:, 0, 0]), rot, atol=1e-5, rtol=0)


def test_data_errors():
    with pytest.raises(ValueError, match="n_vertices"):
        polygon_angles(2)
    with pytest.raises(ValueError, match="radius_range"):
        sample_shapes(5, generator=torch.Generator(), radius_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="rotation"):
        regular_polygon(torch.ones(3), 5, rotation=torch.ones(2))


# ------------------------------------------------------------------------------------------------ metrics


def test_quality_is_large_on_exact_polygons_and_small_on_random_points():
    gen = torch.Generator().manual_seed(1)
    radius = 0.3 + 4.7 * torch.rand(200, generator=gen, dtype=torch.float64)
    exact = regular_polygon(radius, 20, rotation=torch.rand(200, generator=gen, dtype=torch.float64) * 6)
    m = shape_metrics(exact, exact, radius)
    assert m["quality"] > 12 and m["quality_authors"] > 12 and m["quality_log_mean"] > 12
    assert m["distance_rmse"] < 1e-10 and abs(m["radius_ratio"] - 1) < 1e-10
    noise = torch.randn(200, 20, 2, generator=gen, dtype=torch.float64) * radius[:, None, None]
    bad = shape_metrics(noise, exact, radius)
    assert bad["quality"] < 1.5 and bad["quality_authors"] < 1.5
    slight = shape_metrics(exact + 1e-3 * noise, exact, radius)
    assert bad["quality"] < slight["quality"] < m["quality"]


def test_quality_is_invariant_to_rigid_motions_and_vertex_order():
    gen = torch.Generator().manual_seed(2)
    radius = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    pred = regular_polygon(radius, 9) + 0.05 * torch.randn(3, 9, 2, generator=gen, dtype=torch.float64)
    target = regular_polygon(radius, 9)
    base = shape_metrics(pred, target, radius)
    moved = _rotate(pred, 1.234) + torch.tensor([3.0, -7.0], dtype=torch.float64)
    mirrored = pred * torch.tensor([1.0, -1.0], dtype=torch.float64)
    shuffled = pred[:, torch.randperm(9, generator=gen)]
    for other in (moved, mirrored):
        got = shape_metrics(other, target, radius)
        for key in ("quality", "quality_authors", "distance_rmse", "radius_ratio"):
            assert got[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key
    # the quality sorts vertices by angle: the order of the predicted vertices does not matter
    assert shape_metrics(shuffled, target, radius)["quality"] == pytest.approx(base["quality"], rel=1e-12)


def test_quality_is_scale_blind_but_distance_error_and_radius_ratio_are_not():
    radius = torch.tensor([2.0, 4.0], dtype=torch.float64)
    target = regular_polygon(radius, 12)
    gen = torch.Generator().manual_seed(3)
    wobble = 1e-3 * torch.randn(2, 12, 2, generator=gen, dtype=torch.float64)
    shrunk = 0.01 * target + wobble * 0.01  # a regular polygon at 1 % of the size, proportionally noisy
    full = target + wobble
    a, b = shape_metrics(shrunk, target, radius), shape_metrics(full, target, radius)
    assert a["quality_authors"] == pytest.approx(b["quality_authors"], rel=1e-9)  # relative to its own size
    assert a["quality"] > b["quality"]  # C.1 divides by the true radius: shrinking *raises* it
    assert a["radius_ratio"] == pytest.approx(0.01, rel=1e-3) and b["radius_ratio"] == pytest.approx(1, rel=1e-3)
    assert a["distance_rmse"] > 0.5 > 0.01 > b["distance_rmse"]
    # the same absolute noise on a shrunken polygon: its radial part is divided by the true radius in C.1 but by
    # the (tiny) predicted radius in the authors' variant
    noisy_small = 0.01 * target + wobble
    c = shape_metrics(noisy_small, target, radius)
    assert c["sigma_radius_rel"] < 1e-3 and c["quality"] > c["quality_authors"] + 1


def test_metric_pieces_and_errors():
    radius = torch.tensor([1.0])
    sq = regular_polygon(radius, 4)
    s = quality_scores(sq, radius)
    assert float(s["sigma_angle"]) < 1e-6 and float(s["mean_radius"]) == pytest.approx(1.0)
    assert float(radius_ratio(2 * sq, radius)) == pytest.approx(2.0)
    # doubling all distances: RMSE of (2d - d) over the 6 pairs: sides sqrt(2) (4 of them) and diagonals 2 (2)
    expected = math.sqrt((4 * 2.0 + 2 * 4.0) / 6)
    assert float(distance_rmse(2 * sq, sq, radius)) == pytest.approx(expected, rel=1e-6)
    nan = shape_metrics(torch.full_like(sq, float("nan")), sq, radius)
    assert math.isnan(nan["quality"]) and math.isnan(nan["distance_rmse"])
    with pytest.raises(ValueError, match="points"):
        quality_scores(torch.zeros(4, 2), radius)
    with pytest.raises(ValueError, match="radius"):
        quality_scores(sq, torch.ones(2))


# ------------------------------------------------------------------------------------------ models / optim


def test_stacked_mlp_matches_independent_models_and_seeds():
    mlp = StackedMLP((1, 8, 8, 6), seeds=[3, 5])
    single = StackedMLP((1, 8, 8, 6), seeds=[5])
    for w, w1 in zip(mlp.weights, single.weights, strict=True):
        assert torch.equal(w[1], w1[0])  # a model's init depends only on its seed
    x = torch.randn(2, 4, 1)
    out = mlp(x)
    for m in range(2):
        h = x[m]
        for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
            h = h @ w[m] + b[m]
            if i < 2:
                h = torch.relu(h)
        torch.testing.assert_close(out[m], h)
    with pytest.raises(ValueError, match="x must have shape"):
        mlp(torch.randn(3, 4, 1))


def test_stacked_adam_equals_torch_adam_per_model():
    gen = torch.Generator().manual_seed(4)
    init = torch.randn(3, 5, generator=gen)
    lrs = [1e-3, 3e-2, 0.1]
    stacked = torch.nn.Parameter(init.clone())
    opt = StackedAdam([stacked], lr=lrs)
    refs = [torch.nn.Parameter(init[m].clone()) for m in range(3)]
    ref_opts = [torch.optim.Adam([p], lr=lr) for p, lr in zip(refs, lrs, strict=True)]
    for step in range(5):
        target = torch.randn(3, 5, generator=gen)
        opt.zero_grad()
        ((stacked - target) ** 2).sum().backward()
        opt.step()
        for m in range(3):
            ref_opts[m].zero_grad()
            ((refs[m] - target[m]) ** 2).sum().backward()
            ref_opts[m].step()
        for m in range(3):
            torch.testing.assert_close(stacked.detach()[m], refs[m].detach(), msg=f"step {step} model {m}")


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize(
    "spec",
    [
        "mse",
        "mae",
        "kabsch_mse",
        "energy:constant",
        "energy:inverse",
        "energy:inverse_square",
        "energy:exp",
        "sparse_energy:exp",
    ],
)
def test_losses_zero_at_target_and_invariance(spec):
    from energyloss.rigidity import RigidGraphPool

    loss = parse_loss_spec(spec).name
    fn = make_shape_loss(spec, pool=RigidGraphPool(2, size=3, seed=0), generator=torch.Generator().manual_seed(0))
    radius = torch.tensor([0.5, 2.0, 4.0])
    y = regular_polygon(radius, 10)
    assert fn(y, y).shape == (3,)
    assert float(fn(y, y).abs().max()) < 1e-5
    rotated = _rotate(y, 0.9)
    if loss in ("mse", "mae"):
        assert float(fn(rotated, y).min()) > 1e-3  # not invariant: the point of the experiment
    else:
        assert float(fn(rotated, y).abs().max()) < 1e-4


def test_shape_losses_are_the_experiments_loss_vocabulary():
    with pytest.raises(ValueError, match="unknown loss"):
        make_shape_loss("huber")
    with pytest.raises(ValueError, match="takes no coefficients"):
        make_shape_loss("mse:exp")
    with pytest.raises(ValueError, match="unknown loss"):
        parse_loss_spec("energy_sparse:exp")
    assert set(LOSSES) == {"mse", "mae", "kabsch_mse", "energy", "sparse_energy"}
    # a bare energy is energy:exp; the config keeps canonical spellings
    cfg = ShapesConfig(losses=("energy", "kabsch", "sparse_energy"), flow_losses=("energy",)).validate()
    assert cfg.losses == ("energy:exp", "kabsch_mse", "sparse_energy:exp") and cfg.flow_losses == ("energy:exp",)
    assert [parse_loss_spec(s).label for s in cfg.losses] == ["energy[exp]", "kabsch_mse", "sparse_energy[exp]"]


def test_shape_losses_equal_the_library_calls_they_replaced():
    """energy: pair_energy_loss(normalize="pairs"); sparse energy: one pool graph per structure, same draws."""
    from energyloss import pair_energy_loss
    from energyloss.rigidity import RigidGraphPool

    gen = torch.Generator().manual_seed(5)
    target = regular_polygon(torch.tensor([0.5, 1.0, 3.0, 4.5], dtype=torch.float64), 12)
    pred = target + 0.1 * torch.randn(target.shape, generator=gen, dtype=torch.float64)
    for scheme in ("constant", "inverse", "inverse_square", "exp"):
        want = pair_energy_loss(pred, target, coefficients=scheme, normalize="pairs", reduction="none")
        assert torch.equal(make_shape_loss(f"energy:{scheme}")(pred, target), want)
    pool = RigidGraphPool(2, k=4, size=5, seed=0)
    fn = make_shape_loss("sparse_energy:exp", pool=pool, generator=torch.Generator().manual_seed(7))
    ref_gen = torch.Generator().manual_seed(7)
    for _ in range(3):  # consecutive steps draw consecutive graphs from the same generator
        graphs = pool.graphs(12)
        edges = graphs[torch.randint(graphs.shape[0], (4,), generator=ref_gen)]
        want = pair_energy_loss(pred, target, coefficients="exp", edges=edges, normalize="pairs", reduction="none")
        assert torch.equal(fn(pred, target), want)


def test_seed_of_keeps_the_seeds_of_earlier_runs():
    """Every part is encoded as its string, as the experiment's former derived_seed did."""
    import numpy as np

    from energyloss.experiments.shapes.train import seed_of

    def former(*parts):
        words = []
        for part in parts:
            data = str(part).encode()
            words.extend([len(data), *data])
        return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))

    for parts in [(0, "train"), ("val",), (3, "init"), ("sparse_energy", "exp", 20, "graphs"), ("mse", None, 5)]:
        assert seed_of(*parts) == former(*parts), parts


# ------------------------------------------------------------------------------------------------ training


def _tiny_sets(n_train=256):
    train = {0: sample_shapes(n_train, generator=torch.Generator().manual_seed(10))}
    val = sample_shapes(64, generator=torch.Generator().manual_seed(11))
    test = sample_shapes(64, generator=torch.Generator().manual_seed(12))
    return train, val, test


def test_invariant_losses_do_not_see_the_augmentation_and_mse_does():
    """With common random numbers, an invariant loss trains identically at theta = 0 and theta = pi."""
    train, val, test = _tiny_sets(512)
    specs = [ModelSpec(0.0, 1e-2, 0), ModelSpec(math.pi, 1e-2, 0)]
    kw = dict(train_sets=train, val=val, test=test, epochs=4, batch_size=64)
    energy, _ = train_group("energy:exp", 8, specs, **kw)
    assert energy[0]["quality"] == pytest.approx(energy[1]["quality"], abs=1e-2)
    assert energy[0]["distance_rmse"] == pytest.approx(energy[1]["distance_rmse"], rel=1e-2, abs=1e-4)
    mse, _ = train_group("mse", 8, specs, **kw)
    assert mse[1]["radius_ratio"] < 0.5 < mse[0]["radius_ratio"]  # full rotation averages the shape away
    assert mse[1]["distance_rmse"] > 5 * mse[0]["distance_rmse"]


def test_train_group_records_and_divergence_guard():
    train, val, test = _tiny_sets()
    specs = [ModelSpec(1.0, 1e-3, 0), ModelSpec(1.0, 1e12, 0)]  # the second learning rate blows up
    records, figure = train_group(
        "kabsch_mse",
        6,
        specs,
        train_sets=train,
        val=val,
        test=test,
        epochs=2,
        batch_size=64,
        figure_radius=torch.tensor([1.0, 2.0]),
        figure_specs=[0],
    )
    assert [r["lr"] for r in records] == [1e-3, 1e12]
    for key in (
        "loss",
        "coefficients",
        "theta_aug",
        "n_vertices",
        "seed",
        "lr",
        "quality",
        "quality_authors",
        "distance_rmse",
        "radius_ratio",
        "val_quality",
        "train_loss",
    ):
        assert key in records[0]
    assert math.isfinite(records[0]["quality"]) and not records[0]["diverged"]
    assert set(figure) == {0} and torch.tensor(figure[0]).shape == (2, 6, 2)


def test_guarded_step_freezes_a_model_whose_loss_is_not_finite():
    weight = torch.ones(3, 2, requires_grad=True)  # one row per model
    opt = StackedAdam([weight], lr=[0.1, 0.1, 0.1])
    alive = torch.ones(3, dtype=torch.bool)
    per_model = (weight**2).sum(1) * torch.tensor([1.0, float("nan"), 1.0])
    used = guarded_step(per_model, alive, opt)
    assert alive.tolist() == [True, False, True] and used[1] == 0 and torch.isfinite(used).all()
    assert opt.lr[1] == 0 and (opt.lr[[0, 2]] > 0).all()
    live = weight.detach()[[0, 2]]
    assert torch.isfinite(live).all() and (live < 1).all()  # the live models stepped, untouched by the NaN
    guarded_step((weight.detach() ** 2).sum(1).requires_grad_(), alive, opt)  # a finite loss later: still frozen
    assert alive.tolist() == [True, False, True] and opt.lr[1] == 0


def test_stack_group_names_what_is_missing_and_both_trainers_check_it():
    train, val, test = _tiny_sets()
    specs = [ModelSpec(0.0, 1e-3, 0), ModelSpec(0.0, 1e-3, 1)]
    with pytest.raises(ValueError, match=r"no training set for seeds \[1\]"):
        stack_group(specs, train, 64, torch.device("cpu"))
    with pytest.raises(ValueError, match="same size"):
        stack_group(
            specs,
            {0: train[0], 1: sample_shapes(128, generator=torch.Generator().manual_seed(1))},
            64,
            torch.device("cpu"),
        )
    for trainer in (train_group, train_flow_group):  # the flow trainer raised a bare KeyError before
        with pytest.raises(ValueError, match="no training set"):
            trainer("mse", 5, specs, train_sets=train, val=val, test=test, epochs=1, batch_size=64)
    group = stack_group(specs[:1], train, 64, torch.device("cpu"))
    batches = list(group.batches(2, 64))
    assert group.steps_per_epoch == 4 and [b[0] for b in batches] == list(range(8))
    radii = torch.cat([b[1][0] for b in batches[: group.steps_per_epoch]])
    assert torch.equal(radii.sort().values, train[0].radius.sort().values)  # 4 whole batches: one permutation


def test_select_best_by_mean_validation_metric():
    recs = [
        {
            "loss": "mse",
            "coefficients": None,
            "theta_aug": 1.0,
            "n_vertices": 5,
            "lr": lr,
            "seed": s,
            "val_quality": q,
            "val_distance_rmse": d,
        }
        for lr, s, q, d in [
            (0.1, 0, 5.0, 0.3),
            (0.1, 1, 1.0, 0.3),
            (0.01, 0, 3.5, 0.1),
            (0.01, 1, 3.0, 0.2),
            (1.0, 0, float("nan"), 0.0),
            (1.0, 1, 9.0, 0.0),
        ]
    ]
    chosen = {r["lr"] for r in select_best(recs, "quality") if r["selected"]}
    assert chosen == {0.01}  # mean 3.25 beats 3.0; a NaN seed disqualifies lr = 1
    chosen = {r["lr"] for r in select_best(recs, "distance_rmse") if r["selected"]}
    assert chosen == {1.0}


def test_plan_tasks_groups_and_deduplicates():
    cfg = ShapesConfig(
        losses=("mse", "energy:exp"),
        theta_sweep=(0.0, 1.0),
        theta_losses=("mse",),
        n_sweep=(5, 20),
        n_losses=("mse", "sparse_energy:exp"),
        lrs=(1e-2, 3e-2),
        seeds=(0, 1),
        flow_losses=("mse",),
    )
    tasks = plan_tasks(cfg)
    names = sorted(t["name"] for t in tasks)
    assert names == sorted(
        [
            "regression-mse-N20",
            "regression-energy[exp]-N20",
            "regression-mse-N5",
            "regression-sparse_energy[exp]-N5",
            "regression-sparse_energy[exp]-N20",
            "flow-mse-N20",
        ]
    )
    mse20 = next(t for t in tasks if t["name"] == "regression-mse-N20")
    assert len(mse20["specs"]) == 2 * 2 * 2  # theta in {0, pi} (the main setting is shared) x 2 lrs x 2 seeds
    assert all(mse20["specs"][i][0] == pytest.approx(math.pi) for i in mse20["figure_specs"])
    assert PRESETS["paper"].n_train == 100_000 and PRESETS["paper"].epochs == 50
    with pytest.raises(ValueError, match="--select-by"):
        ShapesConfig(select_by="loss").validate()


# ------------------------------------------------------------------------------------------------ end to end


TINY = [
    "--n-train",
    "128",
    "--n-val",
    "32",
    "--n-test",
    "32",
    "--batch-size",
    "64",
    "--epochs",
    "1",
    "--lrs",
    "0.01",
    "0.03",
    "--seeds",
    "0",
    "--n-vertices",
    "6",
    "--theta-sweep",
    "0",
    "1",
    "--n-sweep",
    "5",
    "6",
    "--graph-pool-size",
    "3",
    "--flow-n-train",
    "128",
    "--flow-epochs",
    "1",
    "--flow-batch-size",
    "64",
    "--flow-lrs",
    "0.001",
    "--flow-seeds",
    "0",
    "--flow-sample-steps",
    "4",
    "--workers",
    "1",
    "--threads",
    "1",
]


def test_cli_end_to_end_every_loss(tmp_path, capsys):
    from energyloss.cli import main

    out = tmp_path / "run"
    args = [
        "run",
        "shapes",
        "--preset",
        "smoke",
        *TINY,
        "--losses",
        "mse",
        "mae",
        "kabsch_mse",
        "energy:constant",
        "energy:inverse",
        "energy:inverse_square",
        "energy:exp",
        "sparse_energy:exp",
        "--flow-losses",
        "mse",
        "energy:exp",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Loss comparison" in printed and "sparse_energy[exp]" in printed
    assert "\r" not in captured.out + captured.err  # stderr is not a terminal here: plain lines, no bars
    for name in (
        "config.json",
        "metrics.json",
        "records.csv",
        "flow_records.csv",
        "summary.md",
        "fig3a_samples.png",
        "fig3b_theta.png",
        "fig3c_vertices.png",
        "flow_samples.png",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    records = metrics["records"]
    # 8 losses at (pi, N=6); mse / kabsch / energy[exp] also at theta = 0; mse / energy / sparse also at N = 5
    assert len(records) == 2 * (8 + 3 + 3)
    required = {
        "loss",
        "coefficients",
        "theta_aug",
        "n_vertices",
        "seed",
        "lr",
        "quality",
        "quality_authors",
        "distance_rmse",
        "radius_ratio",
        "selected",
    }
    for rec in records:
        assert required <= set(rec)
        assert rec["loss"] in LOSSES
        assert (rec["coefficients"] is None) == (rec["loss"] not in ("energy", "sparse_energy"))
    assert {r["loss"] for r in records} == set(LOSSES)
    assert sum(r["selected"] for r in records) == len(records) // 2  # one of two learning rates per setting
    assert {r["loss"] for r in metrics["flow_records"]} == {"mse", "energy"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["n_vertices"] == 6 and config["preset"] == "smoke"

    # a second run in the same folder reuses every trained group (resume) and reproduces the records
    assert main(args) == 0
    again = json.loads((out / "metrics.json").read_text())["records"]
    assert [r["quality"] for r in again] == [r["quality"] for r in records]
    err = capsys.readouterr().err
    assert "resuming" in err and " done " not in err


@pytest.mark.parametrize(
    ("argv", "flag", "words"),
    [
        (["--epochs", "-1"], "--epochs", "positive integer"),
        (["--losses", "foo"], "--losses", "unknown loss"),
        (["--theta-aug", "2"], "--theta-aug", "fractions of pi"),
        (["--batch-size", "0"], "--batch-size", "positive integer"),
        (["--workers", "0"], "--workers", "positive integer"),
        (["--n-train", "64", "--batch-size", "128"], "--batch-size", "must not exceed"),
        (["--lrs", "none"], "--lrs", "at least one"),
        (["--n-losses", "mse,energy:cubic"], "--n-losses", "coefficient scheme"),
        (["--losses", "mse,mse"], "--losses", "twice"),
        (["--graph-degree", "3"], "--graph-degree", "never globally rigid"),
        (["--n-losses", "sparse_energy:exp:k=5", "--n-sweep", "5,9"], "--n-losses", "both odd"),
        (["--select-by", "loss"], "--select-by", "invalid choice"),
    ],
)
def test_cli_rejects_bad_options_with_one_line_naming_them(tmp_path, capsys, argv, flag, words):
    from energyloss.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "shapes", *argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and words in err, err
    assert not out.exists()  # nothing is started
