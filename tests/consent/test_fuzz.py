"""The broker never crashes on bad input: arbitrary bytes in every request part answer 400."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_passthrough import Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker

BROKER = ConsentBroker(
    client_id="11111111-1111-1111-1111-111111111111",
    tenant_id="22222222-2222-2222-2222-222222222222",
    client_secret="not-used",  # no request reaches Entra: nothing here is valid
    store=MemoryStore(),
    keyring=Keyring.generate(),
    redirect_uris=["https://consent.contoso.com/callback"],
)


async def _call(method: str, path: str, query: bytes, body: bytes, headers: list[Any]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "server": ("consent.contoso.com", 443),
        "client": ("127.0.0.1", 1234),
    }
    sent = [False]
    status = [0]

    async def receive() -> dict[str, Any]:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    await BROKER.app(scope, receive, send)
    return status[0]


header_value = st.binary(max_size=64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.sampled_from(
        [
            ("GET", "/start"),
            ("GET", "/callback"),
            ("POST", "/callback"),
            ("GET", "/signout"),
            ("POST", "/revoke"),
        ]
    ),
    query=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.tuples(
                st.sampled_from(["t", "state", "code", "redirect_uri", "error", "x"]),
                st.text(max_size=80),
            ),
            max_size=6,
        ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8")),
    ),
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        [b"application/x-www-form-urlencoded", b"application/json", b"", b"\xff\xfe"]
    ),
    cookie=header_value,
)
def test_arbitrary_requests_answer_400(
    route: tuple[str, str], query: bytes, body: bytes, content_type: bytes, cookie: bytes
) -> None:
    method, path = route
    headers = [(b"content-type", content_type), (b"cookie", cookie), (b"accept", b"*/*")]
    status = asyncio.run(_call(method, path, query, body, headers))
    assert status == 400


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flow_id=st.text(max_size=30),
    key_hash=st.text(max_size=70),
    lifetime=st.integers(min_value=-100, max_value=10**6),
    extra=st.lists(
        st.tuples(
            st.sampled_from(["code", "error", "error_description", "session_state", "x"]),
            st.text(max_size=60),
        ),
        max_size=4,
    ),
    cookie=header_value,
    method=st.sampled_from(["GET", "POST"]),
)
def test_a_correctly_signed_state_with_hostile_parameters_answers_400(
    flow_id: str,
    key_hash: str,
    lifetime: int,
    extra: list[tuple[str, str]],
    cookie: bytes,
    method: str,
) -> None:
    # Signed with the broker's own keyring (as an attacker who saw a real state has one), but
    # for no started flow, or expired: refused, never a 500, nothing stored.
    from urllib.parse import urlencode

    from entra_passthrough.consent._state import State

    state = State(flow_id, key_hash, time.time() + lifetime).sign(BROKER.keyring)
    form = urlencode([("state", state), *extra]).encode()
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"cookie", cookie),
    ]
    if method == "GET":
        status = asyncio.run(_call("GET", "/callback", form, b"", headers))
    else:
        status = asyncio.run(_call("POST", "/callback", b"", form, headers))
    assert status == 400
