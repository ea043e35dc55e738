"""Redaction of secrets from text the library does not control: log records and error bodies.

MSAL logs a token response it cannot parse whole, at ERROR, through ``logger.exception``
(one byte cut is enough): the user's access, id and refresh tokens go to every handler, and with
no logging configured to Python's last-resort handler on stderr. The library cannot change what
MSAL, azure-identity, httpx or uvicorn write, so it installs ``RedactingFilter`` on the loggers of
the packages it drives. A filter on a logger runs before any handler (the last-resort one too),
and it rewrites the record in place: the message, its arguments, the formatted exception and the
stack text. What it removes:

* JWT-shaped values (three base64url segments; a JOSE header always starts ``eyJ``);
* the value of every secret-bearing field, in JSON or a Python dict's repr
  (``"refresh_token": "..."``, ``'client_secret': '...'``, a cut string too), in forms or query
  strings (``client_secret=...&``, URL-encoded once more: ``client_secret%3D...``), in XML
  (``<client_secret>...</client_secret>``) and as ``field: value`` (a header dump): access,
  refresh and id tokens, client secrets and assertions, OBO assertions, authorization codes,
  PKCE verifiers, passwords (a ``code`` that is an error's name, ``"code": "SecretHeaderNotFound"``
  in a managed identity host's error body, is kept outside forms and query strings);
* ``Bearer <value>`` in header dumps, and the user info of a URL (``https://user:pass@``);
* keys carried in URLs (``sig=``, ``subscription-key=``, ``api-key=``, ``key=``: a SAS URL, API
  Management, Functions), which httpx logs with every request;
* long opaque runs (40+ characters of a token alphabet, as refresh tokens and client secrets
  are), which leaves GUIDs (36) and the library's 12-character fingerprints readable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import traceback

REDACTED = "[redacted]"

_SECRET_FIELDS = (
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "client_assertion",
    "assertion",
    "code",
    "code_verifier",
    "password",
    "token",
    "secret",
    "requested_token",
    "x-identity-header",
    # keys carried in URLs (a signing-key document behind a SAS URL, API Management, Functions):
    # httpx logs every request's URL at INFO
    "sig",
    "subscription-key",
    "api-key",
    "api_key",
    "apikey",
    "x-functions-key",
    "key",
    # the same keys as request headers (a header dump, a dict of headers)
    "ocp-apim-subscription-key",
    "x-api-key",
)
#: Not redacted as unquoted ``field: value``: prose says "token: ...", "cache key: ...".
_PROSE_FIELDS = ("token", "secret", "key", "sig")
_FIELDS = "|".join(re.escape(f) for f in _SECRET_FIELDS)
# "field": "value", and 'field': 'value' (a Python dict's repr, a gateway echoing one), either
# quote on either side; a value cut by a truncated body has no closing quote.
_JSON_FIELD = re.compile(
    rf"""(["'](?P<field>{_FIELDS})["']\s*:\s*)(["'])(?P<value>(?:(?!\3)[^\\]|\\.)*)(\3|$)""",
    re.IGNORECASE,
)
# field=value in a form body or a query string, and field%3Dvalue (the same, URL-encoded once
# more: a body echoed inside a query string or a log of one)
_FORM_FIELD = re.compile(rf"(?<![A-Za-z0-9_])((?:{_FIELDS})=)[^&\s\"'<>]+", re.IGNORECASE)
_ENCODED_FIELD = re.compile(
    rf"(?:(?<![A-Za-z0-9_])|(?<=%26)|(?<=%3F))((?:{_FIELDS})%3D)(?:(?!%26)[^&\s\"'<>])+",
    re.IGNORECASE,
)
# <field>value</field> (an XML or SOAP echo)
_XML_FIELD = re.compile(rf"(<(?P<field>{_FIELDS})(?:\s[^<>]*)?>)(?P<value>[^<]+)", re.IGNORECASE)
#: Fields whose unquoted ``field: value`` (a header dump, YAML, a gateway's "field: value"
#: text) is redacted. Not the bare ``token``/``secret``: "could not get a token: <reason>" is
#: prose. A value of digits only (``code: 400``) is a status, not a secret.
_COLON_FIELDS = "|".join(re.escape(f) for f in _SECRET_FIELDS if f not in _PROSE_FIELDS)
_COLON_FIELD = re.compile(
    rf"(?<![A-Za-z0-9_\"'-])((?P<field>{_COLON_FIELDS})\s*:[ \t]*)(?![0-9]+(?![^\s,;&<>\"'}}\]]))"
    rf"(?P<value>[^\s,;&<>\"'}}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+")
# An Authorization header's credential whatever its scheme (``Basic <key>``: Azure Arc's
# challenge key as azure-core's network trace logs it; SharedKey, PoP): in a header
# dump (``Authorization: Basic ...``) or a dict's repr (``'Authorization': 'Basic ...'``). The
# scheme is kept; the credential up to the end of the value goes.
_AUTHORIZATION = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z][A-Za-z0-9-]*[ \t]+)?)"
    r"[^\s\"',;&<>}\]]+"
)
# user info in a URL (``https://user:password@host``): a credential wherever it is written
# Matched from the start of a scheme only (the look-behind, not ``\b``: "a.a.a..." would be a
# start at every letter, each scanning to the end of the run, quadratic in its length).
_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)[^/\s@?#]+@")
# a URL's query (httpx logs every request's URL): a part with no ``=`` (a bare key,
# ``?<key>``) is redacted whole; named values are the fields'. The fragment (a page's anchor in
# a documentation link) is kept. Looked for within 1 KB of the scheme (bounded: a line of many
# "a://" would otherwise cost its length squared); a bare key after a longer path is not.
_URL_QUERY = re.compile(
    r"(?i)((?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s?#\"'<>]{0,1024}\?)([^\s#\"'<>]*)"
)
# JWTs are looked for in runs of the base64url alphabet and dots, each run matched once from
# its start (the look-behind): a pattern starting at every "eyJ" rescanned a long run without a
# dot from each of them (quadratic: 48 KB of "eyJ" took 1.8 s; a 16 KB request path in
# uvicorn's access log, ~0.2 s of the event loop per request). ``_jwts`` finds the JWTs inside.
_TOKEN_RUN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.+/=-]{40,}")


#: A ``code`` that is an error's name, not an OAuth authorization code: a word or words of
#: letters joined by ``_``, digits only at the end, at most 48 characters
#: (``SecretHeaderNotFound``, Service Fabric's; ``invalid_request``; ``AADSTS50011``). Entra's
#: authorization codes (``0.AXcA...`` or ``1.A...``, hundreds of characters) and the emulator's
#: (``emu-code.`` + 43 base64url characters) have ``.``, ``-`` and digits inside: never kept.
_ERROR_NAME = re.compile(r"[A-Za-z]+(?:_[A-Za-z]+)*[0-9]{0,8}")
_ERROR_NAME_MAX = 48


def _keeps(match: re.Match[str]) -> bool:
    """Whether the matched field is ``code`` holding an error's name (kept as it is)."""
    value = match.group("value")
    return (
        match.group("field").lower() == "code"
        and len(value) <= _ERROR_NAME_MAX
        and _ERROR_NAME.fullmatch(value) is not None
    )


