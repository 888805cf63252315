"""Command-line options generated from an experiment's config dataclass.

Every field of the config becomes an option (``n_train`` -> ``--n-train``, or the name in ``flags``); its help shows
the value the chosen ``--preset`` (or ``--config FILE``) gives it. One syntax for lists: comma-separated values
(``--lrs 1e-3,3e-3``; spaces also work, ``none`` or nothing gives an empty list). ``bool`` fields get
``--x/--no-x``; ``X | None`` fields accept ``none``. A value that does not convert, or that the config's
``validate()`` rejects, is an argparse error (exit 2, one line).

An experiment module that uses this declares::

    CONFIG = MyConfig                         # a frozen dataclass with a validate() -> MyConfig method
    PRESETS = {"smoke": MyConfig(...), "default": MyConfig(), "paper": MyConfig(...)}
    OPTION_HELP = {"n_train": "training shapes per seed", ...}
    OPTION_FLAGS = {"n_layers": "--layers"}   # optional: flag names that are not the field name
    OPTION_CHOICES = {"device": ("cpu", "cuda")}  # optional
    def run_config(cfg: MyConfig, *, out: str | None, preset: str) -> int: ...

and :mod:`energyloss.cli` builds its parser with :func:`build_parser` and resolves it with
:func:`resolve_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ArgumentParser", "build_parser", "config_from_json", "load_config_file", "resolve_config"]

_NONE_WORDS = ("none", "null")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``PROG: error: MESSAGE (see PROG --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _scalar_parser(kind: type) -> Callable[[str], Any]:
    if kind is bool:

        def parse_bool(text: str) -> bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)

        return parse_bool
    return kind


def _split(kind: type, texts: list[str] | str) -> tuple:
    """Comma- or space-separated values -> tuple of ``kind``; ``none`` -> ()."""
    if isinstance(texts, str):
        texts = [texts]
    items = [p.strip() for t in texts for p in t.split(",") if p.strip()]
    if len(items) == 1 and items[0].lower() in _NONE_WORDS:
        return ()
    parse = _scalar_parser(kind)
    return tuple(parse(p) for p in items)


def _field_kind(hint: Any) -> tuple[str, Any, bool]:
    """``(form, element type, optional)`` for a type hint: form 'scalar', 'list' (tuple[X, ...]) or 'pair'."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"unsupported option type {hint!r}")
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return "list", args[0], optional
        if len(set(args)) == 1:
            return "pair", args[0], optional
        raise TypeError(f"unsupported option type {hint!r}")
    if hint in (int, float, str, bool):
        return "scalar", hint, optional
    raise TypeError(f"unsupported option type {hint!r}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value) if value else "none"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _ValueType:
    """argparse ``type=`` for one field; its ``__name__`` appears in argparse's 'invalid value' message."""

    def __init__(self, form: str, kind: type, optional: bool) -> None:
        self.form, self.kind, self.optional = form, kind, optional
        self.__name__ = ("list of " if form != "scalar" else "") + kind.__name__

    def __call__(self, text: str) -> Any:
        if self.optional and text.strip().lower() in _NONE_WORDS:
            return None
        if self.form == "scalar":
            return _scalar_parser(self.kind)(text)
        return text  # lists are joined and split after parsing (nargs)


def build_parser(
    prog: str,
    description: str | None,
    module: Any,
    base: Any,
    *,
    preset: str,
) -> argparse.ArgumentParser:
    """The parser of ``energyloss run NAME``: the common options, then one option per config field.

    ``base`` is the config the preset (or ``--config``) gives; its values are shown in the help.
    """
    parser = ArgumentParser(prog=prog, description=description)
    common = parser.add_argument_group("run")
    presets = getattr(module, "PRESETS", {})
    common.add_argument(
        "--preset",
        default=preset,
        choices=sorted(presets),
        help="named configuration: 'smoke' (fast check), 'default' (laptop CPU), 'paper' (the paper's settings); "
        f"now: {preset}",
    )
    common.add_argument("--config", metavar="FILE", help="start from a config.json (of a run folder) instead")
    common.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: a dated folder under runs/); rerunning into it continues the run where the "
        "experiment keeps its state (all but timing)",
    )
    common.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    common.add_argument("--no-progress", action="store_true", help="plain progress lines instead of live bars")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    group = parser.add_argument_group(
        "options", f"values in [brackets] are those of {'--config' if preset == 'config' else '--preset ' + preset}"
    )
    help_texts: Mapping[str, str] = getattr(module, "OPTION_HELP", {})
    flags: Mapping[str, str] = getattr(module, "OPTION_FLAGS", {})
    choices: Mapping[str, Any] = getattr(module, "OPTION_CHOICES", {})
    hints = typing.get_type_hints(type(base))
    for field in dataclasses.fields(base):
        if field.name in getattr(module, "OPTION_EXCLUDE", ()):
            continue
        form, kind, optional = _field_kind(hints[field.name])
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        text = help_texts.get(field.name, "")
        shown = _show(getattr(base, field.name))
        help_text = f"{text} [{shown}]" if text else f"[{shown}]"
        if form == "scalar" and kind is bool:
            group.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        kwargs["type"] = _ValueType(form, kind, optional)
        if form != "scalar":
            kwargs["nargs"] = "*"
            kwargs["metavar"] = kind.__name__.upper()
        else:
            kwargs["metavar"] = field.name.upper() if kind is not str else "NAME"
            if field.name in choices:
                kwargs["choices"] = choices[field.name]
        group.add_argument(flag, **kwargs)
    extra = getattr(module, "add_extra_arguments", None)
    if extra is not None:
        extra(group)
    return parser


