"""A Microsoft Foundry hosted agent whose MCP tool calls an Entra-protected server *as the user*.

The container entry point (``startupCommand: python main.py`` in ``azure.yaml``). Everything is
read from the environment: what ``azure.yaml`` sets (``env:``) and what Foundry injects
(``FOUNDRY_*``, the managed identity endpoint). No secret is needed:

* **User token -> MCP server: on-behalf-of**, ``TokenChain.from_env()``. The client calls the
  agent with a token *for the agent app* (a client-supplied assertion); the agent exchanges it
  with its app registration (``ENTRA_PASSTHROUGH_CLIENT_ID``), whose client credential is the
  container's user-assigned managed identity registered as a federated credential
  (``ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL=managed_identity``, ``AZURE_CLIENT_ID``). Without an
  app registration, ``from_env()`` uses the Entra Agent ID Foundry injects
  (``FOUNDRY_AGENT_INSTANCE_CLIENT_ID``, ``FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID``,
  ``FOUNDRY_AGENT_TENANT_ID``).
* **No usable token (e.g. Foundry's own token for ai.azure.com): delegated consent**, when
  ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID`` is set. The user signs in once through the consent
  broker (its own small web app, ``entra-passthrough broker``); the grant lives, sealed, in the
  store both share (``ENTRA_PASSTHROUGH_REDIS_URL``; in-process memory otherwise, which only a
  single process with the broker mounted can use). ``DelegatedConsent.from_env()``: its client
  credential is the same managed identity unless
  ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET``/``_CERTIFICATE_PATH`` is set.
* **The model**: ``FoundryChatClient`` (``agent-framework-foundry``, pinned in the Dockerfile)
  with the project endpoint Foundry injects, the deployment ``azure.yaml`` names and the
  managed identity as its credential, all passed explicitly (``default_chat_client``).
* **Host telemetry is explicit**: ``HOST_TELEMETRY=on`` exports (Application Insights / OTLP,
  as the platform configures them), ``off`` disables the host's observability set-up entirely.
  Default: on only inside Foundry (``FOUNDRY_HOSTING_ENVIRONMENT`` is set), so a laptop never
  ships telemetry because an azd environment left a connection string around.
* **A configuration error stops the start in one line** (what is wrong and what to set, exit
  status 1), never a traceback: the library's ``ConfigurationError``, this file's own checks,
  an on/off variable (``HOST_TELEMETRY``, ``MCP_PER_USER``: on/off, true/false, yes/no, 1/0)
  with another value, a ``PORT`` that is not a TCP port.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from entra_passthrough import (
    ConfigurationError,
    DelegatedConsent,
    MemoryStore,
    MissingExtraError,
    Policy,
    TokenChain,
)
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware, install

INSTRUCTIONS = "Answer with what the whoami tool says."


def _get(env: Mapping[str, str], name: str) -> str | None:
    return (env.get(name) or "").strip() or None


def _need(env: Mapping[str, str], name: str, what: str) -> str:
    value = _get(env, name)
    if value is None:
        raise SystemExit(f"{name} is not set: it names {what} (see README.md).")
    return value


_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """An on/off variable (on/off, true/false, yes/no, 1/0, any case); ``None`` when unset.
    Another value stops the start: read as off, ``MCP_PER_USER=yes`` shared one connection."""
    value = _get(env, name)
    if value is None:
        return None
    if value.lower() in _ON:
        return True
    if value.lower() in _OFF:
        return False
    shown = repr(value) if len(value) <= 16 and value.isalnum() else "(not shown)"
    raise SystemExit(f"{name}={shown}: use on or off (true/false, yes/no and 1/0 work too).")


def telemetry_enabled(env: Mapping[str, str]) -> bool:
    enabled = _flag(env, "HOST_TELEMETRY")
    if enabled is not None:
        return enabled
    return _get(env, "FOUNDRY_HOSTING_ENVIRONMENT") is not None


def listen_port(env: Mapping[str, str]) -> int:
    """``PORT`` (Foundry sets it), 8088 when unset; a TCP port number, 1 to 65535."""
    value = _get(env, "PORT")
    if value is None:
        return 8088
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
        shown = repr(value) if len(value) <= 16 and value.isalnum() else "(not shown)"
        raise SystemExit(f"PORT={shown}: use the TCP port to listen on, 1 to 65535.")
    return int(value)


def shared_store(env: Mapping[str, str]) -> Any:
    """The grant store the agent and the consent broker share."""
    if _get(env, "ENTRA_PASSTHROUGH_REDIS_URL"):
        from entra_passthrough.redis import RedisStore

        return RedisStore.from_env(env)
    return MemoryStore()


def consent_source(
    env: Mapping[str, str], store: Any, *, http_client: Any = None
) -> DelegatedConsent | None:
    """``DelegatedConsent.from_env()`` when a consent app is configured, else ``None``. Its
    client credential, secretless: the managed identity as a federated credential of the
    consent app (``ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL=managed_identity``, or chosen
    because the host has a managed identity endpoint), unless a secret or certificate is set."""
    if not _get(env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID"):
        return None
    return DelegatedConsent.from_env(
        env,
        store=store,
        http_client=http_client,
        server_label=_get(env, "MCP_SERVER_LABEL") or "notes",
    )


def make_chain(env: Mapping[str, str], store: Any, *, http_client: Any = None) -> TokenChain:
    """On-behalf-of (or Agent ID) from the environment, then delegated consent if configured.
    Never the agent's own identity for a user's call (``user_only``)."""
    base = TokenChain.from_env(env, http_client=http_client, policy=Policy.USER_ONLY)
    sources = list(base.sources)
    consent = consent_source(env, store, http_client=http_client)
    if consent is not None:
        sources.append(consent)
    return TokenChain(sources, policy=Policy.USER_ONLY)


#: Where the model deployment's name is read, first found wins: what ``azure.yaml`` sets, then
#: ``FOUNDRY_MODEL`` (what agent-framework-foundry 1.15 reads itself) and
#: ``AZURE_AI_MODEL_DEPLOYMENT_NAME`` (what earlier versions of this template set).
MODEL_VARIABLES = (
    "MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME",
    "FOUNDRY_MODEL",
    "AZURE_AI_MODEL_DEPLOYMENT_NAME",
)


def model_deployment(env: Mapping[str, str]) -> str | None:
    return next((value for name in MODEL_VARIABLES if (value := _get(env, name))), None)


def model_credential(env: Mapping[str, str]) -> Any:
    """The model client's credential: the container's managed identity, async (the client's
    ``AIProjectClient`` is the ``aio`` one), the user-assigned identity ``AZURE_CLIENT_ID`` names
    (the one ``DefaultAzureCredential`` would pick there), else the system-assigned one. That
    identity needs a data-plane role on the Foundry project to call its deployments."""
    from azure.identity.aio import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=_get(env, "AZURE_CLIENT_ID"))


def default_chat_client(env: Mapping[str, str] | None = None) -> Any:
    """The model: ``FoundryChatClient`` in Foundry (``FOUNDRY_PROJECT_ENDPOINT``, injected, and
    the deployment in ``MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME``, see ``MODEL_VARIABLES``);
    locally, without a model, a scripted client that calls ``whoami`` once and answers with what
    it said. Inside Foundry (``FOUNDRY_HOSTING_ENVIRONMENT``) a missing deployment stops the
    start rather than answer users from the scripted client."""
    env = os.environ if env is None else env
    endpoint = _get(env, "FOUNDRY_PROJECT_ENDPOINT")
    model = model_deployment(env)
    inside = _get(env, "FOUNDRY_HOSTING_ENVIRONMENT") is not None
    if inside and not (endpoint and endpoint.lower().startswith("https://")):
        # The host's own storage needs it too: without it ResponsesHostServer stopped the start
        # with a traceback ("endpoint must be a non-empty string").
        raise SystemExit(
            "FOUNDRY_PROJECT_ENDPOINT is "
            + ("not set" if not endpoint else "not an https:// URL")
            + ": Foundry injects the project's endpoint into a hosted agent "
            "(FOUNDRY_HOSTING_ENVIRONMENT is set, so this runs as one). Fix: do not set or "
            "override it, or unset FOUNDRY_HOSTING_ENVIRONMENT to run locally (see README.md)."
        )
    if endpoint and model:
        from agent_framework.foundry import FoundryChatClient

        # Everything explicit: agent-framework-foundry 1.15 reads the model only from model=
        # or FOUNDRY_MODEL and refuses to start without a credential (a bare
        # FoundryChatClient() stopped the container). The Dockerfile pins the range this call
        # is tested with (tests/examples/test_hosted_agent_startup.py).
        client = FoundryChatClient(
            project_endpoint=endpoint, model=model, credential=model_credential(env)
        )
        return _shows_tool_errors(client)
    if endpoint and _get(env, "FOUNDRY_HOSTING_ENVIRONMENT"):
        raise SystemExit(
            f"{MODEL_VARIABLES[0]} is not set: it names the model deployment the agent uses "
            "(azure.yaml's env:, from `azd env set`; see README.md)."
        )
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    return _shows_tool_errors(ScriptedChatClient(tool="whoami"))


def _shows_tool_errors(client: Any) -> Any:
    """agent-framework shows the model only "Error: Function failed." for a tool's exception
    unless detailed errors are on. This agent's only tool is the library's MCP tool, whose
    own errors carry no token or secret and say what to do (sign in again with MFA, the call may
    have run, the server is unreachable): the model, and so the user, should see them. The MCP
    server's error text reaches the model too: the call's token is taken out of it, anything
    else it says is shown as written (trust the server's errors, or turn this off)."""
    config = getattr(client, "function_invocation_configuration", None)
    if isinstance(config, dict):
        config["include_detailed_errors"] = True
    return client


def create_app(
    env: Mapping[str, str] | None = None,
    *,
    store: Any = None,
    http_client: Any = None,
    verify: Any = True,
    chat_client: Callable[[], Any] | None = None,
) -> Any:
    """The ASGI app (a ``ResponsesHostServer`` with the capture middleware installed).
    ``chat_client`` makes the model client (``default_chat_client(env)`` unless given), once:
    every agent of the app shares it (one credential, one connection pool)."""
    env = os.environ if env is None else env
    client = default_chat_client(env) if chat_client is None else chat_client()
    store = shared_store(env) if store is None else store
    chain = make_chain(env, store, http_client=http_client)
    mcp_url = _need(env, "MCP_URL", "the MCP server's endpoint")
    scopes = [_need(env, "MCP_SCOPE", "the MCP server's scope, api://<app>/.default")]
    closables: list[Any] = []
    if _flag(env, "MCP_PER_USER"):
        pool = entra_mcp_tool(
            "notes", mcp_url, chain=chain, scopes=scopes, per_user=True, verify=verify
        )
        closables.append(pool)

        async def make_agent() -> Agent:
            # Per request, in its context: the pool hands out the caller's own connection.
            return Agent(
                client=client,
                instructions=INSTRUCTIONS,
                tools=[await pool.tool()],
                middleware=entra_middleware(),
            )

        agent: Agent | Callable[[], Awaitable[Agent]] = make_agent
    else:
        tool = entra_mcp_tool("notes", mcp_url, chain=chain, scopes=scopes, verify=verify)
        agent = Agent(
            client=client,
            instructions=INSTRUCTIONS,
            tools=[tool],
            middleware=entra_middleware(),
        )
    options: dict[str, Any] = {}
    if not telemetry_enabled(env):
        options["configure_observability"] = None  # no exporters, no log handlers
    host = ResponsesHostServer(agent, **options)
    # Who created each stored response (ResponseOwners): in the shared Redis when there is one,
    # so that every replica, and the agent after a restart, knows them.
    owners = store if _get(env, "ENTRA_PASSTHROUGH_REDIS_URL") else None
    return install(host, close_on_shutdown=closables, response_owners=owners)


def _one_line(exc: BaseException) -> str:
    """The library's error as one line: what is wrong, then ``Fix:`` what to set (its text
    names settings and never a secret)."""
    return " ".join(str(exc).split())


def main() -> int:
    port = listen_port(os.environ)
    try:
        app = create_app()
        app.run(port=port)
    except (ConfigurationError, MissingExtraError) as exc:
        # What is wrong and what to set, in the container's log, without a traceback.
        raise SystemExit(_one_line(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
