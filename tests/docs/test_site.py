"""The documentation site builds with ``--strict``, lists every page, and its API reference shows
exactly the public surface (``__all__``) of each module."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the 'docs' extra is not installed")
pytest.importorskip("mkdocstrings")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _nav_pages(node: object) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, list):
        return set().union(*(_nav_pages(x) for x in node)) if node else set()
    if isinstance(node, dict):
        return set().union(*(_nav_pages(x) for x in node.values())) if node else set()
    return set()


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"!!python/name:\S+", "null", config)  # a tag safe_load cannot read
    nav = _nav_pages(yaml.safe_load(config)["nav"])
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - nav == set(), "add these pages to the nav in mkdocs.yml"
    assert nav - pages == set()


@pytest.mark.parametrize(
    ("page", "module"),
    [
        ("reference/core/index.html", "entra_passthrough"),
        ("reference/agent_framework/index.html", "entra_passthrough.agent_framework"),
        ("reference/mcp/index.html", "entra_passthrough.mcp"),
        ("reference/server/index.html", "entra_passthrough.server"),
        ("reference/consent/index.html", "entra_passthrough.consent"),
        ("reference/testing/index.html", "entra_passthrough.testing"),
        ("reference/redis/index.html", "entra_passthrough.redis"),
        ("reference/httpx/index.html", "entra_passthrough.httpx"),
    ],
)
def test_api_reference_matches_all(site: Path, page: str, module: str) -> None:
    html = (site / page).read_text(encoding="utf-8")
    shown = set(re.findall(rf'id="{re.escape(module)}\.([A-Za-z_][A-Za-z0-9_]*)"', html))
    public = set(importlib.import_module(module).__all__)
    assert shown == public


def test_no_link_leaves_the_site_relatively(site: Path) -> None:
    # A page's link to a repository file outside docs/ (../examples/..., ../README.md) would be
    # a 404 on the published site: the hook sends it to the file on the repository's host.
    broken: list[str] = []
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        for target in re.findall(r'href="([^"#:]+\.(?:md|py|yaml|json|toml))(?:#[^"]*)?"', html):
            broken.append(f"{page.relative_to(site)} -> {target}")
    assert broken == []
    hosted = (site / "hosted-agent" / "index.html").read_text(encoding="utf-8")
    assert "/blob/main/examples/hosted_agent/README.md" in hosted


def test_performance_page_shows_the_charts_and_tables(site: Path) -> None:
    # The page links the charts in bench/results/ (what the repository shows); the site shows
    # its own copies, and the latest run's tables, included through the hidden include.
    html = (site / "performance" / "index.html").read_text(encoding="utf-8")
    for chart in ("token_posts.png", "overhead.png", "loop_lag.png"):
        assert f'src="../assets/bench/{chart}"' in html
        assert (site / "assets" / "bench" / chart).is_file()
    assert "Results (full run" in html
    assert "--8&lt;--" not in html
    assert "--8<--" not in html


def test_outside_docs_link() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from mkdocs_hooks import outside_docs_link
    finally:
        sys.path.remove(str(ROOT))
    assert outside_docs_link("hosted-agent.md", "../examples/x/README.md") == "examples/x/README.md"
    assert outside_docs_link("quickstarts/a.md", "../../README.md") == "README.md"
    assert outside_docs_link("quickstarts/a.md", "../consent.md") is None  # a page of the site
    assert outside_docs_link("a.md", "../../elsewhere.md") is None  # not in the repository
