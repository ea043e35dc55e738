"""End to end: a tool call through ``ResponsesHostServer`` + an Entra-protected MCP server.

Four processes besides this one: the emulator, the MCP server (``entra_passthrough.server``
verifying every token against the emulator's JWKS), and two hosted agents (Agent Framework,
a scripted chat client that calls the MCP ``whoami`` tool once per turn):

* ``ours``: ``entra_mcp_tool`` + ``entra_middleware`` + ``install`` (the user's token from
  ``Authorization``, OBO to the MCP audience, cached);
* ``static``: the stock ``MCPStreamableHTTPTool`` with an httpx2 client whose headers carry one
  pre-acquired MCP token (the floor: no capture, no resolution, no per-call auth work).

The figure: per-round ratio of median ``POST /responses`` latency (ours / static), warm caches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from ._emu import Emulator
from ._util import stop, summary, wait_for_file_json

LABEL = "bench-records"


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # a hand-bound socket needs TCP_NODELAY (docs/platform-facts.md: else ~40 ms per response)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def mcp_app(emu: Emulator, base_url: str) -> Any:
    from mcp.server.mcpserver import MCPServer

    from entra_passthrough import JwtVerifier
    from entra_passthrough.server import (
        EntraChallengeMiddleware,
        EntraTokenVerifier,
        auth_settings,
        current_user,
    )

    verifier = JwtVerifier(
        audiences=[emu.mcp.client_id, emu.mcp.app_id_uri],
        tenants=[emu.tenant_id],
        authority_host=emu.url,
        http_client=httpx2.AsyncClient(
            verify=ssl.create_default_context(cafile=emu.ca_file), trust_env=False
        ),
    )
    auth = auth_settings(
        resource_server_url=f"{base_url}/mcp",
        tenant_id=emu.tenant_id,
        scopes=["access_as_user"],
        app_id_uri=emu.mcp.app_id_uri,
        authority_host=emu.url,
    )
    server = MCPServer(LABEL, token_verifier=EntraTokenVerifier(verifier), auth=auth)

    @server.tool()
    async def whoami() -> str:
        """Who is calling, as this server verified it."""
        user = current_user()
        return json.dumps({"upn": user.upn, "oid": user.oid})

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    return EntraChallengeMiddleware(app, settings=auth)


def agent_app(emu: Emulator, mode: str, mcp_url: str, static_token: str | None) -> Any:
    import requests
    from agent_framework import Agent, MCPStreamableHTTPTool
    from agent_framework_foundry_hosting import ResponsesHostServer

    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    client = ScriptedChatClient(tool="whoami")
    if mode == "static":
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {static_token}"}, timeout=60)
        tool = MCPStreamableHTTPTool(name=LABEL, url=mcp_url, http_client=http)
        return ResponsesHostServer(Agent(client=client, tools=[tool]), configure_observability=None)
    from entra_passthrough import OnBehalfOf, TokenChain
    from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware, install

    session = requests.Session()
    session.verify = emu.ca_file
    session.trust_env = False
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=emu.agent.client_id,
                tenant_id=emu.tenant_id,
                client_secret=emu.agent.secret,
                authority_host=emu.url,
                http_client=session,
            )
        ]
    )
    tool = entra_mcp_tool(LABEL, mcp_url, chain=chain, scopes=[emu.mcp_scope], server_label=LABEL)
    agent = Agent(client=client, tools=[tool], middleware=entra_middleware(server_label=LABEL))
    return install(ResponsesHostServer(agent, configure_observability=None))


async def _serve(kind: str, args: argparse.Namespace) -> None:
    import uvicorn

    emu = Emulator.attach(json.loads(Path(args.state).read_text()))
    sock = _bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    if kind == "mcp":
        app = mcp_app(emu, base)
    else:
        app = agent_app(emu, args.mode, args.mcp_url, args.static_token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(3000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        raise SystemExit(f"{kind} server did not start")
    tmp = Path(args.port_file).with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": base}))
    tmp.replace(args.port_file)
    await task


def _start(args: list[str], workdir: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    port_file = workdir / f"{name}.json"
    env = {**os.environ, "AGENTSERVER_STATE_ROOT": str(workdir / f"state-{name}")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._e2e", *args, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        info = wait_for_file_json(port_file, proc, timeout=120)
    except BaseException:
        stop(proc)
        raise
    return proc, str(info["url"])


async def _obo_token(emu: Emulator, assertion: str) -> str:
    data = emu.obo_form(assertion)
    async with httpx2.AsyncClient(verify=emu.ca_file, trust_env=False) as client:
        r = await client.post(emu.token_endpoint, data=data)
        r.raise_for_status()
        return str(r.json()["access_token"])


async def _turn(client: httpx2.AsyncClient, url: str, assertion: str) -> float:
    t0 = time.perf_counter()
    r = await client.post(
        f"{url}/responses",
        json={"input": "who am i?", "store": False},
        headers={"Authorization": f"Bearer {assertion}"},
    )
    elapsed = time.perf_counter() - t0
    body = r.json() if r.content else {}
    text = json.dumps(body)
    if r.status_code != 200 or "upn" not in text:
        raise RuntimeError(f"tool call failed ({r.status_code}): {text[:400]}")
    return elapsed


async def end_to_end(emu: Emulator, assertion: str, *, rounds: int, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        state = workdir / "emu.json"
        state.write_text(json.dumps(emu.state))
        procs: list[subprocess.Popen[str]] = []
        try:
            proc, mcp_base = _start(["mcp", "--state", str(state)], workdir, "mcp")
            procs.append(proc)
            mcp_url = f"{mcp_base}/mcp"
            static_token = await _obo_token(emu, assertion)
            agents = {}
            for mode in ("static", "ours"):
                args = ["agent", "--state", str(state), "--mode", mode, "--mcp-url", mcp_url]
                args += ["--static-token", static_token]
                proc, url = _start(args, workdir, f"agent-{mode}")
                procs.append(proc)
                agents[mode] = url
            times: dict[str, list[float]] = {"static": [], "ours": []}
            async with httpx2.AsyncClient(timeout=120, trust_env=False) as client:
                for url in agents.values():  # warm: MCP connection, OBO, JWKS, code paths
                    for _ in range(3):
                        await _turn(client, url, assertion)
                for r in range(rounds):
                    order = ["static", "ours"] if r % 2 == 0 else ["ours", "static"]
                    for mode in order:
                        batch = [await _turn(client, agents[mode], assertion) for _ in range(calls)]
                        times[mode].append(float(summary(batch)["median"]))
        finally:
            for proc in procs:
                stop(proc)
    return {
        "rounds": rounds,
        "calls_per_round": calls,
        "latency_static_s": summary(times["static"]),
        "latency_ours_s": summary(times["ours"]),
        "ratio": summary([o / s for o, s in zip(times["ours"], times["static"], strict=True)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["mcp", "agent"])
    parser.add_argument("--state", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--mode", choices=["ours", "static"], default="ours")
    parser.add_argument("--mcp-url")
    parser.add_argument("--static-token")
    args = parser.parse_args()
    asyncio.run(_serve(args.kind, args))


if __name__ == "__main__":
    main()
