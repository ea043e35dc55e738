"""Foundry toolbox: ``FoundryToolboxRoute`` + ``entra_mcp_tool`` against agent-framework's own
``FoundryToolbox`` (one shared instance, and one per request), at 6, 20 and 40 concurrent users.

``python -m bench._toolbox [--quick] [--users 6,20,40] [--rounds 3] [--calls 3]`` prints a table
and writes ``bench/results/toolbox.json`` (``--quick``: ``bench/results/quick/``).

The toolbox is ``entra_passthrough.testing.ToolboxStandIn`` (a real MCP server that enforces
``Foundry-Features``, verifies the agent's managed-identity token and resolves the user from each
request's ``x-agent-foundry-call-id``) with the Entra emulator, both in a child process
(``--serve``), so their work does not share the measured process. Every alternative runs the same
workload: U concurrent users, each doing ``calls`` agent runs one after the other; each run is
an ``Agent`` with a scripted model that calls the toolbox's ``whoami`` once, with that request's
platform context (a fresh call id from the stand-in, issued before the timed window). A run
counts as an error when it raises, times out (``--timeout``, default 20 s: a deadlocked run
never ends by itself) or answers with another user than the one who asked.

Figures per alternative and U, medians over interleaved rounds (order rotated per round): errors,
wrong-user answers, timeouts, connects (``server/discover`` + ``initialize`` the toolbox saw:
reconnects), throughput (runs/s) and p95 run latency; throughput is also given as a ratio to the
floor measured in the same round: the same U users sending each run's ``tools/call`` as one raw
HTTP POST with the right headers (no agent, no MCP client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from ._util import machine, percentile, stop, summary, wait_for_file_json

RESULTS = Path(__file__).resolve().parent / "results"
OURS = "entra-passthrough"
AF_SHARED = "FoundryToolbox shared"
AF_PER_REQUEST = "FoundryToolbox per request"
FLOOR = "raw POST (floor)"
ALTERNATIVES = (OURS, AF_SHARED, AF_PER_REQUEST)
SCOPE = "https://ai.azure.com/.default"


# --- the child: emulator + toolbox stand-in -------------------------------------------------------


def serve(users: int, state_file: Path) -> None:
    import signal
    import threading

    from entra_passthrough.testing import EntraEmulator, ToolboxStandIn

    from ._emu_world import world

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with EntraEmulator(world=world(users)) as idp, ToolboxStandIn(idp) as toolbox:
        names = sorted(n for n in idp.users if n.startswith("bench-user-"))
        state = {
            "url": toolbox.url,
            "control": toolbox.url.split("/toolboxes/")[0] + "/_toolbox",
            "mi_env": idp.mi_env(),
            "mi_client_id": idp.managed_identity.client_id,
            "users": {n: idp.users[n].oid for n in names},
        }
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
        while not done.wait(0.5):
            pass


class Toolbox:
    """The child process and its control plane."""

    def __init__(self, users: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-toolbox-")
        state_file = Path(self._dir.name) / "state.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._toolbox", "--serve", "--max-users", str(users)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_TOOLBOX_STATE": str(state_file)},
        )
        try:
            self.state = wait_for_file_json(state_file, self.proc, timeout=60)
        except BaseException:
            stop(self.proc)
            raise
        self.url: str = self.state["url"]
        self.users: list[str] = list(self.state["users"])
        self._http = httpx2.Client(trust_env=False, timeout=30)

    def call_ids(self, users: list[str]) -> list[str]:
        answer = self._http.post(f"{self.state['control']}/calls", json={"users": users})
        answer.raise_for_status()
        return list(answer.json()["call_ids"])

    def stats(self) -> dict[str, int]:
        return dict(self._http.get(f"{self.state['control']}/stats").json())

    def reset(self) -> None:
        self._http.post(f"{self.state['control']}/reset").raise_for_status()

    def close(self) -> None:
        self._http.close()
        stop(self.proc)
        self._dir.cleanup()


# --- the alternatives ---------------------------------------------------------------------------


def _agent(tool: Any, *, middleware: list[Any] | None = None) -> Any:
    from agent_framework import Agent

    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    client = ScriptedChatClient(tool="whoami", input_argument="who")
    return Agent(client=client, tools=[tool], middleware=middleware or [])


class Ours:
    """One shared ``entra_mcp_tool`` whose chain is ``[FoundryToolboxRoute(ManagedIdentity)]``
    (``Policy.APP_ONLY``); each run binds its request's ``Caller`` (the call id)."""

    name = OURS

    def __init__(self, toolbox: Toolbox) -> None:
        from entra_passthrough import FoundryToolboxRoute, ManagedIdentity, Policy, TokenChain
        from entra_passthrough.agent_framework import EntraToolMiddleware, entra_mcp_tool

        env = toolbox.state["mi_env"]
        mi = ManagedIdentity(
            client_id=toolbox.state["mi_client_id"],
            endpoint=env["IDENTITY_ENDPOINT"],
            header=env["IDENTITY_HEADER"],
        )
        self.chain = TokenChain([FoundryToolboxRoute(mi)], policy=Policy.APP_ONLY)
        self.tool = entra_mcp_tool("toolbox", toolbox.url, chain=self.chain, scopes=[SCOPE])
        self.agent = _agent(self.tool, middleware=[EntraToolMiddleware()])

    async def run(self, user: str, oid: str, call_id: str) -> str:
        from entra_passthrough import Caller, bind_caller

        with bind_caller(Caller.from_token(None, user_id=oid, call_id=call_id)):
            return str((await self.agent.run(user)).text)

    async def close(self) -> None:
        await self.tool.close()
        self.chain.close()


