"""A key rotation done on some replicas only: a link (or a sign-in state) sealed with the new
key ``k2`` reaches a broker that holds only ``k1``. The user's page cannot tell that from a
damaged link (both are ``invalid_link`` / ``invalid_state``), so the broker tells the operator:
one WARNING naming the key id it does not hold (it logged nothing). (A platform user's binding
sealed with a key the broker lacks: tests/scale_out/test_rotation.py.) Real components: the
emulator, the broker over HTTPS, DelegatedConsent with real MSAL."""

from __future__ import annotations

import base64
import logging
import secrets
import time

import pytest

from _support.consent import ConsentEnv, consent_link, platform_caller
from entra_passthrough._store import Keyring

K1 = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
K2 = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_a_link_sealed_with_a_key_the_broker_lacks_names_it_in_the_log(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    updated, _ = env.make(keyring=Keyring.from_string(f"k2:{K2},k1:{K1}"))
    caller = platform_caller(f"chat-rotation-{time.monotonic_ns()}")
    link = await consent_link(updated, env, caller)
    env.make(keyring=Keyring.from_string(f"k1:{K1}"))  # the broker not yet updated
    caplog.set_level(logging.WARNING, logger="entra_passthrough")
    async with env.browser() as browser:
        answer = await browser.get(link, headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_link"
    assert any("key id 'k2'" in m and "does not hold" in m for m in _warnings(caplog))


async def test_a_damaged_link_is_not_blamed_on_a_rotation(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    env.make(keyring=Keyring.from_string(f"k1:{K1}"))
    caplog.set_level(logging.WARNING, logger="entra_passthrough")
    async with env.browser() as browser:
        for ticket in ("garbage", "k1.cut-short", "<script>.x"):
            answer = await browser.get(f"{env.base}/start?t={ticket}")
            assert answer.status_code == 400
    assert not [m for m in _warnings(caplog) if "does not hold" in m]


async def test_links_naming_made_up_key_ids_warn_a_bounded_number_of_times(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can send a link naming a key id: each new id warns once, and at most a few ids
    ever do (then INFO), so forged links cannot fill the operator's log with rotation advice."""
    from entra_passthrough.consent import _broker

    monkeypatch.setattr(_broker, "_WARNED_KEY_IDS", set())
    env = consent_env
    env.make(keyring=Keyring.from_string(f"k1:{K1}"))
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    async with env.browser() as browser:
        for n in range(40):
            answer = await browser.get(f"{env.base}/start?t=forged{n % 20}.x")
            assert answer.status_code == 400
    warned = [m for m in _warnings(caplog) if "does not hold" in m]
    assert 1 <= len(warned) <= _broker._MAX_WARNED_KEY_IDS
    assert len({m for m in warned}) == len(warned)  # one per key id
