"""The consent callback's store writes after the code was redeemed (the platform user's binding,
the grant) over a real redis-server that stalls (``DEBUG SLEEP``), dies, or loses a write's
answer. A Redis timeout does not mean "not written": Redis runs the command when it wakes. So
the page never says "Nothing was stored" then: a bounded re-read that finds the grant shows the
signed-in page (sign-out form, reload recognised); otherwise 503 ``store_outcome_unknown`` says
it may have been saved (JSON ``stored: null``), with the sign-out form. A failure before those
writes (the state's used-marker) keeps the "Nothing was stored" page."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from _support.consent import (
    ConsentEnv,
    consent_link,
    form_post_fields,
    platform_caller,
    revoke_ticket,
)
from entra_passthrough import ConsentRequired, SourceUnavailable, TokenRequest, UserKey
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer, free_port

TIMEOUT = 0.5  # the store's command timeout: a stalled write fails after ~2x (one retry)
GRANT, BINDING, USED = "ep:v2:grant:", "ep:v2:bind:", "ep:v1:used:"


@dataclass
class DebugRedis(RedisServer):
    """A redis-server that takes ``DEBUG SLEEP`` (a stall, as in a fork or a swap storm)."""

    def args(self) -> list[str]:
        return [*super().args(), "--enable-debug-command", "local"]

    def stall(self, seconds: float) -> threading.Thread:
        """``DEBUG SLEEP seconds`` from a thread of its own (Redis answers nothing meanwhile)."""

        def sleep() -> None:
            client = self.client()
            client.connection_pool.connection_kwargs["socket_timeout"] = seconds + 10
            try:
                client.execute_command("DEBUG", "SLEEP", seconds)
            finally:
                client.close()

        thread = threading.Thread(target=sleep, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def debug_redis() -> Iterator[DebugRedis]:
    server = DebugRedis().start()
    yield server
    server.stop()


@dataclass
class Flow:
    env: ConsentEnv
    server: DebugRedis
    store: RedisStore
    source: DelegatedConsent
    broker: ConsentBroker
    request: TokenRequest
    key_hash: str
    upn: str
    tid: str
    oid: str
    failures: list[BaseException]  # what the hooked store write raised
    stalls: list[threading.Thread]
    links: list[str] = field(default_factory=list)  # the consent links followed

    def on_put(
        self, prefix: str, hook: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    ) -> None:
        """Run the broker's first store write of a key starting with ``prefix`` through
        ``hook(write)``; what it raises is recorded in ``failures``."""
        original = self.store.put

        async def put(key: str, value: bytes, **kwargs: Any) -> Any:
            if not key.startswith(prefix):
                return await original(key, value, **kwargs)
            self.store.put = original  # type: ignore[method-assign]
            try:
                return await hook(lambda: original(key, value, **kwargs))
            except Exception as exc:
                self.failures.append(exc)
                raise

        self.store.put = put  # type: ignore[method-assign]

    def stall_at(self, prefix: str, seconds: float) -> None:
        """Redis stalls for ``seconds`` just as the broker sends the write."""

        async def hook(write: Callable[[], Awaitable[Any]]) -> Any:
            self.stalls.append(self.server.stall(seconds))
            await asyncio.sleep(0.2)  # DEBUG SLEEP is running before the write is sent
            return await write()

        self.on_put(prefix, hook)

    def wait_for_redis(self) -> None:
        for thread in self.stalls:
            thread.join(timeout=30)
            assert not thread.is_alive()

    async def sign_in(
        self, browser: httpx2.AsyncClient, *, accept: str | None = None, link: str | None = None
    ) -> tuple[httpx2.Response, str, dict[str, str]]:
        """Follow a consent link (a new one unless given) through to the broker's answer:
        (page, action, fields)."""
        link = link or await consent_link(self.source, self.env, self.request.caller)
        self.links.append(link)
        page = await browser.get(link)
        action, fields = form_post_fields(page)
        headers = {"accept": accept} if accept else None
        return await browser.post(action, data=fields, headers=headers), action, fields

    async def grant(self) -> Any:
        found = await self.broker.grants.get_grant(self.key_hash)
        return None if found is None else found[0]

    async def served_oid(self) -> str:
        token = await self.source.get_token_async(self.request)
        assert token is not None
        async with self.env.browser() as client:
            who = await client.get(
                f"https://127.0.0.1:{self.env.port}/whoami",
                headers={"authorization": f"Bearer {token.token}"},
            )
        return str(who.json()["oid"])


@pytest.fixture
async def flow(consent_env: ConsentEnv, debug_redis: DebugRedis) -> AsyncIterator[Flow]:
    env = consent_env
    store = RedisStore.from_url(debug_redis.url, namespace=f"w{free_port()}:", timeout=TIMEOUT)
    source, broker = env.make(store=store, keyring=Keyring.generate())  # type: ignore[arg-type]
    user = env.idp.users["quinn"]
    caller = platform_caller(f"chat-write-outcome-{free_port()}", upn=user.upn)
    key = UserKey.from_caller(caller)
    assert key is not None
    stalls: list[threading.Thread] = []
    try:
        yield Flow(
            env=env,
            server=debug_redis,
            store=store,
            source=source,
            broker=broker,
            request=TokenRequest(scopes=(env.mcp_scope,), caller=caller),
            key_hash=key.hashed,
            upn=user.upn,
            tid=user.tenant_id,
            oid=user.oid,
            failures=[],
            stalls=stalls,
        )
    finally:
        for thread in stalls:  # Redis wakes before it is stopped (a test that failed early)
            thread.join(timeout=30)
        await store.aclose()


def text_of(page: httpx2.Response) -> str:
    body = re.sub(r"<style>.*?</style>", "", page.text, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()


def assert_outcome_unknown_page(page: httpx2.Response) -> None:
    text = text_of(page)
    assert page.status_code == 503, text
    assert "Nothing was stored" not in text
    assert "store_outcome_unknown" in text
    assert "may have been saved" in text
    assert "sign out below" in text
    assert revoke_ticket(page.text)  # the sign-out form, as on the success page
    assert page.headers["cache-control"] == "no-store"


async def test_a_grant_redis_writes_after_the_timeout_shows_the_signed_in_page(
    flow: Flow,
) -> None:
    """Redis stalls as the grant is written: the write times out (both tries), Redis wakes
    during the re-read and has run it: the user is signed in, and is told so."""
    flow.stall_at(GRANT, 1.8)
    async with flow.env.browser() as browser:
        page, action, fields = await flow.sign_in(browser)
        flow.wait_for_redis()
        assert [type(e) for e in flow.failures] == [SourceUnavailable]  # the write timed out
        text = text_of(page)
        assert page.status_code == 200, text
        assert "You are signed in" in text
        assert flow.upn in text
        assert "Nothing was stored" not in text
        assert revoke_ticket(page.text)
        # As any success: the completion record and cookie make a reload "already signed in".
        again = await browser.post(action, data=fields)
        assert again.status_code == 200, text_of(again)
        assert "You are already signed in" in text_of(again)
    assert await flow.served_oid() == flow.oid


async def test_a_grant_write_still_unanswered_says_it_may_have_been_saved(flow: Flow) -> None:
    """Redis stays asleep through the re-read: 503 store_outcome_unknown, never "Nothing was
    stored": once Redis wakes the grant is there and the agent serves the user; the page's
    sign-out form removes it."""
    flow.stall_at(GRANT, 3.5)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser)
        assert_outcome_unknown_page(page)
        assert flow.failures
        flow.wait_for_redis()
        assert await flow.grant() is not None  # it was saved after all
        assert await flow.served_oid() == flow.oid
        revoked = await browser.post(
            f"{flow.env.base}/revoke",
            data={"t": revoke_ticket(page.text)},
            follow_redirects=False,
        )
        assert revoked.status_code == 303, revoked.text
    assert await flow.grant() is None
    with pytest.raises(ConsentRequired):
        await flow.source.get_token_async(flow.request)


@pytest.mark.parametrize("case", ["applied", "applied-then-refreshed", "not-applied"])
async def test_a_grant_write_whose_answer_was_lost(flow: Flow, case: str) -> None:
    """The write's answer is lost (Redis ran it, or not; the store raises either way): the
    re-read decides, Redis answering. Applied: signed in (also when a replica's refresh
    rotated its refresh token meanwhile); not applied: 503 with ``stored: null`` in JSON (the
    broker cannot know it will not run later), never ``false``."""
    written: list[str] = []

    async def hook(write: Callable[[], Awaitable[Any]]) -> Any:
        if case != "not-applied":
            await write()
            written.append((await flow.grant()).refresh_token)
        if case == "applied-then-refreshed":
            await flow.source.get_token_async(flow.request)  # rotates the refresh token
            rotated = (await flow.grant()).refresh_token
            assert rotated != written[0]
        raise SourceUnavailable("The shared token store is unavailable: no answer in time.")

    flow.on_put(GRANT, hook)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser, accept="application/json")
    assert flow.failures
    if case != "not-applied":
        assert page.status_code == 200, page.text
        assert page.json() == {"status": "ok", "user": flow.upn}
        assert await flow.served_oid() == flow.oid
        return
    assert page.status_code == 503, page.text
    body = page.json()
    assert body["error"] == "store_outcome_unknown"
    assert body["stored"] is None
    assert "may have been saved" in body["error_description"]
    assert "sign-out link" in body["next_step"]
    assert await flow.grant() is None


async def test_an_earlier_grant_found_by_the_re_read_is_not_this_sign_in(flow: Flow) -> None:
    """The user consented before; this sign-in's grant write is lost (not run): the re-read
    finds the earlier grant, which is not this write: 503 ``store_outcome_unknown``, not the
    signed-in page."""
    async with flow.env.browser() as browser:
        first, _, _ = await flow.sign_in(browser)
    assert first.status_code == 200, text_of(first)
    earlier = await flow.grant()
    assert earlier is not None

    async def hook(write: Callable[[], Awaitable[Any]]) -> Any:
        raise SourceUnavailable("The shared token store is unavailable: no answer in time.")

    flow.on_put(GRANT, hook)
    async with flow.env.browser() as browser:  # the same link again (it is still valid)
        page, _, _ = await flow.sign_in(browser, link=flow.links[0])
    assert flow.failures
    assert_outcome_unknown_page(page)
    still = await flow.grant()
    assert still is not None
    assert still.created == earlier.created


async def test_a_grant_write_to_a_dead_redis_is_not_called_nothing_stored(flow: Flow) -> None:
    """Redis dies as the grant is written (the re-read fails too): the honest 503; after a
    restart the grant is indeed absent and a new sign-in works."""

    async def hook(write: Callable[[], Awaitable[Any]]) -> Any:
        flow.server.kill()
        return await write()

    flow.on_put(GRANT, hook)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser)
    assert_outcome_unknown_page(page)
    flow.server.start()  # same port, same data (append-only file)
    assert await flow.grant() is None
    async with flow.env.browser() as browser:
        again, _, _ = await flow.sign_in(browser)
    assert again.status_code == 200, text_of(again)
    assert await flow.served_oid() == flow.oid


async def test_a_binding_written_during_a_stall_is_not_called_nothing_stored(
    flow: Flow,
) -> None:
    """Redis stalls as the platform user's binding is written: the grant was never written,
    but the binding was (Redis ran it on waking): the same honest 503, not "Nothing was
    stored". The binding is this account's, so the next sign-in completes."""
    flow.stall_at(BINDING, 2.0)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser)
    assert_outcome_unknown_page(page)
    flow.wait_for_redis()
    assert await flow.broker.grants.get_binding(flow.key_hash) == (flow.tid, flow.oid)
    assert await flow.grant() is None
    async with flow.env.browser() as browser:
        again, _, _ = await flow.sign_in(browser)
    assert again.status_code == 200, text_of(again)
    assert await flow.served_oid() == flow.oid


