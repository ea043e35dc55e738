"""Requests that lead a user's token acquisition and go away (a client that disconnects, an
``asyncio.timeout`` of the app's) before Entra answers.

Before, a cancelled leader failed its acquisition for its waiters, which took over and sent
another OBO request while the first one was still at Entra; after three such takeovers a
request that was never cancelled failed ``SourceUnavailable("cancelled repeatedly")`` although
Entra was healthy. Now the acquisition runs on for the waiters when its leader goes away: one
OBO request, and every request that stays gets its token. Real components: the emulator over
HTTPS (1 s answers) and MSAL behind ``OnBehalfOf``."""

from __future__ import annotations

import asyncio

import jwt

from entra_passthrough import InteractionRequired, TokenChain, TokenResult, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, mcp_scope, obo_posts


def _oid(idp: EntraEmulator, name: str) -> str:
    user = idp.world.user(name)
    assert user is not None
    return user.oid


async def _get(chain: TokenChain, idp: EntraEmulator, assertion: str) -> TokenResult:
    with bind_caller(token=assertion):
        result = await chain.get_token_async(mcp_scope(idp))
    assert result is not None
    return result


async def _impatient(chain: TokenChain, idp: EntraEmulator, assertion: str, limit: float) -> str:
    try:
        async with asyncio.timeout(limit):
            await _get(chain, idp, assertion)
    except TimeoutError:
        return "timed out"
    return "token"


async def test_a_request_that_stays_gets_its_token_however_many_leaders_went_away(
    idp: EntraEmulator,
) -> None:
    idp.token_latency = 1.0
    chain = TokenChain([make_obo(idp)])
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    before = obo_posts(idp)
    try:
        # Four requests that each lead in turn and time out before Entra answers, then one
        # with no deadline of its own.
        leaving = [
            asyncio.create_task(_impatient(chain, idp, alice, limit))
            for limit in (0.3, 0.45, 0.6, 0.75)
        ]
        await asyncio.sleep(0.05)
        stays = await asyncio.wait_for(_get(chain, idp, alice), 30)
        outcomes = await asyncio.gather(*leaving)
    finally:
        chain.close()
    assert outcomes == ["timed out"] * 4
    claims = jwt.decode(stays.token, options={"verify_signature": False})
    assert claims["aud"] in (idp.mcp.client_id, idp.mcp.app_id_uri)
    assert claims["oid"] == _oid(idp, "alice")
    assert obo_posts(idp) - before == 1  # one exchange for every request of the key


async def test_a_lone_leader_that_went_away_still_caches_its_token(idp: EntraEmulator) -> None:
    """No one waits: the exchange Entra is answering anyway is kept, and the user's next
    request (a client retrying after its timeout) is served from the cache."""
    idp.token_latency = 0.5
    chain = TokenChain([make_obo(idp)])
    bob = idp.user_token("bob", audience=idp.agent.client_id)
    before = obo_posts(idp)
    try:
        assert await _impatient(chain, idp, bob, 0.2) == "timed out"
        await chain.cache.wait_refreshes_async()  # the acquisition that ran on
        again = await _get(chain, idp, bob)
    finally:
        chain.close()
    assert obo_posts(idp) - before == 1
    assert jwt.decode(again.token, options={"verify_signature": False})["oid"] == _oid(idp, "bob")


async def test_an_error_of_an_acquisition_whose_leader_went_away_reaches_its_waiters(
    idp: EntraEmulator,
) -> None:
    """The acquisition that runs on fails (Entra asks dave for MFA for the MCP server): its
    waiter gets that typed error, not a takeover and a second request to Entra."""
    idp.token_latency = 0.5
    chain = TokenChain([make_obo(idp)])
    wrong = idp.user_token("dave", audience=idp.agent.client_id)
    before = obo_posts(idp)
    try:
        leaving = asyncio.create_task(_impatient(chain, idp, wrong, 0.2))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(_get(chain, idp, wrong))
        assert await leaving == "timed out"
        outcome = await asyncio.gather(waiter, return_exceptions=True)
    finally:
        chain.close()
    error = outcome[0]
    assert isinstance(error, Exception), error
    assert type(error) is InteractionRequired, repr(error)
    assert obo_posts(idp) - before == 1
