"""A user's work whose caller has ended never goes on as the app; sources that lie about their
kind or hand out expired tokens are refused; a client shared by users keeps no one's cookies.

Real components: the Entra emulator over HTTPS, real MSAL on-behalf-of and managed identity, a
real uvicorn server recording whom each request's token names.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from _support.servers import serve_in_thread
from entra_passthrough import (
    AssertionExpired,
    Caller,
    EntraAuth,
    IdentityKind,
    NoCallerError,
    Policy,
    PolicyViolation,
    TokenAcquisitionError,
    TokenChain,
    TokenResult,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_mi, make_obo, mcp_scope


class _Recorder:
    """An ASGI app that records the oid of each request's bearer (None: no token) and sets a
    cookie naming it, as an API with a session cookie would."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode()
        oid = decode(auth[7:]).get("oid") if auth.startswith("Bearer ") else None
        cookie = headers.get(b"cookie", b"").decode() or None
        self.seen.append((scope["path"], oid, cookie))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"set-cookie", f"session=for-{oid}; Path=/".encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def api() -> Iterator[tuple[str, _Recorder]]:
    recorder = _Recorder()
    with serve_in_thread(recorder, lifespan="off") as url:
        yield url, recorder


def _chain(idp: EntraEmulator, policy: Policy, **kw: Any) -> TokenChain:
    return TokenChain([make_obo(idp), make_mi(idp)], policy=policy, **kw)


async def test_a_bound_run_past_its_tokens_expiry_is_refused_never_the_app(
    idp: EntraEmulator, api: tuple[str, _Recorder]
) -> None:
    url, recorder = api
    scopes = mcp_scope(idp)
    expired = idp.user_token("alice", audience=idp.agent.client_id, lifetime=-120)
    for policy, extra in ((Policy.USER_OR_APP, {}), (Policy.USER_ONLY, {"lifecycle_app": True})):
        chain = _chain(idp, policy, **extra)
        try:
            with bind_caller(token=expired):
                with pytest.raises(AssertionExpired):
                    await chain.get_token_async(scopes)
                with pytest.raises(AssertionExpired):
                    chain.get_token(scopes)
                auth = EntraAuth(chain, scopes=scopes, origins=[url])
                async with httpx2.AsyncClient(auth=auth) as client:
                    with pytest.raises(AssertionExpired):
                        await client.get(f"{url}/async")
                with httpx2.Client(auth=auth) as sync_client, pytest.raises(AssertionExpired):
                    sync_client.get(f"{url}/sync")
        finally:
            chain.close()
    assert recorder.seen == []  # nothing went out, as the app or otherwise


async def test_a_run_whose_token_expires_mid_run_does_not_go_on_as_the_app(
    idp: EntraEmulator,
) -> None:
    scopes = mcp_scope(idp)
    chain = _chain(idp, Policy.USER_OR_APP)
    short = idp.user_token("alice", audience=idp.agent.client_id, lifetime=2)
    try:
        with bind_caller(token=short):
            first = await chain.get_token_async(scopes)
            assert first.kind is IdentityKind.USER
            await asyncio.sleep(max(0.0, decode(short)["exp"] - time.time()) + 0.2)
            with pytest.raises(AssertionExpired):
                await chain.get_token_async(scopes)
    finally:
        chain.close()


