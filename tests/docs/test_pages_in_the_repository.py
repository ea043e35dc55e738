"""The documentation pages read in the repository (on its host, in an editor), not only on the
built site: every image a page shows is a file of the repository, and no include line of the
site's build (``--8<--``) is left for a reader to see as text. ``mkdocs_hooks.py`` maps both to
what the site needs (the charts' copies under ``assets/bench/``, a ``pymdownx.snippets``
include)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*```")


def _prose(text: str) -> list[str]:
    """The lines of a page outside its fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_image_is_a_file_of_the_repository() -> None:
    missing = []
    for page in _pages():
        for line in _prose(page.read_text(encoding="utf-8")):
            for target in _IMAGE.findall(line):
                if "://" in target:
                    continue
                if not (page.parent / target.split("#", 1)[0]).is_file():
                    missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


def test_no_include_line_shows_in_the_repository() -> None:
    # A bare `--8<-- "file"` line is text on the repository's host; the hidden form
    # `<!-- --8<-- "file" -->` is an include for the site only (mkdocs_hooks.reveal_includes).
    shown = [
        f"{page.relative_to(ROOT)}: {line.strip()}"
        for page in _pages()
        for line in _prose(page.read_text(encoding="utf-8"))
        if re.match(r"^\s*;*-+8<-+", line)
    ]
    assert shown == []


def test_the_site_hook_maps_charts_and_hidden_includes() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from mkdocs_hooks import chart_on_site, reveal_includes
    finally:
        sys.path.remove(str(ROOT))
    assert chart_on_site("performance.md", "bench/results/overhead.png") == (
        "assets/bench/overhead.png"
    )
    assert chart_on_site("quickstarts/a.md", "bench/results/loop_lag.png") == (
        "../assets/bench/loop_lag.png"
    )
    assert chart_on_site("performance.md", "bench/results/latest.md") is None  # not a chart
    assert chart_on_site("performance.md", "bench/other/overhead.png") is None
    page = 'text\n<!-- --8<-- "bench/results/latest.md" -->\n<!-- a comment -->\n'
    assert reveal_includes(page) == 'text\n--8<-- "bench/results/latest.md"\n<!-- a comment -->\n'
    # README's section markers are not includes.
    assert reveal_includes("<!-- --8<-- [start:install] -->") == ("<!-- --8<-- [start:install] -->")
