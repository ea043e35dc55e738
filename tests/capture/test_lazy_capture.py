"""``Caller.from_headers`` reads the headers on first use of what they carry: a request whose
handler never asks pays no header scan, and what the Caller holds is what the request carried
when it arrived (a copy), whatever an inner middleware does to the header list afterwards."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from entra_passthrough import Caller, CallerMiddleware, current_caller

TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig"


def _serve(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(CallerMiddleware(app)({"type": "http", "headers": headers}, receive, send))
    return sent


def test_a_handler_that_never_asks_costs_no_header_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    import entra_passthrough._caller as caller_module

    reads = 0
    real = caller_module.sha256_hex_of

    def counting(data: bytes) -> str:  # the one-header read hashes the bearer it found
        nonlocal reads
        reads += 1
        return real(data)

    monkeypatch.setattr(caller_module, "sha256_hex_of", counting)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        caller = current_caller()
        seen.append(caller is not None and caller.active)  # what a health check asks
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"x-agent-user-id", b"u1")]
    for _ in range(5):
        _serve(app, headers)
    assert seen == [True] * 5
    assert reads == 0

    async def asks(scope: Any, receive: Any, send: Any) -> None:
        caller = current_caller()
        assert caller is not None
        seen.append((caller.assertion, caller.presented, caller.user_id, caller.user_id))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _serve(asks, headers)
    assert seen[-1] == (TOKEN, True, "u1", "u1")
    assert reads == 1  # once, on the first field read


def test_headers_changed_after_capture_are_never_seen() -> None:
    """An inner middleware that rewrites the header list in place (Starlette's
    ``MutableHeaders(scope=scope)`` does) cannot put a token into, or take one out of, the
    Caller captured when the request arrived."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = scope["headers"]
        headers[:] = [(b"authorization", b"Bearer injected.by.middleware")]
        caller = current_caller()
        assert caller is not None
        seen.append((caller.presented, caller.assertion))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _serve(app, [(b"host", b"a")])
    _serve(app, [(b"authorization", f"Bearer {TOKEN}".encode())])
    assert seen == [(False, None), (True, TOKEN)]


def test_unreadable_headers_fail_closed_on_first_use() -> None:
    caller = Caller.from_headers([(b"authorization", 7)])  # type: ignore[list-item]
    assert caller.presented
    assert caller.assertion is None
    assert caller.decode_error == "request headers could not be read"


def test_fields_read_once_then_plain_attributes() -> None:
    caller = Caller.from_headers([(b"authorization", f"Bearer {TOKEN}".encode())])
    assert caller.user_id is None  # the first read fills every header-borne field
    caller.user_id = "set-by-hand"
    assert (caller.assertion, caller.presented, caller.user_id) == (TOKEN, True, "set-by-hand")
    assert caller.errors == []
    copy = caller.copy()
    assert (copy.assertion, copy.presented, copy.user_id) == (TOKEN, True, "set-by-hand")
    assert repr(copy) == repr(caller)
    assert TOKEN not in repr(caller)


def test_a_copy_reads_and_decodes_on_first_use_and_shares_the_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``copy`` (the chain copies the caller of every acquisition, which may outlive the
    request) decodes nothing itself, and the copy and its original decode the claims once
    between them; the copy is ended on its own."""
    import entra_passthrough._caller as caller_module

    real = caller_module.UnverifiedClaims.from_token
    decodes: list[str] = []

    def counting(token: str) -> Any:
        decodes.append(token)
        return real(token)

    monkeypatch.setattr(caller_module.UnverifiedClaims, "from_token", staticmethod(counting))
    caller = Caller.from_headers([(b"authorization", f"Bearer {TOKEN}".encode())])
    copy = caller.copy()
    assert decodes == []
    assert copy.assertion == TOKEN
    assert copy.claims == caller.claims
    assert caller.decode_error is None
    assert copy.decode_error is None
    assert len(decodes) == 1
    copy.end()
    assert caller.active
    assert not copy.active
    assert copy.errors == []
    copy.record(RuntimeError("x"))
    assert caller.errors == []


def test_copies_of_copies_keep_one_original_alive_and_decode_without_recursion() -> None:
    """A background job that re-schedules itself with ``current_caller().copy()``: each copy
    shares the claims decode with the first original only, never a chain of copies kept alive
    one by the next (5,000 generations kept every one alive, and reading the last one's claims
    recursed past Python's limit)."""
    import gc

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Caller) for o in gc.get_objects())

    before = alive()
    caller = Caller.from_headers([(b"authorization", f"Bearer {TOKEN}".encode())])
    for _ in range(2000):
        caller = caller.copy()
    last = caller
    del caller
    assert alive() - before <= 2  # the last copy, and the first original it shares claims with
    assert last.claims == Caller.from_token(TOKEN).claims
    assert last.assertion == TOKEN


