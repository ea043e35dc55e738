"""A caller token Entra refused for what it is is not sent again.

An altered or foreign token (a bad signature: AADSTS50013) is refused by Entra every time. An
agent that does not verify its callers used to send it once per request: a client repeating it
cost one POST per call, counted against the app's throttling limits for every user. The refusal
is now held for that token (by tenant and sha256) until it expires, at most five minutes; a
consent answer, which the user fixes with the same token, is never held.

Real MSAL against the emulator over HTTPS (``Rig`` counts the POSTs its session sent).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from entra_passthrough import (
    AssertionNotUsable,
    Caller,
    ConsentRequired,
    EntraError,
    TokenAcquisitionError,
)
from entra_passthrough._sources.obo import RefusedAssertions
from entra_passthrough._types import TokenRequest
from entra_passthrough.testing import EntraEmulator
from faults.conftest import mcp_scope


def altered(token: str) -> str:
    """The token with its signature changed: Entra answers AADSTS50013."""
    head, body, signature = token.split(".")
    tail = "AAAA" if not signature.endswith("AAAA") else "BBBB"
    return f"{head}.{body}.{signature[:-4]}{tail}"


def test_a_refused_token_costs_one_post_however_often_it_comes(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory()
    bad = altered(rig.user_token("alice"))
    before = rig.posts

    async def calls() -> list[BaseException]:
        errors: list[BaseException] = []
        for _ in range(8):  # one after another: the single flight does not cover these
            try:
                await rig.chain.get_token_async(mcp_scope(idp), caller=Caller.from_token(bad))
            except TokenAcquisitionError as exc:
                errors.append(exc)
        # and a burst of the same token at once
        burst = await asyncio.gather(
            *(
                rig.chain.get_token_async(mcp_scope(idp), caller=Caller.from_token(bad))
                for _ in range(8)
            ),
            return_exceptions=True,
        )
        return errors + list(burst)

    errors = asyncio.run(calls())
    assert rig.posts - before == 1
    assert len(errors) == 16
    for exc in errors:
        assert isinstance(exc, AssertionNotUsable), exc
        assert exc.code is not None
        assert exc.code.code == 50013
        assert bad not in str(exc)
        assert bad.split(".")[2] not in str(exc)
    later = str(errors[1])
    assert "not sent again" in later, later
    assert "new token" in later, later
    assert errors[1].correlation_id == errors[0].correlation_id  # the refusal Entra gave

    # The sync driver holds it too; the same user's new token goes out and succeeds.
    with pytest.raises(AssertionNotUsable, match="not sent again"):
        rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(bad))
    assert rig.posts - before == 1
    result = rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(rig.user_token("alice")))
    assert result.token
    assert rig.posts - before == 2


def test_a_consent_answer_is_never_held(idp: EntraEmulator, rig_factory: Any) -> None:
    # The user fixes a missing consent with the same token: every call asks Entra again
    # (carol has not consented to the agent app).
    rig = rig_factory()
    token = rig.user_token("carol")
    before = rig.posts
    try:
        for _ in range(3):
            with pytest.raises(ConsentRequired):
                rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(token))
        assert rig.posts - before == 3
        assert len(rig.obo.refused) == 0
        idp.grant_consent("carol", idp.agent.client_id, [f"{idp.mcp.app_id_uri}/access_as_user"])
        assert rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(token)).token
    finally:
        idp.revoke_consent("carol", idp.agent.client_id)


def _refusal(code: int) -> TokenAcquisitionError:
    what = "Entra refused the token request."
    if code == 65001:
        return ConsentRequired(what, link=None, aadsts=code, correlation_id="c-1")
    cls = EntraError if code == 50027 else AssertionNotUsable
    return cls(what, aadsts=code, correlation_id="c-1")


def test_held_until_the_token_expires_and_at_most_hold_seconds() -> None:
    now = [1_000.0]
    refused = RefusedAssertions(hold=300.0, max_entries=3, clock=lambda: now[0])
    request = TokenRequest(("api://x/.default",), None)

    def held(digest: str) -> bool:
        try:
            refused.check("t", digest, request, "obo")
        except TokenAcquisitionError:
            return True
        return False

    refused.remember("t", "long", 1_000_000.0, _refusal(50013))
    refused.remember("t", "short", 1_060.0, _refusal(500133))
    refused.remember("t", "consent", 1_000_000.0, _refusal(65001))
    refused.remember("t", "gone", 999.0, _refusal(50013))  # already expired: nothing to hold
    assert held("long")
    assert held("short")
    assert not held("consent")
    assert not held("gone")
    with pytest.raises(AssertionNotUsable):
        refused.check("t", "long", request, "obo")
    refused.check("another-tenant", "long", request, "obo")  # held per tenant
    now[0] = 1_061.0
    assert held("long")
    assert not held("short")
    now[0] = 1_300.0
    assert not held("long")  # and after ``hold`` at most
    assert len(refused) == 0

    for n in range(5):  # bounded: the oldest go first
        refused.remember("t", f"d{n}", 1_000_000.0, _refusal(50027))
    assert len(refused) == 3
    assert not held("d0")
    assert not held("d1")
    assert held("d4")
    with pytest.raises(EntraError, match="not sent again"):
        refused.check("t", "d4", request, "obo")


def test_a_token_not_valid_yet_is_not_sent_and_not_called_expired(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory()
    now = int(time.time())
    ahead = idp.user_token("alice", audience=rig.app.client_id, extra_claims={"nbf": now + 3600})
    before = rig.posts
    with pytest.raises(AssertionNotUsable) as info:
        rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(ahead))
    assert rig.posts == before  # nothing sent
    assert "not valid yet" in str(info.value)
    assert info.value.code is not None
    assert info.value.code.code == 500133
    # Within Entra's five minutes of skew it goes out, and Entra (the emulator) accepts it.
    near = idp.user_token("alice", audience=rig.app.client_id, extra_claims={"nbf": now + 120})
    assert rig.chain.get_token(mcp_scope(idp), caller=Caller.from_token(near)).token
    assert rig.posts == before + 1


def test_a_consent_or_interaction_with_an_assertion_code_is_not_held() -> None:
    # A gateway's body may pair such a code with consent_required or interaction_required:
    # those the user fixes with the same token, and replaying them crashed (TypeError).
    from entra_passthrough._errors import error_from_entra

    request = TokenRequest(("api://x/.default",), None)
    for body in (
        {"error": "interaction_required", "error_codes": [50013], "claims": "{}"},
        {"error": "invalid_grant", "suberror": "consent_required", "error_codes": [500131]},
    ):
        refused = RefusedAssertions()
        refused.remember("t", "d", 9e9, error_from_entra(body, source="obo", scopes=["x"]))
        assert len(refused) == 0
        refused.check("t", "d", request, "obo")  # nothing held: no error
