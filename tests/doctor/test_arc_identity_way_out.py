"""On an Azure Arc machine, doctor's fixes for a secretless app do not send the user in a loop.

Without ``AZURE_CLIENT_ID`` the configuration check says to select the user-assigned identity;
with it, an Arc agent that serves only the system-assigned identity refused it and the fix said
to unset ``AZURE_CLIENT_ID``. Both now say where that leads: a Connected Machine agent that
serves user-assigned identities, or a client secret or certificate instead. The emulator's Arc
endpoint serves only the system-assigned identity; ``doctor`` runs as a process with the
variables an Arc machine sets (MSAL reads them from the process environment), then, with
``AZURE_CLIENT_ID`` added, in this process (``cli.main``) with that environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _support.cli_run import Ran, run_cli
from entra_passthrough.testing import EntraEmulator


def _doctor(env: dict[str, str], *, process: bool) -> dict[str, dict[str, str]]:
    cli = ["doctor", "--json"]
    inherited = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    done: subprocess.CompletedProcess[str] | Ran
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "entra_passthrough", *cli],
            env={**inherited, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        done = run_cli(cli, env={**inherited, **env})
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.mark.parametrize("host", ["azure_arc"])
def test_arc_fixes_name_the_way_out(entra_emulator: EntraEmulator, host: str) -> None:
    idp = entra_emulator
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
        **idp.mi_env(host),
    }
    unselected = _doctor(env, process=True)["configuration"]
    assert unselected["status"] == "fail"
    assert "set AZURE_CLIENT_ID" in unselected["fix"]
    assert "client secret or certificate" in unselected["fix"], unselected["fix"]

    checks = _doctor({**env, "AZURE_CLIENT_ID": idp.managed_identity.client_id}, process=False)
    failed = [c for c in checks.values() if c["status"] == "fail"]
    assert failed, checks
    for check in failed:
        if "AZURE_CLIENT_ID" in check["fix"]:
            assert "client secret or certificate" in check["fix"], check
