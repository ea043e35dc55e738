"""examples/hosted_agent: the README's local run, exactly as written - one command starts the
emulator, the MCP server, the broker and the agent; a second sends a request as a user - run as
subprocesses from the repository root; readiness is polled, every wait is bounded."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hosted_agent"
README = EXAMPLE / "README.md"
START = "python examples/hosted_agent/run_local.py"
ASK = "python examples/hosted_agent/ask.py alice"


def _env(state_file: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ENTRA_PASSTHROUGH_", "AZURE_"))
    }
    env.pop("PORT", None)
    env.update(
        {
            "LOCAL_STATE_FILE": str(state_file),
            "LOCAL_AGENT_PORT": "0",  # a free port: CI may run other agents on 8088
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _argv(command: str) -> list[str]:
    words = command.split()
    assert words[0] == "python"
    return [sys.executable, *words[1:]]


@pytest.fixture
def local_run(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    state_file = tmp_path / "state.json"
    env = _env(state_file)
    proc = subprocess.Popen(
        _argv(START),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not state_file.exists():
            assert proc.poll() is None, f"run_local.py exited: {proc.communicate()[0][-3000:]}"
            assert time.monotonic() < deadline, "run_local.py never became ready"
            time.sleep(0.1)
        agent = json.loads(state_file.read_text())["agent"]
        for _ in range(200):  # bounded
            if httpx2.get(f"{agent}/readiness", trust_env=False, timeout=5).status_code == 200:
                break
            time.sleep(0.05)
        yield env, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_readme_names_the_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text
    assert ASK in text


def _ask(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_local_run_as_written(local_run: tuple[dict[str, str], subprocess.Popen[str]]) -> None:
    env, proc = local_run
    alice = _ask(env, ASK)
    assert alice.returncode == 0, alice.stdout + alice.stderr
    assert "alice@contoso.onmicrosoft.com" in alice.stdout  # the MCP server saw alice
    bob = _ask(env, "python examples/hosted_agent/ask.py bob")
    assert bob.returncode == 0, bob.stdout + bob.stderr
    assert "bob@contoso.onmicrosoft.com" in bob.stdout
    assert "alice" not in bob.stdout
    # carol never consented. ask.py sends the platform's user id as Foundry's front door does
    # (x-agent-user-id), so DelegatedConsent can bind her grant: her link is the consent
    # broker's (not OnBehalfOf's Entra authorize link, which has no redirect URI of this flow).
    state = json.loads(Path(env["LOCAL_STATE_FILE"]).read_text())
    carol = _ask(env, "python examples/hosted_agent/ask.py carol")
    prefix = "consent needed: open "
    link = next(
        (line[len(prefix) :] for line in carol.stdout.splitlines() if line.startswith(prefix)),
        None,
    )
    assert link is not None, carol.stdout + carol.stderr
    assert link.startswith(f"{state['broker']}/start?"), link
    # She follows it (the emulator signs her in by the link's login hint; she accepts), and
    # her next question reaches the MCP server as carol.
    page = _follow(link, state)
    assert page.status_code == 200, page.text[:500]
    assert str(page.url).startswith(f"{state['broker']}/callback")
    again = _ask(env, "python examples/hosted_agent/ask.py carol")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "carol@contoso.onmicrosoft.com" in again.stdout
    # dave's tenant requires MFA for the MCP API: the answer says so (not only "Function failed",
    # nor DelegatedConsent's link: OnBehalfOf's InteractionRequired is what the chain decided).
    dave = _ask(env, "python examples/hosted_agent/ask.py dave")
    assert "multi-factor authentication" in dave.stdout, dave.stdout + dave.stderr
    assert "consent needed" not in dave.stdout
    # Never a token in what the commands print (a JWT: "eyJ" inside a consent link's sealed
    # ticket, which is random base64url, is not one).
    for out in (alice.stdout + alice.stderr, bob.stdout, carol.stdout, again.stdout, dave.stdout):
        assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.", out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not Path(env["LOCAL_STATE_FILE"]).exists()  # removed on the way out


_FORM = re.compile(r"<form([^>]*)>(.*?)</form>", re.S | re.I)
_ACTION = re.compile(r"action=['\"]([^'\"]+)['\"]", re.I)
_INPUT = re.compile(
    r"<input[^>]*type=['\"]hidden['\"][^>]*"
    r"name=['\"]([^'\"]*)['\"][^>]*value=['\"]([^'\"]*)['\"]"
)
_ACCEPT = re.compile(r"<button[^>]*name=['\"]([^'\"]+)['\"][^>]*value=['\"](accept)['\"]")


def _follow(link: str, state: dict[str, Any]) -> httpx2.Response:
    """carol's browser: the broker, the emulator's sign-in (by the link's login hint), its
    consent page (Accept) and its form_post page (what its script submits), back to the
    broker. Bounded."""
    emulator = state["emulator"]
    tls = ssl.create_default_context(cafile=emulator["ca_file"])
    with httpx2.Client(verify=tls, follow_redirects=True, trust_env=False, timeout=30) as browser:
        page = browser.get(link)
        for _ in range(8):
            form = _FORM.search(page.text)
            if not str(page.url).startswith(emulator["url"]) or form is None:
                return page
            attrs, body = form.groups()
            fields = {html.unescape(k): html.unescape(v) for k, v in _INPUT.findall(body)}
            fields.update(dict(_ACCEPT.findall(body)))
            action = _ACTION.search(attrs)
            target = page.url.join(html.unescape(action.group(1))) if action else page.url
            page = browser.post(str(target), data=fields)
        return page


def _main_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "hosted_agent_main_under_test", EXAMPLE / "src" / "agent" / "main.py"
    )
    assert spec is not None
    assert spec.loader is not None
    main = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = main
    spec.loader.exec_module(main)
    return main


def test_host_telemetry_is_explicit() -> None:
    on = _main_module().telemetry_enabled
    assert on({}) is False  # a laptop, even with a connection string around
    assert on({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}) is False
    assert on({"FOUNDRY_HOSTING_ENVIRONMENT": "1"}) is True  # inside Foundry
    assert on({"FOUNDRY_HOSTING_ENVIRONMENT": "1", "HOST_TELEMETRY": "off"}) is False
    assert on({"HOST_TELEMETRY": "on"}) is True
    with pytest.raises(SystemExit):
        on({"HOST_TELEMETRY": "maybe"})


def test_agent_id_from_the_variables_foundry_injects() -> None:
    """Without an app registration configured, the example's chain is the Entra Agent ID that
    Foundry injects (FOUNDRY_AGENT_*), its blueprint authenticated by the managed identity as a
    federated credential: still no secret."""
    import jwt

    from entra_passthrough import AgentIdentityOnBehalfOf, MemoryStore, bind_caller
    from entra_passthrough.testing import EntraEmulator

    main = _main_module()
    with EntraEmulator() as idp:
        env = {
            "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": idp.agent_identity.client_id,
            "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
            "FOUNDRY_AGENT_TENANT_ID": idp.tenant_id,
            "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
            "AZURE_CLIENT_ID": idp.managed_identity.client_id,
            **idp.mi_env(),
            "AZURE_AUTHORITY_HOST": idp.url,
            "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        }
        chain = main.make_chain(env, MemoryStore())
        try:
            assert [type(s) for s in chain.sources] == [AgentIdentityOnBehalfOf]
            token = idp.user_token("alice", audience=idp.blueprint.client_id)
            with bind_caller(token=token):
                result = chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
            claims = jwt.decode(result.token, options={"verify_signature": False})
            assert claims["oid"] == idp.users["alice"].oid
        finally:
            chain.close()
