"""Unit tests of the apply flow (httpx2 front) with MockTransport: no network, no chain."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import (
    Caller,
    ConfigurationError,
    ConsentRequired,
    EntraAuth,
    IdentityKind,
    NoCallerError,
    TokenResult,
    bind_caller,
    use_token,
)
from entra_passthrough._auth import UnsafeTokenValue
from entra_passthrough._flow import _replayable

from ._fakes import FakeChain, app_result, user_caller

MCP = "https://mcp.contoso.com"
SCOPES = ["api://mcp/.default"]

Handler = Callable[[httpx2.Request], httpx2.Response]


@dataclass(frozen=True)
class Seen:
    """A snapshot of one hop (the flow mutates and resends the same Request object)."""

    url: httpx2.URL
    headers: httpx2.Headers
    content: bytes | None


class Recorder:
    """A MockTransport handler that records every hop as it was sent."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.seen: list[Seen] = []
        self.answer = answer or (lambda request: httpx2.Response(200, json={"ok": True}))

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        try:
            content: bytes | None = request.content
        except httpx2.RequestNotRead:
            content = None
        self.seen.append(Seen(request.url, request.headers.copy(), content))
        return self.answer(request)

    @property
    def auths(self) -> list[str | None]:
        return [r.headers.get("authorization") for r in self.seen]


def client(auth: EntraAuth, rec: Recorder, **kw: object) -> httpx2.AsyncClient:
    c = httpx2.AsyncClient(transport=httpx2.MockTransport(rec), **kw)  # type: ignore[arg-type]
    auth.install(c)
    return c


async def test_token_attached_for_configured_origin_only() -> None:
    chain = FakeChain()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    rec = Recorder()
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        await c.get(f"{MCP}/mcp")
        await c.get("https://evil.example/mcp")
        await c.get("https://mcp.contoso.com:8443/mcp")  # other port = other origin
        await c.get("http://mcp.contoso.com/mcp")  # other scheme = other origin
    assert rec.auths == ["Bearer user-alice-1", None, None, None]
    assert chain.calls == [("alice", None)]  # no acquisition for foreign origins


async def test_origin_normalisation() -> None:
    auth = EntraAuth(FakeChain(), scopes=SCOPES, origins=["HTTPS://MCP.Contoso.COM:443/"])
    assert auth.origins == ("https://mcp.contoso.com",)
    assert EntraAuth(FakeChain(), scopes=SCOPES, origins="http://[::1]:8080").origins == (
        "http://[::1]:8080",
    )
    rec = Recorder()
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        await c.get("https://mcp.contoso.com/x")
        await c.get("https://MCP.CONTOSO.com:443/y")
    assert rec.auths == ["Bearer user-alice-1", "Bearer user-alice-2"]


@pytest.mark.parametrize(
    "origin",
    [
        "http://mcp.contoso.com",  # plain HTTP off loopback
        "https://mcp.contoso.com/mcp",  # a path is not an origin
        "https://*.contoso.com",
        "https://user:pw@mcp.contoso.com",
        "ftp://mcp.contoso.com",
        "",
    ],
)
def test_bad_origins_refused(origin: str) -> None:
    with pytest.raises(ConfigurationError):
        EntraAuth(FakeChain(), scopes=SCOPES, origins=[origin])


def test_origins_required_and_loopback_rule() -> None:
    with pytest.raises(ConfigurationError):
        EntraAuth(FakeChain(), scopes=SCOPES, origins=[])
    with pytest.raises(ConfigurationError):
        EntraAuth(FakeChain(), scopes=[], origins=[MCP])
    for loop in ("http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:80"):
        EntraAuth(FakeChain(), scopes=SCOPES, origins=[loop])
        with pytest.raises(ConfigurationError):
            EntraAuth(FakeChain(), scopes=SCOPES, origins=[loop], allow_insecure_loopback=False)


