"""The demo's scenes and its table. Each scene states what it shows and checks it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.routing import Mount

from .._chain import TokenChain
from .._jwt import decode_unverified
from .._sources import OnBehalfOf
from .._sources.delegated import DelegatedConsent
from .._store import Keyring, MemoryStore
from ..consent import ConsentBroker
from ..testing import EntraEmulator, World
from . import _mcp_server
from ._agents import SERVER_LABEL, hosted_agent
from ._browser import click
from ._servers import Served

FOUNDRY = "https://ai.azure.com"
#: A redirect URI registered on the default world's agent app (nothing listens there).
APP_REDIRECT = "http://localhost/callback"


@dataclass
class Row:
    scene: str
    caller: str
    agent: str
    outcome: str
    mcp_saw: str
    source: str
    posts: str
    ok: bool


@dataclass
class Demo:
    idp: EntraEmulator
    obo_agent: str
    hosted_agent: str
    mcp: _mcp_server.Sightings
    broker: str
    rows: list[Row] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def posts(self) -> dict[str, int]:
        return dict(self.idp.stats()["grants"])

    def delta(self, before: dict[str, int]) -> dict[str, int]:
        after = self.posts()
        return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def _describe(delta: dict[str, int]) -> str:
    names = {"on_behalf_of": "OBO", "refresh_token": "refresh", "authorization_code": "code"}
    parts = [f"{n} {names.get(g, g)}" for g, n in sorted(delta.items()) if n]
    return ", ".join(parts) or "0"


async def _respond(
    agent_url: str, *, token: str | None, text: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(base_url=agent_url, timeout=60) as client:
        response = await client.post(
            "/responses", json={"input": text, "store": True}, headers=sent
        )
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def _items(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i for i in body.get("output", []) if isinstance(i, dict) and i.get("type") == kind]


def _answer(body: dict[str, Any]) -> str:
    texts = [
        part.get("text", "")
        for item in _items(body, "message")
        for part in item.get("content", [])
        if isinstance(part, dict)
    ]
    return " ".join(texts)


def _seen_upn(body: dict[str, Any]) -> str | None:
    """The upn the MCP server reported, from the tool output of this response."""
    for item in _items(body, "function_call_output"):
        try:
            outer = json.loads(str(item.get("output")))
            inner = json.loads(outer["result"]) if isinstance(outer, dict) else None
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(inner, dict) and isinstance(inner.get("upn"), str):
            return str(inner["upn"])
    return None


def _consent_link(body: dict[str, Any]) -> str | None:
    for item in _items(body, "oauth_consent_request"):
        link = item.get("consent_link")
        if isinstance(link, str):
            return link
    return None


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return _answer(body) or json.dumps(body)[:300]


async def _start(stack: list[Served]) -> Demo:
    broker_server = Served(https=True)
    broker_base = f"{broker_server.base}/consent"
    world = World.default()
    agent_app = world.app("agent")
    assert agent_app is not None  # the default world has it
    # The agent app doubles as the consent broker's app registration: its redirect URI is the
    # broker's callback (an allow-listed, exact HTTPS URI as Entra requires).
    world = world.with_app(
        replace(agent_app, redirect_uris=(*agent_app.redirect_uris, f"{broker_base}/callback"))
    )
    idp = EntraEmulator(world=world).start()

    sightings = _mcp_server.Sightings()
    mcp_server = Served()
    mcp_server.start(_mcp_server.build(idp, base_url=mcp_server.base, sightings=sightings))
    stack.append(mcp_server)
    mcp_url = f"{mcp_server.base}/mcp"
    scopes = [f"{idp.mcp.app_id_uri}/.default"]

    def obo() -> OnBehalfOf:
        return OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            client_secret=idp.agent.secret,
            authority_host=idp.url,
            http_client=idp.msal_http_client(),
            # Where Entra sends the browser after consent; Entra requires a registered one.
            consent_redirect_uri=APP_REDIRECT,
        )

    store, keyring = MemoryStore(), Keyring.generate()
    delegated = DelegatedConsent(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        store=store,
        keyring=keyring,
        broker_url=broker_base,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
        server_label=SERVER_LABEL,
    )
    broker = ConsentBroker.for_source(delegated, redirect_uris=[f"{broker_base}/callback"])
    # The broker's certificate comes from the emulator's CA (hosts reject non-HTTPS links).
    broker_server.start(
        Starlette(routes=[Mount("/consent", broker.app)]),
        certfile=idp.server_cert_file,
        keyfile=idp.server_key_file,
    )
    stack.append(broker_server)

    obo_agent = Served()
    obo_agent.start(
        hosted_agent(chain=TokenChain([obo()]), mcp_url=mcp_url, scopes=scopes, tool="whoami")
    )
    stack.append(obo_agent)
    foundry_agent = Served()
    foundry_agent.start(
        hosted_agent(
            chain=TokenChain([obo(), delegated]), mcp_url=mcp_url, scopes=scopes, tool="my_notes"
        )
    )
    stack.append(foundry_agent)
    return Demo(
        idp=idp,
        obo_agent=obo_agent.base,
        hosted_agent=foundry_agent.base,
        mcp=sightings,
        broker=broker_base,
    )


async def _users_in_parallel(demo: Demo, calls: int) -> None:
    """alice and bob, ``calls`` requests each, all at once, through one shared MCP tool."""
    idp = demo.idp
    before, seen_before = demo.posts(), len(demo.mcp.calls)
    users = ("alice", "bob")
    tokens = {u: idp.user_token(u, audience=idp.agent.client_id) for u in users}
    work = [
        (u, _respond(demo.obo_agent, token=tokens[u], text="who am I?"))
        for _ in range(calls)
        for u in users
    ]
    bodies = await asyncio.gather(*(coro for _, coro in work))
    obo_posts = demo.delta(before).get("on_behalf_of", 0)
    new = demo.mcp.calls[seen_before:]
    upns = {idp.users[u].upn for u in users}
    # One OBO round trip per user, and the server saw nobody else.
    shared_ok = obo_posts == len(users) and all(c["upn"] in upns for c in new)
    for user in users:
        upn = idp.users[user].upn
        answered = [_seen_upn(b) for (u, _), b in zip(work, bodies, strict=True) if u == user]
        server_saw = any(c["upn"] == upn for c in new)
        demo.rows.append(
            Row(
                scene="1 concurrent users",
                caller=f"{user} x{calls} (token for the agent app)",
                agent="obo-agent",
                outcome=f"{sum(a == upn for a in answered)}/{calls} answered as {user}",
                mcp_saw=upn if server_saw else "nobody",
                source="obo",
                posts=f"{obo_posts} OBO for {len(users)} users",
                ok=shared_ok and server_saw and all(a == upn for a in answered),
            )
        )


async def _missing_consent(demo: Demo) -> None:
    """carol never consented: the run ends with an oauth_consent_request; she consents; the same
    request then succeeds (MSAL's cached 400 is defeated)."""
    idp = demo.idp
    carol = idp.users["carol"]
    token = idp.user_token("carol", audience=idp.agent.client_id)
    before = demo.posts()
    first = await _respond(demo.obo_agent, token=token, text="who am I?")
    link = _consent_link(first)
    ok_link = (
        first.get("status") == "incomplete"
        and link is not None
        and "prompt=consent" in link
        and link.startswith("https://")
    )
    demo.rows.append(
        Row(
            scene="2 consent missing",
            caller="carol (never consented)",
            agent="obo-agent",
            outcome="oauth_consent_request (AADSTS65001)" if ok_link else _error_text(first),
            mcp_saw="nobody",
            source="obo",
            posts=_describe(demo.delta(before)),
            ok=ok_link,
        )
    )
    if link is None:
        return
    await click(
        link, idp=idp.url, verify=idp.ca_file, stop_at=(APP_REDIRECT,)
    )  # carol clicks Accept
    before = demo.posts()
    second = await _respond(demo.obo_agent, token=token, text="who am I?")
    saw = _seen_upn(second)
    demo.rows.append(
        Row(
            scene="2 consent missing",
            caller="carol, after consenting",
            agent="obo-agent",
            outcome=f"answered as {saw}" if saw else _error_text(second),
            mcp_saw=saw or "nobody",
            source="obo",
            posts=_describe(demo.delta(before)),
            ok=saw == carol.upn,
        )
    )


async def _foundry_token_refused(demo: Demo) -> None:
    """A Foundry caller's token (aud https://ai.azure.com) cannot be exchanged: the run fails
    with the explanation (the response's error), never the agent's own identity, and nothing
    is sent to Entra or the server."""
    idp = demo.idp
    token = idp.user_token("alice", audience=FOUNDRY)
    before, seen_before = demo.posts(), len(demo.mcp.calls)
    body = await _respond(demo.obo_agent, token=token, text="who am I?")
    text = _error_text(body)
    explained = "https://ai.azure.com" in text and "AADSTS50013" in text
    reached = demo.mcp.calls[seen_before:]
    delta = demo.delta(before)
    demo.rows.append(
        Row(
            scene="3 wrong audience",
            caller="alice via a Foundry token",
            agent="obo-agent",
            outcome="refused, explained (AADSTS500131 avoided)" if explained else text[:80],
            mcp_saw="nobody" if not reached else ", ".join(c["upn"] for c in reached),
            source="-",
            posts=_describe(delta),
            ok=explained and not reached and not delta,
        )
    )
    demo.notes.append(("Foundry token, explained", text.split("Exception: ", 1)[-1]))


async def _foundry_consent(demo: Demo) -> None:
    """The hosted-agent case: the container only gets a token for https://ai.azure.com and the
    platform's user id. The first call shows a sign-in link (the consent broker); after sign-in
    the next call reaches the MCP server as that user, for its own audience."""
    idp = demo.idp
    alice = idp.users["alice"]
    headers = {"x-agent-user-id": "foundry-user-7f3a"}
    token = idp.user_token("alice", audience=FOUNDRY)
    before, seen_before = demo.posts(), len(demo.mcp.calls)
    first = await _respond(demo.hosted_agent, token=token, text="my notes", headers=headers)
    link = _consent_link(first)
    ok_link = link is not None and link.startswith(f"{demo.broker}/start")
    demo.rows.append(
        Row(
            scene="4 hosted agent consent",
            caller="alice via Foundry (+x-agent-user-id)",
            agent="hosted-agent",
            outcome="oauth_consent_request (broker link)" if ok_link else _error_text(first)[:80],
            mcp_saw="nobody" if len(demo.mcp.calls) == seen_before else "?",
            source="delegated",
            posts=_describe(demo.delta(before)),
            ok=ok_link and len(demo.mcp.calls) == seen_before,
        )
    )
    if link is None:
        return
    page = await click(
        link, idp=idp.url, verify=idp.ca_file
    )  # sign-in at the emulator, back to the broker
    returned = page.status_code == 200 and "return to" in page.text.lower()
    before = demo.posts()
    second = await _respond(demo.hosted_agent, token=token, text="my notes", headers=headers)
    saw = _seen_upn(second)
    demo.rows.append(
        Row(
            scene="4 hosted agent consent",
            caller="alice via Foundry, after sign-in",
            agent="hosted-agent",
            outcome=f"answered as {saw} ({'notes' if 'notes' in _answer(second) else '?'})"
            if saw
            else _error_text(second)[:80],
            mcp_saw=saw or "nobody",
            source="delegated",
            posts=_describe(demo.delta(before)),
            ok=returned and saw == alice.upn,
        )
    )


_CLAIMS = ("aud", "scp", "azp", "oid", "upn", "tid", "ver")


def _claims(demo: Demo) -> str:
    """What alice's token said when it reached the agent, and what the MCP server received."""
    idp = demo.idp
    presented = decode_unverified(idp.user_token("alice", audience=idp.agent.client_id))
    alice = idp.users["alice"].upn
    received: dict[str, Any] = next((c["claims"] for c in demo.mcp.calls if c["upn"] == alice), {})
    width = max(len(c) for c in _CLAIMS)
    lines = ["alice's token, as the agent received it -> as the MCP server received it (OBO):"]
    for claim in _CLAIMS:
        before = presented.get(claim, presented.get("preferred_username") if claim == "upn" else "")
        after = received.get(claim, received.get("preferred_username") if claim == "upn" else "")
        lines.append(f"  {claim.ljust(width)}  {before!s:<44} -> {after}")
    return "\n".join(lines)


_COLUMNS = (
    ("", "ok"),
    ("scene", "scene"),
    ("caller", "caller"),
    ("agent", "agent"),
    ("outcome", "outcome"),
    ("MCP server saw", "mcp_saw"),
    ("source", "source"),
    ("token POSTs", "posts"),
)


def _table(rows: Sequence[Row]) -> str:
    cells = [
        ["PASS" if r.ok else "FAIL", *(str(getattr(r, attr)) for _, attr in _COLUMNS[1:])]
        for r in rows
    ]
    heads = [h for h, _ in _COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(out)


async def run(*, calls: int) -> bool:
    started = time.perf_counter()
    stack: list[Served] = []
    demo: Demo | None = None
    try:
        print("entra-passthrough demo: everything on 127.0.0.1, no tenant, no network")
        # The hosts log their start-up, each tool failure and each consent link themselves;
        # the table says it all.
        for noisy in ("agent_framework", "agent_framework_foundry_hosting", "azure.ai.agentserver"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        demo = await _start(stack)
        logging.getLogger().setLevel(logging.WARNING)  # some host code lowers it on start-up
        idp = demo.idp
        print(f"  Entra emulator  {idp.authority}  (CA {idp.ca_file})")
        print(f"  MCP server      entra_passthrough.server, audience {idp.mcp.app_id_uri}")
        print(f"  obo-agent       {demo.obo_agent}  ResponsesHostServer, chain [OnBehalfOf]")
        print(f"  hosted-agent    {demo.hosted_agent}  chain [OnBehalfOf, DelegatedConsent]")
        print(f"  consent broker  {demo.broker}  (HTTPS, certificate from the emulator's CA)")
        print()
        scenes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("concurrent users", lambda: _users_in_parallel(demo, calls)),
            ("consent missing", lambda: _missing_consent(demo)),
            ("wrong audience", lambda: _foundry_token_refused(demo)),
            ("hosted agent consent", lambda: _foundry_consent(demo)),
        ]
        for name, scene in scenes:
            try:
                await scene()
            except Exception as exc:  # a scene that crashes is a failed check, not a traceback
                demo.rows.append(
                    Row(
                        name,
                        "-",
                        "-",
                        f"crashed: {type(exc).__name__}",
                        "-",
                        "-",
                        "-",
                        False,
                    )
                )
        print(_table(demo.rows))
        print()
        print(_claims(demo))
        print()
        for title, text in demo.notes:
            print(f"{title}:\n  {text}\n")
        ok = bool(demo.rows) and all(r.ok for r in demo.rows)
        elapsed = time.perf_counter() - started
        print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {elapsed:.1f} s")
        return ok
    finally:
        for server in reversed(stack):
            server.stop()
        if demo is not None:
            demo.idp.close()
