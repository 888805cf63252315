"""The report scripts of benchmarks/ (study tables) compute what their pages say, on generated run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(loss: str, epoch: float, atom: float, **extra) -> dict:
    return {"loss": loss, "epoch": epoch, "step": int(100 * epoch), "atom_stability": atom,
            "molecule_stability": 0.0, "validity": 0.5, "uniqueness": 1.0, "nn_distance_w1": 0.1} | extra  # fmt: skip


def _write(folder: Path, tag: str, records: list[dict]) -> None:
    (folder / tag).mkdir(parents=True, exist_ok=True)
    (folder / tag / "metrics.json").write_text(json.dumps({"records": records}))


def test_qm9_study_report_means_over_seeds_and_pairs_the_losses(tmp_path, capsys):
    report = _script("qm9_study_report")
    for seed, (energy, mse) in enumerate([(0.6, 0.5), (0.8, 0.5)]):
        folder = tmp_path / f"seed-{seed}"
        _write(folder, "energy-exp", [_record("energy:exp", 1.0, energy / 2), _record("energy:exp", 2.0, energy)])
        _write(folder, "mse", [_record("mse", 1.0, mse / 2), _record("mse", 2.0, mse)])
    _write(tmp_path / "seed-2", "energy-exp", [_record("energy:exp", 1.0, 0.1)])  # a seed still running
    _write(tmp_path / "matrix" / "mae", "mae", [_record("mae", 1.0, 0.2)])
    _write(tmp_path / "model-egnn", "mse", [_record("mse", 1.0, 0.3), _record("mse", 4.0, 0.4)])
    _write(tmp_path / "model-egnn", "energy-exp", [_record("energy:exp", 1.0, 0.3)])  # still training
    assert report.main([str(tmp_path), "--plot", str(tmp_path / "plot.png")]) == 0
    out = capsys.readouterr().out
    assert "| 2 | energy:exp | 2 | 70.0 ± 10.0 |" in out  # mean ± population std of 60 and 80
    assert "| 1 | energy:exp | 3 | 26.7 ± 12.5 |" in out  # epoch 1 has the third seed too (30, 40, 10)
    assert "| 0 | 2 | 10.0 |" in out and "| 1 | 2 | 30.0 |" in out  # energy - MSE, per seed, at epoch 2
    assert "| mean ± std | | 20.0 ± 10.0 |" in out
    assert "| matrix/mae | mae | 1 | 20.0 |" in out and "| lr 5e-4 | energy:exp | not run |" in out
    assert "| egnn | mse | 4 | 40.0 |" in out and "| egnn | energy:exp | 1 so far |" in out  # at epoch 4
    assert "| gdm | mse | not run |" in out
    assert "- mse: not every rate has reached epoch 4 yet" in out
    lr_rows = [
        (f"lr {lr}", "mse", [_record("mse", 4.0, atom)]) for lr, atom in (("5e-4", 0.3), ("1e-3", 0.5), ("2e-3", 0.4))
    ]
    lr_rows += [(f"lr {lr}", "energy:exp", [_record("energy:exp", 4.0, 0.6)]) for lr in ("5e-4", "1e-3")]
    choice = report.lr_choice(lr_rows)
    assert "- mse: best lr 1e-3 at epoch 4 (50.0 % atom stability" in choice
    assert "- energy:exp: best lr 5e-4" in choice  # a tie on both metrics: the first rate
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_jodo_compare_report_reads_the_table3_metrics(tmp_path, capsys):
    report = _script("jodo_compare_report")
    for seed, atom in enumerate((0.2, 0.4)):
        metrics = {"step": 2000, "3d": {"atom_stability": atom, "molecule_stability": 0.0, "validity": 0.0,
                                        "completeness": 0.0, "fcd": None},
                   "2d": {"atom_stability": 0.5, "validity": 0.1, "fcd": 15.0},
                   "geometry": {"bond_length_mmd": 4.0, "bond_angle_mmd": 1.5, "dihedral_angle_mmd": 0.04}}  # fmt: skip
        _write(tmp_path / f"seed-{seed}", "kabsch_mse", [])
        (tmp_path / f"seed-{seed}" / "kabsch_mse" / "metrics.json").write_text(json.dumps(metrics))
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| JODO (aligned MSE) | 2 | 2000 | 30.0 ± 10.0 | 0.0 ± 0.0 |" in out
    assert "| – | 4.0000 ± 0.0000 |" in out  # no valid molecule, no FCD; the MMDs are there
    assert "| JODO + energy (exp.) | 0 | not run |" in out


@pytest.mark.parametrize("name", ["qm9_study_report", "jodo_compare_report"])
def test_reports_refuse_a_missing_folder(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        _script(name).main([str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "no folder" in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.sh")))
def test_prepared_shell_scripts_parse(script):
    """The GPU-lease and study scripts run rarely; a syntax error must show up here, not on a lent device."""
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = subprocess.run(["bash", "-n", str(BENCHMARKS / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _fake_energyloss(tmp_path, body: str) -> str:
    """An ``energyloss`` bash script with ``body`` in tmp_path/bin (skips without bash and flock, which the study
    queue needs); returns a PATH that finds it first."""
    import os
    import shutil

    if shutil.which("bash") is None or shutil.which("flock") is None:
        pytest.skip("needs bash and flock")
    fake = tmp_path / "bin" / "energyloss"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\n" + body)
    fake.chmod(0o755)
    return f"{fake.parent}{os.pathsep}{os.environ['PATH']}"


def test_study_queue_runs_single_loss_jobs_side_by_side(tmp_path):
    """qm9_cpu_study.sh with PARALLEL=2: a two-loss job gets --jobs 2, one-loss jobs run two at a time with --jobs 1,
    a failed job makes the exit status 1 without stopping the queue."""
    import os
    import subprocess

    log = tmp_path / "calls.log"
    path = _fake_energyloss(
        tmp_path,
        f'echo "start ${{*: -1}} $*" >> {log}\n'
        "sleep 0.5\n"
        '[[ "$*" == *energy:constant* ]] && exit 3\n'
        f'echo "end ${{*: -1}}" >> {log}\n',
    )
    env = os.environ | {"PATH": path, "OUT": str(tmp_path / "study"), "ARCHIVE": str(tmp_path / "archive"),
                        "PARALLEL": "2", "JOBS": "seed-0 matrix/mae matrix/energy-constant model-egnn"}  # fmt: skip
    out = subprocess.run(["bash", str(BENCHMARKS / "qm9_cpu_study.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "matrix/energy-constant: failed (exit 3)" in out.stdout
    calls = log.read_text().splitlines()
    prefix = str(tmp_path / "study") + "/"
    args = {line.split()[1].removeprefix(prefix): line for line in calls if line.startswith("start")}
    starts = list(args)
    assert sorted(starts) == ["matrix/energy-constant", "matrix/mae", "model-egnn", "seed-0"]
    events = [line.split()[0] + " " + line.split()[1].rsplit("/", 1)[-1] for line in calls]
    # the two matrix jobs overlap: both start before the first of them ends; model-egnn waits for both
    assert events.index("start energy-constant") < events.index("end mae")
    assert events.index("start model-egnn") > events.index("end mae")
    assert "--jobs 2" in args["seed-0"] and "--jobs 1" in args["matrix/mae"] and "--model egnn" in args["model-egnn"]
    assert "--losses energy:constant" in args["matrix/energy-constant"]
    assert not (tmp_path / "archive").exists()  # the fake runs wrote no records: nothing archived, no '*' folders


def test_study_queue_lr_override_and_record_archive(tmp_path):
    """LR=2e-3 adds --lr 2e-3 to every job (an lr-* job's own --lr comes after it, so it wins), the default output
    folder names the rate, and each finished job's metrics.json and config.json (not its checkpoint) are copied to
    ARCHIVE/<output folder name>/<job>/<loss tag>/; a failed job is not copied. seed-0 starts from a copy of the
    finished lr-2e-3 check of runs/qm9-study, which stays as it was."""
    import os
    import subprocess

    log, seen = tmp_path / "calls.log", tmp_path / "seen.log"
    check = tmp_path / "runs" / "qm9-study" / "lr-2e-3"
    (check / "mse").mkdir(parents=True)
    (check / "summary.md").write_text("done\n")
    (check / "mse" / "checkpoint.pt").write_text("step 4\n")
    path = _fake_energyloss(
        tmp_path,
        f'echo "$*" >> {log}\n'
        'ckpt="${*: -1}/mse/checkpoint.pt"\n'
        f'[[ -f "$ckpt" ]] && echo "${{*: -1}} $(cat "$ckpt")" >> {seen}\n'
        'out="${*: -1}/mse"; mkdir -p "$out"\n'
        'echo "{}" > "$out/metrics.json"; echo "{}" > "$out/config.json"; echo x > "$out/checkpoint.pt"\n'
        '[[ "$*" == *energy:constant* ]] && exit 3\n'
        "exit 0\n",
    )
    archive = tmp_path / "archive"
    env = os.environ | {"PATH": path, "LR": "2e-3",
                        "ARCHIVE": str(archive), "JOBS": "seed-0 lr-4e-3 matrix/energy-constant"}  # fmt: skip
    env.pop("OUT", None)
    script = BENCHMARKS / "qm9_cpu_study.sh"
    out = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    calls = {line.split()[-1].split("/")[-1]: line for line in log.read_text().splitlines()}
    assert "--lr 2e-3" in calls["seed-0"] and "--out runs/qm9-study-lr2e-3/seed-0" in calls["seed-0"]
    assert calls["lr-4e-3"].index("--lr 2e-3") < calls["lr-4e-3"].index("--lr 4e-3")
    copied = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    assert copied == [
        "qm9-study-lr2e-3/lr-4e-3/mse/config.json",
        "qm9-study-lr2e-3/lr-4e-3/mse/metrics.json",
        "qm9-study-lr2e-3/seed-0/mse/config.json",
        "qm9-study-lr2e-3/seed-0/mse/metrics.json",
    ]
    assert seen.read_text().splitlines() == ["runs/qm9-study-lr2e-3/seed-0 step 4"]
    assert "seed-0: continues the finished check runs/qm9-study/lr-2e-3" in out.stdout
    assert (check / "mse" / "checkpoint.pt").read_text() == "step 4\n"


def test_study_report_labels_seed0_by_its_configured_rate(tmp_path):
    """The lr check's seed-0 row is labelled with the rate of its config.json (a study run with LR=2e-3), and
    with the default preset's 1e-3 where seed 0 has no config."""
    report = _script("qm9_study_report")
    assert report.seed0_lr(tmp_path) == "1e-3"
    (tmp_path / "seed-0" / "mse").mkdir(parents=True)
    (tmp_path / "seed-0" / "mse" / "config.json").write_text(json.dumps({"lr": 0.002}))
    assert report.seed0_lr(tmp_path) == "2e-3"


def test_study_queue_losses_restricts_the_two_loss_jobs(tmp_path):
    """LOSSES=mse: the seeds, frac-0.5 and model-* jobs train only MSE (so each loss can have its own LR= study),
    the matrix keeps its own loss, and the lr-1.6e-2 check is MSE alone whatever LOSSES says."""
    import os
    import subprocess

    log = tmp_path / "calls.log"
    path = _fake_energyloss(tmp_path, f'echo "$*" >> {log}\n')
    env = os.environ | {"PATH": path, "OUT": str(tmp_path / "study"), "ARCHIVE": "", "LOSSES": "mse",
                        "JOBS": "seed-1 frac-0.5 model-gdm matrix/mae lr-1.6e-2"}  # fmt: skip
    out = subprocess.run(["bash", str(BENCHMARKS / "qm9_cpu_study.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = {line.split()[-1].split("/")[-1]: line for line in log.read_text().splitlines()}
    for job in ("seed-1", "frac-0.5", "model-gdm"):
        assert "--losses mse " in calls[job] and "energy" not in calls[job]
    assert "--losses mae " in calls["mae"]
    assert "--losses mse " in calls["lr-1.6e-2"] and "--lr 1.6e-2" in calls["lr-1.6e-2"]
    env["LOSSES"] = ""  # unset or empty: both losses
    log.unlink()
    env["JOBS"] = "seed-1 lr-1.6e-2"
    subprocess.run(["bash", str(BENCHMARKS / "qm9_cpu_study.sh")], env=env, capture_output=True, text=True)
    calls = {line.split()[-1].split("/")[-1]: line for line in log.read_text().splitlines()}
    assert "--losses energy:exp,mse " in calls["seed-1"] and "--losses mse " in calls["lr-1.6e-2"]


def test_study_report_lr_check_finds_extra_rates(tmp_path, capsys):
    """An lr-<rate> folder beyond the planned rates joins the check in order of rate, with rows for the losses it
    has only; a folder whose suffix is no rate is ignored."""
    report = _script("qm9_study_report")
    _write(tmp_path / "lr-8e-3", "mse", [_record("mse", 4.0, 0.57)])
    _write(tmp_path / "lr-8e-3", "energy-exp", [_record("energy:exp", 4.0, 0.61)])
    _write(tmp_path / "lr-1.6e-2", "mse", [_record("mse", 4.0, 0.4)])
    (tmp_path / "lr-notes").mkdir()
    assert [lr for lr, _ in report.lr_folders(tmp_path)] == ["5e-4", "1e-3", "2e-3", "4e-3", "8e-3", "1.6e-2"]
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lr 1.6e-2 | mse | 4 | 40.0 |" in out and "| lr 1.6e-2 | energy:exp |" not in out
    assert out.index("| lr 8e-3 | mse |") < out.index("| lr 1.6e-2 | mse |")


def test_study_report_pairs_losses_from_their_tuned_studies(tmp_path, capsys):
    """--tuned LOSS=DIR takes each loss's seeds from its own study folder (its own rate) and pairs them by seed;
    a missing loss, an unknown loss or a missing folder is a usage error."""
    report = _script("qm9_study_report")
    energy, mse = tmp_path / "qm9-study-lr4e-3", tmp_path / "qm9-study-lr8e-3"
    for seed, (e, m) in enumerate([(0.7, 0.5), (0.9, 0.6)]):
        _write(energy / f"seed-{seed}", "energy-exp", [_record("energy:exp", 8.0, e)])
        _write(mse / f"seed-{seed}", "mse", [_record("mse", 8.0, m)])
        _write(energy / f"seed-{seed}", "mse", [_record("mse", 8.0, 0.0)])  # another rate's MSE: not paired
    (energy / "seed-0" / "energy-exp" / "config.json").write_text(json.dumps({"lr": 0.004}))
    base = tmp_path / "base"
    base.mkdir()
    plot = tmp_path / "tuned.png"
    args = [str(base), "--tuned", f"energy:exp={energy}", "--tuned", f"mse={mse}", "--tuned-plot", str(plot)]
    assert report.main(args) == 0
    out = capsys.readouterr().out
    tuned = out[out.index("at the tuned rates") :]
    assert "energy:exp lr 4e-3" in tuned
    assert "| 8 | energy:exp | 2 | 80.0 ± 10.0 |" in tuned and "| 8 | mse | 2 | 55.0 ± 5.0 |" in tuned
    assert "| mean ± std | | 25.0 ± 5.0 |" in tuned  # (70-50, 90-60)
    assert plot.stat().st_size > 0
    missing = tmp_path / "nope"
    bad_args = (
        ["--tuned", f"mse={mse}"],
        ["--tuned", f"mae={mse}", "--tuned", f"mse={mse}"],
        ["--tuned", f"energy:exp={missing}", "--tuned", f"mse={mse}"],
        ["--tuned-plot", "x.png"],
    )
    for bad in bad_args:
        with pytest.raises(SystemExit) as exc:
            report.main([str(base), *bad])
        assert exc.value.code == 2


def test_tuned_study_runs_each_family_at_its_rate_in_its_own_folder(tmp_path):
    """qm9_tuned_study.sh: the energy family (energy(exp) seeds, the other schemes, sparse energy, 50 % data) at
    ENERGY_LR into runs/qm9-study-lr<rate>, the MSE family (MSE seeds, MAE, Kabsch, 50 % data) at MSE_LR into its
    own folder; a failed job of one family makes the exit status 1 and leaves the other family running."""
    import os
    import subprocess

    log = tmp_path / "calls.log"
    path = _fake_energyloss(tmp_path, f'echo "$*" >> {log}\n[[ "$*" == *kabsch_mse* ]] && exit 3\nexit 0\n')
    env = os.environ | {"PATH": path, "ARCHIVE": "", "OUT": "ignored", "LOSSES": "ignored"}
    script = BENCHMARKS / "qm9_tuned_study.sh"
    out = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1 and "[mse] == matrix/kabsch_mse: failed (exit 3)" in out.stdout
    calls = {line.split("--out ")[1]: line for line in log.read_text().splitlines()}
    energy_jobs = ["seed-0", "seed-1", "seed-2", "matrix/energy-constant", "matrix/energy-inverse",
                   "matrix/energy-inverse_square", "matrix/sparse_energy-exp", "frac-0.5"]  # fmt: skip
    mse_jobs = ["seed-0", "seed-1", "seed-2", "matrix/mae", "matrix/kabsch_mse", "frac-0.5"]
    assert sorted(calls) == sorted(
        [f"runs/qm9-study-lr4e-3/{job}" for job in energy_jobs] + [f"runs/qm9-study-lr8e-3/{job}" for job in mse_jobs]
    )
    for folder, line in calls.items():
        rate = "4e-3" if "lr4e-3" in folder else "8e-3"
        assert f"--lr {rate}" in line and "--jobs 1" in line
    assert "--losses energy:exp " in calls["runs/qm9-study-lr4e-3/seed-1"]
    assert "--losses energy:constant " in calls["runs/qm9-study-lr4e-3/matrix/energy-constant"]
    assert "--losses sparse_energy:exp " in calls["runs/qm9-study-lr4e-3/matrix/sparse_energy-exp"]
    assert (
        "--losses mse " in calls["runs/qm9-study-lr8e-3/frac-0.5"]
        and "--dataset-frac 0.5" in calls["runs/qm9-study-lr8e-3/frac-0.5"]
    )
    assert "--losses mae " in calls["runs/qm9-study-lr8e-3/matrix/mae"]


def test_study_queue_skips_jobs_finished_on_another_machine(tmp_path):
    """A job without a run folder whose losses all have archived records (it finished on an earlier machine, whose
    runs/ is gone) is skipped; a job missing one loss's records, or with a run folder here, runs."""
    import os
    import subprocess

    log = tmp_path / "calls.log"
    path = _fake_energyloss(tmp_path, f'echo "$*" >> {log}\n')
    archive = tmp_path / "archive"
    for job, tag in (("seed-0", "mse"), ("seed-0", "energy-exp"), ("seed-1", "mse"), ("seed-2", "mse"),
                     ("matrix/sparse_energy-exp", "sparse_energy-exp")):  # fmt: skip
        (archive / "study" / job / tag).mkdir(parents=True)
        (archive / "study" / job / tag / "metrics.json").write_text("{}")
    (tmp_path / "study" / "seed-2").mkdir(parents=True)  # a run folder here: the queue continues it
    env = os.environ | {"PATH": path, "OUT": str(tmp_path / "study"), "ARCHIVE": str(archive),
                        "JOBS": "seed-0 seed-1 seed-2 matrix/sparse_energy-exp"}  # fmt: skip
    out = subprocess.run(["bash", str(BENCHMARKS / "qm9_cpu_study.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ran = sorted(line.split("--out ")[1].rsplit("/", 1)[-1] for line in log.read_text().splitlines())
    assert ran == ["seed-1", "seed-2"]  # seed-1 lacks energy's records
    assert f"== seed-0: finished before, its records are in {archive}/study/seed-0" in out.stdout
    assert "== sparse_energy-exp: finished before" in out.stdout.replace("matrix/", "")


def test_study_report_tuned_matrix_and_half_data_per_family(tmp_path, capsys):
    """With --tuned, the matrix and 50 % data runs of each family's folder are reported at that family's rate,
    with atom stability at every evaluation (an unfinished run leaves its later epochs empty)."""
    report = _script("qm9_study_report")
    energy, mse = tmp_path / "qm9-study-lr4e-3", tmp_path / "qm9-study-lr8e-3"
    _write(energy / "seed-0", "energy-exp", [_record("energy:exp", 1.0, 0.5), _record("energy:exp", 2.0, 0.75)])
    _write(mse / "seed-0", "mse", [_record("mse", 1.0, 0.4), _record("mse", 2.0, 0.6)])
    (energy / "seed-0" / "energy-exp" / "config.json").write_text(json.dumps({"lr": 0.004}))
    (mse / "seed-0" / "mse" / "config.json").write_text(json.dumps({"lr": 0.008}))
    _write(energy / "matrix" / "energy-constant", "energy-constant", [_record("energy:constant", 1.0, 0.3)])
    _write(mse / "matrix" / "mae", "mae", [_record("mae", 1.0, 0.2), _record("mae", 2.0, 0.45)])
    _write(mse / "frac-0.5", "mse", [_record("mse", 2.0, 0.55)])
    base = tmp_path / "base"
    base.mkdir()
    assert report.main([str(base), "--tuned", f"energy:exp={energy}", "--tuned", f"mse={mse}"]) == 0
    out = capsys.readouterr().out
    matrix = out[out.index("at its family's tuned rate") : out.index("50 % of the training data at the tuned")]
    assert "| seed-0, lr 4e-3 | energy:exp | 2 | 75.0 |" in matrix
    assert "| matrix, lr 4e-3 | energy:constant | 1 | 30.0 |" in matrix
    assert "| matrix, lr 8e-3 | mae | 2 | 45.0 |" in matrix
    assert "| run | loss | epoch 1 | epoch 2 |" in matrix
    assert "| matrix, lr 4e-3 | energy:constant | 30.0 |  |" in matrix
    assert "| matrix, lr 8e-3 | mae | 20.0 | 45.0 |" in matrix
    half = out[out.index("50 % of the training data at the tuned") :]
    assert "| 50 % data, lr 8e-3 | mse | 2 | 55.0 |" in half
    assert "| 50 % data, lr 4e-3 | energy:exp | not run |" in half
    assert "| 100 % data (seed-0), lr 4e-3 | energy:exp | 2 | 75.0 |" in half
    assert "| run | loss | step 100 | step 200 |" in half  # 50 % data lines up with the full run by step