def _platform_context(oid: str, call_id: str) -> Any:
    from azure.ai.agentserver.core import (
        FoundryAgentRequestContext,
        set_request_context,
    )

    # What ResponsesHostServer binds for each inbound request.
    return set_request_context(FoundryAgentRequestContext(call_id=call_id, user_id=oid))


class AfShared:
    """One ``FoundryToolbox`` for every request (its docstring: "A long-lived Toolbox is also
    supported"), agents built per request around it, as a ``ResponsesHostServer`` factory does."""

    name = AF_SHARED

    def __init__(self, toolbox: Toolbox) -> None:
        from agent_framework_foundry_hosting import FoundryToolbox
        from azure.identity.aio import ManagedIdentityCredential

        os.environ.update(toolbox.state["mi_env"])
        self.credential = ManagedIdentityCredential(client_id=toolbox.state["mi_client_id"])
        self.tool = FoundryToolbox(self.credential, url=toolbox.url, name="toolbox")

    async def run(self, user: str, oid: str, call_id: str) -> str:
        from azure.ai.agentserver.core import reset_request_context

        token = _platform_context(oid, call_id)
        try:
            return str((await _agent(self.tool).run(user)).text)
        finally:
            reset_request_context(token)

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # a deadlocked toolbox may not close cleanly
            await asyncio.wait_for(self.tool.close(), 5)
        await self.credential.close()


class AfPerRequest:
    """A new ``FoundryToolbox`` per request, entered and closed by the request (the pattern
    agent-framework's hosted-agent samples use with an agent factory); one shared credential."""

    name = AF_PER_REQUEST

    def __init__(self, toolbox: Toolbox) -> None:
        from azure.identity.aio import ManagedIdentityCredential

        os.environ.update(toolbox.state["mi_env"])
        self.url = toolbox.url
        self.credential = ManagedIdentityCredential(client_id=toolbox.state["mi_client_id"])

    async def run(self, user: str, oid: str, call_id: str) -> str:
        from agent_framework_foundry_hosting import FoundryToolbox
        from azure.ai.agentserver.core import reset_request_context

        token = _platform_context(oid, call_id)
        try:
            async with FoundryToolbox(self.credential, url=self.url, name="toolbox") as tool:
                return str((await _agent(tool).run(user)).text)
        finally:
            reset_request_context(token)

    async def close(self) -> None:
        await self.credential.close()


