"""The command line (own process, state file, signals), config files and the async API."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import msal
import pytest

from _support.proc_cli import Answer, run_cli
from entra_passthrough.testing import EntraEmulator, User, World, stable_id

CONFIG_TOML = """
[[apps]]
name = "reports-api"
api = true
scope = "Reports.Read"
access_token_version = 1

[[apps]]
name = "reports-client"
secret = "reports-secret"

[[apps.federated_credentials]]
name = "ci"
subject = "repo:contoso/reports:ref:refs/heads/main"
issuer = "https://token.actions.githubusercontent.com"

[[users]]
name = "zoe"
password = "zoe-pw"
mfa_required_for = ["reports-api"]

[[grants]]
client = "reports-client"
resource = "reports-api"
scopes = ["Reports.Read"]

[lifetimes]
access_token = 600
"""


def test_world_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "world.toml"
    path.write_text(CONFIG_TOML)
    world = World.from_file(path)
    api = world.app("reports-api")
    client = world.app("reports-client")
    assert api is not None
    assert client is not None
    assert api.app_id_uri == f"api://{api.client_id}"
    assert client.secret == "reports-secret"
    assert client.federated_credentials[0].subject.startswith("repo:contoso")
    assert world.user("zoe") is not None
    assert world.app("agent") is not None  # defaults kept unless include_defaults = false
    with EntraEmulator(world=world) as idp:
        app = msal.ConfidentialClientApplication(
            client.client_id,
            client_credential="reports-secret",
            authority=idp.authority,
            instance_discovery=False,
            http_client=idp.msal_http_client(),
        )
        result = app.acquire_token_for_client([f"{api.app_id_uri}/.default"])
        claims = jwt.decode(result["access_token"], options={"verify_signature": False})
        assert claims["aud"] == api.app_id_uri  # v1 API
        assert claims["exp"] - claims["iat"] == 600
        token = idp.user_token("zoe", audience=client.client_id)
        assert jwt.decode(token, options={"verify_signature": False})["tid"] == idp.tenant_id


def test_world_from_json_without_defaults(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    path.write_text(
        json.dumps(
            {
                "include_defaults": False,
                "tenants": [{"name": "solo"}, {"name": "other"}],
                "apps": [{"name": "api", "api": True, "scope": "x"}],
                "users": [{"name": "ann"}],
            }
        )
    )
    world = World.from_file(path)
    assert [t.name for t in world.tenants] == ["solo", "other"]
    assert [a.name for a in world.apps] == ["api"]
    assert world.user("ann@solo.onmicrosoft.com") is not None


def test_world_builder() -> None:
    base = World.default()
    user = User(
        name="dan",
        upn="dan@contoso.onmicrosoft.com",
        oid=stable_id("dan"),
        tenant_id=base.tenants[0].id,
        password="pw",
        display_name="Dan",
    )
    world = base.with_user(user)
    assert world.user("dan") == user
    assert base.user("dan") is None  # frozen: the original is unchanged


async def test_async_context_manager() -> None:
    async with EntraEmulator() as idp:
        async with httpx.AsyncClient(verify=idp.ssl_context()) as http:
            resp = await http.get(idp.jwks_uri())
        assert resp.json()["keys"][0]["kid"] == idp.signing_kid


@pytest.mark.slow
def test_cli_runs_until_sigterm_and_writes_state(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entra_passthrough.cli",
            "emulator",
            "--state-file",
            str(state_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists():  # poll readiness (bounded), never sleep for it
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        agent = state["apps"]["agent"]
        ctx = ssl.create_default_context(cafile=state["ca_file"])
        with httpx.Client(verify=ctx) as http:
            resp = http.post(
                f"{state['authority']}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": agent["client_id"],
                    "client_secret": agent["secret"],
                    "scope": f"{state['apps']['mcp']['app_id_uri']}/.default",
                },
            )
        assert resp.status_code == 200
        az = subprocess.run(
            [
                "az",
                "account",
                "get-access-token",
                "--output",
                "json",
                "--resource",
                "https://ai.azure.com",
            ],
            env={
                **os.environ,
                **state["az"]["env"],
                "PATH": state["az"]["bin_dir"] + os.pathsep + os.environ["PATH"],
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(az.stdout)["tokenType"] == "Bearer"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "alice@contoso.onmicrosoft.com" in out
    assert state["url"] in out


def test_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("entra_emulator")


def test_cli_rejects_a_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from entra_passthrough.testing._cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[[apps]\nname = ")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err
    assert "TOMLDecodeError (" in err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    # What happened to the file, not an exception's repr (FileNotFoundError(2, ...)).
    assert "missing.toml: No such file or directory" in capsys.readouterr().err


def test_the_documented_config_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "emulator.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "world.toml"
    path.write_text(block)
    world = World.from_file(path)
    client = world.app("reports-client")
    assert client is not None
    assert client.certificate_pem is not None
    assert client.federated_credentials[0].issuer == "https://token.actions.githubusercontent.com"
    assert world.tenant("northwind") is not None
    assert world.identity("reports-mi") is not None
    assert any(r.role == "Reports.ReadAll" for r in world.role_assignments)
    assert world.lifetimes.refresh_token == 7776000


def test_port_in_use_fails_clearly(
    entra_emulator: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(entra_emulator.url.rsplit(":", 1)[1])
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(RuntimeError, match="did not start") as info:
            EntraEmulator(port=port).start()
        gc.collect()
    # uvicorn's exit left the event loop as a SystemExit: logged by asyncio with its traceback
    # at shutdown, or when the task was collected, in whatever ran then (once inside another
    # test's ast.parse, where Python 3.11's traceback formatting made it fail, SystemError).
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    assert not isinstance(info.value.__cause__, SystemExit)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--port", "99999"], "--port must be 0-65535"),
        (["--token-latency", "nan"], "--token-latency must be 0-3600"),
        (["--state-file", "/nonexistent-folder/state.json"], "does not exist"),
        (["--state-file", "{folder}"], "is a folder"),
        (["--state-file", "/proc/state.json"], "--state-file: "),  # a folder nobody can write in
        (["--config", "{list}"], "cannot load"),  # a JSON world that is not an object
        (["--port", "{taken}"], "is not free"),
    ],
)
def test_cli_refuses_bad_arguments_with_a_line_not_a_traceback(
    argv: list[str],
    said: str,
    tmp_path: Path,
    entra_emulator: EntraEmulator,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    taken = entra_emulator.url.rsplit(":", 1)[1]
    # A process of its own for the --port cases (a port refused before anything starts, and a
    # server that could not start: what the interpreter prints at exit too); what the others
    # say, in this process.
    own_process = argv[0] == "--port"
    argv = [a.format(list=listed, taken=taken, folder=tmp_path) for a in argv]
    run: subprocess.CompletedProcess[str] | Answer
    if own_process:
        run = subprocess.run(
            [sys.executable, "-m", "entra_passthrough", "emulator", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        run = run_cli(["emulator", *argv], monkeypatch, capfd)
    assert run.returncode == 2, run.stderr
    assert said in run.stderr
    assert "Traceback" not in run.stderr
