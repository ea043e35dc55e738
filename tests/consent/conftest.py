"""The consent tests' environment: one emulator and one HTTPS server on loopback hosting the broker
and a tiny protected API (``tests/_support/consent.py``, shared with tests/scale_out)."""

from __future__ import annotations

from _support.consent import consent_env  # noqa: F401  (the session fixture)