async def test_cross_origin_redirect_never_carries_the_token() -> None:
    chain = FakeChain(headers={"x-agent-foundry-call-id": "call-1"})

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "mcp.contoso.com" and request.url.path == "/go":
            return httpx2.Response(302, headers={"location": "https://evil.example/steal"})
        if request.url.path == "/same":
            return httpx2.Response(307, headers={"location": f"{MCP}/landed"})
        return httpx2.Response(200)

    rec = Recorder(answer)
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with client(auth, rec, follow_redirects=True) as c, bind_caller(user_caller("bob")):
        await c.get(f"{MCP}/go")
        await c.get(f"{MCP}/same")
    evil = [r for r in rec.seen if r.url.host == "evil.example"]
    assert len(evil) == 1
    assert "authorization" not in evil[0].headers
    assert "x-agent-foundry-call-id" not in evil[0].headers  # httpx alone would forward it
    landed = [r for r in rec.seen if r.url.path == "/landed"]
    assert landed[0].headers["authorization"].startswith("Bearer user-bob-")


async def test_http_to_https_upgrade_redirect_is_another_origin() -> None:
    # httpx keeps Authorization on an http:80 -> https:443 upgrade of the same host; the
    # token was configured for http://localhost only, so the hook must strip it.
    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.scheme == "http":
            return httpx2.Response(301, headers={"location": "https://localhost/x"})
        return httpx2.Response(200)

    rec = Recorder(answer)
    auth = EntraAuth(FakeChain(), scopes=SCOPES, origins=["http://localhost"])
    async with client(auth, rec, follow_redirects=True) as c, bind_caller(user_caller("a")):
        await c.get("http://localhost/x")
    assert rec.auths == ["Bearer user-a-1", None]


async def test_without_the_hook_httpx_still_strips_cross_host() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "mcp.contoso.com":
            return httpx2.Response(302, headers={"location": "https://evil.example/"})
        return httpx2.Response(200)

    rec = Recorder(answer)
    auth = EntraAuth(FakeChain(), scopes=SCOPES, origins=[MCP])
    async with (
        httpx2.AsyncClient(
            transport=httpx2.MockTransport(rec), auth=auth, follow_redirects=True
        ) as c,
        bind_caller(user_caller("a")),
    ):
        await c.get(f"{MCP}/")
    assert rec.auths == ["Bearer user-a-1", None]


async def test_no_caller_gets_lifecycle_identity_or_nothing() -> None:
    chain = FakeChain()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    rec = Recorder()
    async with client(auth, rec) as c:
        await c.get(f"{MCP}/")  # policy allows no lifecycle identity: no header at all
        chain.lifecycle = app_result("app-token")
        await c.get(f"{MCP}/")
    assert rec.auths == [None, "Bearer app-token"]
    assert chain.calls == []


async def test_inactive_caller_never_gets_its_token() -> None:
    # An MCP connection's auth: a request outside a call is a connection-lifetime one, which
    # gets the lifecycle identity even from a stale context (elsewhere the ended caller's work
    # is refused: tests/resolve/test_ended_caller.py).
    chain = FakeChain()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], connection=True)
    rec = Recorder()
    async with client(auth, rec) as c:
        with bind_caller(user_caller("alice")):
            # a long-lived task copies the context during alice's request...
            stale = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(_wait_then_get(c, stale))
        stale.set_result(None)  # ...and uses it after her request ended
        await task
    assert rec.auths == [None]
    assert chain.calls == []
    assert chain.lifecycle_calls == 1


async def _wait_then_get(c: httpx2.AsyncClient, gate: asyncio.Future[None]) -> None:
    await gate
    await c.get(f"{MCP}/reconnect")


def claims_challenge(claims: dict[str, object]) -> str:
    encoded = base64.b64encode(json.dumps(claims).encode()).decode()
    return (
        'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
        f'authorize", error="insufficient_claims", claims="{encoded}"'
    )


async def test_claims_challenge_invalidates_and_retries_once_with_claims() -> None:
    chain = FakeChain()
    claims = {"access_token": {"nbf": {"essential": True, "value": "1700000000"}}}

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.headers["authorization"] == "Bearer user-alice-1":
            return httpx2.Response(401, headers={"www-authenticate": claims_challenge(claims)})
        return httpx2.Response(200)

    rec = Recorder(answer)
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], client_capabilities=["CP1"])
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        response = await c.post(f"{MCP}/mcp", json={"jsonrpc": "2.0"})
    assert response.status_code == 200
    assert rec.auths == ["Bearer user-alice-1", "Bearer user-alice-2"]
    assert [r.token for r in chain.invalidated] == ["user-alice-1"]
    assert chain.calls[1] == ("alice", json.dumps(claims))  # decoded, not base64
    assert rec.seen[1].content == b'{"jsonrpc":"2.0"}'


