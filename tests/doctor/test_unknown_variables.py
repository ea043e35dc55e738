"""An ``ENTRA_PASSTHROUGH_*`` variable the library does not read (a misspelt
``ENTRA_PASSTHROUGH_POLCY=app_only``) is a failed ``variables`` check of ``doctor``, naming it
and the variable it is closest to, never its value: the run used to say "All checks passed"
while the policy, credential or allow-list meant was not applied. ``from_env()`` on the process
environment logs one WARNING per such name, once per process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_passthrough import _env
from entra_passthrough._doctor import FAIL, run, table
from entra_passthrough.testing import EntraEmulator

#: A value no message may show (a secret pasted under a misspelt name is still a secret).
VALUE = "s3cr3t-Value-0f-a-misspelt-variable"


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _configured(idp: EntraEmulator) -> dict[str, str]:
    """A configuration every check passes with (a secret for the OBO app)."""
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret,
    }


def _clean_env(**variables: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_", "FOUNDRY_"))
    }
    env.update(variables)
    return env


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("ENTRA_PASSTHROUGH_POLCY", "ENTRA_PASSTHROUGH_POLICY"),
        ("ENTRA_PASSTHROUGH_CLIENT_CREDENTIALS", "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL"),
        ("ENTRA_PASSTHROUGH_ALLOWED_TENANT", "ENTRA_PASSTHROUGH_ALLOWED_TENANTS"),
        ("entra_passthrough_policy", "ENTRA_PASSTHROUGH_POLICY"),
    ],
)
def test_a_misspelt_variable_fails_its_own_check(idp: EntraEmulator, name: str, meant: str) -> None:
    checks = run({**_configured(idp), name: VALUE})
    failed = [c for c in checks if c.status == FAIL]
    assert [c.name for c in failed] == ["variables"], table(checks)
    check = failed[0]
    assert name in check.detail, check.detail
    assert f"did you mean {meant}?" in check.detail, check.detail
    assert "configuration" in check.fix, check.fix
    assert VALUE not in table(checks)
    # Everything else passed: the misspelt variable is the only thing wrong.
    assert all(c.status != FAIL for c in checks if c.name != "variables")


def test_known_and_blank_variables_are_not_reported(idp: EntraEmulator) -> None:
    """The variables read outside from_env() (the broker's, telemetry's, logging's) are known;
    a blank value sets nothing."""
    env = {
        **_configured(idp),
        "ENTRA_PASSTHROUGH_WARNING_INTERVAL": "10",
        "ENTRA_PASSTHROUGH_TELEMETRY_SALT": "salt",
        "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS": "10.0.0.0/23",
        "ENTRA_PASSTHROUGH_POLCY": "  ",
    }
    checks = run(env)
    assert "variables" not in {c.name for c in checks}
    assert not [c for c in checks if c.status == FAIL], table(checks)


def test_a_name_far_from_any_is_named_alone_and_escaped() -> None:
    unknown = _env.unknown_variables(
        {"ENTRA_PASSTHROUGH_ZZZ": "1", "ENTRA_PASSTHROUGH_\x1b[2J": "1"}
    )
    assert sorted(unknown) == [("ENTRA_PASSTHROUGH_\x1b[2J", None), ("ENTRA_PASSTHROUGH_ZZZ", None)]
    sentence = _env.unknown_sentence(unknown)
    assert "did you mean" not in sentence
    assert "\x1b" not in sentence
    assert "ENTRA_PASSTHROUGH_\\x1b[2J" in sentence


def test_every_documented_variable_is_known() -> None:
    """docs/configuration.md's ENTRA_PASSTHROUGH_* variables are all names the check knows."""
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(ENTRA_PASSTHROUGH_[A-Z_]+)`", doc))
    assert _env.unknown_variables(dict.fromkeys(documented, "x")) == []


def test_the_command_names_the_variable_and_exits_1(idp: EntraEmulator) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "doctor"],
        env=_clean_env(**_configured(idp), ENTRA_PASSTHROUGH_POLCY=VALUE),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  variables" in done.stdout
    assert "ENTRA_PASSTHROUGH_POLCY (did you mean ENTRA_PASSTHROUGH_POLICY?)" in done.stdout
    assert "All checks passed" not in done.stdout
    assert VALUE not in done.stdout + done.stderr


_FROM_ENV_TWICE = """
import logging, sys
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
from entra_passthrough import TokenChain
TokenChain.from_env().close()
TokenChain.from_env().close()
"""


def test_from_env_warns_once_per_process(idp: EntraEmulator) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FROM_ENV_TWICE],
        env=_clean_env(**_configured(idp), ENTRA_PASSTHROUGH_POLCY=VALUE),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "ENTRA_PASSTHROUGH_POLCY" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("WARNING entra_passthrough ")
    assert "did you mean ENTRA_PASSTHROUGH_POLICY?" in lines[0]
    assert VALUE not in done.stderr


def test_a_mapping_passed_to_from_env_is_not_warned_about(
    idp: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An explicit environ= is the caller's own mapping (tests, a dict of settings): only the
    process environment is looked through."""
    from entra_passthrough import TokenChain

    with caplog.at_level("WARNING", logger="entra_passthrough"):
        TokenChain.from_env({**_configured(idp), "ENTRA_PASSTHROUGH_POLCY": VALUE}).close()
    assert "ENTRA_PASSTHROUGH_POLCY" not in caplog.text
