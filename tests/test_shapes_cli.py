"""``energyloss run shapes`` on the shared experiment framework: options, config files, resume, progress output."""

from __future__ import annotations

import dataclasses
import json

import pytest

from energyloss.cli import main
from energyloss.experiments.runs import fingerprint
from energyloss.experiments.shapes.config import PRESETS
from energyloss.experiments.shapes.experiment import job_settings, plan_tasks

#: Two groups of two models in a few seconds: mse and a sparse energy with an option, at N = 6.
TINY = [
    "--n-train=128",
    "--n-val=32",
    "--n-test=32",
    "--batch-size=64",
    "--epochs=1",
    "--lrs=0.01,0.03",
    "--seeds=0",
    "--n-vertices=6",
    "--losses=mse,sparse_energy:exp:k=4",
    "--theta-sweep=none",
    "--n-sweep=none",
    "--graph-pool-size=3",
    "--flow-losses=none",
    "--workers=1",
    "--threads=1",
    "--no-plots",
]


def _run(argv, capsys) -> tuple[str, str]:
    assert main(["run", "shapes", "--preset", "smoke", *argv]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # stderr is not a terminal: plain lines, never bar fragments
    return captured.out, captured.err


def _done(err: str) -> list[str]:
    """The groups trained, from their one line each."""
    return [line.split()[1] for line in err.splitlines() if line.startswith("  done ")]


def _records(out) -> list[dict]:
    """The records of the run in ``out``, without their timing."""
    records = json.loads((out / "metrics.json").read_text())["records"]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def test_print_config_shows_the_preset_values_and_overrides(capsys):
    assert main(["run", "shapes", "--preset", "smoke", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["experiment"] == "shapes" and printed["preset"] == "smoke"
    assert printed["config"] == json.loads(json.dumps(dataclasses.asdict(PRESETS["smoke"])))
    assert main(["run", "shapes", "--preset", "smoke", "--epochs", "3", "--theta-aug", "0.5", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["epochs"] == 3 and config["theta_aug_over_pi"] == 0.5 and config["n_train"] == 4_000


def test_help_shows_the_flags_and_the_preset_values(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "shapes", "--preset", "smoke", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--theta-aug", "--no-plots", "--losses", "--n-sweep", "--flow-losses", "--workers"):
        assert flag in text
    assert "[4000]" in text  # --n-train of the smoke preset


def test_run_folder_config_resume_corrupt_group_and_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    printed, err = _run([*TINY, "--out", str(out)], capsys)
    assert "sparse_energy[exp,k=4]" in printed and str(out) in err
    assert len(_done(err)) == 2  # one plain line per finished group
    records = _records(out)
    assert len(records) == 4 and {r["loss"] for r in records} == {"mse", "sparse_energy"}
    sparse = [r for r in records if r["loss"] == "sparse_energy"]
    assert all(r["coefficients"] == "exp" and r["loss_spec"] == "sparse_energy:exp:k=4" for r in sparse)
    assert all("loss_spec" not in r for r in records if r["loss"] == "mse")
    stored = json.loads((out / "config.json").read_text())
    assert stored["experiment"] == "shapes" and stored["config"]["losses"] == ["mse", "sparse_energy:exp:k=4"]
    assert stored["fingerprint"] == fingerprint(stored["config"])

    # --config FILE reproduces the run's settings
    assert main(["run", "shapes", "--config", str(out / "config.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == stored["config"]

    # the same run again in the same folder: every group is kept, nothing is trained
    _, err = _run(["--config", str(out / "config.json"), "--out", str(out)], capsys)
    assert "resuming: 2 of 2 groups" in err and not _done(err)
    assert _records(out) == records

    # a truncated group file is reported with its path and trained again, with the same numbers
    group = out / "groups" / "regression-mse-N6.json"
    group.write_text(group.read_text()[:100])
    _, err = _run([*TINY, "--out", str(out)], capsys)
    assert "corrupt" in err and str(group) in err
    assert "resuming: 1 of 2 groups" in err and _done(err) == ["regression-mse-N6"]
    assert _records(out) == records

    # a new vertex count adds groups and keeps the others; more epochs retrain both
    _, err = _run([*TINY, "--n-sweep=5", "--n-losses=mse", "--out", str(out)], capsys)
    assert "settings changed" in err and "resuming: 2 of 3 groups" in err and _done(err) == ["regression-mse-N5"]
    _, err = _run([*TINY, "--epochs=2", "--out", str(out)], capsys)
    assert "2 saved with other settings or unreadable" in err and len(_done(err)) == 2
    assert [r["epochs"] for r in _records(out)] == [2] * 4


def test_job_settings_hold_what_changes_a_group():
    cfg = PRESETS["smoke"]
    tasks = {t["name"]: t for t in plan_tasks(cfg)}
    mse, sparse, flow = tasks["regression-mse-N20"], tasks["regression-sparse_energy[exp]-N20"], tasks["flow-mse-N20"]

    def same(task, **changes) -> bool:
        other = dataclasses.replace(cfg, **changes)
        new = {t["name"]: t for t in plan_tasks(other)}[task["name"]]
        return fingerprint(job_settings(task, cfg)) == fingerprint(job_settings(new, other))

    assert same(mse, workers=4, threads=2, plots=False, select_by="distance_rmse", n_sweep=(5,), flow_epochs=1)
    assert not same(mse, epochs=2) and not same(mse, n_train=1_000) and not same(mse, lrs=(1e-2,))
    assert same(mse, graph_pool_size=5) and not same(sparse, graph_pool_size=5)
    assert same(flow, epochs=2, hidden=(8,)) and not same(flow, flow_epochs=2)
    assert not same(mse, theta_sweep=(0.0, 1.0))  # its models change
