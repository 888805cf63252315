"""Every script in examples/ runs to completion, on a CPU, within its time budget.

Each script checks its own result (an ``assert`` at the end: the model beat its untrained self, or the input),
so a run that exits 0 has also learnt something. The scripts are tiny models: they run single-threaded, which
is also the fastest on a shared machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
#: Wall-clock budget of one script in seconds: each takes under 12 s on one busy core (most of it training).
BUDGET_S = 90


def test_the_examples_are_there():
    assert set(SCRIPTS) >= {
        "diffusion_training.py",
        "flow_matching.py",
        "lightning_module.py",
        "pyg_batch.py",
        "spins_cnn.py",
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=BUDGET_S,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 0, f"{script} failed after {seconds:.1f} s:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert out.stdout.strip(), f"{script} printed nothing"
    assert seconds < BUDGET_S
