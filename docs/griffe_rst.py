"""Griffe extension of the docs build: the reST markup inside our Google-style docstrings, as Markdown.

The docstrings are Google style (``Args:``, ``Returns:``, ``Example:``) with Sphinx inline markup, which reads
well in ``help()`` and in the source: ``:func:`name```, ``:class:``, ``:mod:``, ``:data:``, ``:attr:``,
``:meth:``, ``:math:`...```, ``.. math::`` blocks and reST simple tables. mkdocstrings renders Markdown, so
before rendering this extension rewrites, in every docstring:

- cross-reference roles into autorefs links ``[`name`][energyloss.module.name]``, resolved in the scope of the
  documented object and followed to the canonical definition of re-exported names; a name that the site does
  not document (a private module, a module constant outside ``__all__``) becomes plain code;
- ``:math:`x``` into ``$x$`` and ``.. math::`` blocks into ``$$ ... $$`` (pymdownx.arithmatex, MathJax);
- reST simple tables (``=====  =====`` rules) into Markdown pipe tables;
- doctest blocks (``>>>``) into fenced ``pycon`` code blocks.

Nothing here changes the package: it runs only inside ``mkdocs build`` (``mkdocs.yml`` loads it by path).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import griffe

#: The modules that have a page in the API reference (docs/reference/); names defined elsewhere are not linked.
DOCUMENTED_MODULES = (
    "energyloss",
    "energyloss.geometry",
    "energyloss.coefficients",
    "energyloss.atomistic",
    "energyloss.alignment",
    "energyloss.rigidity",
    "energyloss.spins",
    "energyloss.diffusion",
    "energyloss.nn",
    "energyloss.testing",
)

_ROLE = re.compile(r":(?:py:)?(func|class|mod|data|attr|meth|obj|exc|const):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")
_TABLE_RULE = re.compile(r"^[ \t]*=+(?:[ \t]+=+)+[ \t]*$")

Resolver = Callable[[str], "str | None"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _convert_math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_BLOCK.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m.group("indent")
        body = [m.group("rest").strip()] if m.group("rest").strip() else []
        i += 1
        # the block goes on over lines indented deeper than the directive (blank lines between them included)
        while i < len(lines):
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j == len(lines) or _indent(lines[j]) <= len(indent):
                break
            body.append(lines[j].strip())
            i = j + 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return out


def _fence_doctests(lines: list[str]) -> list[str]:
    """Doctest blocks (``>>>`` lines and their output) inside fenced ``pycon`` code blocks.

    Griffe parses ``>>>`` lines only in an ``Examples:`` section; ours are under ``Example:``, an admonition whose
    body is Markdown, where ``>>>`` would read as nested block quotes.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: _indent(line)]
        block = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(indent):
            block.append(lines[i][len(indent) :])
            i += 1
        out += [f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```"]
    return out


def _convert_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _TABLE_RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        rule = lines[i]
        starts = [m.start() for m in re.finditer(r"=+", rule)]
        rows: list[list[str]] = []
        rules_seen = 1
        i += 1
        while i < len(lines) and rules_seen < 3:
            line = lines[i]
            i += 1
            if _TABLE_RULE.match(line):
                rules_seen += 1
                continue
            cells = []
            for k, start in enumerate(starts):
                stop = starts[k + 1] if k + 1 < len(starts) else None
                cells.append(line[start:stop].strip() if stop else line[start:].strip())
            rows.append([c if c not in ("—", "-", "..") else "" for c in cells])
        indent = rule[: len(rule) - len(rule.lstrip())]
        if rows:
            out.append(indent + "| " + " | ".join(rows[0]) + " |")
            out.append(indent + "|" + "|".join("---" for _ in rows[0]) + "|")
            out += [indent + "| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def rst_to_markdown(text: str, resolve: Resolver) -> str:
    """Rewrite the reST markup of one docstring (see the module docstring); ``resolve(name)`` gives a link target."""
    lines = _fence_doctests(_convert_tables(_convert_math_blocks(text.splitlines())))
    text = "\n".join(lines)
    text = _MATH.sub(lambda m: f"${m.group(1)}$", text)

    def role(m: re.Match) -> str:
        kind, short, name = m.groups()
        name = name.strip()
        if "<" in name and name.endswith(">"):  # :func:`title <target>`
            title, name = (s.strip() for s in name[:-1].split("<", 1))
        else:
            title = name.rsplit(".", 1)[-1] if short else name
        if kind in ("func", "meth") and not title.endswith(")"):
            title += "()"
        target = resolve(name)
        return f"[`{title}`][{target}]" if target else f"`{title}`"

    return _ROLE.sub(role, text)


def _public(path: str, collection) -> bool:
    """Whether the object at canonical ``path`` has an entry on the site."""
    if path in DOCUMENTED_MODULES:
        return True
    # longest documented module that prefixes the path
    owner = max((m for m in DOCUMENTED_MODULES if path.startswith(m + ".")), key=len, default=None)
    if owner is None or owner == "energyloss":
        return False
    top, *sub = path[len(owner) + 1 :].split(".")
    try:
        mod = collection[owner]
    except KeyError:
        return False
    exported = mod.exports if mod.exports is not None else [n for n in mod.members if not n.startswith("_")]
    if top not in {str(e) for e in exported}:
        return False
    return all(not s.startswith("_") for s in sub)


def _canonical(path: str, collection) -> str | None:
    try:
        obj = collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolver(obj: griffe.Object) -> Resolver:
    collection = obj.modules_collection

    def resolve(name: str) -> str | None:
        candidates = [name]
        scope = obj
        while scope is not None:  # the object itself, its class, its module, its package
            candidates.append(f"{scope.path}.{name}")
            scope = scope.parent
        for cand in candidates:
            path = _canonical(cand, collection)
            if path is not None:
                return path if _public(path, collection) else None
        return None

    return resolve


def _doc_comment(attr: griffe.Attribute) -> None:
    """Sphinx's ``#:`` comments above an assignment become the attribute's docstring (griffe ignores them)."""
    try:
        lines = attr.lines_collection[attr.filepath]
    except (KeyError, TypeError):
        return
    if not attr.lineno:
        return
    comment: list[str] = []
    k = attr.lineno - 2  # the line above the assignment (lineno is 1-based)
    while k >= 0 and lines[k].lstrip().startswith("#:"):
        comment.insert(0, lines[k].lstrip()[2:].strip())
        k -= 1
    if comment:
        attr.docstring = griffe.Docstring(" ".join(comment), lineno=k + 2, parent=attr)


class RstToMarkdown(griffe.Extension):
    """Convert reST roles, math and simple tables in every loaded docstring to Markdown (see the module doc)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        def walk(obj: griffe.Object) -> None:
            if obj.docstring is None and obj.is_attribute:
                _doc_comment(obj)
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value, _resolver(obj))
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
