"""``entra-passthrough broker`` refuses bad input with one line on stderr and exit status 2, never
a traceback, through the real command (``python -m entra_passthrough broker``) for the first case
of each test, through the CLI's ``main`` in this process for the others (what the refusal says;
``_support/proc_cli.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _support.proc_cli import Answer, run_cli

KEYS = "k1:" + "A" * 43


#: A broker.json that would start (with a credential and keys in the environment).
BASE = {
    "client_id": "11111111-1111-1111-1111-111111111111",
    "tenant_id": "22222222-2222-2222-2222-222222222222",
    "redirect_uris": ["https://consent.contoso.com/callback"],
}


#: The runner's configuration, which the command does not get.
_FOREIGN = ("ENTRA_", "AZURE_", "IDENTITY_", "MSI_")


def _broker(
    tmp_path: Path,
    *argv: str,
    config: dict[str, object] | None = None,
    in_process: tuple[pytest.MonkeyPatch, pytest.CaptureFixture[str]] | None = None,
    **variables: str,
) -> subprocess.CompletedProcess[str] | Answer:
    """``entra-passthrough broker --config <config> *argv`` with none of the runner's
    configuration, plus ``variables``: a process of its own, or ``in_process`` (monkeypatch,
    capfd) through the CLI's ``main``."""
    path = tmp_path / "broker.json"
    path.write_text(json.dumps(BASE if config is None else config))
    command = ["broker", "--config", str(path), *argv]
    if in_process is not None:
        return run_cli(command, *in_process, drop=_FOREIGN, env=variables)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "entra_passthrough", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PORTS = ["99999", "65536", "-1"]


@pytest.mark.parametrize("port", PORTS)
def test_a_port_out_of_range_is_one_line(
    tmp_path: Path, port: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """uvicorn would start and stop with OverflowError's traceback; the emulator already says
    this in one line."""
    done = _broker(
        tmp_path,
        "--insecure-http",
        "--port",
        port,
        in_process=None if port == PORTS[0] else (monkeypatch, capfd),
        ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET="s3cret-value",
        ENTRA_PASSTHROUGH_CONSENT_KEYS=KEYS,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"entra-passthrough broker: --port must be 0-65535 (0: any free port), got {port}"
    ]


def test_a_missing_credential_names_the_command_once(tmp_path: Path) -> None:
    done = _broker(tmp_path, "--insecure-http", ENTRA_PASSTHROUGH_CONSENT_KEYS=KEYS)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("entra-passthrough broker: no client credential")
    assert lines[0].count("entra-passthrough broker") == 1


WRONG_KINDS: list[tuple[str, object, str]] = [
    ("redirect_uris", 5, "'redirect_uris' must be a list of strings"),
    ("redirect_uris", "https://consent.contoso.com/callback", "must be a list of strings"),
    ("redirect_uris", ["https://consent.contoso.com/callback", 7], "non-empty strings"),
    ("post_logout_redirect_uri", 5, "'post_logout_redirect_uri' must be a string"),
    ("allowed_tenants", "22222222-2222-2222-2222-222222222222", "must be a list of strings"),
    ("tenant_id", ["a"], "'tenant_id' must be a string"),
    ("authority_host", 5, "'authority_host' must be a string"),
    ("ca_file", "/nonexistent/ca.pem", "'ca_file' is not a readable file"),
]


@pytest.mark.parametrize(("key", "value", "said"), WRONG_KINDS)
def test_a_config_value_of_the_wrong_kind_is_one_line(
    tmp_path: Path,
    key: str,
    value: object,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Before: an int crashed with a traceback, a string was iterated letter by letter, a list
    became its repr, and a missing CA file made every sign-in a 503 'try again'."""
    done = _broker(
        tmp_path,
        *("--insecure-http", "--port", "0"),  # past the serving checks: the config's turn
        config={**BASE, key: value},
        in_process=None if (key, value, said) == WRONG_KINDS[0] else (monkeypatch, capfd),
        ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET="s3cret-value",
        ENTRA_PASSTHROUGH_CONSENT_KEYS=KEYS,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert said in done.stderr
    assert "s3cret-value" not in done.stderr
