"""``entra-passthrough inspect --json`` prints JSON whatever the token: one that cannot be
decoded is a JSON error object on stdout (exit 2), never the token itself; ``--help`` lists
``--version`` as every other command's does. Run in this process (``cli.main``, stdin, stdout
and stderr captured); a refused token, in JSON and in text, is also run as the installed command
line runs it, in a fresh interpreter with stdin a pipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _support.cli_run import Ran, run_cli
from _support.tokens import unsigned_jwt

#: The token the real process is asked about (the others run in this process).
IN_A_PROCESS = "opaque-secret-value"


def inspect(
    *argv: str, stdin: str = "", process: bool = False
) -> subprocess.CompletedProcess[str] | Ran:
    """``inspect *argv`` in this process, or with ``process`` as the real command."""
    if not process:
        return run_cli(["inspect", *argv], stdin=stdin)
    return subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "inspect", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "token",
    ["opaque-secret-value", "a.b", "e30.e30", "eyJhbGciOiJub25lIn0.bm90IGpzb24.", "x" * 20_000],
)
def test_an_undecodable_token_is_a_json_error(token: str) -> None:
    done = inspect("-", "--json", stdin=f"Bearer {token}\n", process=token == IN_A_PROCESS)
    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert report["verified"] is False
    assert report["presented"] is True
    assert report["error"].startswith("not a decodable JWT")
    assert report["fingerprint"].startswith("sha256:")
    assert "AADSTS50027" in report["why"]
    assert token not in done.stdout + done.stderr


def test_a_decodable_token_keeps_its_shape() -> None:
    token = unsigned_jwt(aud="api://agent", oid="o", tid="t")
    done = inspect(token, "--json", "--client-id", "agent", "--tenant", "t")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert set(report) == {"fingerprint", "verified", "claims", "sources"}
    assert token not in done.stdout


def test_without_json_the_error_stays_text_on_stderr() -> None:
    done = inspect("opaque-secret-value", process=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "not a decodable JWT" in done.stderr
    assert "opaque-secret-value" not in done.stderr


def test_help_lists_every_option() -> None:
    done = inspect("--help")
    assert done.returncode == 0
    for option in ("--client-id", "--tenant", "--json", "--version"):
        assert option in done.stdout, option
