"""QM9 diffusion objective and trainer: every loss trains, resume is exact, 2-process DDP equals 1 process, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from energyloss import mse_loss
from energyloss.diffusion import diffusion_sample_loss
from energyloss.experiments.losses import POSITION_LOSSES, LossSpec, draw_pool_edges, parse_loss_spec
from energyloss.experiments.molecules import train as T
from energyloss.experiments.molecules.datasets import load_training_set
from energyloss.experiments.molecules.diffusion_model import AUTHORS_K0, MoleculeDiffusion, make_coefficients
from energyloss.experiments.molecules.models import GNNDynamics
from energyloss.experiments.molecules.registry import paper_hyperparameters, resolve_hyperparameters
from energyloss.geometry import center

from conftest import ddp_train_worker, free_port

ELEMENTS = (1, 6, 7, 8, 9)

TINY = T.QM9Config(
    model="gdm-aug",
    data="synthetic",
    hidden_nf=16,
    n_layers=2,
    diffusion_steps=20,
    batch_size=8,
    epochs=0.25,  # 256 synthetic molecules / 8 = 32 steps per epoch -> 8 steps
    ema_decay=0.9,
    eval_every=100.0,
    n_eval_samples=4,
    eval_batch_size=4,
    sampling_steps=3,
    novelty=False,
    checkpoint_every=1,
    device="cpu",
    threads=1,
)


def _batch(n=4, seed=0):
    ds = load_training_set(dataclasses.replace(TINY, seed=seed))
    return ds.get_batch(torch.arange(n))


def _model(loss, coefficients="exp", steps=20, seed=0):
    torch.manual_seed(seed)
    pool = None
    if loss == "sparse_energy":
        from energyloss.rigidity import RigidGraphPool

        pool = RigidGraphPool(3, size=4, seed=0)
    net = GNNDynamics(6, hidden_nf=16, n_layers=2)
    return MoleculeDiffusion(net, n_types=5, steps=steps, position_loss=loss, coefficients=coefficients, pool=pool)


@pytest.mark.parametrize(
    "loss,coefficients",
    [(name, "exp") for name in POSITION_LOSSES] + [("energy", c) for c in ("constant", "inverse", "inverse_square")],
)
def test_one_training_step_per_loss(loss, coefficients):
    model = _model(loss, coefficients)
    b = _batch()
    noise = model.draw_noise(4, b["positions"].shape[1], generator=torch.Generator().manual_seed(0), rotations=True)
    out = model(b["positions"], b["one_hot"], b["charges"], b["mask"], noise)
    assert out["loss"].shape == (4,) and torch.isfinite(out["loss"]).all() and (out["position"] > 0).all()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out["loss"].mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_bf16_precision_autocasts_only_the_denoiser_and_trains(tmp_path):
    b = _batch()
    exact, mixed = _model("energy"), _model("energy")
    mixed.precision = "bf16"
    noise = exact.draw_noise(4, b["positions"].shape[1], generator=torch.Generator().manual_seed(0), rotations=True)
    ref = exact(b["positions"], b["one_hot"], b["charges"], b["mask"], noise)
    out = mixed(b["positions"], b["one_hot"], b["charges"], b["mask"], noise)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]).all()
    # bfloat16 keeps 8 bits of mantissa: the loss moves by about a percent, not more
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=0.05, atol=0.0)
    assert not torch.equal(out["loss"], ref["loss"])  # the denoiser really ran in bfloat16
    out["loss"].mean().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in mixed.parameters())
    sample = mixed.sample(torch.tensor([3, 4]), elements=ELEMENTS, steps=3, generator=torch.Generator().manual_seed(0))
    assert sample["positions"].dtype == torch.float32 and torch.isfinite(sample["positions"]).all()
    with pytest.raises(ValueError, match="precision"):
        MoleculeDiffusion(GNNDynamics(6, hidden_nf=8, n_layers=1), n_types=5, steps=10, precision="fp16")
    cfg = dataclasses.replace(TINY, precision="bf16", max_steps=2)
    records = T.train_model(cfg, "energy:exp", tmp_path / "bf16", show_progress=False)
    assert records[-1]["step"] == 2 and math.isfinite(records[-1]["train_loss"])
    with pytest.raises(ValueError, match="precision: 'bf16' -> 'fp32'"):  # not resumed in another precision
        T.train_model(dataclasses.replace(cfg, precision="fp32"), "energy:exp", tmp_path / "bf16", show_progress=False)


def test_egnn_denoiser_trains_with_the_energy_loss_and_its_loss_is_rotation_invariant():
    from energyloss.experiments.molecules.models import EGNNDynamics

    torch.manual_seed(0)
    model = MoleculeDiffusion(EGNNDynamics(6, hidden_nf=16, n_layers=2), n_types=5, steps=20, position_loss="energy")
    model = model.double()
    b = _batch()
    pos = b["positions"].double()
    noise = model.draw_noise(4, pos.shape[1], generator=torch.Generator().manual_seed(0))
    noise["eps"] = noise["eps"].double()
    out = model(pos, b["one_hot"], b["charges"], b["mask"], noise)
    out["loss"].mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # an equivariant denoiser + an invariant loss: rotating the data and the noise together changes nothing
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    turned = dict(noise, eps=torch.cat([noise["eps"][..., :3] @ q.T, noise["eps"][..., 3:]], -1))
    out2 = model(pos @ q.T, b["one_hot"], b["charges"], b["mask"], turned)
    torch.testing.assert_close(out2["loss"], out["loss"].detach())


def test_mse_term_is_the_snr_weighted_sample_space_mse():
    """Eq. 3: the eps-MSE equals SNR_t * ||x - x_hat||^2 (here through the library's diffusion adapter)."""
    model = _model("mse").double()
    b = _batch()
    pos = b["positions"].double()
    x, _ = model.encode(pos, b["one_hot"], b["charges"], b["mask"])
    mask = b["mask"]
    g = torch.Generator().manual_seed(3)
    t = torch.randint(1, 21, (4,), generator=g)
    alpha, sigma = model.schedule.alpha(t), model.schedule.sigma(t)
    eps = center(torch.randn(x.shape, generator=g, dtype=torch.float64), mask=mask)
    pred = center(torch.randn(x.shape, generator=g, dtype=torch.float64), mask=mask)
    z = alpha[:, None, None] * x + sigma[:, None, None] * eps
    ours = model._position_term(pred, z, x, eps, alpha, sigma, mask, None)
    lib = diffusion_sample_loss(mse_loss, pred, z, x, alpha, sigma, mask=mask, reduction="none") * 3 / 9
    torch.testing.assert_close(ours, lib)


def test_energy_term_is_zero_for_a_rigidly_moved_clean_prediction():
    model = _model("energy").double()
    b = _batch()
    x, _ = model.encode(b["positions"].double(), b["one_hot"], b["charges"], b["mask"])
    mask = b["mask"]
    t = torch.tensor([3, 7, 12, 19])
    alpha, sigma = model.schedule.alpha(t), model.schedule.sigma(t)
    eps = center(torch.randn(x.shape, dtype=torch.float64), mask=mask)
    z = alpha[:, None, None] * x + sigma[:, None, None] * eps
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    x_moved = torch.where(mask[..., None], x @ q.T + 0.3, 0.0)
    pred = (z - alpha[:, None, None] * x_moved) / sigma[:, None, None]  # implies x_hat = x_moved
    energy = model._position_term(pred, z, x, eps, alpha, sigma, mask, None)
    assert energy.abs().max() < 1e-8
    shifted = model._position_term(pred + 0.1, z, x, eps, alpha, sigma, mask, None)  # a translation of x_hat
    assert shifted.abs().max() < 1e-8
    bent = pred + torch.where(mask[..., None], 0.1 * torch.randn(pred.shape, dtype=torch.float64), 0.0)
    assert model._position_term(bent, z, x, eps, alpha, sigma, mask, None).min() > 1e-4


def test_pool_edges_of_a_padded_batch_equal_the_per_molecule_sparse_loss():
    from energyloss import pair_energy_loss
    from energyloss.rigidity import RigidGraphPool

    pool = RigidGraphPool(3, size=5, seed=0)
    g = torch.Generator().manual_seed(0)
    num = torch.tensor([12, 9, 12, 4, 10])
    mask = torch.arange(12)[None] < num[:, None]
    edges = draw_pool_edges(pool, num, generator=g)
    pred, target = torch.randn(5, 12, 3, generator=g), torch.randn(5, 12, 3, generator=g)
    batched = pair_energy_loss(pred, target, edges=edges, mask=mask, coefficients="exp", reduction="none")
    for b, n in enumerate(num.tolist()):
        e_n = pool.graphs(n).shape[-1]
        own = edges[b, :, :e_n]
        assert any(torch.equal(own, graph) for graph in pool.graphs(n)), "not a graph of the pool"
        assert bool((edges[b, 0, e_n:] >= n).all())  # padding pairs touch a padded slot
        single = pair_energy_loss(pred[b, :n], target[b, :n], edges=own, coefficients="exp")
        torch.testing.assert_close(batched[b], single)


def test_authors_feature_distance_coefficients_match_a_direct_sum():
    model = _model("energy").double()
    model.coefficient_distance = "features"
    b = _batch()
    mask = b["mask"]
    x, h = model.encode(b["positions"].double(), b["one_hot"], b["charges"], mask)
    t = torch.tensor([2, 5, 9, 14])
    alpha, sigma = model.schedule.alpha(t), model.schedule.sigma(t)
    g = torch.Generator().manual_seed(0)
    eps = center(torch.randn(x.shape, generator=g, dtype=torch.float64), mask=mask)
    pred = center(torch.randn(x.shape, generator=g, dtype=torch.float64), mask=mask)
    z = alpha[:, None, None] * x + sigma[:, None, None] * eps
    ours = model._position_term(pred, z, x, eps, alpha, sigma, mask, None, h)
    x_hat = (z - sigma[:, None, None] * pred) / alpha[:, None, None]
    xh = torch.cat([x, h], -1)
    for s in range(4):
        n = int(mask[s].sum())
        total = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                k = 42.0 * torch.exp(-(xh[s, i] - xh[s, j]).norm())
                total += k * ((x[s, i] - x[s, j]).norm() - (x_hat[s, i] - x_hat[s, j]).norm()) ** 2
        expected = total / n * alpha[s] ** 2 / sigma[s] ** 2
        torch.testing.assert_close(ours[s], expected)
    with pytest.raises(ValueError, match="energy' only"):
        MoleculeDiffusion(GNNDynamics(6, hidden_nf=4, n_layers=1), n_types=5, coefficient_distance="features")


def test_loss_of_a_molecule_does_not_depend_on_its_batch_mates():
    model = _model("energy")
    b = _batch(6)
    noise = model.draw_noise(6, b["positions"].shape[1] + 2, generator=torch.Generator().manual_seed(1))
    full = model(b["positions"], b["one_hot"], b["charges"], b["mask"], noise)["loss"]
    n0 = int(b["mask"][0].sum())
    one = model(
        b["positions"][:1, :n0],
        b["one_hot"][:1, :n0],
        b["charges"][:1, :n0],
        b["mask"][:1, :n0],
        {k: v[:1] for k, v in noise.items()},
    )["loss"]
    torch.testing.assert_close(one[0], full[0], rtol=1e-5, atol=1e-6)


def test_sampler_recovers_the_molecule_of_an_oracle_denoiser():
    """With the exact noise of a one-molecule data set, ancestral sampling (full or strided) returns it."""
    model = _model("mse", steps=50)
    x0 = center(torch.randn(1, 4, 3))
    z = torch.tensor([[6.0, 1, 1, 1]])
    oh = torch.nn.functional.one_hot(torch.tensor([[1, 0, 0, 0]]), 5).float()
    x, h = model.encode(x0, oh, z, torch.ones(1, 4, dtype=torch.bool))
    sched, steps = model.schedule, model.steps

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, xt, ht, t, mask):
            ti = torch.round(t * steps).long()
            a, s = sched.alpha(ti).float()[:, None, None], sched.sigma(ti).float()[:, None, None]
            return (xt - a * x) / s, (ht - a * h) / s

    model.dynamics = Oracle()
    for n_steps in (None, 7):
        out = model.sample(torch.tensor([4, 4]), elements=ELEMENTS, steps=n_steps, generator=torch.Generator())
        torch.testing.assert_close(out["positions"], x0.expand(2, 4, 3), atol=1e-5, rtol=0)
        assert out["atomic_numbers"].tolist() == [[6, 1, 1, 1]] * 2
    assert model._sampling_grid(7)[0] == 50 and model._sampling_grid(7)[-1] == 0
    with pytest.raises(ValueError, match="sampling steps"):
        model.sample(torch.tensor([3]), elements=ELEMENTS, steps=51)