class Floor:
    """Each run's ``tools/call`` as one raw POST with the right headers (agent token fetched
    once, before the timed window): what a toolbox round trip costs right now."""

    name = FLOOR

    def __init__(self, toolbox: Toolbox) -> None:
        from entra_passthrough import ManagedIdentity, TokenRequest
        from entra_passthrough._sources.foundry import FEATURES_HEADER, TOOLBOX_FEATURE

        env = toolbox.state["mi_env"]
        mi = ManagedIdentity(
            client_id=toolbox.state["mi_client_id"],
            endpoint=env["IDENTITY_ENDPOINT"],
            header=env["IDENTITY_HEADER"],
        )
        result = mi.get_token(TokenRequest((SCOPE,)))
        mi.close()
        assert result is not None
        self.url = toolbox.url
        self.headers = {
            "Authorization": f"Bearer {result.token}",
            FEATURES_HEADER: TOOLBOX_FEATURE,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2025-06-18",
        }
        self.http = httpx2.AsyncClient(trust_env=False, timeout=30)

    async def run(self, user: str, oid: str, call_id: str) -> str:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "whoami", "arguments": {"who": user}},
        }
        headers = {**self.headers, "x-agent-foundry-call-id": call_id}
        answer = await self.http.post(self.url, json=body, headers=headers)
        return answer.text

    async def close(self) -> None:
        await self.http.aclose()


FACTORIES: dict[str, Callable[[Toolbox], Any]] = {
    OURS: Ours,
    AF_SHARED: AfShared,
    AF_PER_REQUEST: AfPerRequest,
    FLOOR: Floor,
}


# --- one measurement -----------------------------------------------------------------------------


def _answered_user(text: str) -> str | None:
    # The stand-in's whoami answer inside the scripted model's reply (or the raw JSON-RPC body).
    for marker in ('"user": "', '\\"user\\": \\"', '"user":"', '\\"user\\":\\"'):
        start = text.find(marker)
        if start >= 0:
            rest = text[start + len(marker) :]
            end = rest.find('"')
            return rest[:end].rstrip("\\") if end >= 0 else None
    return None


async def measure(
    toolbox: Toolbox, name: str, *, users: int, calls: int, timeout: float
) -> dict[str, Any]:
    """U users x ``calls`` runs each, concurrently; a fresh alternative (empty caches)."""
    names = toolbox.users[:users]
    oids = toolbox.state["users"]
    plan = [[names[u]] * calls for u in range(users)]
    ids = toolbox.call_ids([n for row in plan for n in row])
    schedule = [[(plan[u][c], ids[u * calls + c]) for c in range(calls)] for u in range(users)]
    alternative = FACTORIES[name](toolbox)
    toolbox.reset()
    latencies: list[float] = []
    counts = {"errors": 0, "wrong_user": 0, "timeouts": 0, "ok": 0}
    first_error: list[str] = []

    async def one_user(row: list[tuple[str, str]]) -> None:
        for user, call_id in row:
            t0 = time.perf_counter()
            try:
                text = await asyncio.wait_for(alternative.run(user, oids[user], call_id), timeout)
            except TimeoutError:
                counts["timeouts"] += 1
                counts["errors"] += 1
                continue
            except Exception as exc:
                counts["errors"] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - t0)
            if _answered_user(text) != user:
                counts["wrong_user"] += 1
                counts["errors"] += 1
                if not first_error:
                    first_error.append(f"answer: {text[:200]}")
            else:
                counts["ok"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one_user(row) for row in schedule))
    elapsed = time.perf_counter() - t0
    await alternative.close()
    seen = toolbox.stats()
    return {
        **counts,
        "runs": users * calls,
        "elapsed_s": elapsed,
        "throughput": counts["ok"] / elapsed if elapsed > 0 else 0.0,
        "p95_ms": percentile(latencies, 95) * 1000 if latencies else float("nan"),
        "connects": seen.get("server/discover", 0) + seen.get("initialize", 0),
        "missing_features": seen.get("missing_features", 0),
        "first_error": first_error[0] if first_error else None,
    }


