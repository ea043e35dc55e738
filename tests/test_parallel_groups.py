"""The worker groups of the parallel run name tests that exist, and group what they say."""

from __future__ import annotations

from pathlib import Path

from _support.parallel import XDIST_GROUPS, xdist_group

ROOT = Path(__file__).resolve().parents[1]


def test_every_group_prefix_names_an_existing_path() -> None:
    # A renamed file would silently leave its group: two workers would build the site twice
    # (or share a venv path) again.
    for prefix, _ in XDIST_GROUPS:
        assert (ROOT / prefix.split("::")[0]).exists(), prefix


def test_groups() -> None:
    site = "tests/docs/test_site.py::test_api_reference_matches_all[reference/index.html-x]"
    assert xdist_group(site) == "docs-site"
    assert xdist_group("tests/packaging/test_release.py::test_sdist") == "packaging"
    arc = "tests/emulator/test_strict.py::test_msal_azure_identity_and_the_library_on_each_host"
    assert xdist_group(f"{arc}[azure_arc]") == "azure-arc"
    assert xdist_group(f"{arc}[imds]") is None
    assert xdist_group("tests/docs/test_python_blocks.py::test_page_blocks_run[x]") is None