async def test_a_failure_before_the_writes_still_says_nothing_was_stored(flow: Flow) -> None:
    """Redis stalls at the state's used-marker, before the code is redeemed: nothing of the
    sign-in was stored, and the page (unchanged) says so; JSON ``stored: false``."""
    flow.stall_at(USED, 2.0)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser, accept="application/json")
    flow.wait_for_redis()
    assert page.status_code == 503, page.text
    body = page.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["stored"] is False
    assert await flow.grant() is None
    assert await flow.broker.grants.get_binding(flow.key_hash) is None
    flow.stall_at(USED, 2.0)
    async with flow.env.browser() as browser:
        page, _, _ = await flow.sign_in(browser)
    flow.wait_for_redis()
    text = text_of(page)
    assert page.status_code == 503, text
    assert "Nothing was stored" in text
    assert "store_outcome_unknown" not in text


@pytest.mark.parametrize(
    ("refusal", "error", "stored"),
    [("full", "store_refused", False), ("credentials", "store_outcome_unknown", None)],
)
async def test_a_grant_write_the_store_refused_says_it_was_not_saved(
    flow: Flow, refusal: str, error: str, stored: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answers the grant write with a refusal. Full (noeviction): the re-read works and
    does not find the grant, so the page says the sign-in was not saved (not "may have been
    saved"). The password changed and the connections dropped: the re-read is refused too, and
    a refusal may answer a resend of a write whose first reply was lost, so the outcome is
    unknown (and the page says so, with a sign-out form). Either way the operator's log says
    why in the store's words, never "did not answer in time"."""
    admin = flow.server.client()

    async def hook(write: Callable[[], Awaitable[Any]]) -> Any:
        if refusal == "full":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
        else:
            admin.config_set("requirepass", "another-password-0123")
            admin.client_kill_filter(_type="normal", skipme=True)
        return await write()

    flow.on_put(GRANT, hook)
    caplog.set_level(logging.WARNING, logger="entra_passthrough")
    try:
        async with flow.env.browser() as browser:
            page, _, _ = await flow.sign_in(browser, accept="application/json")
    finally:
        if refusal == "full":
            admin.config_set("maxmemory", 0)
        else:
            admin.config_set("requirepass", PASSWORD)
        admin.close()
    assert page.status_code == 503, page.text
    answer = page.json()
    assert answer["error"] == error, answer
    assert answer["stored"] is stored
    if stored is False:
        assert "was not saved" in answer["error_description"]
    assert "did not answer" not in page.text
    said = "Redis is full" if refusal == "full" else "Redis refused our credentials"
    assert any(said in r.getMessage() for r in caplog.records), caplog.text
    assert await flow.grant() is None  # indeed not saved
