"""The shared experiment layer: the loss vocabulary, generated options, run folders, progress and the CLI's errors."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import types

import pytest
import torch

import energyloss as el
from energyloss.experiments import options, runs
from energyloss.experiments.losses import (
    LossSpec,
    make_position_loss,
    parse_loss_spec,
    parse_loss_specs,
    parse_spin_loss,
)

# -- the loss vocabulary --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,canonical,label,tag",
    [
        ("mse", "mse", "mse", "mse"),
        ("kabsch", "kabsch_mse", "kabsch_mse", "kabsch_mse"),
        ("energy", "energy:exp", "energy[exp]", "energy-exp"),
        ("energy:inverse:k0=5", "energy:inverse:k0=5", "energy[inverse,k0=5]", "energy-inverse-k0_5"),
        ("sparse-energy:exp:symmetrize,k=6", "sparse_energy:exp:k=6,symmetrize", "sparse_energy[exp,k=6,sym]", None),
    ],
)
def test_specs_have_one_canonical_spelling(text, canonical, label, tag):
    spec = parse_loss_spec(text)
    assert str(spec) == canonical and spec.label == label and parse_loss_spec(str(spec)) == spec
    if tag is not None:
        assert spec.tag == tag


@pytest.mark.parametrize(
    "text,message",
    [
        ("huber", "unknown loss 'huber'; choose from mse, mae, kabsch_mse, energy, sparse_energy"),
        ("mse:exp", "takes no coefficients"),
        ("energy:morse", "unknown coefficient scheme 'morse'"),
        ("energy:exp:k=4", "energy takes k0=X"),
        ("sparse_energy:exp:k=0", "k a positive integer"),
        ("energy:exp:k0=-1", "k0 must be > 0"),
    ],
)
def test_bad_specs_name_what_is_valid(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_loss_spec(text)


def test_spec_lists_and_spin_names():
    assert [str(s) for s in parse_loss_specs("mse, sparse_energy:exp:k=6,symmetrize,energy")] == [
        "mse",
        "sparse_energy:exp:k=6,symmetrize",
        "energy:exp",
    ]
    with pytest.raises(ValueError, match="no loss"):
        parse_loss_specs("")
    assert parse_spin_loss("local-energy") == "local_energy"
    with pytest.raises(ValueError, match="choose from cross_entropy"):
        parse_spin_loss("hinge")


def test_the_factory_is_the_public_api():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 7, 3, generator=g, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(3, 7, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for spec, expected in [
        ("mse", el.mse_loss(pred, target, mask=mask, reduction="none")),
        ("mae", el.mae_loss(pred, target, mask=mask, reduction="none")),
        ("kabsch_mse", el.kabsch_mse_loss(pred, target, mask=mask, reduction="none")),
        (
            "energy:inverse:k0=2",
            el.pair_energy_loss(
                pred,
                target,
                mask=mask,
                coefficients=el.InverseCoefficients(k0=2.0),
                normalize="pairs",
                reduction="none",
            ),
        ),
    ]:
        torch.testing.assert_close(make_position_loss(spec, dim=3)(pred, target, mask), expected)
    # a spec's k0 wins over the caller's default, which wins over the scheme's
    a = make_position_loss("energy:exp:k0=3", dim=3, k0=7.0)(pred, target)
    b = el.pair_energy_loss(pred, target, coefficients=el.ExponentialCoefficients(k0=3.0), normalize="pairs")
    torch.testing.assert_close(a.mean(), b)


def test_sparse_specs_draw_one_rigid_graph_per_structure_and_symmetrised_graphs_respect_symmetry():
    pool = el.RigidGraphPool(2, size=5, seed=0)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    hexagon = torch.stack([torch.cos(torch.arange(6) * torch.pi / 3), torch.sin(torch.arange(6) * torch.pi / 3)], -1)
    target = hexagon.double()[None].repeat(2, 1, 1)
    pred = (target * 1.1).requires_grad_()
    fn = make_position_loss(
        "sparse_energy:constant:symmetrize", dim=2, pool=pool, generator=torch.Generator().manual_seed(1)
    )
    loss = fn(pred, target)
    assert loss.shape == (2,) and (loss > 0).all()
    loss.sum().backward()
    # every vertex of a uniformly scaled regular hexagon is equivalent: the symmetrised graph gives equal gradients
    norms = pred.grad.norm(dim=-1)
    torch.testing.assert_close(norms, norms[:, :1].expand_as(norms))
    assert make_position_loss("sparse_energy:exp", dim=2, pool=pool)(square[None] * 2, square[None]).item() > 0


# -- generated options ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 3
    lrs: tuple[float, ...] = (0.1, 0.2)
    name: str = "a"
    limit: float | None = None
    flag: bool = True

    def validate(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        return self


def _module(**extra):
    return types.SimpleNamespace(
        CONFIG=_Cfg,
        PRESETS={"default": _Cfg(), "smoke": _Cfg(n=1)},
        OPTION_HELP={"n": "how many", "lrs": "learning rates"},
        **extra,
    )


def _resolve(args, preset="default"):
    module = _module()
    base = module.PRESETS[preset]
    parser = options.build_parser("prog", None, module, base, preset=preset)
    return options.resolve_config(parser.parse_args(args), module, base), parser


def test_options_parse_one_list_syntax_optional_values_and_booleans():
    assert _resolve([])[0] == _Cfg()
    assert _resolve(["--lrs", "1e-3,3e-3"])[0].lrs == (1e-3, 3e-3)
    assert _resolve(["--lrs", "1e-3", "3e-3"])[0].lrs == (1e-3, 3e-3)
    assert _resolve(["--lrs", "none"])[0].lrs == ()
    assert _resolve(["--limit", "2.5"])[0].limit == 2.5 and _resolve(["--limit", "none"])[0].limit is None
    assert _resolve(["--no-flag"])[0].flag is False
    assert _resolve([], preset="smoke")[0].n == 1


def test_help_shows_the_presets_values_and_bad_values_are_one_line_exit_2(capsys):
    _, parser = _resolve([], preset="smoke")
    text = parser.format_help()
    assert "how many [1]" in text and "learning rates [0.1,0.2]" in text
    with pytest.raises(SystemExit) as err:
        parser.parse_args(["--n", "three"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["prog: error: argument --n: invalid int value: 'three' (see prog --help)"]
    with pytest.raises(ValueError, match="n must be >= 1"):
        _resolve(["--n", "0"])


def test_config_files_round_trip(tmp_path):
    run_dir = runs.open_run_folder(tmp_path / "r", "x", _Cfg(n=5, lrs=(0.5,)), preset="default")
    assert options.load_config_file(str(run_dir), _Cfg) == _Cfg(n=5, lrs=(0.5,))
    (tmp_path / "bad.json").write_text(json.dumps({"n": 1, "typo": 2}))
    with pytest.raises(ValueError, match="unknown settings \\['typo'\\]"):
        options.load_config_file(str(tmp_path / "bad.json"), _Cfg)


# -- run folders ------------------------------------------------------------------------------------------------


def test_run_folders_refuse_a_changed_fixed_setting_and_report_the_others(tmp_path, capsys):
    out = tmp_path / "r"
    runs.open_run_folder(out, "x", _Cfg(), fixed=("n",))
    with pytest.raises(runs.SettingsChanged, match="n: 3 -> 4"):
        runs.open_run_folder(out, "x", _Cfg(n=4), fixed=("n",))
    capsys.readouterr()
    runs.open_run_folder(out, "x", _Cfg(name="b"), fixed=("n",))
    assert "name: 'a' -> 'b'" in capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["name"] == "b" and saved["fingerprint"] == runs.fingerprint(_Cfg(name="b"))
    assert runs.current_run_folder() == out


def test_a_reopened_run_folder_keeps_when_and_with_which_code_each_part_ran(tmp_path, monkeypatch):
    """config.json's ``machine`` is the latest process's (with the energyloss version and code commit);
    ``earlier_machines`` keeps those of the processes before it, oldest first."""
    out = tmp_path / "r"
    dates = iter(["2026-01-01T00:00:00", "2026-01-02T00:00:00", "2026-01-03T00:00:00"])
    real = runs.machine_info
    monkeypatch.setattr(runs, "machine_info", lambda: real() | {"date": next(dates)})
    for _ in range(3):
        runs.open_run_folder(out, "x", _Cfg())
    saved = json.loads((out / "config.json").read_text())
    assert saved["machine"]["date"] == "2026-01-03T00:00:00"
    assert [m["date"] for m in saved["earlier_machines"]] == ["2026-01-01T00:00:00", "2026-01-02T00:00:00"]
    assert saved["machine"]["energyloss"] == el.__version__


def test_code_commit_names_the_checkout_the_package_is_imported_from():
    import subprocess
    from pathlib import Path

    package = Path(runs.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("energyloss is not imported from a git checkout")
    commit = runs.code_commit()
    assert commit is not None and commit.removesuffix("+dirty") == head.stdout.strip()
    assert runs.machine_info()["commit"] == commit


@pytest.mark.skipif(sys.platform == "win32", reason="flock(2) locks only")
def test_a_run_folder_is_locked_while_another_process_runs_in_it(tmp_path):
    import subprocess

    out = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from energyloss.experiments import runs; "
         f"runs.lock_run_folder(runs.make_run_dir({str(out)!r}, 'x')); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunFolderBusy, match=rf"in use by pid {holder.pid} "):
            runs.open_run_folder(out, "x", _Cfg())
        assert not (out / "config.json").exists()  # refused before writing anything
    finally:
        holder.communicate("")  # the holder ends; the kernel drops its lock
    runs.open_run_folder(out, "x", _Cfg())
    runs.open_run_folder(out, "x", _Cfg())  # this process holds it now: reopening is fine
    runs.release_run_folders()  # what the command line does when a command ends: another process may take it
    taker = subprocess.run(
        [sys.executable, "-c", f"from energyloss.experiments import runs; runs.lock_run_folder({str(out)!r})"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert taker.returncode == 0, taker.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="flock(2) locks only")
def test_a_file_system_without_flock_runs_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    runs.open_run_folder(tmp_path / "r", "x", _Cfg())
    assert "cannot lock the run folder" in capsys.readouterr().err
    assert (tmp_path / "r" / "config.json").exists()


def test_job_store_redoes_other_settings_and_reports_corrupt_files(tmp_path, capsys):
    store = runs.JobStore(tmp_path / "jobs")
    store.save("a", "fp", {"x": 1})
    assert store.load("a", "fp") == {"x": 1} and store.load("a", "other") is None
    store.path("a").write_text('{"fingerprint": "fp", "res')  # truncated by a crash
    assert store.load("a", "fp") is None
    assert f"corrupt job file {store.path('a')}" in capsys.readouterr().err
    assert not list((tmp_path / "jobs").glob("*.tmp-*"))  # writes leave no temporaries


def test_atomic_writes_keep_the_old_file_when_writing_fails(tmp_path):
    path = runs.write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(TypeError):
        runs.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp-*"))


# -- progress ---------------------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_prints_plain_lines_without_a_terminal(capsys):
    assert list(runs.progress(range(25), desc="work", total=25)) == list(range(25))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 9 and lines[-1].startswith("work 25/25 (")
    assert "left)" in lines[0]


def test_live_bars_only_on_a_terminal_and_never_with_tqdm_disable_or_no_progress(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert runs.live_bars()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not runs.live_bars()
    monkeypatch.delenv("TQDM_DISABLE")
    runs.set_progress(False)
    try:
        assert not runs.live_bars()
    finally:
        runs.set_progress(True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not runs.live_bars()


def test_derive_seed_matches_the_seed_sequences_it_replaced():
    import numpy as np

    expected = int(np.random.SeedSequence([7, 1, 3]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    assert runs.derive_seed(7, 1, 3) == expected
    assert runs.derive_seed("7", "x") != runs.derive_seed(7, "x")


# -- the command line -------------------------------------------------------------------------------------------


def _fake_experiment(monkeypatch, behaviour):
    from energyloss import cli

    def run_config(cfg, *, out, preset):
        runs.open_run_folder(out, "fake", cfg)
        behaviour()
        return 0

    module = _module(DESCRIPTION="fake", run_config=run_config)
    monkeypatch.setitem(cli.EXPERIMENTS, "fake", "fake_module")
    monkeypatch.setitem(sys.modules, "fake_module", module)
    return cli.main


def test_ctrl_c_prints_the_command_that_resumes(monkeypatch, tmp_path, capsys):
    def interrupt():
        raise KeyboardInterrupt

    main = _fake_experiment(monkeypatch, interrupt)
    assert main(["run", "fake", "--n", "2", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert f"resume with:\n  energyloss run fake --n 2 --out {tmp_path / 'r'}" in err
    monkeypatch.chdir(tmp_path)  # without --out the dated folder is added to the command
    assert main(["run", "fake"]) == 130
    assert "--out runs/fake-" in capsys.readouterr().err


def test_errors_are_one_line_unless_debug(monkeypatch, tmp_path, capsys):
    def fail():
        raise RuntimeError("the data file is missing")

    main = _fake_experiment(monkeypatch, fail)
    assert main(["run", "fake", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["energyloss: error: the data file is missing (rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="missing"):
        main(["run", "fake", "--out", str(tmp_path / "r"), "--debug"])


def test_print_config(monkeypatch, capsys):
    main = _fake_experiment(monkeypatch, lambda: None)
    assert main(["run", "fake", "--preset", "smoke", "--lrs", "1,2", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["preset"] == "smoke" and shown["config"] == {
        "n": 1,
        "lrs": [1.0, 2.0],
        "name": "a",
        "limit": None,
        "flag": True,
    }
    assert LossSpec("mse") == parse_loss_spec("mse")
