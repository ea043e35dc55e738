"""Junk headers never raise: random bytes, huge, duplicated, non-bearer (hypothesis)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_passthrough import CallerMiddleware, TokenVerificationError, current_caller

names = st.one_of(
    st.sampled_from(
        [
            b"authorization",
            b"Authorization",
            b"x-agent-user-id",
            b"x-agent-foundry-call-id",
            b"x-ms-token-aad-access-token",
        ]
    ),
    st.binary(max_size=40),
)
values = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"Bearer " + b, st.binary(max_size=300)),
    st.builds(lambda n: b"Bearer " + b"a" * n, st.integers(0, 70000)),
    st.sampled_from([b"Bearer", b"Bearer ", b"bearer a.b.c", b"Basic x", b"\xff\xfe", b""]),
)
header_lists = st.lists(st.tuples(names, values), max_size=12)


class RejectAll:
    """The JwtVerifier interface; a forged token never verifies."""

    async def verify_async(self, token: str) -> Any:
        raise TokenVerificationError("signature does not verify")


def run(
    headers: list[tuple[bytes, bytes]], *, require: bool, verify: bool = False
) -> tuple[int, Any]:
    seen: list[Any] = []
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_caller())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    mw = CallerMiddleware(
        app,
        require_caller=require,
        assertion_headers=("authorization", "x-ms-token-aad-access-token"),
        verifier=RejectAll() if verify else None,
    )
    asyncio.run(mw({"type": "http", "headers": headers}, receive, send))
    return statuses[0], seen[0] if seen else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_lists, st.booleans(), st.booleans())
def test_junk_headers_never_raise(
    headers: list[tuple[bytes, bytes]], require: bool, verify: bool
) -> None:
    status, caller = run(headers, require=require, verify=verify)
    assert status in (200, 401)
    if verify and status == 200:
        assert caller is not None
        assert not caller.presented  # nothing unverified gets through
    if status == 200 and caller is not None:
        assert not caller.active
        if caller.decode_error is not None:
            assert caller.presented  # unusable but presented: never an app fallback
    if require and status == 200:
        assert caller.presented
        assert caller.assertion


def test_non_list_headers_fail_closed() -> None:
    status, caller = run([("not", "bytes")], require=False)  # type: ignore[list-item]
    assert status == 200
    assert caller.presented
    assert caller.decode_error is not None
