"""The ``energyloss`` command's own options: --version, run --help."""

from __future__ import annotations

import pytest

import energyloss
from energyloss.cli import EXPERIMENTS, main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"energyloss {energyloss.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_run_help_lists_the_experiments(capsys, flag):
    assert main(["run", flag]) == 0
    out = capsys.readouterr().out
    assert "usage: energyloss run NAME" in out
    for name in EXPERIMENTS:
        assert f"\n{name}" in out


def test_run_without_a_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["run"])
    assert err.value.code == 2
    assert "run needs an experiment name" in capsys.readouterr().err
