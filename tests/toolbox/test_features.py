"""The Foundry-Features value: the mandatory toolbox flag merged with the platform's flags, the
way agent-framework's FoundryToolbox builds it."""

from __future__ import annotations

import pytest
from agent_framework.exceptions import ToolException

from entra_passthrough import FoundryToolboxRoute
from entra_passthrough._sources.foundry import toolbox_features
from entra_passthrough.testing import EntraEmulator

from .conftest import agent_mi


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (None, "Toolboxes=V1Preview"),
        ("", "Toolboxes=V1Preview"),
        ("  ", "Toolboxes=V1Preview"),
        ("Agents=V2Preview", "Toolboxes=V1Preview,Agents=V2Preview"),
        (
            "Agents=V2Preview, ,Memory=V1Preview",
            "Toolboxes=V1Preview,Agents=V2Preview,Memory=V1Preview",
        ),
        ("toolboxes=v1preview,Agents=V2Preview", "toolboxes=v1preview,Agents=V2Preview"),
    ],
)
def test_merge(platform: str | None, expected: str) -> None:
    assert toolbox_features(platform) == expected


def test_from_env_and_process_environment(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**idp.mi_env(), "FOUNDRY_AGENT_TOOLSET_FEATURES": "Agents=V2Preview"}
    route = FoundryToolboxRoute.from_env(env)
    assert route.features == "Toolboxes=V1Preview,Agents=V2Preview"
    route.close()
    monkeypatch.setenv("FOUNDRY_AGENT_TOOLSET_FEATURES", "Memory=V1Preview")
    route = FoundryToolboxRoute(agent_mi(idp))  # read once, at construction
    monkeypatch.setenv("FOUNDRY_AGENT_TOOLSET_FEATURES", "Changed=V9")
    assert route.features == "Toolboxes=V1Preview,Memory=V1Preview"
    route.close()


async def test_platform_flags_on_every_request_lifecycle_included(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A toolbox whose platform enabled extra preview flags refuses any request (initialize,
    # notifications, the GET stream, the closing DELETE, tools/list, tools/call) that does not
    # name them all: the route sends what FOUNDRY_AGENT_TOOLSET_FEATURES says, every time.
    from entra_passthrough import Caller, Policy, TokenChain, bind_caller
    from entra_passthrough.agent_framework import entra_mcp_tool
    from entra_passthrough.testing import ToolboxStandIn

    flags = ("Agents=V2Preview", "Memory=V1Preview")
    monkeypatch.setenv("FOUNDRY_AGENT_TOOLSET_FEATURES", ",".join(flags))
    with ToolboxStandIn(idp, platform_features=flags, legacy=True) as toolbox:
        chain = TokenChain([FoundryToolboxRoute(agent_mi(idp))], policy=Policy.APP_ONLY)
        tool = entra_mcp_tool(
            "toolbox", toolbox.url, chain=chain, scopes=["https://ai.azure.com/.default"]
        )
        async with tool:
            for user in ("alice", "bob"):
                with bind_caller(Caller.from_token(None, call_id=toolbox.call_id(user))):
                    result = await tool.call_tool("whoami")
                assert f'"user": "{user}"' in "".join(getattr(c, "text", "") for c in result)
        chain.close()
        seen = toolbox.seen()
    assert {"GET", "DELETE"} <= {item.method for item in seen}
    assert {"initialize", "notifications/initialized", "tools/list"} <= {i.rpc for i in seen}
    assert all(item.features for item in seen), [i for i in seen if not i.features]
    assert toolbox.stats().get("missing_features", 0) == 0


async def test_a_route_without_the_platform_flags_is_refused(idp: EntraEmulator) -> None:
    # The same toolbox, a route told no platform flags (features=""): refused at connect.
    from entra_passthrough import Policy, TokenChain
    from entra_passthrough.agent_framework import entra_mcp_tool
    from entra_passthrough.testing import ToolboxStandIn

    with ToolboxStandIn(idp, platform_features=["Agents=V2Preview"]) as toolbox:
        chain = TokenChain(
            [FoundryToolboxRoute(agent_mi(idp), features="")], policy=Policy.APP_ONLY
        )
        tool = entra_mcp_tool(
            "toolbox", toolbox.url, chain=chain, scopes=["https://ai.azure.com/.default"]
        )
        with pytest.raises(ToolException, match="Could not connect"):
            async with tool:
                pass
        chain.close()
        assert toolbox.stats()["missing_features"] >= 1
        assert toolbox.stats().get("tools/list", 0) == 0
