from __future__ import annotations

from pathlib import Path

import pytest

from ._venv import Venv, build_wheel, make_venv


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    """The wheel with its core dependencies only (no extra), plus pytest to run a user's tests."""
    env = make_venv(tmp_path_factory.mktemp("core") / "venv")
    env.install(str(wheel), "pytest", fast=True)
    return env
