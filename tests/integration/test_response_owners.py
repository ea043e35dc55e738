"""A stored response is the user's who created it (``ResponseOwners``, added by ``install``).

``ResponsesHostServer`` serves a stored response by id to whoever sends the id, and continues
it (``previous_response_id``) for them: another signed-in user with the id read the first
user's answer, tool output included. Real components: the emulator's tokens, a real
``ResponsesHostServer`` on uvicorn behind ``install(host, verifier=...)`` (verified users) or
Foundry's ``x-agent-user-id`` (platform users)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from agent_framework import Agent, tool
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.mcp_world import agent_token, serve_asgi
from entra_passthrough import CallerMiddleware, JwtVerifier, MemoryStore
from entra_passthrough.agent_framework import (
    BackgroundRunCallers,
    ResponseOwners,
    _hosting,
    install,
)
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

RUNS: list[str] = []


@tool
async def secret_of(who: str = "") -> str:
    """What only the asking user may read (a run asked for "slow" takes 2.5 s)."""
    RUNS.append(who)
    if who == "slow":
        await asyncio.sleep(2.5)
    return f"the secret of {who}"


def _host(
    idp: EntraEmulator, store: Any, *, verified: bool, platform_storage: bool | None = None
) -> Any:
    agent = Agent(
        client=ScriptedChatClient(tool="secret_of", input_argument="who"), tools=[secret_of]
    )
    host = ResponsesHostServer(agent, configure_observability=None)
    verifier = None
    if verified:
        verifier = JwtVerifier(
            audiences=[idp.agent.client_id],
            tenants=[idp.tenant_id],
            authority_host=idp.url,
            verify=idp.ca_file,
        )
    if platform_storage is None:
        return install(host, verifier=verifier, response_owners=store)
    # What install() adds, with the platform's storage said explicitly (inside Foundry the
    # host itself switches to Foundry's storage, which needs the platform).
    host.add_middleware(BackgroundRunCallers)
    host.add_middleware(ResponseOwners, store=store, platform_storage=platform_storage)
    host.add_middleware(CallerMiddleware, verifier=verifier)
    return host


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    server = serve_asgi(app, name="host")
    try:
        async with httpx2.AsyncClient(base_url=server.base, timeout=60, trust_env=False) as client:
            yield client
    finally:
        server.stop()


def _as_verified(idp: EntraEmulator, user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent_token(idp, user)}"}


def _as_platform(idp: EntraEmulator, user: User) -> dict[str, str]:
    # What Foundry's front door adds to every request: the platform's user id.
    return {"x-agent-user-id": f"platform-{user.oid}"}


def _created_id(answer: httpx2.Response) -> str:
    assert answer.status_code == 200, answer.text[:300]
    if answer.headers["content-type"].startswith("text/event-stream"):
        for line in answer.text.splitlines():
            if line.startswith("data:"):
                return str(json.loads(line[5:])["response"]["id"])
    return str(answer.json()["id"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("who", [_as_verified, _as_platform], ids=["verified", "platform"])
async def test_another_user_with_the_id_cannot_read_continue_cancel_or_delete_it(
    idp: EntraEmulator,
    users: list[User],
    stream: bool,
    who: Callable[[EntraEmulator, User], dict[str, str]],
) -> None:
    alice, bob = users[33], users[34]
    app = _host(idp, MemoryStore(), verified=who is _as_verified)
    async with _serving(app) as client:
        created = await client.post(
            "/responses",
            json={"input": alice.oid, "store": True, "stream": stream},
            headers=who(idp, alice),
        )
        rid = _created_id(created)
        # Read at once by its creator: the owner was recorded before the id went out.
        mine = await client.get(f"/responses/{rid}", headers=who(idp, alice))
        assert mine.status_code == 200, mine.text[:300]
        assert f"the secret of {alice.oid}" in mine.text

        theirs = [
            await client.get(f"/responses/{rid}", headers=who(idp, bob)),
            await client.get(f"/responses/{rid}?stream=true", headers=who(idp, bob)),
            await client.get(f"/responses/{rid}/input_items", headers=who(idp, bob)),
            await client.post(f"/responses/{rid}/cancel", headers=who(idp, bob)),
            await client.delete(f"/responses/{rid}", headers=who(idp, bob)),
            await client.get(f"/responses/{rid}"),  # no user at all
        ]
        continued = await client.post(
            "/responses",
            json={"input": bob.oid, "previous_response_id": rid, "store": True},
            headers=who(idp, bob),
        )
        still = await client.get(f"/responses/{rid}", headers=who(idp, alice))
        own_continuation = await client.post(
            "/responses",
            json={"input": alice.oid, "previous_response_id": rid, "store": True},
            headers=who(idp, alice),
        )
    for answer in theirs:
        assert answer.status_code == 404, (answer.request.url, answer.text[:300])
        assert alice.oid not in answer.text
        assert answer.json()["error"]["message"] == f"Response with id '{rid}' not found."
    assert continued.status_code == 404, continued.text[:300]
    assert continued.json()["error"]["param"] == "previous_response_id"
    assert alice.oid not in continued.text
    assert still.status_code == 200  # bob's DELETE deleted nothing
    assert own_continuation.status_code == 200, own_continuation.text[:300]


async def test_a_conversation_is_the_user_who_used_it_first(
    idp: EntraEmulator, users: list[User]
) -> None:
    alice, bob = users[35], users[36]
    app = _host(idp, MemoryStore(), verified=True)
    async with _serving(app) as client:
        first = await client.post(
            "/responses",
            json={"input": alice.oid, "conversation": "conv_shared_name", "store": True},
            headers=_as_verified(idp, alice),
        )
        again = await client.post(
            "/responses",
            json={"input": alice.oid, "conversation": {"id": "conv_shared_name"}, "store": True},
            headers=_as_verified(idp, alice),
        )
        other = await client.post(
            "/responses",
            json={"input": bob.oid, "conversation": "conv_shared_name", "store": True},
            headers=_as_verified(idp, bob),
        )
    assert first.status_code == 200, first.text[:300]
    assert again.status_code == 200, again.text[:300]
    assert other.status_code == 404, other.text[:300]
    assert other.json()["error"]["param"] == "conversation"


@pytest.mark.parametrize("platform_storage", [False, True], ids=["own-storage", "foundry"])
async def test_an_id_whose_owner_is_unknown_is_served_to_a_platform_user_in_foundry_only(
    idp: EntraEmulator, users: list[User], platform_storage: bool
) -> None:
    """The owner record is gone (a replica that does not share the store, a restart): a
    verified or anonymous caller is refused; a platform user is left to the platform's storage
    inside Foundry, which keeps its users apart, and refused elsewhere (the host's own store
    keeps nobody apart, and any client can send x-agent-user-id)."""
    alice = users[37]
    store = MemoryStore()
    app = _host(idp, store, verified=True, platform_storage=platform_storage)
    async with _serving(app) as client:
        # Created by the platform user (the host's own check, by x-agent-user-id, then lets
        # that user through in every version of it).
        created = await client.post(
            "/responses", json={"input": alice.oid, "store": True}, headers=_as_platform(idp, alice)
        )
        rid = _created_id(created)
        for key in list(store._data):  # the owner records: gone
            await store.delete(key)
        verified = await client.get(f"/responses/{rid}", headers=_as_verified(idp, alice))
        anonymous = await client.get(f"/responses/{rid}")
        platform = await client.get(f"/responses/{rid}", headers=_as_platform(idp, alice))
    assert verified.status_code == 404
    assert anonymous.status_code == 404
    assert platform.status_code == (200 if platform_storage else 404), platform.text[:300]


async def test_the_ways_around_the_check_are_closed(idp: EntraEmulator, users: list[User]) -> None:
    """HEAD (Starlette answers it with the GET route's handler), a create path ending in a line
    break (Starlette's route pattern ends in ``$``, which matches before it), and a new response
    given the id of another user's (the host takes a client's id, header or body, checking only
    its format): none reaches another user's response."""
    alice, bob = users[10], users[11]
    app = _host(idp, MemoryStore(), verified=True)
    async with _serving(app) as client:
        rid = _created_id(
            await client.post(
                "/responses",
                json={"input": alice.oid, "store": True},
                headers=_as_verified(idp, alice),
            )
        )
        bob_headers = _as_verified(idp, bob)
        head = await client.head(f"/responses/{rid}", headers=bob_headers)
        head_items = await client.head(f"/responses/{rid}/input_items", headers=bob_headers)
        newline = await client.post(
            "/responses%0A",
            json={"input": bob.oid, "previous_response_id": rid, "store": True},
            headers=bob_headers,
        )
        by_body = await client.post(
            "/responses",
            json={"input": bob.oid, "response_id": rid, "store": True},
            headers=bob_headers,
        )
        by_header = await client.post(
            "/responses",
            json={"input": bob.oid, "store": True},
            headers={**bob_headers, "x-agent-response-id": rid},
        )
        mine = await client.get(f"/responses/{rid}", headers=_as_verified(idp, alice))
    assert head.status_code == 404
    assert head_items.status_code == 404
    assert newline.status_code == 404, newline.text[:300]
    assert by_body.status_code == 404, by_body.text[:300]
    assert by_header.status_code == 404, by_header.text[:300]
    assert mine.status_code == 200, mine.text[:300]
    assert f"the secret of {alice.oid}" in mine.text


class _DownStore(MemoryStore):
    """A store that stops answering once ``down`` is set."""

    down = False

    async def get(self, key: str) -> Any:
        if self.down:
            raise ConnectionError("store down")
        return await super().get(key)

    async def put(self, key: str, value: bytes, **options: Any) -> Any:
        if self.down:
            raise ConnectionError("store down")
        return await super().put(key, value, **options)


class _ReadOnlyStore(MemoryStore):
    """A store that answers reads and refuses writes (a read-only replica, a full Redis under
    noeviction)."""

    async def put(self, key: str, value: bytes, **options: Any) -> Any:
        raise ConnectionError("READONLY You can't write against a read only replica.")


async def test_a_store_that_does_not_answer_serves_nothing(
    idp: EntraEmulator, users: list[User]
) -> None:
    alice = users[37]
    store = _DownStore()
    app = _host(idp, store, verified=True)
    async with _serving(app) as client:
        rid = _created_id(
            await client.post(
                "/responses",
                json={"input": alice.oid, "store": True},
                headers=_as_verified(idp, alice),
            )
        )
        store.down = True
        answer = await client.get(f"/responses/{rid}", headers=_as_verified(idp, alice))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert alice.oid not in answer.text


def test_a_store_that_is_not_a_token_store_is_refused() -> None:
    from entra_passthrough import ConfigurationError

    with pytest.raises(ConfigurationError, match="TokenStore"):
        ResponseOwners(lambda *a: None, store={})  # type: ignore[arg-type]


async def test_claims_of_requests_the_host_refuses_never_push_an_owner_out(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A create that names a conversation (or its own id) claims it before the host runs; a
    request the host refuses (400) stores nothing, and its claim is short-lived: in a bounded
    store it goes before any owner, so refused requests cannot push a user's response out. A
    name another create of the same user is using is never taken away meanwhile."""
    alice = users[13]
    store = MemoryStore(max_entries=6)
    app = _host(idp, store, verified=True)
    async with _serving(app) as client:
        rid = _created_id(
            await client.post(
                "/responses",
                json={"input": alice.oid, "conversation": "conv_kept", "store": True},
                headers=_as_verified(idp, alice),
            )
        )
        for i in range(20):
            refused = await client.post(
                "/responses",
                json={"input": alice.oid, "conversation": f"conv_{i}", "response_id": "bad!"},
                headers=_as_verified(idp, alice),
            )
            assert refused.status_code == 400, refused.text[:300]
        mine = await client.get(f"/responses/{rid}", headers=_as_verified(idp, alice))
        again = await client.post(
            "/responses",
            json={"input": alice.oid, "conversation": "conv_kept", "store": True},
            headers=_as_verified(idp, alice),
        )
        theirs = await client.post(
            "/responses",
            json={"input": "x", "conversation": "conv_kept", "store": True},
            headers=_as_verified(idp, users[14]),
        )
    assert mine.status_code == 200, mine.text[:300]
    assert again.status_code == 200, again.text[:300]
    assert theirs.status_code == 404, theirs.text[:300]


@pytest.mark.parametrize("read_only", [False, True], ids=["down", "read-only"])
@pytest.mark.parametrize("background", [True, False], ids=["background", "foreground"])
async def test_nothing_is_created_while_the_store_does_not_answer(
    idp: EntraEmulator, users: list[User], background: bool, read_only: bool
) -> None:
    """The new response's owner could not be recorded: its creator could never read it (a
    background run that ran, its result lost to them, and sent again it runs twice). Refused
    before the host runs anything."""
    alice = users[14]
    store: MemoryStore = _DownStore()
    store.down = True  # type: ignore[attr-defined]
    if read_only:
        store = _ReadOnlyStore()
    app = _host(idp, store, verified=True)
    async with _serving(app) as client:
        refused = await client.post(
            "/responses",
            json={"input": f"down-{alice.oid}", "store": True, "background": background},
            headers=_as_verified(idp, alice),
        )
    assert refused.status_code == 503, refused.text[:300]
    assert refused.headers["retry-after"] == "5"
    assert f"down-{alice.oid}" not in RUNS


async def test_owner_keys_fit_the_documented_redis_acl(
    idp: EntraEmulator, users: list[User]
) -> None:
    """docs/scale-out.md's least-privilege Redis user may touch ``ep:*`` only: every key the
    owners write is under it (else every create is a 503 there)."""
    store = MemoryStore()
    app = _host(idp, store, verified=True)
    async with _serving(app) as client:
        created = await client.post(
            "/responses",
            json={"input": "acl", "conversation": "conv_acl", "store": True},
            headers=_as_verified(idp, users[15]),
        )
    assert created.status_code == 200, created.text[:300]
    assert store._data
    assert all(key.startswith("ep:") for key in store._data), list(store._data)


async def test_a_late_success_never_takes_a_conversation_from_another_user(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's claim on a conversation lapses during A's long run; B claims it and stores a turn.
    When A's run ends, A's response is A's, and the conversation stays B's."""
    monkeypatch.setattr(_hosting, "CLAIM_SECONDS", 1.0)
    alice, bob = users[16], users[17]
    store = MemoryStore()
    app = _host(idp, store, verified=True)
    async with _serving(app) as client:
        started = RUNS.count("slow")
        slow = asyncio.create_task(
            client.post(
                "/responses",
                json={"input": "slow", "conversation": "conv_lapse", "store": True},
                headers=_as_verified(idp, alice),
            )
        )
        # Alice's claim is taken before her run's tool starts: from then on, 1.3 s is past her
        # claim (1 s) and well inside her run (2.5 s), however late the loaded machine started
        # the request (a fixed 1.5 s from here left the claim alive under load).
        for _ in range(200):
            if RUNS.count("slow") > started:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.3)  # alice's claim has lapsed; her run is still going
        bob_first = await client.post(
            "/responses",
            json={"input": bob.oid, "conversation": "conv_lapse", "store": True},
            headers=_as_verified(idp, bob),
        )
        alice_first = await slow
        bob_again = await client.post(
            "/responses",
            json={"input": bob.oid, "conversation": "conv_lapse", "store": True},
            headers=_as_verified(idp, bob),
        )
        alice_again = await client.post(
            "/responses",
            json={"input": alice.oid, "conversation": "conv_lapse", "store": True},
            headers=_as_verified(idp, alice),
        )
    assert alice_first.status_code == 200, alice_first.text[:300]
    assert bob_first.status_code == 200, bob_first.text[:300]
    assert bob_again.status_code == 200, bob_again.text[:300]
    assert alice_again.status_code == 404, alice_again.text[:300]


