"""Every runnable ```python block of the docs and the README runs, as a reader who copies it
would run it: each page in a fresh interpreter, with only the reader's configuration (the
emulator as their tenant, ``_env``) and no name, import or setting of this test process.

See ``_blocks.py`` for the convention (a fence with a ``title=`` is a fragment, not run).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_passthrough.testing import EntraEmulator

from ._blocks import PYTHON_ALIASES, ROOT, blocks, fences, pages, title

PAGES = [p for p in pages() if any(b.runnable for b in blocks(p))]

#: Runs one page's blocks, in order and in one namespace, as a reader's script would: in a fresh
#: interpreter, so that nothing another page or test imported, configured or defined (a logging
#: filter, a name such as ``idp``) makes a block pass that fails when copied. Top-level ``await``
#: runs on a fresh event loop, as in a notebook.
_RUNNER = """
import ast, asyncio, inspect, json, sys, traceback
namespace = {"__name__": "__main__"}
for label, code in json.load(sys.stdin):
    try:
        compiled = compile(code, label, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                           dont_inherit=True)
        result = eval(compiled, namespace)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except BaseException as exc:
        traceback.print_exc()
        print(f"{label}: {type(exc).__name__}: {exc}"[:2000], file=sys.stderr)
        sys.exit(1)
"""

#: Seconds one page may take (every page runs in a few seconds; this only bounds a hang).
_PAGE_TIMEOUT = 300
#: Variables of the test process that a page must not inherit: it gets only the reader's
#: configuration (``_env``), never what the test run or another test happened to set.
_FOREIGN_ENV = ("ENTRA_PASSTHROUGH_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_", "OTEL_")


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _env(idp: EntraEmulator) -> dict[str, str]:
    """The reader's configuration (the README's quickstart reads it): the emulator as their
    tenant. Nothing else: a page that needs an emulator object starts its own."""
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
    }


def _run_page(page: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    runnable = [(b.label, b.code) for b in blocks(page) if b.runnable]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    return subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=cwd,
        timeout=_PAGE_TIMEOUT,
        check=False,
    )


#: ``print(...)  # what it prints``: a comment after a print names the line it prints.
_PRINTS = re.compile(r"^\s*print\(.*\)\s+#\s*(?P<shown>\S.*?)\s*$")


def promised_prints(code: str) -> list[str]:
    """What the ``print(...)  # shown`` lines of a block say they print."""
    return [m.group("shown") for line in code.splitlines() if (m := _PRINTS.match(line))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(page: Path, idp: EntraEmulator, tmp_path: Path) -> None:
    done = _run_page(page, _env(idp), tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    # What a page says a print shows is what it prints (a reader compares the two).
    printed = {line.strip() for line in done.stdout.splitlines()}
    promised = [shown for b in blocks(page) if b.runnable for shown in promised_prints(b.code)]
    assert [shown for shown in promised if shown not in printed] == [], done.stdout[-2000:]


def test_promised_prints_are_read_from_the_comment() -> None:
    code = "x = 1\nprint(x)  # 1\n    print(y.kind)  # developer\nprint(z)\n"
    assert promised_prints(code) == ["1", "developer"]


def test_a_page_runs_without_the_test_process_state(idp: EntraEmulator, tmp_path: Path) -> None:
    # This process has an emulator named `idp` and has imported the library; the page's
    # interpreter has neither, as a reader's has not.
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps([["page.md:2", "idp.stats()\n"]]),
        capture_output=True,
        text=True,
        env={**os.environ, **_env(idp)},
        cwd=tmp_path,
        timeout=_PAGE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert "page.md:2: NameError: name 'idp' is not defined" in done.stderr


def _bound(tree: ast.AST) -> set[str]:
    """Names a block binds anywhere (assignments, imports, definitions, arguments, targets)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _with_targets(tree: ast.AST) -> set[str]:
    """Names bound by ``with ... as NAME`` (and ``async with``): context managers such as an
    emulator, which are stopped once their block ends."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if item.optional_vars is not None:
                    names |= {n.id for n in ast.walk(item.optional_vars) if isinstance(n, ast.Name)}
    return names


def closed_with_targets_used(runnable: list[tuple[str, str]]) -> list[str]:
    """``label: name`` for every block (``(label, code)``, in page order) that uses a name an
    earlier block bound with ``with ... as name`` and does not bind itself: the object (an
    emulator, a client) was closed when that ``with`` ended, so the block runs against a
    stopped emulator and proves nothing, and a reader who copies it alone has no such name."""
    found: list[str] = []
    closed: dict[str, str] = {}
    for label, code in runnable:
        tree = ast.parse(code, label)
        used = {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        found += [
            f"{label}: {name} (the `with` of {closed[name]} has ended)"
            for name in sorted((used - _bound(tree)) & closed.keys())
        ]
        closed |= dict.fromkeys(_with_targets(tree), label)
    return found


def test_no_block_uses_the_target_of_an_ended_with() -> None:
    hits = [
        hit
        for page in PAGES
        for hit in closed_with_targets_used([(b.label, b.code) for b in blocks(page) if b.runnable])
    ]
    assert hits == []


def test_the_with_check_finds_a_closed_emulator() -> None:
    opened = "with EntraEmulator() as idp:\n    idp.stats()\n"
    reused = "idp.clear_faults()\n"
    reopened = "with EntraEmulator() as idp:\n    idp.clear_faults()\n"
    hits = closed_with_targets_used([("p:1", opened), ("p:5", reused), ("p:9", reopened)])
    assert hits == ["p:5: idp (the `with` of p:1 has ended)"]


#: What a non-run block's title must say (the convention of docs/index.md, "Code in these
#: pages"): why it is not run.
NOT_RUN = ("not run", "fragment", "proposal")


def test_no_python_block_escapes_the_check() -> None:
    # A block is either run (exactly ```python) or titled with the reason it is not: a block
    # spelled ```py, ```python3, ~~~ or with another info string would be skipped silently.
    escaped: list[str] = []
    for page in pages():
        where = page.relative_to(ROOT)
        for line, info in fences(page):
            language = info.split(" ", 1)[0].lower() if info else ""
            if language in PYTHON_ALIASES or (language == "python" and info != "python"):
                if language != "python" or title(info) is None:
                    escaped.append(f"{where}:{line}: ```{info}")
                    continue
                if not any(word in (title(info) or "").lower() for word in NOT_RUN):
                    escaped.append(f"{where}:{line}: title does not say why it is not run")
        text = page.read_text(encoding="utf-8")
        if re.search(r"^\s*~~~", text, re.MULTILINE):
            escaped.append(f"{where}: a ~~~ fence (use ```)")
    assert escaped == []


def test_the_readers_pages_are_covered() -> None:
    covered = {str(p.relative_to(ROOT)) for p in pages()}
    assert "examples/hosted_agent/README.md" in covered
    assert "bench/README.md" in covered
    assert "docs/quickstarts/own-api-obo.md" in covered
