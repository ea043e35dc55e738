"""``doctor`` checks the shared store's configuration the way ``RedisStore.from_env()`` reads it,
when an ``ENTRA_PASSTHROUGH_REDIS_*`` variable is set: a store the app cannot build is a failed
``shared store`` check with ``from_env()``'s own fix; a store that builds is then contacted
(``shared store connection``), and no password is printed.

doctor said "All checks passed." for ``ENTRA_PASSTHROUGH_REDIS_AUTH=aad``, which
``RedisStore.from_env()`` (and so the hosted agent template's ``main.py``) refuses at start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from entra_passthrough._doctor import FAIL, PASS, Check, run, table
from entra_passthrough.testing import EntraEmulator

PASSWORD = "Zq8+v/Uw3kR9sT2yX7pL4mN6bC1dE5fG0hJ="  # an Azure access key's shape
QUOTED = quote(PASSWORD, safe="")  # as a Redis URL must hold it


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def secret_env(idp: EntraEmulator, **redis: str) -> dict[str, str]:
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret,
    }
    return {**env, **{f"ENTRA_PASSTHROUGH_REDIS_{k.upper()}": v for k, v in redis.items()}}


def store_check(checks: list[Check]) -> Check:
    return next(c for c in checks if c.name == "shared store")


@pytest.mark.parametrize(
    ("redis", "said", "fix"),
    [
        (
            {"url": "rediss://cache.contoso.com:6380/0", "auth": "aad"},
            "ENTRA_PASSTHROUGH_REDIS_AUTH is not password or entra",
            "set it to entra",
        ),
        (
            {"auth": "entra"},
            "ENTRA_PASSTHROUGH_REDIS_URL is not set",
            "ENTRA_PASSTHROUGH_REDIS_URL",
        ),
        (
            {"url": f"rediss://:{QUOTED}@cache.contoso.com:6380/0", "auth": "entra"},
            "has a password and a credential_provider is given",
            "drop the password from the URL",
        ),
        (
            {"url": "redis://cache.contoso.com:6379/0"},
            "is redis:// (no TLS)",
            "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT",
        ),
        (
            {"url": "rediss://cache.contoso.com:6380/0", "cluster": "maybe"},
            "ENTRA_PASSTHROUGH_REDIS_CLUSTER is not a boolean",
            "true or false",
        ),
    ],
)
def test_a_store_from_env_refuses_fails_with_its_fix(
    idp: EntraEmulator, redis: dict[str, str], said: str, fix: str
) -> None:
    checks = run(secret_env(idp, **redis))
    check = store_check(checks)
    assert check.status == FAIL, check
    assert said in check.detail
    assert fix in check.fix
    text = table(checks)
    assert "All checks passed." not in text
    assert "1 check(s) failed." in text  # every other check still passes
    shown = text + json.dumps([c.__dict__ for c in checks])
    assert PASSWORD not in shown
    assert QUOTED not in shown


def test_a_store_that_builds_is_then_contacted(idp: EntraEmulator) -> None:
    # Port 9 (discard) on loopback: nothing answers there. The store builds (its check
    # passes); the connection check that follows fails, with the fix (a real Redis answering:
    # tests/scale_out/test_doctor_store_connection.py).
    url = f"rediss://:{QUOTED}@127.0.0.1:9/0"
    checks = run(secret_env(idp, url=url, namespace="tenant-a"))
    check = store_check(checks)
    assert check.status == PASS, check
    connection = next(c for c in checks if c.name == "shared store connection")
    assert connection.status == FAIL, connection
    assert connection.fix
    assert "1 check(s) failed." in table(checks)
    shown = table(checks) + json.dumps([c.__dict__ for c in checks])
    assert PASSWORD not in shown
    assert QUOTED not in shown
    assert url not in shown


def test_no_redis_variable_no_store_line(idp: EntraEmulator) -> None:
    assert all(c.name != "shared store" for c in run(secret_env(idp)))


def test_reported_when_the_chain_cannot_be_built_too() -> None:
    checks = run(
        {"ENTRA_PASSTHROUGH_REDIS_URL": "rediss://c:6380", "ENTRA_PASSTHROUGH_REDIS_AUTH": "aad"}
    )
    assert store_check(checks).status == FAIL
    assert next(c for c in checks if c.name == "configuration").status == FAIL


def test_a_password_quoted_alone_is_not_shown() -> None:
    """The URL's password is hidden on its own too (as written and percent-decoded)."""
    from entra_passthrough._doctor import Doctor

    quoted = "p%40ss%2Fw0rd-long"
    doctor = Doctor({"ENTRA_PASSTHROUGH_REDIS_URL": f"rediss://:{quoted}@c:6380/0"})
    hidden = doctor.hidden()
    assert hidden[quoted] == "<the Redis password>"
    assert hidden["p@ss/w0rd-long"] == "<the Redis password>"


def test_a_redis_ca_file_that_is_no_path_is_not_shown() -> None:
    """A secret pasted into ENTRA_PASSTHROUGH_REDIS_CA_FILE is never in the report."""
    pasted = "not-a-path-but-a-secret-value-0123456789"
    checks = run(
        {
            "ENTRA_PASSTHROUGH_REDIS_URL": "rediss://cache.contoso.com:6380/0",
            "ENTRA_PASSTHROUGH_REDIS_CA_FILE": pasted,
        }
    )
    check = store_check(checks)
    assert check.status == FAIL
    # from_env()'s own error no longer quotes it (else the report shows its fingerprint)
    assert "(not shown)" in check.detail or "REDIS_CA_FILE: not shown, sha256:" in check.detail
    assert pasted not in table(checks) + json.dumps([c.__dict__ for c in checks])
