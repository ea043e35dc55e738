"""FoundryToolboxRoute + entra_mcp_tool against the toolbox stand-in: the features header on
every request (lifecycle included), the user resolved per call id, consent (-32006) for the
right user only."""

from __future__ import annotations

import json

import pytest
from agent_framework.exceptions import ToolException, UserInputRequiredException

from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.mcp import consent_from_exception
from entra_passthrough.testing import EntraEmulator, ToolboxStandIn

from .conftest import foundry_caller, toolbox_chain

SCOPES = ["https://ai.azure.com/.default"]


def answer_of(result: object) -> dict[str, object]:
    """The stand-in's whoami answer from a tool result (text or a list of contents)."""
    text = (
        result
        if isinstance(result, str)
        else "".join(getattr(item, "text", "") or "" for item in result)  # type: ignore[attr-defined]
    )
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def consent_of(exc: Exception) -> str:
    """``consent <link>`` for what the agent run would turn into an ``oauth_consent_request``:
    a ``UserInputRequiredException`` from a call, or the gateway-shaped connect error that
    ``ResponsesHostServer`` maps the same way; else the error itself."""
    if isinstance(exc, UserInputRequiredException):
        content = exc.contents[0]
        return f"consent {content.consent_link}" if content.type == "oauth_consent_request" else ""
    consent = consent_from_exception(exc)
    return f"consent {consent.link}" if consent is not None else repr(exc)


async def _call(tool: object, toolbox: ToolboxStandIn, user: str) -> dict[str, object]:
    caller = foundry_caller(toolbox.idp, toolbox, user)
    with bind_caller(caller):
        result = await tool.call_tool("whoami", who=user)  # type: ignore[attr-defined]
    answer = answer_of(result)
    assert answer["call_id"] == caller.call_id
    return answer


async def test_every_request_carries_the_features_and_each_call_its_user(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> None:
    chain = toolbox_chain(idp)
    tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
    async with tool:
        for user in ("alice", "bob", "carol", "alice"):
            answer = await _call(tool, toolbox, user)
            assert answer["user"] == user
            assert answer["oid"] == idp.users[user].oid
    chain.close()
    seen = toolbox.seen()
    stats = toolbox.stats()
    assert stats.get("missing_features", 0) == 0
    assert stats.get("unauthorized", 0) == 0
    assert stats["tool_ran"] == 4
    assert all(item.features for item in seen)
    # Lifecycle requests (no tools/call) went as the agent: never with a user's call id.
    assert all(item.call_id is None for item in seen if item.rpc != "tools/call")
    assert {item.method for item in seen} >= {"POST"}
    assert [item.user for item in seen if item.rpc == "tools/call"] == [
        "alice",
        "bob",
        "carol",
        "alice",
    ]


async def test_platform_features_are_merged(idp: EntraEmulator, toolbox: ToolboxStandIn) -> None:
    chain = toolbox_chain(idp, features="Agents=V2Preview")
    route = chain.sources[0]
    assert route.features == "Toolboxes=V1Preview,Agents=V2Preview"  # type: ignore[attr-defined]
    tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
    async with tool:
        assert (await _call(tool, toolbox, "bob"))["user"] == "bob"
    chain.close()
    assert toolbox.stats().get("missing_features", 0) == 0


async def test_a_client_without_the_header_is_refused(idp: EntraEmulator) -> None:
    # What the route did before: no Foundry-Features. The stand-in refuses every request.
    with ToolboxStandIn(idp) as toolbox:
        chain = toolbox_chain(idp)
        chain.sources[0].features = ""  # type: ignore[attr-defined]
        tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
        # The route's empty header value is refused before it is sent, and said so (a typed
        # error recorded at the connect is shown as such, not as "Could not connect").
        with pytest.raises(ToolException, match="Foundry-Features"):
            async with tool:
                pass
        chain.close()
        assert toolbox.stats()["missing_features"] >= 1
        assert toolbox.stats().get("tool_ran", 0) == 0


@pytest.mark.parametrize("on", ["tools/call", "tools/list"])
async def test_consent_reaches_the_right_user_only(
    idp: EntraEmulator, toolbox: ToolboxStandIn, on: str
) -> None:
    link = toolbox.require_consent("bob", on=[on])
    chain = toolbox_chain(idp)
    # per_user: each user's connection lists tools with that user's call id, so a consent
    # check on tools/list is seen by every user it applies to (shared mode lists once, as
    # the agent).
    pool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES, per_user=True)
    outcomes: dict[str, str] = {}
    try:
        for user in ("alice", "bob", "carol", "bob", "alice"):
            with bind_caller(foundry_caller(idp, toolbox, user)):
                try:
                    async with await pool.tool() as tool:
                        answer = answer_of(await tool.call_tool("whoami", who=user))
                    outcomes[user] = str(answer["user"])
                except Exception as exc:
                    outcomes[user] = consent_of(exc)
    finally:
        await pool.aclose()
        chain.close()
    assert outcomes == {"alice": "alice", "bob": f"consent {link}", "carol": "carol"}
    assert toolbox.stats()["consent_required"] >= 2  # bob, both times


async def test_shared_tool_consent_on_call_reaches_only_that_user(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> None:
    link = toolbox.require_consent("carol", on=["tools/call"])
    chain = toolbox_chain(idp)
    tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
    outcomes = []
    async with tool:
        for user in ("alice", "carol", "bob", "carol"):
            try:
                outcomes.append(str((await _call(tool, toolbox, user))["user"]))
            except Exception as exc:
                outcomes.append(consent_of(exc))
        toolbox.grant_consent("carol")
        outcomes.append(str((await _call(tool, toolbox, "carol"))["user"]))
    chain.close()
    assert outcomes == ["alice", f"consent {link}", "bob", f"consent {link}", "carol"]
    assert toolbox.stats()["consent_required"] == 2


async def test_lifecycle_requests_of_a_session_carry_the_features(idp: EntraEmulator) -> None:
    # A toolbox that speaks the session protocol: initialize, notifications/initialized, the
    # GET stream and the closing DELETE are lifecycle requests with no caller behind them.
    with ToolboxStandIn(idp, legacy=True) as toolbox:
        chain = toolbox_chain(idp)
        tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
        async with tool:
            for user in ("alice", "bob"):
                assert (await _call(tool, toolbox, user))["user"] == user
        chain.close()
        seen = toolbox.seen()
    methods = {item.method for item in seen}
    rpcs = {item.rpc for item in seen}
    assert {"initialize", "notifications/initialized", "tools/list", "tools/call"} <= rpcs
    assert {"GET", "DELETE"} <= methods
    assert all(item.features for item in seen)
    lifecycle = [item for item in seen if item.rpc != "tools/call"]
    assert lifecycle
    assert all(item.call_id is None for item in lifecycle)  # the agent, never a user
    assert all(item.status < 500 for item in seen)
