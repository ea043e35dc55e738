"""No module reaches into another module's private names; only the adapter modules reach into a
framework's.

* An import of ``_name`` (a name, not a private *module* of ours such as ``_caller``) from
  another module of the library fails: the helper gets an underscore-free name in its private
  module (``_caller.set_current``), which says "internal API, used across modules".
* An import of a framework's private name or private module fails outside that framework's
  adapter module (``ADAPTERS``).
* A private attribute that the module does not define itself (``obj._x``, ``self._x`` inherited
  from a framework, ``getattr(obj, "_x")``; ``self._x`` defined by one of the library's own
  base classes is allowed) fails outside the adapter modules, except the
  remaining offenders listed in ``KNOWN_ATTRIBUTES`` (a ratchet: a listed one that is gone
  fails too, so the list only shrinks).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "entra_passthrough"

#: The adapter modules, and the top-level packages whose private names each may use.
ADAPTERS: dict[str, set[str]] = {
    "entra_passthrough/agent_framework/_af_seams.py": {
        "agent_framework",
        "agent_framework_foundry_hosting",
        "azure",
        "contextlib",  # the type agent-framework's get_mcp_client is annotated with
    },
    "entra_passthrough/_mcp_seams.py": {"mcp"},
    "entra_passthrough/_httpx_seams.py": {"httpx2", "httpx"},
    "entra_passthrough/_azure_identity_seams.py": {"azure"},
    "entra_passthrough/_msal.py": {"msal"},
    "entra_passthrough/_requests_tls.py": {"requests", "urllib3", "http"},
    "entra_passthrough/_otel.py": {"opentelemetry"},
}

#: Imports still to move (module, imported name).
KNOWN_IMPORTS: set[tuple[str, str]] = set()

#: Private attributes of other modules' objects still used (module, attribute).
KNOWN_ATTRIBUTES: set[tuple[str, str]] = set()

#: namedtuple's public methods carry an underscore (so that they cannot clash with a field).
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(relative: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(relative).split(".")
    if not relative.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_ours(dotted: str) -> bool:
    """A module of this distribution (``entra_passthrough``, ``_entra_passthrough_pytest``)."""
    return _is_our_module(dotted.split(".")[0])


def _is_our_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _private_imports(relative: str, tree: ast.Module) -> Iterator[str]:
    """``module.name`` for each import of a private name (of ours or a framework's)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_ours(alias.name) and any(_private(p) for p in alias.name.split(".")):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(relative, node)
            ours = _is_ours(module)
            for alias in node.names:
                dotted = f"{module}.{alias.name}"
                if ours:
                    if _private(alias.name) and not _is_our_module(dotted):
                        yield dotted
                elif any(_private(part) for part in dotted.split(".")):
                    yield dotted


def _defined(tree: ast.Module) -> set[str]:
    """The names a module defines: functions, classes, variables, ``self.x = ...``, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__slots__" for target in node.targets
        ):
            names.update(
                c.value
                for c in ast.walk(node.value)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
    return names


def _inherited(relative: str, tree: ast.Module) -> set[str]:
    """What ``self._x`` may name besides the module's own: what the library's own base classes
    define (protected use by a subclass: ``httpx.EntraAuth(_auth.EntraAuthBase)``). Not what
    an adapter defines: a class built on an adapter's uses its public hooks only."""
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(relative, node)
            if _is_ours(module):
                for alias in node.names:
                    imported[alias.asname or alias.name] = module
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            origin = imported.get(base.id) if isinstance(base, ast.Name) else None
            if origin is None or not _is_our_module(origin):
                continue
            path = SRC.joinpath(*origin.split("."))
            source = (
                path.with_suffix(".py")
                if path.with_suffix(".py").exists()
                else path / "__init__.py"
            )
            if source.relative_to(SRC).as_posix() not in ADAPTERS:
                names |= _defined(ast.parse(source.read_text(encoding="utf-8")))
    return names


def _private_attributes(tree: ast.Module, inherited: frozenset[str] = frozenset()) -> Iterator[str]:
    """Private attributes used here but defined elsewhere (``x._y``, ``getattr(x, "_y")``);
    ``self._y`` may also name one of ``inherited``."""
    defined = _defined(tree)
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and _private(node.attr):
            name = node.attr
            if (
                name in inherited
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                continue
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            name = node.args[1].value
        if name is not None and name not in defined and name not in NAMEDTUPLE:
            yield name


def test_no_module_imports_a_private_name_outside_the_adapters() -> None:
    found: set[tuple[str, str]] = set()
    for relative, tree in _modules():
        allowed = ADAPTERS.get(relative, set())
        for dotted in _private_imports(relative, tree):
            if dotted.split(".")[0] not in allowed:
                found.add((relative, dotted))
    new = sorted(found - KNOWN_IMPORTS)
    assert not new, (
        "private names imported across modules (give the helper an underscore-free name in its "
        "private module, or move a framework's private name into its adapter module, "
        f"{sorted(ADAPTERS)}):\n" + "\n".join(f"  {m}: {n}" for m, n in new)
    )
    gone = sorted(KNOWN_IMPORTS - found)
    assert not gone, f"no longer imported: remove from KNOWN_IMPORTS: {gone}"


def test_no_module_uses_a_private_attribute_defined_elsewhere() -> None:
    found: set[tuple[str, str]] = set()
    for relative, tree in _modules():
        if relative in ADAPTERS:
            continue
        inherited = frozenset(_inherited(relative, tree))
        found.update((relative, name) for name in _private_attributes(tree, inherited))
    new = sorted(found - KNOWN_ATTRIBUTES)
    assert not new, (
        "private attributes of another module's (or a framework's) objects; add a public method "
        "to the owner, or move a framework's into its adapter module:\n"
        + "\n".join(f"  {m}: {n}" for m, n in new)
    )
    gone = sorted(KNOWN_ATTRIBUTES - found)
    assert not gone, f"no longer used: remove from KNOWN_ATTRIBUTES: {gone}"


def test_the_checks_see_what_they_claim_to() -> None:
    # The checks themselves: each rule finds a planted offender.
    sample = ast.parse(
        "from .._caller import _hidden, caller_var\n"
        "from agent_framework._mcp import thing\n"
        "from . import _hosting\n"
        "import opentelemetry.metrics._internal\n"
        "x = other._secret + getattr(other, '_also')\n"
        "class C:\n"
        "    def f(self):\n"
        "        self._mine = 1\n"
        "        return self._mine, self._inherited, t._replace()\n"
    )
    relative = "entra_passthrough/agent_framework/_tool.py"
    assert sorted(_private_imports(relative, sample)) == [
        "agent_framework._mcp.thing",
        "entra_passthrough._caller._hidden",
        "opentelemetry.metrics._internal",
    ]
    assert sorted(_private_attributes(sample)) == ["_also", "_inherited", "_secret"]
    inherited = frozenset({"_inherited", "_secret"})  # self._x only
    assert sorted(_private_attributes(sample, inherited)) == ["_also", "_secret"]
    # A class built on an adapter inherits none of the framework's private names through it.
    tool = "entra_passthrough/agent_framework/_tool.py"
    own = _inherited(tool, ast.parse((SRC / tool).read_text(encoding="utf-8")))
    assert "_httpx_client" not in own
    assert "_lifecycle_owner_task" not in own
    httpx_front = "entra_passthrough/httpx.py"
    assert "_core" in _inherited(httpx_front, ast.parse((SRC / httpx_front).read_text("utf-8")))


def test_every_name_an_adapter_exports_is_checked_by_a_seam_test() -> None:
    # An adapter's public names are the seams; each must appear in a test of tests/seams that
    # fails when the private name behind it moves.
    import importlib

    tests = "\n".join(
        path.read_text(encoding="utf-8") for path in Path(__file__).parent.glob("test_*_seams.py")
    )
    unchecked = []
    for relative in ADAPTERS:
        module = importlib.import_module(_module_name(relative))
        exported = getattr(module, "__all__", None)
        if exported is None:
            continue  # _msal, _otel: adapters among other things, seam tests named in their docs
        unchecked += [f"{relative}: {name}" for name in exported if name not in tests]
    assert not unchecked, f"adapter names no seam test uses: {unchecked}"
