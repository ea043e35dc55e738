"""The public API is exactly what the docs document (encode/httpx's test_exported_members).

One place lists the public surface: ``docs/reference/index.md``, a table of names under a
heading per module. These tests keep it equal to the ``__all__`` of every public module, and
keep each public name in one module only.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from collections import defaultdict
from pathlib import Path

import pytest

import entra_passthrough

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SURFACE = DOCS / "reference" / "index.md"

#: Modules without an underscore in their path that are not an API (nothing to import from them).
NOT_AN_API = {
    "entra_passthrough.cli": "the console script `entra-passthrough` (its options are the API)",
}
#: The same name in two modules, for the same idea on another client. Any other name a second
#: module exports fails ``test_each_name_is_exported_once``.
SAME_NAME_ELSEWHERE = {
    (
        "entra_passthrough.httpx",
        "EntraAuth",
    ): "the classic httpx twin of entra_passthrough.EntraAuth",
}

_MODULE_HEADING = re.compile(r"^### `(entra_passthrough(?:\.\w+)*)`\s*$")
# | `Name` | ... |  or  | [`Name`][entra_passthrough.Name] | ... |
_ROW = re.compile(r"^\|\s*\[?`([A-Za-z_][A-Za-z0-9_]*)`(?:\]\[([\w.]+)\])?\s*\|")
# `from entra_passthrough[.module] import A, B` or a parenthesised, multi-line import list.
_IMPORT = re.compile(
    r"^\s*from (entra_passthrough(?:\.\w+)*) import (\([^)]*\)|[^\n]+)", re.MULTILINE
)
_FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def _public_modules() -> list[str]:
    names = ["entra_passthrough"]
    for info in pkgutil.walk_packages(entra_passthrough.__path__, "entra_passthrough."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(set(names) - set(NOT_AN_API))


PUBLIC_MODULES = _public_modules()


def _surface() -> dict[str, list[tuple[str, str | None]]]:
    """module -> [(name, autorefs target or None)] as the reference page lists them."""
    listed: dict[str, list[tuple[str, str | None]]] = {}
    module: str | None = None
    for line in SURFACE.read_text(encoding="utf-8").splitlines():
        heading = _MODULE_HEADING.match(line)
        if heading:
            module = heading.group(1)
            assert module not in listed, f"{module} has two headings on {SURFACE.name}"
            listed[module] = []
            continue
        row = _ROW.match(line)
        if row and module is not None:
            listed[module].append((row.group(1), row.group(2)))
    return listed


def _docs_text() -> str:
    pages = sorted(DOCS.rglob("*.md"))
    assert pages, f"no docs pages under {DOCS}"
    readme = ROOT / "README.md"
    return "\n".join(page.read_text(encoding="utf-8") for page in [*pages, readme])


def _code(text: str) -> str:
    """The fenced code blocks and inline code spans of the docs: where an API name counts."""
    fenced = _FENCED.findall(text)
    prose = _FENCED.sub("", text)
    return "\n".join([*fenced, *_INLINE.findall(prose)])


def _documented_imports(text: str) -> dict[str, set[str]]:
    names: dict[str, set[str]] = defaultdict(set)
    for match in _IMPORT.finditer(text):
        module, body = match.group(1), match.group(2).strip("()")
        for part in body.replace("\n", ",").split(","):
            name = part.split("#", 1)[0].strip().split(" as ", 1)[0].strip()
            if name and name != "...":
                names[module].add(name)
    return names


def test_every_public_module_has_all() -> None:
    missing = [m for m in PUBLIC_MODULES if not hasattr(importlib.import_module(m), "__all__")]
    assert missing == [], "give these modules an __all__ (or an underscore, if private)"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_all_is_unique_and_importable(module: str) -> None:
    mod = importlib.import_module(module)
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported)), f"{module}.__all__ lists a name twice"
    assert [n for n in exported if not hasattr(mod, n)] == []


def test_core_all_is_sorted() -> None:
    assert entra_passthrough.__all__ == sorted(entra_passthrough.__all__)


def test_core_public_members_are_exactly_all() -> None:
    # Every public, non-module attribute of the core package is exported, and nothing else is.
    members = {
        name
        for name, value in vars(entra_passthrough).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # `from __future__ import annotations`
    }
    assert members == set(entra_passthrough.__all__) - {"__version__"}


@pytest.mark.parametrize(
    "module", [m for m in PUBLIC_MODULES if hasattr(importlib.import_module(m), "__path__")]
)
def test_no_second_way_in(module: str) -> None:
    # A package's namespace is its API: a public name of another module reachable here without
    # being exported here is a second, undocumented home (entra_passthrough.consent once
    # re-exported the core's stores). Keep the code that needs it in a private module. (Plain
    # modules such as mcp.py import the core's errors to raise them; that is no re-export.)
    exported_elsewhere = {
        id(getattr(mod, name)): f"{other}.{name}"
        for other in PUBLIC_MODULES
        if other != module
        for mod in [importlib.import_module(other)]
        for name in mod.__all__
        if isinstance(getattr(mod, name), (type, types.FunctionType))
    }
    mod = importlib.import_module(module)
    stray = sorted(
        f"{name} (exported as {exported_elsewhere[id(value)]})"
        for name, value in vars(mod).items()
        if not name.startswith("_") and name not in mod.__all__ and id(value) in exported_elsewhere
    )
    assert stray == []


def test_the_reference_lists_every_public_module() -> None:
    assert sorted(_surface()) == PUBLIC_MODULES


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_the_reference_lists_exactly_all(module: str) -> None:
    listed = [name for name, _ in _surface().get(module, [])]
    exported = set(importlib.import_module(module).__all__)
    assert len(listed) == len(set(listed)), f"{module}: a name is listed twice"
    assert sorted(exported - set(listed)) == [], f"exported by {module}, not on {SURFACE.name}"
    assert sorted(set(listed) - exported) == [], f"on {SURFACE.name} under {module}, not exported"


def test_reference_links_point_at_the_listing_module() -> None:
    wrong = [
        (module, name, target)
        for module, rows in _surface().items()
        for name, target in rows
        if target is not None and target != f"{module}.{name}"
    ]
    assert wrong == []


def test_each_name_is_exported_once() -> None:
    # One home per name: the same object exported by two modules, or two things under one name,
    # is one name for several ideas (or several names for one).
    homes: dict[str, list[str]] = defaultdict(list)
    for module in PUBLIC_MODULES:
        for name in importlib.import_module(module).__all__:
            homes[name].append(module)
    twice = {
        name: modules
        for name, modules in homes.items()
        if len([m for m in modules if (m, name) not in SAME_NAME_ELSEWHERE]) > 1
    }
    assert twice == {}


def test_each_object_is_exported_once() -> None:
    homes: dict[int, list[str]] = defaultdict(list)
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            value = getattr(mod, name)
            if isinstance(value, (type, types.FunctionType)):
                homes[id(value)].append(f"{module}.{name}")
    assert [paths for paths in homes.values() if len(paths) > 1] == []


def test_every_core_export_is_documented_in_use() -> None:
    # Beyond the reference table: each name of the core appears in a code block or code span of
    # the guides (the integrations' names are on their own guide pages and reference pages).
    text = "\n".join(
        page.read_text(encoding="utf-8")
        for page in sorted(DOCS.rglob("*.md"))
        if page != SURFACE and page.parent.name != "reference"
    )
    code = _code(text)
    undocumented = [
        name
        for name in entra_passthrough.__all__
        if name != "__version__" and not re.search(rf"\b{re.escape(name)}\b", code)
    ]
    assert undocumented == []


def test_documented_imports_are_exported() -> None:
    documented = _documented_imports(_docs_text())
    assert documented.get("entra_passthrough"), "the docs import nothing: the parser is broken"
    private = {
        f"{module}.{name}"
        for module, names in documented.items()
        for name in names
        if module not in PUBLIC_MODULES or name not in importlib.import_module(module).__all__
    }
    assert private == set(), (
        "the docs import names that are not exported (or from a private module)"
    )


def test_the_parsers_see_what_they_must() -> None:
    # The table parser and the import parser read what they are meant to (guards the regexes).
    assert _ROW.match("| [`TokenChain`][entra_passthrough.TokenChain] | x |").groups() == (  # type: ignore[union-attr]
        "TokenChain",
        "entra_passthrough.TokenChain",
    )
    assert _ROW.match("| `ScriptedChatClient` | x |").groups() == ("ScriptedChatClient", None)  # type: ignore[union-attr]
    assert _ROW.match("| Name | What it is |") is None
    sample = "from entra_passthrough.mcp import (\n    entra_call,  # c\n    auth_of as a,\n)\n"
    assert _documented_imports(sample) == {"entra_passthrough.mcp": {"entra_call", "auth_of"}}


def test_no_two_classes_or_aliases_share_a_name() -> None:
    # Distinct names for distinct things, inside the package too (there were two ``Outcome``
    # classes and two ``Send``s with different meanings). EntraAuth's classic-httpx twin is the
    # one allowed pair: the same idea for another client.
    import ast

    homes: dict[str, list[str]] = defaultdict(list)
    for path in sorted((ROOT / "src" / "entra_passthrough").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]  # type aliases
            else:
                continue
            for name in names:
                if not name.startswith("_"):  # a private name stays in its module
                    homes[name].append(str(path.relative_to(ROOT / "src")))
    shared = {name: paths for name, paths in homes.items() if len(paths) > 1}
    assert shared == {
        "EntraAuth": ["entra_passthrough/_auth.py", "entra_passthrough/httpx.py"],
    }
