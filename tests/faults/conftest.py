"""Fault tests: real MSAL against the emulator over HTTPS, with its fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import requests

from entra_passthrough import Caller, OnBehalfOf, Timeouts, TokenAcquisitionError, TokenChain
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import App, EntraEmulator


def mcp_scope(idp: EntraEmulator) -> list[str]:
    return [f"{idp.mcp.app_id_uri}/.default"]


def token_posts(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"]["token"])


class Rig:
    """One OnBehalfOf + TokenChain per test, its MSAL app warmed up (discovery done) so that
    faults injected on ``token`` hit the OBO POSTs only."""

    def __init__(
        self,
        idp: EntraEmulator,
        timeouts: Timeouts | None = None,
        app: App | None = None,
        **kw: Any,
    ) -> None:
        self.idp = idp
        self.app = app or idp.agent  # the confidential client (its id and secret)
        self.http = idp.msal_http_client()
        self.posts = 0  # POSTs this rig's MSAL apps sent (the emulator's count is shared, and
        # a request a test abandoned at its deadline is counted there when it ends)
        send = self.http.post

        lock = threading.Lock()

        def counting_post(*args: Any, **kwargs: Any) -> Any:
            with lock:
                self.posts += 1
            return send(*args, **kwargs)

        self.http.post = counting_post  # type: ignore[method-assign]
        self.obo = OnBehalfOf(
            client_id=self.app.client_id,
            tenant_id=idp.tenant_id,
            authority_host=idp.url,
            client_secret=self.app.secret,
            http_client=self.http,
            timeouts=timeouts,
            **kw,
        )
        self.chain = TokenChain([self.obo])
        self._n = 0

    def user_token(self, user: str = "alice") -> str:
        self._n += 1
        return self.idp.user_token(
            user, audience=self.app.client_id, extra_claims={"uti": f"f{self._n}"}
        )

    def close(self) -> None:
        self.chain.close()
        self.http.close()


@pytest.fixture
def idp(entra_emulator: EntraEmulator) -> Iterator[EntraEmulator]:
    # The throttle is per authority for the whole process: a gate a test closed (a 30 s
    # Retry-After) must not leak into the next test that uses this emulator.
    SHARED_THROTTLE.clear()
    entra_emulator.clear_faults()
    entra_emulator.token_latency = 0.0
    # A request an earlier test gave up on (a delay fault outlasting its deadline) is counted
    # when the emulator ends it: it must land before this test takes its counts.
    entra_emulator.wait_idle(15.0)
    yield entra_emulator
    entra_emulator.clear_faults()
    entra_emulator.token_latency = 0.0
    SHARED_THROTTLE.clear()


@pytest.fixture
def rig_factory(idp: EntraEmulator) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(timeouts: Timeouts | None = None, app: App | None = None, **kw: Any) -> Rig:
        rig = Rig(idp, timeouts, app, **kw)
        rigs.append(rig)
        from entra_passthrough import bind_caller

        with bind_caller(token=rig.user_token("alice")):
            rig.chain.get_token(mcp_scope(idp))  # discovery + one POST, before any fault
        return rig

    yield make
    for rig in rigs:
        rig.close()


class RoutedSession(requests.Session):
    """The emulator's session (the application's, to the library), with the token POSTs sent
    to the trickling server once ``route`` is set."""

    def __init__(self, idp: EntraEmulator, port: int) -> None:
        super().__init__()
        self.verify = idp.ca_file
        self.trust_env = False
        self.port = port
        self.route = False

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.route and "/oauth2/" in url:
            url = f"http://127.0.0.1:{self.port}/token"
        return super().request(method, url, *args, **kwargs)


def agent_obo_chain(idp: EntraEmulator, http: Any, timeouts: Timeouts) -> TokenChain:
    """OBO as the emulator's agent app through the application's session ``http``."""
    return TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=http,
                timeouts=timeouts,
            )
        ]
    )


@contextlib.contextmanager
def routed_obo_chain(idp: EntraEmulator, port: int, timeouts: Timeouts) -> Iterator[TokenChain]:
    """OBO through the application's session (a ``RoutedSession``), its MSAL app warmed up
    (discovery done, one POST answered by the emulator); then the token POSTs go to the test
    server on ``port``. The chain and the session are closed on exit."""
    with RoutedSession(idp, port) as http:
        chain = agent_obo_chain(idp, http, timeouts)
        try:
            warm = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
            # discovery, before the route; under the test's own short deadline, so a machine
            # stalled past it gets two more tries (the emulator answers at once otherwise)
            for attempt in range(3):
                try:
                    chain.get_token(mcp_scope(idp), caller=warm)
                    break
                except TokenAcquisitionError:
                    if attempt == 2:
                        raise
                    SHARED_THROTTLE.clear()  # the failure's negative entry would fail it fast
            http.route = True
            yield chain
        finally:
            chain.close()


def get_token_as(mode: str, chain: TokenChain, scopes: Sequence[str], **kw: Any) -> Any:
    """``chain.get_token`` for a ``sync`` caller, ``get_token_async`` for an ``async`` one."""
    if mode == "sync":
        return chain.get_token(scopes, **kw)
    return asyncio.run(chain.get_token_async(scopes, **kw))


def accept_each(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept connections on ``listener`` (a daemon thread), each handled by ``handle`` in a
    daemon thread of its own, until the listener is closed."""

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
