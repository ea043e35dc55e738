#!/usr/bin/env bash
# Create, in a real Microsoft Entra tenant, what scripts/tenant.json describes (the same file the
# local emulator loads: World.from_file("scripts/tenant.json")), then print the environment
# variables each path of entra-passthrough needs. docs/tenant-setup.md walks through it.
#
#   az login --tenant <tenant>                 # an account that may create app registrations
#   scripts/tenant-setup.sh --prefix demo --resource-group rg-demo --location westeurope
#
# Options:
#   --prefix NAME          display-name prefix of every object (default: entra-passthrough)
#   --resource-group RG    resource group for the user-assigned managed identity (created if
#                          missing); without it no managed identity is created
#   --location LOCATION    Azure region for the resource group / identity (default: westeurope)
#   --agent-id             also create an Entra Agent ID blueprint (App ID URI and scope, admin
#                          grants, inheritable permissions) + agent identity (preview: needs
#                          Microsoft Graph beta and the Agent ID roles)
#   --dry-run              print the az commands instead of running them
#
# Everything goes through `az` and `az rest` to Microsoft Graph; nothing else is needed. Re-running
# creates new objects (display names are not unique keys in Entra); delete old ones with
# `az ad app delete --id <appId>`.
set -euo pipefail

PREFIX="entra-passthrough"
RG=""
LOCATION="westeurope"
AGENT_ID=0
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --resource-group) RG="$2"; shift 2 ;;
    --location) LOCATION="$2"; shift 2 ;;
    --agent-id) AGENT_ID=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DESCRIPTION="$HERE/tenant.json"
GRAPH="https://graph.microsoft.com/v1.0"
GRAPH_BETA="https://graph.microsoft.com/beta"
AZURE_CLI_CLIENT_ID="04b07795-8ddb-461a-bbee-02f9e1bf7b46"   # az, and azd (same client)
TOKEN_EXCHANGE_AUDIENCE="api://AzureADTokenExchange"

run() {  # run a command, or print it with --dry-run; stdout is the command's output
  if [[ $DRY == 1 ]]; then
    { printf '+'; printf ' %q' "$@"; echo; } >&2
    echo "00000000-0000-0000-0000-000000000000"
  else
    "$@"
  fi
}

desc() {  # read a value from tenant.json: desc <python expression over `d`>
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$DESCRIPTION"
}

uuid() { python3 -c "import uuid; print(uuid.uuid4())"; }

command -v az >/dev/null || { echo "az (Azure CLI) is required: https://aka.ms/azure-cli" >&2; exit 1; }
TENANT_ID="$(run az account show --query tenantId -o tsv)"
ISSUER="https://login.microsoftonline.com/$TENANT_ID/v2.0"
ME="$(run az ad signed-in-user show --query id -o tsv)"

# ---- the MCP API: App ID URI, the delegated scope, an app role, Azure CLI pre-authorized --------
MCP_SCOPE_NAME="$(desc "next(a for a in d['apps'] if a['name']=='mcp')['scope']")"
MCP_ROLE="$(desc "next(a for a in d['apps'] if a['name']=='mcp')['roles'][0]")"
MCP_APP_ID="$(run az ad app create --display-name "$PREFIX-mcp" --sign-in-audience AzureADMyOrg \
  --query appId -o tsv)"
MCP_OBJECT_ID="$(run az ad app show --id "$MCP_APP_ID" --query id -o tsv)"
MCP_SCOPE_ID="$(uuid)"
MCP_ROLE_ID="$(uuid)"
MCP_SCOPES="[{\"id\":\"$MCP_SCOPE_ID\",\"value\":\"$MCP_SCOPE_NAME\",
  \"type\":\"User\",\"isEnabled\":true,
  \"adminConsentDisplayName\":\"Call the MCP tools as the user\",
  \"adminConsentDescription\":\"Lets the app call the MCP server's tools as the signed-in user.\",
  \"userConsentDisplayName\":\"Call the MCP tools as you\",
  \"userConsentDescription\":\"Lets the app call the MCP server's tools as you.\"}]"
run az rest --method PATCH --uri "$GRAPH/applications/$MCP_OBJECT_ID" --headers Content-Type=application/json \
  --body "{\"identifierUris\":[\"api://$MCP_APP_ID\"],
           \"api\":{\"requestedAccessTokenVersion\":2,\"oauth2PermissionScopes\":$MCP_SCOPES},
           \"appRoles\":[{\"id\":\"$MCP_ROLE_ID\",\"value\":\"$MCP_ROLE\",\"isEnabled\":true,
                         \"allowedMemberTypes\":[\"Application\"],\"displayName\":\"$MCP_ROLE\",
                         \"description\":\"Call the MCP tools as the app itself.\"}]}" >/dev/null
