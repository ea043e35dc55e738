"""The chain's INFO line for a new token reads as docs/observability.md shows it: "obo acquired a
user token for ...", and "an app token" for the agent's own identity (not "a app token")."""

from __future__ import annotations

import logging

import pytest

from entra_passthrough import Policy, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import make_mi, make_obo, mcp_scope


def _acquired_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "entra_passthrough.chain" and " acquired " in r.getMessage()
    ]


def test_an_app_token_and_a_user_token(
    idp: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="entra_passthrough.chain")
    app = TokenChain([make_mi(idp)], policy=Policy.APP_ONLY)
    user = TokenChain([make_obo(idp)])
    try:
        app.get_token(mcp_scope(idp))
        with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
            user.get_token(mcp_scope(idp))
    finally:
        app.close()
        user.close()
    lines = _acquired_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("managed_identity acquired an app token for api://"), lines[0]
    assert lines[1].startswith("obo acquired a user token for api://"), lines[1]
