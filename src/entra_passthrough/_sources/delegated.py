"""``DelegatedConsent``: the user's own token from a grant they gave through the consent broker.

For hosts where the user's token for our app never reaches the agent (a Foundry hosted agent
gets, at best, a token for https://ai.azure.com): the user signs in once through the broker
(authorization code + PKCE with the library's app registration); the refresh token is kept,
sealed, in a ``TokenStore``; this source redeems it for the requested scopes. No grant, a
revoked one, or a claims challenge that needs the user -> ``ConsentRequired(link=...)``.

Refresh tokens rotate: every refresh returns a new one. Two refreshes racing with the same
refresh token could burn it, so refreshes of one user are coalesced in-process (one flight per
user; waiters for the same scopes share its result) and leased across replicas with
compare-and-set on the grant record. The lease is taken before the redemption waits for a
worker, renewed every third of its length until the redemption is done (``renew_until``, the
shared token cache's renewal), and extended once more, compare-and-set, in the worker right
before the POST: a lease that ran out and was taken by another replica meanwhile means no POST
(no replica redeems the refresh token another live lease holder is redeeming), and the POST
(``HTTP_TIMEOUT``) ends well within the fresh lease. A holder that dies mid-redemption (killed
while its POST is at Entra) takes the rotated refresh token with it: once its lease runs out,
another replica redeems the stored refresh token again, which Entra accepts (a provider that
treats the reuse of a refresh token as theft would revoke the grant).

Like the chain and the cache, the decisions (read the grant, wait out another replica's lease,
lease, refresh, write the rotated grant, classify Entra's refusal) are one generator with no
I/O; ``get_token_async`` and ``get_token`` are its two drivers. The sync driver refreshes on the
calling thread; the grant store's calls run on a private event loop, through the store's
blocking twin when it has one (``RedisStore.sync()``: asyncio connections belong to one loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlencode

from .. import _env
from .._checks import registration, seconds
from .._checks import tenant_id as tenant_id_check
from .._consent_client import HTTP_TIMEOUT, ConsentClient, check_https_url
from .._credential import AppCredential, app_credential
from .._drive import drive, drive_async, hold
from .._errors import (
    INTERACTION_CODES,
    ConfigurationError,
    ConsentRequired,
    EntraError,
    EntraPassthroughError,
    SourceUnavailable,
    TokenAcquisitionError,
    error_from_entra,
    first_code,
    is_consent_required,
)
from .._grants import (
    MAX_TICKET_CHARS,
    GrantStore,
    LinkTicket,
    StoredGrant,
    check_scopes,
    seal_revoke_ticket,
)
from .._http import TransportFailure, deadline, trust_error
from .._jwt import fingerprint
from .._l2 import (
    GrantCheck,
    from_grant,
    grant_check,
    renew_until,
    renew_until_sync,
    shared_result_async,
    shared_result_sync,
)
from .._msal import http_session
from .._store import Keyring, MemoryStore, TokenStore, keyring_from
from .._types import IdentityKind, TokenRequest, TokenResult
from .._user_key import UserKey
from ._base import PAGE_FIX, raised_in, result_from_msal, unreachable
from .obo import credential_from_env

if TYPE_CHECKING:
    from .._caller import Caller
    from .managed_identity import ManagedIdentity

logger = logging.getLogger("entra_passthrough.consent")

#: Entra answers that mean the refresh token is dead: the user must sign in again.
#: 700082 expired (90 days idle), 50173 revoked (password change, revokeSignInSessions),
#: 70000/70008/70043 invalid/expired grant, 54005 code/token already redeemed.
_DEAD_GRANT_CODES = frozenset({700082, 50173, 70000, 70008, 70043, 54005, 50089})
#: The user's account is disabled (50057) or locked (50053): Entra refuses every token for the
#: user, and a new sign-in cannot help until an administrator (or the lockout's end) does. The
#: grant is kept (it works again once the account does) and the error says what to do.
_ACCOUNT_BLOCKED_CODES = frozenset({50057, 50053})
#: The cross-replica refresh lease on a grant (seconds): renewed every third of it while a
#: redemption waits and runs, and extended right before the POST, which MSAL bounds below it
#: (``_consent_client.HTTP_TIMEOUT``).
LEASE_SECONDS = 20.0
_MAX_ATTEMPTS = 60
#: A write taking over another replica's refresh lease that the store held longer than this
#: (seconds; a write Redis answers in milliseconds) was held by a store that paused its writes (a
#: failover, patching, ``CLIENT PAUSE WRITE``) while it still answered reads: the holder, alive,
#: could not write its rotated grant back either. Counted as a store failure: the lease taken is
#: not redeemed under until the holder's write-back has had a lease's length (``_decide``).
_HELD_WRITE = 0.5
#: The most other replicas' refresh leases ``DelegatedConsent`` times at once (one per user it
#: waits for). Beyond it the oldest is forgotten: seen again, it is timed afresh (waited for
#: longer, never cut short).
_MAX_SEEN_LEASES = 4096


class _Grants:
    """Step: call ``method`` of the grant store (a coroutine) and send back its result."""

    __slots__ = ("args", "kwargs", "method")

    def __init__(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs

    def call(self, grants: GrantStore) -> Coroutine[Any, Any, Any]:
        return getattr(grants, self.method)(*self.args, **self.kwargs)  # type: ignore[no-any-return]


class _Pause:
    """Step: wait ``seconds`` (another replica holds the lease)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class _KeepWriting:
    """Step: a rotated grant the store refused is kept in memory (``_unsaved``): have it
    written back in the background until the store takes it (``_write_back_later``), whether
    or not another call reaches the store."""

    __slots__ = ()


class _Shared:
    """Step: this replica waited for another replica's refresh of the user; send back the
    token the shared token cache holds for this request now (``shared_result_async``), if it
    came from the grant ``grant`` (the stamp of the one just read), or ``None`` (no shared
    cache, or nothing there)."""

    __slots__ = ("grant",)

    def __init__(self, grant: str) -> None:
        self.grant = grant


class _Held:
    """A refresh lease this replica holds on one user's grant: the leased record, its version
    (the fencing token: each renewal makes a new one, every later write compares with the
    last), whether a renewal found it taken by another replica, and whether its flight was
    cancelled while its refresh token was at Entra and no answer has come (``unanswered``:
    given up on then, the lease is not released; it runs out by itself, as a dead holder's)."""

    __slots__ = ("grant", "key_hash", "lost", "unanswered", "version")

    def __init__(self, key_hash: str, grant: StoredGrant, version: str) -> None:
        self.key_hash = key_hash
        self.grant = grant
        self.version = version
        self.lost = False
        self.unanswered = False


class _LeaseLost(Exception):
    """The refresh lease ran out and another replica took it before the redemption started:
    the refresh token was not redeemed here."""


class _Redeem:
    """Step: redeem the refresh token at Entra (MSAL, blocking) under ``lease`` (renewed while
    the step runs, extended right before the POST) and send back its answer; ``_LeaseLost``
    if the lease was taken over first. ``tenant``: the authority's (``ConsentClient.user_tenant``
    of the grant), ``None`` the configured tenant's."""

    __slots__ = ("claims", "lease", "refresh_token", "scopes", "tenant")

    def __init__(
        self,
        refresh_token: str,
        scopes: tuple[str, ...],
        claims: str | None,
        lease: _Held,
        tenant: str | None = None,
    ) -> None:
        self.refresh_token = refresh_token
        self.scopes = scopes
        self.claims = claims
        self.lease = lease
        self.tenant = tenant


