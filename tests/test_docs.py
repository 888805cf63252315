"""The documentation site: its code runs, every public module has a reference page, every page is in the nav.

The site itself is built (strictly) by ``make docs``, which ``make test`` runs after pytest.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import energyloss

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose Python blocks are run here (the results pages show commands and outputs, not API code).
RUNNABLE_PAGES = sorted([DOCS / "index.md", DOCS / "getting-started.md", *(DOCS / "losses").glob("*.md")])


def _load(name: str):
    pytest.importorskip("griffe")  # the docs extra (in dev)
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_python_blocks_run(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})


def test_every_public_module_has_a_reference_page():
    rst = _load("griffe_rst")
    public = {
        f"energyloss.{m.name}"
        for m in pkgutil.iter_modules(energyloss.__path__)
        if not m.name.startswith("_") and m.name not in ("cli", "experiments")
    }
    assert set(rst.DOCUMENTED_MODULES) == public | {"energyloss"}
    for module in public:
        page = DOCS / "reference" / f"{module.split('.')[1]}.md"
        assert f"::: {module}" in page.read_text(), page


def test_api_table_covers_all_of_energyloss():
    table = _load("hooks").api_table()
    for name in energyloss.__all__:
        assert f"[`{name}`][energyloss." in table, name


def test_every_page_is_in_the_nav_and_every_figure_exists():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r"^\s+-\s+(?:[^:\n]+:\s+)?([\w./-]+\.md)\s*$", config, re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav, f"not in the nav: {sorted(pages - nav)}; missing files: {sorted(nav - pages)}"
    for page in DOCS.rglob("*.md"):
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page}: {image}"


def test_rst_markup_becomes_markdown():
    rst = _load("griffe_rst")
    text = "\n".join(
        [
            r"Sum :math:`\sum_i x_i` of :func:`foo` and :class:`~pkg.Bar`.",
            "",
            r".. math:: a = b",
            "     + c",
            "",
            "after",
            "",
            "=====  =====",
            "name   value",
            "=====  =====",
            "``a``  1",
            "=====  =====",
            "",
            "Example:",
            "    >>> 1 + 1",
            "    2",
        ]
    )
    out = rst.rst_to_markdown(text, lambda name: {"foo": "pkg.foo", "pkg.Bar": "pkg.Bar"}.get(name))
    assert r"Sum $\sum_i x_i$ of [`foo()`][pkg.foo] and [`Bar`][pkg.Bar]." in out
    assert "$$\na = b\n+ c\n$$\n\nafter" in out
    assert "| name | value |\n|---|---|\n| ``a`` | 1 |" in out
    assert "    ```pycon\n    >>> 1 + 1\n    2\n    ```" in out
