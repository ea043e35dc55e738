"""A hosted agent (Agent Framework ``ResponsesHostServer``) whose MCP tool calls a remote MCP
server protected by Entra ID *as the end user*.

    python examples/hosted_agent/app.py --emulator     # everything local, no tenant, no model
    python examples/hosted_agent/app.py                # your tenant (see README.md)

What it wires (docs/agent-framework.md explains why each piece is needed):

* ``TokenChain([OnBehalfOf(...)])`` under ``Policy.USER_ONLY``: the user's token for the MCP
  server's audience, never the agent's own identity.
* ``entra_mcp_tool(...)``: an ``MCPStreamableHTTPTool`` whose tools/call carry the token of the
  user whose run made them; with ``--per-user``, one connection per user (for servers that bind
  sessions to a principal or filter tools per user) through ``ResponsesHostServer(agent=factory)``.
* ``entra_middleware()``: consent becomes an ``oauth_consent_request`` item.
* ``install(app)``: ``CallerMiddleware`` + background-run callers on the host.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from entra_passthrough import OnBehalfOf, Policy, TokenChain
from entra_passthrough.agent_framework import (
    EntraMCPToolPool,
    entra_mcp_tool,
    entra_middleware,
    install,
)


@dataclass(frozen=True)
class Config:
    mcp_url: str  # the MCP server's endpoint, e.g. https://mcp.contoso.com/mcp
    mcp_scope: str  # api://<mcp-app-id>/.default
    tenant_id: str
    client_id: str  # this agent's app registration (the OBO client)
    client_secret: str | None = None  # or a managed identity / workload identity (see docs)
    authority_host: str = "https://login.microsoftonline.com"
    per_user: bool = False
    http_client: Any = None  # requests.Session for MSAL (the emulator's CA in local mode)
    verify: Any = True  # httpx2 verify for the MCP server

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            mcp_url=os.environ["MCP_URL"],
            mcp_scope=os.environ["MCP_SCOPE"],
            tenant_id=os.environ.get("ENTRA_TENANT_ID") or os.environ["AZURE_TENANT_ID"],
            client_id=os.environ["ENTRA_PASSTHROUGH_CLIENT_ID"],
            client_secret=os.environ.get("ENTRA_PASSTHROUGH_CLIENT_SECRET"),
            authority_host=os.environ.get(
                "AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"
            ),
            per_user=os.environ.get("MCP_PER_USER", "") in ("1", "true"),
        )


def make_chain(config: Config) -> TokenChain:
    obo = OnBehalfOf(
        client_id=config.client_id,
        tenant_id=config.tenant_id,
        client_secret=config.client_secret,
        authority_host=config.authority_host,
        http_client=config.http_client,
    )
    return TokenChain([obo], policy=Policy.USER_ONLY)


def default_chat_client() -> Any:
    """Your model. In Foundry: ``FoundryChatClient`` (reads FOUNDRY_PROJECT_ENDPOINT and
    AZURE_AI_MODEL_DEPLOYMENT_NAME); locally without a model: the scripted client."""
    if os.environ.get("FOUNDRY_PROJECT_ENDPOINT"):
        from agent_framework.foundry import FoundryChatClient

        return FoundryChatClient()
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    return ScriptedChatClient(tool="whoami")


def create_app(
    config: Config,
    *,
    chat_client: Callable[[], Any] = default_chat_client,
    configure_observability: Any = "default",
) -> Any:
    """The ASGI app: a ``ResponsesHostServer`` with the capture middleware installed."""
    chain = make_chain(config)
    options: dict[str, Any] = {}
    if configure_observability != "default":
        options["configure_observability"] = configure_observability
    instructions = "Answer with what the whoami tool says."
    if config.per_user:
        pool: EntraMCPToolPool = entra_mcp_tool(
            "notes",
            config.mcp_url,
            chain=chain,
            scopes=[config.mcp_scope],
            per_user=True,
            verify=config.verify,
        )

        async def make_agent() -> Agent:
            # Called for every request, in that request's context: the pool hands out the
            # caller's own connection.
            return Agent(
                client=chat_client(),
                instructions=instructions,
                tools=[await pool.tool()],
                middleware=entra_middleware(),
            )

        agent_source: Agent | Callable[[], Awaitable[Agent]] = make_agent
        closables: list[Any] = [pool]
    else:
        tool = entra_mcp_tool(
            "notes", config.mcp_url, chain=chain, scopes=[config.mcp_scope], verify=config.verify
        )
        agent_source = Agent(
            client=chat_client(),
            instructions=instructions,
            tools=[tool],
            middleware=entra_middleware(),
        )
        closables = []
    app = ResponsesHostServer(agent_source, **options)
    return install(app, close_on_shutdown=closables)


def run_local(*, port: int, mcp_port: int, per_user: bool) -> None:
    """Emulator + the example MCP server (examples/mcp_server) + this agent, all on loopback."""
    import importlib.util
    import ssl
    import threading
    from pathlib import Path

    import uvicorn

    from entra_passthrough.testing import EntraEmulator

    spec = importlib.util.spec_from_file_location(
        "notes_server", Path(__file__).parent.parent / "mcp_server" / "notes_server.py"
    )
    if spec is None or spec.loader is None:
        raise RuntimeError("examples/mcp_server/notes_server.py is missing")
    notes = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = notes
    spec.loader.exec_module(notes)
    with EntraEmulator() as idp:
        mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
        mcp_app = notes.create_app(
            notes.Config(
                tenant_id=idp.tenant_id,
                client_id=idp.mcp.client_id,
                resource_url=mcp_url,
                authority_host=idp.url,
                verify=idp.ca_file,
            )
        )
        mcp_server = uvicorn.Server(
            uvicorn.Config(mcp_app, host="127.0.0.1", port=mcp_port, log_level="warning")
        )
        threading.Thread(target=mcp_server.run, daemon=True).start()
        config = Config(
            mcp_url=mcp_url,
            mcp_scope=f"{idp.mcp.app_id_uri}/.default",
            tenant_id=idp.tenant_id,
            client_id=idp.agent.client_id,
            client_secret=idp.agent.secret,
            authority_host=idp.url,
            per_user=per_user,
            http_client=idp.msal_http_client(),
            verify=ssl.create_default_context(cafile=idp.ca_file),
        )
        print(f"emulator: {idp.url} (CA {idp.ca_file})")
        print(f"MCP server: {mcp_url}; agent: http://127.0.0.1:{port}/responses")
        print("mint a user token with EntraEmulator.user_token(...) (see README.md)")
        try:
            create_app(config).run(port=port)
        finally:
            mcp_server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--emulator", action="store_true", help="local emulator, no tenant")
    parser.add_argument("--per-user", action="store_true", help="one MCP connection per user")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--mcp-port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.emulator:
        run_local(port=args.port, mcp_port=args.mcp_port, per_user=args.per_user)
    else:
        create_app(Config.from_env()).run(port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
