"""The timing experiment: cells measure what they claim, the grid skips what it must, tables render."""

from __future__ import annotations

import json

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