def _json_field(match: re.Match[str]) -> str:
    if match.group(5) and _keeps(match):  # a cut value (no closing quote) is never kept
        return match.group(0)
    return match.group(1) + match.group(3) + REDACTED + match.group(5)


def _named_field(match: re.Match[str]) -> str:
    """``<field>value`` and ``field: value``."""
    return match.group(0) if _keeps(match) else match.group(1) + REDACTED


def redact(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[redacted]``. A ``code`` that is
    an error's name (``"code": "SecretHeaderNotFound"``, ``<code>invalid_request</code>``,
    ``code: IdentityNotFound``) stays: only in a form or a query string is every ``code=``
    an authorization code's place."""
    if not text:
        return text
    text = _JSON_FIELD.sub(_json_field, text)
    text = _FORM_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _ENCODED_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _XML_FIELD.sub(_named_field, text)
    text = _COLON_FIELD.sub(_named_field, text)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _URL_QUERY.sub(_url_query, text)
    text = _TOKEN_RUN.sub(_jwts, text)
    return _OPAQUE.sub(_opaque, text)


def _url_query(match: re.Match[str]) -> str:
    parts = match.group(2).split("&")
    return match.group(1) + "&".join(p if not p or "=" in p[1:] else REDACTED for p in parts)


def _jwts(match: re.Match[str]) -> str:
    """The run with every JWT in it (from its ``eyJ``) replaced; linear in the run's length:
    after a failed try, the next ``eyJ`` looked at is past the next dot (one inside the same
    segment would stop at the same dot and fail the same way)."""
    run = match.group(0)
    if "eyJ" not in run:
        return run
    out: list[str] = []
    done = 0
    at = run.find("eyJ")
    while at >= 0:
        found = _JWT.match(run, at)
        if found is not None:
            out += (run[done:at], REDACTED)
            done = found.end()
            at = run.find("eyJ", done)
            continue
        dot = run.find(".", at)
        if dot < 0:
            break
        at = run.find("eyJ", dot)
    out.append(run[done:])
    return "".join(out)


