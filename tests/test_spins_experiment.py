"""Tests of the spin-glass experiment: exact ground-state solvers, the data cache, the CNN, the CLI run."""

import csv
import dataclasses
import json
import os
import re
import time

import numpy as np
import pytest
import torch

from energyloss.experiments.spins import PRESETS, SpinsConfig, data, solver
from energyloss.experiments.spins.model import SpinResNet, coupling_features
from energyloss.experiments.spins.train import LOSSES, evaluate, make_loss

pytest.importorskip("pymatching")
pytest.importorskip("scipy")


# ----------------------------------------------------------------------------------------------------------------
# solvers


@pytest.mark.parametrize("periodic", [False, True])
def test_solvers_match_brute_force_on_4x4(periodic):
    rng = np.random.default_rng(0)
    methods = ["milp", "auto"] + ([] if periodic else ["matching"])
    for _ in range(6):
        J = solver.random_couplings(4, rng=rng, periodic=periodic)
        spins_bf, e_bf = solver.brute_force_ground_state(J, periodic=periodic)
        for method in methods:
            spins, e = solver.ground_state(J, periodic=periodic, method=method)
            assert e == pytest.approx(e_bf, abs=1e-9), method
            assert spins.dtype == np.int8 and spins[0, 0] == 1
            assert e == pytest.approx(float(solver.energy(spins, J, periodic=periodic)), abs=1e-12)
            # continuous couplings: the ground state is unique up to the global flip
            np.testing.assert_array_equal(spins, spins_bf)


def test_solvers_on_rectangular_and_degenerate_lattices():
    rng = np.random.default_rng(1)
    for shape in [(3, 5), (1, 6), (5, 1), (2, 2)]:
        J = solver.random_couplings(*shape, rng=rng)
        _, e_bf = solver.brute_force_ground_state(J)
        assert solver.matching_ground_state(J)[1] == pytest.approx(e_bf, abs=1e-9)
        assert solver.milp_ground_state(J)[1] == pytest.approx(e_bf, abs=1e-9)


def test_matching_with_zero_couplings_and_ties():
    J = np.zeros((2, 4, 4))
    J[0, :, :-1] = 0.5  # every horizontal bond ferro, vertical bonds absent: many degenerate ground states
    J[1, 0, :] = -0.25
    _, e_bf = solver.brute_force_ground_state(J)
    spins, e = solver.matching_ground_state(J)
    assert e == pytest.approx(e_bf)
    assert spins[0, 0] == 1


def test_matching_and_milp_agree_on_16x16():
    rng = np.random.default_rng(2)
    for _ in range(2):
        J = solver.random_couplings(16, rng=rng)
        s_match, e_match = solver.matching_ground_state(J)
        s_milp, e_milp = solver.milp_ground_state(J)
        assert e_match == pytest.approx(e_milp, abs=1e-9)
        np.testing.assert_array_equal(s_match, s_milp)


def test_auto_falls_back_to_milp_off_the_dyadic_grid():
    rng = np.random.default_rng(3)
    J = solver.random_couplings(4, rng=rng, grid=None).astype(np.float64)
    J[0, 0, 0] = 1 / 3  # not representable as an integer weight after power-of-two scaling
    with pytest.raises(ValueError, match="dyadic grid"):
        solver.matching_ground_state(J)
    _, e = solver.ground_state(J)
    assert e == pytest.approx(solver.brute_force_ground_state(J)[1], abs=1e-9)


def test_solver_input_validation():
    J = solver.random_couplings(4, rng=np.random.default_rng(4), periodic=True)
    with pytest.raises(ValueError, match="open boundaries"):
        solver.ground_state(J)
    with pytest.raises(ValueError, match="needs open boundaries"):
        solver.ground_state(J, periodic=True, method="matching")
    with pytest.raises(ValueError, match="method"):
        solver.ground_state(J, periodic=True, method="simplex")
    with pytest.raises(ValueError, match=r"shape \(2, H, W\)"):
        solver.ground_state(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="brute force is limited"):
        solver.brute_force_ground_state(np.zeros((2, 5, 5)))


