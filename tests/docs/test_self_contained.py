"""The repository stands on its own: it cites no file it does not contain, its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [
    "src",
    "docs",
    "examples",
    "tests",
    "bench",
    "scripts",
    ".ci",
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    "Makefile",
    "mkdocs.yml",
    "mkdocs_hooks.py",
    "noxfile.py",
    "conftest.py",
]
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".json", ".txt", ".sh", ""}
# Built by concatenation so that this file does not match itself.
FOREIGN = ["FACTS" + ".md", "DESIGN" + ".md", "STYLE" + ".md"]


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            found.append(path)
            continue
        found += [
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return found


def test_no_file_cites_documents_outside_the_repository() -> None:
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _files()
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if any(name in line for name in FOREIGN)
    ]
    assert hits == []


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOC_PATH = re.compile(r"\bdocs/([a-z0-9_-]+\.md)\b")


def _markdown() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "examples").rglob("*.md")),
    ]


@pytest.mark.parametrize("page", _markdown(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if path.startswith("assets/bench/"):  # published from bench/results by mkdocs_hooks.py
            path = str(ROOT / "bench" / "results" / path.removeprefix("assets/bench/"))
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


def test_every_cited_docs_page_exists() -> None:
    """``docs/<page>.md`` named in code, comments or prose is a page of this repository."""
    missing = {
        f"{p.relative_to(ROOT)}: docs/{name}"
        for p in _files()
        for name in _DOC_PATH.findall(p.read_text(encoding="utf-8", errors="replace"))
        if not (ROOT / "docs" / name).exists()
    }
    assert missing == set()


def test_error_messages_link_to_pages_that_exist() -> None:
    """``see("<page>", "<anchor>")`` in the code names a docs page (and an anchor on it)."""
    pattern = re.compile(r"""see\(\s*["']([a-z0-9-]+)["'](?:,\s*f?["']([a-z0-9{}._-]+)["'])?""")
    cited = {
        (page, anchor or "")
        for p in (ROOT / "src").rglob("*.py")
        for page, anchor in pattern.findall(p.read_text(encoding="utf-8"))
    }
    assert ("configuration", "") in cited  # the pattern finds the calls
    missing = [page for page, _ in cited if not (ROOT / "docs" / f"{page}.md").exists()]
    assert missing == []
    # ...and the anchor is on that page (a heading's id, or an explicit one).
    lost = [
        f"{page}#{anchor}"
        for page, anchor in cited
        if anchor and "{" not in anchor and anchor not in _anchors(ROOT / "docs" / f"{page}.md")
    ]
    assert lost == []


def _anchors(page: Path) -> set[str]:
    """The ids a page's headings get (MkDocs' default slugs) and its explicit ids."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'id="([^"]+)"', text)) | set(re.findall(r"\{#([\w-]+)\}", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        plain = re.sub(r"`|\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\s-]", "", plain.lower()).strip()
        found.add(re.sub(r"[\s-]+", "-", slug))
    return found


def test_every_aadsts_code_has_an_anchor_its_errors_link_to() -> None:
    from entra_passthrough import EntraError
    from entra_passthrough._aadsts import _TABLE
    from entra_passthrough._docs import doc_url

    errors_page = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    for entry in _TABLE:
        assert f'<a id="aadsts{entry.code}"></a>' in errors_page, entry.code
        err = EntraError("Entra refused the request", aadsts=entry.code)
        assert doc_url("errors", f"aadsts{entry.code}") in str(err)
