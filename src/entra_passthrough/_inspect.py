"""``entra-passthrough inspect TOKEN``: decode a token (unverified), say who it names and which
sources could use it, and why not.

Nothing is verified and nothing is sent anywhere: this reads the claims a token carries so that
a developer can see at once why, say, on-behalf-of answers AADSTS500131. The token itself is
never printed, only its fingerprint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ._checks import caller_tenant, client_id
from ._errors import ConfigurationError, without_fix
from ._jwt import JwtDecodeError, UnverifiedClaims, decode_unverified, fingerprint

_FOUNDRY = ("https://ai.azure.com", "https://ml.azure.com")
_TIME_CLAIMS = ("exp", "nbf", "iat")
_ORDER = (
    "aud", "iss", "ver", "tid", "oid", "sub", "upn", "preferred_username", "unique_name",
    "name", "azp", "appid", "idtyp", "scp", "roles", "xms_cc", "exp", "nbf", "iat",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    source: str
    usable: bool
    why: str


def verdicts(
    claims: UnverifiedClaims,
    *,
    client_ids: Sequence[str] = (),
    tenants: Sequence[str] = (),
    now: float | None = None,
) -> list[Verdict]:
    """What each kind of source would make of a caller presenting this token."""
    now = time.time() if now is None else now
    aud = (claims.aud or "").rstrip("/")
    expired = claims.exp is not None and claims.exp <= now
    obo = _obo_verdict(claims, aud, expired, client_ids, tenants)
    out = [obo]
    out.append(
        Verdict(
            "AgentIdentityOnBehalfOf",
            obo.usable,
            "same rule as OnBehalfOf, with the agent identity blueprint as the audience"
            if obo.usable
            else "same reason as OnBehalfOf (the assertion must be for the blueprint)",
        )
    )
    out.append(_consent_verdict(claims))
    out.append(
        Verdict(
            "FoundryToolboxRoute",
            aud in _FOUNDRY,
            "Foundry does OBO server-side with the agent's token + x-agent-foundry-call-id; "
            "this token is not forwarded"
            if aud in _FOUNDRY
            else "only for Foundry toolboxes (the route does not use the caller's token)",
        )
    )
    out.append(
        Verdict(
            "app identity (ManagedIdentity, AzureCredential) under user_or_app",
            False,
            "a token was presented, so user_or_app never falls back to the app identity "
            "(fail closed); app identities serve only requests with no assertion at all",
        )
    )
    return out


def _consent_verdict(claims: UnverifiedClaims) -> Verdict:
    """``DelegatedConsent`` keys a grant on a *verified* tid:oid or on the platform user id,
    never on unverified claims (``UserKey.from_caller``): a token alone, as inspect reads it,
    chooses no grant."""
    if claims.tid and claims.oid:
        why = (
            f"not on this token alone: its tid:oid ({claims.tid}:{claims.oid}) are unverified, "
            "and unverified claims are never a consent key (anyone can write them). The grant "
            "is keyed on tid:oid once CallerMiddleware(verifier=JwtVerifier(...)) verified the "
            "token, otherwise on the platform user id (x-agent-user-id), this tid:oid then "
            "only checked against the account that consented; the token is not forwarded"
        )
    else:
        why = (
            "no tid/oid: this token cannot key a grant even once verified; only the platform "
            "user id (x-agent-user-id) can"
        )
    return Verdict("DelegatedConsent", False, why)


def _obo_verdict(
    claims: UnverifiedClaims,
    aud: str,
    expired: bool,
    client_ids: Sequence[str],
    tenants: Sequence[str],
) -> Verdict:
    if aud in _FOUNDRY:
        return Verdict(
            "OnBehalfOf",
            False,
            f"aud is {aud}: this is the token Foundry gives hosted agents; it names the user "
            "but is for Foundry, not for your app. OBO would fail with AADSTS500131. Use "
            "FoundryToolboxRoute or DelegatedConsent, or have the client request your app's "
            "scope.",
        )
    if claims.is_id_token:
        return Verdict(
            "OnBehalfOf",
            False,
            "an ID token (no scp, no azp/appid): the client's sign-in, not an access token for "
            "your app; send the access token for your app's scope (AADSTS240002)",
        )
    if claims.is_app_only:
        return Verdict(
            "OnBehalfOf",
            False,
            "app-only token (roles, no scp): there is no user to act for (AADSTS7000114)",
        )
    if expired:
        return Verdict("OnBehalfOf", False, "the token has expired (AADSTS500133)")
    if tenants and (claims.tid or "").lower() not in {t.lower() for t in tenants}:
        return Verdict(
            "OnBehalfOf",
            False,
            f"tenant {claims.tid} is not on the allow-list ({', '.join(tenants)}); no request "
            "would be sent to Entra",
        )
    if client_ids:
        accepted = {c.rstrip("/") for c in client_ids} | {
            f"api://{c}" for c in client_ids if "://" not in c
        }
        if aud not in accepted:
            return Verdict(
                "OnBehalfOf",
                False,
                f"aud is {aud or '(none)'}, not the OBO app ({', '.join(sorted(accepted))}): "
                "Entra would answer AADSTS500131",
            )
        return Verdict("OnBehalfOf", True, f"issued for the OBO app ({aud}), a user token")
    return Verdict(
        "OnBehalfOf",
        True,
        f"usable only by an OBO app whose client id or App ID URI is {aud or '(none)'} "
        "(pass --client-id to check)",
    )


def _show(name: str, value: Any) -> str:
    if name in _TIME_CLAIMS and isinstance(value, int | float) and not isinstance(value, bool):
        when = dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        delta = value - time.time()
        rel = f"in {int(delta)} s" if delta >= 0 else f"{int(-delta)} s ago"
        return f"{value} ({when}, {rel})"
    if isinstance(value, list | dict):
        return json.dumps(value)  # (escapes control characters and line breaks itself)
    text = str(value)
    # A line break in a claim would print a line of the token's own making (a fake verdict).
    return text if text.isprintable() else "".join(map(_printable, text))


def _printable(char: str) -> str:
    return char if char.isprintable() else _escaped(char)


def _out(text: str = "", *, file: TextIO | None = None) -> None:
    """One or more lines to the terminal, every character that is not printable escaped: the
    claims are an unverified token's, and one with escape codes could rewrite what the terminal
    shows (clear it, print a fake verdict)."""
    lines = text.split("\n")
    if not all(line.isprintable() for line in lines):
        lines = ["".join(map(_printable, line)) for line in lines]
    stream = file or sys.stdout
    out = "\n".join(lines) + "\n"
    encoding = getattr(stream, "encoding", None)
    if encoding:  # a name the output cannot write (cp1252, a file on Windows): escaped, no crash
        try:
            out.encode(encoding)
        except UnicodeEncodeError:
            out = out.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:
            pass
    stream.write(out)


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def _read_token(arg: str) -> str:
    text = sys.stdin.read() if arg == "-" else arg
    text = text.strip()
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    return text


#: What a bearer that cannot be decoded still does.
_NOT_A_JWT = (
    "A bearer that is not a JWT still counts as presented: it blocks any app-identity "
    "fallback, and OBO cannot use it (AADSTS50027)."
)


def _option_problem(client_ids: Sequence[str], tenants: Sequence[str]) -> str | None:
    """What is wrong with a ``--client-id`` or ``--tenant`` (``None``: nothing), checked as
    ``OnBehalfOf(client_id=..., allowed_tenants=...)`` checks them: a value it refuses (braces,
    quotes, ``common``, a domain for a tenant) was taken, and a good token was blamed for it
    ("not the OBO app", "not on the allow-list"). The value is not echoed."""
    for value in client_ids:
        try:
            client_id(value, what="--client-id")
        except ConfigurationError as exc:
            return (
                f"{without_fix(exc)} It takes the OBO app's Application (client) ID, a GUID "
                "without braces or quotes, or its App ID URI (api://...)."
            )
    for value in tenants:
        try:
            caller_tenant(value, what="--tenant")
        except ConfigurationError as exc:
            return (
                f"{without_fix(exc)} It takes a tenant id as the token's tid claim writes it: "
                "the Directory (tenant) ID, a GUID with dashes, without braces."
            )
    return None


def _version() -> str:
    from . import __version__

    return f"entra-passthrough {__version__}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="entra-passthrough inspect",
        description="Decode an access token WITHOUT verifying it; say which sources could use it.",
    )
    parser.add_argument("token", help="the token, 'Bearer <token>', or - to read stdin")
    parser.add_argument(
        "--client-id",
        action="append",
        default=[],
        help="your OBO app's client id or App ID URI (repeatable)",
    )
    parser.add_argument(
        "--tenant", action="append", default=[], help="allowed tenant id (repeatable)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output on stdout, an error object too (exit 2) when the token "
        "cannot be decoded",
    )
    # Answered by the command line before this parser runs; listed so --help shows it, as every
    # other command's does.
    parser.add_argument("--version", action="version", version=_version())
    args = parser.parse_args(argv)
    problem = _option_problem(args.client_id, args.tenant)
    if problem is not None:  # a usage error, before the token is read (stdin included)
        _out(f"entra-passthrough inspect: {problem}", file=sys.stderr)
        return 2
    token = _read_token(args.token)
    try:
        payload = decode_unverified(token)
    except JwtDecodeError as exc:
        if args.json:
            # A script reading stdout gets JSON whatever the token: the same keys as a decoded
            # token's answer, with ``error`` instead of the claims.
            _out(
                json.dumps(
                    {
                        "fingerprint": fingerprint(token),
                        "verified": False,
                        "error": f"not a decodable JWT: {exc}",
                        "presented": True,
                        "why": _NOT_A_JWT,
                    },
                    indent=2,
                )
            )
            return 2
        _out(f"not a decodable JWT: {exc} (fingerprint {fingerprint(token)})", file=sys.stderr)
        _out(_NOT_A_JWT, file=sys.stderr)
        return 2
    claims = UnverifiedClaims.from_payload(payload)
    found = verdicts(claims, client_ids=args.client_id, tenants=args.tenant)
    if args.json:
        shown = {k: payload[k] for k in _ORDER if k in payload}
        _out(
            json.dumps(
                {
                    "fingerprint": fingerprint(token),
                    "verified": False,
                    "claims": shown,
                    "sources": [
                        {"source": v.source, "usable": v.usable, "why": v.why} for v in found
                    ],
                },
                indent=2,
            )
        )
        return 0
    _out(f"token {fingerprint(token)}  (NOT verified: claims are for diagnosis only)")
    _out()
    width = max(len(k) for k in _ORDER)
    for name in _ORDER:
        if name in payload:
            _out(f"  {name:<{width}}  {_show(name, payload[name])}")
    kind = (
        "ID token (not an access token)"
        if claims.is_id_token
        else "app-only"
        if claims.is_app_only
        else "user (delegated)"
    )
    _out()
    _out(f"  identity kind  {kind}")
    _out()
    _out("Which sources could use it:")
    for v in found:
        mark = "yes" if v.usable else "no "
        _out(f"  [{mark}] {v.source}: {_show('', v.why)}")
    return 0
