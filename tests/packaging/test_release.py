"""Release artefacts: the wheel and the sdist build, install into clean venvs and work; each
extra installs and imports alone.

Slow (a venv per extra, agent-framework is large), so it runs when
``ENTRA_PASSTHROUGH_RELEASE_TESTS=1`` (``.ci/run`` sets it); the core-only install is checked on
every run by ``test_core_install.py``.
"""

from __future__ import annotations

import os
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from ._venv import PIP_TIMEOUT, REPO, Venv, check, make_venv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ENTRA_PASSTHROUGH_RELEASE_TESTS") != "1",
        reason="set ENTRA_PASSTHROUGH_RELEASE_TESTS=1 (CI does)",
    ),
]

# extra -> modules that must import with only that extra installed
EXTRAS = {
    "agent-framework": ["entra_passthrough.agent_framework", "entra_passthrough.mcp"],
    "mcp": ["entra_passthrough.mcp", "entra_passthrough.server"],
    "consent": ["entra_passthrough.consent"],
    "redis": ["entra_passthrough.redis"],
    "testing": ["entra_passthrough.testing"],
    "otel": ["entra_passthrough", "opentelemetry.trace"],
    "demo": ["entra_passthrough._demo", "entra_passthrough.consent"],
}
NOT_RUNTIME = {"all", "dev", "docs"}  # tool sets, not integrations


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    check([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], timeout=PIP_TIMEOUT)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _version() -> str:
    text = (REPO / "src" / "entra_passthrough" / "__init__.py").read_text()
    line = next(x for x in text.splitlines() if x.startswith("__version__"))
    return line.split("=", 1)[1].strip().strip("\"'")


def test_wheel_contents_and_metadata(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(meta_name).decode())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_text = whl.read(entry_points).decode()
    assert "_entra_passthrough_pytest.py" in names
    assert "entra_passthrough/py.typed" in names
    assert not any(n.startswith(("tests/", "bench/", "examples/")) for n in names)
    assert meta["Version"] == _version()
    urls = {u.split(",", 1)[0].strip() for u in meta.get_all("Project-URL") or []}
    assert {"Documentation", "Source", "Changelog"} <= urls
    assert "entra_emulator = _entra_passthrough_pytest" in entry_text
    extras = set(meta.get_all("Provides-Extra") or [])
    assert extras - NOT_RUNTIME == set(EXTRAS), "add the new extra to EXTRAS"


def test_sdist_builds_and_installs(dist: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = sdist.getnames()
    assert any(n.endswith("/CHANGELOG.md") for n in names)
    assert any(n.endswith("/src/_entra_passthrough_pytest.py") for n in names)
    env = make_venv(tmp_path / "venv")
    env.install(str(dist["sdist"]))
    _smoke(env)


_IMPORTS = (
    "import importlib.util, entra_passthrough; "
    "assert importlib.util.find_spec('_entra_passthrough_pytest')"  # the plugin (needs pytest)
)


def _smoke(env: Venv) -> None:
    check([env.python, "-c", _IMPORTS])
    out = check([env.bin("entra-passthrough"), "--help"])
    assert out.startswith("usage: entra-passthrough")
    assert check([env.bin("entra-passthrough"), "--version"]).split()[-1] == _version()


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extra_installs_and_imports_alone(
    dist: dict[str, Path], tmp_path: Path, extra: str
) -> None:
    env = make_venv(tmp_path / "venv")
    env.install(f"{dist['wheel']}[{extra}]")
    _smoke(env)
    check([env.python, "-c", "; ".join(f"import {m}" for m in EXTRAS[extra])])
