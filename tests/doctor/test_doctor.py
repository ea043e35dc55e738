"""`entra-passthrough doctor` against prepared emulator worlds: a correct secretless set-up passes;
each common mistake fails its own check, says how to fix it, and exits non-zero. No token,
secret or assertion ever appears in the output."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from _support.cli_run import run_cli
from entra_passthrough._doctor import FAIL, Check, Doctor, run, scope_problems, table
from entra_passthrough.testing import EntraEmulator, ManagedIdentityPrincipal, World, stable_id

UNKNOWN = "00000000-0000-0000-0000-00000000dead"


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    # The default world plus a second user-assigned identity that is NOT a federated credential
    # of the agent app (the "wrong managed identity" mistake).
    world = World.default()
    tenant = world.tenants[0]
    world = world.with_managed_identity(
        ManagedIdentityPrincipal(
            name="other-mi",
            client_id=stable_id("mi", "other-mi"),
            object_id=stable_id("mi-object", "other-mi"),
            tenant_id=tenant.id,
            resource_id="/subscriptions/s/resourceGroups/rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/other-mi",
        )
    )
    with EntraEmulator(world=world) as emulator:
        yield emulator


def base(idp: EntraEmulator) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
    }


def secretless(idp: EntraEmulator) -> dict[str, str]:
    return {
        **base(idp),
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
        "AZURE_CLIENT_ID": idp.managed_identity.client_id,
        **idp.mi_env(),
    }


def scope(idp: EntraEmulator) -> str:
    return f"{idp.mcp.app_id_uri}/.default"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def assert_clean(checks: list[Check], *secrets: str) -> None:
    text = table(checks) + json.dumps([c.__dict__ for c in checks])
    assert "eyJ" not in text  # no JWT
    for secret in secrets:
        assert secret not in text


def test_secretless_obo_passes(idp: EntraEmulator) -> None:
    env = secretless(idp)
    token = idp.user_token("alice", audience=idp.agent.client_id)
    checks = run(env, scopes=[scope(idp)], user_token=token)
    status = {c.name: c.status for c in checks}
    assert status == {
        "configuration": "pass",
        "ids": "pass",
        "CA file": "pass",
        "discovery": "pass",
        "managed identity": "pass",
        "client credential": "pass",
        "scope": "pass",
        "consent": "pass",
        "developer sign-in": "skip",
    }
    assert_clean(checks, token, env["IDENTITY_HEADER"])


def test_wrong_secret(idp: EntraEmulator) -> None:
    env = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    env["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = "not-the-secret-value-123"
    check = by_name(run(env))["client credential"]
    assert check.status == "fail"
    assert "AADSTS7000215" in check.detail
    assert "secret's value" in check.fix
    assert_clean([check], "not-the-secret-value-123")


class _Echo(Doctor):
    """A doctor whose one check echoes what it is given: what a library's error message quoting
    a configured value would do."""

    def __init__(self, env: dict[str, str], echo: str) -> None:
        super().__init__(env)
        self.echo = echo

    def _checks(self) -> list[Check]:
        self.add("echo", FAIL, f"refused: {self.echo}", f"set {self.echo!r} again")
        return self.checks


@pytest.mark.parametrize("secret", ["k9!", "Zq7-x", "a1b2c3d"])
def test_short_secret_is_hidden_where_it_stands_alone(secret: str) -> None:
    """A secret shorter than eight characters is still never printed where it stands alone,
    and the words around it that merely contain it are left readable."""
    env = {"ENTRA_PASSTHROUGH_CLIENT_SECRET": secret}
    (check,) = _Echo(env, f"{secret} (value), x{secret}y").run()
    shown = check.detail + check.fix
    assert "<ENTRA_PASSTHROUGH_CLIENT_SECRET> (value)" in check.detail
    assert check.fix.startswith("set '<ENTRA_PASSTHROUGH_CLIENT_SECRET> (value)")
    assert f"x{secret}y" in shown  # inside a longer word: not the secret standing alone
    assert shown.count(secret) == 2


def test_long_secret_is_hidden_everywhere() -> None:
    secret = "not-the-secret-value-123"
    env = {"AZURE_CLIENT_SECRET": secret}
    (check,) = _Echo(env, f"x{secret}y").run()
    assert secret not in check.detail + check.fix
    assert "x<AZURE_CLIENT_SECRET>y" in check.detail


def test_unknown_tenant(idp: EntraEmulator) -> None:
    env = {**secretless(idp), "AZURE_TENANT_ID": UNKNOWN}
    checks = by_name(run(env))
    assert checks["discovery"].status == "fail"
    assert "AADSTS90002" in checks["discovery"].detail
    assert checks["discovery"].fix
    assert checks["client credential"].status == "fail"
    assert "discovery" in checks["client credential"].fix


def test_managed_identity_not_a_federated_credential(idp: EntraEmulator) -> None:
    env = {**secretless(idp), "AZURE_CLIENT_ID": stable_id("mi", "other-mi")}
    checks = by_name(run(env))
    assert checks["managed identity"].status == "pass"  # the endpoint works...
    credential = checks["client credential"]
    assert credential.status == "fail"  # ...but the app does not trust this identity
    assert re.search(r"AADSTS(700211|700213|70021)\b", credential.detail), credential.detail
    assert "federated" in (credential.detail + credential.fix).lower()


def test_managed_identity_endpoint_missing(idp: EntraEmulator) -> None:
    env = secretless(idp)
    env["IDENTITY_ENDPOINT"] = "http://127.0.0.1:9/msi/token"  # nothing listens there
    checks = by_name(run(env))
    assert checks["managed identity"].status == "fail"
    # The same endpoint is not asked again for the credential: said, not re-run.
    assert checks["client credential"].status == "skip"
    assert "managed identity above" in checks["client credential"].detail


def test_nothing_configured(idp: EntraEmulator) -> None:
    checks = run(base(idp))
    assert checks[0].name == "configuration"
    assert checks[0].status == "fail"
    assert checks[0].fix


def test_azure_identity_variables_for_the_obo_app(idp: EntraEmulator) -> None:
    # azure-identity's names for the app's own credential: the error names ours.
    env = {**base(idp), "AZURE_CLIENT_ID": idp.agent.client_id, "AZURE_CLIENT_SECRET": "x" * 20}
    check = run(env)[0]
    assert check.status == "fail"
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" in check.detail + check.fix
    assert_clean([check], "x" * 20)


def test_client_id_that_is_not_an_id(idp: EntraEmulator) -> None:
    env = {**secretless(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": "my-agent-app"}
    checks = by_name(run(env))
    assert checks["ids"].status == "fail"
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" in checks["ids"].detail


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["access_as_user"], "names no resource"),
        (["api://x/access_as_user", "api://x/.default"], ".default cannot be combined"),
        (["api://x/.default", "api://y/.default"], "several"),
        (["api://x"], "no permission"),
    ],
)
def test_scope_shapes(scopes: list[str], expected: str) -> None:
    problems = scope_problems(scopes)
    assert any(expected in p for p in problems), problems
    assert scope_problems(["api://x/.default"]) == []
    assert scope_problems(["https://graph.microsoft.com/User.Read"]) == []


def test_scope_is_the_agents_own_app(idp: EntraEmulator) -> None:
    checks = by_name(run(secretless(idp), scopes=[f"api://{idp.agent.client_id}/.default"]))
    assert checks["scope"].status == "fail"
    assert "agent's own app" in checks["scope"].detail


def test_consent_missing(idp: EntraEmulator) -> None:
    token = idp.user_token("carol", audience=idp.agent.client_id)
    checks = by_name(run(secretless(idp), scopes=[scope(idp)], user_token=token))
    assert checks["client credential"].status == "pass"
    assert checks["consent"].status == "fail"
    assert "AADSTS65001" in checks["consent"].detail
    assert "Consent link: https://" in checks["consent"].fix
    assert_clean(list(checks.values()), token)


def test_developer_not_signed_in(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in idp.az_env(None).items():
        monkeypatch.setenv(name, value)
    env = {**base(idp), "ENTRA_PASSTHROUGH_POLICY": "developer", "PATH": os.environ["PATH"]}
    checks = by_name(run(env, scopes=[scope(idp)]))
    assert checks["developer sign-in"].status == "fail"
    assert "az login" in checks["developer sign-in"].detail + checks["developer sign-in"].fix


def test_agent_id_blueprint(idp: EntraEmulator) -> None:
    env = {
        **base(idp),
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": idp.agent_identity.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.blueprint.secret or "",
    }
    assert by_name(run(env))["agent id blueprint"].status == "pass"
    env["ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID"] = UNKNOWN
    check = by_name(run(env))["agent id blueprint"]
    assert check.status == "fail"
    assert check.fix
    assert_clean([check], idp.blueprint.secret or "-")


def test_cli_json_and_exit_status(idp: EntraEmulator, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRA_", "AZURE_"))}
    env.update({**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id})
    env["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = "wrong-secret-value-456"
    cli = [sys.executable, "-m", "entra_passthrough.cli", "doctor", "--json"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["client credential"] == "fail"
    assert "wrong-secret-value-456" not in done.stdout + done.stderr
    env["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = idp.agent.secret or ""
    done = subprocess.run(cli[:-1], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All checks passed." in done.stdout
    assert (idp.agent.secret or "-") not in done.stdout + done.stderr


def test_certificate(idp: EntraEmulator, tmp_path: Path) -> None:
    from entra_passthrough.testing._world import new_certificate

    uploaded = tmp_path / "agent.pem"
    uploaded.write_bytes(idp.agent.certificate_pem or b"")
    env = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    env["ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH"] = str(uploaded)
    assert by_name(run(env))["client credential"].status == "pass"
    other = tmp_path / "other.pem"
    other.write_bytes(new_certificate("not-uploaded")[0])  # never registered on the app
    env["ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH"] = str(other)
    check = by_name(run(env))["client credential"]
    assert check.status == "fail"
    assert "AADSTS700027" in check.detail
    assert check.fix
    assert_clean([check], "PRIVATE KEY")


def test_consent_app_behind_an_untrusted_certificate_says_which_variable(
    idp: EntraEmulator,
) -> None:
    # The consent app's MSAL client is no guarded one: requests' SSLError came through as its
    # text, urllib3's retry chain cut mid-word ("SSLError: HTTPSConnectionPool(host=...").
    import base64

    key = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    env = {
        **{k: v for k, v in secretless(idp).items() if k != "ENTRA_PASSTHROUGH_CA_FILE"},
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": f"k1:{key}",
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
        # Another name for the emulator: no failure the other tests' requests left behind.
        "AZURE_AUTHORITY_HOST": idp.url.replace("127.0.0.1", "localhost"),
    }
    check = by_name(run(env))["consent app"]
    assert check.status == "fail"
    assert "HTTPSConnectionPool" not in check.detail
    assert "certificate was not trusted" in check.detail
    assert "ENTRA_PASSTHROUGH_CA_FILE" in check.fix


def test_consent_app(idp: EntraEmulator) -> None:
    import base64

    key = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    env = {
        **secretless(idp),
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": f"k1:{key}",
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
    }
    assert by_name(run(env))["consent app"].status == "pass"
    plain = {**env, "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "http://agent.contoso.com/consent"}
    assert by_name(run(plain))["consent app"].status == "fail"  # links must be HTTPS
    short = {**env, "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:c2hvcnQ"}
    check = by_name(run(short))["consent app"]
    assert check.status == "fail"
    assert check.fix  # how to generate a key
    wrong = {**env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "wrong-consent-secret-789"}
    check = by_name(run(wrong))["consent app"]
    assert check.status == "fail"
    assert "AADSTS7000215" in check.detail
    assert_clean([check], "wrong-consent-secret-789", key)
    assert "consent app" not in by_name(run(secretless(idp)))  # not configured: no check


def test_user_token_for_foundry_instead_of_the_agent(idp: EntraEmulator) -> None:
    # The most common hosted-agent mistake: the token the agent gets is Foundry's, not for the
    # agent app. The consent check explains it instead of trying the exchange.
    token = idp.user_token("alice", audience="https://ai.azure.com")
    check = by_name(run(secretless(idp), scopes=[scope(idp)], user_token=token))["consent"]
    assert check.status == "fail"
    assert "https://ai.azure.com" in check.detail
    assert check.fix
    assert_clean([check], token)


def test_app_id_scope_is_well_formed(idp: EntraEmulator) -> None:
    # '<app id>/.default' is how Entra names a resource by its client id (no App ID URI).
    assert scope_problems([f"{idp.mcp.client_id}/.default"]) == []
    assert scope_problems([f"{idp.mcp.client_id}/access_as_user"]) == []
    assert any("no permission" in p for p in scope_problems([idp.mcp.client_id]))
    assert scope_problems(["https://management.core.windows.net//.default"]) == []
    (problem,) = scope_problems(["api://x/"])
    assert "use api://x/.default" in problem
    checks = by_name(run(secretless(idp), scopes=[f"{idp.mcp.client_id}/.default"]))
    assert checks["scope"].status == "pass"


def _broken_configurations(idp: EntraEmulator, tmp_path: Path) -> dict[str, dict[str, str]]:
    from entra_passthrough.testing._world import new_certificate

    secret = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    secret["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = idp.agent.secret or ""
    certificate = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    pem = tmp_path / "other.pem"
    pem.write_bytes(new_certificate("not-uploaded")[0])
    no_endpoint = {
        k: v
        for k, v in secretless(idp).items()
        if k not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")
    }
    # The IMDS host (VMs, AKS) moved to a port nothing listens on: no endpoint variable is set.
    no_endpoint["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:9"
    return {
        "certificate file missing": {
            **certificate,
            "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": str(tmp_path / "missing.pem"),
        },
        "certificate not uploaded": {
            **certificate,
            "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": str(pem),
        },
        "managed identity endpoint absent": no_endpoint,
        "managed identity header wrong": {**secretless(idp), "IDENTITY_HEADER": "wrong-header"},
        "managed identity not on this host": {**secretless(idp), "AZURE_CLIENT_ID": UNKNOWN},
        "authority unreachable": {**secret, "AZURE_AUTHORITY_HOST": "https://127.0.0.1:9"},
        # Another name for the same server: a failed request is remembered for a few seconds
        # per request (the library's negative cache), so the untrusted attempt must not be the
        # very request the other tests of this module send with the CA file.
        "authority not trusted": {
            **{k: v for k, v in secret.items() if k != "ENTRA_PASSTHROUGH_CA_FILE"},
            "AZURE_AUTHORITY_HOST": idp.url.replace("127.0.0.1", "localhost"),
        },
        "blueprint not the agent identity's": {
            **base(idp),
            "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": idp.agent.client_id,
            "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": idp.agent_identity.client_id,
            "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.blueprint.secret or "",
        },
    }


@pytest.mark.parametrize(
    "name",
    [
        "certificate file missing",
        "certificate not uploaded",
        "managed identity endpoint absent",
        "managed identity header wrong",
        "managed identity not on this host",
        "authority unreachable",
        "authority not trusted",
        "blueprint not the agent identity's",
    ],
)
def test_every_failure_has_a_fix(idp: EntraEmulator, tmp_path: Path, name: str) -> None:
    env = _broken_configurations(idp, tmp_path)[name]
    checks = run(env)
    failed = [c for c in checks if c.status == "fail"]
    assert failed, table(checks)
    assert all(c.fix for c in failed), table(checks)
    assert_clean(checks, idp.agent.secret or "-", idp.blueprint.secret or "-", "wrong-header")


@pytest.mark.parametrize("ca_file", ["none", "another bundle"])
def test_an_untrusted_authority_certificate_is_said_as_such(
    idp: EntraEmulator, tmp_path: Path, ca_file: str
) -> None:
    """The authority answered with a certificate the CA bundle does not trust: the discovery
    check says so (it said "no answer from the authority host": httpx2 raises its
    ConnectError from ssl's error), and its fix is the CA file, worded for one already set."""
    import certifi

    env = _broken_configurations(idp, tmp_path)["authority not trusted"]
    if ca_file == "another bundle":
        env = {**env, "ENTRA_PASSTHROUGH_CA_FILE": certifi.where()}
    discovery = by_name(run(env))["discovery"]
    assert discovery.status == "fail", discovery
    assert "TLS" in discovery.detail, discovery
    assert "no answer" not in discovery.detail, discovery
    assert "ENTRA_PASSTHROUGH_CA_FILE" in discovery.fix
    assert "AZURE_TENANT_ID" not in discovery.fix
    assert ("is set" in discovery.fix) is (ca_file == "another bundle"), discovery.fix


def test_managed_identity_fix_names_the_host(idp: EntraEmulator, tmp_path: Path) -> None:
    broken = _broken_configurations(idp, tmp_path)
    absent = by_name(run(broken["managed identity endpoint absent"]))["managed identity"]
    assert "no managed identity endpoint is set" in absent.fix
    refused = by_name(run(broken["managed identity header wrong"]))["managed identity"]
    assert "host" in refused.fix  # the source's own fix, else the doctor's (IDENTITY_HEADER...)
    assert "no managed identity endpoint is set" not in refused.fix


@pytest.mark.parametrize(("tool", "login"), [("az", "az login"), ("azd", "azd auth login")])
def test_developer_cli_missing(idp: EntraEmulator, tool: str, login: str, tmp_path: Path) -> None:
    env = {
        **base(idp),
        "ENTRA_PASSTHROUGH_POLICY": "developer",
        "ENTRA_PASSTHROUGH_DEVELOPER_CLI": tool,
        "PATH": str(tmp_path),  # neither az nor azd on it
    }
    check = by_name(run(env, scopes=[scope(idp)]))["developer sign-in"]
    assert check.status == "fail"
    assert login in check.fix
    assert "install" in check.fix


def test_several_credentials_say_which_is_used(idp: EntraEmulator) -> None:
    env = {
        **base(idp),
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": "/nonexistent.pem",
    }
    check = by_name(run(env))["configuration"]
    assert "uses ENTRA_PASSTHROUGH_CLIENT_SECRET" in check.detail
    assert "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL" in check.detail
    # The consent app's check says the same of its own credentials.
    consent = {
        **env,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH": "/nonexistent.pem",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
    }
    check = by_name(run(consent))["consent app"]
    assert check.status == "pass", check
    assert "uses ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET" in check.detail
    assert "set ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL to choose" in check.detail
    assert_clean([check], idp.agent.secret or "-")
    chosen = {**consent, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "secret"}
    assert "several" not in by_name(run(chosen))["consent app"].detail


@pytest.mark.parametrize("content", [None, "", "\n  \n"], ids=["missing", "empty", "blank"])
def test_cli_unreadable_user_token_file_is_a_check(
    idp: EntraEmulator, tmp_path: Path, content: str | None
) -> None:
    """A file that cannot be read, or holds no token (a CI step that was to write it failed),
    is a failed check of its own: never a skipped consent check and an overall pass. (The
    command runs in this process; test_cli_json_and_exit_status runs the real one.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRA_", "AZURE_"))}
    env.update(secretless(idp))
    missing = tmp_path / "alice.jwt"
    if content is not None:
        missing.write_text(content, encoding="utf-8")
    argv = ["doctor", "--json", "--scope", scope(idp), "--user-token-file", str(missing)]
    done = run_cli(argv, env=env)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)  # still one JSON document
    first = report["checks"][0]
    assert (first["name"], first["status"]) == ("user token file", "fail")
    assert first["fix"]
    assert done.stderr == ""


def test_secretless_consent_app(idp: EntraEmulator) -> None:
    # The hosted agent's configuration (examples/hosted_agent/azure.yaml): the consent app's
    # client credential is the same user-assigned managed identity, read by from_env().
    import base64

    key = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    env = {
        **secretless(idp),
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "managed_identity",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": f"k1:{key}",
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
    }
    checks = by_name(run(env))
    assert checks["consent app"].status == "pass", table(list(checks.values()))
    # Chosen without the variable too, as OnBehalfOf chooses: the host has an endpoint.
    implicit = {k: v for k, v in env.items() if k != "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL"}
    assert by_name(run(implicit))["consent app"].status == "pass"
    # A system-assigned identity cannot be a federated credential: refused before any request.
    system = {
        k: v
        for k, v in env.items()
        if k not in ("AZURE_CLIENT_ID", "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL")
    }
    system["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = idp.agent.secret or ""  # the OBO app's
    check = by_name(run(system))["consent app"]
    assert check.status == "fail"
    assert "AZURE_CLIENT_ID" in check.fix
    assert_clean([check], env["IDENTITY_HEADER"], key)


def test_foundry_injected_agent_id_variables(idp: EntraEmulator) -> None:
    # A Foundry hosted agent without the library's own variables: Agent ID from what the
    # platform injects; the ids check covers those variables too.
    env = {
        **base(idp),
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": idp.agent_identity.client_id,
        "FOUNDRY_AGENT_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.blueprint.secret or "",
    }
    del env["AZURE_TENANT_ID"]
    checks = by_name(run(env))
    assert checks["agent id blueprint"].status == "pass", table(list(checks.values()))
    assert checks["ids"].status == "pass"
    named = by_name(run({**env, "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": "notes-agent"}))["ids"]
    assert named.status == "fail"
    assert "FOUNDRY_AGENT_INSTANCE_CLIENT_ID" in named.detail
    tenant = by_name(run({**env, "FOUNDRY_AGENT_TENANT_ID": "not a tenant"}))["ids"]
    assert tenant.status == "fail"
    assert "FOUNDRY_AGENT_TENANT_ID" in tenant.detail


PASTED = "Qx8Q~abcDEFghiJKLmnoPQRstuVWXyz0123456789"  # a client secret's shape


@pytest.mark.parametrize(
    "variable",
    [
        "ENTRA_PASSTHROUGH_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID",
    ],
)
def test_a_secret_pasted_as_an_id_is_never_echoed(idp: EntraEmulator, variable: str) -> None:
    # The ids check says which variable is not an id; the lines that name the id (a source's
    # repr, 'the secret of app ...', the discovery URL, the managed identity) must not print it.
    import base64

    key = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    env = {
        **secretless(idp),
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": f"k1:{key}",
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
        variable: PASTED,
    }
    checks = run(env, scopes=[scope(idp)])
    assert by_name(checks)["ids"].status == "fail"
    assert variable in by_name(checks)["ids"].detail
    assert_clean(checks, PASTED, key, idp.agent.secret or "-", env["IDENTITY_HEADER"])


def test_password_protected_pfx_without_its_password(idp: EntraEmulator, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    pem = idp.agent.certificate_pem or b""
    key = serialization.load_pem_private_key(pem, password=None)
    cert = x509.load_pem_x509_certificate(pem)
    password = "pfx-password-123"
    pfx = tmp_path / "agent.pfx"
    pfx.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"agent",
            key,  # type: ignore[arg-type]
            cert,
            None,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    env = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    env["ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH"] = str(pfx)
    check = run(env)[0]
    assert (check.name, check.status) == ("configuration", "fail")
    assert "password-protected PFX needs its password" in check.detail  # none was given
    assert "AZURE_CLIENT_CERTIFICATE_PASSWORD" in check.fix
    env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = password
    assert by_name(run(env))["client credential"].status == "pass"
    env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = "not-the-pfx-password"
    wrong = run(env)[0]
    assert wrong.status == "fail"
    assert_clean([check, wrong], password, "not-the-pfx-password", "PRIVATE KEY")


@functools.cache
def _certificate_key() -> RSAPrivateKey:
    """One key for the validity cases: only the certificate's dates differ between them."""
    from _support.certificates import rsa_key

    return rsa_key()


def _certificate_file(path: Path, *, days_from: int, days_to: int) -> Path:
    from _support.certificates import pem, self_signed

    key = _certificate_key()
    path.write_bytes(pem(key, self_signed(key, days_from=days_from, days_to=days_to, name="agent")))
    return path


@pytest.mark.parametrize(
    ("days_from", "days_to", "status", "said"),
    [
        (-400, -2, "fail", "expired on"),
        (3, 400, "fail", "not valid before"),
        (-10, 10, "pass", "expires in"),
        (-10, 400, "pass", "valid until"),
    ],
)
def test_certificate_validity(
    idp: EntraEmulator, tmp_path: Path, days_from: int, days_to: int, status: str, said: str
) -> None:
    pem = _certificate_file(tmp_path / "agent.pem", days_from=days_from, days_to=days_to)
    env = {**base(idp), "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id}
    env["ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH"] = str(pem)
    checks = by_name(run(env))
    check = checks["certificate"]
    assert check.status == status, check
    assert said in check.detail
    if status == "fail":
        assert "upload" in check.fix or "valid now" in check.fix
    assert_clean([check], "PRIVATE KEY")


def test_a_ca_file_that_cannot_be_used(idp: EntraEmulator, tmp_path: Path) -> None:
    # It failed as a discovery error whose fix talked about the tenant id.
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    for path in (str(tmp_path / "missing.pem"), str(garbage)):
        env = {**secretless(idp), "ENTRA_PASSTHROUGH_CA_FILE": path}
        checks = by_name(run(env))
        assert checks["CA file"].status == "fail"
        assert "ENTRA_PASSTHROUGH_CA_FILE" in checks["CA file"].fix
        assert "CA file above" in checks["discovery"].fix


def test_a_tenant_domain_where_the_tid_claim_is_compared_fails_with_the_guid(
    idp: EntraEmulator,
) -> None:
    """AZURE_TENANT_ID = the tenant's domain: Entra serves it, but on-behalf-of compares it with
    every caller's tid claim (a GUID) and would refuse everyone; doctor says so, with the GUID,
    and the build refuses it, naming the variable, instead of "add the tenant" at run time."""
    from entra_passthrough import ConfigurationError, TokenChain

    domain = idp.world.tenants[0].domain
    env = {**secretless(idp), "AZURE_TENANT_ID": domain}
    checks = by_name(run(env, scopes=[scope(idp)]))
    assert checks["configuration"].status == "fail"
    assert checks["discovery"].status == "fail"
    assert idp.tenant_id in checks["discovery"].fix
    assert "tid" in checks["discovery"].detail
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(env)
    assert "AZURE_TENANT_ID" in str(info.value)
    assert "add the tenant" not in (info.value.fix or "")
    # The GUID passes discovery.
    assert by_name(run(secretless(idp), scopes=[scope(idp)]))["discovery"].status == "pass"


def test_a_dead_proxy_is_named_not_the_tenant_id(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    checks = by_name(run(secretless(idp)))
    assert checks["discovery"].status == "fail"
    assert "HTTPS_PROXY" in checks["discovery"].fix
    assert "AZURE_TENANT_ID" not in checks["discovery"].fix
