"""scripts/tenant-setup.sh --agent-id creates what scripts/tenant.json describes for the blueprint:
its App ID URI and scope (users' tokens are for the blueprint), the blueprint -> mcp and
frontend -> blueprint admin grants, and mcp as an inheritable resource (without it the agent
identity's OBO answers AADSTS65001 in a real tenant, tests/emulator/test_agent_id_inheritance.py).

The script runs for real against stand-ins on PATH: ``az`` records each call and answers ids
derived from its arguments, ``curl`` answers the blueprint's token and the agent identity,
``sleep`` returns at once, ``python3`` is this interpreter without site-packages. No network, no
Azure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "tenant-setup.sh"
DESCRIPTION = ROOT / "scripts" / "tenant.json"
GRAPH = "https://graph.microsoft.com"

# A stand-in `az`: appends its argv to $AZ_LOG (one JSON list a line) and prints what the script
# reads from it. Ids: "app:<display name>" (appId), "obj:<appId>", "sp:<appId>".
# $AZ_FAIL_ON: a substring of a call's arguments that makes it fail once (a 409 from Graph).
FAKE_AZ = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
def opt(name):
    return args[args.index(name) + 1] if name in args else ""
fail = os.environ.get("AZ_FAIL_ON")
marker = os.environ["AZ_LOG"] + ".failed"
if fail and fail in " ".join(args) and not os.path.exists(marker):
    open(marker, "w").close()
    sys.stderr.write("Conflict({\"error\":{\"code\":\"Request_MultipleObjectsWithSameKeyValue\"}})\n")
    sys.exit(1)
joined = " ".join(args)
if args[:2] == ["account", "show"]:
    print("tenant-1")
elif args[:3] == ["ad", "signed-in-user", "show"]:
    print("me-1")
elif args[:3] == ["ad", "app", "create"]:
    print("app:" + opt("--display-name"))
elif args[:3] == ["ad", "app", "show"]:
    print("obj:" + opt("--id"))
elif args[:3] == ["ad", "sp", "create"]:
    print("sp:" + opt("--id"))
elif args[:4] == ["ad", "app", "credential", "reset"]:
    print("secret-of-" + opt("--id"))
elif args[:2] == ["identity", "create"]:
    print("mi-client-1")
elif args[:2] == ["identity", "show"]:
    print("mi-principal-1")
elif args[:1] == ["rest"] and joined.endswith("--query appId -o tsv"):
    print("app:" + json.loads(opt("--body"))["displayName"])
elif args[:1] == ["rest"] and "agentIdentityBlueprintPrincipal" in opt("--uri"):
    print("sp:" + json.loads(opt("--body"))["appId"])
"""

# The script's `python3` (json and uuid one-liners, about 20 a run) and the stand-in `az`'s (about
# 30 calls a run): this interpreter, isolated and without site-packages (-I -S), as the snippets
# need only the standard library. Without it `python3` may be a pyenv shim, a bash script that
# costs ten times the interpreter's own start-up per call.
PYTHON3 = f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n'

FAKE_CURL = r"""#!/bin/sh
case "$*" in
  *oauth2/v2.0/token*) echo '{"access_token":"blueprint-token"}' ;;
  *) echo '{"appId":"agent-identity-1"}' ;;
esac
"""


def stubs(tmp_path: Path, **scripts: str) -> Path:
    """A folder for PATH with the stand-ins (``scripts``: name -> text; default: all of them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = scripts or {
        "az": FAKE_AZ,
        "curl": FAKE_CURL,
        "sleep": "#!/bin/sh\nexit 0\n",
        "python3": PYTHON3,
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_setup(
    tmp_path: Path, *options: str, script: Path = SCRIPT, env: dict[str, str] | None = None
) -> list[list[str]]:
    """Run the set-up script with the stand-ins; the az calls it made, in order."""
    log = tmp_path / "az.log"
    out = subprocess.run(
        ["bash", str(script), "--prefix", "p", "--resource-group", "rg", *options],
        env={
            **os.environ,
            "PATH": f"{stubs(tmp_path)}{os.pathsep}{os.environ['PATH']}",
            "AZ_LOG": str(log),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    if "--agent-id" in options:
        assert "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID=agent-identity-1" in out.stdout
    return [json.loads(line) for line in log.read_text().splitlines()]


def opt(call: list[str], name: str) -> str:
    return call[call.index(name) + 1] if name in call else ""


def rest(calls: list[list[str]], method: str, uri: str) -> list[dict[str, Any]]:
    """The JSON bodies of ``az rest --method <method> --uri <uri>`` calls, in order."""
    return [
        json.loads(opt(c, "--body"))
        for c in calls
        if c[:1] == ["rest"] and opt(c, "--method") == method and opt(c, "--uri") == uri
    ]


def index(calls: list[list[str]], method: str, uri: str, **body: Any) -> int:
    for i, c in enumerate(calls):
        if c[:1] == ["rest"] and opt(c, "--method") == method and opt(c, "--uri") == uri:
            sent = json.loads(opt(c, "--body"))
            if all(sent.get(k) == v for k, v in body.items()):
                return i
    raise AssertionError(f"no {method} {uri} {body}")


def description() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DESCRIPTION.read_text(encoding="utf-8"))
    return data


BP_APP = "app:p-blueprint"
BP_URI = f"{GRAPH}/beta/applications/obj:{BP_APP}"
INHERITABLE = f"{BP_URI}/microsoft.graph.agentIdentityBlueprint/inheritablePermissions"
GRANTS = f"{GRAPH}/v1.0/oauth2PermissionGrants"


@pytest.fixture(scope="module")
def agent_id_calls(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    """The az calls of one ``--agent-id`` run with the repository's tenant.json."""
    return run_setup(tmp_path_factory.mktemp("setup"), "--agent-id")


