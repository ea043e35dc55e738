"""Unsigned JWT-shaped strings for capture tests (the middleware only decodes, unverified)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any


def unsigned_jwt(**claims: Any) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    body = {"exp": time.time() + 3600, "scp": "access_as_user", **claims}
    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(body)}.c2lnbmF0dXJl"