def test_hyperparameters_and_loss_specs():
    assert paper_hyperparameters("gdm", "energy:exp") == (4e-4, 0.05)
    assert paper_hyperparameters("gdm-aug", "mse") == (1e-3, 1.5)
    assert paper_hyperparameters("egnn", "energy:inverse_square") == (1e-4, 0.1)
    assert paper_hyperparameters("egnn", "sparse_energy:exp") == (1e-4, 0.05)
    assert paper_hyperparameters("gdm", "energy:exp:k0=3") == (4e-4, 0.05)  # the scale is not a table key
    unlisted = LossSpec("energy", "a_new_scheme")  # a scheme the paper's tables do not have
    with pytest.raises(ValueError, match="give --lr and --position-weight"):
        resolve_hyperparameters("gdm", unlisted, lr=None, position_weight=None)
    with pytest.raises(ValueError, match="give --position-weight"):
        resolve_hyperparameters("gdm", unlisted, lr=1e-3, position_weight=None)
    assert resolve_hyperparameters("gdm", unlisted, lr=1e-3, position_weight=0.1) == (1e-3, 0.1)
    assert resolve_hyperparameters("egnn", "mse", lr=None, position_weight=2.0) == (3e-4, 2.0)
    assert make_coefficients("inverse").k0 == AUTHORS_K0["inverse"] == 5.0
    assert make_coefficients("exp", k0=2.0).k0 == 2.0
    assert str(parse_loss_spec("energy")) == "energy:exp" and str(parse_loss_spec("kabsch")) == "kabsch_mse"
    with pytest.raises(ValueError, match="unknown loss"):
        parse_loss_spec("huber")
    with pytest.raises(ValueError, match="takes no coefficients"):
        parse_loss_spec("mse:exp")
    with pytest.raises(ValueError, match="pool"):
        MoleculeDiffusion(GNNDynamics(6, hidden_nf=4, n_layers=1), n_types=5, position_loss="sparse_energy")
    with pytest.raises(ValueError, match="coefficients must be one of"):
        make_coefficients("morse")