def test_energy_matches_torch_core():
    from energyloss.spins import ising_energy

    rng = np.random.default_rng(5)
    for periodic in (False, True):
        J = solver.random_couplings(5, rng=rng, periodic=periodic)
        s = rng.choice([-1, 1], size=(3, 5, 5)).astype(np.int8)
        ours = solver.energy(s, J, periodic=periodic)
        core = ising_energy(torch.from_numpy(s).double(), torch.from_numpy(J).double(), periodic=periodic)
        np.testing.assert_allclose(ours, core.numpy(), atol=1e-12)


def test_canonical_labelling():
    s = np.array([[[-1, 1], [1, -1]], [[1, -1], [-1, -1]]], dtype=np.int8)
    c = solver.canonical(s)
    assert (c[:, 0, 0] == 1).all()
    np.testing.assert_array_equal(c[1], s[1])
    np.testing.assert_array_equal(c[0], -s[0])


# ----------------------------------------------------------------------------------------------------------------
# data


def test_generation_is_reproducible_and_prefix_stable():
    spec = data.SpinDataSpec(size=5, seed=7)
    a = data.generate(spec, "train", 5, show_progress=False)
    b = data.generate(spec, "train", 3, show_progress=False)
    for key in ("couplings", "spins", "energies"):
        np.testing.assert_array_equal(a[key][:3], b[key])
    c = data.generate(spec, "test", 3, show_progress=False)
    assert not np.array_equal(a["couplings"][:3], c["couplings"])
    assert (a["spins"][:, 0, 0] == 1).all()
    np.testing.assert_allclose(solver.energy(a["spins"], a["couplings"]), a["energies"], atol=1e-9)


def test_cache_roundtrip_env_variable_and_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    spec = data.SpinDataSpec(size=4, seed=1)
    first, info = data.load_or_generate(spec, "val", 6, show_progress=False)
    assert not info["cached"] and info["path"].startswith(str(tmp_path))
    again, info2 = data.load_or_generate(spec, "val", 6, show_progress=False)
    assert info2["cached"]
    np.testing.assert_array_equal(first["spins"], again["spins"])
    # a smaller request reuses the larger file (instances are prefix-stable)
    prefix, info3 = data.load_or_generate(spec, "val", 4, show_progress=False)
    assert info3["cached"] and info3["path"] == info["path"]
    np.testing.assert_array_equal(prefix["couplings"], first["couplings"][:4])
    # another spec never reuses it
    _, info4 = data.load_or_generate(data.SpinDataSpec(size=4, seed=2), "val", 4, show_progress=False)
    assert not info4["cached"]
    # corruption is detected
    with np.load(info["path"]) as f:
        stored = {k: f[k] for k in f.files}
    stored["energies"] = stored["energies"] + 1.0
    np.savez(info["path"], **stored)
    with pytest.raises(ValueError, match="checksum"):
        data.load_or_generate(spec, "val", 6, show_progress=False, on_invalid="raise")
    with pytest.warns(UserWarning, match=rf"corrupt and will be regenerated: {re.escape(info['path'])}: checksum"):
        rebuilt, info_rebuilt = data.load_or_generate(spec, "val", 6, show_progress=False)
    assert not info_rebuilt["cached"]
    np.testing.assert_array_equal(rebuilt["energies"], first["energies"])
    # an explicit cache_dir wins over the environment
    _, info5 = data.load_or_generate(spec, "val", 2, cache_dir=tmp_path / "other", show_progress=False)
    assert info5["path"].startswith(str(tmp_path / "other"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing-array", "wrong-shape"])
def test_corrupt_cache_file_is_reported_with_its_path_and_rebuilt(tmp_path, damage):
    spec = data.SpinDataSpec(size=4, seed=3)
    fresh, info = data.load_or_generate(spec, "test", 5, cache_dir=tmp_path, show_progress=False)
    path = info["path"]
    raw = open(path, "rb").read()
    if damage == "truncated":
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"not a zip file at all" * 10)
    elif damage == "empty":
        open(path, "wb").close()
    else:
        with np.load(path) as f:
            stored = {k: f[k] for k in f.files}
        if damage == "missing-array":
            del stored["spins"]
        else:
            stored["spins"] = stored["spins"][:, :3]
        np.savez(path, **stored)
    with pytest.raises(ValueError, match=re.escape(path)):
        data.load_or_generate(spec, "test", 5, cache_dir=tmp_path, show_progress=False, on_invalid="raise")
    with pytest.warns(UserWarning, match=re.escape(path)):
        again, info2 = data.load_or_generate(spec, "test", 5, cache_dir=tmp_path, show_progress=False)
    assert not info2["cached"] and info2["path"] == path
    for key in ("couplings", "spins", "energies"):
        np.testing.assert_array_equal(again[key], fresh[key])
    _, info3 = data.load_or_generate(spec, "test", 5, cache_dir=tmp_path, show_progress=False)
    assert info3["cached"]  # the rebuilt file is valid


def test_stale_temporary_files_are_removed(tmp_path):
    spec = data.SpinDataSpec(size=4, seed=4)
    folder = tmp_path / "spins"
    folder.mkdir()
    dead = folder / "test-L4-x-n5.npz.tmp999999999.npz"  # no such process
    mine = folder / f"test-L4-x-n5.npz.tmp{os.getpid()}.npz"  # a live writer (this process)
    old = folder / f"test-L4-x-n6.npz.tmp{os.getpid()}.npz"  # a live pid, but a day old
    for p in (dead, mine, old):
        p.write_bytes(b"partial")
    stale = time.time() - data.STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (stale, stale))
    data.load_or_generate(spec, "test", 2, cache_dir=tmp_path, show_progress=False)
    assert not dead.exists() and not old.exists() and mine.exists()
    assert sorted(p.name for p in folder.iterdir() if ".tmp" in p.name) == [mine.name]


