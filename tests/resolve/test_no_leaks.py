"""No issued token or secret in DEBUG logs, reprs or exception text (resolve stage)."""

from __future__ import annotations

import logging
import traceback

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AzureCredential,
    Caller,
    FoundryToolboxRoute,
    Policy,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator

from .conftest import app_credential, make_mi, make_obo, mcp_scope, session


async def test_no_secret_in_logs_reprs_or_errors(
    idp: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("msal", "azure", "entra_passthrough", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    texts: list[str] = []
    mi = make_mi(idp)
    obo = make_obo(idp, consent_redirect_uri="http://localhost/callback")
    secretless = make_obo(idp, managed_identity=make_mi(idp), name="obo_mi")
    agent_id = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
    )
    user_chain = TokenChain([obo, secretless, agent_id])
    app_chain = TokenChain(
        [mi, AzureCredential(app_credential(idp), name="cred")], policy=Policy.APP_ONLY
    )
    foundry_chain = TokenChain([FoundryToolboxRoute(make_mi(idp))], policy=Policy.APP_ONLY)
    objects: list[object] = [user_chain, app_chain, foundry_chain, obo, secretless, agent_id, mi]

    def error_text(exc: BaseException) -> str:
        # What logger.exception() and error reporters show: the whole chain (causes and
        # unsuppressed contexts) and the exception's attributes.
        parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        seen: BaseException | None = exc
        while seen is not None:
            parts.append(repr(vars(seen)))
            seen = seen.__cause__ or seen.__context__
        return "\n".join(parts)

    tokens = {
        "alice": idp.user_token("alice", audience=idp.agent.client_id),
        "alice-bp": idp.user_token("alice", audience=idp.blueprint.client_id),
        "carol": idp.user_token("carol", audience=idp.agent.client_id),
        "foundry": idp.user_token("alice", audience=FOUNDRY_AUDIENCE),
        "expired": idp.user_token("bob", audience=idp.agent.client_id, lifetime=-60),
        "guest": idp.user_token("guest", audience=idp.agent.client_id),
    }
    outcomes = dict.fromkeys(tokens, 0)
    for label, token in tokens.items():
        caller = Caller.from_token(token, call_id="call-1")
        objects.append(caller)
        with bind_caller(caller, cap_at_expiry=False):
            for chain in (user_chain, app_chain, foundry_chain):
                for attempt in ("async", "sync"):
                    try:
                        if attempt == "async":
                            result = await chain.get_token_async(mcp_scope(idp))
                        else:
                            result = chain.get_token(mcp_scope(idp))
                        objects.append(result)
                    except Exception as exc:  # every error is collected and scanned below
                        texts.append(error_text(exc))
                        outcomes[label] += 1
                    else:
                        outcomes[label] += 1
    assert all(count == 6 for count in outcomes.values()), outcomes  # every case ran fully
    texts.extend(repr(o) for o in objects)
    texts.append(caplog.text)
    texts.extend(record.getMessage() for record in caplog.records)
    blob = "\n".join(texts)
    assert "ConsentRequired" in blob  # the consent error was exercised
    assert "AssertionAudienceMismatch" in blob
    loggers = {record.name.split(".")[0] for record in caplog.records}
    assert {"msal", "entra_passthrough"} <= loggers  # DEBUG logging really was captured
    leaked = [secret for secret in idp.issued() if secret and secret in blob]
    assert leaked == []
    for chain in (user_chain, app_chain, foundry_chain):
        chain.close()