async def test_a_repeated_platform_user_id_is_refused_not_stored_as_anonymous(
    idp: EntraEmulator, users: list[User]
) -> None:
    """``x-agent-user-id`` sent twice (a client's copy beside the ingress's): the capture trusts
    neither copy, and the response went to the shared "anonymous" owner, which any request with
    no user could then read and continue. Now refused, nothing stored; read the same way,
    nothing served."""
    alice = users[35]
    RUNS.clear()
    app = _host(idp, MemoryStore(), verified=False)
    twice = [("x-agent-user-id", f"platform-{alice.oid}")] * 2
    async with _serving(app) as client:
        created = await client.post(
            "/responses", json={"input": alice.oid, "store": True}, headers=twice
        )
        anonymous = await client.post("/responses", json={"input": "x", "store": True})
        rid = _created_id(anonymous)
        read_twice = await client.get(f"/responses/{rid}", headers=twice)
    assert created.status_code == 400, created.text[:300]
    assert created.json()["error"]["code"] == "ambiguous_user"
    assert "x-agent-user-id" in created.json()["error"]["message"]
    assert f"the secret of {alice.oid}" not in created.text
    assert alice.oid not in RUNS  # nothing ran for it
    assert read_twice.status_code == 400


async def test_an_unreadable_platform_user_id_is_refused_not_stored_as_anonymous(
    idp: EntraEmulator, users: list[User]
) -> None:
    """``x-agent-user-id`` sent once but not readable as a user id (over 256 bytes, control
    characters): the capture took the request as having no user, and its response went to the
    shared "anonymous" owner, which another such request could then read. Now refused, as a
    repeated id is; a UTF-8 id (read as Latin-1, it held control characters) is a user of its
    own, whose response another UTF-8 user cannot read."""
    alice = users[36]
    RUNS.clear()
    app = _host(idp, MemoryStore(), verified=False)
    long_id = [("x-agent-user-id", "u" * 300)]
    control = [(b"x-agent-user-id", b"platform-\x07-bell")]
    zhanna = [(b"x-agent-user-id", "Жанна".encode())]
    olga = [(b"x-agent-user-id", "Ольга".encode())]
    async with _serving(app) as client:
        refused = [
            await client.post("/responses", json={"input": alice.oid, "store": True}, headers=h)
            for h in (long_id, control)
        ]
        mine = await client.post(
            "/responses", json={"input": "zhanna", "store": True}, headers=zhanna
        )
        rid = _created_id(mine)
        own_read = await client.get(f"/responses/{rid}", headers=zhanna)
        other_read = await client.get(f"/responses/{rid}", headers=olga)
        long_read = await client.get(f"/responses/{rid}", headers=long_id)
    for answer in refused:
        assert answer.status_code == 400, answer.text[:300]
        assert answer.json()["error"]["code"] == "unreadable_user"
    assert alice.oid not in RUNS  # nothing ran for them
    assert own_read.status_code == 200, own_read.text[:300]
    assert other_read.status_code == 404, other_read.text[:300]
    assert long_read.status_code == 400


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_responses_the_host_does_not_store_never_push_an_owner_out(
    idp: EntraEmulator, users: list[User], stream: bool
) -> None:
    """A ``"store": false`` response is kept by no one (its creator's own GET is a 404): its
    owner was recorded for 30 days all the same, and in a bounded store (the in-process one
    holds 100,000) such responses of other users evicted the owner of a stored one within its
    retention: its creator could no longer read or continue it."""
    alice = users[15]
    store = MemoryStore(max_entries=8)
    app = _host(idp, store, verified=False)
    async with _serving(app) as client:
        rid = _created_id(
            await client.post(
                "/responses",
                json={"input": alice.oid, "store": True},
                headers=_as_platform(idp, alice),
            )
        )
        unstored: list[str] = []
        for i in range(12):
            other = users[16 + i % 4]
            unstored.append(
                _created_id(
                    await client.post(
                        "/responses",
                        json={"input": f"hi {i}", "store": False, "stream": stream},
                        headers=_as_platform(idp, other),
                    )
                )
            )
        mine = await client.get(f"/responses/{rid}", headers=_as_platform(idp, alice))
        continued = await client.post(
            "/responses",
            json={"input": alice.oid, "previous_response_id": rid, "store": True},
            headers=_as_platform(idp, alice),
        )
        # Nothing is served under an unstored id, to its creator or to anyone else.
        theirs = await client.get(f"/responses/{unstored[0]}", headers=_as_platform(idp, alice))
    assert mine.status_code == 200, mine.text[:300]
    assert continued.status_code == 200, continued.text[:300]
    assert theirs.status_code == 404, theirs.text[:300]


