"""The ``energyloss`` command.

Sub-commands::

    energyloss run NAME [--preset P] [--out DIR] [options]   # one experiment of the paper
    energyloss list                                          # the experiments and what they reproduce
    energyloss data qm9 [--summary]                          # prepare / describe a data set
    energyloss eval-molecules PATH | --reference qm9-train   # molecule metrics on a file

Each experiment lives in its own module under :mod:`energyloss.experiments` and exposes

- ``DESCRIPTION``: one line for ``energyloss list``;
- ``add_arguments(parser)``: its options (``--preset`` and ``--out`` are added here, for all);
- ``run(args) -> int | None``: runs it and returns an exit status.

Modules are imported only when their experiment is asked for, so ``energyloss --help`` is fast and an
experiment's optional dependencies are needed only when that experiment runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module implementing the experiment (imported lazily).
EXPERIMENTS: dict[str, str] = {
    "shapes": "energyloss.experiments.shapes",
    "spins": "energyloss.experiments.spins",
    "rigidity": "energyloss.experiments.rigidity_study",
    "qm9": "energyloss.experiments.molecules.train",
    "timing": "energyloss.experiments.timing",
}

# other top-level commands -> module exposing add_arguments / run
COMMANDS: dict[str, str] = {
    "data": "energyloss.experiments.molecules.data_cli",
    "eval-molecules": "energyloss.experiments.molecules.eval_cli",
}


def _load(module_name: str, what: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Distinguish "this experiment is not implemented in this version" from "a dependency is missing".
        if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise SystemExit(
                f"energyloss: {what} is not available in this version ({module_name} is missing)"
            ) from None
        raise SystemExit(
            f"energyloss: {what} needs the Python package {err.name!r}, which is not installed. "
            "Install the experiment extras: pip install 'energyloss[experiments]'"
        ) from err


def _run_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"energyloss run {name}",
        description=getattr(module, "DESCRIPTION", None),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    presets = getattr(module, "PRESETS", None)
    parser.add_argument(
        "--preset",
        default="default",
        choices=sorted(presets) if presets else None,
        help="named configuration: 'smoke' (fast check), 'default' (laptop CPU), 'paper' (paper settings)",
    )
    parser.add_argument("--out", default=None, help="run folder (default: a dated folder under runs/)", metavar="DIR")
    module.add_arguments(parser)
    return parser


def _list() -> int:
    for name, module_name in EXPERIMENTS.items():
        try:
            module = importlib.import_module(module_name)
            desc = getattr(module, "DESCRIPTION", "")
        except ImportError as err:
            desc = f"(unavailable: {err})"
        print(f"{name:10s} {desc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="energyloss",
        description="Energy loss functions for physical systems: experiments and tools.",
        epilog="Run 'energyloss run NAME --help' for the options of one experiment.",
    )
    top.add_argument("--version", action="store_true", help="print the version and exit")
    top.add_argument("command", choices=["run", "list", *COMMANDS], help="what to do")
    top.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        print("\nexperiments: " + ", ".join(EXPERIMENTS))
        return 0
    if argv[0] == "--version":
        from energyloss import __version__

        print(f"energyloss {__version__}")
        return 0
    ns = top.parse_args(argv[:1])
    rest = argv[1:]
    if ns.command == "list":
        return _list()
    if ns.command == "run":
        if rest[:1] in (["-h"], ["--help"]):
            print("usage: energyloss run NAME [--preset P] [--out DIR] [options]\n\nexperiments:")
            _list()
            print("\nRun 'energyloss run NAME --help' for the options of one experiment.")
            return 0
        if not rest or rest[0].startswith("-"):
            top.error("run needs an experiment name: " + ", ".join(EXPERIMENTS))
        name, rest = rest[0], rest[1:]
        if name not in EXPERIMENTS:
            top.error(f"unknown experiment {name!r}; choose from: " + ", ".join(EXPERIMENTS))
        module = _load(EXPERIMENTS[name], f"experiment {name!r}")
        args = _run_parser(name, module).parse_args(rest)
        return int(module.run(args) or 0)
    module = _load(COMMANDS[ns.command], f"command {ns.command!r}")
    parser = argparse.ArgumentParser(prog=f"energyloss {ns.command}", description=module.DESCRIPTION)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
