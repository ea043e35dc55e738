"""The requests sessions the library builds for token requests load a CA bundle once, not once
per new connection (urllib3 builds a context and loads the whole bundle for each: ~16 ms of CPU
for certifi's, 64 times in a cold burst). Counted, not timed; the checks themselves unchanged."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests

from entra_passthrough._msal import http_session
from entra_passthrough._requests_tls import SharedTlsAdapter, _context
from entra_passthrough.testing import EntraEmulator


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every CA bundle loaded into a TLS context by this test's thread, by path (a thread an
    earlier test in the same worker left running, an HTTP client of its own, may load the
    system's bundle meanwhile: not this session's load)."""
    seen: list[str] = []
    real = ssl.SSLContext.load_verify_locations
    mine = threading.get_ident()

    def counting(self: ssl.SSLContext, cafile: Any = None, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == mine:
            seen.append(str(cafile))
        return real(self, cafile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    _context.cache_clear()
    yield seen
    _context.cache_clear()


def _discovery(idp: EntraEmulator) -> str:
    return f"{idp.authority}/v2.0/.well-known/openid-configuration"


def _new_connections(session: requests.Session, url: str, n: int) -> None:
    for _ in range(n):
        assert session.get(url, timeout=10).status_code == 200
        session.close()  # drops the pooled connection: the next request opens a new one


def test_new_connections_load_the_bundle_once(
    entra_emulator: EntraEmulator, loads: list[str]
) -> None:
    session = http_session(entra_emulator.ca_file)
    _new_connections(session, _discovery(entra_emulator), 5)
    assert loads == [entra_emulator.ca_file]  # was one load per connection: 5


def test_the_certificate_is_still_checked(entra_emulator: EntraEmulator, loads: list[str]) -> None:
    session = http_session(certifi.where())  # a bundle without the emulator's CA
    with pytest.raises(requests.exceptions.SSLError):
        session.get(_discovery(entra_emulator), timeout=10)
    context = _context(certifi.where(), None, None)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_a_bundle_rewritten_in_place_is_read_again(
    entra_emulator: EntraEmulator, loads: list[str], tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(certifi.where()).read_text())
    session = http_session(str(bundle))
    with pytest.raises(requests.exceptions.SSLError):
        session.get(_discovery(entra_emulator), timeout=10)
    session.close()
    bundle.write_text(Path(entra_emulator.ca_file).read_text())
    os.utime(bundle, ns=(1, 1))  # a different stamp even within the file system's resolution
    _new_connections(session, _discovery(entra_emulator), 2)
    assert loads == [str(bundle), str(bundle)]  # one per version of the file


def test_client_certificates_and_unverified_requests_are_left_to_requests() -> None:
    adapter = SharedTlsAdapter()
    request = requests.Request("GET", "https://login.example/x").prepare()
    _, with_cert = adapter.build_connection_pool_key_attributes(request, True, ("c.pem", "k.pem"))
    _, unverified = adapter.build_connection_pool_key_attributes(request, False, None)
    _, shared = adapter.build_connection_pool_key_attributes(request, True, None)
    assert "ssl_context" not in with_cert
    assert "ssl_context" not in unverified
    assert isinstance(shared.get("ssl_context"), ssl.SSLContext)
    assert "ca_certs" not in shared
