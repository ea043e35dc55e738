"""Load-test sizes: quick by default (``make test``), full with ``ENTRA_SOAK=1`` (``make soak``)."""

from __future__ import annotations

import os

#: ``ENTRA_SOAK=1``: the load tests run at their full size (minutes; ``make soak``).
SOAK = os.environ.get("ENTRA_SOAK", "") not in ("", "0")