async def comparison(
    *, users_axis: tuple[int, ...], calls: int, rounds: int, timeout: float
) -> dict[str, Any]:
    """Interleaved rounds per U; medians and a ratio to the floor of the same round."""
    warnings.filterwarnings("ignore", message="ping is removed")  # mcp 2.3 vs legacy pings
    logging.getLogger().setLevel(logging.WARNING)  # the host SDKs log every request at INFO
    toolbox = Toolbox(max(users_axis))
    out: dict[str, Any] = {
        "users_axis": list(users_axis),
        "calls_per_user": calls,
        "rounds": rounds,
        "timeout_s": timeout,
        "by_users": {},
    }
    names = (FLOOR, *ALTERNATIVES)
    try:
        for users in users_axis:
            raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for r in range(rounds):
                order = list(names[r % len(names) :] + names[: r % len(names)])
                for name in order:
                    print(f"    U={users} round {r + 1}: {name}", file=sys.stderr, flush=True)
                    raw[name].append(
                        await measure(toolbox, name, users=users, calls=calls, timeout=timeout)
                    )
            level: dict[str, Any] = {}
            floors = [m["throughput"] for m in raw[FLOOR]]
            for name in names:
                ms = raw[name]
                ratios = [m["throughput"] / f for m, f in zip(ms, floors, strict=True) if f > 0]
                level[name] = {
                    "errors": summary([m["errors"] for m in ms]),
                    "wrong_user": summary([m["wrong_user"] for m in ms]),
                    "timeouts": summary([m["timeouts"] for m in ms]),
                    "connects": summary([m["connects"] for m in ms]),
                    "throughput": summary([m["throughput"] for m in ms]),
                    "p95_ms": summary([m["p95_ms"] for m in ms]),
                    "ratio_to_floor": summary(ratios),
                    "missing_features": sum(m["missing_features"] for m in ms),
                    "runs_per_round": ms[0]["runs"],
                    "first_error": next((m["first_error"] for m in ms if m["first_error"]), None),
                }
            ours = level[OURS]["throughput"]["median"]
            for name in (AF_SHARED, AF_PER_REQUEST):
                theirs = level[name]["throughput"]["median"]
                level[name]["ours_x"] = ours / theirs if theirs > 0 else None
            out["by_users"][str(users)] = level
    finally:
        toolbox.close()
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Toolbox comparison: {result['calls_per_user']} runs per user, median of "
        f"{result['rounds']} interleaved rounds (IQR in the JSON); run timeout "
        f"{result['timeout_s']:g} s.",
        "",
        "| users | alternative | errors / runs | wrong user | timeouts | connects | runs/s | "
        "x floor | p95 ms | ours x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for users, level in result["by_users"].items():
        for name, m in level.items():
            ours_x = m.get("ours_x")
            lines.append(
                f"| {users} | {name} | {m['errors']['median']:g} / {m['runs_per_round']} | "
                f"{m['wrong_user']['median']:g} | {m['timeouts']['median']:g} | "
                f"{m['connects']['median']:g} | {m['throughput']['median']:.1f} | "
                f"{m['ratio_to_floor']['median']:.2f} | {m['p95_ms']['median']:.0f} | "
                f"{'' if ours_x is None else f'{ours_x:.1f}x'} |"
            )
    return "\n".join(lines)


def check_complete(result: dict[str, Any]) -> list[str]:
    problems = []
    for users in result["users_axis"]:
        level = result["by_users"].get(str(users), {})
        for name in (FLOOR, *ALTERNATIVES):
            m = level.get(name)
            if m is None or m["throughput"]["n"] != result["rounds"]:
                problems.append(f"toolbox U={users}: no figures for {name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._toolbox", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 run per user")
    parser.add_argument("--users", default="6,20,40", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="runs per user per round")
    # Generous: a deadlocked run never ends, a slow one must not be counted as one (a cold
    # FoundryToolbox per request at 40 users took p95 6.6 s on a loaded 2-core VM).
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-users", type=int, default=40, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.max_users, Path(os.environ["BENCH_TOOLBOX_STATE"]))
        return 0
    rounds, calls = (1, 1) if args.quick else (args.rounds, args.calls)
    timeout = args.timeout
    users_axis = tuple(int(u) for u in args.users.split(",") if u.strip())
    result = asyncio.run(
        comparison(users_axis=users_axis, calls=calls, rounds=rounds, timeout=timeout)
    )
    result["machine"] = machine()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toolbox.json").write_text(json.dumps(result, indent=2, default=str))
    text = markdown(result)
    (out / "toolbox.md").write_text(text + "\n")
    print(text)
    problems = check_complete(result)
    for problem in problems:
        print(f"INCOMPLETE: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
