"""Every runnable ```python block of the docs and the README runs against the emulator.

See ``_blocks.py`` for the convention (a fence with a ``title=`` is a fragment, not run).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough.testing import EntraEmulator

from ._blocks import PYTHON_ALIASES, ROOT, blocks, fences, pages, title

PAGES = [p for p in pages() if any(b.runnable for b in blocks(p))]


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _prelude(idp: EntraEmulator) -> dict[str, Any]:
    """What a page may assume: a world (the emulator) and the usual names a reader has."""

    async def app(scope: Any, receive: Any, send: Any) -> None:  # a stand-in ASGI app
        raise NotImplementedError

    return {
        "__name__": "__docs__",
        "idp": idp,
        "app": app,
        "client_id": idp.mcp.client_id,
        "tenant_id": idp.tenant_id,
    }


def _env(idp: EntraEmulator) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
    }


def _run(code: str, label: str, namespace: dict[str, Any]) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compiled = compile(code, label, "exec", flags=flags, dont_inherit=True)
    result = eval(compiled, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """A page's blocks configure logging as a reader would (``basicConfig``, a logger's level):
    put it back, or a later test in this process sees, say, ``entra_passthrough`` at INFO and
    its DEBUG lines never run (``tests/apply/test_no_leaks.py`` once failed that way)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(
    page: Path, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in _env(idp).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    namespace = _prelude(idp)
    for block in blocks(page):
        if block.runnable:
            try:
                _run(block.code, block.label, namespace)
            except Exception as exc:
                raise AssertionError(f"{block.label}: {type(exc).__name__}: {exc}") from exc


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
