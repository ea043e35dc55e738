"""The README's install section (also the site's Installation page) names every extra
pyproject.toml defines, with what it is for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_extra_is_in_the_install_table() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "optional-dependencies"
        ]
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("--8<-- [start:install]", 1)[1].split("--8<-- [end:install]", 1)[0]
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE))
    assert extras - {"dev"} <= listed, sorted(extras - {"dev"} - listed)
    assert listed <= extras, sorted(listed - extras)
