"""The public API is exactly what the docs document (encode/httpx's test_exported_members)."""

from __future__ import annotations

import re
import types
from pathlib import Path

import entra_passthrough

DOCS = Path(__file__).resolve().parent.parent / "docs"
# `from entra_passthrough import A, B` or a parenthesised, multi-line import list.
_IMPORT = re.compile(r"^from entra_passthrough import (\([^)]*\)|[^\n]+)", re.MULTILINE)
_FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def _docs_text() -> str:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, f"no docs pages under {DOCS}"
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def _code(text: str) -> str:
    """The fenced code blocks and inline code spans of the docs: where an API name counts."""
    fenced = _FENCED.findall(text)
    prose = _FENCED.sub("", text)
    return "\n".join([*fenced, *_INLINE.findall(prose)])


def _documented_imports(text: str) -> set[str]:
    names: set[str] = set()
    for match in _IMPORT.finditer(text):
        body = match.group(1).strip("()")
        for part in body.replace("\n", ",").split(","):
            name = part.split("#", 1)[0].strip().split(" as ", 1)[0].strip()
            if name and name != "...":
                names.add(name)
    return names


def test_all_is_sorted_and_unique() -> None:
    exported = entra_passthrough.__all__
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


def test_every_export_is_importable() -> None:
    for name in entra_passthrough.__all__:
        assert hasattr(entra_passthrough, name), name


def test_public_members_are_exactly_all() -> None:
    # Every public, non-module attribute is exported, and nothing else is.
    members = {
        name
        for name, value in vars(entra_passthrough).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # `from __future__ import annotations`
    }
    assert members == set(entra_passthrough.__all__) - {"__version__"}


def test_every_export_is_documented() -> None:
    code = _code(_docs_text())
    undocumented = [
        name
        for name in entra_passthrough.__all__
        if name != "__version__" and not re.search(rf"\b{re.escape(name)}\b", code)
    ]
    assert undocumented == []


def test_documented_imports_are_exported() -> None:
    documented = _documented_imports("\n".join(_FENCED.findall(_docs_text())))
    assert documented, "the docs import nothing from entra_passthrough: the parser is broken"
    assert documented - set(entra_passthrough.__all__) == set()
