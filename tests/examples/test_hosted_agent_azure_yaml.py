"""examples/hosted_agent/azure.yaml expanded the way azd expands it (``_azd``: a port of azd's
service ``env:`` expansion, drone/envsubst, and of its ``${{...}}`` masking for the Foundry
extensions' fields), and its connection in the shape the Foundry extensions provision.

A ``${{...}}`` Foundry expression written as is in a service's ``env:`` stops ``azd deploy``
("envsubst service environment: expanding ...: unable to parse variable name"): azd core
expands every ``env:`` value with plain envsubst before any extension sees it; ``$${{...}}``
reaches Foundry as ``${{...}}`` (the azure.ai.connection schema's advice, and the
azure.ai.agents extension's ``schemas/examples/complex.azure.yaml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._azd import CONNECTION_REF, EnvsubstError, envsubst, foundry_expand

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hosted_agent"


def _azure_yaml() -> dict[str, Any]:
    loaded = yaml.safe_load((EXAMPLE / "azure.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _azd_env() -> dict[str, str]:
    """The azd environment the README's deploy steps make (``azd env set NAME value``), with a
    placeholder value each."""
    readme = (EXAMPLE / "README.md").read_text()
    names = re.findall(r"^\s*azd env set ([A-Z][A-Z0-9_]*) ", readme, re.MULTILINE)
    assert names, "the README sets the azd environment"
    return {name: f"<{name.lower()}>" for name in names}


def _services(host: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _azure_yaml()["services"].items() if s["host"] == host}


def test_the_port_reproduces_azd() -> None:
    # What drone/envsubst v1.0.3 answers (run with Go against the same values).
    env = {"A": "a", "B": "b$"}.get

    def mapping(name: str) -> str:
        return env(name) or ""

    assert envsubst("x${A}y$B$$C", mapping) == "xay$B$C"
    assert envsubst("$${{project.endpoint}}", mapping) == "${{project.endpoint}}"
    assert envsubst("$$${A}", mapping) == "$a"
    for refused in ("${{connections.c.credentials.k}}", "${}", "${ A}"):
        with pytest.raises(EnvsubstError, match="unable to parse variable name"):
            envsubst(refused, mapping)
    with pytest.raises(EnvsubstError, match="missing closing brace"):
        envsubst("${A", mapping)
    # foundry.ExpandEnv keeps Foundry's spans, even after a literal $.
    assert foundry_expand("${A}-${{event.body}}", mapping) == "a-${{event.body}}"
    assert foundry_expand("$${{x}}", mapping) == "$${{x}}"


def test_every_env_value_expands_as_azd_does() -> None:
    azd_env = _azd_env()
    failures = []
    for name, service in _azure_yaml()["services"].items():
        for key, raw in (service.get("env") or {}).items():
            # azd core reads env: values as strings (yaml scalars such as "0" stay quoted).
            assert isinstance(raw, str), f"services.{name}.env.{key}: {raw!r} is not a string"
            used = re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw)
            missing = [v for v in used if v not in azd_env]
            assert not missing, f"services.{name}.env.{key}: the README never sets {missing}"
            try:
                envsubst(raw, azd_env.__getitem__)
            except EnvsubstError as exc:
                failures.append(
                    f"service {name}: envsubst service environment: expanding {key}: {exc} "
                    f"(value {raw!r})"
                )
    assert not failures, "\n".join(failures)


def test_the_consent_keys_reach_the_agent_from_the_connection() -> None:
    azd_env = _azd_env()
    connections = _services("azure.ai.connection")
    (agent,) = _services("azure.ai.agent").values()
    expanded = {k: envsubst(v, azd_env.__getitem__) for k, v in agent["env"].items()}
    value = expanded["ENTRA_PASSTHROUGH_CONSENT_KEYS"]
    match = CONNECTION_REF.fullmatch(value)
    assert match, f"what Foundry gets is not a connection reference: {value!r}"
    name, key = match.groups()
    assert name in connections, name
    assert name in agent["uses"], name
    # The data plane returns a CustomKeys connection's credentials flat, one field per key
    # (azure.ai.agents connections/models.go ParseCredentials): the reference names one key.
    assert key in connections[name]["credentials"]["keys"], key
    # The docs' configuration table says what azure.yaml says.
    docs = (ROOT / "docs" / "hosted-agent.md").read_text()
    row = next(x for x in docs.splitlines() if x.startswith("| `ENTRA_PASSTHROUGH_CONSENT_KEYS`"))
    assert f"`{agent['env']['ENTRA_PASSTHROUGH_CONSENT_KEYS']}`" in row, row


def test_the_connection_has_the_shape_the_extensions_provision() -> None:
    # connections.bicep's connectionType (azure.ai.projects' synthesis) and the agents
    # extension's Connection.json require category, target and authType; a CustomKeys
    # connection's credentials are {keys: {<name>: <value>}} (ARM's CustomKeys shape, and
    # azure.ai.agents' init_infra_test TestEjectInfra_EjectsConnectionServices).
    azd_env = _azd_env()
    connections = _services("azure.ai.connection")
    assert connections
    for name, conn in connections.items():
        for field in ("category", "target", "authType"):
            assert isinstance(conn.get(field), str), f"{name}: no {field}"
            assert conn[field], f"{name}: no {field}"
        if conn["authType"] == "CustomKeys":
            keys = conn["credentials"]["keys"]
            assert isinstance(keys, dict), f"{name}: credentials.keys is not a map"
            assert keys, f"{name}: credentials.keys is empty"
            assert all(isinstance(v, str) for v in keys.values()), keys
        # A connection that declares env: resolves the ${VAR}s of its fields from it only
        # (azure.ai.projects collectConnections / connectionEnvironmentMapping); its env
        # values come from the azd environment through core.
        service_env = {
            k: envsubst(v, azd_env.__getitem__) for k, v in (conn.get("env") or {}).items()
        }
        assert service_env, f"{name}: declare the variables its fields use in its env:"

        def mapping(var: str, _name: str = name, _env: dict[str, str] = service_env) -> str:
            assert var in _env, f"{_name} uses ${{{var}}} without declaring it in its env:"
            return _env[var]

        assert foundry_expand(conn["target"], mapping), f"{name}: the target expands to nothing"
        for value in _leaves(conn.get("credentials") or {}):
            assert foundry_expand(value, mapping), f"{name}: a credential expands to nothing"


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value] if isinstance(value, str) else []


def test_the_azd_version_matches_the_readme() -> None:
    # The current azure.ai.agents and azure.ai.projects releases require azd >= 1.31.1
    # (their extension.yaml requiredAzdVersion); the README says so.
    required = _azure_yaml()["requiredVersions"]["azd"]
    readme = " ".join((EXAMPLE / "README.md").read_text().split())
    said = re.search(r"`azd` (\d+\.\d+\.\d+) or later", readme)
    assert said, "the README names the azd version"
    assert required == f">={said.group(1)}", (required, said.group(0))
