"""``doctor`` contacts the shared store it checks: one read of a key the library never writes,
with the store's own timeouts. A real ``redis-server`` (password-protected): the right password
passes, a wrong one and a server that is not there fail with the fix; the password is never
printed. (It checked the configuration only: an unreachable or refusing Redis passed.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from entra_passthrough._doctor import FAIL, PASS, Check, run, table
from entra_passthrough.testing import EntraEmulator

from ._server import PASSWORD, RedisServer, free_port


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _env(idp: EntraEmulator, url: str) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_REDIS_URL": url,
    }


def _connection(checks: list[Check]) -> Check:
    return next(c for c in checks if c.name == "shared store connection")


def _shown(checks: list[Check]) -> str:
    return table(checks) + json.dumps([c.__dict__ for c in checks])


def test_a_redis_that_answers_passes(idp: EntraEmulator, redis_server: RedisServer) -> None:
    checks = run(_env(idp, redis_server.url))
    assert _connection(checks).status == PASS, table(checks)
    assert "All checks passed." in table(checks)
    assert PASSWORD not in _shown(checks)
    assert not redis_server.client().keys("*")  # read only: nothing written


def test_a_wrong_password_fails_with_the_fix(idp: EntraEmulator, redis_server: RedisServer) -> None:
    wrong = "not-the-password-0123"
    checks = run(_env(idp, redis_server.url.replace(PASSWORD, wrong)))
    connection = _connection(checks)
    assert connection.status == FAIL, table(checks)
    assert connection.fix
    shown = _shown(checks)
    assert wrong not in shown
    assert PASSWORD not in shown


def test_a_redis_that_is_not_there_fails_with_the_fix(idp: EntraEmulator) -> None:
    checks = run(_env(idp, f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"))
    connection = _connection(checks)
    assert connection.status == FAIL, table(checks)
    assert connection.fix
    assert PASSWORD not in _shown(checks)


def test_an_untrusted_redis_certificate_is_not_blamed_on_the_authority(
    idp: EntraEmulator,
) -> None:
    """A TLS Redis whose CA the store does not trust: the store's own reason and fix (its CA
    file), never the authority's CA file advice (the TLS error under the store's typed error)."""
    server = RedisServer(tls=True).start()
    try:
        checks = run(_env(idp, server.url))
    finally:
        server.stop()
    connection = _connection(checks)
    assert connection.status == FAIL, table(checks)
    assert "authority" not in connection.fix, connection.fix
    assert PASSWORD not in _shown(checks)
