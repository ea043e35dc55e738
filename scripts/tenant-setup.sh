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
#   --agent-id             also create an Entra Agent ID blueprint + agent identity (preview:
#                          needs Microsoft Graph beta and the Agent ID roles)
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
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
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
  run az rest --method POST --uri "$GRAPH_BETA/serviceprincipals/microsoft.graph.agentIdentityBlueprintPrincipal" \
    --headers Content-Type=application/json --body "{\"appId\":\"$BLUEPRINT_APP_ID\"}" >/dev/null
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
# --- Entra Agent ID ---
ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID=$BLUEPRINT_APP_ID
ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID=$AGENT_IDENTITY_ID
ENV
fi
cat <<ENV
# --- developer policy: az / azd are pre-authorized on the MCP API ---
# ENTRA_PASSTHROUGH_POLICY=developer   (az login, or azd auth login with ENTRA_PASSTHROUGH_DEVELOPER_CLI=azd)
ENV
