"""Python code blocks of the documentation, as the docs check sees them.

Convention (docs/index.md, "Code in these pages"): every fenced block opened with exactly
```` ```python ```` is executed, the blocks of one page in order and in one namespace, in a
fresh interpreter whose only setup is the reader's configuration (``ENTRA_PASSTHROUGH_*`` and
``AZURE_*`` naming an emulator): a page starts the emulator it uses itself. A block whose fence
carries a title (```` ```python title="app.py (fragment)" ````) is a named file or a fragment
and is not executed; its title says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    info: str
    code: str

    @property
    def runnable(self) -> bool:
        return self.info.strip() == "python"

    @property
    def label(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group("indent"), m.group("info").strip()
        start = i + 1
        j = start
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [x[len(indent) :] if x.startswith(indent) else x for x in lines[start:j]]
        if info.split(" ", 1)[0] == "python":
            found.append(Block(page, start + 1, info, "\n".join(body) + "\n"))
        i = j + 1
    return found


def pages() -> list[Path]:
    """Every page a reader follows: the README, the site, the examples' and the benchmarks'
    READMEs."""
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "examples").glob("*/README.md")),
        ROOT / "bench" / "README.md",
    ]


#: Fence languages that are Python under another name: never used, so that no block escapes the
#: check by its spelling.
PYTHON_ALIASES = ("py", "python3", "py3", "pycon", "ipython", "pyi", "sage")


def fences(page: Path) -> list[tuple[int, str]]:
    """(line, info string) of every opening fence of ``page``."""
    found: list[tuple[int, str]] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        found.append((i + 1, m.group("info").strip()))
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        i = j + 1
    return found


def title(info: str) -> str | None:
    """The ``title="..."`` of a fence's info string."""
    m = re.search(r'title="([^"]*)"', info)
    return m.group(1) if m else None
