"""``POST /_emulator/faults`` answers a body it cannot use with a 400 saying what the body must
be (it was a 500 and a closed connection), and still takes a good one."""

from __future__ import annotations

import httpx
import pytest

from entra_passthrough.testing import EntraEmulator

BAD = [
    (b"{not json", "not JSON"),
    (b"[1]", "JSON list"),
    (b'"token"', "JSON str"),
    (b'{"status": "abc"}', "'status'"),
    (b'{"status": 99}', "'status'"),
    (b'{"status": true}', "'status'"),
    (b'{"count": 0}', "'count'"),
    (b'{"count": 1.5}', "'count'"),
    (b'{"delay": "1"}', "'delay'"),
    (b'{"retry_after": {}}', "'retry_after'"),
    (b'{"drop": "yes"}', "'drop'"),
    (b'{"endpoint": 5}', "'endpoint'"),
    # Nested deeper than json reads (RecursionError): it was a bare 500.
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
]


@pytest.mark.parametrize(("body", "named"), BAD)
def test_a_body_it_cannot_use_is_a_400(idp: EntraEmulator, body: bytes, named: str) -> None:
    with httpx.Client(verify=idp.ssl_context(), timeout=10) as http:
        answer = http.post(f"{idp.url}/_emulator/faults", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_request"
        assert named in answer.json()["error_description"]
        # The connection stays usable, and nothing was injected.
        assert http.get(
            f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration"
        ).is_success


def test_a_good_body_still_injects(idp: EntraEmulator) -> None:
    with httpx.Client(verify=idp.ssl_context(), timeout=10) as http:
        answer = http.post(
            f"{idp.url}/_emulator/faults",
            json={"endpoint": "discovery", "status": 503, "retry_after": 2, "count": 1},
        )
        assert answer.status_code == 200, answer.text
        discovery = f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration"
        refused = http.get(discovery)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert http.get(discovery).is_success


@pytest.mark.parametrize("path", ["/_emulator/faults", "/{tenant}/oauth2/v2.0/token"])
def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(
    idp: EntraEmulator, path: str
) -> None:
    """A 64 MiB POST was read whole into memory (58 -> 249 MiB) before its 400; now a body
    over ``MAX_BODY`` (1 MiB) is a 413 once it passes the limit."""
    from entra_passthrough.testing._server import MAX_BODY

    url = idp.url + path.format(tenant=idp.tenant_id)
    with httpx.Client(verify=idp.ssl_context(), timeout=30) as http:
        answer = http.post(url, content=b"a" * (MAX_BODY + 1))
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "invalid_request"
        assert http.post(f"{idp.url}/_emulator/faults", content=b"{}").status_code in (200, 400)
