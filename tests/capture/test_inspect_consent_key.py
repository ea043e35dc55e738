"""``entra-passthrough inspect`` says what ``DelegatedConsent`` does with the token it reads:
nothing on its own. The token is not verified, and unverified tid/oid are never a consent key.

inspect said the source "identifies the user as <tid>:<oid>" (usable) for an unsigned token,
while the source itself refuses exactly that caller ("unverified token claims are never used as
a consent key").
"""

from __future__ import annotations

import json
import time

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import (
    Caller,
    DelegatedConsent,
    Keyring,
    MemoryStore,
    PolicyViolation,
    TokenChain,
)
from entra_passthrough.cli import main

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "11111111-2222-3333-4444-555555555555"


def consent_verdict(capsys: pytest.CaptureFixture[str], token: str) -> dict[str, object]:
    assert main(["inspect", "--json", token]) == 0
    report = json.loads(capsys.readouterr().out)
    return next(s for s in report["sources"] if s["source"] == "DelegatedConsent")


def source() -> DelegatedConsent:
    return DelegatedConsent(
        client_id="6cd0b7f2-2473-5d24-a86c-13c1e27b8228",
        tenant_id=TID,
        client_secret="x" * 40,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url="https://consent.contoso.com/consent",
    )


@pytest.mark.parametrize("aud", ["https://ai.azure.com", "api://agent"])
async def test_inspect_agrees_with_the_source(capsys: pytest.CaptureFixture[str], aud: str) -> None:
    token = unsigned_jwt(aud=aud, tid=TID, oid=OID, exp=time.time() + 3600)
    verdict = consent_verdict(capsys, token)
    consent = source()
    try:
        with pytest.raises(PolicyViolation, match="unverified token claims are never used"):
            await TokenChain([consent]).get_token_async(
                ["api://mcp/.default"], caller=Caller.from_token(token)
            )
    finally:
        consent.close()
    assert verdict["usable"] is False
    why = str(verdict["why"])
    assert "identifies the user" not in why
    assert "unverified" in why
    assert "never a consent key" in why
    # and what would key the grant instead
    assert "verifier=JwtVerifier" in why
    assert "x-agent-user-id" in why


def test_text_output_says_no(capsys: pytest.CaptureFixture[str]) -> None:
    token = unsigned_jwt(aud="https://ai.azure.com", tid=TID, oid=OID)
    assert main(["inspect", token]) == 0
    out = capsys.readouterr().out
    assert "[no ] DelegatedConsent: not on this token alone" in out
    assert token not in out


def test_without_tid_oid_only_the_platform_user_id_can(
    capsys: pytest.CaptureFixture[str],
) -> None:
    verdict = consent_verdict(capsys, unsigned_jwt(aud="api://agent", tid=None, oid=None))
    assert verdict["usable"] is False
    assert "x-agent-user-id" in str(verdict["why"])
