"""The test suite's own layout: a test module never imports another test module (shared helpers
live in ``tests/_support``), and test files are named by what they test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: Top-level names importable from ``tests/`` (pytest's ``pythonpath``): the test packages,
#: ``_support`` and the modules at the root of ``tests/``.
LOCAL = {
    p.stem if p.suffix == ".py" else p.name for p in TESTS.iterdir() if p.name != "__pycache__"
}
#: Words that say when or why a file was written rather than what it tests.
UNDESCRIPTIVE = re.compile(
    r"(^|_)(review|fixes|fix|misc|round\d*|regressions?|new|more|extra|v\d+)(_|$)"
)


def _package(path: Path) -> tuple[str, ...]:
    return path.relative_to(TESTS).parent.parts


def _imported(path: Path, tree: ast.AST) -> list[tuple[int, tuple[str, ...]]]:
    """(line, module path relative to ``tests/``) of every import of a module under ``tests/``,
    nested imports included."""
    found: list[tuple[int, tuple[str, ...]]] = []
    package = _package(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split("."))
                if parts[0] in LOCAL:
                    found.append((node.lineno, parts))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + tuple((node.module or "").split(".") if node.module else ())
                if not node.module:  # from . import x: x may be a module
                    found.extend((node.lineno, (*parts, a.name)) for a in node.names)
                    continue
            else:
                parts = tuple((node.module or "").split("."))
                if parts[0] not in LOCAL:
                    continue
            found.append((node.lineno, parts))
    return found


def _is_test_module(parts: tuple[str, ...]) -> bool:
    name = parts[-1]
    return name.startswith("test_") or name.endswith("_test")


def _violations(path: Path, source: str) -> list[str]:
    tree = ast.parse(source, filename=str(path))
    package = _package(path)
    where = path.relative_to(TESTS)
    bad: list[str] = []
    for line, parts in _imported(path, tree):
        if not parts or parts[0] == "_support":
            continue
        if _is_test_module(parts):
            bad.append(f"tests/{where}:{line} imports the test module {'.'.join(parts)}")
        elif parts[: len(package)] != package or not package:
            bad.append(
                f"tests/{where}:{line} imports {'.'.join(parts)} from another test package: "
                "move what it needs to tests/_support"
            )
    return bad


def test_no_test_module_imports_another_test_module() -> None:
    # A test package may use its own conftest and private helpers (``_fakes.py``); anything two
    # packages share lives in tests/_support, so a test package can move or be deselected alone.
    bad = [
        v
        for path in sorted(TESTS.rglob("*.py"))
        for v in _violations(path, path.read_text(encoding="utf-8"))
    ]
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_what_it_forbids() -> None:
    # The check above must be able to fail: each of these lines is one violation.
    package = TESTS / "integration"
    probe = package / "test_probe_only_parsed.py"
    source = "\n".join(
        [
            "from churn.conftest import SIZE",
            "from integration.test_isolation import USERS",
            "from .test_failures import Start",
            "from ..faults import _mcp",
            "import scale_out._server",
            "def f():\n    from faults._mcp import mcp_faults",
            # allowed: shared helpers, the package's own conftest and private helper modules
            "from _support.servers import ServerThread",
            "from .conftest import N_USERS",
            "from integration.conftest import N_USERS",
            "import json",
        ]
    )
    bad = _violations(probe, source)
    assert [v.split(" ")[0] for v in bad] == [
        f"tests/integration/{probe.name}:{n}" for n in (1, 2, 3, 4, 5, 7)
    ]
    assert "test module integration.test_isolation" in bad[1]
    assert "test module integration.test_failures" in bad[2]
    assert "imports faults from another test package" in bad[3]


def test_test_files_are_named_by_subject() -> None:
    # ``test_review_fixes.py`` says when a test was written; the file name should say what it
    # tests, so the next reader finds it.
    bad = [
        str(p.relative_to(TESTS))
        for p in sorted(TESTS.rglob("test_*.py"))
        if UNDESCRIPTIVE.search(p.stem.removeprefix("test_"))
    ]
    assert not bad, bad
    assert UNDESCRIPTIVE.search("review_fixes")
    assert UNDESCRIPTIVE.search("round2")
    assert not UNDESCRIPTIVE.search("fixture_reuse")
