"""examples/hosted_agent's deployment files, read as azd and docker would: every Foundry host the
``azure.yaml`` uses is served by an extension it requires (and the README installs), the agent is
configured without a secret, and the image installs this package from the repository's wheel
only. (The local run is tests/integration/test_example_hosted_agent.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hosted_agent"
#: The azd extension that provides each Foundry service host (its extension.yaml's
#: service-target provider).
PROVIDER = {
    "azure.ai.agent": "azure.ai.agents",
    "azure.ai.project": "azure.ai.projects",
    "azure.ai.connection": "azure.ai.connections",
    "azure.ai.toolbox": "azure.ai.toolboxes",
    "azure.ai.skill": "azure.ai.skills",
    "azure.ai.routine": "azure.ai.routines",
}


def _azure_yaml() -> dict[str, Any]:
    loaded = yaml.safe_load((EXAMPLE / "azure.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_every_host_has_its_extension_required_and_installed() -> None:
    project = _azure_yaml()
    hosts = {service["host"] for service in project["services"].values()}
    assert "azure.ai.agent" in hosts
    needed = {PROVIDER[host] for host in hosts if host.startswith("azure.ai.")}
    required = set(project["requiredVersions"]["extensions"])
    assert needed <= required, f"requiredVersions lacks {sorted(needed - required)}"
    readme = " ".join((EXAMPLE / "README.md").read_text().split())
    match = re.search(r"azd ext install ([a-z. ]+)", readme)
    assert match, "the README says which extensions to install"
    assert needed <= set(match.group(1).split()), match.group(0)


def test_the_agent_is_configured_without_a_secret() -> None:
    agent = next(s for s in _azure_yaml()["services"].values() if s["host"] == "azure.ai.agent")
    assert agent["kind"] == "hosted"
    env = agent["env"]
    assert env["ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL"] == "managed_identity"
    assert env["ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL"] == "managed_identity"
    assert not [name for name in env if name.endswith(("_SECRET", "_CERTIFICATE_PATH"))]
    assert env["HOST_TELEMETRY"] in ("on", "off")  # explicit, never the host's default


def test_the_image_installs_the_repository_wheel_only() -> None:
    dockerfile = (EXAMPLE / "src" / "agent" / "Dockerfile").read_text()
    installs = [
        line
        for line in dockerfile.splitlines()
        if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#")
    ]
    assert installs, "the Dockerfile installs the package"
    for line in installs:
        # From wheels/ (the build context), never by name from a registry.
        assert not re.search(r"\bentra[-_]passthrough\b(?!-\*\.whl)", line), line
    assert "COPY wheels/" in dockerfile


def test_ask_with_a_stale_state_file_says_so(tmp_path: Path) -> None:
    # A local run killed without cleaning up leaves its state: ask.py says to start it again
    # (it raised a FileNotFoundError traceback for the vanished CA file).
    import json
    import os
    import subprocess
    import sys

    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "agent": "http://127.0.0.1:9",
                "emulator": {
                    "url": "https://127.0.0.1:9",
                    "tenant_id": "t",
                    "ca_file": str(tmp_path / "gone-ca.pem"),
                    "users": {"alice": {"upn": "alice@contoso.example", "password": "p"}},
                    "apps": {
                        "frontend": {"client_id": "f"},
                        "agent": {"app_id_uri": "api://a", "scope": "access_as_user"},
                    },
                },
            }
        )
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "ask.py"), "alice"],
        env={**os.environ, "LOCAL_STATE_FILE": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "run_local.py" in done.stderr
