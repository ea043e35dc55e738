"""A build of the repository between releases carries a version of its own: ``__version__`` was
still the released 0.1.0 with ~1,800 lines under CHANGELOG's [Unreleased], so ``--version``
could not tell a build of HEAD from the release, and pip skipped a rebuilt wheel as "already
installed". With changes unreleased it is a PEP 440 development release (``X.Y.Z.devN``) after
every released version. (Plain parsing: ``tests/packaging`` shadows the ``packaging`` library.)"""

from __future__ import annotations

import re
from pathlib import Path

import entra_passthrough

ROOT = Path(__file__).resolve().parents[2]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".")[:3])


def test_unreleased_changes_make_a_development_version_after_every_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \S+", text, re.M)
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    version = entra_passthrough.__version__
    assert released
    if not any(line.strip() for line in unreleased.splitlines()):
        assert version == released[0]  # a release: the version is its heading's
        return
    assert re.fullmatch(r"\d+\.\d+\.\d+\.dev\d+", version), version
    assert all(_release(version) > _release(v) for v in released), (version, released)


def test_the_install_docs_say_how_to_reinstall_a_rebuilt_wheel() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- --8<-- [start:install] -->", 1)[1].split("[end:install]")[0]
    assert "--force-reinstall" in section