async def test_invalid_token_retried_once_never_loops() -> None:
    chain = FakeChain()
    rec = Recorder(
        lambda r: httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
    )
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        response = await c.get(f"{MCP}/")
    assert response.status_code == 401
    assert len(rec.seen) == 2
    assert chain.calls == [("alice", None), ("alice", None)]
    assert len(chain.invalidated) == 1


class BrokenInvalidate(FakeChain):
    def invalidate(self, result: object) -> None:
        raise RuntimeError("cache backend down")


async def test_invalidate_failure_raises_or_is_recorded_then_retried() -> None:
    deny = Recorder(
        lambda r: httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
    )
    strict = EntraAuth(BrokenInvalidate(), scopes=SCOPES, origins=[MCP])
    async with client(strict, deny) as c, bind_caller(user_caller("alice")):
        with pytest.raises(RuntimeError, match="cache backend down"):
            await c.get(f"{MCP}/")
    assert deny.auths == ["Bearer user-alice-1"]

    chain = BrokenInvalidate()
    rec = Recorder(
        lambda r: (
            httpx2.Response(200)
            if r.headers["authorization"] == "Bearer user-alice-2"
            else httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
        )
    )
    lenient = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
    async with client(lenient, rec) as c, bind_caller(user_caller("alice")) as caller:
        response = await c.get(f"{MCP}/")
        assert [str(e) for e in caller.take_errors()] == ["cache backend down"]
    assert response.status_code == 200
    assert rec.auths == ["Bearer user-alice-1", "Bearer user-alice-2"]


@pytest.mark.parametrize(
    "challenge",
    [
        'Bearer error="insufficient_scope", scope="x"',
        'Bearer error="insufficient_claims", claims="not base64 json!"',
        'Basic realm="x"',
        "",
    ],
)
async def test_other_401s_are_not_retried(challenge: str) -> None:
    chain = FakeChain()
    rec = Recorder(lambda r: httpx2.Response(401, headers={"www-authenticate": challenge}))
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        await c.get(f"{MCP}/")
    assert len(rec.seen) == 1
    assert chain.invalidated == []


async def test_streaming_body_is_not_replayed() -> None:
    chain = FakeChain()
    rec = Recorder(
        lambda r: httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
    )
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])

    async def body() -> object:
        yield b"chunk"

    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        response = await c.post(f"{MCP}/", content=body())  # type: ignore[arg-type]
    assert response.status_code == 401
    # MockTransport buffers the body, so here it can be replayed whole; a real transport
    # does not, and then the flow does not retry (checked directly below).
    assert [s.content for s in rec.seen] == [b"chunk", b"chunk"]
    unread = httpx2.Request("POST", f"{MCP}/", content=body())  # type: ignore[arg-type]
    assert not _replayable(unread)
    assert _replayable(httpx2.Request("POST", f"{MCP}/", content=b"x"))


async def test_raise_mode_propagates_the_typed_error() -> None:
    chain = FakeChain(error=ConsentRequired("consent needed", link="https://broker/start"))
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with client(auth, rec) as c, bind_caller(user_caller("carol")):
        with pytest.raises(ConsentRequired):
            await c.get(f"{MCP}/")
    assert rec.seen == []  # nothing was sent


async def test_record_mode_never_raises_and_sends_without_token() -> None:
    error = ConsentRequired("consent needed", link="https://broker/start")
    chain = FakeChain(error=error)
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
    async with client(auth, rec) as c:
        with bind_caller(user_caller("carol")) as caller:
            response = await c.get(f"{MCP}/")
            assert caller.take_errors() == [error]
        chain.lifecycle = None
        chain.error = None
        response = await c.get(f"{MCP}/")  # caller-less: nothing to record
    assert response.status_code == 200
    assert rec.auths == [None, None]
    assert auth.take_errors() == []


async def test_record_mode_keeps_caller_less_errors_on_the_auth() -> None:
    class Boom(FakeChain):
        async def lifecycle_token_async(self, scopes: object) -> None:
            raise NoCallerError()

    auth = EntraAuth(Boom(), scopes=SCOPES, origins=[MCP], on_error="record")
    rec = Recorder()
    async with client(auth, rec) as c:
        await c.get(f"{MCP}/")
    errors = auth.take_errors()
    assert len(errors) == 1
    assert isinstance(errors[0], NoCallerError)
    assert rec.auths == [None]


