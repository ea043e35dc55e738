"""Agent ID inheritable permissions, with real MSAL against the emulator over HTTPS.

Entra's rule (https://learn.microsoft.com/entra/agent-id/concept-inheritable-permissions,
configure-inheritable-permissions-blueprints): an agent identity inherits a delegated scope of its
blueprint only if the blueprint lists the scope (or its resource, ``allAllowedScopes``) as
inheritable AND the blueprint holds a grant for it. Otherwise OBO for the agent identity answers
AADSTS65001 - also when the blueprint itself holds the grant.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import aadsts, msal_app, verify_with_jwks

ROOT = Path(__file__).parents[2]
DESCRIPTION = ROOT / "scripts" / "tenant.json"

# A world file (TOML) with both inheritance patterns, one blueprint with none, and one agent
# identity holding a grant of its own.
WORLD = """
[[apps]]
name = "reports"
api = true
scopes = ["Reports.Read", "Reports.Write"]

[[apps]]
name = "bp-enumerated"
kind = "agent_blueprint"
scope = "access_as_user"
secret = true
inheritable = ["reports/Reports.Read"]        # enumeratedScopes

[[apps]]
name = "bp-all"
kind = "agent_blueprint"
scope = "access_as_user"
secret = true
inheritable = { reports = "*" }               # allAllowedScopes, per-resource form

[[apps]]
name = "bp-none"
kind = "agent_blueprint"
scope = "access_as_user"
secret = true

[[apps]]
name = "ai-enumerated"
kind = "agent_identity"
blueprint = "bp-enumerated"
secret = false

[[apps]]
name = "ai-all"
kind = "agent_identity"
blueprint = "bp-all"
secret = false

[[apps]]
name = "ai-none"
kind = "agent_identity"
blueprint = "bp-none"
secret = false

[[grants]]
client = "bp-enumerated"
resource = "reports"
scopes = ["Reports.Read", "Reports.Write"]

[[grants]]
client = "bp-all"
resource = "reports"
scopes = ["Reports.Read", "Reports.Write"]

[[grants]]
client = "bp-none"
resource = "reports"
scopes = ["Reports.Read", "Reports.Write"]

[[grants]]                                    # a grant of the agent identity itself
client = "ai-none"
resource = "reports"
scopes = ["Reports.Write"]
"""


@pytest.fixture(scope="module")
def world_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntraEmulator]:
    path = tmp_path_factory.mktemp("world") / "world.toml"
    path.write_text(WORLD, encoding="utf-8")
    with EntraEmulator(world=World.from_file(path)) as idp:
        yield idp


def agent_obo(
    idp: EntraEmulator, blueprint: str, agent_identity: str, scopes: list[str], user: str = "alice"
) -> dict[str, Any]:
    """The Agent ID OBO flow with MSAL: the blueprint's T1 (fmi_path), then the agent identity's
    OBO with T1 as its client assertion and the user's token for the blueprint."""
    bp, child = idp.app(blueprint), idp.app(agent_identity)
    t1 = msal_app(idp, bp.client_id, bp.secret).acquire_token_for_client(
        ["api://AzureADTokenExchange/.default"], fmi_path=child.client_id
    )
    assert "access_token" in t1, t1.get("error_description")
    app = msal_app(idp, child.client_id, {"client_assertion": lambda: t1["access_token"]})
    user_token = idp.user_token(user, audience=bp.client_id)
    result: dict[str, Any] = app.acquire_token_on_behalf_of(user_token, scopes)
    return result


def scp(idp: EntraEmulator, result: dict[str, Any], audience: str) -> set[str]:
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(idp, result["access_token"], audience=audience, issuer=idp.issuer())
    return set(str(claims["scp"]).split())


def test_enumerated_inherits_only_the_listed_scope(world_idp: EntraEmulator) -> None:
    idp = world_idp
    reports = idp.app("reports")
    read = agent_obo(idp, "bp-enumerated", "ai-enumerated", [f"{reports.app_id_uri}/Reports.Read"])
    assert scp(idp, read, reports.client_id) == {"Reports.Read"}
    # The blueprint holds Reports.Write too, but does not make it inheritable.
    write = agent_obo(
        idp, "bp-enumerated", "ai-enumerated", [f"{reports.app_id_uri}/Reports.Write"]
    )
    assert aadsts(write) == 65001, write
    default = agent_obo(idp, "bp-enumerated", "ai-enumerated", [f"{reports.app_id_uri}/.default"])
    assert scp(idp, default, reports.client_id) == {"Reports.Read"}


