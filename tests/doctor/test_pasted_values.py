"""`entra-passthrough doctor` and values pasted into the wrong variable: a secret is never echoed,
whatever form a line gives it (as is, inside a repr with its line breaks escaped, lower-cased, in
JSON), and a value no caller's tenant can match is named by its variable, not echoed.

Each check runs the command (``entra-passthrough doctor``) against the emulator, in a table and
in ``--json``: in this process (``cli.main`` with the environment set, stdout and stderr
captured), and, for the JWT pasted as the tenant, as the real process (``python -m
entra_passthrough doctor``) in both forms, exit status included. An assertion never shows a
secret: it says which one was echoed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest

from _support.cli_run import Ran, run_cli
from entra_passthrough._doctor import FAIL, Check, Doctor, table
from entra_passthrough.testing import EntraEmulator

#: What a private key pasted into an id variable looks like (line breaks included).
KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
PEM_KEY = f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----"
#: A client secret's shape.
PASTED = "Qx8Q~AbcdEfghIjklMnopQrstUvwxYz0123456789"
#: A JWT with no '_' or '-': every segment also passes for a domain label.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGkiLCJ0aWQiOiJ0In0.c2lnbmF0dXJlMTIzNDU2Nzg5MA"


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _env(idp: EntraEmulator, **variables: str) -> dict[str, str]:
    """The process environment without any configuration of the runner's, plus a working OBO
    set-up against the emulator, plus ``variables``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_", "FOUNDRY_"))
    }
    env.update(
        {
            "AZURE_TENANT_ID": idp.tenant_id,
            "AZURE_AUTHORITY_HOST": idp.url,
            "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
            "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
            "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        }
    )
    env.update(variables)
    return env


def _doctor(
    env: Mapping[str, str], *, as_json: bool, process: bool = False
) -> tuple[int, str, dict[str, Check]]:
    """Exit status, everything printed, and the checks by name (from the --json report; none
    for the table). In this process, or with ``process`` as ``python -m entra_passthrough``."""
    argv = ["doctor", *(["--json"] if as_json else [])]
    if process:
        cli = [sys.executable, "-m", "entra_passthrough", *argv]
        done: subprocess.CompletedProcess[str] | Ran = subprocess.run(
            cli, env=dict(env), capture_output=True, text=True, timeout=120
        )
    else:
        done = run_cli(argv, env=env)
    printed = done.stdout + done.stderr
    checks: dict[str, Check] = {}
    if as_json:
        for c in json.loads(done.stdout)["checks"]:
            checks[c["name"]] = Check(c["name"], c["status"], c["detail"], c["fix"])
    return done.returncode, printed, checks


def _echoed(text: str, **secrets: str) -> list[str]:
    """The names of the secrets ``text`` shows, in any case (never the secrets). Assign the
    result to a name before asserting on it: pytest's explanation of a failed ``assert`` shows
    the arguments of a call, and ``text`` may hold a secret."""
    return [name for name, value in secrets.items() if value.lower() in text.lower()]


def _missing(text: str, *phrases: str) -> list[str]:
    """The phrases ``text`` does not contain (assign before asserting, as for ``_echoed``)."""
    return [phrase for phrase in phrases if phrase not in text]


def _id_check(idp: EntraEmulator, variable: str, value: str) -> Check:
    env = _env(idp, **{variable: value})
    code, _, checks = _doctor(env, as_json=True)
    assert code == 1
    return checks["ids"]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize(
    "variable", ["ENTRA_PASSTHROUGH_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST"]
)
def test_a_multi_line_secret_pasted_as_an_id_or_host_is_never_echoed(
    idp: EntraEmulator, variable: str, as_json: bool
) -> None:
    """The configuration line quotes the id (the host's error, the host) with repr(), which
    writes the line breaks as '\\n': the redaction must hide that form too, not only the value
    as it was set."""
    code, printed, _ = _doctor(_env(idp, **{variable: PEM_KEY}), as_json=as_json)
    assert code == 1
    echoed = _echoed(printed, body=KEY_BODY, escaped=repr(PEM_KEY)[1:-1])
    assert echoed == []
    # The ids are refused when the chain is built, without quoting them in any form; the ids
    # check names the variable and what is wrong with it.
    if variable != "AZURE_AUTHORITY_HOST":  # the host's own error no longer quotes it at all
        missing = _missing(printed, variable, "line break, space or control character")
        assert missing == []


@pytest.mark.parametrize("variable", ["ENTRA_PASSTHROUGH_CLIENT_ID", "AZURE_TENANT_ID"])
@pytest.mark.parametrize("cut", ["\n", "\r\n", "\t", " ", "\x07", "\u200b"])
def test_an_id_with_a_line_break_or_control_character_fails_the_ids_check(
    idp: EntraEmulator, variable: str, cut: str
) -> None:
    """An id copied with a line break, a space or a control character in it (two ids pasted at
    once, a value copied from a wrapped terminal): the ids check says what is in it and how to
    set it, and never echoes the value."""
    good = idp.agent.client_id if variable.endswith("CLIENT_ID") else idp.tenant_id
    value = f"{good[:18]}{cut}{good[18:]}"
    check = _id_check(idp, variable, value)
    status, detail, fix = check.status, check.detail, check.fix
    echoed = _echoed(detail + fix, first=good[:18], rest=good[18:])
    assert echoed == []
    assert status == FAIL
    missing = _missing(detail, variable, "line break, space or control character")
    missing += _missing(fix, "one line")
    assert missing == []


class _Echo(Doctor):
    """A doctor whose one check echoes the value in the forms a message may give it."""

    def __init__(self, env: dict[str, str], forms: list[str]) -> None:
        super().__init__(env)
        self.forms = forms

    def _checks(self) -> list[Check]:
        self.add("echo", FAIL, " | ".join(self.forms), f"set {self.forms[0]} again")
        return self.checks


VALUES = {
    "line breaks": "Qx8Q~abc\nDEF\r\nghiJKL",
    "tab": "Qx8Q~abc\tDEFghiJKL",
    "backslash": "Qx8Q~abc\\DEFghiJKL",
    "single quote": "Qx8Q~abc'DEFghiJKL",
    "both quotes": "Qx8Q~abc'DEF\"ghiJKL",
    "non-ascii": "Qx8Q~abcé€DEFghiJKL",
    "control": "Qx8Q~abc\x1bDEFghiJKL",
}


@pytest.mark.parametrize("variable", ["ENTRA_PASSTHROUGH_CLIENT_SECRET", "AZURE_CLIENT_ID"])
@pytest.mark.parametrize("shape", sorted(VALUES))
def test_every_form_a_line_gives_a_value_is_hidden(variable: str, shape: str) -> None:
    value = VALUES[shape]
    forms = [
        value,
        repr(value),
        repr(value.lower()),
        repr([value]),
        ascii(value),
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        f"<{value.upper()}>",
    ]
    (check,) = _Echo({variable: value}, forms).run()
    shown = table([check]) + json.dumps({"detail": check.detail, "fix": check.fix})
    # Each form starts with "Qx8Q~abc" and ends with "ghiJKL": neither half survives.
    echoed = _echoed(shown, head="Qx8Q~abc", tail="ghiJKL")
    assert echoed == []
    masks = shown.count(f"<{variable}")
    assert masks >= len(forms)


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_a_ca_file_value_is_shown_only_when_it_looks_like_a_path(
    idp: EntraEmulator, as_json: bool
) -> None:
    code, printed, _ = _doctor(_env(idp, ENTRA_PASSTHROUGH_CA_FILE=PASTED), as_json=as_json)
    assert code == 1
    echoed = _echoed(printed, pasted=PASTED)
    assert echoed == []
    missing = _missing(printed, "<ENTRA_PASSTHROUGH_CA_FILE: not shown, sha256:")
    assert missing == []
    for path in ("/no/such/folder/ca-bundle.pem", "proxy-ca.crt", "C:\\certs\\proxy"):
        code, printed, _ = _doctor(_env(idp, ENTRA_PASSTHROUGH_CA_FILE=path), as_json=False)
        assert code == 1
        missing = _missing(printed, f"ENTRA_PASSTHROUGH_CA_FILE ({path}) cannot be used")
        assert missing == []


@pytest.mark.parametrize(
    "variable", ["ENTRA_PASSTHROUGH_ALLOWED_TENANTS", "AZURE_ADDITIONALLY_ALLOWED_TENANTS"]
)
def test_a_tenant_id_without_dashes_in_an_allow_list_fails(
    idp: EntraEmulator, variable: str
) -> None:
    """A caller's tid claim is always written with dashes: 32 hex digits without them match no
    caller. The ids check says so, with the variable, and the entry is not echoed."""
    dashless = idp.tenant_id.replace("-", "").upper()
    other = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    env = _env(idp, **{variable: f"{other},{dashless}"})
    code, printed, checks = _doctor(env, as_json=True)
    assert code == 1
    check = checks["ids"]
    status, detail, fix = check.status, check.detail, check.fix
    echoed = _echoed(printed, dashless=dashless)
    _, table_printed, _ = _doctor(env, as_json=False)
    echoed += _echoed(table_printed, dashless=dashless)
    assert echoed == []
    assert status == FAIL
    missing = _missing(detail, variable, "without dashes") + _missing(fix, "with dashes")
    # The build refuses the entry too, naming the variable (the chain is not built, so the
    # configuration line no longer lists the well-formed entries).
    assert checks["configuration"].status == FAIL
    missing += _missing(checks["configuration"].detail, variable)
    assert missing == []
    assert other  # a well-formed entry beside it changes nothing


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_a_jwt_in_the_tenant_variable_is_not_taken_for_a_domain(
    idp: EntraEmulator, as_json: bool
) -> None:
    # The real process, in both forms: what a shell sees, exit status included.
    code, printed, _ = _doctor(_env(idp, AZURE_TENANT_ID=JWT), as_json=as_json, process=True)
    assert code == 1
    echoed = _echoed(printed, jwt=JWT, header=JWT.split(".")[0], body=JWT.split(".")[1])
    assert echoed == []
    missing = _missing(printed, "AZURE_TENANT_ID is neither a tenant id (GUID) nor a domain")
    assert missing == []


def test_a_domain_in_an_allow_list_fails_the_ids_check(idp: EntraEmulator) -> None:
    # on-behalf-of compares each caller's tid claim (a GUID) with the list: a domain never
    # matches, and every caller of that tenant would be refused
    domain = idp.world.tenants[0].domain
    check = _id_check(idp, "ENTRA_PASSTHROUGH_ALLOWED_TENANTS", f"{idp.tenant_id} {domain}")
    assert check.status == "fail"
    assert "domain name" in check.detail


@pytest.mark.parametrize("tenant", ["organizations", "common"])
def test_a_tenantless_authority_is_named_not_hidden(idp: EntraEmulator, tenant: str) -> None:
    _, printed, _ = _doctor(_env(idp, AZURE_TENANT_ID=tenant), as_json=False)
    assert "AZURE_TENANT_ID: not shown" not in printed
    assert tenant in printed


def test_the_consumers_tenant_is_explained_not_replaced_by_its_id(idp: EntraEmulator) -> None:
    # Refused when the chain is built (no caller's tid can match it): the configuration check
    # says why and what to set.
    code, _, checks = _doctor(_env(idp, AZURE_TENANT_ID="consumers"), as_json=True)
    assert code == 1
    refused = checks["configuration"]
    assert refused.status == "fail"
    assert "AZURE_TENANT_ID" in refused.detail
    assert "personal Microsoft accounts" in refused.detail
    assert "9188040d" not in refused.fix  # the MSA tenant is not the fix
    assert "your organisation's tenant" in refused.fix
