"""The front end's rules at the ASGI boundary and in the CLI: what a request that skipped the
front end gets, which X-Forwarded-For entry is the client, and the configurations that cannot
work. (The whole broker behind a simulated front end: test_front_end.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _support.asgi import asgi_get
from entra_passthrough.consent._broker import _origin
from entra_passthrough.consent._cli import main
from entra_passthrough.consent._front_end import FrontEnd, TrustedProxies, _forwarded_client


class _App:
    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _status(
    front: FrontEnd, scheme: str, peer: str, headers: list[tuple[bytes, bytes]]
) -> int:
    status, _ = await asgi_get(
        front,
        [(b"host", b"consent.contoso.com"), *headers],
        path="/start",
        scheme=scheme,
        client=(peer, 5000),
        server=("10.0.0.5", 8443),
    )
    return status


async def test_with_a_front_end_named_only_its_https_requests_are_served_even_over_tls() -> None:
    app = _App()
    front = FrontEnd(app, TrustedProxies.parse("192.0.2.10", where="test"))
    https = [(b"x-forwarded-proto", b"https")]
    # Direct to the port, over TLS (a front end that re-encrypts): skipped the front end.
    assert await _status(front, "https", "203.0.113.7", []) == 403
    assert await _status(front, "https", "203.0.113.7", https) == 403
    # The front end itself, without saying how the browser came in: refused too.
    assert await _status(front, "https", "192.0.2.10", []) == 403
    assert await _status(front, "https", "192.0.2.10", https) == 204
    assert await _status(front, "http", "192.0.2.10", https) == 204
    assert len(app.scopes) == 2


def test_the_client_is_the_first_untrusted_entry_from_the_right() -> None:
    trusted = TrustedProxies.parse("10.0.0.0/8", where="test")
    # The client's own entries (left of what the front end appended) are never read, however
    # unparseable or numerous.
    assert _forwarded_client(["x", "", "203.0.113.66"], trusted) == "203.0.113.66"
    assert _forwarded_client(["unknown", "203.0.113.66", "10.0.0.4"], trusted) == "203.0.113.66"
    assert _forwarded_client(["203.0.113.66", "garbage"], trusted) is None
    many = ["10.1.2.3"] * 5000
    assert _forwarded_client([*many, "203.0.113.66"], trusted) == "203.0.113.66"
    assert _forwarded_client(many, trusted) == "10.1.2.3"  # bounded: stops after 16 hops
    anyone = TrustedProxies.parse("*", where="test")
    assert _forwarded_client(["198.51.100.1", "203.0.113.66"], anyone) == "203.0.113.66"


def test_an_ipv4_mapped_entry_names_the_ipv4_peer() -> None:
    for value in ("::ffff:127.0.0.1", "::ffff:127.0.0.0/104"):
        trusted = TrustedProxies.parse(value, where="test")
        assert "127.0.0.1" in trusted
        assert "::ffff:127.0.0.1" in trusted
        assert "128.0.0.1" not in trusted


def test_origins_compare_as_browsers_serialise_them() -> None:
    assert _origin("https://consent.contoso.test:443/callback") == "https://consent.contoso.test"
    assert _origin("https://Consent.Contoso.Test./callback") == "https://consent.contoso.test"
    assert _origin("https://consent.contoso.test:8443/x") == "https://consent.contoso.test:8443"
    assert _origin("http://127.0.0.1:80/") == "http://127.0.0.1"
    assert _origin("https://[::1]:443/") == "https://[::1]"
    assert _origin("null") == ""
    assert _origin("https://x:99999/") == ""


def test_a_certificate_that_cannot_be_loaded_is_a_typed_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = "k1:" + "A" * 43
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_KEYS", keys)
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET", "s3cret")
    monkeypatch.delenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS", raising=False)
    config = tmp_path / "broker.json"
    config.write_text(
        json.dumps(
            {
                "client_id": "11111111-1111-1111-1111-111111111111",
                "tenant_id": "22222222-2222-2222-2222-222222222222",
                "redirect_uris": ["https://consent.contoso.com/callback"],
            }
        )
    )
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate")
    cases = {
        (str(tmp_path / "missing.pem"), str(garbage)): "is not a file",
        (str(garbage), str(garbage)): "cannot be used",
    }
    for (cert, key), why in cases.items():
        argv = ["--config", str(config), "--host", "0.0.0.0", "--certfile", cert, "--keyfile", key]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert why in err, err
        assert "Traceback" not in err
