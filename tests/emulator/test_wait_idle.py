"""``EntraEmulator.wait_idle`` waits for a request its client gave up on.

A request held by an injected delay is counted in ``stats()`` when the emulator ends it, seconds
after its client stopped waiting: a test that took a count meanwhile counted the previous test's
straggler (a flaky ``tests/faults`` count). ``wait_idle`` returns once nothing is in flight.
"""

from __future__ import annotations

import contextlib

import requests

from entra_passthrough.testing import EntraEmulator


def test_a_straggler_is_counted_before_wait_idle_returns(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    assert idp.wait_idle(15.0)
    idp.inject_fault("discovery", status=None, delay=1.5)
    before = idp.stats()["endpoints"]["discovery"]
    url = f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration"
    with contextlib.suppress(requests.RequestException):
        # the client gives up; the emulator still answers it, later
        requests.get(url, verify=idp.ca_file, timeout=0.3)
    assert idp.wait_idle(15.0)
    assert idp.stats()["endpoints"]["discovery"] == before + 1
    idp.clear_faults()


def test_wait_idle_with_no_time_left_still_says_idle(entra_emulator: EntraEmulator) -> None:
    assert entra_emulator.wait_idle(15.0)
    assert entra_emulator.wait_idle(0)