async def test_a_task_that_outlives_its_callers_request_is_refused_unless_it_is_a_connection(
    idp: EntraEmulator, api: tuple[str, _Recorder]
) -> None:
    url, recorder = api
    scopes = mcp_scope(idp)
    chain = _chain(idp, Policy.USER_OR_APP)
    plain = EntraAuth(chain, scopes=scopes, origins=[url])
    connection = EntraAuth(chain, scopes=scopes, origins=[url], connection=True)
    token = idp.user_token("alice", audience=idp.agent.client_id)
    gate = asyncio.Event()

    async def later(auth: EntraAuth, path: str) -> BaseException | None:
        await gate.wait()
        async with httpx2.AsyncClient(auth=auth) as client:
            try:
                await client.get(f"{url}{path}")
            except Exception as exc:
                return exc
        return None

    try:
        caller = Caller.from_token(token)
        with bind_caller(caller):  # the request: tasks started in it copy its context
            work = asyncio.create_task(later(plain, "/work"))
            lifecycle = asyncio.create_task(later(connection, "/lifecycle"))
        assert not caller.active  # the request ended; the tasks go on
        gate.set()
        refused, connected = await asyncio.gather(work, lifecycle)
    finally:
        chain.close()
    assert isinstance(refused, NoCallerError)
    assert connected is None
    # The user's work sent nothing; the connection's lifetime request went as the app.
    assert [(path, oid) for path, oid, _ in recorder.seen] == [
        ("/lifecycle", idp.managed_identity.object_id)
    ]


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_a_caller_that_ends_while_its_token_is_acquired_does_not_get_it(
    idp: EntraEmulator, api: tuple[str, _Recorder], driver: str
) -> None:
    """Work that outlives its request whose token request was already out when the request
    ended: it gets what work started after the end gets (refused), never the token acquired
    while the request was alive (it was sent ~1 s after the user's request had ended)."""
    url, recorder = api
    scopes = mcp_scope(idp)
    chain = _chain(idp, Policy.USER_OR_APP)
    auth = EntraAuth(chain, scopes=scopes, origins=[url])
    token = idp.user_token("alice", audience=idp.agent.client_id)
    with bind_caller(token=idp.user_token("bob", audience=idp.agent.client_id)):
        await chain.get_token_async(scopes)  # discovery and the app's metadata, warm
    idp.token_latency = 1.0  # the token request is still out when the request ends

    async def work() -> BaseException | None:
        try:
            if driver == "async":
                async with httpx2.AsyncClient(auth=auth) as client:
                    await client.get(f"{url}/work")
            else:

                def blocking() -> None:
                    with httpx2.Client(auth=auth) as client:
                        client.get(f"{url}/work")

                await asyncio.to_thread(blocking)  # (copies the context, as a thread would)
        except Exception as exc:
            return exc
        return None

    try:
        caller = Caller.from_token(token)
        with bind_caller(caller):  # the request: the task copies its context
            task = asyncio.create_task(work())
            for _ in range(600):  # its token request is out (Entra answers it in 1 s)
                if idp.in_flight() or task.done():
                    break
                await asyncio.sleep(0.02)
        assert not caller.active  # the request ended; the task's token request is out
        posts = idp.stats()["grants"].get("on_behalf_of", 0)
        outcome = await task
    finally:
        chain.close()
    assert isinstance(outcome, NoCallerError), outcome
    assert [path for path, _, _ in recorder.seen] == []  # nothing was sent as alice
    assert idp.stats()["grants"].get("on_behalf_of", 0) == posts + 1  # it was out: answered


async def test_app_only_still_serves_the_app_after_the_caller_ended(idp: EntraEmulator) -> None:
    chain = TokenChain([make_mi(idp)], policy=Policy.APP_ONLY)
    expired = idp.user_token("alice", audience=idp.agent.client_id, lifetime=-60)
    try:
        with bind_caller(token=expired):
            result = await chain.get_token_async(mcp_scope(idp))
    finally:
        chain.close()
    assert result.kind is IdentityKind.APP


class _Lying:
    """Declares one kind, answers with another."""

    name = "liar"

    def __init__(self, declared: IdentityKind, answers: IdentityKind) -> None:
        self.kind = declared
        self._answers = answers
        self.calls = 0

    def cache_partition(self, request: Any) -> tuple[str, ...]:
        return ("one",)

    def get_token(self, request: Any) -> TokenResult:
        self.calls += 1
        return TokenResult(
            token=f"t{self.calls}", expires_on=time.time() + 3600, kind=self._answers, source="liar"
        )

    async def get_token_async(self, request: Any) -> TokenResult:
        return self.get_token(request)


@pytest.mark.parametrize(
    ("declared", "answers"),
    [(IdentityKind.USER, IdentityKind.APP), (IdentityKind.APP, IdentityKind.USER)],
)
async def test_a_source_answering_with_a_kind_it_did_not_declare_is_refused(
    declared: IdentityKind, answers: IdentityKind
) -> None:
    # user_or_app allows both kinds, so only the declaration can catch it.
    source = _Lying(declared, answers)
    chain = TokenChain([source], policy=Policy.USER_OR_APP)  # type: ignore[list-item]
    with bind_caller(Caller(user_id="platform-user")), pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(["api://x/.default"])
    assert f"returned kind {answers.value}, declared {declared.value}" in str(info.value)
    with bind_caller(Caller(user_id="platform-user")), pytest.raises(PolicyViolation):
        chain.get_token(["api://x/.default"])


async def test_an_expired_token_from_a_source_is_refused_not_sent(
    api: tuple[str, _Recorder],
) -> None:
    url, recorder = api

    class Stale:
        name = "stale"
        kind = IdentityKind.APP

        def cache_partition(self, request: Any) -> tuple[str, ...]:
            return ("app",)

        def get_token(self, request: Any) -> TokenResult:
            return TokenResult(
                token="stale-token", expires_on=time.time() - 600, kind=self.kind, source="stale"
            )

        async def get_token_async(self, request: Any) -> TokenResult:
            return self.get_token(request)

    chain = TokenChain([Stale()], policy=Policy.APP_ONLY)  # type: ignore[list-item]
    with pytest.raises(TokenAcquisitionError, match="already expired"):
        await chain.get_token_async(["api://x/.default"])
    auth = EntraAuth(chain, scopes=["api://x/.default"], origins=[url])
    async with httpx2.AsyncClient(auth=auth) as client:
        with pytest.raises(TokenAcquisitionError, match="already expired"):
            await client.get(f"{url}/")
    assert recorder.seen == []