def test_all_allowed_inherits_every_granted_scope(world_idp: EntraEmulator) -> None:
    idp = world_idp
    reports = idp.app("reports")
    result = agent_obo(idp, "bp-all", "ai-all", [f"{reports.app_id_uri}/.default"])
    assert scp(idp, result, reports.client_id) == {"Reports.Read", "Reports.Write"}


def test_nothing_inheritable_nothing_inherited(world_idp: EntraEmulator) -> None:
    idp = world_idp
    reports = idp.app("reports")
    # bp-none holds both scopes but lists nothing as inheritable: its grant does not flow down.
    read = agent_obo(idp, "bp-none", "ai-none", [f"{reports.app_id_uri}/Reports.Read"])
    assert aadsts(read) == 65001, read
    # A grant of the agent identity itself still holds (direct consent, no inheritance).
    write = agent_obo(idp, "bp-none", "ai-none", [f"{reports.app_id_uri}/.default"])
    assert scp(idp, write, reports.client_id) == {"Reports.Write"}


def test_default_world_inherits_mcp_not_graph(idp: EntraEmulator) -> None:
    mcp = idp.mcp
    ok = agent_obo(idp, "blueprint", "agent_identity", [f"{mcp.app_id_uri}/.default"])
    assert scp(idp, ok, mcp.client_id) == {"access_as_user"}
    # The blueprint holds a tenant-wide Graph grant (User.Read), but Graph is not inheritable.
    graph = agent_obo(idp, "blueprint", "agent_identity", ["User.Read"])
    assert aadsts(graph) == 65001, graph
    # Inheritable but not granted to the blueprint for carol: no grant to inherit.
    carol = agent_obo(
        idp, "blueprint", "agent_identity", [f"{mcp.app_id_uri}/.default"], user="carol"
    )
    assert aadsts(carol) == 65001, carol


def _description() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DESCRIPTION.read_text(encoding="utf-8"))
    return data


def test_tenant_description_makes_mcp_inheritable() -> None:
    # What scripts/tenant-setup.sh --agent-id creates: the blueprint's grant on mcp AND mcp as an
    # inheritable resource; the agent identity's OBO for mcp works.
    with EntraEmulator(world=World.from_dict(_description())) as idp:
        mcp = idp.app("mcp")
        assert idp.app("blueprint").inheritable == ("mcp/*",)
        result = agent_obo(idp, "blueprint", "agent_identity", [f"{mcp.app_id_uri}/.default"])
        assert scp(idp, result, mcp.client_id) == {"access_as_user"}


def test_tenant_description_without_inheritable_is_65001() -> None:
    # The same tenant without inheritable permissions on the blueprint (what the set-up script
    # created before): the blueprint holds the grant, its agent identity gets AADSTS65001.
    data = copy.deepcopy(_description())
    for app in data["apps"]:
        if app["name"] == "blueprint":
            app.pop("inheritable", None)
    with EntraEmulator(world=World.from_dict(data)) as idp:
        mcp = idp.app("mcp")
        result = agent_obo(idp, "blueprint", "agent_identity", [f"{mcp.app_id_uri}/.default"])
        assert aadsts(result) == 65001, result


@pytest.mark.parametrize(
    ("inheritable", "message"),
    [
        (["mcp"], 'not "<resource>/<scope>"'),
        (["mcp/"], 'not "<resource>/<scope>"'),
    ],
)
def test_world_file_refuses_malformed_entries(inheritable: list[str], message: str) -> None:
    data = {"apps": [{"name": "bp", "kind": "agent_blueprint", "inheritable": inheritable}]}
    with pytest.raises(ValueError, match=message):
        World.from_dict(data)


def test_world_file_refuses_inheritable_on_a_non_blueprint() -> None:
    data = {"apps": [{"name": "plain", "inheritable": ["mcp/*"]}]}
    with pytest.raises(ValueError, match="only an agent blueprint"):
        World.from_dict(data)
