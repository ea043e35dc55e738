"""A user's stored items are referenced (``item_reference``) only by that user
(``ResponseOwners``, added by ``install``).

``ResponsesHostServer`` copies any stored item into a new response for whoever names its id in
an ``item_reference`` input: another signed-in user with one of Alice's item ids got her input
text and tool output into his own response and its ``input_items``. The host's item ids carry
the partition key of their response's id, whose owner ``ResponseOwners`` now records. Real
components: the emulator's tokens, a real ``ResponsesHostServer`` on uvicorn behind
``install(host, verifier=..., require_caller=True)``, or Foundry's ``x-agent-user-id``."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import AsyncIterator
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


@tool
async def secret_of(who: str = "") -> str:
    """What only the asking user may read."""
    return f"the secret of {who}"


def _agent() -> Any:
    return Agent(
        client=ScriptedChatClient(tool="secret_of", input_argument="who"), tools=[secret_of]
    )


def _verified_host(idp: EntraEmulator, store: MemoryStore) -> Any:
    verifier = JwtVerifier(
        audiences=[idp.agent.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    host = ResponsesHostServer(_agent(), configure_observability=None)
    return install(host, verifier=verifier, require_caller=True, response_owners=store)


def _platform_host(store: MemoryStore, *, platform_storage: bool) -> Any:
    # What install() adds, with the platform's storage said explicitly (inside Foundry the
    # host itself switches to Foundry's storage, which needs the platform).
    host = ResponsesHostServer(_agent(), configure_observability=None)
    host.add_middleware(BackgroundRunCallers)
    host.add_middleware(ResponseOwners, store=store, platform_storage=platform_storage)
    host.add_middleware(CallerMiddleware)
    return host


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    server = serve_asgi(app, name="host")
    try:
        async with httpx2.AsyncClient(base_url=server.base, timeout=60, trust_env=False) as client:
            yield client
    finally:
        server.stop()


def _as(idp: EntraEmulator, user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent_token(idp, user)}"}


def _created(answer: httpx2.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text[:300]
    if answer.headers["content-type"].startswith("text/event-stream"):
        last: dict[str, Any] = {}
        for line in answer.text.splitlines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if isinstance(event.get("response"), dict):
                    last = event["response"]
        return last
    body: dict[str, Any] = answer.json()
    return body


async def _stored(
    client: httpx2.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> tuple[str, list[str]]:
    """A stored response created with ``body``: its id, and the ids of its items (output, then
    input items)."""
    response = _created(await client.post("/responses", json=body, headers=headers))
    rid = str(response["id"])
    listed = await client.get(f"/responses/{rid}/input_items", headers=headers)
    assert listed.status_code == 200, listed.text[:300]
    ids = [str(o["id"]) for o in response["output"]]
    ids += [str(i["id"]) for i in listed.json()["data"]]
    return rid, ids


def _reference(item_id: str, shorthand: bool = False) -> dict[str, str]:
    return {"id": item_id} if shorthand else {"type": "item_reference", "id": item_id}


def _new_format_id(prefix: str, partition: str) -> str:
    entropy = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    return f"{prefix}_{partition}{entropy}"


async def test_a_hosts_item_ids_carry_their_responses_partition_key(
    idp: EntraEmulator, users: list[User]
) -> None:
    """What the item check stands on: each item id the real host gives a stored response (its
    tool call and output, its messages in and out), and a response continuing it, carries the
    partition key of the first response's id. A host upgrade that changes this makes every
    reference to a user's own items a 404: this test says so first."""
    alice = users[20]
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        rid, ids = await _stored(
            client, _as(idp, alice), {"input": f"ALICE-{alice.oid}", "store": True}
        )
        next_rid, next_ids = await _stored(
            client,
            _as(idp, alice),
            {"input": "again", "previous_response_id": rid, "store": True},
        )
    partition = _hosting._partition_of(rid)
    assert partition is not None, (
        f"ResponsesHostServer's response id {rid!r} is no longer in the format "
        "_hosting._partition_of reads ({prefix}_{18-char partition key}{32-char entropy}): "
        "ResponseOwners now refuses every item_reference; update _partition_of to the host's "
        "id format"
    )
    kinds = {item_id.split("_", 1)[0] for item_id in ids}
    assert {"fc", "fco", "msg"} <= kinds, f"expected a tool call, its output and messages: {ids}"
    strays = [
        item_id
        for item_id in [next_rid, *ids, *next_ids]
        if _hosting._partition_of(item_id) != partition
    ]
    assert not strays, (
        f"ResponsesHostServer's item ids no longer carry their response's partition key "
        f"({partition!r}): {strays}. ResponseOwners' item_reference check "
        "(_hosting._partition_of) stands on it, and now refuses users their own items; "
        "find how this host version ties an item to its response and check that instead"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_another_user_cannot_reference_a_users_items(
    idp: EntraEmulator, users: list[User], stream: bool
) -> None:
    alice, bob = users[21], users[22]
    secret = f"ALICE-{alice.oid}"
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        rid, ids = await _stored(client, _as(idp, alice), {"input": secret, "store": True})
        bob_rid, bob_ids = await _stored(
            client, _as(idp, bob), {"input": f"BOB-{bob.oid}", "store": True}
        )
        # Bob tries to place a response of his own in Alice's partition, by an id he chooses:
        # refused (the partition is hers), and it stays hers.
        partition = rid.split("_", 1)[1][:18]  # the host's new format (checked above)
        placed = await client.post(
            "/responses",
            json={
                "input": "placed",
                "store": True,
                "response_id": _new_format_id("caresp", partition),
            },
            headers=_as(idp, bob),
        )
        assert placed.status_code == 404, placed.text[:300]
        refused: list[tuple[str, httpx2.Response]] = []
        for item_id in ids:
            for body in (
                {"input": [_reference(item_id)], "store": True, "stream": stream},
                # The shorthand the host reads as a reference too (its schema check refuses
                # it today: refused here first, whatever a later host does with it).
                {"input": [_reference(item_id, shorthand=True)], "stream": stream},
                {"input": [_reference(item_id)], "store": False, "stream": stream},
                # Beside one of his own, continuing one of his own.
                {
                    "input": [_reference(bob_ids[0]), _reference(item_id)],
                    "previous_response_id": bob_rid,
                    "stream": stream,
                },
            ):
                answer = await client.post("/responses", json=body, headers=_as(idp, bob))
                refused.append((item_id, answer))
    assert len(ids) >= 4, ids
    for item_id, answer in refused:
        assert answer.status_code == 404, (item_id, answer.status_code, answer.text[:300])
        assert answer.json()["error"] == {
            "code": "invalid_request_error",
            "message": f"Item with id '{item_id}' not found.",
            "type": "invalid_request_error",
            "param": "input",
        }
        assert alice.oid not in answer.text


async def test_a_user_references_their_own_items(idp: EntraEmulator, users: list[User]) -> None:
    alice, bob = users[23], users[24]
    secret = f"ALICE-{alice.oid}"
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        rid, ids = await _stored(client, _as(idp, alice), {"input": secret, "store": True})
        answers = []
        for item_id in ids:
            answers.append(
                await client.post(
                    "/responses",
                    json={"input": [_reference(item_id)], "store": True},
                    headers=_as(idp, alice),
                )
            )
        # In a continued response too (same partition), and from a second, unrelated one.
        _, other_ids = await _stored(client, _as(idp, alice), {"input": "second", "store": True})
        both = _created(
            await client.post(
                "/responses",
                json={
                    "input": [_reference(ids[-1]), _reference(other_ids[-1])],
                    "previous_response_id": rid,
                    "store": True,
                },
                headers=_as(idp, alice),
            )
        )
        copied = await client.get(f"/responses/{both['id']}/input_items", headers=_as(idp, alice))
        # Bob's own items are his to reference.
        _, bob_ids = await _stored(client, _as(idp, bob), {"input": "bob", "store": True})
        bobs = await client.post(
            "/responses",
            json={"input": [_reference(bob_ids[-1])], "store": True},
            headers=_as(idp, bob),
        )
    for answer in answers:
        assert answer.status_code == 200, answer.text[:300]
    assert copied.status_code == 200, copied.text[:300]
    assert secret in copied.text  # the reference to her input message was resolved
    assert bobs.status_code == 200, bobs.text[:300]


#: Ids in no format of the host's (the host never stores an item under one), and how a refusal
#: quotes each: only an id of safe characters is repeated.
_OTHER_FORMATS = {
    "short": ("msg_short", "msg_short"),
    "no-delimiter": ("not-an-id", "not-an-id"),
    "empty": ("", "(not shown)"),
    "too-long": ("msg_" + "a" * 51, "msg_" + "a" * 51),
    "trailing-space": ("msg_2a37d0e52e92baeb00" + "A" * 32 + " ", "(not shown)"),
    "non-ascii": ("msg_" + "\u00e9" * 50, "(not shown)"),
}


@pytest.mark.parametrize("case", list(_OTHER_FORMATS))
async def test_an_id_in_another_format_is_refused(
    idp: EntraEmulator, users: list[User], case: str
) -> None:
    item_id, shown = _OTHER_FORMATS[case]
    alice = users[25]
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        answer = await client.post(
            "/responses",
            json={"input": [_reference(item_id)], "store": True},
            headers=_as(idp, alice),
        )
    assert answer.status_code == 404, answer.text[:300]
    error = answer.json()["error"]
    assert error["param"] == "input"
    assert error["message"] == f"Item with id '{shown}' not found."


async def test_another_casing_of_a_users_item_id_is_refused(
    idp: EntraEmulator, users: list[User]
) -> None:
    """On a file system that ignores case, the host's file store finds an item under any casing
    of its id: Bob's own response in the upper-cased partition (by an id he chooses) does not
    make Alice's item, upper-cased, his."""
    alice, bob = users[26], users[27]
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        rid, ids = await _stored(client, _as(idp, alice), {"input": "alice", "store": True})
        partition = rid.split("_", 1)[1][:18]  # the host's new format (checked above)
        placed = await client.post(
            "/responses",
            json={
                "input": "placed",
                "store": True,
                "response_id": _new_format_id("caresp", partition.upper()),
            },
            headers=_as(idp, bob),
        )
        prefix, body = ids[0].split("_", 1)
        upper = f"{prefix}_{body[:18].upper()}{body[18:]}"
        answer = await client.post(
            "/responses", json={"input": [_reference(upper)]}, headers=_as(idp, bob)
        )
    assert placed.status_code == 404, placed.text[:300]  # (her partition, in any case)
    assert answer.status_code == 404, answer.text[:300]


@pytest.mark.parametrize("platform_storage", [False, True], ids=["own-storage", "foundry"])
async def test_an_item_whose_partition_owner_is_unknown_is_left_to_foundry_only(
    users: list[User], platform_storage: bool
) -> None:
    """The owner records are gone (a replica that does not share the store, a restart): a
    platform user's reference is left to Foundry's storage, which keeps its users apart, and
    refused elsewhere (the host's own store keeps nobody apart)."""
    alice, bob = users[28], users[29]
    as_alice = {"x-agent-user-id": f"platform-{alice.oid}"}
    as_bob = {"x-agent-user-id": f"platform-{bob.oid}"}
    store = MemoryStore()
    async with _serving(_platform_host(store, platform_storage=platform_storage)) as client:
        _, ids = await _stored(client, as_alice, {"input": alice.oid, "store": True})
        kept = await client.post(
            "/responses", json={"input": [_reference(ids[-1])]}, headers=as_alice
        )
        theirs = await client.post(
            "/responses", json={"input": [_reference(ids[-1])]}, headers=as_bob
        )
        for key in list(store._data):  # the owner records: gone
            await store.delete(key)
        unknown = await client.post(
            "/responses", json={"input": [_reference(ids[-1])]}, headers=as_alice
        )
    assert kept.status_code == 200, kept.text[:300]
    assert theirs.status_code == 404, theirs.text[:300]
    assert unknown.status_code == (200 if platform_storage else 404), unknown.text[:300]


async def test_a_name_in_another_users_partition_is_refused(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A conversation (or a new response's id) the client chooses names the partition the host
    puts the response and its items in: one that is another user's is refused, as for a name
    that does not exist (bob, first in partition Q, could otherwise reference the items alice
    put in Q through a conversation id of her own)."""
    alice, bob = users[0], users[1]
    partition = secrets.token_hex(8) + "00"
    async with _serving(_verified_host(idp, MemoryStore())) as client:
        bobs = {
            "input": "bob's words",
            "store": True,
            "conversation": _new_format_id("conv", partition),
        }
        await _stored(client, _as(idp, bob), bobs)
        for field, value in (
            ("conversation", _new_format_id("conv", partition)),
            ("response_id", _new_format_id("caresp", partition)),
        ):
            refused = await client.post(
                "/responses",
                json={"input": "ALICE-PRIVATE", "store": True, field: value},
                headers=_as(idp, alice),
            )
            assert refused.status_code == 404, refused.text[:300]
            assert refused.json()["error"]["param"] == field
        # Bob's own next conversation in his partition still works.
        again = {**bobs, "conversation": _new_format_id("conv", partition)}
        await _stored(client, _as(idp, bob), again)