async def test_existing_authorization_is_a_conflict() -> None:
    rec = Recorder()
    raising = EntraAuth(FakeChain(), scopes=SCOPES, origins=[MCP])
    async with client(raising, rec) as c, bind_caller(user_caller("alice")):
        with pytest.raises(ConfigurationError):
            await c.get(f"{MCP}/", headers={"authorization": "Bearer someone-else"})
    recording = EntraAuth(FakeChain(), scopes=SCOPES, origins=[MCP], on_error="record")
    async with client(recording, rec) as c, bind_caller(user_caller("alice")) as caller:
        await c.get(f"{MCP}/", headers={"authorization": "Bearer someone-else"})
        assert [type(e) for e in caller.take_errors()] == [ConfigurationError]
    assert rec.auths == [None]  # stripped, not sent beside or instead of the user's


async def test_extra_headers_applied_and_reserved_ones_dropped() -> None:
    chain = FakeChain(
        headers={"x-agent-foundry-call-id": "call-7", "Authorization": "x", "host": "evil"}
    )
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        await c.get(f"{MCP}/")
    sent = rec.seen[0].headers
    assert sent["x-agent-foundry-call-id"] == "call-7"
    assert sent["authorization"] == "Bearer user-alice-1"
    assert sent["host"] == "mcp.contoso.com"


@pytest.mark.parametrize("bad", ["tok\r\nX-Injected: 1", "tok en", "tök", ""])
async def test_unsafe_token_values_never_sent(bad: str) -> None:
    rec = Recorder()
    raising = EntraAuth(FakeChain(token_override=bad or None), scopes=SCOPES, origins=[MCP])
    if bad:
        async with client(raising, rec) as c, bind_caller(user_caller("alice")):
            with pytest.raises(UnsafeTokenValue):
                await c.get(f"{MCP}/")
    recording = EntraAuth(
        FakeChain(token_override=bad or None), scopes=SCOPES, origins=[MCP], on_error="record"
    )
    async with client(recording, rec) as c, bind_caller(user_caller("alice")):
        await c.get(f"{MCP}/")
    assert all(a is None or a.startswith("Bearer user-") for a in rec.auths)
    assert all("x-injected" not in r.headers for r in rec.seen)


async def test_use_token_applies_without_acquisition_and_expires_with_its_block() -> None:
    chain = FakeChain()
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    pre = dataclasses.replace(app_result("prefetched"), kind=IdentityKind.USER)
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        with use_token(pre, scopes=SCOPES):
            await c.get(f"{MCP}/")
            gate = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(_wait_then_get(c, gate))  # copies the binding
        gate.set_result(None)
        await task
    assert rec.auths[0] == f"Bearer {pre.token}"
    assert rec.auths[1] != f"Bearer {pre.token}"  # the copied binding is switched off
    assert chain.calls == [("alice", None)]


async def test_use_token_other_scopes_or_caller_ignored() -> None:
    chain = FakeChain()
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    pre = app_result("other-api-token")
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        with use_token(pre, scopes=["api://other/.default"]):
            await c.get(f"{MCP}/")
    assert rec.auths == ["Bearer user-alice-1"]
    with pytest.raises(ConfigurationError):
        use_token(chain._make(user_caller("x"), None), scopes=SCOPES)  # no active caller


async def test_prefetch_resolves_in_the_task_then_applies() -> None:
    chain = FakeChain()
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
    async with client(auth, rec) as c, bind_caller(user_caller("alice")):
        async with auth.prefetch() as result:
            await c.get(f"{MCP}/a")
            await c.get(f"{MCP}/b")
        assert result is not None
    assert rec.auths == [f"Bearer {result.token}"] * 2
    assert len(chain.calls) == 1
    chain.error = ConsentRequired("consent needed", link=None)
    with bind_caller(user_caller("carol")), pytest.raises(ConsentRequired):
        async with auth.prefetch():
            pass  # errors raise here, in the caller's task, whatever on_error says


