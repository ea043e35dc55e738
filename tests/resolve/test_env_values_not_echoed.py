"""A secret pasted into the wrong variable never reaches an error message or ``doctor``'s output:
a value that is not one of the accepted words or numbers is not echoed, whole, lower-cased or
cut (the message names the variable and what it takes). Every 8-character piece of the secret
is looked for, in any case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import AzureCredential, ConfigurationError, TokenChain, _env
from entra_passthrough._doctor import Check, _redacted, run, table

SECRET = "Zq8~Q9pRsT.uVwXyZ-aBcDeFgHiJkLmNoP0123"
OTHER_SECRET = "Ab1~Cd2.Ef3_Gh4-Ij5~Kl6.Mn7_Op8-Qr9~St0"
BASE = {
    "ENTRA_PASSTHROUGH_CLIENT_ID": "6cd0b7f2-2473-5d24-a86c-13c1e27b8228",
    "AZURE_TENANT_ID": "979269af-69e0-5206-a3f3-b961c29811d3",
    "AZURE_AUTHORITY_HOST": "https://127.0.0.1:1",  # never reached: the configuration fails
}

#: The variables whose refusal echoed the value, each with what else it needs to be read.
CHAIN_VARIABLES: dict[str, dict[str, str]] = {
    "ENTRA_PASSTHROUGH_MAX_WORKERS": {},
    "ENTRA_PASSTHROUGH_CACHE_MAX_ENTRIES": {},
    "ENTRA_PASSTHROUGH_POLICY": {},
    "ENTRA_PASSTHROUGH_LIFECYCLE_APP": {},
    "ENTRA_PASSTHROUGH_CONNECT_TIMEOUT": {},
    "ENTRA_PASSTHROUGH_READ_TIMEOUT": {},
    "ENTRA_PASSTHROUGH_TOKEN_DEADLINE": {},
    "ENTRA_PASSTHROUGH_TOKEN_RETRIES": {},
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": {
        "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": "/nonexistent/cert.pem",
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "certificate",
    },
}


def pieces(secret: str, size: int = 8) -> set[str]:
    return {secret[i : i + size].lower() for i in range(len(secret) - size + 1)}


def assert_not_shown(text: str, secret: str = SECRET) -> None:
    low = text.lower()
    shown = sorted(p for p in pieces(secret) if p in low)
    assert not shown, f"pieces of the secret in the text: {shown}\n{text}"


@pytest.mark.parametrize("variable", sorted(CHAIN_VARIABLES))
@pytest.mark.parametrize("secret", [SECRET, SECRET.upper(), " " + SECRET + "\t"])
def test_from_env_names_the_variable_not_the_value(variable: str, secret: str) -> None:
    env = {**BASE, "ENTRA_PASSTHROUGH_CLIENT_SECRET": OTHER_SECRET, **CHAIN_VARIABLES[variable]}
    if "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in env:
        del env["ENTRA_PASSTHROUGH_CLIENT_SECRET"]
    env[variable] = secret
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(env)
    text = f"{info.value}\n{info.value!r}\n{info.value.fix}"
    assert variable in text
    assert info.value.fix
    assert_not_shown(text, secret.strip())


@pytest.mark.parametrize(
    "read",
    [
        lambda env: _env.get_bool(env, "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET"),
        lambda env: _env.get_bool(env, "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT"),
        lambda env: _env.get_int(env, "ENTRA_PASSTHROUGH_MAX_WORKERS", 64),
    ],
)
def test_the_shared_readers_never_echo(read: Callable[[dict[str, str]], Any]) -> None:
    env = {
        "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET": SECRET,
        "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT": SECRET,
        "ENTRA_PASSTHROUGH_MAX_WORKERS": SECRET,
    }
    with pytest.raises(ConfigurationError) as info:
        read(env)
    assert_not_shown(f"{info.value}\n{info.value.fix}")


def test_azure_credential_from_env_never_echoes_the_boolean() -> None:
    env = {
        "AZURE_TENANT_ID": BASE["AZURE_TENANT_ID"],
        "AZURE_CLIENT_ID": BASE["ENTRA_PASSTHROUGH_CLIENT_ID"],
        "AZURE_CLIENT_CERTIFICATE_PATH": "/nonexistent/cert.pem",
        "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": SECRET,
    }
    with pytest.raises(ConfigurationError) as info:
        AzureCredential.from_env(env)
    assert "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN" in str(info.value)
    assert_not_shown(f"{info.value}\n{info.value.fix}")


@pytest.mark.parametrize("variable", sorted(CHAIN_VARIABLES))
@pytest.mark.parametrize("also_the_client_secret", [False, True])
def test_doctor_never_shows_the_value(variable: str, also_the_client_secret: bool) -> None:
    """doctor, in process: the secret only in the wrong variable (doctor cannot know it is
    one), and also configured as the client secret (doctor masks it, in any case)."""
    env = {**BASE, "ENTRA_PASSTHROUGH_CLIENT_SECRET": OTHER_SECRET, **CHAIN_VARIABLES[variable]}
    if also_the_client_secret:
        env["ENTRA_PASSTHROUGH_CLIENT_SECRET"] = SECRET
        env.pop("ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH", None)
        env.pop("ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL", None)
    elif "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in env:
        del env["ENTRA_PASSTHROUGH_CLIENT_SECRET"]
    env[variable] = SECRET
    checks = run(env)
    output = table(checks) + "\n" + "\n".join(f"{c.detail}\n{c.fix}" for c in checks)
    assert_not_shown(output)
    if variable != "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN" or not also_the_client_secret:
        assert variable in output  # the configuration check names it


def test_doctor_masks_a_secret_echoed_in_another_case() -> None:
    check = Check("configuration", "fail", f"X={SECRET.lower()!r} is odd", f"unset {SECRET}")
    masked = _redacted(check, {SECRET: "<ENTRA_PASSTHROUGH_CLIENT_SECRET>"})
    assert_not_shown(masked.detail + masked.fix)
    assert "<ENTRA_PASSTHROUGH_CLIENT_SECRET>" in masked.detail


@pytest.mark.parametrize(
    ("variable", "build"),
    [
        ("ENTRA_PASSTHROUGH_DEVELOPER_CLI", "azure_cli"),
        ("ENTRA_PASSTHROUGH_REDIS_AUTH", "redis"),
    ],
)
def test_the_other_from_envs_never_echo(variable: str, build: str) -> None:
    env = {variable: SECRET, "ENTRA_PASSTHROUGH_REDIS_URL": "redis://127.0.0.1:1/0"}
    if build == "azure_cli":
        from entra_passthrough import AzureCli

        with pytest.raises(ConfigurationError) as info:
            AzureCli.from_env(env)
    else:
        from entra_passthrough.redis import RedisStore

        with pytest.raises(ConfigurationError) as info:
            RedisStore.from_env(env)
    text = f"{info.value}\n{info.value!r}\n{info.value.fix}"
    assert variable in text
    assert_not_shown(text)
