"""Time limits are finite and at most a day: ``inf`` or ``1e10`` ("no deadline, please") is a
``ConfigurationError`` at build, like ``nan`` and ``0``, instead of crashing the process-wide
deadline watchdog on every acquisition (which then ran with no deadline); and the watchdog
survives such an end anyway."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from entra_passthrough import ConfigurationError, Timeouts, TokenChain, bind_caller
from entra_passthrough._http import _WATCHDOG
from entra_passthrough.testing import EntraEmulator

TIMEOUT_VARIABLES = (
    "ENTRA_PASSTHROUGH_CONNECT_TIMEOUT",
    "ENTRA_PASSTHROUGH_READ_TIMEOUT",
    "ENTRA_PASSTHROUGH_TOKEN_DEADLINE",
)


def obo_env(idp: EntraEmulator, **over: str) -> dict[str, str]:
    return {
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        **over,
    }


@pytest.mark.parametrize("variable", TIMEOUT_VARIABLES)
@pytest.mark.parametrize("value", ["inf", "Infinity", "1e10", "1e309", "86401", "nan", "0", "-1"])
def test_an_unbounded_timeout_is_refused_at_build(
    idp: EntraEmulator, variable: str, value: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(obo_env(idp, **{variable: value}))
    assert variable in str(info.value)
    assert info.value.fix


def test_a_day_is_still_accepted_and_the_flow_works(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    chain = TokenChain.from_env(obo_env(idp, ENTRA_PASSTHROUGH_TOKEN_DEADLINE="86400"))
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        assert chain.get_token([f"{idp.mcp.app_id_uri}/access_as_user"]).token
    chain.close()
    assert crashes == []


@pytest.mark.parametrize("name", ["connect", "read", "deadline", "backoff", "max_retry_wait"])
@pytest.mark.parametrize("value", [math.inf, 1e10, math.nan])
def test_timeouts_refuses_an_unbounded_value(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Timeouts(**{name: value})


def test_the_watchdog_survives_an_end_far_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline scope of its own (``_http.deadline``) is not checked by ``Timeouts``: an end
    at inf or 1e10 s away must not end the watchdog thread (every later watch unwatched)."""
    crashes: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    far = [_WATCHDOG.arm(math.inf), _WATCHDOG.arm(time.monotonic() + 1e10)]
    try:
        time.sleep(0.3)  # the watchdog thread waits on the far ends (or crashed on them)
        soon = _WATCHDOG.arm(time.monotonic() + 0.2)
        for _ in range(100):  # bounded: the near watch fires within 0.2 s, if watched
            if soon._expired:
                break
            time.sleep(0.05)
        assert soon._expired, "the watchdog no longer fires"
        soon.finish()
    finally:
        for watch in far:
            watch.finish()
    assert [str(c.exc_type.__name__) for c in crashes] == []