def test_prefetch_is_also_a_sync_context_manager() -> None:
    # One name for both: ``with auth.prefetch()`` in sync code (there is no prefetch_async).
    chain = FakeChain()
    rec = Recorder()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
    assert not hasattr(auth, "prefetch_async")
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as c:
        auth.install(c)
        with bind_caller(user_caller("alice")), auth.prefetch() as result:
            c.get(f"{MCP}/a")
            c.get(f"{MCP}/b")
    assert result is not None
    assert rec.auths == [f"Bearer {result.token}"] * 2
    assert len(chain.calls) == 1
    chain.error = ConsentRequired("consent needed", link=None)
    with bind_caller(user_caller("carol")), pytest.raises(ConsentRequired), auth.prefetch():
        pass  # raises here, whatever on_error says


def test_sync_client_flow() -> None:
    chain = FakeChain()
    rec = Recorder(
        lambda r: (
            httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
            if r.headers.get("authorization") == "Bearer user-alice-1"
            else httpx2.Response(200)
        )
    )
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as c:
        auth.install(c)
        with bind_caller(user_caller("alice")):
            assert c.get(f"{MCP}/").status_code == 200
        chain.lifecycle = app_result()
        c.get(f"{MCP}/")
    assert rec.auths == ["Bearer user-alice-1", "Bearer user-alice-2", "Bearer app-token"]


def test_unsigned_jwt_helper_is_decodable() -> None:
    caller = user_caller("zed")
    assert caller.claims is not None
    assert caller.claims.oid == "zed"
    assert unsigned_jwt(oid="x").count(".") == 2


async def test_retry_acquisition_failure_recorded_and_401_returned() -> None:
    class FailsSecondTime(FakeChain):
        async def get_token_async(self, scopes: object, **kw: object) -> object:
            if self.calls:
                self.calls.append(("again", None))
                raise ConsentRequired("claims need the user", link=None)
            return await super().get_token_async(scopes, **kw)  # type: ignore[arg-type]

    challenge = 'Bearer error="invalid_token"'
    rec = Recorder(lambda r: httpx2.Response(401, headers={"www-authenticate": challenge}))
    recording = EntraAuth(FailsSecondTime(), scopes=SCOPES, origins=[MCP], on_error="record")
    async with client(recording, rec) as c, bind_caller(user_caller("alice")) as caller:
        response = await c.get(f"{MCP}/")
        assert [type(e) for e in caller.take_errors()] == [ConsentRequired]
    assert response.status_code == 401
    assert len(rec.seen) == 1
    raising = EntraAuth(FailsSecondTime(), scopes=SCOPES, origins=[MCP])
    async with client(raising, rec) as c, bind_caller(user_caller("alice")):
        with pytest.raises(ConsentRequired):
            await c.get(f"{MCP}/")


@dataclass
class JunkResult(FakeChain):
    """From acquisition number ``junk_from`` on, the "result" is not a TokenResult at all (a
    broken custom chain): the flow itself raises instead of returning an error ``Outcome``."""

    junk_from: int = 1

    def _make(self, caller: Caller | None, claims: str | None) -> TokenResult:
        result = super()._make(caller, claims)
        return result if len(self.calls) < self.junk_from else object()  # type: ignore[return-value]


def test_record_mode_contains_an_error_escaping_the_flow_sync_and_async() -> None:
    # Before the first send: the request goes out bare, once (sync driver).
    rec = Recorder()
    auth = EntraAuth(JunkResult(), scopes=SCOPES, origins=[MCP], on_error="record")
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as c:
        auth.install(c)
        with bind_caller(user_caller("alice")) as caller:
            assert c.get(f"{MCP}/").status_code == 200
            assert [type(e) for e in caller.take_errors()] == [AttributeError]
    assert rec.auths == [None]

    # After the first send (the retry's result is junk): the 401 comes back, nothing is
    # resent (async driver).
    async def run_async() -> tuple[int, list[BaseException]]:
        chain = JunkResult(junk_from=2)
        auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
        async with client(auth, rec) as c, bind_caller(user_caller("alice")) as caller:
            status = (await c.get(f"{MCP}/")).status_code
            return status, caller.take_errors()

    rec = Recorder(
        lambda r: httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
    )
    status, errors = asyncio.run(run_async())
    assert status == 401
    assert [type(e) for e in errors] == [AttributeError]
    assert rec.auths == ["Bearer user-alice-1"]
