"""The ``az`` and ``azd`` stand-ins that azure-identity's AzureCliCredential and
AzureDeveloperCliCredential run.

AzureDeveloperCliCredential (``_credentials/azd_cli.py``) runs ``azd auth token --output json
--no-prompt --scope S [--tenant-id T]`` and parses ``token`` and ``expiresOn``
(``%Y-%m-%dT%H:%M:%SZ``); "not logged in, run `azd auth login` to login" without an AADSTS code
becomes CredentialUnavailableError. Both CLIs sign in as the Azure CLI's client
(``04b07795-8ddb-461a-bbee-02f9e1bf7b46``; azd reuses it, Azure/azure-dev
``cli/azd/pkg/auth/manager.go``), so both are refused a custom API that does not pre-authorize
that client: AADSTS65001 naming it, as Entra answers (Azure/azure-cli#15056,
https://learn.microsoft.com/entra/identity-platform/permissions-consent-overview).

AzureCliCredential (azure-identity 1.27 ``_credentials/azure_cli.py``) runs
``az account get-access-token --output json --resource R [--tenant T] [--subscription S]`` and
parses ``accessToken`` and ``expires_on`` (else ``expiresOn``). A stderr mentioning ``az login``
without an AADSTS code becomes CredentialUnavailableError. The stand-in asks the emulator (HTTPS,
verified against its CA) for a token of the signed-in developer user, authenticated by a
per-emulator key so that nothing else can mint tokens this way.

The resource's per-user policies hold for the CLI's token requests as for every other grant
(Entra evaluates Conditional Access for the resource a token is asked for; ``az login --scope``
exists "for Conditional Access MFA support", Azure/azure-cli#17778): a block is AADSTS53003, MFA
required is AADSTS50076 unless the CLI's sign-in performed MFA (``az_env(user, mfa=True)``: what
``az login --scope <resource>/.default`` / ``azd auth login --scope ...`` does for such a user).
On an Entra error the stand-ins print what the CLIs print: az (azure-cli ``auth/util.py``
``aad_error_handler``) the description, then "Run the command below to authenticate
interactively; additional arguments may be added as needed:", ``az logout`` and
``az login --tenant "<tenant>" --scope "<scope>"``; azd (Azure/azure-dev ``pkg/auth/errors.go``
``ReLoginRequiredError``, for ``invalid_grant`` and ``interaction_required``) the description, then
"Suggestion: reauthentication required, run `azd auth login --scope <scope>` to acquire a new
token."
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import stat
import sys
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import _errors as e
from ._issue import (
    ScopeRequest,
    check_account,
    check_member,
    check_user_policies,
    mint_access,
    parse_scopes,
    user_subject,
)
from ._state import Runtime
from ._world import AZURE_CLI_CLIENT_ID, App, User, stable_id

_SCRIPT = r'''#!{python}
"""az stand-in written by entra_passthrough.testing (the local Entra emulator)."""
import json, os, ssl, sys, urllib.error, urllib.request

def main(argv):
    url = os.environ.get("ENTRA_EMULATOR_URL")
    user = os.environ.get("ENTRA_EMULATOR_AZ_USER")
    azd = os.path.basename(sys.argv[0]).split(".")[0] == "azd"
    if argv[:1] == ["--version"]:
        print(("azd" if azd else "azure-cli") + " (entra-passthrough emulator stand-in)")
        return 0
    if not url or not user:
        if azd:
            sys.stderr.write("ERROR: not logged in, run `azd auth login` to login\n")
        else:
            sys.stderr.write("ERROR: Please run 'az login' to setup account.\n")
        return 1
    opts = {{}}
    scopes = []
    cmd = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a in ("--no-prompt",):  # flags without a value
            opts[a[2:]] = "true"
        elif a == "--scope":
            # az: `--scope S [S ...]`; azd: `--scope S`, repeated. Every one is kept.
            while i < len(argv) and not argv[i].startswith("--"):
                scopes.append(argv[i])
                i += 1
        elif a.startswith("--"):
            opts[a[2:]] = argv[i] if i < len(argv) else ""
            i += 1
        else:
            cmd.append(a)
    if azd and cmd == ["auth", "token"]:
        # azd's default scope is Azure Resource Manager's.
        scopes = scopes or ["https://management.azure.com//.default"]
        body = {{"command": "token", "resource": None, "scope": " ".join(scopes),
                "tenant": opts.get("tenant-id")}}
    elif azd:
        sys.stderr.write("ERROR: the emulator's azd stand-in supports only 'auth token'\n")
        return 2
    elif cmd == ["account", "get-access-token"]:
        resource = opts.get("resource")
        if not resource and not scopes:
            resource = "https://management.core.windows.net/"  # az's default (ARM)
        if resource:
            scopes = [resource + "/.default"]  # az's resource_to_scopes: the slash is kept
        body = {{"command": "token", "resource": resource, "scope": " ".join(scopes),
                "tenant": opts.get("tenant")}}
    elif cmd == ["account", "show"]:
        body = {{"command": "show"}}
    else:
        sys.stderr.write("ERROR: the emulator's az stand-in supports only "
                         "'account get-access-token' and 'account show'\n")
        return 2
    body["user"] = user
    # The sign-in behind this session performed MFA (az login --scope <resource>/.default).
    body["mfa"] = "true" if os.environ.get("ENTRA_EMULATOR_AZ_MFA") == "1" else ""
    req = urllib.request.Request(url + "/_emulator/az", data=json.dumps(body).encode(),
        headers={{"Content-Type": "application/json",
                 "Authorization": "Emulator " + os.environ.get("ENTRA_EMULATOR_AZ_KEY", "")}})
    ctx = ssl.create_default_context(cafile=os.environ.get("ENTRA_EMULATOR_CA_FILE"))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            out = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        err = json.loads(exc.read() or b"{{}}")
        text = err.get("error_description", "emulator error")
        sys.stderr.write("ERROR: " + text + "\n")
        if "AADSTS" not in text:
            return 1
        if azd:
            # azd's ReLoginRequiredError (pkg/auth/errors.go) for these two errors only.
            if err.get("error") in ("invalid_grant", "interaction_required"):
                # Without azd's own login scope (Azure Resource Manager's), as azd leaves it out.
                login = "azd auth login" + "".join(
                    " --scope " + s for s in scopes
                    if s != "https://management.azure.com//.default")
                sys.stderr.write("\nSuggestion: reauthentication required, run `" + login
                                 + "` to acquire a new token.\n")
        elif 7000215 not in (err.get("error_codes") or []):
            # What az adds to every Entra error (azure-cli's auth/util.py aad_error_handler).
            login = "az login"
            if err.get("cli_tenant"):
                login += ' --tenant "' + err["cli_tenant"] + '"'
            login += " --scope" + "".join(' "' + s + '"' for s in scopes)
            sys.stderr.write("Run the command below to authenticate interactively; additional "
                             "arguments may be added as needed:\naz logout\n" + login + "\n")
        return 1
    if azd:
        import time
        out = {{"token": out["accessToken"],
               "expiresOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(out["expires_on"]))}}
    print(json.dumps(out, indent=2))
    return 0

sys.exit(main(sys.argv[1:]))
'''


def write_stand_in(folder: Path) -> Path:
    """Write ``az`` and ``azd`` into ``folder``; returns the ``az`` path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("azd", "az"):
        path = folder / name
        path.write_text(_SCRIPT.format(python=sys.executable), encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def az_env(
    rt: Runtime, *, bin_dir: Path, ca_file: str, user: str | None, mfa: bool = False
) -> dict[str, str]:
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ENTRA_EMULATOR_URL": rt.url,
        "ENTRA_EMULATOR_CA_FILE": ca_file,
        "ENTRA_EMULATOR_AZ_KEY": rt.az_key,
        "ENTRA_EMULATOR_AZ_USER": user or "",
        "ENTRA_EMULATOR_AZ_MFA": "1" if mfa and user else "",
    }


