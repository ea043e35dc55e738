"""The Foundry-Features value: the mandatory toolbox flag merged with the platform's flags, the
way agent-framework's FoundryToolbox builds it."""

from __future__ import annotations

import pytest

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
