"""Small, fast checks of the integration's pieces (no servers)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx2
import pytest
from agent_framework import MCPStreamableHTTPTool
from agent_framework.exceptions import ToolExecutionException, UserInputRequiredException
from mcp import MCPError

from _support.tokens import bare_jwt
from entra_passthrough import (
    Caller,
    ConfigurationError,
    ConsentRequired,
    IdentityKind,
    PolicyViolation,
    SourceUnavailable,
    TokenResult,
    UserKey,
    bind_caller,
    current_caller,
)
from entra_passthrough import mcp as ep_mcp
from entra_passthrough.agent_framework import (
    BackgroundRunCallers,
    EntraMCPToolPool,
    PoolOptions,
    consent_exception,
    entra_mcp_tool,
    install,
    is_dead_connection,
    issued_pool_key,
)
from entra_passthrough.agent_framework._tool import EntraMCPTool


class _NoChain:
    async def get_token_async(self, scopes: Sequence[str], **kw: Any) -> TokenResult:
        raise AssertionError("not used")

    def get_token(self, scopes: Sequence[str], **kw: Any) -> TokenResult:
        raise AssertionError("not used")

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None:
        return None

    def invalidate(self, result: TokenResult) -> None:
        return None


URL = "https://mcp.contoso.com/mcp"
SCOPES = ["api://mcp/.default"]


def test_auth_and_headers_are_refused_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="silently drops auth="):
        entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES, auth=object())
    with pytest.warns(UserWarning, match="silently drops headers="):
        entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES, headers={"a": "b"})


def test_tool_options_are_listed_once_and_checked() -> None:
    # MCPToolOptions (a TypedDict) lists them; a misspelt option fails at once, not silently.
    with pytest.raises(TypeError, match="descripton"):
        entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES, descripton="typo")  # type: ignore[call-overload]
    tool = entra_mcp_tool(
        "x", URL, chain=_NoChain(), scopes=SCOPES, description="notes", request_timeout=7
    )
    assert (tool.description, tool.request_timeout) == ("notes", 7)


def test_token_goes_only_to_the_url_origin_by_default() -> None:
    tool = entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES)
    assert isinstance(tool, EntraMCPTool)
    assert isinstance(tool, MCPStreamableHTTPTool)
    core = tool.auth._core
    assert core.allows(httpx2.URL("https://mcp.contoso.com/other"))
    assert not core.allows(httpx2.URL("https://evil.example.com/mcp"))
    assert not core.allows(httpx2.URL("http://mcp.contoso.com/mcp"))
    assert tool.auth.on_error == "record"


@pytest.mark.parametrize("kind", ["plain", "tool"])
async def test_connection_client_keeps_no_cookies(kind: str) -> None:
    # One connection serves every user: a cookie the server set on user A's response (an
    # auth/session cookie) must never ride on user B's calls or on connection-lifetime requests.
    if kind == "plain":
        http = ep_mcp.entra_http_client(
            chain=_NoChain(), scopes=SCOPES, origins=["https://mcp.contoso.com"]
        )
    else:
        tool = entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES)
        assert isinstance(tool, EntraMCPTool)
        tool.get_mcp_client()
        assert tool._httpx_client is not None
        http = tool._httpx_client
    sent: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.headers.get("cookie"))
        return httpx2.Response(200, headers={"set-cookie": "session=user-a; Path=/"})

    http._transport = httpx2.MockTransport(handler)
    async with http:
        await http.get(URL)
        await http.get(URL)
    assert sent == [None, None]


def test_plain_http_origin_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        entra_mcp_tool("x", "http://mcp.contoso.com/mcp", chain=_NoChain(), scopes=SCOPES)


def test_old_mcp_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ep_mcp.metadata, "version", lambda name: "1.26.0")
    with pytest.raises(ImportError, match=r"mcp >= 2\.2"):
        ep_mcp._check_mcp_version()


def test_consent_from_url_elicitation() -> None:
    error = MCPError(
        -32042,
        "URL elicitation required",
        data={"elicitations": [{"mode": "url", "url": "https://login.example.com/x"}]},
    )
    wrapped = ToolExecutionException("tool failed", error)
    consent = ep_mcp.consent_from_exception(wrapped, server_label="files")
    assert consent is not None
    assert consent.link == "https://login.example.com/x"
    assert consent.server_label == "files"


def test_consent_from_foundry_gateway_error() -> None:
    details = {
        "errors": [
            {
                "name": "files",
                "type": "mcp",
                "error": {"code": "CONSENT_REQUIRED", "message": "https://consent.example.com"},
            }
        ]
    }
    error = MCPError(-32006, f"tools/call failed {json.dumps(details)}")
    consent = ep_mcp.consent_from_exception(error)
    assert consent is not None
    assert consent.link == "https://consent.example.com"


def test_non_https_links_are_ignored() -> None:
    error = MCPError(-32042, "x", data={"elicitations": [{"url": "http://evil.example.com"}]})
    assert ep_mcp.consent_from_exception(error) is None
    assert ep_mcp.consent_from_exception(ValueError("nothing")) is None


def test_consent_becomes_an_oauth_consent_request() -> None:
    consent = ConsentRequired("consent needed", link="https://login.example.com/authorize?x=1")
    raised = consent_exception(consent, server_label="files")
    assert isinstance(raised, UserInputRequiredException)
    (content,) = raised.contents
    assert content.type == "oauth_consent_request"
    assert content.consent_link == "https://login.example.com/authorize?x=1"
    assert content.additional_properties["server_label"] == "files"
    # No usable link: the explained error itself reaches the run.
    plain = consent_exception(ConsentRequired("x", link=None), server_label="f")
    assert isinstance(plain, ConsentRequired)


@pytest.mark.parametrize(
    ("error", "dead"),
    [
        (MCPError(-32000, "Connection closed"), True),
        # A server's error text says nothing about the connection: a tool may fail "Session
        # not found" after it ran (a refused session is the 404 the transport records).
        (MCPError(-32600, "Session not found"), False),
        (MCPError(-32602, "Session terminated by the browser"), False),
        (ToolExecutionException("x", MCPError(-32000, "Connection closed")), True),
        (httpx2.ConnectError("refused"), True),
        (MCPError(-32602, "Invalid params"), False),
        (MCPError(-32000, "Server error: quota exceeded"), False),  # the server ran the call
        (MCPError(-32603, "upstream connection closed"), False),
        (ValueError("x"), False),
    ],
)
def test_dead_connection_classification(error: BaseException, dead: bool) -> None:
    assert is_dead_connection(error) is dead


def test_the_pool_keys_by_the_user_entra_issued_or_a_verifier_checked() -> None:
    # One key type, UserKey: the tid/oid of the token Entra issued for the MCP server, else the
    # caller's verified tid/oid; never the caller's own (unverified) claims.
    caller = Caller.from_token(bare_jwt(tid="t1", oid="o1", aud="a", exp=4_000_000_000))
    issued = TokenResult(bare_jwt(tid="t2", oid="o2"), time.time() + 600, IdentityKind.USER, "obo")
    opaque = TokenResult("opaque", time.time() + 600, IdentityKind.USER, "obo")
    assert issued_pool_key(issued, caller) == UserKey.for_entra_user("t2", "o2")
    assert issued_pool_key(opaque, caller) is None
    caller.verified = {"tid": "t3", "oid": "o3"}
    assert issued_pool_key(opaque, caller) == UserKey.for_entra_user("t3", "o3")
    assert issued_pool_key(opaque, Caller.from_token(None, user_id="chat-user")) is None


def test_an_app_token_keys_by_the_app_only_for_a_request_without_a_user() -> None:
    # user_or_app served a request with no user at all as the app: the app's service
    # principal (the app token's tid/oid) keys its connection. A request that names a user (a
    # verified token, a platform user id, even an unverified bearer) never gets the app's key:
    # by the verified user, else no pooling (a toolbox route serves the agent's token for
    # each user, whose tool lists differ).
    app = TokenResult(bare_jwt(tid="t", oid="sp"), time.time() + 600, IdentityKind.APP, "mi")
    nobody = Caller.from_token(None)
    assert issued_pool_key(app, nobody) == UserKey.for_entra_user("t", "sp")
    platform = Caller.from_token(None, user_id="chat-user")
    # A platform user id keys a connection that acts as the app (the same identity for every
    # such key), never one that acts for a user.
    assert issued_pool_key(app, platform) == UserKey.for_platform_user("chat-user")
    unverified = Caller.from_token(bare_jwt(tid="t", oid="u", aud="a", exp=4_000_000_000))
    assert issued_pool_key(app, unverified) is None
    unverified.verified = {"tid": "t", "oid": "u"}
    assert issued_pool_key(app, unverified) == UserKey.for_entra_user("t", "u")
    # An opaque app token (a custom credential's): still the app's one connection, by source.
    opaque = TokenResult("opaque", time.time() + 600, IdentityKind.APP, "custom")
    assert issued_pool_key(opaque, nobody) == issued_pool_key(opaque, Caller.from_token(None))
    assert issued_pool_key(opaque, nobody) is not None
    assert issued_pool_key(opaque, platform) == UserKey.for_platform_user("chat-user")
    opaque_user = TokenResult("opaque", time.time() + 600, IdentityKind.USER, "obo")
    assert issued_pool_key(opaque_user, nobody) is None  # a user's: never the app's key


def test_pool_options_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        PoolOptions(max_connections=0)
    with pytest.raises(ConfigurationError):
        PoolOptions(idle_timeout=0)


async def _run_background_middleware(body: dict[str, Any]) -> tuple[Caller, Caller | None]:
    token = bare_jwt(tid="t", oid="o", aud="a", exp=4_000_000_000)
    seen: dict[str, Caller | None] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert json.loads(message["body"]) == body  # the body is replayed untouched
        seen["run"] = current_caller()

    middleware = BackgroundRunCallers(app)
    raw = json.dumps(body).encode()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Any) -> None:
        return None

    async with bind_caller(token=token) as request_caller:
        await middleware(
            {"type": "http", "method": "POST", "path": "/responses", "headers": []},
            receive,
            send,
        )
    return request_caller, seen["run"]


async def test_background_request_gets_its_own_run_caller() -> None:
    request_caller, run_caller = await _run_background_middleware(
        {"input": "x", "background": True}
    )
    assert run_caller is not None
    assert run_caller is not request_caller
    assert not request_caller.active  # the request ended
    assert run_caller.active  # the run goes on, capped at the assertion's expiry
    assert run_caller.not_after is not None
    assert run_caller.assertion == request_caller.assertion
    run_caller.end()


async def test_foreground_request_keeps_the_request_caller() -> None:
    request_caller, run_caller = await _run_background_middleware({"input": "x"})
    assert run_caller is request_caller
    assert not request_caller.active


async def test_middleware_maps_consent_from_any_tool() -> None:
    from agent_framework import Agent, tool

    from entra_passthrough.agent_framework import entra_middleware
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    @tool
    def files() -> str:
        """A tool we did not build, whose server asks for a URL elicitation."""
        raise MCPError(
            -32042,
            "URL elicitation required",
            data={"elicitations": [{"mode": "url", "url": "https://consent.example.com/go"}]},
        )

    agent = Agent(
        client=ScriptedChatClient(tool="files"),
        tools=[files],
        middleware=entra_middleware(server_label="files"),
    )
    response = await agent.run("hi")
    consent = [
        c for m in response.messages for c in m.contents if c.type == "oauth_consent_request"
    ]
    assert len(consent) == 1
    assert consent[0].consent_link == "https://consent.example.com/go"
    assert consent[0].additional_properties["server_label"] == "files"


class _BrokenChain(_NoChain):
    async def get_token_async(self, scopes: Sequence[str], **kw: Any) -> TokenResult:
        try:
            raise OSError("token endpoint unreachable")
        except OSError as exc:
            raise ConfigurationError("no source could answer") from exc


async def test_call_failure_keeps_the_original_cause() -> None:
    # A token error raised unchanged by call_tool keeps its own cause (was `raise exc from exc`:
    # the error became its own cause and the real one was lost).
    tool = entra_mcp_tool("x", URL, chain=_BrokenChain(), scopes=SCOPES)
    assert isinstance(tool, EntraMCPTool)
    with (
        bind_caller(token=bare_jwt(tid="t", oid="o")),
        pytest.raises(ConfigurationError) as caught,
    ):
        await tool.call_tool("whoami")
    assert isinstance(caught.value.__cause__, OSError)


class _LifecycleFails(_NoChain):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None:
        raise self.error


async def test_shared_discovery_falls_back_to_the_user_only_on_token_errors() -> None:
    trigger = Caller.from_token(bare_jwt(tid="t", oid="o"))
    unavailable = _LifecycleFails(SourceUnavailable("no MI"))
    tool = entra_mcp_tool("x", URL, chain=unavailable, scopes=SCOPES)
    assert isinstance(tool, EntraMCPTool)
    assert await tool._discovery_caller(trigger) is trigger
    broken = entra_mcp_tool("x", URL, chain=_LifecycleFails(KeyError("bug")), scopes=SCOPES)
    assert isinstance(broken, EntraMCPTool)
    with pytest.raises(KeyError):
        await broken._discovery_caller(trigger)


def test_pooled_call_refuses_a_token_for_another_user() -> None:
    tool = EntraMCPTool(
        "x", URL, chain=_NoChain(), scopes=SCOPES, origins=["https://mcp.contoso.com"],
        mode="per_user", pool_key=UserKey.for_entra_user("other-t", "o"),
    )  # fmt: skip

    def issued(**claims: Any) -> TokenResult:
        token = bare_jwt(**claims)
        return TokenResult(token, time.time() + 600, IdentityKind.USER, "obo")

    tool._check_pool_identity(issued(tid="other-t", oid="o"))  # the pool's own user: accepted
    for tid, oid in (("t", "o"), ("other-t", "o2")):  # a suffix of the key is not the same user
        with pytest.raises(PolicyViolation):
            tool._check_pool_identity(issued(tid=tid, oid=oid))


def test_close_on_shutdown_refuses_a_host_whose_handler_slot_moved() -> None:
    # Chaining needs the host's own handler (it closes the agent); without the slot it would be
    # dropped silently.
    class _Host:
        def add_middleware(self, cls: Any, **options: Any) -> None:
            return None

        def shutdown_handler(self, fn: Any) -> Any:
            return fn

    with pytest.raises(ConfigurationError, match="_shutdown_fn") as info:
        install(_Host(), close_on_shutdown=[object()])
    # What happened, which version, and what to do.
    assert "azure-ai-agentserver-core (" in str(info.value)
    assert info.value.fix
    assert "pool.aclose()" in info.value.fix


def test_close_on_shutdown_refuses_what_is_not_a_host_with_a_fix() -> None:
    class _App:
        def add_middleware(self, cls: Any, **options: Any) -> None:
            return None

    with pytest.raises(ConfigurationError, match="_App has no shutdown_handler") as info:
        install(_App(), close_on_shutdown=[object()])
    assert info.value.fix


def test_a_session_without_the_elicitation_slot_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A moved mcp slot would decline consent links silently: said once, with the fix.
    from entra_passthrough.agent_framework import _tool

    _tool._warn_no_elicitation_slot.cache_clear()
    tool = entra_mcp_tool("x", "https://mcp.contoso.com/mcp", chain=_NoChain(), scopes=SCOPES)
    with caplog.at_level("WARNING", logger="entra_passthrough.agent_framework"):
        tool.session_opened(object())
        tool.session_opened(object())
    warned = [r for r in caplog.records if "_elicitation_callback" in r.getMessage()]
    assert len(warned) == 1
    assert "Fix:" in warned[0].getMessage()
    _tool._warn_no_elicitation_slot.cache_clear()


@pytest.mark.parametrize(
    "url", ["https://u:s3cret@mcp.contoso.com/mcp", "mcp.contoso.com/mcp?key=s3cret"]
)
def test_a_bad_mcp_url_is_refused_without_echoing_it(url: str) -> None:
    # MCP URLs sometimes carry a key (query or user info): the error must not repeat it.
    with pytest.raises(ConfigurationError) as caught:
        entra_mcp_tool("x", url, chain=_NoChain(), scopes=SCOPES)
    assert "s3cret" not in str(caught.value)


def test_tool_repr_hides_the_url_query() -> None:
    tool = entra_mcp_tool("x", f"{URL}?key=s3cret", chain=_NoChain(), scopes=SCOPES)
    assert "s3cret" not in repr(tool)
    assert "https://mcp.contoso.com/mcp" in repr(tool)


async def test_pool_logs_a_failed_close(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tool = entra_mcp_tool("x", URL, chain=_NoChain(), scopes=SCOPES)
    assert isinstance(tool, EntraMCPTool)

    async def close() -> None:
        raise OSError("server gone")

    monkeypatch.setattr(tool, "close", close)
    with caplog.at_level(logging.INFO, logger="entra_passthrough.agent_framework"):
        await EntraMCPToolPool._close_tool(tool)
    assert "closing pooled MCP connection" in caplog.text
    assert "OSError" in caplog.text


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("notes-server", "absolute http(s) URL"),
        ("ftp://mcp.contoso.com/mcp", "absolute http(s) URL"),
        ("https://svc:k3y-in-the-url@mcp.contoso.com/mcp", "user info"),
    ],
)
def test_an_unusable_mcp_url_is_refused_with_the_fix_and_never_shown(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        entra_mcp_tool("notes", url, chain=_NoChain(), scopes=SCOPES)
    assert said in str(info.value)
    assert info.value.fix
    assert url not in str(info.value)
    assert "k3y-in-the-url" not in str(info.value)
