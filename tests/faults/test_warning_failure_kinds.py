"""A WARNING for a failed acquisition names what failed (``HTTP 503``, ``timeout``, ``connection
failed``...), so that a different failure right after a storm is not coalesced into the storm's
warnings, and the line alone tells an outage from a timeout.

Real MSAL against the emulator over HTTPS, with its fault injection; the coalescing filter is
the library's own (``_otel.COALESCER``), reset per test."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from entra_passthrough import SourceUnavailable, Timeouts, _otel, bind_caller
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

#: One attempt per call, a deadline short enough for a stalled answer, a negative cache short
#: enough that each call after it is sent.
FAST = Timeouts(connect=2.0, read=1.0, deadline=1.5, retries=0, negative_ttl=0.01)


def _warnings(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records[since:]
        if r.levelno == logging.WARNING and r.name == "entra_passthrough.chain"
    ]


def _fail(rig: Any, idp: EntraEmulator) -> SourceUnavailable:
    SHARED_THROTTLE.clear()  # the previous failure's negative entry would refuse it unsent
    with bind_caller(token=rig.user_token()), pytest.raises(SourceUnavailable) as info:
        rig.chain.get_token(mcp_scope(idp))
    return info.value


def test_a_different_failure_after_a_storm_is_its_own_warning(
    idp: EntraEmulator, rig_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory(FAST)
    _otel.COALESCER.reset()
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    idp.inject_fault("token", status=503, count=_otel.WARNING_BURST + 3)
    for _ in range(_otel.WARNING_BURST + 3):
        _fail(rig, idp)
    storm = _warnings(caplog)
    # identical failures are still coalesced: the burst, then held back
    assert len(storm) == _otel.WARNING_BURST, storm
    assert all("SourceUnavailable (HTTP 503" in line for line in storm), storm
    idp.clear_faults()

    seen = len(caplog.records)
    idp.inject_fault("token", drop=True)
    reset = _fail(rig, idp)
    assert reset.failure == "connection failed"
    idp.clear_faults()
    idp.inject_fault("token", status=None, delay=3.0)  # Entra stalls past the deadline
    stalled = _fail(rig, idp)
    idp.wait_idle(15.0)  # the stalled request is counted when it ends: not in the next test
    assert stalled.failure in ("timeout", "deadline") or str(stalled.failure).startswith(
        "deadline in "
    )
    after = _warnings(caplog, seen)
    # each different failure is logged, each naming its own kind, none "identical" to the 503s
    assert len(after) == 2, after
    assert "SourceUnavailable (connection failed)" in after[0]
    assert f"SourceUnavailable ({stalled.failure})" in after[1]
    assert not any("suppressed" in line for line in after)


def test_the_coalescing_key_ignores_request_ids_not_the_failure() -> None:
    """A sent request's failure names its correlation id, the same failure refused unsent (the
    fast-fail window) names none: one warning. Another kind of failure is another warning."""
    now = [0.0]
    coalescer = _otel.WarningCoalescer(interval=10.0, burst=1, clock=lambda: now[0])
    msg = "token acquisition for %s failed: %s%s"

    def passes(summary: str) -> bool:
        record = logging.LogRecord(
            "entra_passthrough.chain",
            logging.WARNING,
            __file__,
            1,
            msg,
            ("api://x/.default", summary, " [source obo]"),
            None,
        )
        return coalescer.filter(record)

    sent = "SourceUnavailable (HTTP 503, AADSTS90033, correlation_id {})"
    assert passes(sent.format("0a4c6a8e-1111-2222-3333-444444444444"))
    assert not passes(sent.format("9f1d2c3b-1111-2222-3333-444444444444"))
    assert not passes("SourceUnavailable (HTTP 503, AADSTS90033)")  # unsent: the same one
    assert passes("SourceUnavailable (timeout)")
    assert passes("SourceUnavailable (deadline in headers)")
    assert passes("SourceUnavailable (HTTP 502, AADSTS90033)")
    assert passes("Throttled (HTTP 429, AADSTS90033)")