#: An id the client chooses, as sent and as the host uses it (it strips the header's value and
#: the body's ``response_id``; Starlette reads headers as latin-1, so a no-break space too).
_PADDED = {
    "body-spaces": lambda rid: ({"response_id": f" {rid} "}, {}),
    "body-newline": lambda rid: ({"response_id": f"{rid}\n"}, {}),
    "header-nbsp": lambda rid: ({}, {"x-agent-response-id": (rid + "\xa0").encode("latin-1")}),
}


@pytest.mark.parametrize("padded", list(_PADDED))
@pytest.mark.parametrize("who", [_as_verified, _as_platform], ids=["verified", "platform"])
async def test_another_users_id_with_whitespace_around_it_is_refused(
    idp: EntraEmulator, users: list[User], who: Callable[..., dict[str, str]], padded: str
) -> None:
    """Bob knows Alice's response id X. ``"response_id": "X"`` was refused, but ``" X "`` was
    claimed as sent (a name nobody owned), the host created Bob's response under X, and its
    owner was written over Alice's: she got 404 on her own response, and Bob read it, its
    input items (Alice's input) and continued it."""
    alice, bob = users[32], users[33]
    app = _host(idp, MemoryStore(), verified=who is _as_verified)
    async with _serving(app) as client:
        rid = _created_id(
            await client.post(
                "/responses", json={"input": alice.oid, "store": True}, headers=who(idp, alice)
            )
        )
        body, extra = _PADDED[padded](rid)
        taken = await client.post(
            "/responses",
            json={"input": bob.oid, "store": True, **body},
            headers={**who(idp, bob), **extra},
        )
        alice_reads = await client.get(f"/responses/{rid}", headers=who(idp, alice))
        bob_reads = await client.get(f"/responses/{rid}", headers=who(idp, bob))
        items = await client.get(f"/responses/{rid}/input_items", headers=who(idp, bob))
    assert taken.status_code == 404, taken.text[:300]
    assert alice_reads.status_code == 200, alice_reads.text[:300]
    assert alice.oid in alice_reads.text
    assert bob_reads.status_code == 404
    assert items.status_code == 404
    assert alice.oid not in items.text
