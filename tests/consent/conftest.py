"""The consent tests' environment: one emulator and one HTTPS server on loopback hosting the broker
and a tiny protected API (``tests/_support/consent.py``, shared with tests/scale_out)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _support.consent import consent_env  # noqa: F401  (the session fixture)
from entra_passthrough._http import SHARED_THROTTLE


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    """The consent app's token requests share the process-wide throttle (a 5xx, a reset or a
    malformed answer closes its endpoint for every user for 2 s, as for on-behalf-of): a test
    that injects one must not fail the next test's sign-in on the same emulator."""
    SHARED_THROTTLE.clear()
    yield
    SHARED_THROTTLE.clear()
