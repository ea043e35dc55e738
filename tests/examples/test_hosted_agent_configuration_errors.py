"""The hosted agent's container command (``python main.py``) stops on a configuration error with
one line, what is wrong and what to set, and a non-zero exit: never a Python traceback (16 to 31
lines in the container log, the error at the bottom). That holds for the library's
``ConfigurationError`` (no token source, an unresolved Foundry ``${{connections...}}``
expression, a Redis URL without a scheme, a consent app without its broker URL, an ``http://``
MCP server), for a ``PORT`` that is not a TCP port, and for an on/off variable with another
value. ``MCP_PER_USER`` takes the usual spellings (on/off, true/false, yes/no, 1/0): ``yes`` was
silently off (one MCP connection shared by every user), while ``HOST_TELEMETRY`` refused what it
did not know."""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _support.proc_cli import Answer
from entra_passthrough import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "examples" / "hosted_agent" / "src" / "agent" / "main.py"

CLIENT = "6cd0b7f2-2473-5d24-a86c-13c1e27b8228"
TENANT = "979269af-69e0-5206-a3f3-b961c29811d3"
SECRET = "not-a-real-secret-value"
KEYS = "k1:" + base64.urlsafe_b64encode(bytes(range(32))).decode()
#: A configuration that builds (outside Foundry: the scripted model).
OK = {
    "ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT,
    "AZURE_TENANT_ID": TENANT,
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
    "MCP_URL": "https://mcp.contoso.com/mcp",
    "MCP_SCOPE": "api://11111111-1111-1111-1111-111111111111/.default",
    "HOST_TELEMETRY": "off",
}
CONSENT = {
    **OK,
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": CLIENT,
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": SECRET,
    "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://consent.contoso.com",
    "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
}


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("hosted_agent_main_configuration", MAIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES: dict[str, tuple[dict[str, str], str]] = {
    "empty environment": ({}, "The environment configures no token source. Fix: "),
    "unresolved Foundry expression in the consent keys": (
        {
            **CONSENT,
            "ENTRA_PASSTHROUGH_CONSENT_KEYS": "${{connections.consent-keys.credentials.keys}}",
        },
        "ENTRA_PASSTHROUGH_CONSENT_KEYS: ",
    ),
    "Redis URL without a scheme": (
        {**OK, "ENTRA_PASSTHROUGH_REDIS_URL": "myredis.redis.cache.windows.net:6380"},
        "the scheme of the Redis URL (url, ENTRA_PASSTHROUGH_REDIS_URL) ",
    ),
    "consent app without its broker URL": (
        {k: v for k, v in CONSENT.items() if k != "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL"},
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL is not set",
    ),
    "http:// MCP server": (
        {**OK, "MCP_URL": "http://mcp.contoso.com/mcp"},
        "origin http://mcp.contoso.com is plain HTTP",
    ),
    "PORT not a number": ({**OK, "PORT": "abc"}, "PORT='abc': use the TCP port to listen on"),
    "PORT past 65535": ({**OK, "PORT": "99999"}, "PORT='99999': use the TCP port to listen on"),
    "MCP_PER_USER not on or off": (
        {**OK, "MCP_PER_USER": "maybe"},
        "MCP_PER_USER='maybe': use on or off",
    ),
    "inside Foundry without the project endpoint": (
        {**OK, "FOUNDRY_HOSTING_ENVIRONMENT": "1"},
        "FOUNDRY_PROJECT_ENDPOINT is not set: Foundry injects",
    ),
    "inside Foundry with a garbled project endpoint": (
        {**OK, "FOUNDRY_HOSTING_ENVIRONMENT": "1", "FOUNDRY_PROJECT_ENDPOINT": "contoso"},
        "FOUNDRY_PROJECT_ENDPOINT is not an https:// URL",
    ),
    "HOST_TELEMETRY not on or off": (
        {**OK, "HOST_TELEMETRY": "maybe"},
        "HOST_TELEMETRY='maybe': use on or off",
    ),
}


#: The cases run as the container runs them, ``python main.py`` in a process of its own: its exit
#: status and its whole stderr (one line, no traceback), for an error of the library (raised in
#: ``main``'s ``create_app``) and one of the example's own checks (``PORT``, read before it).
#: The others call ``main()`` in this process, with the same environment and directory: the line
#: is ``SystemExit``'s message, which Python prints on stderr with exit status 1.
REAL_PROCESS = ("empty environment", "PORT not a number")


def _in_process(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> Answer:
    """``main()`` with ``env`` as the whole environment: how the process would stop. What it
    wrote (to the streams or their file descriptors) and what it logged at WARNING or above
    (Python's last-resort handler prints that on stderr) comes before the message."""
    main = _load()
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(MAIN.parent)
    with pytest.raises(SystemExit) as stopped:
        main.main()
    out, err = capfd.readouterr()
    logged = "".join(f"{r.getMessage()}\n" for r in caplog.records if r.levelno >= logging.WARNING)
    message = stopped.value.code
    assert isinstance(message, str), message  # a str: printed on stderr, exit status 1
    return Answer(1, out, err + logged + message + "\n")


@pytest.mark.parametrize("case", list(CASES))
def test_a_configuration_error_stops_the_container_in_one_line(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    extra, expected = CASES[case]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AGENTSERVER_STATE_ROOT": str(tmp_path / "state"),
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        **extra,
    }
    if case in REAL_PROCESS:
        done: Answer | subprocess.CompletedProcess[str] = subprocess.run(
            [sys.executable, str(MAIN)],
            cwd=MAIN.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,  # a safety net: each case stops before listening
        )
    else:
        done = _in_process(env, monkeypatch, capfd, caplog)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]
    assert "Fix: " in lines[0] or "use " in lines[0]
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("value", "per_user"),
    [
        *((v, True) for v in ("1", "true", "TRUE", "yes", "Yes", "on", "ON")),
        *((v, False) for v in ("0", "false", "False", "no", "NO", "off", "Off")),
    ],
)
def test_mcp_per_user_takes_the_usual_spellings(
    value: str, per_user: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = _load()
    seen: list[bool] = []
    real = main.entra_mcp_tool

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(bool(kwargs.get("per_user", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(main, "entra_mcp_tool", spy)
    main.create_app({**OK, "MCP_PER_USER": value}, store=MemoryStore())
    assert seen == [per_user]


@pytest.mark.parametrize("value", ["yes", "No", "TRUE", "0"])
def test_host_telemetry_takes_the_same_spellings(value: str) -> None:
    main = _load()
    assert main.telemetry_enabled({"HOST_TELEMETRY": value}) is (value.lower() in ("yes", "true"))
