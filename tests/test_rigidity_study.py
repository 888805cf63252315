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
