"""MkDocs hook of the docs build: the table of ``energyloss.__all__`` on the API reference's index page.

The page holds the marker ``<!-- energyloss:api-table -->``; this hook replaces it with one row per name of
``energyloss.__all__`` (a link to the name's entry on its module's page and the first line of its docstring), so
the table can never fall behind the package. A name whose module has no page fails the (strict) build.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

MARKER = "<!-- energyloss:api-table -->"

_spec = importlib.util.spec_from_file_location("_energyloss_griffe_rst", Path(__file__).with_name("griffe_rst.py"))
_rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rst)


def _canonical(name: str, value: object) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    if module and getattr(value, "__qualname__", None):
        return f"{module}.{value.__qualname__}"
    # constants (COEFFICIENT_SCHEMES, ...): the submodule whose __all__ lists the name
    import energyloss

    for sub in _rst.DOCUMENTED_MODULES[1:]:
        mod = sys.modules.get(sub) or importlib.import_module(sub)
        if name in getattr(mod, "__all__", ()) and getattr(mod, name, None) is getattr(energyloss, name):
            return f"{sub}.{name}"
    raise RuntimeError(f"energyloss.{name}: no documented module defines it")


def _doc_comment(path: str) -> str:
    """The ``#:`` comment above the assignment of the module constant at ``path``."""
    module, name = path.rsplit(".", 1)
    lines = inspect.getsource(importlib.import_module(module)).splitlines()
    for k, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*[:=]", line):
            comment = []
            while k > 0 and lines[k - 1].lstrip().startswith("#:"):
                k -= 1
                comment.insert(0, lines[k].lstrip()[2:].strip())
            return " ".join(comment)
    return ""


def _table_cell(markdown: str) -> str:
    """``|`` would end the table cell, also inside math: there it becomes ``\\vert`` / ``\\Vert``."""
    parts = re.split(r"(\$[^$]+\$)", markdown)
    for k, part in enumerate(parts):
        if k % 2:
            parts[k] = part.replace("\\|", "\\Vert{}").replace("|", "\\vert{}")
        else:
            parts[k] = part.replace("|", "\\|")
    return "".join(parts)


def _summary(value: object, path: str) -> str:
    if isinstance(value, types.ModuleType) or callable(value):
        doc = inspect.getdoc(value) or ""
    else:
        doc = _doc_comment(path)
    line = doc.strip().split("\n\n", 1)[0].replace("\n", " ")
    # roles become plain code here: the name column already links
    return _table_cell(_rst.rst_to_markdown(line, lambda name: None))


def api_table() -> str:
    import energyloss

    rows = ["| name | kind | summary |", "|---|---|---|"]
    for name in sorted(energyloss.__all__, key=str.lower):
        value = getattr(energyloss, name)
        path = _canonical(name, value)
        owner = path.rsplit(".", 1)[0] if not isinstance(value, types.ModuleType) else path
        if owner not in _rst.DOCUMENTED_MODULES:
            raise RuntimeError(f"energyloss.{name} is defined in {owner}, which has no page in docs/reference/")
        kind = (
            "module"
            if isinstance(value, types.ModuleType)
            else "class"
            if inspect.isclass(value)
            else "function"
            if callable(value)
            else "constant"
        )
        rows.append(f"| [`{name}`][{path}] | {kind} | {_summary(value, path)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, api_table())
    return markdown
