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