def test_blueprint_exposes_a_scope_and_configures_mcp(agent_id_calls: list[list[str]]) -> None:
    calls = agent_id_calls
    bp = next(a for a in description()["apps"] if a["name"] == "blueprint")
    patches = rest(calls, "PATCH", BP_URI)
    assert len(patches) == 1, patches
    body = patches[0]
    # Users' tokens for the agent identity have aud = the blueprint: it needs an App ID URI and
    # the scope tenant.json gives it.
    assert body["identifierUris"] == [f"api://{BP_APP}"]
    assert [s["value"] for s in body["api"]["oauth2PermissionScopes"]] == [bp["scope"]]
    assert body["api"]["requestedAccessTokenVersion"] == 2
    # Its configured permissions: the MCP scope (tenant.json "required").
    assert bp["required"] == ["mcp/access_as_user"]
    (mcp_access,) = body["requiredResourceAccess"]
    assert mcp_access["resourceAppId"] == "app:p-mcp"


def test_blueprint_grants_of_the_description_are_created(agent_id_calls: list[list[str]]) -> None:
    calls = agent_id_calls
    sp = {"mcp": "sp:app:p-mcp", "frontend": "sp:app:p-frontend", "blueprint": f"sp:{BP_APP}"}
    wanted = [
        g
        for g in description()["grants"]
        if "blueprint" in (g["client"], g["resource"]) and not g.get("user")
    ]
    assert {(g["client"], g["resource"]) for g in wanted} == {
        ("blueprint", "mcp"),
        ("frontend", "blueprint"),
    }
    scope_patch = index(calls, "PATCH", BP_URI)
    for g in wanted:
        at = index(
            calls,
            "POST",
            GRANTS,
            clientId=sp[g["client"]],
            resourceId=sp[g["resource"]],
            consentType="AllPrincipals",
            scope=" ".join(g["scopes"]),
        )
        # A grant on the blueprint's scope needs the scope first.
        assert at > scope_patch


def test_mcp_is_inheritable_on_the_blueprint(agent_id_calls: list[list[str]]) -> None:
    calls = agent_id_calls
    bp = next(a for a in description()["apps"] if a["name"] == "blueprint")
    assert bp["inheritable"] == ["mcp/*"]
    posts = rest(calls, "POST", INHERITABLE)
    assert posts == [
        {
            "resourceAppId": "app:p-mcp",
            "inheritableScopes": {
                "@odata.type": "#microsoft.graph.allAllowedScopes",
                "kind": "allAllowed",
            },
        }
    ]
    # ... and the grant it makes inheritable (both conditions of inheritance).
    index(calls, "POST", GRANTS, clientId=f"sp:{BP_APP}", resourceId="sp:app:p-mcp")


def test_an_existing_inheritable_entry_is_replaced(tmp_path: Path) -> None:
    # Graph answers 409 to a second POST for the same resource; the script PATCHes that entry.
    calls = run_setup(tmp_path, "--agent-id", env={"AZ_FAIL_ON": "inheritablePermissions"})
    patches = rest(calls, "PATCH", f"{INHERITABLE}/app:p-mcp")
    assert patches == [
        {
            "inheritableScopes": {
                "@odata.type": "#microsoft.graph.allAllowedScopes",
                "kind": "allAllowed",
            }
        }
    ]


def test_enumerated_scopes_from_the_description(tmp_path: Path) -> None:
    # A description listing scopes makes them enumeratedScopes (one entry per resource).
    data = description()
    for app in data["apps"]:
        if app["name"] == "blueprint":
            app["inheritable"] = ["mcp/access_as_user", "graph/User.Read", "graph/Mail.Read"]
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "tenant.json").write_text(json.dumps(data))
    copy = scripts / "tenant-setup.sh"
    copy.write_text(SCRIPT.read_text())
    calls = run_setup(tmp_path, "--agent-id", script=copy)
    posts = rest(calls, "POST", INHERITABLE)
    assert posts == [
        {
            "resourceAppId": "app:p-mcp",
            "inheritableScopes": {
                "@odata.type": "#microsoft.graph.enumeratedScopes",
                "kind": "enumerated",
                "scopes": ["access_as_user"],
            },
        },
        {
            "resourceAppId": "00000003-0000-0000-c000-000000000000",
            "inheritableScopes": {
                "@odata.type": "#microsoft.graph.enumeratedScopes",
                "kind": "enumerated",
                "scopes": ["User.Read", "Mail.Read"],
            },
        },
    ]


def test_without_agent_id_nothing_of_the_blueprint(tmp_path: Path) -> None:
    calls = run_setup(tmp_path)
    assert calls, "the stand-in az was not called"
    assert not any("blueprint" in " ".join(c).lower() for c in calls)


def test_dry_run_prints_the_agent_id_calls(tmp_path: Path) -> None:
    # --dry-run prints every az command (none runs): the new calls are among them.
    bin_dir = stubs(tmp_path, az="#!/bin/sh\nexit 9\n", python3=PYTHON3)
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--agent-id", "--prefix", "p"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "/microsoft.graph.agentIdentityBlueprint/inheritablePermissions" in out.stderr
    assert out.stderr.count("oauth2PermissionGrants") == 4  # agent, frontend, blueprint x2
