"""``AzureCli`` when the CLI relays Entra's Conditional Access answers, as real ``az`` / ``azd``
print them (azure-cli ``auth/util.py`` ``aad_error_handler``, in its current and its 2.4x wording;
Azure/azure-dev ``pkg/auth/errors.go``): AADSTS50076/50079/50074 name the CLI's own sign-in for
the resource (``az login --scope <resource>/.default``, ``azd auth login --scope ...``), not
on-behalf-of's "send the claims challenge back to the client"; AADSTS53003 says that a policy
blocks the sign-in and who can change it. The CLI's advice after Entra's text is replaced by the
fix, or, when the library has no fix of its own for the CLI, kept whole: never cut in the middle
of its command."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from entra_passthrough import AzureCli, EntraError, TokenRequest

API = "fc3e56bc-c5ce-5934-926e-1cd113a188a4"
TENANT = "979269af-69e0-5206-a3f3-b961c29811d3"
SCOPE = f"api://{API}/.default"
IDS = (
    " Trace ID: 0b1c2d3e-0000-4000-8000-000000000001 Correlation ID: "
    "0b1c2d3e-0000-4000-8000-000000000002 Timestamp: 2026-01-01 00:00:00Z"
)
MFA = (
    "AADSTS50076: Due to a configuration change made by your administrator, or because you moved "
    f"to a new location, you must use multi-factor authentication to access '{API}'.{IDS}"
)
ENROL = (
    "AADSTS50079: Due to a configuration change made by your administrator, or because you moved "
    f"to a new location, you must enroll in multi-factor authentication to access '{API}'.{IDS}"
)
BLOCKED = (
    "AADSTS53003: Access has been blocked by Conditional Access policies. The access policy does "
    f"not allow token issuance.{IDS}"
)
#: azure-cli's recommendation since 2.6x, and in 2.4x.
AZ_ADVICE = (
    "Run the command below to authenticate interactively; additional arguments may be added as "
    f'needed:\naz logout\naz login --tenant "{TENANT}" --scope "{SCOPE}"\n'
)
AZ_ADVICE_OLD = f"Interactive authentication is needed. Please run:\naz login --scope {SCOPE}\n"
AZD_ADVICE = (
    f"\nSuggestion: reauthentication required, run `azd auth login --scope {SCOPE}` to acquire "
    "a new token.\n"
)


def _fake_cli(tmp_path: Path, name: str, stderr: str) -> str:
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write({stderr!r})\nsys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _error(tmp_path: Path, tool: str, stderr: str, **kw: str) -> EntraError:
    source = AzureCli(tool=tool, executable=_fake_cli(tmp_path, tool, stderr), **kw)
    try:
        with pytest.raises(EntraError) as info:
            source.get_token(TokenRequest((SCOPE,)))
    finally:
        source.close()
    return info.value


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in for the CLI")
@pytest.mark.parametrize(
    ("tool", "stderr", "login"),
    [
        ("az", f"ERROR: {MFA}\n{AZ_ADVICE}", f"az login --scope {SCOPE}"),
        ("az", f"ERROR: {MFA}\n{AZ_ADVICE_OLD}", f"az login --scope {SCOPE}"),
        ("azd", f"ERROR: {MFA}\n{AZD_ADVICE}", f"azd auth login --scope {SCOPE}"),
    ],
    ids=["az", "az-2.4x", "azd"],
)
def test_mfa_required_names_the_cli_sign_in_for_the_resource(
    tmp_path: Path, tool: str, stderr: str, login: str
) -> None:
    err = _error(tmp_path, tool, stderr)
    assert err.code is not None
    assert err.code.code == 50076
    assert err.fix is not None
    assert f"'{login}'" in err.fix
    assert f"api://{API}" in err.fix  # the resource named
    assert "claims" not in err.fix  # not on-behalf-of's remedy
    text = str(err)
    assert "AADSTS50076" in text
    assert "Correlation ID: 0b1c2d3e-0000-4000-8000-000000000002" in text  # Entra's text whole
    # The CLI's advice is replaced by the fix, not cut in the middle of its command.
    for advice in ("Run the command below", "Interactive authentication", "Suggestion:"):
        assert advice not in text
    assert "..." not in text.split(" [source ")[0]


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in for the CLI")
def test_mfa_registration_and_the_sources_tenant_are_in_the_fix(tmp_path: Path) -> None:
    err = _error(tmp_path, "az", f"ERROR: {ENROL}\n{AZ_ADVICE}", tenant_id=TENANT)
    assert err.code is not None
    assert err.code.code == 50079
    assert err.fix is not None
    assert f"'az login --tenant {TENANT} --scope {SCOPE}'" in err.fix
    assert "registering a method" in err.fix
    err = _error(tmp_path, "azd", f"ERROR: {MFA}\n{AZD_ADVICE}", tenant_id=TENANT)
    assert err.fix is not None
    assert f"'azd auth login --tenant-id {TENANT} --scope {SCOPE}'" in err.fix


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in for the CLI")
@pytest.mark.parametrize(
    ("tool", "stderr"),
    [("az", f"ERROR: {BLOCKED}\n{AZ_ADVICE}"), ("azd", f"ERROR: {BLOCKED}\n{AZD_ADVICE}")],
    ids=["az", "azd"],
)
def test_a_conditional_access_block_says_who_can_lift_it(
    tmp_path: Path, tool: str, stderr: str
) -> None:
    err = _error(tmp_path, tool, stderr)
    assert err.code is not None
    assert err.code.code == 53003
    assert err.fix is not None
    assert "Conditional Access" in err.fix
    assert "tenant administrator" in err.fix
    assert "does not help" in err.fix  # signing in again (the CLI's advice) cannot meet a block
    assert f"api://{API}" in err.fix
    assert "Run the command below" not in str(err)
    assert "Suggestion:" not in str(err)


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in for the CLI")
def test_the_clis_advice_is_kept_whole_when_the_library_has_no_fix_of_its_own(
    tmp_path: Path,
) -> None:
    expired = (
        "AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency "
        "checks by conditional access. The token was issued on 2026-01-01T00:00:00.0000000Z and "
        f"the maximum allowed lifetime for this request is 43200.{IDS}"
    )
    err = _error(tmp_path, "az", f"ERROR: {expired}\n{AZ_ADVICE}")
    text = str(err)
    assert "AADSTS70043" in text
    assert "Correlation ID: 0b1c2d3e-0000-4000-8000-000000000002" in text
    # az's own next step, whole: its last command is not cut.
    assert f'az logout az login --tenant "{TENANT}" --scope "{SCOPE}"' in text
    assert "..." not in text.split(" [source ")[0]
