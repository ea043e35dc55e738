"""docs/errors.md's error tree is the library's: every exception a public module exports is in
it, under the parent it derives from, with its other bases (``ValueError``...) named beside it,
and the tree names nothing else. Its opening sentence names every exported error that is not an
``EntraPassthroughError``."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import entra_passthrough

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "errors.md"

#: Public modules whose exceptions are not raised to an application by the library.
NOT_RAISED = {
    "entra_passthrough.testing": "the emulator's STS error answer (sent over HTTP, not raised)",
    "entra_passthrough.cli": "the console script",
}

_NODE = re.compile(r"^(?P<indent>[│ ]*)[├└]── (?P<name>\w+)(?: \((?P<bases>[\w, ]+)\))?")
_ROOT = re.compile(r"^(?P<name>[A-Za-z][\w.]*)")


def _tree() -> dict[str, tuple[str | None, set[str]]]:
    """name -> (parent's name, the other bases named in parentheses)."""
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(r"^```\n(EntraPassthroughError\n.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "no error tree (a ``` block starting with EntraPassthroughError) in errors.md"
    tree: dict[str, tuple[str | None, set[str]]] = {}
    path: list[str] = []
    for line in block.group(1).splitlines():
        node = _NODE.match(line)
        if node:
            depth = len(node.group("indent")) // 4 + 1
            del path[depth:]
            name = node.group("name")
            bases = {b.strip() for b in (node.group("bases") or "").split(",") if b.strip()}
            tree[name] = (path[-1], bases)
            path.append(name)
            continue
        root = _ROOT.match(line)
        if root:
            name = root.group("name").rsplit(".", 1)[-1]
            tree[name] = (None, set())
            path[:] = [name]
    return tree


def _exported() -> dict[str, tuple[str, type[BaseException]]]:
    found: dict[str, tuple[str, type[BaseException]]] = {}
    names = ["entra_passthrough"] + [
        info.name
        for info in pkgutil.walk_packages(entra_passthrough.__path__, "entra_passthrough.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    for module_name in names:
        if module_name in NOT_RAISED:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an extra that is not installed
            pytest.skip(f"{module_name} cannot be imported here: {exc}")
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                found[name] = (module_name, value)
    return found


def test_every_exported_error_is_in_the_tree_under_its_base() -> None:
    tree = _tree()
    exported = _exported()
    assert exported, "no exported exception found"
    wrong = []
    for name, (module, cls) in sorted(exported.items()):
        if name not in tree:
            wrong.append(f"{module}.{name} is not in the tree")
            continue
        parent, others = tree[name]
        bases = [base.__name__ for base in cls.__bases__]
        if parent is None:
            if name != "EntraPassthroughError":
                wrong.append(f"{name} is a root of the tree")
            continue
        if bases[0] != parent:
            wrong.append(f"{name} is under {parent} in the tree, but derives from {bases[0]}")
        if set(bases[1:]) != others:
            wrong.append(f"{name}: the tree names {sorted(others)} beside it, not {bases[1:]}")
    assert not wrong, "docs/errors.md's tree is wrong:\n" + "\n".join(wrong)


def test_the_tree_names_only_exported_errors() -> None:
    exported = _exported()
    stale = [
        name for name, (parent, _) in _tree().items() if name not in exported and parent is not None
    ]
    assert not stale, f"the tree names errors no public module exports: {stale}"


def test_the_opening_sentence_names_the_errors_outside_entra_passthrough_error() -> None:
    opening = PAGE.read_text(encoding="utf-8").split("```", 1)[0]
    outside = [
        name
        for name, (_, cls) in _exported().items()
        if not issubclass(cls, entra_passthrough.EntraPassthroughError)
    ]
    missing = [name for name in outside if f"`{name}`" not in opening]
    assert not missing, f"errors.md's opening does not name {missing} as outside the base"
