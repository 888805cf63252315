"""The ``energyloss`` command.

Sub-commands::

    energyloss run NAME [--preset P] [--out DIR] [options]   # one experiment of the paper
    energyloss list                                          # the experiments and what they reproduce
    energyloss data qm9 [--summary]                          # prepare / describe a data set
    energyloss eval-molecules PATH | --reference qm9-train   # molecule metrics on a file

Each experiment lives in its own module under :mod:`energyloss.experiments` and exposes ``DESCRIPTION`` (one line
for ``energyloss list``), ``CONFIG`` (its config dataclass), ``PRESETS``, ``OPTION_HELP`` and
``run_config(cfg, *, out, preset)``; its options are generated from the dataclass by
:mod:`energyloss.experiments.options`. The other commands expose ``add_arguments(parser)`` and ``run(args)``.

Modules are imported only when their experiment is asked for, so an experiment's optional dependencies are needed
only when that experiment runs. Errors are one line (argparse errors exit 2, others 1); ``--debug`` shows the
traceback; Ctrl-C prints the command that resumes the run (exit 130).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from collections.abc import Sequence

from energyloss.experiments.options import ArgumentParser

# name -> module implementing the experiment (imported lazily).
EXPERIMENTS: dict[str, str] = {
    "shapes": "energyloss.experiments.shapes",
    "spins": "energyloss.experiments.spins",
    "rigidity": "energyloss.experiments.rigidity_study",
    "qm9": "energyloss.experiments.molecules.train",
    "jodo": "energyloss.experiments.molecules.jodo_run",
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
    """The parser of an experiment with its own ``add_arguments`` (not generated from a config dataclass)."""
    parser = ArgumentParser(
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    module.add_arguments(parser)
    return parser


def _run_config_experiment(name: str, module, rest: list[str]) -> int:
    """Parse, resolve and run an experiment whose options come from its config dataclass (:mod:`.options`)."""
    from energyloss.experiments import options
    from energyloss.experiments.runs import release_run_folders, set_progress

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="default")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(rest)
    prog = f"energyloss run {name}"
    presets = module.PRESETS
    preset = known.preset if known.preset in presets else "default"
    try:
        base = options.load_config_file(known.config, module.CONFIG) if known.config else presets[preset]
    except ValueError as err:
        ArgumentParser(prog=prog).error(str(err))
    label = "config" if known.config else preset
    parser = options.build_parser(prog, getattr(module, "DESCRIPTION", None), module, base, preset=label)
    args = parser.parse_args(rest)
    try:
        cfg = options.resolve_config(args, module, base)
    except ValueError as err:
        parser.error(str(err))
    if args.print_config:
        from energyloss.experiments.runs import to_jsonable

        print(json.dumps({"experiment": name, "preset": label, "config": to_jsonable(cfg)}, indent=2))
        return 0
    previous = set_progress(not args.no_progress)
    try:
        return int(module.run_config(cfg, out=args.out, preset=label) or 0)
    finally:  # the setting is this command's, not the process's (main() may be called again, e.g. in tests)
        set_progress(previous)
        release_run_folders()  # the run is over: another process may continue it now


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
    """Entry point of the ``energyloss`` command; returns the exit status.

    Errors are one line on stderr (exit 1; argparse errors exit 2); ``--debug`` anywhere shows the traceback.
    Ctrl-C ends with the command that resumes the run (exit 130).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return 141
    except KeyboardInterrupt:
        print("\nenergyloss: interrupted" + _resume_hint(argv), file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError, TypeError, KeyError) as err:
        if debug:
            raise
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        print(f"energyloss: error: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _resume_hint(argv: list[str]) -> str:
    from energyloss.experiments.runs import current_run_folder

    run_dir = current_run_folder()
    if not argv or argv[0] != "run" or run_dir is None:
        return ""
    words = [w for w in argv if w != "--debug"]
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(run_dir)]
    return "; resume with:\n  energyloss " + " ".join(shlex.quote(w) for w in words)


def _main(argv: list[str]) -> int:
    top = ArgumentParser(
        prog="energyloss",
        description="Energy loss functions for physical systems: experiments and tools.",
        epilog="Run 'energyloss run NAME --help' for the options of one experiment.",
    )
    top.add_argument("--version", action="store_true", help="print the version and exit")
    top.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    top.add_argument("command", choices=["run", "list", *COMMANDS], help="what to do")
    top.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
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
        if hasattr(module, "CONFIG"):
            return _run_config_experiment(name, module, rest)
        args = _run_parser(name, module).parse_args(rest)
        return int(module.run(args) or 0)
    module = _load(COMMANDS[ns.command], f"command {ns.command!r}")
    parser = ArgumentParser(prog=f"energyloss {ns.command}", description=module.DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
