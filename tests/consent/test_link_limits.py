"""A consent link the broker would refuse is refused when it is made.

More than 20 scopes, or a ticket longer than the broker reads (a very long claims challenge),
used to make a link whose ``/start`` answered ``invalid_link`` / ``request_too_large`` and told the
user to ask the agent for a new link: the agent made the same link again. Now the source raises
a ``TokenAcquisitionError`` that says why, and every link it does make opens at the broker.
"""

from __future__ import annotations

import json
import time

import pytest

from _support.consent import ConsentEnv, platform_caller
from entra_passthrough import ConsentRequired, TokenAcquisitionError, TokenChain, UserKey
from entra_passthrough._grants import MAX_TICKET_CHARS
from entra_passthrough.consent._params import MAX_VALUE_CHARS


def _scopes(env: ConsentEnv, n: int) -> list[str]:
    return [f"{env.idp.mcp.app_id_uri}/s{i}" for i in range(n)]


async def test_a_link_the_broker_would_refuse_is_not_made(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    chain = TokenChain([source])
    caller = platform_caller(f"limits-{time.monotonic_ns()}")
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            await chain.get_token_async(_scopes(env, 21), caller=caller)
        assert not isinstance(info.value, ConsentRequired)
        assert "1 to 20 scopes" in str(info.value)
        assert info.value.fix

        with pytest.raises(TokenAcquisitionError) as info:
            await chain.get_token_async([env.mcp_scope], caller=caller, claims="x" * 3000)
        assert not isinstance(info.value, ConsentRequired)
        assert f"at most {MAX_TICKET_CHARS}" in str(info.value)
        assert "x" * 40 not in str(info.value)  # the challenge is not quoted
    finally:
        chain.close()


async def test_every_link_made_opens_at_the_broker(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    assert MAX_VALUE_CHARS == MAX_TICKET_CHARS
    key = UserKey.for_platform_user(f"limits-{time.monotonic_ns()}")
    # 20 scopes, and a challenge just short of the limit (CAE with an auth context is ~300)
    cae = json.dumps({"access_token": {"xms_cc": {"values": ["cp1"]}, "acrs": {"values": ["c1"]}}})
    cases = [(_scopes(env, 20), None), ([env.mcp_scope], cae)]
    for size in range(1500, 3200, 100):
        try:
            cases.append(([env.mcp_scope], "y" * size))
            source.consent_link(key, [env.mcp_scope], claims="y" * size)
        except TokenAcquisitionError:
            cases.pop()
            break
    else:
        pytest.fail("no challenge up to 3,200 characters reached the limit")
    async with env.browser() as browser:
        for scopes, claims in cases:
            link = source.consent_link(key, scopes, claims=claims)
            answer = await browser.get(link, follow_redirects=False)
            assert answer.status_code == 302, (len(link), answer.text[:300])