def _opaque(match: re.Match[str]) -> str:
    value = match.group(0)
    # A URL path or a dotted name is not a secret; a run with both letters and digits is. A
    # URL's port starts the run after "host:" ("57143/.well-known/oauth-protected-resource"):
    # its digits alone do not make the path a secret.
    if value.count("/") > 2 and "+" not in value and not value.endswith("="):
        # A path, unless it has standard base64's "+" or padding: a 64-byte key (a storage
        # account's, 88 characters ending "==") has three "/" or more about one time in seven.
        return value
    scope = _GUID_SCOPE.fullmatch(value)
    if scope is not None and not any(c.isdigit() for c in scope.group(1)):
        # A scope in its application-id form ("<app guid>/.default", ".../access_as_user"):
        # the value an operator needs to fix a refused request. (A name with digits goes on
        # to the test below: a secret after an id and a slash is still a secret.)
        return value
    port = _PORT_PATH.match(value)
    rest = value[port.end() :] if port is not None else value
    if not any(c.isdigit() for c in rest):
        return value
    return REDACTED


_PORT_PATH = re.compile(r"\d{1,5}/")
_GUID_SCOPE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/([A-Za-z0-9_.-]+)"
)


def scrub(exc: BaseException, *, ours_too: bool = False) -> BaseException:
    """Remove secrets an exception chain carries beyond its message, in place; returns ``exc``.

    A library's own error is raised ``from None`` over a third party's (MSAL's
    ``JSONDecodeError`` keeps the whole token response in ``.doc``): the hidden context is
    dropped, and text in the third-party exceptions that remain is redacted.

    Every traceback in the chain is dropped too: the frames of a source, MSAL and requests hold
    the user's assertion and the POST body (client secret included) as local variables, and
    error reporters that capture locals (Sentry's default, ``traceback`` with
    ``capture_locals``, ``pytest --showlocals``) would send them on. Raised again, the error
    gets a traceback from where it is raised (the chain) outwards.

    ``ours_too``: the library's own error types are redacted as well (their text, ``fix`` and
    the string fields telemetry reads: ``correlation_id``, ``trace_id``, ``error``...):
    for an error a source written outside the library raised (a custom ``TokenSource`` that puts
    the caller's assertion in a ``SourceUnavailable``'s message). The library's own sources'
    errors never hold a secret, and their text (a consent link's query) is kept as it is.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        current.__traceback__ = None
        if current.__suppress_context__:
            current.__context__ = None
        if isinstance(current, json.JSONDecodeError):
            current.doc = redact(current.doc)
        ours = type(current).__module__.startswith("entra_passthrough")
        if ours_too or not ours:
            with contextlib.suppress(AttributeError, TypeError):  # exotic exception types
                current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        if ours_too and ours:
            for name in ("fix", "failure", "correlation_id", "trace_id", "error", "suberror"):
                value = current.__dict__.get(name)
                if isinstance(value, str):
                    setattr(current, name, redact(value))
        current = current.__cause__ or current.__context__
    return exc


class RedactingFilter(logging.Filter):
    """Rewrites a record so that no secret reaches a handler; drops only hpack's (below)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("hpack"):
            # hpack logs every header it encodes or decodes at DEBUG, also as the raw header
            # block: Huffman-coded bytes, in which no pattern can find a token, and from which
            # any hpack decoder gets the Authorization header back. Nothing else is in them.
            return False
        args = record.args
        if isinstance(args, tuple):
            # Arguments are redacted one by one and the record keeps its shape: some formatters
            # unpack ``args`` (uvicorn's access log). Numbers stay numbers for ``%d``.
            record.msg = redact(record.msg) if isinstance(record.msg, str) else record.msg
            record.args = tuple(_redact_arg(a) for a in args)
        elif args:  # a mapping: format now
            try:
                message = record.getMessage()
            except Exception:  # arguments that do not fit the format
                message = "(a log record with unformattable arguments)"
            record.msg, record.args = redact(message), None
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        else:
            record.msg = redact(str(record.msg))
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
            # The exception object itself may carry the body (JSONDecodeError.doc); handlers
            # format exc_text when it is set, so the live exception is dropped.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact_arg(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(value if isinstance(value, str) else str(value))


