"""The Fig. 5 experiment: ``energyloss run rigidity`` end to end, and its helpers."""

from __future__ import annotations

import csv
import json

import pytest

from energyloss.cli import main
from energyloss.experiments.rigidity_study import PRESETS, run_setting, wilson_interval


def test_smoke_run_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "rigidity", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    for name in ("config.json", "metrics.json", "records.csv", "summary.md", "rigidity.png"):
        assert (out / name).is_file(), name
    with (out / "records.csv").open() as fh:
        records = list(csv.DictReader(fh))
    cfg = PRESETS["smoke"]
    assert len(records) == len(cfg.ns) * len(cfg.ks) * len(cfg.ds) + len(cfg.extra)
    by_key = {(int(r["n"]), int(r["k"]), int(r["d"])): r for r in records}
    assert float(by_key[(10, 3, 2)]["frac_rigid"]) == 0.0  # 15 edges < 2 * 10 - 3
    assert float(by_key[(10, 4, 2)]["frac_globally_rigid"]) == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["extra"][0]["graphs"] == cfg.extra[0][3]
    assert "Global rigidity" in capsys.readouterr().out


def test_cli_overrides(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "rigidity", "--preset", "smoke", "--out", str(out), "--no-progress"]
    assert main([*argv, "--ns", "7", "--ks", "3", "--ds", "2", "--graphs", "4", "--extra", ""]) == 0
    with (out / "records.csv").open() as fh:
        (record,) = list(csv.DictReader(fh))
    # 7 * 3 odd: one vertex has degree 4, 11 edges = 2 * 7 - 3: rigid (isostatic) but never globally rigid
    assert (record["n"], record["k"], record["edges"], record["rigid"], record["globally_rigid"]) == (
        "7",
        "3",
        "11",
        "4",
        "0",
    )


def test_run_setting_is_reproducible():
    a, b = run_setting(12, 5, 3, 6, seed=3), run_setting(12, 5, 3, 6, seed=3)
    a.pop("ms_per_graph"), b.pop("ms_per_graph")
    assert a == b


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0


def test_setting_seed_is_derive_seed_bit_for_bit():
    import numpy as np

    from energyloss.experiments.runs import derive_seed

    for seed, n, k, d in [(0, 30, 6, 3), (3, 12, 5, 3), (7, 128, 7, 2)]:
        old = int(np.random.SeedSequence([seed, n, k, d]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
        assert derive_seed(seed, n, k, d) == old


def test_rerun_keeps_finished_settings_and_redoes_changed_ones(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "rigidity", "--preset", "smoke", "--out", str(out), "--no-progress", "--ns", "6", "--ks", "3,4"]
    assert main(argv) == 0
    with (out / "records.csv").open() as fh:
        first = list(csv.DictReader(fh))
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed: 3 of 3 settings" in capsys.readouterr().err
    with (out / "records.csv").open() as fh:
        assert list(csv.DictReader(fh)) == first  # ms_per_graph included: nothing was measured again
    assert main([*argv, "--graphs", "4"]) == 0
    err = capsys.readouterr().err
    assert "graphs: 5 -> 4" in err and "resumed: 1 of 3 settings" in err  # the extra setting is unchanged
    with (out / "records.csv").open() as fh:
        assert [int(r["graphs"]) for r in csv.DictReader(fh)] == [4, 4, 5]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--graphs", "-1"], "--graphs: must be a positive integer, got -1"),
        (["--graphs", "0"], "--graphs: must be a positive integer, got 0"),
        (["--trials", "0"], "--trials: must be a positive integer"),
        (["--ns", "0,5"], "--ns: every value must be a positive integer, got 0,5"),
        (["--ks", "-2"], "--ks: every value must be a positive integer"),
        (["--ds", "2,2"], "--ds: a value is given twice"),
        (["--extra", "3:4"], "--extra: settings are n:k:d:graphs, got '3:4'"),
        (["--extra", "30:6:3:-5"], "--extra: settings are n:k:d:graphs of positive integers, got 30:6:3:-5"),
        (["--ns", "none", "--extra", "none"], "no setting to run"),
        (["--threads", "0"], "--threads: must be a positive integer"),
    ],
)
def test_bad_counts_exit_2_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "rigidity", "--preset", "smoke", "--out", str(out), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_print_config_and_config_file_round_trip(tmp_path, capsys):
    from energyloss.experiments.rigidity_study import RigidityConfig

    argv = ["run", "rigidity", "--preset", "smoke", "--print-config", "--extra", "30:6:3:10", "8:4:2:3"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == "rigidity" and shown["config"]["extra"] == [[30, 6, 3, 10], [8, 4, 2, 3]]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(shown))
    assert main(["run", "rigidity", "--config", str(path), "--print-config", "--graphs", "7"]) == 0
    again = json.loads(capsys.readouterr().out)
    from energyloss.experiments.options import config_from_json

    cfg = config_from_json(RigidityConfig, again["config"])
    assert cfg.extra == ((30, 6, 3, 10), (8, 4, 2, 3)) and cfg.graphs == 7 and cfg.ns == PRESETS["smoke"].ns
    for preset in PRESETS.values():
        assert preset.validate() == preset