def _convert(form: str, kind: type, value: Any) -> Any:
    if value is None or (isinstance(value, list) and any(v is None for v in value)):
        return None
    if form == "scalar":
        return kind(value) if kind is not bool else bool(value)
    if isinstance(value, str | list) and form != "scalar" and (not value or isinstance(value[0], str)):
        return _split(kind, value) if value else ()
    return tuple(kind(v) for v in value)


def resolve_config(args: argparse.Namespace, module: Any, base: Any) -> Any:
    """``base`` with every option given on the command line replaced, validated (``ValueError`` names it)."""
    hints = typing.get_type_hints(type(base))
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(base):
        if field.name not in vars(args):
            continue
        form, kind, optional = _field_kind(hints[field.name])
        value = getattr(args, field.name)
        try:
            changes[field.name] = _convert(form, kind, value)
        except ValueError:
            raise ValueError(f"option --{field.name.replace('_', '-')}: invalid {kind.__name__} in {value!r}") from None
    extra = getattr(module, "extra_overrides", None)
    if extra is not None:
        changes.update(extra(args, dataclasses.replace(base, **changes)))
    cfg = dataclasses.replace(base, **changes)
    validate = getattr(cfg, "validate", None)
    return validate() if validate is not None else cfg


def config_from_json(cls: type, data: Mapping[str, Any]) -> Any:
    """A ``cls`` instance from its JSON form (lists become tuples); unknown keys raise ``ValueError``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {cls.__name__}")
    values = {}
    for key, value in data.items():
        form, kind, _ = _field_kind(hints[key])
        if value is not None and form != "scalar":
            value = tuple(kind(v) if kind is not float else float(v) for v in value)
        elif value is not None and kind is float:
            value = float(value)
        values[key] = value
    return cls(**values)


def load_config_file(path: str, cls: type) -> Any:
    """Read ``path`` (a run folder's ``config.json``, the folder itself, or a bare config mapping)."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config: no such file {file}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--config: cannot read {file}: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError(f"--config: {file} does not hold a config mapping")
    try:
        return config_from_json(cls, data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--config {file}: {err}") from None
