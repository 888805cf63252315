"""The timing experiment: cells measure what they claim, the grid skips what it must, tables render."""

from __future__ import annotations

import json

import pytest
import torch

from energyloss import pair_energy_loss
from energyloss.cli import main
from energyloss.experiments import timing


def test_naive_reference_equals_library_energy(gen):
    y = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    p = y + 0.1 * torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(timing.naive_energy(p, y), pair_energy_loss(p, y, coefficients="exp"))


def test_measure_cell_fields():
    rec = timing.measure_cell("sparse_energy", 40, 1, 3, 2, "cpu", 0)
    assert rec["method"] == "sparse_energy" and rec["n"] == 40 and rec["ms"] > 0 and rec["peak_extra_mb"] >= 0


def test_memory_skip_and_cli_run(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run", "timing", "--preset", "smoke", "--sizes", "20", "200000", "--methods", "mse", "naive_energy",
            "--qm9-batch", "4", "--in-process", "--repeats", "1", "--memory-limit-gb", "1", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    records = json.loads((out / "metrics.json").read_text())["records"]
    naive_big = [r for r in records if r["method"] == "naive_energy" and r["n"] == 200000]
    assert naive_big and naive_big[0]["skipped"] == "memory"
    assert all(r["ms"] > 0 for r in records if not r.get("skipped"))
    summary = (out / "summary.md").read_text()
    assert "naive / energy" in summary and "skipped (memory)" in summary and "4 x 29 (padded)" in summary


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
        (["--repeats", "-2"], "--repeats: must be a positive integer, got -2"),
        (["--sizes", "30,-5"], "--sizes: every N must be a positive integer"),
        (["--sizes", "none"], "--sizes: give at least one number of atoms"),
        (["--dim", "0"], "--dim: must be a positive integer"),
        (["--qm9-batch", "-1"], "--qm9-batch: must be >= 0"),
        (["--threads", "-1"], "--threads: must be >= 0"),
        (["--max-cell-seconds", "0"], "--max-cell-seconds: must be a positive number"),
        (["--memory-limit-gb", "-1"], "--memory-limit-gb: must be >= 0"),
        (["--methods", "mse", "fast_energy"], "--methods: unknown method 'fast_energy'; choose from mse, kabsch_mse"),
        (["--methods", "none"], "--methods: give at least one method"),
        (["--device", "tpu0"], "--device: not a torch device"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "timing", "--preset", "smoke", "--out", str(out), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_print_config(capsys):
    assert main(["run", "timing", "--preset", "smoke", "--print-config", "--sizes", "10,20", "--in-process"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == "timing" and shown["preset"] == "smoke"
    assert shown["config"]["sizes"] == [10, 20] and shown["config"]["in_process"] is True
    assert shown["config"]["methods"] == list(timing.PRESETS["smoke"].methods)
    for preset in timing.PRESETS.values():
        assert preset.validate() == preset
