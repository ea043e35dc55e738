"""One character outside the base64url alphabet in a JWT segment makes the token undecodable.

The lenient base64 decoder skips such characters (a space, a tab, ``!``, ``*``, ``~``), and the
length check that was to catch a skipped one could not when the clean segment's length is a
multiple of 4 (the emulator's header segment is): the token decoded as the clean one, its caller
had alice's claims, and OBO's pre-flight let it through to Entra, which answers AADSTS50027.
Now the segment must be base64url, every character of it: the caller's claims are ``None`` with a
decode error, and the chain refuses the assertion (``AssertionMalformed``) with no request.
"""

from __future__ import annotations

import pytest

from entra_passthrough import AssertionMalformed, Caller, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough._jwt import JwtDecodeError, decode_unverified
from entra_passthrough.testing import EntraEmulator

JUNK = [" ", "!", "*", "\t", "~", "=", "\x7f", "é"]


def _alice(idp: EntraEmulator) -> str:
    return idp.user_token("alice", audience=idp.agent.client_id)


def _with_junk(token: str, segment: int, junk: str, at: int = 10) -> str:
    parts = token.split(".")
    parts[segment] = parts[segment][:at] + junk + parts[segment][at:]
    return ".".join(parts)


def _multiple_of_4_segment(token: str) -> int:
    for index, segment in enumerate(token.split(".")[:2]):
        if len(segment) % 4 == 0:
            return index
    pytest.fail("neither header nor payload length is a multiple of 4")  # pragma: no cover


@pytest.mark.parametrize("junk", JUNK)
def test_one_junk_character_in_a_segment_of_4n_characters_does_not_decode(
    entra_emulator: EntraEmulator, junk: str
) -> None:
    token = _alice(entra_emulator)
    segment = _multiple_of_4_segment(token)
    assert decode_unverified(token)["oid"]
    with pytest.raises(JwtDecodeError, match="not base64url"):
        decode_unverified(_with_junk(token, segment, junk))
    caller = Caller.from_token(_with_junk(token, segment, junk))
    assert caller.presented
    assert caller.claims is None
    assert caller.decode_error == "a segment is not base64url"


@pytest.mark.parametrize("size", range(0, 12))
@pytest.mark.parametrize("junk", [" ", "!", "~", "="])
def test_one_junk_character_at_any_length_and_place(size: int, junk: str) -> None:
    import base64
    import json

    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    payload = json.dumps({"oid": "alice", "pad": "x" * size}).encode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    token = f"{header}.{body}.c2ln"
    assert decode_unverified(token)["oid"] == "alice"
    for segment in (0, 1):
        length = len(token.split(".")[segment])
        for at in (0, 1, length // 2, length):
            with pytest.raises(JwtDecodeError):
                decode_unverified(_with_junk(token, segment, junk, at))


def test_the_chain_refuses_it_before_any_request(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = _alice(idp)
    bad = _with_junk(token, _multiple_of_4_segment(token), "!")
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
            )
        ]
    )
    try:
        idp.wait_idle()
        before = idp.stats()["endpoints"].get("token", 0)
        with bind_caller(token=bad), pytest.raises(AssertionMalformed):
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
        assert idp.stats()["endpoints"].get("token", 0) == before  # nothing was POSTed
        with bind_caller(token=token):  # the clean token still goes through
            assert chain.get_token([f"{idp.mcp.app_id_uri}/.default"]).token
    finally:
        chain.close()
