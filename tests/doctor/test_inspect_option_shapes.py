"""``entra-passthrough inspect`` refuses a ``--client-id`` or ``--tenant`` that
``OnBehalfOf(client_id=..., allowed_tenants=...)`` refuses (braces, quotes, ``common``, a
domain for a tenant): one line on stderr naming the option and the form it takes, exit 2. It
used to take them and blame a good token ("not the OBO app: AADSTS500131", "not on the
allow-list").

The command runs in this process (``cli.main``); one value it takes and one it refuses are also
run as the real process (``python -m entra_passthrough inspect``), exit status included."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _support.cli_run import Ran, run_cli
from _support.tokens import unsigned_jwt

APP = "6cd0b7f2-2473-5d24-a86c-13c1e27b8228"
TENANT = "979269af-69e0-5206-a3f3-b961c29811d3"
TOKEN = unsigned_jwt(
    aud=f"api://{APP}",
    iss=f"https://login.microsoftonline.com/{TENANT}/v2.0",
    tid=TENANT,
    oid="bd0aa036-ba4b-5ef7-b089-b78d534a9465",
    scp="access_as_user",
    ver="2.0",
    exp=9999999999,
)


def _inspect(*argv: str, process: bool = False) -> subprocess.CompletedProcess[str] | Ran:
    """``inspect *argv TOKEN`` in this process, or with ``process`` as the real command."""
    if not process:
        return run_cli(["inspect", *argv, TOKEN])
    return subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "inspect", *argv, TOKEN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("tenant", [TENANT, TENANT.upper()], ids=["as-the-claim", "upper-case"])
def test_the_right_values_say_yes(tenant: str) -> None:
    done = _inspect("--client-id", APP, "--tenant", tenant, process=tenant == TENANT)
    assert done.returncode == 0, done.stderr
    assert "[yes] OnBehalfOf" in done.stdout


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--client-id", "{" + APP + "}", "--tenant", TENANT], "--client-id"),
        (["--client-id", f'"{APP}"'], "--client-id"),
        (["--client-id", f"{APP} x"], "--client-id"),
        (["--client-id", APP, "--tenant", "{" + TENANT + "}"], "--tenant"),
        (["--client-id", APP, "--tenant", "common"], "--tenant"),
        (["--tenant", "contoso.onmicrosoft.com"], "--tenant"),
        (["--tenant", TENANT.replace("-", "")], "--tenant"),
    ],
    ids=["braced-id", "quoted-id", "spaced-id", "braced-tenant", "common", "domain", "dashless"],
)
def test_a_malformed_option_is_one_line_and_exit_2(argv: list[str], option: str) -> None:
    done = _inspect(*argv, process=argv[1].startswith("{"))  # braced-id: the real process
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"entra-passthrough inspect: {option} ")
    assert "GUID" in lines[0]  # the form it takes
    assert "Traceback" not in done.stderr
