"""Repeated identical warnings are coalesced: a throttled endpoint under load writes a handful
of lines, not one per failed call."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from entra_passthrough import Throttled, bind_caller
from entra_passthrough._otel import COALESCER, WARNING_BURST, WarningCoalescer
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope


def _record(msg: str, *args: Any, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("entra_passthrough.chain", level, __file__, 1, msg, args, None)


def test_a_throttled_endpoint_writes_a_bounded_number_of_warnings(
    idp: EntraEmulator, rig_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory()
    COALESCER.reset()
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    idp.inject_fault("token", status=429, retry_after=30, count=1000)
    calls = 200
    start = time.monotonic()
    for i in range(calls):
        with (
            bind_caller(token=rig.user_token("bob" if i % 2 else "alice")),
            pytest.raises(Throttled),
        ):
            rig.chain.get_token(mcp_scope(idp))
    elapsed = time.monotonic() - start
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "entra_passthrough.chain"
    ]
    # the first ones at once, then one per interval (plus the one of the first 429)
    assert 1 <= len(warnings) <= WARNING_BURST + 1 + int(elapsed / COALESCER.interval)
    assert all("Throttled" in r.getMessage() for r in warnings)


def test_coalescer_burst_then_one_per_interval_with_the_count() -> None:
    now = [0.0]
    coalescer = WarningCoalescer(interval=10.0, burst=3, clock=lambda: now[0])
    msg = "token acquisition for %s failed: %s%s"

    def passed(corr: str) -> logging.LogRecord | None:
        record = _record(msg, "api://x/.default", f"EntraError (correlation_id {corr})", "")
        return record if coalescer.filter(record) else None

    ids = [f"0000000{i}-1111-2222-3333-444444444444" for i in range(10)]
    out = [passed(c) for c in ids]  # correlation ids differ: still the same warning
    assert sum(r is not None for r in out) == 3
    now[0] = 10.0
    again = passed(ids[0])
    assert again is not None
    assert "7 identical warnings suppressed" in again.getMessage()
    assert passed(ids[1]) is None  # one per interval after the burst
    # another warning, and anything below WARNING, is never held back
    assert coalescer.filter(_record(msg, "api://other/.default", "Throttled", ""))
    assert all(coalescer.filter(_record("debug %s", i, level=logging.DEBUG)) for i in range(50))


def test_coalescer_off_and_bounded() -> None:
    off = WarningCoalescer(interval=0.0)
    assert all(off.filter(_record("same")) for _ in range(100))
    bounded = WarningCoalescer(interval=10.0)
    for i in range(WarningCoalescer.MAX_KEYS + 100):
        bounded.filter(_record("warning %d", i))
    assert len(bounded._state) <= WarningCoalescer.MAX_KEYS