async def az_endpoint(rt: Runtime, request: Request) -> Response:
    rt.count("az")
    given = request.headers.get("authorization", "").removeprefix("Emulator ")
    if not hmac.compare_digest(given.encode(), rt.az_key.encode()):
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    try:
        raw = json.loads(await request.body())
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        return JSONResponse({"error": "invalid_request"}, status_code=400)
    # Only strings from here on (the stand-in sends strings or null).
    body = {k: str(v) for k, v in raw.items() if isinstance(v, str | int | float)}
    user = rt.world.user(str(body.get("user", "")))
    if user is None:
        return JSONResponse(
            {"error_description": "Please run 'az login' to setup account."}, status_code=400
        )
    subscription = stable_id("subscription", user.tenant_id)
    if body.get("command") == "show":
        return JSONResponse(
            {
                "environmentName": "AzureCloud",
                "homeTenantId": user.tenant_id,
                "id": subscription,
                "isDefault": True,
                "name": "Emulator subscription",
                "state": "Enabled",
                "tenantId": user.tenant_id,
                "user": {"name": user.upn, "type": "user"},
            }
        )
    # The scopes az/azd asked for (az's --resource R is "R/.default"), several allowed: two
    # resources are AADSTS28000 and a named permission is one, as at the token endpoint.
    raw_scope = (body["resource"] + "/.default") if body.get("resource") else body.get("scope")
    tenant = rt.world.tenant(body["tenant"]) if body.get("tenant") else None
    tid = tenant.id if tenant else (body.get("tenant") or user.tenant_id)
    # The CLI's sign-in performed MFA only when the session says so (az login --scope ...).
    amr = ("pwd", "mfa") if body.get("mfa") == "true" else ("pwd",)
    try:
        if body.get("tenant") and tenant is None:
            raise e.StsError(90002, "invalid_request", f"Tenant '{body['tenant'][:80]}' not found.")
        cli = _cli_app(rt, user)
        # `--tenant` names a tenant the user must belong to (member or guest): real az fails
        # with Entra's AADSTS50020 otherwise, naming the Azure CLI's client.
        # The account's state, as for every token request for the user (AADSTS50057 for a
        # disabled one is what `az account get-access-token` answers: Azure/azure-cli#18945).
        check_account(rt, user)
        check_member(rt, user, tid, cli, client_name=AZURE_CLI_NAME)
        # The resource must exist in that tenant (a single-tenant API of another: AADSTS500011).
        req = parse_scopes(rt, raw_scope, tid)
        app = req.resource
        if app is None:
            raise e.resource_not_found(str(raw_scope or "")[:200], tid)
        # The resource's Conditional Access and MFA policies, as for every delegated token.
        check_user_policies(user, app, amr)
        scopes = _cli_scopes(rt, user, cli, app, tid, req)
    except e.StsError as err:
        # What az knows beside Entra's answer: the tenant it asked (its `az login --tenant`).
        return JSONResponse({**err.body(), "cli_tenant": tid[:80]}, status_code=400)
    lifetime = rt.world.lifetimes.access_token
    # az asks for a v1-style resource; the token is a delegated token of the Azure CLI client.
    token = mint_access(
        rt,
        resource=app,
        client_id=AZURE_CLI_CLIENT_ID,
        client_acr="0",
        subject=user_subject(rt, user, tid, amr),
        scopes=scopes,
        app_only=False,
        lifetime=lifetime,
        # A v1 aud is the identifier named (--resource), as at the token endpoint.
        audience=req.v1_audience(),
    )
    expires = int(time.time()) + lifetime
    return JSONResponse(
        {
            "accessToken": token,
            "expiresOn": dt.datetime.fromtimestamp(expires).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "expires_on": expires,
            "subscription": subscription,
            "tenant": tid,
            "tokenType": "Bearer",
        }
    )


