"""``UserKey``: the one representation of *which user*, wherever the library keys something by
user (consent grants and links, the per-user MCP connection pool, the server's per-user data,
telemetry's user hash).

One string form, ``key.value``: ``"<tid>:<oid>"`` for an Entra user (tenant and object id from a
token that was verified, or that Entra itself issued), ``"platform:<user id>"`` for the hosting
platform's user id. One stored form, ``key.hashed`` (what stores, links and states carry: the
value names a person). Never built from unverified claims: anyone who can reach an app can put
any tid/oid in an unsigned token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._caller import Caller

__all__ = ["KeyKind", "UserKey"]

KeyKind = Literal["entra", "platform"]


def _hash(value: str) -> str:
    # surrogatepass: a key built by code (bind_caller(user_id=...)) may hold lone surrogates.
    data = f"entra-passthrough/user\x00{value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _tid_oid(claims: Mapping[str, Any]) -> tuple[str, str] | None:
    tid, oid = claims.get("tid"), claims.get("oid")
    if isinstance(tid, str) and isinstance(oid, str) and tid and oid:
        return tid, oid
    return None


@dataclass(frozen=True, slots=True)
class UserKey:
    """Which user: ``entra`` = tenant + object id of a *verified* (or Entra-issued) token;
    ``platform`` = the hosting platform's user id (``x-agent-user-id``), trusted only as far as
    the platform's ingress is.

    Two keys are equal when ``kind`` and ``value`` are: the other fields are sign-in hints and
    constraints that travel with the key (``login_hint``/``domain_hint`` come from unverified
    claims and only pre-fill the sign-in). ``repr`` never shows the value.

    >>> key = UserKey.for_entra_user("<tenant id>", "<object id>")
    >>> key.value, key.kind
    ('<tenant id>:<object id>', 'entra')
    """

    value: str = field(repr=False)
    kind: KeyKind
    tid: str | None = field(default=None, compare=False)
    oid: str | None = field(default=None, repr=False, compare=False)
    login_hint: str | None = field(default=None, repr=False, compare=False)
    domain_hint: str | None = field(default=None, compare=False)
    #: For a platform key: the (unverified) tid/oid of the token that came with the request,
    #: if any. Never a key - only a constraint: the sign-in must then be that account, so a
    #: link forwarded to (or phished by) someone else cannot bind this chat user to them.
    expected_tid: str | None = field(default=None, compare=False)
    expected_oid: str | None = field(default=None, repr=False, compare=False)

    @property
    def hashed(self) -> str:
        """The stored form (sha256 hex of the value): what stores, links and states carry."""
        return _hash(self.value)

    @classmethod
    def for_entra_user(cls, tid: str, oid: str, *, upn: str | None = None) -> UserKey:
        """The key of an Entra user whose tid/oid you *verified* (or Entra issued)."""
        return cls(f"{tid}:{oid}", "entra", tid=tid, oid=oid, login_hint=upn, domain_hint=tid)

    @classmethod
    def for_platform_user(
        cls,
        user_id: str,
        *,
        login_hint: str | None = None,
        expected_tid: str | None = None,
        expected_oid: str | None = None,
    ) -> UserKey:
        return cls(
            f"platform:{user_id}",
            "platform",
            login_hint=login_hint,
            expected_tid=expected_tid,
            expected_oid=expected_oid,
        )

    @classmethod
    def from_verified_claims(cls, claims: Mapping[str, Any]) -> UserKey | None:
        """The Entra key of verified claims (``tid`` and ``oid``), ``None`` without both."""
        found = _tid_oid(claims)
        if found is None:
            return None
        upn = claims.get("upn") or claims.get("preferred_username")
        return cls.for_entra_user(*found, upn=upn if isinstance(upn, str) else None)

    @classmethod
    def from_caller(cls, caller: Caller | None) -> UserKey | None:
        """The strongest identity of an *active* caller, or ``None``: the verified tid/oid (a
        verifying middleware ran), else the platform user id.

        Unverified tid/oid are *not* a key: anyone who can reach the container can put any
        tid/oid in an unsigned token and would be served that user's grant or connection.
        They are used only as sign-in hints.
        """
        if caller is None or not caller.active:
            return None
        claims = caller.claims
        hint = claims.upn if claims is not None else None
        if caller.verified is not None:
            found = _tid_oid(caller.verified)
            if found is not None:
                upn = caller.verified.get("upn") or caller.verified.get("preferred_username")
                return cls.for_entra_user(*found, upn=upn if isinstance(upn, str) else hint)
        if caller.user_id:
            both = claims is not None and bool(claims.tid) and bool(claims.oid)
            return cls.for_platform_user(
                caller.user_id,
                login_hint=hint,
                expected_tid=claims.tid if both and claims is not None else None,
                expected_oid=claims.oid if both and claims is not None else None,
            )
        return None
