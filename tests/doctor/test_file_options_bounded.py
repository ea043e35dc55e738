"""The files ``doctor`` reads from its options and variables are read within a bound:
``--user-token-file`` at most one token's size (``/dev/zero`` or a huge file made it read until
memory ran out), and ``ENTRA_PASSTHROUGH_CA_FILE`` naming a FIFO, a device or a socket is a
failed check without opening it (a FIFO with no writer hung doctor in ``open``).

``/dev/zero`` and the FIFO run the real process (``python -m entra_passthrough doctor``): the
memory cap is the process's, and a hang is bounded by its timeout and ended by killing it. The
files of ordinary content run the command in this process (``cli.main``)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support.cli_run import run_cli
from entra_passthrough._jwt import MAX_TOKEN_BYTES
from entra_passthrough.testing import EntraEmulator

#: The address space the /dev/zero case may use at most (a safety net: before the bound, it
#: was read until memory ran out; the token file is read before any worker thread starts).
MEMORY_CAP = 1 << 30


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _env(idp: EntraEmulator, **variables: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_", "FOUNDRY_"))
    }
    env.update(
        AZURE_TENANT_ID=idp.tenant_id,
        AZURE_AUTHORITY_HOST=idp.url,
        ENTRA_PASSTHROUGH_CA_FILE=idp.ca_file,
        ENTRA_PASSTHROUGH_CLIENT_ID=idp.agent.client_id,
        ENTRA_PASSTHROUGH_CLIENT_SECRET=idp.agent.secret,
    )
    env.update(variables)
    return env


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _doctor(
    env: dict[str, str], *argv: str, capped: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "doctor", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a safety net: the hang is what the FIFO case is about
        stdin=subprocess.DEVNULL,
        preexec_fn=_capped if capped else None,
        check=False,
    )


def _token_file_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if "user token file" in line)


def test_dev_zero_as_the_user_token_file_is_refused_unread(idp: EntraEmulator) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    done = _doctor(_env(idp), "--scope", scope, "--user-token-file", "/dev/zero", capped=True)
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    line = _token_file_line(done.stdout)
    assert line.startswith("FAIL"), line
    assert "/dev/zero" in line, line
    assert "KiB" in line, line
    assert "Traceback" not in done.stderr


def test_a_file_larger_than_a_token_is_refused(idp: EntraEmulator, tmp_path: Path) -> None:
    big = tmp_path / "big.jwt"
    big.write_text("a" * (4 * MAX_TOKEN_BYTES))
    scope = f"{idp.mcp.app_id_uri}/.default"
    done = run_cli(["doctor", "--scope", scope, "--user-token-file", str(big)], env=_env(idp))
    assert done.returncode == 1
    line = _token_file_line(done.stdout)
    assert line.startswith("FAIL"), line
    assert str(big) in line, line
    assert "KiB" in line, line


def test_a_token_with_its_line_break_is_still_read(idp: EntraEmulator, tmp_path: Path) -> None:
    token = idp.user_token("alice", audience=idp.agent.client_id)
    path = tmp_path / "alice.jwt"
    path.write_text(token + "\n")
    scope = f"{idp.mcp.app_id_uri}/.default"
    done = run_cli(["doctor", "--scope", scope, "--user-token-file", str(path)], env=_env(idp))
    assert "user token file" not in done.stdout, done.stdout
    assert "consent" in done.stdout
    assert token not in done.stdout + done.stderr


def test_a_fifo_as_the_ca_file_is_a_failed_check(idp: EntraEmulator, tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    done = _doctor(_env(idp, ENTRA_PASSTHROUGH_CA_FILE=str(fifo)))
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    ca = next(line for line in done.stdout.splitlines() if "CA file" in line)
    assert ca.startswith("FAIL"), done.stdout
    assert "not a regular file" in ca, done.stdout
    assert "Traceback" not in done.stderr