def test_wasserstein_and_nearest_neighbours():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3000, generator=g), 0.5 * torch.randn(2000, generator=g) + 0.3
    assert T.wasserstein_1d(a, b) == pytest.approx(scipy_stats.wasserstein_distance(a, b), abs=2e-3)
    pos = torch.tensor([[[0.0, 0, 0], [1.1, 0, 0], [9.0, 9, 9]], [[0.0, 0, 0], [0, 1.5, 0], [0, 0, 0]]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    torch.testing.assert_close(
        T.nearest_neighbour_distances(pos, mask), torch.tensor([1.1, 1.1, (7.9**2 + 81 + 81) ** 0.5, 1.5, 1.5])
    )


def _params(path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = TINY
    T.train_model(cfg, "energy:exp", tmp_path / "full", show_progress=False)

    class Crash(RuntimeError):
        pass

    def crash(step):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        T.train_model(cfg, "energy:exp", tmp_path / "cut", on_step=crash, show_progress=False)
    assert _params(tmp_path / "cut" / "checkpoint.pt")["step"] == 3
    records = T.train_model(cfg, "energy:exp", tmp_path / "cut", show_progress=False)
    a, b = _params(tmp_path / "full" / "checkpoint.pt"), _params(tmp_path / "cut" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8 == records[-1]["step"]
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    assert a["grad_norms"] == b["grad_norms"]
    # a checkpoint refuses a run with other settings
    with pytest.raises(ValueError, match="belongs to a run with other settings"):
        T.train_model(dataclasses.replace(cfg, hidden_nf=8), "energy:exp", tmp_path / "cut", show_progress=False)
    with pytest.raises(ValueError, match="coefficient_distance"):
        T.train_model(
            dataclasses.replace(cfg, coefficient_distance="features"),
            "energy:exp",
            tmp_path / "cut",
            show_progress=False,
        )


def test_a_finished_run_extended_by_epochs_equals_the_longer_run(tmp_path):
    # The CPU study's seed-0 job at a tuned rate continues the 4-epoch learning-rate check at that rate (same seed,
    # loss, lr) to 8 epochs: only epochs and the evaluation may differ between a checkpoint and the run resuming it.
    cfg = dataclasses.replace(TINY, eval_every=0.125, n_final_samples=6)  # an evaluation every 4 steps
    T.train_model(cfg, "energy:exp", tmp_path / "long", show_progress=False)
    short = dataclasses.replace(cfg, epochs=0.125)
    T.train_model(short, "energy:exp", tmp_path / "extended", show_progress=False)
    assert _params(tmp_path / "extended" / "checkpoint.pt")["step"] == 4
    records = T.train_model(cfg, "energy:exp", tmp_path / "extended", show_progress=False)
    a, b = _params(tmp_path / "long" / "checkpoint.pt"), _params(tmp_path / "extended" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8 == records[-1]["step"]
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after extending the run"
    assert a["grad_norms"] == b["grad_norms"]
    # the short run's last evaluation was its final one (n_final_samples); the longer run evaluated 4 at step 4
    assert [(r["step"], r["n_samples"]) for r in records] == [(4, 6), (8, 6)]
    long_records = json.loads((tmp_path / "long" / "metrics.json").read_text())["records"]
    assert [(r["step"], r["n_samples"]) for r in long_records] == [(4, 4), (8, 6)]
    # the extended run's config.json keeps the machine entry of the process that trained its first half
    config = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert len(config["earlier_machines"]) == 1 and config["machine"]["energyloss"]
    assert json.loads((tmp_path / "long" / "config.json").read_text())["earlier_machines"] == []
    # reopening a finished run trains nothing and leaves its record alone (the study queue reopens finished jobs)
    before = (tmp_path / "long" / "config.json").read_bytes()
    again = T.train_model(cfg, "energy:exp", tmp_path / "long", show_progress=False)
    assert again == long_records and (tmp_path / "long" / "config.json").read_bytes() == before


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=3 / 32, n_eval_samples=6)  # 3 steps of a global batch of 8
    T.train_model(cfg, "energy:exp", tmp_path / "single", show_progress=False)
    torch.multiprocessing.spawn(ddp_train_worker, args=(2, free_port(), str(tmp_path / "ddp"), cfg), nprocs=2)
    a, b = _params(tmp_path / "single" / "checkpoint.pt"), _params(tmp_path / "ddp" / "checkpoint.pt")
    assert a["step"] == b["step"] == 3
    lr = json.loads((tmp_path / "single" / "config.json").read_text())["lr"]
    for name, value in a["model"].items():
        other = b["model"][name]
        if name == "dynamics.out.bias":
            # The position-output biases have an exactly-zero gradient (centring removes them), so Adam turns
            # rounding noise of size 1e-9 into steps of up to lr: they agree only to 3 steps * lr.
            torch.testing.assert_close(other[:3], value[:3], rtol=0, atol=3 * lr)
            other, value = other[3:], value[3:]
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-6)
    # the training loss is reduced over ranks; the metrics count every rank's samples
    torch.testing.assert_close(b["records"][-1]["train_loss"], a["records"][-1]["train_loss"], rtol=1e-5, atol=0)
    assert b["records"][-1]["n_samples"] == 6
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2


def test_cli_end_to_end_on_synthetic_data(tmp_path):
    from energyloss.cli import main

    out = tmp_path / "run"
    args = ["run", "qm9", "--preset", "smoke", "--out", str(out), "--losses", "mse,sparse_energy:inverse"]
    args += ["--epochs", "0.25", "--eval-every", "0.125", "--n-eval-samples", "4", "--sampling-steps", "3"]
    assert main(args) == 0
    for name in ("config.json", "metrics.json", "records.csv", "summary.md", "convergence.png"):
        assert (out / name).is_file(), name
    for tag in ("mse", "sparse_energy-inverse"):
        assert (out / tag / "checkpoint.pt").is_file() and (out / tag / "samples.npz").is_file()
    records = json.loads((out / "metrics.json").read_text())["records"]
    assert [r["loss"] for r in records] == ["mse", "mse", "sparse_energy:inverse", "sparse_energy:inverse"]
    assert all(0.0 <= r["atom_stability"] <= 1.0 and r["nn_distance_w1"] >= 0 for r in records)
    assert len(list((out / "mse" / "samples").glob("step-*.npz"))) == 2
    from energyloss.experiments.molecules.data import load_molecules

    assert len(load_molecules(out / "mse" / "samples.npz")) == 4
    summary = (out / "summary.md").read_text()
    assert "| mse |" in summary and "sparse_energy:inverse" in summary
    # config resolution: --loss/--coefficients, paper batch sizes from the model registry, and errors
    cfg = _config(["--preset", "smoke", "--loss", "energy", "--coefficients", "inverse", "--model", "egnn"])
    assert cfg == _config(["--preset", "smoke", "--losses", "energy:inverse", "--model", "egnn"])
    assert cfg["losses"] == ["energy:inverse"] and cfg["model"] == "egnn" and cfg["hidden_nf"] == 32
    paper = _config(["--preset", "paper"])
    assert (paper["n_layers"], paper["hidden_nf"], paper["diffusion_steps"], paper["batch_size"]) == (9, 256, 1000, 512)
    paper_edm = _config(["--preset", "paper", "--loss", "mse", "--model", "egnn"])
    assert paper_edm["batch_size"] == 400 and paper_edm["ema_decay"] == 0.9999
    assert _config(["--preset", "paper", "--model", "egnn", "--batch-size", "64"])["batch_size"] == 64
    # a run folder's config.json reproduces its config
    assert _config(["--config", str(out / "config.json")]) == json.loads((out / "config.json").read_text())["config"]


def _config(args: list[str]) -> dict:
    import contextlib
    import io

    from energyloss.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["run", "qm9", *args, "--print-config"]) == 0
    return json.loads(buffer.getvalue())["config"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "-1"], "epochs must be > 0"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--losses", "mse,huber"], "unknown loss 'huber'"),
        (["--loss", "energy", "--coefficients", "morse"], "unknown coefficient scheme 'morse'"),
        (["--coefficients", "exp"], "--coefficients sets the scheme"),
        (["--model", "transformer"], "invalid choice"),
        (["--lr", "fast"], "invalid float"),
        (["--loss", "mse", "--losses", "mae"], "not both"),
        (["--config", "/nonexistent/config.json"], "no such file"),
    ],
)
def test_cli_refuses_bad_values_with_one_line_and_exit_2(args, message, capsys):
    from energyloss.cli import main

    with pytest.raises(SystemExit) as err:
        main(["run", "qm9", "--preset", "smoke", *args])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_new_coefficient_scheme_trains_from_the_cli(tmp_path, monkeypatch):
    """Adding a scheme to the library's table makes it a loss of every experiment; the paper's tables do not
    know it, so the command needs --lr and --position-weight and then trains."""
    from energyloss import coefficients
    from energyloss.cli import main

    class Halved(coefficients.InverseCoefficients):
        pass

    monkeypatch.setitem(coefficients.COEFFICIENT_SCHEMES, "halved_inverse", Halved)
    base = ["run", "qm9", "--preset", "smoke", "--data", "synthetic", "--epochs", "0.1", "--n-eval-samples", "4"]
    base += ["--sampling-steps", "3", "--loss", "energy", "--coefficients", "halved_inverse", "--no-progress"]
    with pytest.raises(SystemExit) as err:
        main([*base, "--out", str(tmp_path / "refused")])
    assert err.value.code == 2
    assert main([*base, "--lr", "1e-3", "--position-weight", "0.1", "--k0", "1", "--out", str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "energy-halved_inverse" / "config.json").read_text())
    assert config["loss"] == "energy:halved_inverse" and "Halved(k0=1.0" in config["coefficients"]
    records = json.loads((tmp_path / "r" / "metrics.json").read_text())["records"]
    assert records and all(r["loss"] == "energy:halved_inverse" for r in records)


def test_resume_with_a_changed_setting_is_refused_and_names_it(tmp_path, capsys):
    from energyloss.cli import main

    base = ["run", "qm9", "--preset", "smoke", "--data", "synthetic", "--epochs", "0.1", "--n-eval-samples", "4"]
    base += ["--sampling-steps", "3", "--losses", "mse", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(base) == 0
    first = json.loads((tmp_path / "r" / "metrics.json").read_text())["records"]
    capsys.readouterr()
    assert main([*base, "--nf", "8"]) == 1
    err = capsys.readouterr().err
    assert "hidden_nf: 32 -> 8" in err and "Traceback" not in err
    # the same settings resume (here: nothing left to train) and give the same records
    assert main(base) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["records"] == first
    assert "\r" not in capsys.readouterr().err  # not a terminal: plain lines, no bar fragments
