"""Developer mode: run the agent on your machine as *you* (``az login``), no user token needed.

    az login --tenant <tenant>
    MCP_URL=https://mcp.contoso.com/mcp MCP_SCOPE=api://<mcp-app-id>/.default \\
        python examples/local_dev/dev_agent.py

    python examples/local_dev/dev_agent.py --emulator     # no tenant: the emulator's az stand-in

With ``FOUNDRY_PROJECT_ENDPOINT`` and ``FOUNDRY_MODEL`` (a deployment of that project) set, the
model is ``FoundryChatClient``, also as you (the Azure CLI's credential); it needs
``pip install 'agent-framework-foundry>=1.15,<1.16'`` (the range the hosted agent's image pins).
Without them, a scripted client calls the tool once and answers with what it said.

``Policy.DEVELOPER`` is an explicit opt-in: the Azure CLI token (kind ``developer``) stands in for
a user, so the MCP server sees the developer who ran ``az login``. It is never inferred from the
environment, and a deployed agent keeps ``Policy.USER_ONLY`` (docs/sources-and-policy.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

from agent_framework import Agent

from entra_passthrough import AzureCli, Policy, TokenChain
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware


@dataclass(frozen=True)
class Config:
    mcp_url: str
    mcp_scope: str
    tenant_id: str | None = None
    verify: Any = True

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            mcp_url=os.environ["MCP_URL"],
            mcp_scope=os.environ["MCP_SCOPE"],
            tenant_id=os.environ.get("AZURE_TENANT_ID"),
        )


#: The model deployment's name, first found wins: agent-framework-foundry's own variable, then
#: the hosted agent's (examples/hosted_agent/azure.yaml) and the older name.
MODEL_VARIABLES = (
    "FOUNDRY_MODEL",
    "MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME",
    "AZURE_AI_MODEL_DEPLOYMENT_NAME",
)


def chat_client(credential: Any = None) -> Any:
    """``FoundryChatClient`` when ``FOUNDRY_PROJECT_ENDPOINT`` is set, with the deployment and
    ``credential`` (async) passed explicitly: agent-framework-foundry 1.15 finds no credential
    itself and refuses to start without one. Else a scripted client (no model)."""
    endpoint = os.environ.get("FOUNDRY_PROJECT_ENDPOINT")
    if endpoint:
        model = next((v for name in MODEL_VARIABLES if (v := os.environ.get(name))), None)
        if not model:
            raise SystemExit(
                "FOUNDRY_PROJECT_ENDPOINT is set but FOUNDRY_MODEL is not: set it to the name "
                "of the project's model deployment."
            )
        from agent_framework.foundry import FoundryChatClient

        return FoundryChatClient(project_endpoint=endpoint, model=model, credential=credential)
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    return ScriptedChatClient(tool="whoami")


async def ask(config: Config, question: str = "Who am I?") -> str:
    """One agent run as the developer; returns the answer."""
    from azure.identity.aio import AzureCliCredential

    chain = TokenChain([AzureCli(tenant_id=config.tenant_id)], policy=Policy.DEVELOPER)
    tool = entra_mcp_tool(
        "notes", config.mcp_url, chain=chain, scopes=[config.mcp_scope], verify=config.verify
    )
    # The model, when there is one, as you too: the Azure CLI's credential (async).
    async with AzureCliCredential(tenant_id=config.tenant_id) as credential:
        agent = Agent(client=chat_client(credential), tools=[tool], middleware=entra_middleware())
        async with agent:
            response = await agent.run(question)
    return response.text


def _local() -> str:
    """Emulator + the example MCP server in this process; returns the answer."""
    import importlib.util
    import socket
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
        os.environ.update(idp.az_env("alice"))  # `az` stand-in first on PATH, signed in as alice
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # a free port, known before the server needs its own URL
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        app = notes.create_app(
            notes.Config(
                tenant_id=idp.tenant_id,
                client_id=idp.mcp.client_id,
                resource_url=url,
                authority_host=idp.url,
                verify=idp.ca_file,
            )
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        for _ in range(500):  # bounded readiness poll
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        try:
            if not server.started:
                raise RuntimeError("the example MCP server did not start")
            config = Config(
                mcp_url=url,
                mcp_scope=f"{idp.mcp.app_id_uri}/.default",
                tenant_id=idp.tenant_id,
                verify=ssl.create_default_context(cafile=idp.ca_file),
            )
            return asyncio.run(ask(config))
        finally:
            server.should_exit = True
            thread.join(5)
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--emulator", action="store_true", help="no tenant: local emulator")
    args = parser.parse_args(argv)
    answer = _local() if args.emulator else asyncio.run(ask(Config.from_env()))
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