_Step = _Grants | _Pause | _Shared | _Redeem | _KeepWriting
_R = TypeVar("_R")


class _Start:
    """An async caller and its redemption queued in the consent client's pool: the job starts
    only while its caller still waits for it, and the caller gives up (at its deadline) only on
    a job that has not started (one that has is bounded by the same deadline)."""

    __slots__ = ("_lock", "abandoned", "answer", "started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False
        self.abandoned = False
        #: The started job's outcome, set by its worker (``_redeem_under``) whatever becomes of
        #: the task awaiting the job (a loop shutting down cancels it). Running from the start:
        #: a cancelled waiter cannot cancel it.
        self.answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.answer.set_running_or_notify_cancel()

    def start(self) -> bool:
        with self._lock:
            self.started = not self.abandoned
            return self.started

    def abandon(self) -> bool:
        with self._lock:
            self.abandoned = not self.started
            return self.abandoned


#: Abandoned redemption jobs still queued (``_redeem_async``): kept referenced until they end.
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _background(job: asyncio.Future[Any]) -> None:
    hold(_BACKGROUND, job)


class _NoWorker(Exception):
    """An async redemption waited its whole deadline for a worker of the consent client: it
    never started (nothing was sent to Entra)."""


#: The fix for a refresh that Entra did not answer, or answered with an outage.
_TRANSIENT_FIX = (
    "nothing to configure if it is transient: the refresh token is redeemed once per call, "
    "never re-sent within it, and the user's next request tries again; if it persists, check "
    "the network path to the authority host from here (HTTPS_PROXY / NO_PROXY, a firewall) "
    "and Entra's service health."
)


def _redemption_failed(
    exc: Exception, *, source: str, scopes: tuple[str, ...]
) -> EntraPassthroughError:
    """The typed error for a redemption that got no answer to read: what happened, why, and the
    fix; never the exception's text (it may hold a URL or a body)."""
    what = "refreshing the user's stored grant"
    if isinstance(exc, _NoWorker):
        return SourceUnavailable(
            f"{what} failed: no worker of the consent client was free within "
            f"{HTTP_TIMEOUT:g} s (every one was busy with other users' refreshes, e.g. to an "
            "endpoint that stalls); nothing was sent to Entra.",
            source=source,
            scopes=scopes,
            failure="no worker",
            fix="nothing to configure if it is transient; if many users refresh at once, "
            "raise DelegatedConsent(max_workers=...) (default 8); if Entra stalls from here, "
            "check the network path to the authority host.",
        )
    trusted = trust_error(exc, what=what, source=source, scopes=scopes)
    if trusted is not None:
        return trusted
    if isinstance(exc, TransportFailure):
        if exc.kind in ("throttled", "closed"):
            # Throttled; or the source closed under it (close()): said as such, not as a page
            return unreachable(exc, what=what, source=source, scopes=scopes)
        fix = _TRANSIENT_FIX
        if exc.kind == "deadline":
            happened = f"Entra did not answer within {HTTP_TIMEOUT:g} s"
            if exc.phase is not None:
                happened += f" (cut in: {exc.phase})"
        elif exc.kind == "timeout":
            happened = f"Entra did not answer in time (nothing for {HTTP_TIMEOUT:g} s)"
        elif exc.kind == "connection":
            happened = "the connection to Entra failed or was lost before its answer was read"
        elif exc.kind == "status":
            happened = (
                f"Entra answered HTTP {exc.status} (an outage on its side); the consent app's "
                "requests pause for 2 s"
            )
        else:  # malformed, page
            happened = (
                "Entra's answer was not a token endpoint's JSON (cut short, or a page from a "
                "proxy, firewall or gateway on the way)"
            )
            fix = PAGE_FIX
        if exc.cached:
            happened += " (a recent identical failure; no request was sent)"
        return SourceUnavailable(
            f"{what} failed: {happened}.",
            source=source,
            scopes=scopes,
            fix=fix,
            failure=exc.summary(),
            aadsts=exc.aadsts,
            correlation_id=exc.correlation_id,
            trace_id=exc.trace_id,
        )
    if isinstance(exc, ValueError) and raised_in(exc, "json.decoder"):
        # A 3xx/4xx without a JSON body reaches MSAL as it came: its parser's error.
        return SourceUnavailable(
            f"{what} failed: the token endpoint answered with no JSON body (a redirect, or a "
            "page from a proxy, firewall or gateway on the way).",
            source=source,
            scopes=scopes,
            fix=PAGE_FIX,
            failure="not JSON",
        )
    typed = unreachable(exc, what=what, source=source, scopes=scopes)
    if isinstance(typed, SourceUnavailable) and typed.fix is None:
        return SourceUnavailable(
            str(typed.args[0]) if typed.args else f"{what} failed.",
            source=source,
            scopes=scopes,
            fix=_TRANSIENT_FIX,
            failure=typed.failure,
        )
    return typed


#: The most leases ``DelegatedConsent`` remembers as written without an answer (a store that
#: keeps failing: beyond it, such leases are waited out as another's).
_MAX_UNCERTAIN = 1024


def _named_account(key: UserKey, caller: Caller | None) -> tuple[str, str] | None:
    """The account a platform user's request names in its token (tenant and object id, lower
    case, either may be empty), or ``None`` when it names none or the key is not a platform
    one. Unverified: only ever compared with the account that consented under the id."""
    if key.kind != "platform" or caller is None:
        return None
    claims = caller.claims
    if claims is None:
        return None
    tid, oid = (claims.tid or "").lower(), (claims.oid or "").lower()
    return (tid, oid) if tid or oid else None


def _same_account(named: tuple[str, str], grant: StoredGrant) -> bool:
    """Whether every part of the account a request names is the grant's."""
    tid, oid = named
    return (not tid or tid == grant.tid.lower()) and (not oid or oid == grant.oid.lower())


class DelegatedConsent:
    """A ``TokenSource`` (kind ``user``) serving tokens from grants made in the consent broker.

    The user key is tid+oid when the caller carries a *verified* identity (a verifying
    ``CallerMiddleware``), else the platform's user id (``x-agent-user-id``: weaker, it is as
    trustworthy as the platform's ingress). Unverified token claims are never a key.

    >>> keys = Keyring.from_env()          # shared with the broker
    >>> store = MemoryStore()              # shared with the broker (Redis across replicas)
    >>> source = DelegatedConsent(
    ...     client_id=CONSENT_APP_ID, tenant_id=TENANT, client_secret=SECRET,
    ...     store=store, keyring=keys, broker_url="https://agent.contoso.com/consent")
    >>> chain = TokenChain([source], policy=Policy.USER_ONLY)
    """

    kind = IdentityKind.USER

    def __init__(
        self,
        *,
        store: TokenStore,
        keyring: Keyring,
        broker_url: str,
        credential: AppCredential | None = None,
        client_id: str | None = None,
        tenant_id: str | None = None,
        client_secret: str | None = None,
        managed_identity: ManagedIdentity | None = None,
        authority_host: str | None = None,
        allowed_tenants: Sequence[str] | None = None,
        http_client: Any = None,
        max_workers: int = 8,
        link_lifetime: float = 1800.0,
        server_label: str | None = None,
        name: str = "delegated",
    ) -> None:
        check_https_url(broker_url, what="broker_url")
        # NaN or -1 was taken: every consent link was born expired. A day at most: a link is
        # sensitive for as long as it lives (the hosting layer logs it).
        link_lifetime = seconds(link_lifetime, what="link_lifetime", low=60, high=86_400)
        self.name = name
        app = app_credential(
            "DelegatedConsent",
            credential,
            client_id=client_id,
            tenant_id=tenant_id,
            client_secret=client_secret,
            managed_identity=managed_identity,
            authority_host=authority_host,
        )
        # As for OnBehalfOf: a tenant no caller can have, a client id with a space, an empty
        # secret are refused here, not at every user's first consent.
        registration(
            "DelegatedConsent",
            app,
            tenant_variable="ENTRA_PASSTHROUGH_CONSENT_TENANT_ID or AZURE_TENANT_ID",
            client_variable="ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID",
            secret_variable="ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET",
            tenantless=bool(allowed_tenants),
        )
        if not isinstance(allowed_tenants, list | tuple | set | frozenset | str | None):
            raise ConfigurationError(  # 5 or b"..." was a bare TypeError / AttributeError
                "DelegatedConsent(allowed_tenants=) must be a list of tenant ids, not "
                f"{type(allowed_tenants).__name__}.",
                fix="pass allowed_tenants=['<tenant id>', ...] (ENTRA_PASSTHROUGH_ALLOWED_TENANTS"
                ": comma-separated), or leave it out.",
            )
        if isinstance(allowed_tenants, list | tuple):
            # A GUID in braces, a URL or a path matches no caller; refused here, not at every
            # sign-in (a domain too, unless it names the consent app's own tenant: the client).
            for entry in allowed_tenants:
                tenant_id_check(
                    entry.strip() if isinstance(entry, str) else entry,
                    what="allowed_tenants",
                    variable="ENTRA_PASSTHROUGH_ALLOWED_TENANTS",
                    owner="DelegatedConsent",
                    entry=True,
                )
        self.client = ConsentClient(
            app,
            http_client=http_client,
            max_workers=max_workers,
            allowed_tenants=allowed_tenants,
            owner="DelegatedConsent",
            variable="ENTRA_PASSTHROUGH_ALLOWED_TENANTS",
        )
        self.grants = GrantStore(store, keyring, client_id=self.client.client_id)
        self.keyring = keyring
        self.broker_url = broker_url.rstrip("/")
        self.link_lifetime = link_lifetime
        self.server_label = server_label
        self._replica = secrets.token_hex(8)
        #: Rotated grants the store refused after Entra had redeemed the old refresh token
        #: (store down mid-refresh): written back in the background (``_write_back_later``)
        #: and by every call that reaches the store, so the redeemed refresh token is never used
        #: again. Key hash -> (grant, version of our lease, our lease's owner, the refresh token
        #: redeemed, if Entra rotated it).
        self._unsaved: dict[str, tuple[StoredGrant, str, str | None, str | None]] = {}
        self._unsaved_lock = threading.Lock()
        #: The background write-back of ``_unsaved`` (one at a time: a task on the event loop
        #: of the async call that kept a grant, or a thread for a sync one), and ``close()``.
        self._writer: asyncio.Task[None] | threading.Thread | None = None
        self._closing = threading.Event()
        #: The refresh leases of this instance whose refresh is under way (``_decide``): a
        #: lease of ours in a grant that is not among them was written by a write whose answer
        #: never reached us (lost or late reply, re-sent by the client), and nobody redeems
        #: under it: it is taken over rather than waited out.
        self._active: set[str] = set()
        #: Leases of this process whose write raised (its answer lost or late): the store may
        #: hold one with nobody redeeming under it. Only these are ever taken over as our own:
        #: a lease of ours merely missing from ``_active`` may be another process's (a worker
        #: forked after this instance was built shares its tag; ``_lease_tag`` adds the pid).
        self._uncertain: set[str] = set()
        #: Other replicas' refresh leases, timed on this process's monotonic clock: key hash
        #: -> (owner, version of the record) and when this instance first read that exact
        #: lease (``_lease_lives``).
        self._seen_leases: dict[str, tuple[tuple[str, str], float]] = {}
        self._seen_lock = threading.Lock()  # sync callers' threads and event loops share it
        self._flights: dict[tuple[int, str], tuple[tuple[Any, ...], asyncio.Future[Any]]] = {}
        self._created_http: Any = None  # from_env built the HTTP session (CA file)

    def __repr__(self) -> str:
        return f"DelegatedConsent(name={self.name!r}, client_id={self.client.client_id!r})"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        store: TokenStore | None = None,
        http_client: Any = None,
        name: str = "delegated",
        server_label: str | None = None,
    ) -> DelegatedConsent:
        """Build from the environment (docs/consent.md lists the variables). The default
        store is a ``MemoryStore``: pass a shared one when the broker runs elsewhere.

        The consent app's client credential is read by the code that reads the OBO app's,
        from ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET``, ``..._CLIENT_CERTIFICATE_PATH`` (with
        ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` and ``AZURE_CLIENT_SEND_CERTIFICATE_CHAIN``),
        ``AZURE_FEDERATED_TOKEN_FILE`` or (secretless) the host's user-assigned managed identity
        (``AZURE_CLIENT_ID``) as a federated credential of the app, in that order, or as
        ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL`` chooses."""
        env = _env.environ_or(environ)
        tenant_id = _env.get(env, "ENTRA_PASSTHROUGH_CONSENT_TENANT_ID") or _env.require(
            env, "AZURE_TENANT_ID", what="the consent app's tenant"
        )
        ca_file = _env.get_ca_file(env, "ENTRA_PASSTHROUGH_CA_FILE")
        created = http_client is None and ca_file is not None
        if http_client is None:
            http_client = http_session(ca_file)
        source = cls(
            credential=credential_from_env(
                env,
                client_id=_env.require(
                    env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID", what="the consent app"
                ),
                tenant_id=tenant_id,
                http_client=http_client,
                owner="DelegatedConsent.from_env()",
                app="consent",
            ),
            store=store if store is not None else MemoryStore(),
            keyring=keyring_from(
                _env.require(env, "ENTRA_PASSTHROUGH_CONSENT_KEYS", what="the consent keyring"),
                variable="ENTRA_PASSTHROUGH_CONSENT_KEYS",
            ),
            broker_url=_env.require(
                env, "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL", what="the broker's public URL"
            ),
            allowed_tenants=_env.get_list(env, "ENTRA_PASSTHROUGH_ALLOWED_TENANTS") or None,
            http_client=http_client,
            name=name,
            server_label=server_label,
        )
        # The session made here from ENTRA_PASSTHROUGH_CA_FILE: nobody else holds it.
        source._created_http = http_client if created else None
        return source

    def close(self) -> None:
        self._closing.set()  # stops the background write-back (the rotated grants stay unsaved)
        self.client.pool.close()
        if self._created_http is not None:
            self._created_http.close()

    # --- TokenSource ------------------------------------------------------------------------
    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        key = UserKey.from_caller(request.caller)
        if key is None:
            return None
        partition = (self.name, self.client.client_id, self.client.tenant_id, key.hashed)
        named = _named_account(key, request.caller)
        if named is not None:
            # A platform user whose request also names an account: a token cached for the
            # account the grant belongs to is never served to a request naming another one
            # (``_decide`` refuses that mismatch; the cache must not bypass it).
            return (*partition, *named)
        return partition

    def explain(self, request: TokenRequest) -> str:
        """Why the source does not apply (for the chain's error message)."""
        caller = request.caller
        if caller is None:
            return "no active caller"
        return (
            "no verified identity and no platform user id (x-agent-user-id) to bind a consent "
            "to; unverified token claims are never used as a consent key"
        )

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        """Sync driver of the same decisions as ``get_token_async``: the refresh runs on this
        thread. The grant store's calls run on a private event loop (through the store's
        blocking twin when it has one): do not call this from a thread that runs an event loop
        (use ``get_token_async`` there)."""
        key = UserKey.from_caller(request.caller)
        if key is None:
            return None  # no identity we can bind a grant to: not applicable
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigurationError(
                "DelegatedConsent.get_token() was called on an event loop thread.",
                fix="await get_token_async() instead.",
            )
        with asyncio.Runner() as runner:
            check = grant_check()
            if check is not None:  # the shared token cache asks: one read of the grant
                runner.run(self._check_grant(self.grants.blocking(), key, request, check))
                return None

            def do(step: _Step) -> Any:
                if isinstance(step, _Grants):  # the store's blocking twin, if it has one
                    return runner.run(step.call(self.grants.blocking()))
                if isinstance(step, _Pause):
                    return time.sleep(step.seconds)
                if isinstance(step, _KeepWriting):
                    return self._write_back_later(None)
                if isinstance(step, _Shared):
                    return shared_result_sync(grant=step.grant)
                return self._redeem_blocking(step, runner)

            result, stamp = drive(self._decide(key, request), do)
        from_grant(stamp)  # the shared token cache binds the token to the grant it came from
        return result

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        key = UserKey.from_caller(request.caller)
        if key is None:
            return None  # no identity we can bind a grant to: not applicable
        check = grant_check()
        if check is not None:  # the shared token cache asks: one read of the grant, no flight
            await self._check_grant(self.grants, key, request, check)
            return None
        scopes = tuple(request.scopes)
        flight = (scopes, request.claims)
        # A cancel of the flight held back while its redemption's answer was awaited
        # (``_redeem_async``): raised once the answer is stored, and before any other wait.
        held_back: list[asyncio.CancelledError] = []

        async def do(step: _Step) -> Any:
            if isinstance(step, _Grants):
                return await step.call(self.grants)
            if isinstance(step, _KeepWriting):
                return self._write_back_later(asyncio.get_running_loop())
            if held_back:
                raise held_back[0]
            if isinstance(step, _Pause):
                return await asyncio.sleep(step.seconds)
            if isinstance(step, _Shared):
                return await shared_result_async(grant=step.grant)
            return await self._redeem_async(step, held_back)

        async def refresh() -> tuple[TokenResult, str]:
            try:
                result = await drive_async(self._decide(key, request), do)
            except Exception:
                if held_back:
                    raise held_back[0] from None
                raise
            if held_back:
                raise held_back[0]
            return result

        # Every caller of the flight (each may be its own shared cache's acquisition) names
        # the grant: the shared token cache binds the token to it.
        result, stamp = await self._coalesced(key.hashed, flight, refresh)
        from_grant(stamp)
        return result

    async def _check_grant(
        self, grants: GrantStore, key: UserKey, request: TokenRequest, check: GrantCheck
    ) -> None:
        """The shared token cache's question for a token it holds (``grant_check``): whether
        the grant it came from (``check.stamp``) still stands. One read of the grant; no
        token is requested. After a sign-out (the grant deleted) or a new consent (another
        grant) the answer is no, and the cached token is not served: sign-out stops the
        tokens of every replica that did not hold one already, not only new refreshes. A
        store that fails leaves the answer unknown (the token is not served either; the
        acquisition that follows reads the grant again and fails typed)."""
        try:
            found = await grants.get_grant(key.hashed)
        except Exception as exc:
            logger.debug(
                "grant check failed (%s): the cached token is not served", type(exc).__name__
            )
            return
        if found is None:
            check.verdict = False
            return
        grant = found[0]
        named = _named_account(key, request.caller)
        check.verdict = grant.stamp == check.stamp and (
            named is None or _same_account(named, grant)
        )

    # --- rotated grants the store refused -------------------------------------------------------
    def _saved(self, hashed: str, unsaved: tuple[Any, ...]) -> None:
        """``unsaved`` is written (or superseded): forget it, unless a newer one replaced it."""
        with self._unsaved_lock:
            if self._unsaved.get(hashed) is unsaved:
                del self._unsaved[hashed]

    async def _write_back(self, grants: GrantStore) -> None:
        """Write every rotated grant the store refused (``_unsaved``) through ``grants``.
        Raises while the store still fails."""
        for hashed, unsaved in list(self._unsaved.items()):
            # None: the record changed since (our lease ran out and another replica rotated,
            # or the data was lost, or it was written already): theirs wins.
            record, version, lease, redeemed = unsaved
            written = await grants.put_grant_under_lease(
                hashed, record, version=version, lease=lease, redeemed=redeemed
            )
            self._saved(hashed, unsaved)
            if written is not None:
                logger.info("a rotated grant kept in memory was written back to the grant store")

    @staticmethod
    def _retry_pause(tries: int) -> float:
        """The background write-back's pause before its try number ``tries`` (from 0): a
        twentieth of the lease, then a tenth (1 s, then 2 s), so a live holder writes back well
        within the lease's length that the other replicas honour after the store is back."""
        return LEASE_SECONDS / (20 if tries == 0 else 10)

    def _write_back_later(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Retry the write-back of ``_unsaved`` in the background until the store takes every
        rotated grant, each is superseded, or ``close()``: the holder of a rotated grant writes
        it back once the store is back, even when it gets no call that reaches the store (its
        next calls are served from memory). On ``loop`` (an async call's: the store's async
        client belongs to it), or in a thread through the store's blocking twin (a sync call's).
        One writer at a time; it costs nothing while there is nothing to write."""
        if self._closing.is_set():
            return
        with self._unsaved_lock:
            writer = self._writer
            if isinstance(writer, threading.Thread):
                if writer.is_alive():
                    return
            elif writer is not None and not writer.done() and not writer.get_loop().is_closed():
                return
            if loop is not None:
                task = loop.create_task(self._keep_writing_async())
                _background(task)
                self._writer = task
            else:
                thread = threading.Thread(
                    target=self._keep_writing_blocking, name="ep-grant-write-back", daemon=True
                )
                self._writer = thread
                thread.start()

    def _writer_ends(self, writer: object) -> bool:
        """Whether the background writer ``writer`` stops now (nothing left to write, or
        ``close()``); if so, it is no longer the writer (decided under the lock that keeps a
        grant: one kept meanwhile finds it still writing, or starts another)."""
        with self._unsaved_lock:
            if self._unsaved and not self._closing.is_set():
                return False
            if self._writer is writer:
                self._writer = None
            return True

    async def _keep_writing_async(self) -> None:
        me = asyncio.current_task()
        tries = 0
        try:
            while not self._writer_ends(me):
                await asyncio.sleep(self._retry_pause(tries))
                tries += 1
                if not self._closing.is_set():
                    await self._write_back_try(self._write_back(self.grants))
        except asyncio.CancelledError:
            # Its event loop is ending (an app that runs each request in its own asyncio.run):
            # a thread carries on through the store's blocking twin, or the rotated grants
            # would stay unsaved until a call reached the store, and another replica would
            # redeem the redeemed refresh token once the lease ran out.
            with self._unsaved_lock:
                if self._writer is me:
                    self._writer = None
            if self._unsaved and not self._closing.is_set():
                self._write_back_later(None)
            raise

    def _keep_writing_blocking(self) -> None:
        me = threading.current_thread()
        grants = self.grants.blocking()
        tries = 0
        while not self._writer_ends(me):
            if self._closing.wait(self._retry_pause(tries)):
                continue  # closed: ends
            tries += 1
            asyncio.run(self._write_back_try(self._write_back(grants)))

    @staticmethod
    async def _write_back_try(attempt: Awaitable[None]) -> None:
        try:
            await attempt
        except Exception as exc:  # the store still fails: counted (GrantStore), tried again
            logger.debug("writing a rotated grant back failed (%s); retrying", type(exc).__name__)

    # --- redemption under the lease -----------------------------------------------------------
    async def _extend(self, grants: GrantStore, held: _Held) -> bool:
        """Renew the lease for ``LEASE_SECONDS`` from now (compare-and-set on its version);
        ``False``: another replica holds it now."""
        if held.lost:
            return False
        until = time.time() + LEASE_SECONDS
        renewed = dataclasses.replace(held.grant, lease_until=until)
        version = await grants.put_grant_under_lease(
            held.key_hash, renewed, version=held.version, lease=held.grant.lease_owner
        )
        if version is None:
            held.lost = True
            return False
        held.version = version
        return True

    def _renewal_failed(self, exc: BaseException, first: bool) -> None:
        if first:  # the grant store counted it (other replicas' leases are honoured longer)
            logger.warning(
                "the grant store failed to renew a refresh lease (%s); retrying while the "
                "lease lasts",
                type(exc).__name__,
            )

    def _redeem_under(
        self,
        step: _Redeem,
        extend: Callable[[], bool],
        end: float,
        start: _Start | None = None,
    ) -> dict[str, Any]:
        """In the thread that POSTs: the authority's discovery first (MSAL's app), then extend
        the lease; a lease taken over meanwhile means no POST. Every request is bounded by
        ``end`` (``time.monotonic()``: one deadline over the whole exchange, every phase);
        ``start``: an async caller that may have given up while this waited for a worker."""
        if start is not None and not start.start():
            raise _NoWorker  # its caller has gone: nothing is sent
        try:
            with deadline(max(end - time.monotonic(), 0.0)):
                self.client.app(step.tenant)
                if not extend():
                    raise _LeaseLost
                answer = self.client.refresh(
                    step.refresh_token, step.scopes, step.claims, step.tenant
                )
        except BaseException as exc:
            if start is not None:
                start.answer.set_exception(exc)
            raise
        if start is not None:
            start.answer.set_result(answer)
        return answer

    async def _redeem_async(
        self, step: _Redeem, held_back: list[asyncio.CancelledError]
    ) -> dict[str, Any]:
        """The redemption in the worker pool, bounded by one deadline (``HTTP_TIMEOUT``) from
        here: a caller still waiting for a worker then gives up (``_NoWorker``: the job, when it
        comes up, sends nothing), one whose job runs gets its answer or its deadline error. The
        lease is renewed on this loop until it is done. Cancelled once its job has started
        (the flight is shielded from its callers: its loop is shutting down), it still waits
        for the answer, so that the rotated grant is stored and the lease released; the cancel
        goes to ``held_back``, raised when the flight ends (``get_token_async``)."""
        end = time.monotonic() + HTTP_TIMEOUT
        start = _Start()
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()  # the renewals and the extension: one compare-and-set at a time

        async def renew() -> bool:
            async with lock:
                return await self._extend(self.grants, step.lease)

        def extend() -> bool:  # in the worker, right before the POST
            return asyncio.run_coroutine_threadsafe(renew(), loop).result(LEASE_SECONDS)

        done = asyncio.Event()
        renewing = asyncio.ensure_future(
            renew_until(done, LEASE_SECONDS, renew, self._renewal_failed)
        )
        job = asyncio.ensure_future(
            self.client.pool.run(self._redeem_under, step, extend, end, start)
        )
        try:
            finished, _ = await asyncio.wait({job}, timeout=max(end - time.monotonic(), 0.0))
            if not finished and start.abandon():
                raise _NoWorker
            return await job  # running: bounded by the same deadline
        except BaseException as exc:
            abandoned = start.abandon()  # a job not started never sends (cancelled caller too)
            if not job.done():
                _background(job)
            if abandoned or not isinstance(exc, asyncio.CancelledError):
                raise
            # Its refresh token is at Entra, which rotates it: released now, the lease let
            # another replica redeem the same refresh token meanwhile, and the rotated one
            # was lost. Its answer comes by the same deadline.
            return await self._answer_after_cancel(start, step.lease, exc, held_back)
        finally:
            done.set()
            # Never cancelled mid-write: its last version is the lease's. (Waited for, not
            # awaited: a loop shutting down cancels it too, and that is no error here.)
            await asyncio.wait({renewing})

    async def _answer_after_cancel(
        self,
        start: _Start,
        lease: _Held,
        cancel: asyncio.CancelledError,
        held_back: list[asyncio.CancelledError],
    ) -> dict[str, Any]:
        """The answer of a started redemption whose flight was cancelled, ``cancel`` held back
        meanwhile. Cancelled again (before the answer reaches ``_refresh``), the flight gives up
        and leaves the lease to run out."""
        lease.unanswered = True
        held_back.append(cancel)
        try:
            return await asyncio.wrap_future(start.answer)
        except asyncio.CancelledError:
            raise  # cancelled again
        except BaseException as exc:
            lease.unanswered = False  # the POST ended (failed): released as any failure
            if isinstance(exc, (_LeaseLost, _NoWorker)):
                raise cancel from None  # nothing was sent after all
            raise

    def _redeem_blocking(self, step: _Redeem, runner: asyncio.Runner) -> dict[str, Any]:
        """The sync driver's redemption, on this thread; a thread renews the lease."""
        grants = self.grants.blocking()
        lock = threading.Lock()

        def renew() -> bool:  # the renewing thread: an event loop of its own per call
            with lock:
                return asyncio.run(self._extend(grants, step.lease))

        def extend() -> bool:  # this thread, right before the POST
            with lock:
                return runner.run(self._extend(grants, step.lease))

        done = threading.Event()
        renewing = threading.Thread(
            target=renew_until_sync,
            args=(done, LEASE_SECONDS, renew, self._renewal_failed),
            name="ep-grant-lease",
            daemon=True,
        )
        renewing.start()
        try:
            return self._redeem_under(step, extend, time.monotonic() + HTTP_TIMEOUT)
        finally:
            done.set()
            renewing.join()

    # --- links and revocation ---------------------------------------------------------------
    def consent_link(
        self,
        key: UserKey,
        scopes: Sequence[str],
        *,
        claims: str | None = None,
    ) -> str:
        """The broker start URL for this user and scopes: a sealed ticket, no secret in it.

        A link the broker would refuse (more than 20 scopes, a scope it cannot carry, a ticket
        longer than it reads) is a ``TokenAcquisitionError`` here: the user would otherwise be
        told to ask the agent for a new link, and be given the same one."""
        try:
            check_scopes(tuple(scopes))
        except ValueError:
            raise TokenAcquisitionError(
                f"No consent link can be made for these {len(scopes)} scope(s): the consent "
                "broker signs a user in for 1 to 20 scopes, each at most 256 printable "
                "characters without spaces.",
                source=self.name,
                scopes=scopes,
                fix="ask for fewer scopes in the tool's scopes= (an API's "
                "'api://<app>/.default' covers every scope the user consented to)",
            ) from None
        ticket = LinkTicket(
            key_hash=key.hashed,
            key_kind=key.kind,
            scopes=tuple(scopes),
            exp=time.time() + self.link_lifetime,
            login_hint=key.login_hint,
            domain_hint=key.domain_hint,
            claims=claims,
            tid=key.tid,
            oid=key.oid,
            expected_tid=key.expected_tid,
            expected_oid=key.expected_oid,
        )
        sealed = ticket.seal(self.keyring)
        if len(sealed) > MAX_TICKET_CHARS:
            raise TokenAcquisitionError(
                f"No consent link can be made: its ticket would be {len(sealed)} characters, "
                f"and the consent broker reads at most {MAX_TICKET_CHARS} (the claims challenge "
                f"is {len(claims or '')} characters, {len(scopes)} scope(s)).",
                source=self.name,
                scopes=scopes,
                fix="ask for fewer scopes in the tool's scopes=; a claims challenge this long "
                "comes from the resource (Entra's are a few hundred characters): check what "
                "the MCP server or API sends in its WWW-Authenticate claims",
            )
        return f"{self.broker_url}/start?" + urlencode({"t": sealed})

    def signout_link(self, key: UserKey, *, lifetime: float = 3600.0) -> str:
        """A broker link that asks the user to confirm sign-out (the page POSTs it)."""
        ticket = seal_revoke_ticket(self.keyring, key.hashed, lifetime=lifetime)
        return f"{self.broker_url}/signout?" + urlencode({"t": ticket})

    async def revoke(self, key: UserKey) -> bool:
        """Delete the user's grant (sign-out). Tokens already issued stay valid until expiry
        (a replica's in-memory cache serves its copy until then); the shared token cache
        serves none of them any more (its entries are bound to the grant)."""
        return await self.grants.delete_grant(key.hashed)

    def _consent_required(
        self,
        key: UserKey,
        scopes: Sequence[str],
        why: str,
        *,
        claims: str | None = None,
        aadsts: int | None = None,
        correlation_id: str | None = None,
    ) -> ConsentRequired:
        return ConsentRequired(
            f"The user must sign in through the consent broker: {why}.",
            link=self.consent_link(key, scopes, claims=claims),
            source=self.name,
            scopes=scopes,
            server_label=self.server_label,
            aadsts=aadsts,
            correlation_id=correlation_id,
        )

    def _another_account(self, scopes: Sequence[str]) -> TokenAcquisitionError:
        # The platform user id is trusted as far as the platform's ingress is; a request whose
        # token names another account than the one that consented under that id is either a
        # header that did not come from the ingress or a token of someone else: never served.
        return TokenAcquisitionError(
            "The consent stored for this platform user belongs to another account than the "
            "one the request's token names; the user's token was not used.",
            source=self.name,
            scopes=scopes,
            fix="the platform user id header (x-agent-user-id) must come from the platform's "
            "ingress only, with the same user's token (docs/security.md); if the account "
            "behind this chat user really changed, sign the user out (signout_link) and have "
            "them consent again",
        )

    # --- single flight ----------------------------------------------------------------------
    async def _coalesced(
        self,
        key_hash: str,
        flight: tuple[Any, ...],
        factory: Callable[[], Awaitable[_R]],
    ) -> _R:
        # One refresh per user at a time in this process (a refresh rotates the user's refresh
        # token whatever the scopes); callers for the same scopes share the result. The flight
        # runs as its own task, shielded: a leader cancelled while its refresh is at Entra (a
        # client went away) must not drop the rotated refresh token nor release the lease early
        # and let a waiter spend the same refresh token again.
        loop = asyncio.get_running_loop()
        slot = (id(loop), key_hash)
        for _ in range(_MAX_ATTEMPTS):
            current = self._flights.get(slot)
            if current is None:
                work: asyncio.Future[Any] = asyncio.ensure_future(factory())
                self._flights[slot] = (flight, work)
                work.add_done_callback(functools.partial(self._end_flight, slot))
                result: _R = await asyncio.shield(work)
                return result
            other_flight, other = current
            if other.done():
                # Finished, its clean-up callback not run yet: never spin on it.
                self._end_flight(slot, other)
                if other_flight == flight and not other.cancelled() and not other.exception():
                    done: _R = other.result()
                    return done
                continue
            try:
                shared: _R = await asyncio.shield(other)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if other.cancelled() and not (task is not None and task.cancelling()):
                    continue  # the leader was cancelled, not us: try again
                raise
            except Exception:
                if other_flight == flight:
                    raise  # same request: the leader's error is ours
                continue  # another request's error: run our own flight
            if other_flight == flight:
                return shared
        raise EntraError("too many concurrent token requests for one user", source=self.name)

    def _end_flight(self, slot: tuple[int, str], work: asyncio.Future[Any]) -> None:
        if self._flights.get(slot, (None, None))[1] is work:
            del self._flights[slot]
        if not work.cancelled():
            work.exception()  # retrieved: no "never retrieved" warning when no one waits

    # --- refresh with a cross-replica lease -------------------------------------------------
    # The decisions below do no I/O: each grant-store call, back-off pause and refresh at Entra
    # is a step yielded to the driver (get_token or get_token_async), which sends its answer
    # back or throws its error in.

    def _decide(
        self, key: UserKey, request: TokenRequest
    ) -> Generator[_Step, Any, tuple[TokenResult, str]]:
        """The token for ``request``, and the stamp of the grant it came from
        (``StoredGrant.stamp``: the shared token cache binds the token to it)."""
        scopes = tuple(request.scopes)
        paused = False
        rewaited = False
        budget = _MAX_ATTEMPTS
        attempt = -1
        while attempt + 1 < budget:
            attempt += 1
            # Every rotated grant the store refused, whichever user's: this replica's first
            # call after an outage writes them all back (so does the background write-back:
            # ``_write_back_later``), while the other replicas honour its leases (below), so a
            # live replica never redeems a redeemed refresh token again.
            for hashed, unsaved in list(self._unsaved.items()):
                # Raises while the store is still down. None: the record changed since (our
                # lease ran out and another replica rotated, or the data was lost): theirs wins.
                record, version, lease, redeemed = unsaved
                yield _Grants(
                    "put_grant_under_lease",
                    hashed,
                    record,
                    version=version,
                    lease=lease,
                    redeemed=redeemed,
                )
                self._saved(hashed, unsaved)
            found = yield _Grants("get_grant", key.hashed)
            if found is None:
                raise self._consent_required(
                    key, scopes, "no consent is stored for this user", claims=request.claims
                )
            grant, version = found
            named = _named_account(key, request.caller)
            if named is not None and not _same_account(named, grant):
                raise self._another_account(scopes)
            now = time.time()
            if self._abandoned(grant.lease_owner):
                # Our own lease, from a write whose answer we did not get: nothing runs under
                # it, so waiting for it would only wait for ourselves. Taken over (below, a
                # compare-and-set on the version just read, like any free grant).
                grant = dataclasses.replace(grant, lease_owner=None, lease_until=0.0)
            if self._lease_lives(key.hashed, grant, version, now) or (
                grant.lease_owner and self.grants.failed_within(LEASE_SECONDS)
            ):
                # Another replica is rotating this user's refresh token: wait for its result
                # rather than spend the same refresh token twice. After a store outage its
                # lease may have run out while it could not write the rotated grant: honour
                # the lease until the store has been back for a lease's length.
                yield _Pause(min(0.02 * (2**attempt), 0.5))
                paused = True
                continue
            if paused:
                # The replica we waited for has just got a token for this user: if this request
                # runs under the shared token cache and that replica shared one for it, it is
                # the answer (a second redemption would be a second token POST for the same
                # lifetime; after a replica died mid-refresh, every survivor made one).
                paused = False
                shared = yield _Shared(grant.stamp)
                if isinstance(shared, TokenResult):
                    return shared, grant.stamp
            # Another process's lease, run out: this write takes it over.
            taking_over = grant.lease_owner is not None and not grant.lease_owner.startswith(
                f"{self._replica}:{os.getpid()}:"
            )
            lease = f"{self._replica}:{os.getpid()}:{secrets.token_hex(4)}"
            leased = dataclasses.replace(grant, lease_owner=lease, lease_until=now + LEASE_SECONDS)
            self._active.add(lease)
            try:
                began = time.monotonic()
                try:
                    lease_version = yield _Grants("put_grant", key.hashed, leased, expect=version)
                except BaseException:
                    if len(self._uncertain) < _MAX_UNCERTAIN:
                        self._uncertain.add(lease)
                    raise
                if lease_version is None:
                    continue  # changed under us (rotated or leased elsewhere): read again
                held_for = time.monotonic() - began
                if held_for > LEASE_SECONDS or (taking_over and held_for > _HELD_WRITE):
                    # The store held the write (it paused writes while it answered reads: a
                    # failover, patching): store trouble, as a failure is.
                    self.grants.held()
                    if taking_over:
                        # The lease taken over ran out while writes were held, so its holder,
                        # alive, may hold the rotated grant it could not write: its write-back
                        # replaces this lease (``put_grant_under_lease``). Nothing is redeemed
                        # until the store has been back for a lease's length (the wait above,
                        # re-reading the grant); then this lease, still ours, is taken again.
                        logger.warning(
                            "the grant store held the write taking over another replica's "
                            "refresh lease for %.1f s (Redis paused its writes: a failover, "
                            "patching, CLIENT PAUSE); that replica may hold a rotated grant it "
                            "could not write, so this one waits up to %g s for it before it "
                            "redeems the stored refresh token",
                            held_for,
                            LEASE_SECONDS,
                        )
                        if not rewaited:
                            rewaited = True
                            budget = attempt + 1 + _MAX_ATTEMPTS  # a second wait, as long
                        continue
                held = _Held(key.hashed, leased, lease_version)
                result = yield from self._refresh(key, request, grant, held)
            finally:
                self._active.discard(lease)
            if result is None:
                continue  # the lease was taken over before the redemption: read again
            return result, grant.stamp
        raise EntraError(
            "could not refresh the user's grant: concurrent refreshes kept conflicting",
            source=self.name,
            scopes=scopes,
        )

    def _lease_lives(self, key_hash: str, grant: StoredGrant, version: str, now: float) -> bool:
        """Whether the refresh lease in ``grant`` (read at ``version``) may still be held.

        ``lease_until`` is the holder's wall clock: another host's clock may be minutes off
        ours, and compared with ours its lease looked expired while the holder was still
        redeeming (its clock behind ours, or ours ahead), so two replicas redeemed the same
        refresh token. Another replica's lease is therefore timed here, on this process's
        monotonic clock: it lives for ``LEASE_SECONDS`` from when this instance first read that
        exact lease (owner and record version), whatever ``lease_until`` says. That is safe
        whatever the clocks: a live holder writes a new version at least every third of the
        lease (renewals), and its POST starts right after a write (the extension) and ends
        within ``HTTP_TIMEOUT``, well within a lease; each new version is timed afresh. The
        cost: a dead holder's lease is taken over ``LEASE_SECONDS`` after this replica first
        read it, rather than when it says it expires, so up to ``LEASE_SECONDS`` later (a
        replica that starts after a crash waits that long once for the crashed refresh); a
        holder whose clock is ahead delays nothing. (The store's own clock would need a
        ``TokenStore`` call that ``MemoryStore`` and every other store lack.) A lease of this
        instance's or of a worker forked from it (the same tag) was written with this host's
        clock: its ``lease_until`` is exact and is used as is."""
        owner = grant.lease_owner
        seen_leases = self._seen_leases
        with self._seen_lock:
            if owner is None or owner.startswith(f"{self._replica}:"):
                seen_leases.pop(key_hash, None)
                return owner is not None and grant.lease_until > now
            tick = time.monotonic()
            lease = (owner, version)
            seen = seen_leases.get(key_hash)
            if seen is not None and seen[0] == lease:
                return tick - seen[1] < LEASE_SECONDS
            # First read of this lease, or of a renewal of it (a new version): timed from now.
            seen_leases.pop(key_hash, None)
            while len(seen_leases) >= _MAX_SEEN_LEASES:
                del seen_leases[next(iter(seen_leases))]  # the oldest
            seen_leases[key_hash] = (lease, tick)
            return True

    def _abandoned(self, owner: str | None) -> bool:
        """Whether ``owner`` is a lease this process wrote without getting the answer, and no
        refresh of it holds (one taken over is forgotten)."""
        if owner is None or owner not in self._uncertain or owner in self._active:
            return False
        if not owner.startswith(f"{self._replica}:{os.getpid()}:"):
            return False  # inherited across a fork: the parent's, not this process's
        self._uncertain.discard(owner)
        return True

    def _refresh(
        self, key: UserKey, request: TokenRequest, grant: StoredGrant, held: _Held
    ) -> Generator[_Step, Any, TokenResult | None]:
        """Redeem under ``held`` and store the rotated grant; ``None``: the lease was taken
        over before the POST (nothing redeemed, nothing to release)."""
        scopes = tuple(request.scopes)
        released = dataclasses.replace(grant, lease_owner=None, lease_until=0.0)
        started = time.monotonic()
        sent = time.time()  # expires_in counts from issuance: _base.result_from_msal
        try:
            # A refresh token is redeemed in the tenant that issued it: a verified user of an
            # allow-listed tenant signed in at that tenant's authority (the broker's ``/start``),
            # and is refreshed there, not at the configured tenant (AADSTS50020 for a member of
            # another tenant).
            tenant = self.client.user_tenant(key.kind, grant.tid)
            answer = yield _Redeem(grant.refresh_token, scopes, request.claims, held, tenant)
        except _LeaseLost:
            logger.warning(
                "a refresh lease ran out before its redemption started (the grant store did "
                "not renew it in time) and another replica took it, or the grant was deleted "
                "(signed out); this replica did not redeem the refresh token and reads the "
                "grant again"
            )
            return None
        except BaseException as exc:
            if held.unanswered:
                # Given up on while its refresh token may be at Entra: the lease runs out by
                # itself (as a dead holder's), never released under a redemption in flight.
                raise
            if not isinstance(exc, SourceUnavailable) or not self.grants.failed_since(started):
                yield _Grants("put_grant", key.hashed, released, expect=held.version)
            # else: the grant store itself failed (down, stalled) keeping the lease: a release
            # would cost the caller another timeout or two; the lease expires by itself.
            if isinstance(exc, Exception):
                raise _redemption_failed(exc, source=self.name, scopes=scopes) from None
            raise
        lease_version = held.version  # the last renewal's: what the writes compare with
        if "access_token" not in answer and not answer.get("error"):
            # A success without a token (a gateway's rewrite, an endpoint that is not Entra's):
            # nothing was refused, and the grant stays as it was.
            yield _Grants("put_grant", key.hashed, released, expect=lease_version)
            raise EntraError(
                "Refreshing the user's stored grant failed: the token endpoint answered "
                "without an access token and without an error (nothing was refused; the "
                "grant is kept).",
                source=self.name,
                scopes=scopes,
                failure="no token",
                fix="nothing to configure if it is transient; if it persists, something "
                "between here and Entra rewrites its answers: " + PAGE_FIX,
            )
        if "access_token" not in answer:
            yield from self._on_error(key, request, answer, released, lease_version)
        now = time.time()
        new_rt = answer.get("refresh_token")
        updated = dataclasses.replace(
            released,
            refresh_token=new_rt if isinstance(new_rt, str) and new_rt else grant.refresh_token,
            updated=now,
        )
        lease = held.grant.lease_owner
        # The refresh token redeemed, when Entra rotated it: a record still holding it under
        # another replica's lease is older than ``updated`` (``put_grant_under_lease``).
        redeemed = grant.refresh_token if updated.refresh_token != grant.refresh_token else None
        try:
            written = yield _Grants(
                "put_grant_under_lease",
                key.hashed,
                updated,
                version=lease_version,
                lease=lease,
                redeemed=redeemed,
            )
        except Exception as exc:
            # Entra has rotated the refresh token: the token it issued is good, so serve it, and
            # keep the successor until the store takes it (never redeem the old one again).
            with self._unsaved_lock:
                self._unsaved[key.hashed] = (updated, lease_version, lease, redeemed)
            logger.warning(
                "the grant store failed after a refresh (%s); the rotated grant is kept in "
                "memory and written back as soon as the store takes it (retried in the "
                "background)",
                type(exc).__name__,
            )
            yield _KeepWriting()
        else:
            if written is None:
                current = yield _Grants("get_grant", key.hashed)
                if current is None:
                    # The user signed out (or the grant was otherwise deleted) while this
                    # refresh was at Entra. Its token is dropped, also for the request that
                    # started it before the sign-out: it was issued after the sign-out, and a
                    # token returned here is cached by the chain, in this replica and in the
                    # shared cache, and served to every replica for its whole life. Sign-out
                    # stops new tokens (docs/consent.md); the caller gets the ConsentRequired
                    # any later request gets. The rotated refresh token is not stored either.
                    # (Deleted by a sign-out, or lost by the store: flushed, evicted, a restart
                    # without persistence. Nothing here tells which: both are said.)
                    logger.warning(
                        "the user's consent grant was deleted while its refresh was at Entra "
                        "(the user signed out, or the store lost it: flushed, evicted, "
                        "restarted without persistence); the token Entra issued is dropped, "
                        "neither served nor cached, and the user must consent again"
                    )
                    raise self._consent_required(
                        key,
                        scopes,
                        "the stored consent was deleted while the user's token was being "
                        "refreshed (a sign-out, or the store lost it)",
                        claims=request.claims,
                    )
                # Our lease expired and another replica took over; its refresh token is newer.
                logger.warning("consent grant changed during a refresh; keeping the newer one")
        result = result_from_msal(
            answer, kind=IdentityKind.USER, source=self.name, scopes=scopes, started=sent
        )
        logger.debug("delegated token %s for a stored grant", fingerprint(result.token))
        return result

    def _on_error(
        self,
        key: UserKey,
        request: TokenRequest,
        answer: dict[str, Any],
        released: StoredGrant,
        lease_version: str,
    ) -> Generator[_Step, Any, NoReturn]:
        scopes = tuple(request.scopes)
        code = first_code(answer)  # bounded: a 400-digit number is no code
        error = answer.get("error")
        correlation_id = answer.get("correlation_id")
        cid = correlation_id if isinstance(correlation_id, str) else None
        if is_consent_required(answer):
            yield _Grants("put_grant", key.hashed, released, expect=lease_version)
            raise self._consent_required(
                key,
                scopes,
                "the stored grant does not cover these scopes",
                aadsts=code,
                correlation_id=cid,
            )
        if error == "interaction_required" or code in INTERACTION_CODES:
            # MFA or conditional access (with ``invalid_grant`` beside the code too): the grant
            # stays good, the user signs in again with the claims; never deleted for this.
            yield _Grants("put_grant", key.hashed, released, expect=lease_version)
            claims = answer.get("claims")
            raise self._consent_required(
                key,
                scopes,
                "Entra needs the user to sign in again (conditional access)",
                claims=claims if isinstance(claims, str) else request.claims,
                aadsts=code,
                correlation_id=cid,
            )
        if code in _ACCOUNT_BLOCKED_CODES:
            # Not the grant's fault: a consent link would send the user to a sign-in that
            # fails the same way, and a deleted grant would need a new consent afterwards.
            yield _Grants("put_grant", key.hashed, released, expect=lease_version)
            raise error_from_entra(answer, source=self.name, scopes=scopes)
        # consent_required and interaction_required were handled above: any other
        # invalid_grant (the codes in _DEAD_GRANT_CODES, an unknown refresh token...) means
        # the refresh token is unusable and only the user can make a new one.
        if error == "invalid_grant" or code in _DEAD_GRANT_CODES:
            yield _Grants("delete_grant", key.hashed, expect=lease_version)
            raise self._consent_required(
                key,
                scopes,
                "the stored grant was revoked or expired",
                aadsts=code,
                correlation_id=cid,
            )
        yield _Grants("put_grant", key.hashed, released, expect=lease_version)
        err: TokenAcquisitionError = error_from_entra(answer, source=self.name, scopes=scopes)
        raise err