# Pre-authorize the Azure CLI's client (az and azd): without it, `az account get-access-token
# --resource api://<mcp>` fails with AADSTS65001 naming 04b07795-... (developer policy, AzureCli).
# A second PATCH (the scope must exist first) that repeats the whole `api` object: Graph replaces
# a complex property as a whole.
run az rest --method PATCH --uri "$GRAPH/applications/$MCP_OBJECT_ID" --headers Content-Type=application/json \
  --body "{\"api\":{\"requestedAccessTokenVersion\":2,\"oauth2PermissionScopes\":$MCP_SCOPES,
           \"preAuthorizedApplications\":[{\"appId\":\"$AZURE_CLI_CLIENT_ID\",
           \"delegatedPermissionIds\":[\"$MCP_SCOPE_ID\"]}]}}" >/dev/null
MCP_SP_ID="$(run az ad sp create --id "$MCP_APP_ID" --query id -o tsv)"

# ---- the agent app (OBO): its own scope, the MCP scope as a required permission, admin consent --
AGENT_APP_ID="$(run az ad app create --display-name "$PREFIX-agent" --sign-in-audience AzureADMyOrg \
  --web-redirect-uris "http://localhost/callback" --query appId -o tsv)"
AGENT_OBJECT_ID="$(run az ad app show --id "$AGENT_APP_ID" --query id -o tsv)"
AGENT_SCOPE_ID="$(uuid)"
run az rest --method PATCH --uri "$GRAPH/applications/$AGENT_OBJECT_ID" --headers Content-Type=application/json \
  --body "{\"identifierUris\":[\"api://$AGENT_APP_ID\"],
           \"api\":{\"requestedAccessTokenVersion\":2,
                    \"oauth2PermissionScopes\":[{\"id\":\"$AGENT_SCOPE_ID\",\"value\":\"access_as_user\",
                      \"type\":\"User\",\"isEnabled\":true,
                      \"adminConsentDisplayName\":\"Use the agent as the user\",
                      \"adminConsentDescription\":\"Lets a client call the agent as the signed-in user.\",
                      \"userConsentDisplayName\":\"Use the agent as you\",
                      \"userConsentDescription\":\"Lets a client call the agent as you.\"}]},
           \"requiredResourceAccess\":[{\"resourceAppId\":\"$MCP_APP_ID\",
                    \"resourceAccess\":[{\"id\":\"$MCP_SCOPE_ID\",\"type\":\"Scope\"}]}]}" >/dev/null
AGENT_SP_ID="$(run az ad sp create --id "$AGENT_APP_ID" --query id -o tsv)"
# Tenant-wide (admin) consent for agent -> mcp (access_as_user): what the "grants" of tenant.json say.
run az rest --method POST --uri "$GRAPH/oauth2PermissionGrants" --headers Content-Type=application/json \
  --body "{\"clientId\":\"$AGENT_SP_ID\",\"consentType\":\"AllPrincipals\",
           \"resourceId\":\"$MCP_SP_ID\",\"scope\":\"$MCP_SCOPE_NAME\"}" >/dev/null
AGENT_SECRET="$(run az ad app credential reset --id "$AGENT_APP_ID" --display-name tenant-setup \
  --years 1 --query password -o tsv)"

# ---- the frontend: the public client users sign in with (device code / browser), consented ------
FRONTEND_APP_ID="$(run az ad app create --display-name "$PREFIX-frontend" --sign-in-audience AzureADMyOrg \
  --is-fallback-public-client true --public-client-redirect-uris "http://localhost" --query appId -o tsv)"
FRONTEND_OBJECT_ID="$(run az ad app show --id "$FRONTEND_APP_ID" --query id -o tsv)"
run az rest --method PATCH --uri "$GRAPH/applications/$FRONTEND_OBJECT_ID" --headers Content-Type=application/json \
  --body "{\"requiredResourceAccess\":[{\"resourceAppId\":\"$AGENT_APP_ID\",
           \"resourceAccess\":[{\"id\":\"$AGENT_SCOPE_ID\",\"type\":\"Scope\"}]}]}" >/dev/null