#: The name Entra gives the Azure CLI's client in its errors.
AZURE_CLI_NAME = "Microsoft Azure CLI"


def _cli_app(rt: Runtime, user: User) -> App:
    """The Azure CLI's client (the world's, or a stand-in when the world has none)."""
    return rt.world.app(AZURE_CLI_CLIENT_ID) or App(
        name="azure_cli",
        client_id=AZURE_CLI_CLIENT_ID,
        tenant_id=user.tenant_id,
        object_id=stable_id("sp", "azure-cli"),
        public_client=True,
        multi_tenant=True,
        first_party=True,
    )


def _cli_scopes(
    rt: Runtime, user: User, cli: App, app: App, tenant_id: str, req: ScopeRequest
) -> tuple[str, ...]:
    """The scopes the Azure CLI's client gets on ``app`` for ``user`` in ``tenant_id``: of
    what it may have (every scope of a first-party resource: Microsoft pre-consents its own
    clients; else what the API pre-authorizes or was consented there), all for ``.default``,
    else the named ones. Nothing, or a named scope it may not have, is AADSTS65001 naming the
    CLI's client."""
    if app.first_party:
        allowed = set(app.exposed_scopes or ("user_impersonation",))
    else:
        allowed = rt.granted_scopes(user, cli, app, tenant_id=tenant_id) & set(app.exposed_scopes)
    wanted = allowed if req.is_default else set(req.names)
    if not wanted or not wanted <= allowed:
        raise e.consent_required(AZURE_CLI_CLIENT_ID, AZURE_CLI_NAME)
    return tuple(sorted(wanted))
