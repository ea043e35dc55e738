"""Build this repository's wheel and install it into clean virtual environments.

The wheel is built once per session (``pip wheel --no-deps``; hatchling comes from pip's build
isolation). A venv is created without pip and filled with this interpreter's pip
(``pip --python``), which skips bootstrapping pip in each one; dependencies come from the index
through pip's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600


def _clean_env() -> dict[str, str]:
    """The environment for a child process: nothing of this venv or of the repo leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("PYTEST_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(
    args: list[str], *, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def check(args: list[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    proc = run(args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def build_wheel(outdir: Path) -> Path:
    check(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(outdir), str(REPO)],
        timeout=PIP_TIMEOUT,
    )
    (wheel,) = outdir.glob("entra_passthrough-*.whl")
    return wheel


@dataclass(frozen=True)
class Venv:
    root: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def install(self, *requirements: str) -> None:
        check(
            [sys.executable, "-m", "pip", "--python", self.python, "install", "-q", *requirements],
            timeout=PIP_TIMEOUT,
        )

    def installed(self) -> set[str]:
        out = check([self.python, "-c", _LIST_DISTS])
        return set(out.split())


_LIST_DISTS = (
    "import importlib.metadata as m\n"
    "print(' '.join(sorted({(d.metadata['Name'] or '').lower() for d in m.distributions()})))"
)


def make_venv(root: Path) -> Venv:
    venv.EnvBuilder(with_pip=False, clear=True).create(root)
    return Venv(root)
