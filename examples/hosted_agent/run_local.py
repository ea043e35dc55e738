"""Run the hosted agent on your machine, with no tenant and no model: ONE command starts the local
Entra emulator, the protected MCP server (examples/mcp_server), the consent broker and the agent
(src/agent/main.py, configured exactly as in Foundry: through the environment, secretless).

    python examples/hosted_agent/run_local.py

Then, in a second terminal, ask as alice: ``python examples/hosted_agent/ask.py alice``.

The agent listens on 127.0.0.1:$LOCAL_AGENT_PORT (default 8088, like the Foundry container;
``LOCAL_AGENT_PORT=0`` picks a free port). What the second command needs (URLs, the emulator's
CA, its test users) is written to ``$LOCAL_STATE_FILE`` (default
``examples/hosted_agent/.local/state.json``, mode 0600) once everything is up. Stop with Ctrl+C.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_STATE = HERE / ".local" / "state.json"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path} is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
    sock.bind(("127.0.0.1", port))
    return sock


class Served:
    """An ASGI app on uvicorn in a daemon thread, on a socket bound beforehand."""

    def __init__(self, name: str, app: Any, sock: socket.socket, **tls: str) -> None:
        import uvicorn

        self.name, self.sock = name, sock
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **tls)
        config.timeout_graceful_shutdown = 2
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )
        self.thread.start()
        for _ in range(3000):  # bounded: ~30 s
            if self.server.started or not self.thread.is_alive():
                break
            self.thread.join(0.01)
        if not self.server.started:
            raise SystemExit(f"{name} did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def main() -> int:
    from dataclasses import replace

    from entra_passthrough import MemoryStore
    from entra_passthrough.consent import ConsentBroker
    from entra_passthrough.testing import EntraEmulator, World

    state_file = Path(os.environ.get("LOCAL_STATE_FILE") or DEFAULT_STATE)
    port = int(os.environ.get("LOCAL_AGENT_PORT") or 8088)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    notes = _load("notes_server", HERE.parent / "mcp_server" / "notes_server.py")
    agent_main = _load("hosted_agent_main", HERE / "src" / "agent" / "main.py")
    served: list[Served] = []
    mcp_sock, broker_sock, agent_sock = _socket(), _socket(), _socket(port)
    mcp_url = f"http://127.0.0.1:{mcp_sock.getsockname()[1]}/mcp"
    broker_url = f"https://127.0.0.1:{broker_sock.getsockname()[1]}/consent"
    agent_url = f"http://127.0.0.1:{agent_sock.getsockname()[1]}"
    # The agent app doubles as the consent broker's app registration: its redirect URIs include
    # the broker's callback (an exact HTTPS URI, as Entra requires; README "Deploy", step 1).
    world = World.default()
    agent_app = world.app("agent")
    if agent_app is None:
        raise SystemExit("the emulator's default world has no agent app")
    world = world.with_app(
        replace(agent_app, redirect_uris=(*agent_app.redirect_uris, f"{broker_url}/callback"))
    )
    with EntraEmulator(world=world) as idp:
        try:
            mcp_app = notes.create_app(
                notes.Config(
                    tenant_id=idp.tenant_id,
                    client_id=idp.mcp.client_id,
                    resource_url=mcp_url,
                    authority_host=idp.url,
                    verify=idp.ca_file,
                )
            )
            served.append(Served("mcp", mcp_app, mcp_sock))
            # What azure.yaml's env: sets, and what Foundry injects (the managed identity
            # endpoint), pointed at the emulator. No client secret anywhere.
            env = {
                **os.environ,
                "MCP_URL": mcp_url,
                "MCP_SCOPE": f"{idp.mcp.app_id_uri}/.default",
                "AZURE_TENANT_ID": idp.tenant_id,
                "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
                "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
                "AZURE_CLIENT_ID": idp.managed_identity.client_id,
                **idp.mi_env(),  # IDENTITY_ENDPOINT, IDENTITY_HEADER: set by the platform
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "managed_identity",
                "ENTRA_PASSTHROUGH_CONSENT_KEYS": _keys(),
                "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": broker_url,
                "HOST_TELEMETRY": "off",
                # The emulator instead of login.microsoftonline.com, and its CA.
                "AZURE_AUTHORITY_HOST": idp.url,
                "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
            }
            for name in (
                "ENTRA_PASSTHROUGH_CLIENT_SECRET",
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET",
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH",
                "ENTRA_PASSTHROUGH_REDIS_URL",
            ):
                env.pop(name, None)
            # One process: the agent and the broker share an in-memory store (several
            # processes share Redis: ENTRA_PASSTHROUGH_REDIS_URL).
            store = MemoryStore()
            http = _session(idp.ca_file)
            broker = ConsentBroker.for_source(
                agent_main.consent_source(env, store, http_client=http),
                redirect_uris=[f"{broker_url}/callback"],
            )
            from starlette.applications import Starlette
            from starlette.routing import Mount

            served.append(
                Served(
                    "broker",
                    Starlette(routes=[Mount("/consent", broker.app)]),
                    broker_sock,
                    ssl_certfile=idp.server_cert_file,
                    ssl_keyfile=idp.server_key_file,
                )
            )
            agent = agent_main.create_app(env, store=store, http_client=http)
            served.append(Served("agent", agent, agent_sock))
            _write_state(
                state_file,
                {"agent": agent_url, "broker": broker_url, "emulator": _emulator_state(idp)},
            )
            print(f"emulator   {idp.url}", flush=True)
            print(f"MCP server {mcp_url}", flush=True)
            print(f"broker     {broker_url}", flush=True)
            print(f"agent      {agent_url}/responses", flush=True)
            print(
                "Ready. In another terminal: python examples/hosted_agent/ask.py alice", flush=True
            )
            while not stop.wait(0.5):
                pass
        finally:
            for server in reversed(served):
                server.stop()
            for sock in (mcp_sock, broker_sock, agent_sock):
                sock.close()  # idempotent: a server that never started still held its socket
            state_file.unlink(missing_ok=True)
    return 0


def _emulator_state(idp: Any) -> dict[str, Any]:
    """What ask.py needs to sign a test user in: the emulator, its CA, the apps, the users."""
    apps = {
        name: {
            "client_id": app.client_id,
            "app_id_uri": app.app_id_uri,
            "scope": app.scope,
            "secret": app.secret,
        }
        for name, app in (("frontend", idp.frontend), ("agent", idp.agent))
    }
    # oid: the stable per-user id ask.py sends as Foundry's front door would (x-agent-user-id).
    # Only the users ask.py can sign in: it signs in at the emulator's first tenant, where a
    # user of another tenant (the guest's home is the second) does not exist (AADSTS50034).
    users = {
        name: {"upn": user.upn, "password": user.password, "oid": user.oid}
        for name, user in idp.users.items()
        if user.tenant_id == idp.tenant_id
    }
    return {
        "url": idp.url,
        "ca_file": idp.ca_file,
        "tenant_id": idp.tenant_id,
        "apps": apps,
        "users": users,
    }


def _keys() -> str:
    # A fresh sealing key per run ("kid:base64url"); in Foundry it comes from a secret store.
    import base64
    import secrets

    return "local:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _session(ca_file: str) -> Any:
    import requests

    session = requests.Session()
    session.verify = ca_file
    session.trust_env = False
    return session


def _write_state(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    tmp.replace(path)  # atomic: the second command never reads half a file


if __name__ == "__main__":
    sys.exit(main())