def test_a_copy_of_a_subclass_keeps_its_own_fields() -> None:
    from dataclasses import dataclass

    @dataclass(eq=False, slots=True)
    class TenantCaller(Caller):
        region: str | None = None

    class Loose(Caller):  # no slots: its fields live in a __dict__
        pass

    tagged = TenantCaller.from_headers([(b"authorization", f"Bearer {TOKEN}".encode())])
    tagged.region = "us"
    copy = tagged.copy()
    assert type(copy) is TenantCaller
    assert copy.region == "us"
    assert copy.assertion == TOKEN
    loose = Loose.from_token(TOKEN)
    loose.note = "kept"  # type: ignore[attr-defined]
    assert loose.copy().note == "kept"  # type: ignore[attr-defined]


def _read_in_threads(callers: list[Caller], threads: int = 4) -> list[tuple[Any, ...]]:
    import threading

    barrier = threading.Barrier(threads)
    seen: list[tuple[Any, ...]] = []
    errors: list[BaseException] = []

    def read() -> None:
        barrier.wait()
        try:
            for caller in callers:
                seen.append((caller.presented, caller.assertion, caller.user_id))
                seen.append((caller.decode_error, caller.user_id, caller.presented))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    started = [threading.Thread(target=read) for _ in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: every race window open
    try:
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    return seen


def test_threads_reading_one_caller_at_once_all_see_the_headers() -> None:
    """The first read may happen in two threads at once (a sync tool in a worker beside the
    loop): each sees the filled fields, none an unset one (a thread that found a field unset
    while another was filling it once raised ``AttributeError``)."""
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"x-agent-user-id", b"u1")]
    for assertion_headers in 5 * [("authorization",), ("authorization", "x-other")]:
        callers = [
            Caller.from_headers(headers, assertion_headers=assertion_headers) for _ in range(200)
        ]
        seen = _read_in_threads(callers)
        assert len(seen) == 4 * 200 * 2
        reference = Caller.from_headers(headers, assertion_headers=assertion_headers)
        expected = {
            (reference.presented, reference.assertion, reference.user_id),
            (reference.decode_error, reference.user_id, reference.presented),
        }
        assert expected == {(True, TOKEN, "u1"), (None, "u1", True)}
        assert set(seen) == expected


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {TOKEN}",  # the usual case: hashed from the header's bytes
        f"bearer {TOKEN}",
        f"Bearer  {TOKEN} ",  # whitespace stripped: hashed from the str
        f"BEARER {TOKEN}",  # the general path
        "Bearer " + TOKEN[:-3] + "\u00e9\u00e8x",  # not ASCII: latin-1, hashed from the str
    ],
)
def test_the_reads_hash_is_the_assertions_sha256(value: str) -> None:
    """The read hashes the usual bearer from the header's bytes; whatever the path, the cache
    key is sha256 of the assertion's UTF-8, as for a Caller from a token, and an assertion
    assigned afterwards is hashed anew."""
    import hashlib

    caller = Caller.from_headers([(b"authorization", value.encode("latin-1"))])
    caller.read_headers()
    assertion = caller.assertion
    assert assertion is not None
    expected = hashlib.sha256(assertion.encode("utf-8", "surrogatepass")).hexdigest()
    assert caller.assertion_sha256 == expected
    assert Caller.from_token(assertion).assertion_sha256 == expected
    caller.assertion = "another.token.value"
    assert caller.assertion_sha256 == hashlib.sha256(b"another.token.value").hexdigest()


def test_a_slot_filled_by_another_thread_meanwhile_is_read_not_refilled() -> None:
    """The interleaving behind the races above, made deterministic: a thread finds a lazy
    field unset, then another fills it before the first reaches ``__getattr__``. The first
    must read what is there: not fail on a header field whose headers were read meanwhile,
    and not replace the errors list (losing the error another thread recorded into it)."""
    caller = Caller.from_headers(
        [(b"authorization", f"Bearer {TOKEN}".encode()), (b"x-agent-user-id", b"u1")]
    )
    caller.read_headers()  # "another thread" read them
    for name, value in (("presented", True), ("assertion", TOKEN), ("user_id", "u1")):
        assert caller.__getattr__(name) == value  # type: ignore[attr-defined]
    caller.record(RuntimeError("first"))  # "another thread" recorded
    errors = caller.__getattr__("errors")  # type: ignore[attr-defined]
    assert [str(e) for e in errors] == ["first"]
    assert caller.errors is errors
    with pytest.raises(AttributeError):
        caller.__getattr__("not_a_field")  # type: ignore[attr-defined]