FRONTEND_SP_ID="$(run az ad sp create --id "$FRONTEND_APP_ID" --query id -o tsv)"
run az rest --method POST --uri "$GRAPH/oauth2PermissionGrants" --headers Content-Type=application/json \
  --body "{\"clientId\":\"$FRONTEND_SP_ID\",\"consentType\":\"AllPrincipals\",
           \"resourceId\":\"$AGENT_SP_ID\",\"scope\":\"access_as_user\"}" >/dev/null

# ---- a user-assigned managed identity as the agent app's federated credential -------------------
MI_CLIENT_ID=""
if [[ -n "$RG" ]]; then
  run az group create --name "$RG" --location "$LOCATION" >/dev/null
  MI_NAME="$PREFIX-$(desc "d['managed_identities'][0]['name']")"
  MI_CLIENT_ID="$(run az identity create --resource-group "$RG" --name "$MI_NAME" --location "$LOCATION" \
    --query clientId -o tsv)"
  MI_PRINCIPAL_ID="$(run az identity show --resource-group "$RG" --name "$MI_NAME" --query principalId -o tsv)"
  # Only a USER-assigned identity can be a federated credential; its object (principal) id is the subject.
  run az ad app federated-credential create --id "$AGENT_APP_ID" --parameters \
    "{\"name\":\"$MI_NAME\",\"issuer\":\"$ISSUER\",\"subject\":\"$MI_PRINCIPAL_ID\",
      \"audiences\":[\"$TOKEN_EXCHANGE_AUDIENCE\"]}" >/dev/null
  # The app role of the MCP API for the managed identity (app_only / lifecycle requests).
  run az rest --method POST --uri "$GRAPH/servicePrincipals/$MI_PRINCIPAL_ID/appRoleAssignments" \
    --headers Content-Type=application/json \
    --body "{\"principalId\":\"$MI_PRINCIPAL_ID\",\"resourceId\":\"$MCP_SP_ID\",\"appRoleId\":\"$MCP_ROLE_ID\"}" >/dev/null
fi