async def test_a_client_shared_by_users_never_sends_one_users_cookie_for_another(
    idp: EntraEmulator, api: tuple[str, _Recorder]
) -> None:
    url, recorder = api
    scopes = mcp_scope(idp)
    chain = TokenChain([make_obo(idp)])
    auth = EntraAuth(chain, scopes=scopes, origins=[url])
    try:
        async with httpx2.AsyncClient(cookies={"affinity": "given"}) as client:
            auth.install(client)
            for name in ("alice", "bob"):
                token = idp.user_token(name, audience=idp.agent.client_id)
                with bind_caller(token=token):
                    await client.get(f"{url}/{name}")
    finally:
        chain.close()
    (_, alice, alice_cookie), (_, bob, bob_cookie) = recorder.seen
    assert alice == idp.users["alice"].oid
    assert bob == idp.users["bob"].oid
    # The cookie the client was given still goes out; the one alice's answer set does not.
    assert alice_cookie == bob_cookie == "affinity=given"


async def test_an_ended_platform_identified_caller_never_takes_lifecycle_apps_allowance(
    idp: EntraEmulator, api: tuple[str, _Recorder]
) -> None:
    """A user known only by the platform's id (no bearer) whose request ended: under user_only
    with lifecycle_app=True (set for MCP connections) their work is refused, not sent as the
    app; the connection's own requests still get the app."""
    url, recorder = api
    scopes = mcp_scope(idp)
    chain = TokenChain([make_mi(idp)], policy=Policy.USER_ONLY, lifecycle_app=True)
    plain = EntraAuth(chain, scopes=scopes, origins=[url])
    recording = EntraAuth(chain, scopes=scopes, origins=[url], on_error="record")
    connection = EntraAuth(chain, scopes=scopes, origins=[url], connection=True)
    caller = Caller(user_id="alice-platform-id")
    try:
        with bind_caller(caller):
            pass  # the request ended; what follows runs in its context
        caller_var_token = _bind_ended(caller)
        try:
            with pytest.raises(NoCallerError):
                await chain.get_token_async(scopes)
            assert chain.cached_token(tuple(scopes), caller=caller) is None
            async with httpx2.AsyncClient(auth=plain) as client:
                with pytest.raises(NoCallerError):
                    await client.get(f"{url}/work")
            async with httpx2.AsyncClient(auth=recording) as client:
                await client.get(f"{url}/recorded")  # sent with no token, error on the caller
            assert [type(e) for e in caller.take_errors()] == [NoCallerError]
            assert recording.take_errors() == []
            async with httpx2.AsyncClient(auth=connection) as client:
                await client.get(f"{url}/lifecycle")
        finally:
            _unbind(caller_var_token)
    finally:
        chain.close()
    assert [(path, oid) for path, oid, _ in recorder.seen] == [
        ("/recorded", None),
        ("/lifecycle", idp.managed_identity.object_id),
    ]


async def test_cached_token_never_answers_for_an_ended_caller(idp: EntraEmulator) -> None:
    scopes = mcp_scope(idp)
    chain = TokenChain([make_obo(idp), make_mi(idp)], policy=Policy.USER_OR_APP)
    try:
        assert (await chain.lifecycle_token_async(scopes)) is not None  # the app entry is warm
        caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
        caller.end()
        assert chain.cached_token(tuple(scopes), caller=caller) is None
        with pytest.raises(NoCallerError):
            await chain.get_token_async(scopes, caller=caller)
    finally:
        chain.close()


def _bind_ended(caller: Caller) -> Any:
    from entra_passthrough._caller import caller_var

    caller.end()
    return caller_var.set(caller)


def _unbind(token: Any) -> None:
    from entra_passthrough._caller import caller_var

    caller_var.reset(token)


