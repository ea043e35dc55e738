"""What a refused refresh does to the stored grant: MFA or conditional access (AADSTS50076,
50079, 53003) keeps it, with a sign-in link that carries the claims, whatever ``error`` Entra
puts beside the code (``interaction_required``, or ``invalid_grant``); a dead refresh token
(revoked, expired) deletes it. The decision is the source's generator, driven here step by
step (no I/O)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from entra_passthrough import ConsentRequired, TokenRequest, UserKey
from entra_passthrough._grants import StoredGrant
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore

CLAIMS = '{"access_token":{"amr":{"values":["mfa"]}}}'


def _source() -> DelegatedConsent:
    return DelegatedConsent(
        client_id="11111111-1111-1111-1111-111111111111",
        tenant_id="22222222-2222-2222-2222-222222222222",
        client_secret="consent-secret",
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url="https://agent.contoso.com/consent",
    )


def _decide(answer: dict[str, Any]) -> tuple[str, ConsentRequired]:
    source = _source()
    key = UserKey.for_entra_user("22222222-2222-2222-2222-222222222222", "alice-oid")
    now = time.time()
    grant = StoredGrant(
        refresh_token="rt",
        scopes=("api://mcp/access_as_user",),
        tid="22222222-2222-2222-2222-222222222222",
        oid="alice-oid",
        upn=None,
        key_kind="entra",
        created=now,
        updated=now,
    )
    steps = source._on_error(key, TokenRequest(("api://mcp/access_as_user",)), answer, grant, "v1")
    step = next(steps)
    with pytest.raises(ConsentRequired) as info:
        steps.send(None)
    source.close()
    return step.method, info.value


@pytest.mark.parametrize("error", ["interaction_required", "invalid_grant"])
@pytest.mark.parametrize("code", [50076, 50079, 53003])
def test_mfa_or_conditional_access_keeps_the_grant(error: str, code: int) -> None:
    method, raised = _decide(
        {"error": error, "error_codes": [code], "claims": CLAIMS, "error_description": "x"}
    )
    assert method == "put_grant"  # released, kept
    assert raised.link is not None


@pytest.mark.parametrize("code", [70008, 50173, 700082])
def test_a_dead_refresh_token_deletes_the_grant(code: int) -> None:
    method, _ = _decide({"error": "invalid_grant", "error_codes": [code]})
    assert method == "delete_grant"
