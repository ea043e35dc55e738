"""Strict request parsing for the broker: bounded sizes, every parameter name at most once.

Duplicated parameters are refused outright (HTTP parameter pollution: two ``state`` values
that two components would read differently).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from .._grants import MAX_TICKET_CHARS

MAX_QUERY_BYTES = 8192
MAX_PARAMS = 12
MAX_VALUE_CHARS = MAX_TICKET_CHARS  # a link's ticket is the longest value the broker reads
MAX_FORM_BYTES = 8192
CALLBACK_PARAMS = frozenset(
    {
        "code",
        "state",
        "session_state",
        "client_info",
        "error",
        "error_description",
        "error_uri",
        "error_subcode",
        "iss",
    }
)


class BadRequest(Exception):
    """A refused request: ``code`` and the message are shown; ``next_step`` replaces the page's
    "use the sign-in link again" when that would not help (the broker is misconfigured)."""

    def __init__(self, code: str, message: str, *, next_step: str | None = None) -> None:
        self.code = code
        self.next_step = next_step
        super().__init__(message)


def parse_params(raw: bytes, allowed: frozenset[str] | None = None) -> dict[str, str]:
    """Strict query/form parsing: bounded, every name at most once."""
    if len(raw) > MAX_QUERY_BYTES:
        raise BadRequest("request_too_large", "The request parameters are too large.")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("bad_request", "The request parameters cannot be read.") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError:
        raise BadRequest("request_too_large", "Too many request parameters.") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise BadRequest("duplicate_parameter", f"The parameter {name[:40]!r} is repeated.")
        if len(value) > MAX_VALUE_CHARS:
            raise BadRequest("request_too_large", f"The parameter {name[:40]!r} is too long.")
        if allowed is not None and name not in allowed:
            continue  # unknown extras from the identity provider are ignored, bounded above
        out[name] = value
    return out


async def read_form(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise BadRequest("bad_request", "Expected a form (application/x-www-form-urlencoded).")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise BadRequest("request_too_large", "The request body is too large.")
        chunks.append(chunk)
    return b"".join(chunks)