#: The loggers of the packages the library drives, whose records can carry a token or secret.
LOGGER_PREFIXES = (
    "entra_passthrough",
    "msal",
    "azure.identity",
    "azure.core",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "uvicorn",
    "mcp",
    # HTTP/2 servers (hypercorn, which the Foundry hosting packages run on, serves HTTP/2 by
    # default): hpack logs every decoded header at DEBUG, the caller's Authorization included.
    "hypercorn",
    "h2",
    "hpack",
)

#: Loggers created late (MSAL's OAuth2 client makes its logger in ``__init__``): made here so
#: that the filter is on them before their first record.
_KNOWN = (
    "msal.oauth2cli.oauth2",
    "msal.oauth2cli.oidc",
    "msal.oauth2cli.assertion",
    "msal.oauth2cli.authcode",
    "msal.application",
    "msal.managed_identity",
    "msal.token_cache",
    "uvicorn.access",
    "uvicorn.error",
    # made by uvicorn's ``Config.load()`` at ``--log-level trace``, after the app (and this
    # library) is imported: it logs each ASGI scope, its query string with it
    "uvicorn.asgi",
    "httpcore.http11",
    "httpcore.connection",
    "httpcore2.http11",
    "httpcore2.http2",
    "httpcore2.connection",
    "hpack.hpack",
    "hpack.table",
    "hypercorn.error",
    "hypercorn.access",
)

_FILTER = RedactingFilter()
_lock = threading.Lock()
_seen = 0


def install(prefixes: tuple[str, ...] = LOGGER_PREFIXES) -> None:
    """Put the filter on every existing logger under ``prefixes`` (idempotent, cheap to repeat).

    A filter on a logger does not apply to its children's records, so each module logger gets
    its own. Called when the MSAL plumbing is imported and again whenever a source is built,
    which covers loggers created by a later import.
    """
    global _seen
    manager = logging.Logger.manager
    with _lock:
        if len(manager.loggerDict) == _seen:
            return
        for name in [*prefixes, *_KNOWN, *list(manager.loggerDict)]:
            if not any(name == p or name.startswith(p + ".") for p in prefixes):
                continue
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _seen = len(manager.loggerDict)
