"""No secret in the local variables of a typed error's traceback, or of its causes'.

Error reporters capture every frame's locals (Sentry's default ``include_local_variables``,
``traceback`` with ``capture_locals``, ``pytest --showlocals``). The frames of ``OnBehalfOf``,
MSAL and requests hold the user's assertion and the POST body, client secret included; the chain
raises its typed errors without them. Real MSAL against the emulator over HTTPS.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import traceback
from collections.abc import Iterator

import pytest

from entra_passthrough import (
    Caller,
    ConsentRequired,
    EntraPassthroughError,
    InteractionRequired,
    OnBehalfOf,
    SourceUnavailable,
    Timeouts,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

from ._hygiene import leaks, where


def _frames(exc: BaseException) -> Iterator[tuple[str, str, dict[str, object]]]:
    """(file, function, locals) of every frame of ``exc`` and of its causes and contexts,
    except this test's own (which holds the token it made)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for frame, _ in traceback.walk_tb(current.__traceback__):
            if frame.f_code.co_filename != __file__:
                yield frame.f_code.co_filename, frame.f_code.co_name, dict(frame.f_locals)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _locals_text(exc: BaseException) -> str:
    shown = traceback.TracebackException.from_exception(exc, capture_locals=True)
    parts = ["".join(shown.format())]
    for filename, function, values in _frames(exc):
        for name, value in values.items():
            try:
                parts.append(f"{filename}:{function}:{name}={value!r}")
            except Exception:  # a repr that fails is no leak
                continue
    return "\n".join(parts)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _obo(idp: EntraEmulator, http: object, authority_host: str | None = None) -> OnBehalfOf:
    return OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=authority_host or idp.url,
        http_client=http,
        timeouts=Timeouts(negative_ttl=0, backoff=0),
    )


def _get(chain: TokenChain, scope: list[str], caller: Caller, driver: str) -> object:
    if driver == "sync":
        return chain.get_token(scope, caller=caller)
    return asyncio.run(chain.get_token_async(scope, caller=caller))


@pytest.mark.parametrize("driver", ["async", "sync"])
def test_typed_errors_carry_no_secret_in_any_frames_locals(
    entra_emulator: EntraEmulator, driver: str
) -> None:
    idp = entra_emulator
    http = idp.msal_http_client()
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    chain = TokenChain([_obo(idp, http)])
    dead = TokenChain([_obo(idp, http, authority_host=f"https://127.0.0.1:{_closed_port()}")])
    cases: list[tuple[TokenChain, str, type[EntraPassthroughError]]] = [
        (chain, "carol", ConsentRequired),  # AADSTS65001
        (chain, "dave", InteractionRequired),  # MFA
        (chain, "alice", SourceUnavailable),  # 503 on every attempt
        (dead, "alice", SourceUnavailable),  # connection refused: requests' frames hold the body
    ]
    seen: list[str] = []
    try:
        for which, user, expected in cases:
            if which is chain and expected is SourceUnavailable:
                idp.inject_fault("token", status=503, count=50)
            caller = Caller.from_token(idp.user_token(user, audience=idp.agent.client_id))
            call = functools.partial(_get, which, scope, caller, driver)
            with pytest.raises(expected) as info:
                call()
            idp.clear_faults()
            seen.append(_locals_text(info.value))
    finally:
        idp.clear_faults()
        chain.close()
        dead.close()
        http.close()
    blob = "\n".join(seen)
    assert "get_token" in blob  # the chain's own frames are there, with their locals
    assert leaks(blob, idp.issued()) == [], where(blob, idp.issued())