# ---- Entra Agent ID (preview, Graph beta): a blueprint, its principal, one agent identity -------
BLUEPRINT_APP_ID=""
AGENT_IDENTITY_ID=""
if [[ $AGENT_ID == 1 ]]; then
  BLUEPRINT_APP_ID="$(run az rest --method POST --uri "$GRAPH_BETA/applications/microsoft.graph.agentIdentityBlueprint" \
    --headers Content-Type=application/json \
    --body "{\"displayName\":\"$PREFIX-blueprint\",
             \"sponsors@odata.bind\":[\"$GRAPH/users/$ME\"],\"owners@odata.bind\":[\"$GRAPH/users/$ME\"]}" \
    --query appId -o tsv)"
  BLUEPRINT_OBJECT_ID="$(run az ad app show --id "$BLUEPRINT_APP_ID" --query id -o tsv)"
  BLUEPRINT_SP_ID="$(run az rest --method POST --uri "$GRAPH_BETA/serviceprincipals/microsoft.graph.agentIdentityBlueprintPrincipal" \
    --headers Content-Type=application/json --body "{\"appId\":\"$BLUEPRINT_APP_ID\"}" --query id -o tsv)"
  # Users' tokens for an agent identity are issued for its blueprint (aud = the blueprint): the
  # blueprint exposes an API (App ID URI + delegated scope) like the agent app, and configures the
  # MCP scope (requiredResourceAccess: "required" in tenant.json). One PATCH, the whole `api`.
  BLUEPRINT_SCOPE_NAME="$(desc "next(a for a in d['apps'] if a['name']=='blueprint')['scope']")"
  BLUEPRINT_SCOPE_ID="$(uuid)"
  run az rest --method PATCH --uri "$GRAPH_BETA/applications/$BLUEPRINT_OBJECT_ID" --headers Content-Type=application/json \
    --body "{\"identifierUris\":[\"api://$BLUEPRINT_APP_ID\"],
             \"api\":{\"requestedAccessTokenVersion\":2,
                      \"oauth2PermissionScopes\":[{\"id\":\"$BLUEPRINT_SCOPE_ID\",\"value\":\"$BLUEPRINT_SCOPE_NAME\",
                        \"type\":\"User\",\"isEnabled\":true,
                        \"adminConsentDisplayName\":\"Use the agent as the user\",
                        \"adminConsentDescription\":\"Lets a client call the agent as the signed-in user.\",
                        \"userConsentDisplayName\":\"Use the agent as you\",
                        \"userConsentDescription\":\"Lets a client call the agent as you.\"}]},
             \"requiredResourceAccess\":[{\"resourceAppId\":\"$MCP_APP_ID\",
                      \"resourceAccess\":[{\"id\":\"$MCP_SCOPE_ID\",\"type\":\"Scope\"}]}]}" >/dev/null
  # Tenant-wide (admin) consent for the "grants" of tenant.json that name the blueprint:
  # blueprint -> mcp (what its agent identities inherit) and frontend -> blueprint (users sign in
  # for the blueprint). Agent identities cannot be consented interactively (AADSTS82014).
  sp_of() {  # the service principal id of an app of tenant.json, by name
    case "$1" in
      mcp) echo "$MCP_SP_ID" ;;
      agent) echo "$AGENT_SP_ID" ;;
      frontend) echo "$FRONTEND_SP_ID" ;;
      blueprint) echo "$BLUEPRINT_SP_ID" ;;
      *) echo "tenant.json: no service principal for '$1' in this script" >&2; return 1 ;;
    esac
  }
  BLUEPRINT_GRANTS="$(desc "'\\n'.join(g['client']+' '+g['resource']+' '+' '.join(g['scopes'])
    for g in d['grants'] if 'blueprint' in (g['client'], g['resource']) and not g.get('user'))")"
  while read -r client resource scopes <&3; do
    [[ -n "$client" ]] || continue
    CLIENT_SP="$(sp_of "$client")"; RESOURCE_SP="$(sp_of "$resource")"
    run az rest --method POST --uri "$GRAPH/oauth2PermissionGrants" --headers Content-Type=application/json \
      --body "{\"clientId\":\"$CLIENT_SP\",\"consentType\":\"AllPrincipals\",
               \"resourceId\":\"$RESOURCE_SP\",\"scope\":\"$scopes\"}" >/dev/null
  done 3<<<"$BLUEPRINT_GRANTS"
  # Inheritable permissions ("inheritable" in tenant.json): an agent identity inherits a delegated
  # scope only if the blueprint lists its resource as inheritable AND holds the grant; otherwise
  # OBO for the agent identity answers AADSTS65001. "<resource>/*" is allAllowedScopes, a list of
  # scopes enumeratedScopes. POST creates the entry of a resource; one that exists already
  # (409 Conflict) is replaced with PATCH .../inheritablePermissions/{resourceAppId}.
  # https://learn.microsoft.com/entra/agent-id/configure-inheritable-permissions-blueprints
  app_id_of() {  # the appId of a resource named in tenant.json
    case "$1" in
      mcp) echo "$MCP_APP_ID" ;;
      agent) echo "$AGENT_APP_ID" ;;
      graph|00000003-0000-0000-c000-000000000000) echo "00000003-0000-0000-c000-000000000000" ;;
      *) echo "tenant.json: inheritable resource '$1' is not created by this script" >&2; return 1 ;;
    esac
  }
  INHERITABLE="$(python3 - "$DESCRIPTION" <<'PY'
import json, sys
bp = next(a for a in json.load(open(sys.argv[1]))["apps"] if a["name"] == "blueprint")
raw = bp.get("inheritable") or []
if isinstance(raw, dict):
    raw = [f"{r}/*" if s in ("*", "all", True) else f"{r}/{x}"
           for r, s in raw.items() for x in ([s] if isinstance(s, str) else s)]
by_resource = {}
for entry in ([raw] if isinstance(raw, str) else raw):
    resource, _, scope = entry.rpartition("/")
    by_resource.setdefault(resource, []).append(scope)
for resource, scopes in by_resource.items():
    if "*" in scopes:
        body = {"@odata.type": "#microsoft.graph.allAllowedScopes", "kind": "allAllowed"}
    else:
        body = {"@odata.type": "#microsoft.graph.enumeratedScopes", "kind": "enumerated",
                "scopes": list(dict.fromkeys(scopes))}
    print(resource, json.dumps(body, separators=(",", ":")))
