"""Which identity does each policy let through? Runs against the local Entra emulator.

    python examples/resolve_policies/policies.py

One chain per target: OBO (the user) + the agent's managed identity (the app). The same four
requests go through ``user_only`` (the default), ``user_or_app`` and ``app_only``; then the
Foundry toolbox route sends the agent's token with the *current* request's call id. It prints
who each token names (decoded claims), never a token. Exit code 0 when every outcome is the
expected one.
"""

from __future__ import annotations

import asyncio
import sys

import jwt

from entra_passthrough import (
    Caller,
    FoundryToolboxRoute,
    ManagedIdentity,
    NoCallerError,
    OnBehalfOf,
    Policy,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator


def who(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    if "scp" in claims:
        return f"user {claims.get('upn') or claims['oid']}"
    return f"app {claims.get('azp') or claims['oid']} roles={claims.get('roles')}"


async def main() -> int:
    failures = 0
    with EntraEmulator() as idp:
        http = idp.msal_http_client()
        mi_env = idp.mi_env()

        def sources() -> list[OnBehalfOf | ManagedIdentity]:
            return [
                OnBehalfOf(
                    client_id=idp.agent.client_id,
                    tenant_id=idp.tenant_id,
                    client_secret=idp.agent.secret,
                    authority_host=idp.url,
                    http_client=http,
                ),
                ManagedIdentity(
                    client_id=idp.managed_identity.client_id,
                    endpoint=mi_env["IDENTITY_ENDPOINT"],
                    header=mi_env["IDENTITY_HEADER"],
                ),
            ]

        scopes = [f"{idp.mcp.app_id_uri}/.default"]
        requests = {
            "alice, token for the agent": idp.user_token("alice", audience=idp.agent.client_id),
            "alice, Foundry token": idp.user_token("alice", audience=FOUNDRY_AUDIENCE),
            "garbage bearer": "not-a-jwt",
            "no caller at all": None,
        }
        expected = {
            Policy.USER_ONLY: [
                "user",
                "AssertionAudienceMismatch",
                "AssertionMalformed",
                "NoCallerError",
            ],
            Policy.USER_OR_APP: ["user", "AssertionAudienceMismatch", "AssertionMalformed", "app"],
            Policy.APP_ONLY: ["app", "app", "app", "app"],
        }
        for policy, wanted in expected.items():
            chain = TokenChain(sources(), policy=policy)
            print(f"\n== policy {policy.value}")
            for (label, token), want in zip(requests.items(), wanted, strict=True):
                caller = Caller.from_token(token) if token is not None else None
                try:
                    result = await chain.get_token_async(scopes, caller=caller)
                    got = result.kind.value
                    print(f"  {label:28} -> {result.source}: {who(result.token)}")
                except (TokenAcquisitionError, NoCallerError) as exc:
                    got = type(exc).__name__
                    print(f"  {label:28} -> refused: {got}")
                if got != want:
                    failures += 1
                    print(f"     UNEXPECTED: wanted {want}")
            chain.close()

        print("\n== Foundry toolbox route (app_only), the current call id each time")
        route = TokenChain([FoundryToolboxRoute(sources()[1])], policy=Policy.APP_ONLY)
        for call_id in ("call-A", "call-B"):
            foundry = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
            with bind_caller(Caller.from_token(foundry, call_id=call_id)):
                result = await route.get_token_async(["https://ai.azure.com/.default"])
            header = result.headers.get("x-agent-foundry-call-id")
            print(f"  request {call_id} -> {who(result.token)}; call id header {header}")
            failures += header != call_id
        route.close()
        http.close()
    print("\nOK" if not failures else f"\n{failures} unexpected outcome(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
