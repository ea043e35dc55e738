"""The demo's MCP server: protected by ``entra_passthrough.server``; it records who it saw."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp.server.mcpserver import MCPServer

from .._verify import JwtVerifier
from ..server import EntraChallengeMiddleware, EntraTokenVerifier, auth_settings, current_user
from ..testing import EntraEmulator

_NOTES = {
    "alice": ["Q3 roadmap draft", "1:1 with bob on Friday"],
    "bob": ["ship v1.2", "review alice's roadmap"],
    "carol": ["onboarding checklist"],
}


@dataclass
class Sightings:
    """Every tools/call the server handled: tool, upn, oid and claims, as *verified* there."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **seen: Any) -> None:
        with self.lock:
            self.calls.append(seen)


def build(idp: EntraEmulator, *, base_url: str, sightings: Sightings) -> Any:
    verifier = JwtVerifier(
        audiences=list(idp.mcp.identifiers),
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        http_client=httpx2.AsyncClient(
            verify=ssl.create_default_context(cafile=idp.ca_file), trust_env=False
        ),
    )
    auth = auth_settings(
        resource_server_url=f"{base_url}/mcp",
        tenant_id=idp.tenant_id,
        scopes=["access_as_user"],
        app_id_uri=idp.mcp.app_id_uri,
        authority_host=idp.url,
    )
    server = MCPServer("contoso-records", token_verifier=EntraTokenVerifier(verifier), auth=auth)

    @server.tool()
    async def whoami() -> str:
        """Who is calling, as this server verified it."""
        user = current_user()
        sightings.add(tool="whoami", upn=user.upn, oid=user.oid, claims=dict(user.claims))
        return json.dumps({"upn": user.upn, "oid": user.oid})

    @server.tool()
    async def my_notes() -> str:
        """The caller's own notes (per-user data: the server authorizes by oid)."""
        user = current_user()
        sightings.add(tool="my_notes", upn=user.upn, oid=user.oid, claims=dict(user.claims))
        name = (user.upn or "").split("@", 1)[0]
        return json.dumps({"upn": user.upn, "notes": _NOTES.get(name, [])})

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    return EntraChallengeMiddleware(app, settings=auth)