class _LateRefusal:
    """An API that answers every request with 401 invalid_token, after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        self.seen.append(decode(auth[7:]).get("oid") if auth.startswith("Bearer ") else None)
        await asyncio.sleep(self.delay)
        challenge = (b"www-authenticate", b'Bearer error="invalid_token"')
        await send({"type": "http.response.start", "status": 401, "headers": [challenge]})
        await send({"type": "http.response.body", "body": b""})


async def test_a_401_after_the_callers_token_expired_mid_request_is_that_typed_error(
    idp: EntraEmulator,
) -> None:
    """The request went out as the user; the run passed its token's expiry while it was out and
    the resource then refused the token: the 401 is not retried as anyone, and the caller's work
    gets ``AssertionExpired`` (raised, or recorded on the caller), not a bare 401."""
    scopes = mcp_scope(idp)
    api = _LateRefusal(delay=0.0)
    chain = _chain(idp, Policy.USER_OR_APP)
    try:
        with serve_in_thread(api, lifespan="off") as url:
            for mode in ("raise", "record"):
                short = idp.user_token("alice", audience=idp.agent.client_id, lifetime=3)
                api.delay = max(0.0, decode(short)["exp"] - time.time()) + 0.5
                auth = EntraAuth(chain, scopes=scopes, origins=[url], on_error=mode)  # type: ignore[arg-type]
                with bind_caller(token=short) as caller:
                    async with httpx2.AsyncClient(auth=auth, timeout=30) as client:
                        if mode == "raise":
                            with pytest.raises(AssertionExpired):
                                await client.get(f"{url}/late")
                        else:
                            response = await client.get(f"{url}/late")
                            assert response.status_code == 401
                            assert [type(e) for e in caller.take_errors()] == [AssertionExpired]
    finally:
        chain.close()
    alice = idp.users["alice"].oid
    assert api.seen == [alice, alice]  # one request each, as the user; no retry, never the app


class _SlowRedirect:
    """An API whose ``/start`` answers, once ``release`` is set, a 307 to ``/work`` on the same
    origin; every request's bearer oid is recorded with its path."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[tuple[str, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        bearer = dict(scope["headers"]).get(b"authorization", b"").decode()
        oid = decode(bearer[7:]).get("oid") if bearer.startswith("Bearer ") else None
        self.seen.append((scope["path"], oid))
        if scope["path"] == "/start":
            await asyncio.to_thread(self.release.wait, 30)  # (a safety net only)
            start = {"type": "http.response.start", "status": 307}
            await send({**start, "headers": [(b"location", b"/work")]})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_a_redirect_answered_after_the_caller_ended_carries_no_token(
    idp: EntraEmulator, driver: str
) -> None:
    """A same-origin redirect the client follows after the user's request ended: the client
    copies the first hop's Authorization onto it below the auth flow; ``install()``'s request
    hook takes it off (it went out with the user's token)."""
    api = _SlowRedirect()
    scopes = mcp_scope(idp)
    chain = _chain(idp, Policy.USER_ONLY)
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    with serve_in_thread(api, lifespan="off") as url:
        auth = EntraAuth(chain, scopes=scopes, origins=[url])

        async def work() -> None:
            try:
                if driver == "async":
                    async with httpx2.AsyncClient(follow_redirects=True) as client:
                        auth.install(client)
                        await client.get(f"{url}/start")
                else:

                    def blocking() -> None:
                        with httpx2.Client(follow_redirects=True) as client:
                            auth.install(client)
                            client.get(f"{url}/start")

                    await asyncio.to_thread(blocking)
            except NoCallerError:
                pass  # the hop was refused before it went out: as good as sent without token

        try:
            with bind_caller(caller):  # the request: the task copies its context
                task = asyncio.create_task(work())
                # /start is out (its 307 waits for ``release``): polled, not a fixed sleep,
                # which a loaded machine outlasted (the caller ended before /start went out)
                for _ in range(600):
                    if api.seen or task.done():
                        break
                    await asyncio.sleep(0.05)
            assert not caller.active
            api.release.set()
            await task
        finally:
            api.release.set()
            chain.close()
    alice = idp.users["alice"].oid
    assert api.seen[0] == ("/start", alice)
    assert api.seen[1:] in ([], [("/work", None)])  # never alice's token after the end


async def test_an_apps_token_is_kept_for_work_whose_caller_ended(
    idp: EntraEmulator, api: tuple[str, _Recorder]
) -> None:
    """``install()``'s hook takes a user's token off a hop made after that user's caller ended,
    never the app's token the flow chose for such work under ``app_only`` (it took it off every
    request of such work, first hops included)."""
    url, recorder = api
    scopes = mcp_scope(idp)
    chain = TokenChain([make_mi(idp)], policy=Policy.APP_ONLY)
    auth = EntraAuth(chain, scopes=scopes, origins=[url])
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    try:
        with bind_caller(caller):
            pass  # the request ended; its context (copied by the work) still holds the caller

        async def work() -> None:
            async with httpx2.AsyncClient() as client:
                auth.install(client)
                await client.get(f"{url}/work")

        token = _bind_ended(caller)
        try:
            await work()
        finally:
            _unbind(token)
    finally:
        chain.close()
    assert [(path, oid) for path, oid, _ in recorder.seen] == [
        ("/work", idp.managed_identity.object_id)
    ]