# ----------------------------------------------------------------------------------------------------------------
# model, losses, evaluation


def test_coupling_features_see_all_four_bonds():
    J = torch.from_numpy(solver.random_couplings(4, rng=np.random.default_rng(6))).unsqueeze(0)
    f = coupling_features(J)
    # left coupling of (r, c) is the right coupling of (r, c-1); up coupling of (r, c) is the down of (r-1, c)
    torch.testing.assert_close(f[0, 2, :, 1:], J[0, 0, :, :-1])
    torch.testing.assert_close(f[0, 3, 1:, :], J[0, 1, :-1, :])
    assert (f[0, 2, :, 0] == 0).all() and (f[0, 3, 0, :] == 0).all()


def test_periodic_network_is_translation_equivariant():
    torch.manual_seed(0)
    net = SpinResNet(channels=8, depth=2, periodic=True).eval()
    J = torch.randn(2, 2, 6, 6)
    shifted = torch.roll(J, shifts=(2, 3), dims=(-2, -1))
    torch.testing.assert_close(net(shifted), torch.roll(net(J), shifts=(2, 3), dims=(-2, -1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains(name):
    config = SpinsConfig(size=4, n_train=8, n_val=4, n_test=4, losses=(name,))
    loss_fn = make_loss(name, config)
    J = torch.from_numpy(np.stack([solver.random_couplings(4, rng=np.random.default_rng(k)) for k in range(3)]))
    y = torch.from_numpy(np.stack([solver.ground_state(j.numpy())[0] for j in J]).astype(np.float32))
    z = torch.randn(3, 4, 4, requires_grad=True)
    loss = loss_fn(z, y, J)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_evaluate_perfect_and_flipped_predictions():
    rng = np.random.default_rng(8)
    J = np.stack([solver.random_couplings(4, rng=rng) for _ in range(5)])
    solved = [solver.ground_state(j) for j in J]
    y = torch.tensor(np.stack([s for s, _ in solved]), dtype=torch.float32)
    e = torch.tensor([v for _, v in solved], dtype=torch.float64)

    class Oracle(torch.nn.Module):
        def __init__(self, sign):
            super().__init__()
            self.sign = sign
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, couplings):
            index = [int(np.argmin([np.abs(c.numpy() - j).sum() for j in J])) for c in couplings]
            return self.sign * 3.0 * y[index]

    for sign in (1.0, -1.0):  # the energy, hence the metric, is flip invariant
        m = evaluate(Oracle(sign), torch.from_numpy(J), y, e, periodic=False)
        assert m["residual"] == pytest.approx(0.0, abs=1e-9)
        assert m["exact"] == 1.0 and m["site_accuracy"] == 1.0
        assert m["energy"] == pytest.approx(float(e.mean()))


def test_presets_are_valid():
    assert set(PRESETS) == {"smoke", "default", "paper"}
    paper = PRESETS["paper"]
    assert (paper.n_train, paper.n_test, paper.size, paper.channels, paper.depth) == (10_000, 10_000, 16, 256, 6)
    assert (paper.batch_size, paper.lr, paper.temperature) == (256, 1e-3, 0.1)
    for preset in PRESETS.values():
        assert preset.validate() == preset
    with pytest.raises(ValueError, match="--losses: unknown spin loss 'mse'; choose from cross_entropy"):
        SpinsConfig(losses=("mse",)).validate()


def test_one_list_of_spin_losses():
    from energyloss.experiments.losses import SPIN_LOSSES

    assert list(LOSSES) == list(SPIN_LOSSES)
    config = SpinsConfig()
    for name in SPIN_LOSSES:  # every name of the vocabulary has an implementation
        assert callable(make_loss(name, config))
    with pytest.raises(ValueError, match="unknown spin loss 'mse'; choose from cross_entropy, margin"):
        make_loss("mse", config)
    assert SpinsConfig(losses=("margin-flip",)).validate().losses == ("margin_flip",)


def test_job_fingerprint_covers_the_settings_that_change_a_result():
    from energyloss.experiments.runs import fingerprint
    from energyloss.experiments.spins.train import job_settings

    base = PRESETS["smoke"]
    fp = fingerprint(job_settings(base, "margin", 0))
    same = [{"workers": 2}, {"threads": 3}, {"cache_dir": "elsewhere"}, {"losses": ("margin",)}, {"seeds": (0, 1)}]
    for change in same:
        assert fingerprint(job_settings(dataclasses.replace(base, **change), "margin", 0)) == fp, change
    other = [
        {"size": 4},
        {"periodic": True},
        {"n_train": 63},
        {"n_val": 15},
        {"n_test": 31},
        {"data_seed": 1},
        {"channels": 9},
        {"depth": 3},
        {"batch_size": 16},
        {"lr": 3e-3},
        {"max_epochs": 3},
        {"patience": 1},
        {"temperature": 0.2},
        {"h0": 4.5},
        {"margin": 0.5},
        {"device": "cuda"},
        {"amp": True},
        {"time_limit": 10.0},
    ]
    for change in other:
        assert fingerprint(job_settings(dataclasses.replace(base, **change), "margin", 0)) != fp, change
    assert fingerprint(job_settings(base, "margin", 1)) != fp
    assert fingerprint(job_settings(base, "cross_entropy", 0)) != fp


# ----------------------------------------------------------------------------------------------------------------
# end to end


def test_cli_smoke_run_and_resume(tmp_path, monkeypatch):
    from energyloss.cli import main

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["run", "spins", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    for name in ("config.json", "metrics.json", "records.csv", "curves.csv", "summary.md"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_loss"]) == set(PRESETS["smoke"].losses)
    for loss in metrics["per_loss"].values():
        assert loss["test_residual"]["mean"] >= -1e-9
    assert "paper Table 5" in (out / "summary.md").read_text()
    n_records = len((out / "records.csv").read_text().strip().splitlines()) - 1
    assert n_records == len(PRESETS["smoke"].losses) * len(PRESETS["smoke"].seeds)
    # a second call resumes: every job is already finished, nothing is retrained
    stamp = (out / "jobs" / "cross_entropy-seed0.json").stat().st_mtime_ns
    assert main(["run", "spins", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert (out / "jobs" / "cross_entropy-seed0.json").stat().st_mtime_ns == stamp


def _spins(*argv) -> int:
    from energyloss.cli import main

    return main(["run", "spins", "--preset", "smoke", "--no-progress", *map(str, argv)])


def _records(out) -> list[dict]:
    with open(out / "records.csv") as fh:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(fh)]


def test_changed_settings_in_the_same_folder_are_redone_never_mixed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    losses = ("--losses", "cross_entropy,margin")
    assert _spins("--out", out, *losses) == 0
    assert "(6x6" in capsys.readouterr().out
    assert _spins("--out", out, "--size", 4, *losses) == 0
    captured = capsys.readouterr()
    assert "size: 6 -> 4" in captured.err  # the change is reported ...
    assert "0 finished jobs kept, 2 to run (2 of them saved with other settings" in captured.err  # ... and redone
    assert "## Spin-glass ground states (4x4, open boundaries)" in captured.out
    assert "(4x4" in (out / "summary.md").read_text()
    assert _spins("--out", fresh, "--size", 4, *losses) == 0
    assert _records(out) == _records(fresh)  # the numbers are those of a 4x4 run, nothing of the 6x6 one
    assert json.loads((out / "config.json").read_text())["config"]["size"] == 4
    # settings that never change a result (threads here) keep the finished jobs
    capsys.readouterr()
    assert _spins("--out", out, "--size", 4, "--threads", 2, *losses) == 0
    assert "resuming: 2 finished jobs kept, 0 to run" in capsys.readouterr().err
    assert _records(out) == _records(fresh)


def test_truncated_job_file_is_reported_and_redone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert _spins("--out", out, "--losses", "margin,true_energy") == 0
    before = _records(out)
    job = out / "jobs" / "margin-seed0.json"
    job.write_text(job.read_text()[:50])  # an interrupted writer of the old code left half a file
    capsys.readouterr()
    assert _spins("--out", out, "--losses", "margin,true_energy") == 0
    err = capsys.readouterr().err
    assert f"corrupt job file {job}" in err and "it is redone" in err
    assert "1 finished jobs kept, 1 to run" in err
    assert json.loads(job.read_text())["result"]["record"]["loss"] == "margin"
    assert _records(out) == before
    assert not list((out / "jobs").glob("*.tmp-*"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-epochs", "-3"], "--max-epochs: must be a positive integer, got -3"),
        (["--losses", "foo"], "--losses: unknown spin loss 'foo'; choose from cross_entropy"),
        (["--losses", "none"], "--losses: give at least one loss"),
        (["--losses", "margin,margin"], "--losses: a loss is given twice"),
        (["--size", "1"], "--size: the lattice side must be >= 2"),
        (["--n-test", "0"], "--n-test: must be a positive integer"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["--workers", "0"], "--workers: must be a positive integer"),
        (["--temperature", "0"], "--temperature: must be a positive number"),
        (["--temperature", "nan"], "--temperature: must be a positive number"),
        (["--seeds", "none"], "--seeds: give at least one seed"),
        (["--time-limit", "-1"], "--time-limit: must be positive"),
        (["--device", "gpu7"], "--device: not a torch device"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, tmp_path, capsys):
    from energyloss.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "spins", "--preset", "smoke", "--out", str(out), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_print_config(capsys):
    from energyloss.cli import main
    from energyloss.experiments.options import config_from_json

    assert main(["run", "spins", "--preset", "smoke", "--print-config", "--size", "4", "--losses", "margin-flip"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == "spins" and shown["preset"] == "smoke"
    expected = dataclasses.replace(PRESETS["smoke"], size=4, losses=("margin_flip",))
    assert config_from_json(SpinsConfig, shown["config"]) == expected