PY
)"
  INHERITABLE_URI="$GRAPH_BETA/applications/$BLUEPRINT_OBJECT_ID/microsoft.graph.agentIdentityBlueprint/inheritablePermissions"
  while read -r resource scopes_json <&3; do
    [[ -n "$resource" ]] || continue
    RESOURCE_APP_ID="$(app_id_of "$resource")"
    run az rest --method POST --uri "$INHERITABLE_URI" --headers Content-Type=application/json \
      --body "{\"resourceAppId\":\"$RESOURCE_APP_ID\",\"inheritableScopes\":$scopes_json}" >/dev/null \
    || run az rest --method PATCH --uri "$INHERITABLE_URI/$RESOURCE_APP_ID" --headers Content-Type=application/json \
      --body "{\"inheritableScopes\":$scopes_json}" >/dev/null
  done 3<<<"$INHERITABLE"
  if [[ -n "$MI_CLIENT_ID" ]]; then
    run az rest --method POST --uri "$GRAPH_BETA/applications/$BLUEPRINT_OBJECT_ID/federatedIdentityCredentials" \
      --headers Content-Type=application/json \
      --body "{\"name\":\"$MI_NAME\",\"issuer\":\"$ISSUER\",\"subject\":\"$MI_PRINCIPAL_ID\",
               \"audiences\":[\"$TOKEN_EXCHANGE_AUDIENCE\"]}" >/dev/null
  fi
  # Agent identities are created by the blueprint itself (an app-only token of the blueprint):
  # a short-lived secret is added, used once, and removed.
  BP_SECRET="$(run az ad app credential reset --id "$BLUEPRINT_APP_ID" --display-name tenant-setup \
    --end-date "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT23:59:59Z)" \
    --query password -o tsv)"
  if [[ $DRY == 0 ]]; then
    sleep 20  # a new secret takes a moment to replicate
    BP_TOKEN="$(curl -sS "https://login.microsoftonline.com/$TENANT_ID/oauth2/v2.0/token" \
      --data-urlencode "client_id=$BLUEPRINT_APP_ID" --data-urlencode "client_secret=$BP_SECRET" \
      --data-urlencode "grant_type=client_credentials" \
      --data-urlencode "scope=https://graph.microsoft.com/.default" \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['access_token'])")"
    AGENT_IDENTITY_ID="$(curl -sS -X POST "$GRAPH_BETA/serviceprincipals/Microsoft.Graph.AgentIdentity" \
      -H "Authorization: Bearer $BP_TOKEN" -H "Content-Type: application/json" \
      -d "{\"displayName\":\"$PREFIX-agent-identity\",\"agentIdentityBlueprintId\":\"$BLUEPRINT_APP_ID\",
           \"sponsors@odata.bind\":[\"$GRAPH/users/$ME\"]}" \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['appId'])")"
    unset BP_TOKEN BP_SECRET
    echo "Remove the set-up secret of the blueprint when done: az ad app credential list --id $BLUEPRINT_APP_ID" >&2
  fi
fi

# ---- the environment variables each path needs ------------------------------------------------
cat <<ENV
# --- entra-passthrough: on-behalf-of with a client secret (local runs, tests/live) ---
AZURE_TENANT_ID=$TENANT_ID
ENTRA_PASSTHROUGH_CLIENT_ID=$AGENT_APP_ID
ENTRA_PASSTHROUGH_CLIENT_SECRET=$AGENT_SECRET
MCP_SCOPE=api://$MCP_APP_ID/$MCP_SCOPE_NAME
MCP_APP_ID=$MCP_APP_ID
# --- tests/live: the public client a test user signs in with (device code) ---
ENTRA_LIVE_TENANT_ID=$TENANT_ID
ENTRA_LIVE_CLIENT_ID=$AGENT_APP_ID
ENTRA_LIVE_CLIENT_SECRET=$AGENT_SECRET
ENTRA_LIVE_API_SCOPE=api://$MCP_APP_ID/.default
ENTRA_LIVE_PUBLIC_CLIENT_ID=$FRONTEND_APP_ID
# and ENTRA_LIVE_USERNAME / ENTRA_LIVE_PASSWORD of a test user without MFA (or ENTRA_LIVE_USER_ASSERTION)
ENV
if [[ -n "$MI_CLIENT_ID" ]]; then
cat <<ENV
# --- secretless on Azure: the user-assigned identity is the OBO app's federated credential ---
# (assign the identity to your App Service / Container App; it sets IDENTITY_ENDPOINT itself)
AZURE_CLIENT_ID=$MI_CLIENT_ID
ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL=managed_identity
ENV
fi
if [[ -n "$BLUEPRINT_APP_ID" ]]; then
cat <<ENV
# --- Entra Agent ID (users' tokens are for the blueprint: scope api://$BLUEPRINT_APP_ID/$BLUEPRINT_SCOPE_NAME) ---
ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID=$BLUEPRINT_APP_ID
ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID=$AGENT_IDENTITY_ID
ENV
fi
cat <<ENV
# --- developer policy: az / azd are pre-authorized on the MCP API ---
# ENTRA_PASSTHROUGH_POLICY=developer   (az login, or azd auth login with ENTRA_PASSTHROUGH_DEVELOPER_CLI=azd)
ENV
