"""``RedisStore``: the shared ``TokenStore`` for N replicas (redis-py asyncio).

It stays a dumb backend, as ``TokenStore`` asks: the keys it gets are already hashed and the
values already sealed (AES-GCM) by ``GrantStore`` / ``SharedTokenCache``, so a scan of the
keyspace shows no token, refresh token, user id, tenant id or UPN. What it adds:

* **TTLs** on every key (``PX``) but platform users' bindings, so Redis drops what expired,
  and ``volatile-ttl`` eviction picks short-lived records first if memory runs out. A binding
  has no TTL, so that no ``volatile-*`` policy evicts it (its loss would let a forwarded consent
  link bind the chat user to another account); under an ``allkeys-*`` policy, which can evict
  it, the store logs a warning once (``INFO memory``).
* **Compare-and-set** in one server-side script: a value is stored as ``<version>.<sealed>``
  and ``put(expect=version)`` / ``delete(expect=version)`` compare and write atomically. That is
  what keeps a replica from overwriting a newer refresh token with an older one and what makes
  the refresh lease exclusive: the version is the fencing token.
* **Typed failures**: any Redis error (down, timeout, ``maxmemory``, wrong password) becomes a
  ``SourceUnavailable`` that says which and how to fix it; never a crash and never the app
  identity. redis-py reconnects by itself on the next command.

The shared token cache (L2 under each replica's in-process ``TokenCache``) is
``SharedTokenCache`` over this store; ``shared_token_cache()`` builds it from the environment,
with ``RedisStore.sync()`` (the blocking twin) for the sync API. docs/scale-out.md has the
deployment, the keys and TTLs, and the failure behaviour.

>>> store = RedisStore.from_url("rediss://:password@cache.contoso.com:6380/0")
>>> store = RedisStore.from_env()   # ENTRA_PASSTHROUGH_REDIS_URL, ..._REDIS_AUTH=entra
>>> chain = TokenChain([OnBehalfOf.from_env()], cache=shared_token_cache())
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import re
import secrets
import ssl
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import anyio

from . import _env
from ._checks import seconds, whole_number
from ._errors import ConfigurationError, SourceUnavailable, require_extra, safe_text
from ._http import MAX_SECONDS
from ._l2 import SharedTokenCache
from ._store import ANY, STORE_REFUSED, AnyVersion, Entry

if TYPE_CHECKING:
    from ._cache import TokenCache

try:
    import redis as redis_sync
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        AuthorizationError,
        ClusterDownError,
        ConnectionError,
        MovedError,
        NoPermissionError,
        OutOfMemoryError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TimeoutError,
        TryAgainError,
    )
    from redis.retry import Retry as SyncRetry
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    raise require_extra("redis", "redis", _exc) from _exc
try:  # redis-py's token errors (Entra ID auth; redis-entraid raises them), redis >= 5.3
    from redis.auth.err import InvalidTokenSchemaErr, RequestTokenErr, TokenRenewalErr

    _TOKEN_ERRORS: tuple[type[Exception], ...] = (
        RequestTokenErr,
        InvalidTokenSchemaErr,
        TokenRenewalErr,
    )
except ImportError:  # pragma: no cover - an older redis-py
    _TOKEN_ERRORS = ()
#: What a store call turns into the typed ``SourceUnavailable`` (a cluster client's own errors,
#: ``RedisClusterException``, are not ``RedisError``s).
_STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, *_TOKEN_ERRORS)
_PING_ERRORS: tuple[type[Exception], ...] = (*_STORE_ERRORS, ConfigurationError)

logger = logging.getLogger("entra_passthrough.redis")

#: The clients a store runs on: one Redis server, or a Redis Cluster (``from_url(cluster=True)``).
_AsyncClient = redis_asyncio.Redis | redis_asyncio.RedisCluster
_SyncClient = redis_sync.Redis | redis_sync.RedisCluster

__all__ = [
    "RedisStore",
    "SharedTokenCache",
    "SyncRedisStore",
    "entra_credential_provider",
    "shared_token_cache",
]

#: How a refusal names the Redis URL: the keyword and the variable it comes from.
_URL = "the Redis URL (url, ENTRA_PASSTHROUGH_REDIS_URL)"

#: Scope of Microsoft Entra tokens for Azure Cache for Redis / Azure Managed Redis.
REDIS_SCOPE: Final = "https://redis.azure.com/.default"

_VERSION_CHARS = 16  # secrets.token_hex(8)
#: How long ``aclose`` waits for another running event loop to close its connections.
_CLOSE_WAIT = 5.0

# A record is ``<16 hex version>.<sealed>`` in a string key. Anything else at one of our names
# (another program's value, a list, a truncated write) is malformed: a miss for ``get``, and
# absent for a write-if-absent, which overwrites it (as good as absent, and never a reason to
# turn the shared store off). ``_RECORD_LUA`` is the Lua pattern, ``_entry`` its Python twin.
_RECORD_LUA: Final = "^" + "%x" * _VERSION_CHARS + "%."
# redis-py re-sends a command whose reply was lost or late (``retry_on_error``): Redis ran the
# first one, so the retry finds our own write and, unless it recognises its version, answers
# "not written" and leaves this replica waiting on its own lease. The new version is random
# and made before the first send, so finding it means the write was ours.
# ``pcall``: a GET of a key of another type (a list...) answers WRONGTYPE, which is not a
# record of ours; any other error is raised as is. Only GET, SET and DEL: what the documented
# minimal ACL allows (docs/scale-out.md).
_GET_RECORD: Final = """
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' and cur.err then
  if string.sub(cur.err, 1, 9) ~= 'WRONGTYPE' then return cur end
  cur = 'wrong type'
end
"""
# ttl in ms '0': no expiry (a binding). A SET without PX also drops a TTL the key had, so
# rewriting a binding an earlier version wrote with one makes it persistent.
_SET_RECORD: Final = """
local function set_record(value, ttl)
  if ttl == '0' then return redis.call('SET', KEYS[1], value) end
  return redis.call('SET', KEYS[1], value, 'PX', ttl)
end
"""
# KEYS[1]; ARGV: new version, sealed value, ttl in ms. Write only if absent (or malformed:
# SET replaces a key of any type).
_PUT_ABSENT: Final = (
    _SET_RECORD
    + _GET_RECORD
    + f"""
if cur then
  if string.sub(cur, 1, 17) == ARGV[1] .. '.' then return 1 end
  if string.find(cur, '{_RECORD_LUA}') then return false end
end
set_record(ARGV[1] .. '.' .. ARGV[2], ARGV[3])
return 1
"""
)
# KEYS[1]; ARGV: expected version, new version, sealed value, ttl in ms.
# Compare-and-set: write only if the current version is the expected one (or is already the
# new one: this very write, re-sent).
_CAS_PUT: Final = (
    _SET_RECORD
    + _GET_RECORD
    + """
if not cur then return false end
cur = string.sub(cur, 1, 17)
if cur == ARGV[2] .. '.' then return 1 end
if cur ~= ARGV[1] .. '.' then return false end
set_record(ARGV[2] .. '.' .. ARGV[3], ARGV[4])
return 1
"""
)
# KEYS[1]; ARGV: expected version. Compare-and-delete.
_CAS_DELETE: Final = (
    _GET_RECORD
    + """
if not cur or string.sub(cur, 1, 17) ~= ARGV[1] .. '.' then return 0 end
return redis.call('DEL', KEYS[1])
"""
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
#: The env variable that names a private CA (what the TLS errors point to).
_CA_FILE_VAR: Final = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"


def _describe(
    exc: BaseException,
    acl_extra: str = "",
    *,
    cluster: bool = False,
    namespace: str = "",
    write: bool = False,
    tls: bool | None = None,
    database: int = 0,
) -> tuple[str, str]:
    """(what happened, what to do) for a Redis failure; never echoes the URL or a password.
    ``acl_extra``: the commands the store's URL options need besides (``_acl_extra``);
    ``cluster``: the store uses a cluster client (``from_url(cluster=True)``); ``namespace``:
    the store's key prefix; ``write``: the call writes (put, delete); ``tls``: the URL is
    ``rediss://`` (``None``: not known); ``database``: the URL's database index."""
    if database and _database_refused(exc):
        # redis-py sends SELECT on each new connection: a server with fewer databases (16 by
        # default; 1 on Azure Managed Redis) refuses it, and so every call.
        return (
            f"Redis refused the database the URL names ({database}): the server has no "
            "database with that index (SELECT failed when connecting)",
            _DATABASE_FIX,
        )
    if isinstance(exc, RedisClusterException):
        return _describe_cluster(exc, acl_extra, namespace=namespace, write=write, tls=tls)
    word = None if cluster else _cluster_reply(exc)
    if word is not None:
        # MOVED / ASK / CLUSTERDOWN / TRYAGAIN: only a cluster node answers these, and a
        # single-node client cannot follow them (each user's keys hash to a slot: some work,
        # the others fail).
        return (
            f"Redis is a cluster (it answered {word}), which the store's single-node client "
            "cannot follow",
            _CLUSTER_FIX,
        )
    if isinstance(exc, ClusterDownError):
        return (
            "the Redis Cluster is down or does not serve this key's slot (CLUSTERDOWN)",
            "check that every node is up and every slot is served (CLUSTER INFO: "
            "cluster_state:ok); the client reads the slot map again on the next call.",
        )
    if isinstance(exc, ReadOnlyError) or (isinstance(exc, ResponseError) and _read_only(exc)):
        return (
            "the Redis endpoint is a read-only replica (READONLY) and refused the write",
            "point the URL at the primary's read-write endpoint (Azure: the cache's host name, "
            "not a replica's or a geo-secondary's): every replica writes leases and grants.",
        )
    if isinstance(exc, (*_TOKEN_ERRORS, _EntraTokenError)):
        return (
            "Microsoft Entra ID gave no token to sign in to Redis",
            f"check that the identity can get a token for {REDIS_SCOPE} (a managed identity "
            "assigned to the app, or az login locally) and that the cache has Microsoft Entra "
            "authentication enabled; or drop ENTRA_PASSTHROUGH_REDIS_AUTH=entra.",
        )
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return (
            "Redis refused our credentials",
            "check the user/password in the URL (ACL) or, with Entra auth, that the identity "
            "has a Redis data access policy assignment.",
        )
    if isinstance(exc, NoPermissionError) or (isinstance(exc, ResponseError) and _acl_refused(exc)):
        return _acl_refusal(exc, acl_extra, namespace=namespace, write=write)
    if isinstance(exc, OutOfMemoryError):
        return (
            "Redis is full (maxmemory) and refused the write",
            "raise maxmemory or use maxmemory-policy volatile-ttl (every key we write but "
            "platform users' bindings has a TTL).",
        )
    if isinstance(exc, TimeoutError) and tls and _in_chain(exc, _CONNECT_TIMEOUT):
        # A plaintext Redis port reads the TLS ClientHello as the start of an inline command
        # and waits for its end: no answer until the connect timeout, on both tries.
        if _in_chain(exc, ("handshake operation timed out",)):
            what = "Redis took the connection but did not answer the TLS handshake in time"
        else:
            what = "Redis did not finish connecting in time, TLS handshake included"
        return (
            f"{what}; the URL asks for TLS (rediss://), and a plaintext Redis port never "
            "answers a TLS handshake",
            f"use the server's TLS port ({_TLS_PORTS}), or redis:// for a Redis without TLS; "
            "if the port is right, check the host, the network and the server's load.",
        )
    if isinstance(exc, TimeoutError):
        return ("Redis did not answer in time", "check the Redis server's load and network.")
    if isinstance(exc, ConnectionError) and _certificate_refused(exc):
        return (
            "Redis' TLS certificate did not pass certificate verification",
            f"trust the CA that issued the Redis server's certificate with ca_file "
            f"({_CA_FILE_VAR}, a PEM file), and connect to a host name the certificate names.",
        )
    if isinstance(exc, ConnectionError) and tls and _not_tls(exc):
        return (
            "the server at the URL's port does not speak TLS (its answer to the TLS handshake "
            "was not TLS), and the URL asks for TLS (rediss://)",
            f"use the server's TLS port ({_TLS_PORTS}), or redis:// for a Redis without TLS.",
        )
    if isinstance(exc, ConnectionError) and tls is False and _closed_at_once(exc):
        # redis-py sends a command that failed so on a fresh connection once more: a server
        # that resets every fresh connection at its first command is most likely a TLS port.
        return (
            "Redis closed the connection at the first command without answering, as a TLS "
            "port does to a client without TLS; the URL is redis:// (no TLS)",
            f"use rediss:// for a TLS port ({_TLS_PORTS}); otherwise check the server's log "
            "for why it closes connections.",
        )
    if isinstance(exc, ConnectionError):
        return (
            "Redis cannot be reached",
            "check that the Redis server is up and its host, port and TLS setting "
            "(rediss://) match the URL; the client reconnects on the next call.",
        )
    return (f"Redis failed ({type(exc).__name__})", "check the Redis server's log.")


#: What to do about a cluster endpoint reached with a single-node client.
_CLUSTER_FIX: Final = (
    "build the store with RedisStore.from_url(url, cluster=True), or set "
    "ENTRA_PASSTHROUGH_REDIS_CLUSTER=true for RedisStore.from_env (Azure Managed Redis with the "
    "OSS clustering policy, a Redis Cluster), or use a cache with the Enterprise or "
    "Non-clustered clustering policy, which any client can use."
)


def _describe_cluster(
    exc: RedisClusterException,
    acl_extra: str,
    *,
    namespace: str = "",
    write: bool = False,
    tls: bool | None = None,
) -> tuple[str, str]:
    """A cluster client's own error. It wraps what went wrong on the node it asked (an ACL that
    refuses CLUSTER SLOTS, a wrong password, a node down, a certificate) in a text that may
    blame something else ("Cluster mode is not enabled"): the cause is described when there
    is one."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(8):  # bounded walk of the cause chain
        if seen is None:
            break
        if isinstance(seen, (RedisError, *_TOKEN_ERRORS)) and not _not_a_cluster(seen):
            return _describe(
                seen, acl_extra, cluster=True, namespace=namespace, write=write, tls=tls
            )
        seen = seen.__cause__ or seen.__context__
    if _not_a_cluster(exc) or _not_a_cluster(exc.__cause__ or exc.__context__):
        return (
            "the store is set up for a Redis Cluster (cluster=True) but Redis at the URL is "
            "not one",
            "drop cluster=True (ENTRA_PASSTHROUGH_REDIS_CLUSTER) for a single Redis server "
            "(Azure Cache for Redis without "
            "clustering, or an Azure Managed Redis cache with the Enterprise or Non-clustered "
            "clustering policy).",
        )
    return (
        f"the Redis Cluster failed ({type(exc).__name__})",
        "check that its nodes are up and every slot is served (CLUSTER INFO: cluster_state:ok); "
        "the client reads the slot map again on the next call.",
    )


def _cluster_reply(exc: BaseException) -> str | None:
    """The cluster redirection or state a node answered (redis-py 6+ raises ``MovedError``
    and its kin; 5.x a plain ``ResponseError`` with the reply's text), as the message says it;
    ``None`` for anything else."""
    for kind, reply in _CLUSTER_ERRORS:
        if isinstance(exc, kind):
            return _CLUSTER_REPLIES[reply]
    if type(exc) is ResponseError:
        return _CLUSTER_REPLIES.get(str(exc).split(" ", 1)[0])
    return None


#: A cluster node's redirection or state replies, as the messages say them.
_CLUSTER_REPLIES: Final = {
    "MOVED": "MOVED: this key is served by another node",
    "ASK": "ASK: this key is moving to another node",
    "TRYAGAIN": "TRYAGAIN",
    "CLUSTERDOWN": "CLUSTERDOWN",
}
_CLUSTER_ERRORS: Final = (
    (MovedError, "MOVED"),
    (AskError, "ASK"),
    (TryAgainError, "TRYAGAIN"),
    (ClusterDownError, "CLUSTERDOWN"),
)


def _not_a_cluster(exc: BaseException | None) -> bool:
    """Redis' answer to CLUSTER SLOTS on a server that is not a cluster node ("ERR This
    instance has cluster support disabled"), and redis-py's "Cluster mode is not enabled" when
    it is the whole story (not when an ACL refusal or a wrong password is its cause)."""
    if exc is None:
        return False
    text = str(exc).lower()
    if type(exc) is ResponseError:
        return "cluster support disabled" in text
    return (
        isinstance(exc, RedisClusterException)
        and "cluster mode is not enabled" in text
        and (exc.__cause__ is None or _not_a_cluster(exc.__cause__))
    )


def _read_only(exc: ResponseError) -> bool:
    """A write refused by a read-only replica, also from inside one of our scripts (older
    redis-py versions or servers report it as a plain script error)."""
    text = str(exc)
    return text.startswith("READONLY") or "-READONLY" in text or "read only replica" in text


class RedisStore:
    """A ``TokenStore`` in Redis, shared by every replica and the consent broker.

    Build it from a URL (``redis://`` or ``rediss://`` for TLS, ACL ``user:password@``) or pass
    a ``redis.asyncio.Redis`` you configured yourself (Entra ID auth: see
    ``entra_credential_provider``). ``namespace`` prefixes every key, so several deployments
    can share one Redis database.

    >>> store = RedisStore.from_url(os.environ["ENTRA_PASSTHROUGH_REDIS_URL"])
    >>> source = DelegatedConsent(..., store=store, keyring=Keyring.from_env())
    """

    def __init__(
        self,
        client: _AsyncClient,
        *,
        namespace: str = "",
        sync_client: Callable[[], _SyncClient] | None = None,
        client_factory: Callable[[], _AsyncClient] | None = None,
    ) -> None:
        #: The first event loop's client (redis-py asyncio connections belong to one loop).
        self.client = client
        self.namespace = namespace
        self._sync_client = sync_client
        self._sync: SyncRedisStore | None = None
        # One client per event loop that uses the store (``asyncio.run`` twice, a broker on a
        # thread of its own...): ``client`` goes to the first, ``client_factory`` makes the
        # others. Each client is closed when its loop shuts down (see ``_close_at_shutdown``);
        # closed loops are dropped when another loop arrives.
        self._factory = client_factory
        self._unclaimed: _Bound | None = _Bound(client)
        self._loops: dict[asyncio.AbstractEventLoop, _Bound] = {}
        self._lock = threading.Lock()
        self._warned = False
        self._closed = False  # a store built from a client, closed by aclose(): for good
        self._acl_extra = _acl_extra(client)
        self._cluster = _is_cluster(client)
        self._tls = _where(client).startswith("rediss:")
        self._database = _database(client)
        self._policy = _PolicyCheck()

    def __repr__(self) -> str:
        return f"RedisStore({_where(self.client)})"

    def _failure(self, exc: BaseException, *, write: bool = False) -> SourceUnavailable:
        return _unavailable(
            exc,
            self._acl_extra,
            cluster=self._cluster,
            namespace=self.namespace,
            write=write,
            tls=self._tls,
            database=self._database,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "",
        ca_file: str | None = None,
        credential_provider: Any = None,
        timeout: float = 2.0,
        max_connections: int = 64,
        allow_plaintext: bool = False,
        cluster: bool = False,
    ) -> RedisStore:
        """A store for ``url``. ``ca_file`` trusts a private CA for ``rediss://``;
        ``credential_provider`` (redis-py ``CredentialProvider``) supplies user/password
        per connection, e.g. Entra tokens. ``timeout`` bounds every command and connect, and a
        failed one is retried once on a fresh connection, so a command that gets no answer costs
        at most about twice that before the typed error (a call that misses every cache sends
        about 14 commands one after another: docs/scale-out.md, A slow Redis). ``redis://``
        (no TLS) is
        refused for a host other than loopback unless ``allow_plaintext``; a URL option that
        turns certificate or host name checks off is always refused. ``cluster=True``: Redis
        is a Redis Cluster (Azure Managed Redis with its default OSS clustering policy, Azure
        Cache for Redis with clustering): the URL names one node, the client finds the others
        and sends each key to the node that serves its slot (every store call is on one key).
        ``max_connections`` is then per node, and the URL's database must be 0."""
        _check_url(url, allow_plaintext=allow_plaintext)
        if cluster:
            _check_cluster_url(url)
        _check_database(url)
        # Checked here: redis-py takes a NaN timeout or 0 connections, and they fail only at
        # the first command, on every request.
        timeout = seconds(timeout, what="timeout", low=0, high=MAX_SECONDS, above_low=True)
        whole_number(
            max_connections,
            what="max_connections",
            low=1,
            fix="pass max_connections= the most connections per event loop, at least 1 "
            "(default 64; more calls than that wait for a free one).",
        )
        parts = urlsplit(url)
        if credential_provider is not None and parts.password:
            raise ConfigurationError(
                f"{_URL} has a password and a credential_provider is given.",
                fix="drop the password from the URL when Entra ID auth supplies it.",
            )
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 30,
            "max_connections": max_connections,
            # Reconnect by itself: one quick retry on a dropped connection, then fail typed.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
            "retry_on_error": [ConnectionError, TimeoutError],
        }
        if parts.scheme == "rediss":
            # Both spelled out, as strings: redis-py 5.x checks no host name unless told
            # (``ssl_check_hostname`` defaulted to False before 6.0), and its asyncio TLS
            # context takes ``ssl_cert_reqs`` only as a string (an ``ssl.VerifyMode`` left it
            # unset: no connection at all).
            options["ssl_cert_reqs"] = "required"
            options["ssl_check_hostname"] = True
            if ca_file:
                _check_ca_file(ca_file)
                options["ssl_ca_certs"] = ca_file
        elif ca_file:
            # redis:// has no TLS: the CA file would be ignored, and whoever set it most likely
            # believes the connection is encrypted (a missing path was accepted silently too).
            raise ConfigurationError(
                f"a Redis CA file is set (ca_file, {_CA_FILE_VAR}) but {_URL} is redis://: "
                "TLS is off, so it would not be used.",
                fix=f"use rediss:// for TLS with that CA, or unset {_CA_FILE_VAR} for a "
                "plaintext connection.",
            )
        if credential_provider is not None:
            options["credential_provider"] = credential_provider

        def make_client() -> _AsyncClient:
            if cluster:
                # No blocking pool in redis-py's asyncio cluster client (past max_connections
                # per node it fails): ``_Bound`` makes a burst wait for a turn instead.
                return redis_asyncio.RedisCluster.from_url(url, **options)
            # A blocking pool: a burst of more concurrent calls than connections waits (up to
            # ``timeout``) for a free one instead of failing with "Too many connections".
            pool = redis_asyncio.BlockingConnectionPool.from_url(url, timeout=timeout, **options)
            client = redis_asyncio.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True  # aclose() closes the pool: it is ours
            return client

        def sync_client() -> _SyncClient:
            sync_options = {**options, "retry": SyncRetry(ExponentialBackoff(0.2, 0.02), 1)}
            if cluster:
                # It reads the slot map when built: ``SyncRedisStore`` builds it at its first
                # call, so that a Redis that is down then fails that call, typed.
                del sync_options["retry_on_error"]  # not a cluster client's keyword
                return redis_sync.RedisCluster.from_url(
                    url,
                    connection_pool_class=redis_sync.BlockingConnectionPool,
                    timeout=timeout,
                    **sync_options,
                )
            sync_pool = redis_sync.BlockingConnectionPool.from_url(
                url, timeout=timeout, **sync_options
            )
            return redis_sync.Redis(connection_pool=sync_pool)

        client = None
        with contextlib.suppress(ValueError):
            client = make_client()
        if client is None:
            # redis-py's URL parser: a query option it cannot read (``db=x``,
            # ``ssl_min_version=TLSv1``). Its text is not repeated (it may quote the URL), nor
            # kept as this error's context (raised outside the handler).
            raise ConfigurationError(
                f"{_URL} has a query option redis-py "
                "cannot read (a number that is not "
                "a number, a TLS version it does not know).",
                fix="fix or remove the URL's query options (after '?'); timeouts are set with "
                "timeout=..., TLS trust with ca_file (ENTRA_PASSTHROUGH_REDIS_CA_FILE).",
            )
        return cls(
            client,
            namespace=namespace,
            sync_client=sync_client,
            client_factory=make_client,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, cluster: bool | None = None
    ) -> RedisStore:
        """``ENTRA_PASSTHROUGH_REDIS_URL`` (required), ``ENTRA_PASSTHROUGH_REDIS_AUTH``
        (``password`` (default, from the URL) or ``entra``), ``ENTRA_PASSTHROUGH_REDIS_CA_FILE``,
        ``ENTRA_PASSTHROUGH_REDIS_NAMESPACE``, ``ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT``,
        ``ENTRA_PASSTHROUGH_REDIS_CLUSTER`` (``true`` for a Redis Cluster, ``from_url``'s
        ``cluster``; the ``cluster`` argument, when given, wins)."""
        env = _env.environ_or(environ)
        if cluster is None:
            cluster = _env.get_bool(env, "ENTRA_PASSTHROUGH_REDIS_CLUSTER")
        url = _env.require(env, "ENTRA_PASSTHROUGH_REDIS_URL", what="the shared Redis store")
        auth = (_env.get(env, "ENTRA_PASSTHROUGH_REDIS_AUTH") or "password").lower()
        if auth not in ("password", "entra"):
            raise ConfigurationError(
                # Not the value: it may be a secret pasted into the wrong variable.
                "ENTRA_PASSTHROUGH_REDIS_AUTH is not password or entra.",
                fix="set it to entra for Azure Cache for Redis with Microsoft Entra auth, or "
                "to password (the default: the password from the URL).",
            )
        provider = entra_credential_provider() if auth == "entra" else None
        return cls.from_url(
            url,
            namespace=_env.get(env, "ENTRA_PASSTHROUGH_REDIS_NAMESPACE") or "",
            ca_file=_env.get(env, "ENTRA_PASSTHROUGH_REDIS_CA_FILE"),
            credential_provider=provider,
            allow_plaintext=_env.get_bool(env, "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT"),
            cluster=cluster,
        )

    async def _bound(self) -> _Bound:
        """This event loop's client and scripts (a new client in place of one that broke)."""
        loop = asyncio.get_running_loop()
        bound = self._loops.get(loop)
        if bound is not None and not bound.broken:
            return bound
        stale: _Bound | None = None
        with self._lock:
            bound = self._loops.get(loop)
            if bound is not None and (not bound.broken or self._factory is None):
                return bound
            if bound is not None:
                stale = self._loops.pop(loop)
            for old in [lp for lp in self._loops if lp.is_closed()]:
                self._abandon(self._loops.pop(old))
            if self._unclaimed is not None:
                bound, self._unclaimed = self._unclaimed, None
            elif self._factory is not None:
                bound = _Bound(self._factory())
            elif self._closed:
                raise ConfigurationError(
                    "this RedisStore was built from a redis client and has been closed "
                    "(aclose()); it cannot open new connections.",
                    fix="build it with RedisStore.from_url (a closed store opens new connections "
                    "on its next use), or build a new RedisStore after closing this one.",
                )
            else:
                raise ConfigurationError(
                    "this RedisStore was built from a redis client, which serves one event "
                    "loop, and it is used on another.",
                    fix="build it with RedisStore.from_url (it opens connections per event "
                    "loop), or make one RedisStore per event loop.",
                )
            self._loops[loop] = bound
            bound.loop = loop
        if stale is not None:
            await stale.aclose()  # (calls still in flight on it close it again as they end)
        # Started here (it runs to its ``yield`` without suspending), so the loop tracks it.
        closer = self._close_at_shutdown(loop, bound)
        await anext(closer)
        bound.closer = closer
        return bound

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, bound: _Bound
    ) -> AsyncGenerator[None, None]:
        """Close ``bound``'s connections when ``loop`` shuts down. A loop's async generators
        are closed (``shutdown_asyncgens``) before the loop is, by ``asyncio.run``,
        ``asyncio.Runner``, anyio, uvicorn and pytest-asyncio; afterwards the connections
        could not be closed any more (they belong to the closed loop): without this, every
        short-lived loop (``asyncio.run`` per request) left its connections open in Redis
        until the garbage collector found them, with a ResourceWarning each."""
        try:
            yield
        finally:
            bound.closer = None  # it is running: ``bound.aclose`` must not close it again
            with self._lock:
                if self._loops.get(loop) is bound:
                    del self._loops[loop]
            await bound.aclose()

    def _abandon(self, bound: _Bound) -> None:
        """A closed loop's client that was not closed with it: the loop was closed by hand
        without ``shutdown_asyncgens``. Its connections belong to the closed loop, so the
        garbage collector closes them; say how to avoid it (once)."""
        if bound.closed or self._warned:
            return
        self._warned = True
        logger.warning(
            "a RedisStore was used on an event loop that was closed without closing its async "
            "generators, so its Redis connections could not be closed with it and wait for the "
            "garbage collector. Run the loop with asyncio.run or asyncio.Runner, call "
            "loop.run_until_complete(loop.shutdown_asyncgens()) before loop.close(), or "
            "await store.aclose() on that loop before closing it."
        )

    async def aclose(self) -> None:
        """Close every connection of the store: this event loop's, those of other loops that
        are running (a broker on a thread of its own: closed on that loop, waited for up to
        5 s), and the blocking twin's. A later call opens new ones (but a store built from a
        client is closed for good). A loop that is open but not running closes its
        connections when it shuts down."""
        loop = asyncio.get_running_loop()
        with self._lock:
            bounds = list(self._loops.items())
            self._loops.clear()
            unclaimed, self._unclaimed = self._unclaimed, None
            self._closed = self._factory is None
        mine: list[_Bound] = [] if unclaimed is None else [unclaimed]
        others: list[asyncio.Future[None]] = []
        for owner, bound in bounds:
            if owner is loop:
                mine.append(bound)
            elif owner.is_closed():
                self._abandon(bound)
            elif owner.is_running():
                with contextlib.suppress(RuntimeError):  # it closed meanwhile
                    others.append(
                        asyncio.wrap_future(asyncio.run_coroutine_threadsafe(bound.aclose(), owner))
                    )
        for bound in mine:
            await bound.aclose()
        if others:
            await asyncio.wait(others, timeout=_CLOSE_WAIT)
        if self._sync is not None:
            self._sync.close()

    def sync(self) -> SyncRedisStore:
        """The same store with blocking calls (its own connections), for the sync API:
        ``SharedTokenCache(store, keyring, sync_store=store.sync())``."""
        if self._sync is None:
            if self._sync_client is None:
                raise ConfigurationError(
                    "this RedisStore was built from a client, so it has no blocking twin.",
                    fix="build it with RedisStore.from_url or pass sync_client=...",
                )
            # Built at its first call (a cluster client connects when built), and again in
            # place of a client that broke for good (``SyncRedisStore._broke``).
            self._sync = SyncRedisStore(
                connect=self._sync_client, namespace=self.namespace, cluster=self._cluster
            )
            self._sync._policy = self._policy  # one check (and warning) for both
            self._sync._tls = self._tls  # (its client is built at its first call)
            self._sync._database = self._database
        return self._sync

    # -- TokenStore ---------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        bound = await self._bound()
        try:
            async with bound.turn():
                raw = await bound.client.get(self.namespace + key)
        except ResponseError as exc:
            if _wrong_type(exc):
                return None  # not a record of ours: a miss (a write replaces it)
            raise self._failure(exc) from None
        except _STORE_ERRORS as exc:
            raise self._failure(exc) from None
        await self._check_policy(bound)
        return _entry(raw)

    async def put(
        self, key: str, value: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        ttl_ms = _ttl_ms(ttl)
        bound = await self._bound()
        version = secrets.token_hex(_VERSION_CHARS // 2)
        name = self.namespace + key
        try:
            async with bound.turn():
                if isinstance(expect, AnyVersion):
                    record = version.encode() + b"." + value
                    done = await bound.client.set(name, record, px=ttl_ms or None)
                elif expect is None:
                    done = await bound.put_absent(keys=[name], args=[version, value, ttl_ms])
                else:
                    done = await bound.cas_put(keys=[name], args=[expect, version, value, ttl_ms])
        except _STORE_ERRORS as exc:
            raise self._failure(exc, write=True) from None
        await self._check_policy(bound)
        return version if done else None

    async def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool:
        bound = await self._bound()
        name = self.namespace + key
        try:
            async with bound.turn():
                if isinstance(expect, AnyVersion):
                    done = bool(await bound.client.delete(name))
                else:
                    done = bool(await bound.cas_delete(keys=[name], args=[expect]))
        except _STORE_ERRORS as exc:
            raise self._failure(exc, write=True) from None
        await self._check_policy(bound)
        return done

    async def _check_policy(self, bound: _Bound) -> None:
        """Once per store, after its first call that worked (a Redis that is down costs no
        extra wait): warn if Redis may evict a key that has no TTL (``_policy_warning``)."""
        if not self._policy.claim():
            return
        try:
            async with bound.turn():
                info = await bound.client.info("memory")
        except Exception as exc:  # a diagnostic only: it never fails the call
            _policy_unknown(exc)
            return
        _policy_warning(info)

    async def ping(self) -> bool:
        """``True`` if Redis answers (readiness probes); never raises. On a cluster, every
        primary must answer: redis-py sends PING to one node, which answers while another
        primary (and every key in its slots) is down."""
        try:
            bound = await self._bound()
            async with bound.turn():
                if self._cluster:
                    return bool(await bound.client.ping(target_nodes="primaries"))
                return bool(await bound.client.ping())
        except _PING_ERRORS:
            return False


def _absorbed(task: asyncio.Task[Any] | None, cancels: int) -> None:
    """Raise ``CancelledError`` if ``task`` was cancelled since it had ``cancels`` cancel
    requests and the cancel never came out: on Python 3.11, ``asyncio.wait_for`` (redis-py's
    send, the cluster slot wait) returns its result when the cancel lands as the awaited step
    ends (python/cpython#86296; fixed in 3.12). Without this, an ``asyncio.timeout`` around a
    store call made in the request's task did not fire (it cancels once), and the request ran
    on to its end. Redis may have run the command (as with any cancel landing mid-command).
    Not under a cancelled anyio scope: anyio cancels the task again at its next await, with the
    message by which the scope knows its own cancel (a bare one went through it)."""
    if task is not None and task.cancelling() > cancels and not _anyio_cancelled():
        raise asyncio.CancelledError


def _anyio_cancelled() -> bool:
    """Whether a cancelled anyio cancel scope covers the running task."""
    try:
        return anyio.current_effective_deadline() == -math.inf
    except Exception:  # not anyio's to say (no anyio context): a native cancel
        return False


class _Bound:
    """One event loop's client and its scripts; ``closer`` closes them when the loop shuts
    down (``RedisStore._close_at_shutdown``). Every call runs in a ``turn``: a call still in
    flight when the client is closed (``aclose`` while requests run) re-sends on a connection
    redis-py opens again, so the last such call to end closes the client once more (else that
    connection stayed open in Redis until the garbage collector found it, with a
    ResourceWarning in whatever ran then). A cluster client has no blocking pool (past
    ``max_connections`` per node it fails at once): ``turn`` also makes calls beyond that many
    wait for one to end, up to the command timeout, as the single-node client's pool does."""

    __slots__ = (
        "broken",
        "cas_delete",
        "cas_put",
        "client",
        "closed",
        "closer",
        "inflight",
        "loop",
        "put_absent",
        "slot_wait",
        "slots",
    )

    def __init__(self, client: _AsyncClient) -> None:
        self.client = client
        self.put_absent = client.register_script(_PUT_ABSENT)
        self.cas_put = client.register_script(_CAS_PUT)
        self.cas_delete = client.register_script(_CAS_DELETE)
        self.closed = False
        #: The client failed in a way it may not recover from (``turn``): the store builds a
        #: new one for this loop at its next call.
        self.broken = False
        self.closer: AsyncGenerator[None, None] | None = None
        self.inflight = 0  # calls in their ``turn``
        #: The event loop it serves (``RedisStore._bound``): ``turn`` finds its task by it.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.slots: asyncio.Semaphore | None = None
        self.slot_wait = 0.0
        if isinstance(client, redis_asyncio.RedisCluster):
            kwargs = _connection_kwargs(client)
            limit, wait = kwargs.get("max_connections"), kwargs.get("socket_timeout")
            self.slots = asyncio.Semaphore(limit if isinstance(limit, int) and limit > 0 else 100)
            self.slot_wait = float(wait) if isinstance(wait, int | float) and wait > 0 else 5.0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncGenerator[None, None]:
        """One call: counted while it runs (closed after ``aclose`` by the last to end), and
        holding one of the cluster client's connections (a single-node client's pool waits by
        itself). A cancel of the calling task that the call absorbed is raised again when it
        ends (``_absorbed``)."""
        task = asyncio.current_task(self.loop)  # (its loop given: a third of the cost)
        cancels = task.cancelling() if task is not None else 0
        held: asyncio.Semaphore | None = None
        self.inflight += 1
        try:
            if self.slots is not None:
                try:
                    async with asyncio.timeout(self.slot_wait):  # (not ``wait_for``: 3.11)
                        await self.slots.acquire()
                except builtins.TimeoutError:  # (``TimeoutError`` here is redis-py's)
                    raise ConnectionError("No connection available.") from None  # as its pool
                held = self.slots
                _absorbed(task, cancels)
            yield
        except RedisClusterException:
            # redis-py 5.x's cluster client, after a re-initialisation that failed while a
            # node was down, can fail every later call ("cannot be connected ... reachable
            # node: None") although the cluster is back: a new client is built next time.
            self.broken = True
            raise
        except (AttributeError, TypeError) as exc:
            # redis-py's own state torn by a connection lost mid-handshake (5.x: "'NoneType'
            # object has no attribute 'writelines'"): a store failure, typed as one, and a new
            # client next time (never this untyped error to the caller).
            self.broken = True
            raise ConnectionError(f"the Redis client failed ({type(exc).__name__})") from exc
        finally:
            self.inflight -= 1
            if held is not None:
                held.release()
            if self.closed and not self.inflight:
                # ``aclose`` ran while this call was in flight: its re-send (or a later call
                # that had this client already) opened connections again.
                await self._close_client()
        _absorbed(task, cancels)

    async def _close_client(self) -> None:
        """Close the client's connections, quietly: a Redis that is down (or a client that
        broke, ``turn``) has nothing to close."""
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def aclose(self) -> None:
        """Close the connections, then the shutdown hook, which has nothing left to do. A call
        still in flight closes them again when it ends (``turn``)."""
        closer, self.closer = self.closer, None
        if not self.closed:
            self.closed = True
            await self._close_client()
        if closer is not None:
            await closer.aclose()


class SyncRedisStore:
    """``RedisStore``'s blocking twin (same keys, values and scripts): ``RedisStore.sync()``.

    ``connect`` (instead of ``client``) builds the client at the first call: a cluster client
    reads the slot map when it is built, and a Redis that is down then fails that call, typed,
    not the code that builds the store. With ``connect``, a client that broke for good (as
    ``RedisStore``'s, see ``_Bound.turn``) is replaced at the next call. ``cluster``: whether
    ``connect`` builds a cluster client (for messages before it is built; default: it does)."""

    def __init__(
        self,
        client: _SyncClient | None = None,
        *,
        namespace: str = "",
        connect: Callable[[], _SyncClient] | None = None,
        cluster: bool | None = None,
    ) -> None:
        if (client is None) == (connect is None):
            raise ConfigurationError(
                "SyncRedisStore takes a redis client or a connect function, one of the two.",
                fix="use RedisStore.from_url(...).sync().",
            )
        self.namespace = namespace
        self._connect = connect
        self._lock = threading.Lock()
        self._policy = _PolicyCheck()
        self._client: _SyncClient | None = None
        self._acl_extra = ""
        self._cluster = connect is not None if cluster is None else cluster
        self._tls: bool | None = None  # not known before the client is built
        self._database = 0
        if client is not None:
            self._use(client)

    def _use(self, client: _SyncClient) -> None:
        self._acl_extra = _acl_extra(client)
        self._cluster = _is_cluster(client)
        self._tls = _where(client).startswith("rediss:")
        self._database = _database(client)
        self._put_absent = client.register_script(_PUT_ABSENT)
        self._cas_put = client.register_script(_CAS_PUT)
        self._cas_delete = client.register_script(_CAS_DELETE)
        self._client = client

    @property
    def client(self) -> _SyncClient:
        """The redis-py client (built now if the store was given a ``connect`` function)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    assert self._connect is not None
                    try:
                        built = self._connect()
                    except _STORE_ERRORS as exc:  # (no client to replace: not ``_failure``)
                        raise _unavailable(
                            exc,
                            self._acl_extra,
                            cluster=self._cluster,
                            namespace=self.namespace,
                            tls=self._tls,
                            database=self._database,
                        ) from None
                    self._use(built)
        assert self._client is not None
        return self._client

    def __repr__(self) -> str:
        if self._client is None:
            return "SyncRedisStore(not connected yet)"
        return f"SyncRedisStore({_where(self._client)})"

    def _failure(self, exc: BaseException, *, write: bool = False) -> SourceUnavailable:
        if isinstance(exc, RedisClusterException):
            # redis-py 5.x's cluster client, after a re-initialisation that failed while a node
            # was down, can fail every later call although the cluster is back.
            self._broke()
        return _unavailable(
            exc,
            self._acl_extra,
            cluster=self._cluster,
            namespace=self.namespace,
            write=write,
            tls=self._tls,
            database=self._database,
        )

    def _torn(self, exc: AttributeError | TypeError) -> SourceUnavailable:
        """redis-py's own state torn by a connection lost mid-handshake (5.x: "'NoneType'
        object has no attribute 'writelines'"): a store failure, typed as one, never this
        untyped error to the caller; a new client next time."""
        self._broke()
        return self._failure(ConnectionError(f"the Redis client failed ({type(exc).__name__})"))

    def _broke(self) -> None:
        """The client failed in a way it may not recover from: the next call builds a new one
        (when the store can: it was given ``connect``), and this one's connections close."""
        if self._connect is None:
            return
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        client = self._client
        if client is None:
            return
        client.close()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    def get(self, key: str) -> Entry | None:
        client = self.client
        try:
            raw = client.get(self.namespace + key)
        except ResponseError as exc:
            if _wrong_type(exc):
                return None  # not a record of ours: a miss (a write replaces it)
            raise self._failure(exc) from None
        except _STORE_ERRORS as exc:
            raise self._failure(exc) from None
        except (AttributeError, TypeError) as exc:
            raise self._torn(exc) from None
        self._check_policy()
        return _entry(raw)

    def put(
        self, key: str, value: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        ttl_ms = _ttl_ms(ttl)
        client = self.client
        version = secrets.token_hex(_VERSION_CHARS // 2)
        name = self.namespace + key
        try:
            if isinstance(expect, AnyVersion):
                record = version.encode() + b"." + value
                done = client.set(name, record, px=ttl_ms or None)
            elif expect is None:
                done = self._put_absent(keys=[name], args=[version, value, ttl_ms])
            else:
                done = self._cas_put(keys=[name], args=[expect, version, value, ttl_ms])
        except _STORE_ERRORS as exc:
            raise self._failure(exc, write=True) from None
        except (AttributeError, TypeError) as exc:
            raise self._torn(exc) from None
        self._check_policy()
        return version if done else None

    def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool:
        client = self.client
        name = self.namespace + key
        try:
            if isinstance(expect, AnyVersion):
                done = bool(client.delete(name))
            else:
                done = bool(self._cas_delete(keys=[name], args=[expect]))
        except _STORE_ERRORS as exc:
            raise self._failure(exc, write=True) from None
        except (AttributeError, TypeError) as exc:
            raise self._torn(exc) from None
        self._check_policy()
        return done

    def _check_policy(self) -> None:
        """``RedisStore._check_policy``, blocking (shared with the async store it twins)."""
        if not self._policy.claim():
            return
        try:
            info = self.client.info("memory")
        except Exception as exc:  # a diagnostic only: it never fails the call
            _policy_unknown(exc)
            return
        _policy_warning(info)


_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
_OFF: Final = ("", "0", "false", "no", "off", "n", "f")
_REQUIRED: Final = ("required", "cert_required")


#: The query options a Redis URL may carry (redis-py's own names, exact case). Timeouts, the pool
#: size and retries are from_url's checked arguments: in the URL they would replace them.
_URL_OPTIONS = frozenset(
    {
        "db",
        "protocol",
        "client_name",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
    }
)


def _check_url(url: str, *, allow_plaintext: bool) -> None:
    """Fail closed on a URL that would send the password (or Entra token) and the sealed
    records where others can read or intercept them. Never echoes the URL (it may hold a
    password)."""
    if not isinstance(url, str):
        raise ConfigurationError(
            f"{_URL} must be a string, not {type(url).__name__}.",
            fix="pass rediss://:<password>@<host>:<port>/0 (ENTRA_PASSTHROUGH_REDIS_URL).",
        )
    parts = None
    with contextlib.suppress(ValueError):
        split = urlsplit(url)
        split.port  # noqa: B018 - urllib parses the port here, and its error quotes it
        parts = split
    if parts is None:
        # urllib's message quotes the text after the netloc's last ':', which is the password
        # when it holds an unescaped '/', '#' or '?' (Azure access keys are base64). Raised
        # outside the handler: that error is not even this one's context.
        raise ConfigurationError(
            f"the host or port of {_URL} cannot be read "
            "(the port is not a number from 0 to 65535, or an IPv6 address is not closed with "
            "']').",
            fix="write it as rediss://:<password>@<host>:<port>/0, with a password that holds "
            "'/', '#', '?', '@' or ':' percent-encoded (urllib.parse.quote(password, safe=''))."
            " Keep it in ENTRA_PASSTHROUGH_REDIS_URL.",
        )
    if parts.scheme in ("redis", "rediss") and (
        not parts.hostname or "@" in parts.path + parts.query + parts.fragment
    ):
        # A password starting with an unescaped '/' leaves no host (redis-py would connect to
        # localhost with no password); one with '@' then '/', '#' or '?' makes the part after
        # that '@' the "host" (shown in errors and reprs, looked up in DNS). No Redis URL has
        # an '@' after its host.
        raise ConfigurationError(
            f"{_URL} names no host, or not where one "
            "belongs (a password with '/', '#', '?', '@' or ':' written as is ends the host "
            "part early).",
            fix="write it as rediss://:<password>@<host>:<port>/0, with the password "
            "percent-encoded (urllib.parse.quote(password, safe='')).",
        )
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"the scheme of {_URL} is {parts.scheme!r}; expected redis:// or rediss://.",
            fix="use rediss://host:6380 for TLS (Azure Cache for Redis), redis:// on "
            "loopback only.",
        )
    if parts.scheme == "redis" and parts.hostname not in _LOOPBACK and not allow_plaintext:
        raise ConfigurationError(
            f"{_URL} is redis:// (no TLS) to "
            f"{parts.hostname!r}, not loopback: the password or token and every record would "
            "cross the network unencrypted.",
            fix="use rediss:// (Azure Cache for Redis: port 6380, Azure Managed Redis: 10000); "
            "on a network you trust, allow_plaintext=True "
            "(ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT=true).",
        )
    given = parse_qs(parts.query, keep_blank_values=True)
    options: dict[str, list[str]] = {}
    for name, values in given.items():
        options.setdefault(name.strip().lower(), []).extend(values)
    repeated = sorted(name for name, values in options.items() if len(values) > 1)
    if repeated:
        # redis-py reads the first value of a repeated option and ignores the others: a check
        # of any one value could be bypassed (``ssl_cert_reqs=none&ssl_cert_reqs=required``).
        # (names this library knows are shown; another may be part of a password)
        shown = ", ".join(repr(n) for n in repeated if n in _URL_OPTIONS) or "(not shown)"
        raise ConfigurationError(
            f"{_URL} repeats the query option(s) "
            f"{shown}; "
            "which value applies is ambiguous, so the URL is refused.",
            fix="give each query option once (e.g. ?ssl_cert_reqs=required, or leave it out: "
            "rediss:// verifies certificates and host names by default).",
        )
    if any(name not in _URL_OPTIONS for name in given):
        # redis-py passes a name it does not know to the connection as a keyword: every call
        # then fails with a bare TypeError that quotes it (a typo, or the rest of a password
        # after an unescaped '?'), and its timing options would replace the checked ones.
        raise ConfigurationError(
            f"{_URL} has a query option this library does "
            "not accept (it is not "
            "repeated here: it may be part of a password).",
            fix=f"keep only {', '.join(sorted(_URL_OPTIONS))} after '?'; timeouts and the "
            "pool are from_url(timeout=..., max_connections=...), TLS trust is ca_file "
            "(ENTRA_PASSTHROUGH_REDIS_CA_FILE); percent-encode a password that holds '?'.",
        )
    # Every value, as given and decoded once more (older redis-py versions unquote again).
    reqs = [_option(v) for v in options.get("ssl_cert_reqs", [])]
    hostname = [_option(v) for v in options.get("ssl_check_hostname", [])]
    if any(form not in _REQUIRED for forms in reqs for form in forms) or any(
        form in _OFF for forms in hostname for form in forms
    ):
        raise ConfigurationError(
            f"{_URL} turns TLS certificate or host name "
            "verification off "
            "(ssl_cert_reqs / ssl_check_hostname).",
            fix="remove the option; trust a private CA with ca_file "
            "(ENTRA_PASSTHROUGH_REDIS_CA_FILE) instead.",
        )


def _check_ca_file(ca_file: str) -> None:
    """A CA file that cannot be read, or holds no certificate (empty, not PEM), would fail every
    connection as "cannot be reached": say so at construction instead, naming the setting. The
    value is shown only if it is shaped like a path (a key pasted there by mistake is not)."""
    shown = repr(ca_file) if _env.path_may_be_shown(ca_file) else "(not shown)"
    if not os.path.isfile(ca_file) or not os.access(ca_file, os.R_OK):
        raise ConfigurationError(
            f"the Redis CA file {shown} (ca_file, {_CA_FILE_VAR}) does not exist or cannot "
            "be read.",
            fix=f"set {_CA_FILE_VAR} to the path of a readable PEM file with the CA that issued "
            "the Redis server's certificate (or unset it to trust the system's CAs).",
        )
    loaded = False
    with contextlib.suppress(ssl.SSLError, OSError, ValueError):
        # What redis-py does with it at every connect; its error text is not repeated.
        ssl.create_default_context().load_verify_locations(cafile=ca_file)
        loaded = True
    if not loaded:
        raise ConfigurationError(
            f"the Redis CA file {shown} (ca_file, {_CA_FILE_VAR}) holds no certificate "
            "that can be read (it is empty, or not PEM).",
            fix=f"set {_CA_FILE_VAR} to a PEM file (-----BEGIN CERTIFICATE-----) with the CA "
            "that issued the Redis server's certificate (or unset it to trust the system's CAs).",
        )


def _acl_refused(exc: ResponseError) -> bool:
    """Whether Redis refused a command for the ACL without a ``NOPERM`` error: a command denied
    inside one of our scripts comes back as a plain script error ("The user executing the
    script can't run this command or subcommand"), which no server log explains."""
    text = str(exc).lower()
    return "noperm" in text or "the user executing the script can't" in text


#: Redis' ACL refusal of a command, as 6.x and 7.x word it ("... no permissions to run the
#: 'evalsha' command"); the name is a command (``script|load``: with its subcommand).
_ACL_COMMAND: Final = re.compile(r"to run the '([A-Za-z0-9|_.-]{1,64})' command")
#: How much of Redis' own words a refusal quotes.
_REPLY_CHARS: Final = 120


def _acl_refusal(
    exc: BaseException, acl_extra: str, *, namespace: str, write: bool
) -> tuple[str, str]:
    """What Redis' ACL refused, from its own reply (it names a command, or says a key is not
    allowed; never a secret, and redacted all the same), with what to grant first: the
    operator's log (the consent broker's) keeps the message without its fix."""
    # One printable line: the reply is the server's text (a proxy's in front of it), and would
    # otherwise carry terminal escape sequences into messages and logs.
    reply = safe_text(" ".join(str(exc).split()).split(" script: ", 1)[0], 2 * _REPLY_CHARS)
    if len(reply) > _REPLY_CHARS:
        reply = reply[: _REPLY_CHARS - 3] + "..."
    keys = f"~{namespace}ep:*"
    command = _ACL_COMMAND.search(reply)
    lowered = reply.lower()
    if command is not None:
        name = command.group(1).lower()
        what = f"Redis' ACL does not allow the command '{name}' for this user: grant it +{name}"
    elif "executing the script" in lowered:
        # Redis 7.0 does not say which command inside a script it refused: ours run only
        # GET, SET (put) and DEL (compare-and-delete).
        what = (
            "Redis' ACL does not allow a command the store's scripts run (GET, SET, DEL) for "
            "this user: grant it +get +set +del"
        )
    elif "key" in lowered and write:
        what = (
            "Redis' ACL does not allow this user to write the store's keys, and refused the "
            f"write: grant it read and write on {keys} (a %R~ rule allows reads only)"
        )
    elif "key" in lowered:
        what = (
            "Redis' ACL does not allow this user to read the store's keys: grant it read and "
            f"write on {keys}"
        )
    else:
        what = "Redis' ACL does not allow this command or key"
    return (
        f"{what}; Redis said: {reply}",
        f"allow the user +get +set +del +eval +evalsha +script|load +ping{acl_extra} on the "
        f"keys {keys}, read and write (the least the store needs: docs/scale-out.md).",
    )


#: Where TLS is, for the scheme/port mix-ups (the usual one: rediss:// to Azure's port 6379).
_TLS_PORTS: Final = (
    "Azure Cache for Redis: 6380 with TLS, 6379 without; Azure Managed Redis: 10000, TLS by default"
)
#: redis-py's words for a connect (TCP, then the TLS handshake) that timed out.
_CONNECT_TIMEOUT: Final = ("timeout connecting", "handshake operation timed out")
#: OpenSSL's reasons for a handshake whose answer was not TLS (a plaintext server's reply).
_NOT_TLS_REASONS: Final = (
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "UNKNOWN_PROTOCOL",
    "HTTP_REQUEST",
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (bounded walk of the chain)."""
    seen: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and len(seen) < 8:
        seen.append(at)
        at = at.__cause__ or at.__context__
    return seen


def _in_chain(exc: BaseException, words: tuple[str, ...]) -> bool:
    """Whether ``exc`` or a cause says one of ``words`` (lower case)."""
    return any(word in str(seen).lower() for seen in _causes(exc) for word in words)


def _not_tls(exc: BaseException) -> bool:
    """Whether the TLS handshake failed because the server's answer was not TLS."""
    for seen in _causes(exc):
        if (
            isinstance(seen, ssl.SSLError)
            and not isinstance(seen, ssl.SSLCertVerificationError)
            and str(getattr(seen, "reason", "") or "").upper() in _NOT_TLS_REASONS
        ):
            return True
        text = str(seen).upper().replace(" ", "_")
        if any(reason in text for reason in _NOT_TLS_REASONS):
            return True
    return False


def _closed_at_once(exc: BaseException) -> bool:
    """Whether the server reset or closed the connection (not refused it: nothing listens)."""
    return any(isinstance(seen, ConnectionResetError) for seen in _causes(exc)) or _in_chain(
        exc, ("connection closed by server", "connection reset by peer")
    )


def _acl_extra(client: Any) -> str:
    """The commands the connection options need besides the documented ones: SELECT for a
    ``db`` other than 0 and CLIENT SETNAME for ``client_name``, both sent at every connect, so
    without them every call fails as an ACL refusal; a cluster client reads the slot map
    (CLUSTER SLOTS) and the commands' key positions (COMMAND) when it starts."""
    kwargs = _connection_kwargs(client)
    needs = []
    if _is_cluster(client):
        needs.append("+cluster|slots +command (a cluster client reads the slot map)")
    with contextlib.suppress(TypeError, ValueError):
        if int(kwargs.get("db") or 0) != 0:
            needs.append("+select (the URL's db is not 0)")
    if kwargs.get("client_name"):
        needs.append("+client|setname (the URL sets client_name)")
    return "".join(f", {need}" for need in needs)


def _is_cluster(client: Any) -> bool:
    return isinstance(client, (redis_asyncio.RedisCluster, redis_sync.RedisCluster))


def _connection_kwargs(client: Any) -> Mapping[str, Any]:
    """The options the client's connections are made with (a cluster client keeps them
    itself, or in its nodes manager: no single pool)."""
    for holder in (
        getattr(client, "connection_pool", None),
        client,
        getattr(client, "nodes_manager", None),
    ):
        kwargs = getattr(holder, "connection_kwargs", None)
        if isinstance(kwargs, Mapping):
            return kwargs
    return {}


def _database(client: Any) -> int:
    """The database index a client's connections select (0 when not known)."""
    value = _connection_kwargs(client).get("db", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _database_refused(exc: BaseException) -> bool:
    """Whether Redis refused the SELECT of the URL's database: "DB index is out of range"
    (redis-server), "Invalid Database" (redis-py, for an answer other than OK), "SELECT is not
    allowed in cluster mode" (a cluster node, Azure Managed Redis's endpoint)."""
    for seen in _causes(exc):
        text = str(seen).lower()
        if (
            "db index is out of range" in text
            or "invalid database" in text
            or ("select" in text and "not allowed" in text)
        ):
            return True
    return False


def _where(client: Any) -> str:
    """``redis://host:port`` (``rediss``: TLS) of a client, for reprs; a cluster client's is
    the node it was given first. Never the password."""
    kwargs = _connection_kwargs(client)
    connection = getattr(kwargs.get("connection_class"), "__name__", "")
    tls = "rediss" if "ssl_cert_reqs" in kwargs or "SSL" in connection else "redis"
    host, port = kwargs.get("host"), kwargs.get("port")
    if not _is_cluster(client):
        return f"{tls}://{host}:{port}"
    nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None)
    with contextlib.suppress(TypeError, StopIteration):
        node = next(iter(nodes.values())) if isinstance(nodes, Mapping) else None
        host, port = getattr(node, "host", host), getattr(node, "port", port)
    return f"{tls}://{host}:{port}, cluster"


#: The database of a Redis URL: its path (``/3``) or ``?db=3``, a whole number written in
#: ASCII digits. Redis numbers its databases from 0 (``databases``: 16 by default).
_DATABASE: Final = re.compile(r"[0-9]{1,10}")
#: The highest database index Redis can have (``databases`` is a C int).
_MAX_DATABASE: Final = 2**31 - 2
_DATABASE_FIX: Final = (
    "end ENTRA_PASSTHROUGH_REDIS_URL (url) with /0, or /<n> for another database the server "
    "has (0 to 15 by default: Redis' databases setting; Azure Managed Redis and a Redis "
    "Cluster have 0 only), or leave the path out for 0; keep deployments apart with a "
    "namespace (ENTRA_PASSTHROUGH_REDIS_NAMESPACE) instead."
)


def _shown_database(value: str) -> str:
    """A database part as a refusal quotes it: short and printable, or not at all (the host
    check has refused a URL whose path could hold part of the password: no '@' there)."""
    if len(value) <= 24 and value.isascii() and value.isprintable():
        return repr(value)
    return "(not shown)"


def _check_database(url: str) -> None:
    """The URL's database, read here as redis-py reads it, refused where redis-py would take
    another one than written: a path that is not a number (``/abc``) was dropped for database
    0 (possibly another app's), ``/1/2`` became 12, ``?db= 3`` and ``?db=1_0`` were read by
    ``int()``; a negative index, or one past what any Redis has, failed every call. A path and
    a ``?db=`` that disagree are refused (redis-py takes ``db`` and ignores the path). An index
    past the server's own ``databases`` can only be known when connecting (``_describe``)."""
    parts = urlsplit(url)
    path = unquote(parts.path)  # redis-py decodes it
    given: list[tuple[str, str]] = []  # (where, value)
    if path not in ("", "/"):
        given.append(("path", path[1:] if path.startswith("/") else path))
    given += [
        ("?db=", value) for value in parse_qs(parts.query, keep_blank_values=True).get("db", [])
    ]
    for where, value in given:
        if _DATABASE.fullmatch(value) and int(value) <= _MAX_DATABASE:
            continue
        if where == "path" and not _readable(value):
            what = (
                "redis-py would silently use database 0 instead, which may hold another app's keys"
            )
        else:
            what = "redis-py would read another database than written, or one Redis refuses"
        raise ConfigurationError(
            f"the database of {_URL} ({where} {_shown_database(value)}) is not a database "
            f"number (digits alone, 0 to {_MAX_DATABASE}): {what}.",
            fix=_DATABASE_FIX,
        )
    if len({int(value) for _, value in given}) > 1:
        raise ConfigurationError(
            f"{_URL} names two databases, in its path and in ?db= (redis-py would use ?db= and "
            "ignore the path).",
            fix=_DATABASE_FIX,
        )


def _readable(path: str) -> bool:
    """Whether redis-py reads a number out of a URL path (it drops the '/'s and calls int())."""
    try:
        int(path.replace("/", ""))
    except ValueError:
        return False
    return True


def _check_cluster_url(url: str) -> None:
    """A Redis Cluster has database 0 only: redis-py refuses another when the client is
    built, with a text about its keyword; say which setting instead."""
    parts = urlsplit(url)
    dbs = [parts.path.strip("/") or "0", *parse_qs(parts.query).get("db", [])]
    if any(db.strip() not in ("", "0") for db in dbs):
        raise ConfigurationError(
            f"{_URL} names a database other than 0, and a Redis Cluster (cluster=True) has "
            "only database 0.",
            fix="end the URL with /0 (or no path) and drop ?db=; keep deployments apart with "
            "a namespace (ENTRA_PASSTHROUGH_REDIS_NAMESPACE) instead.",
        )


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the server's certificate did not verify (redis-py
    wraps the ``ssl`` error: its cause, or only its text, depending on the version)."""
    return any(
        isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen)
        for seen in _causes(exc)
    )


def _option(value: str) -> tuple[str, str]:
    """A query value as parse_qs gives it and decoded once more, normalised."""
    return value.strip().lower(), unquote(value).strip().lower()


def _ttl_ms(ttl: float | None) -> int:
    """A ``put``'s TTL in milliseconds, ``0`` for none (the scripts' "no expiry")."""
    if ttl is None:
        return 0
    if not ttl > 0:
        raise ValueError("ttl must be positive (or None: no expiry)")
    return max(1, int(ttl * 1000))


class _PolicyCheck:
    """Whether a store (with its blocking twin) has read Redis' eviction policy yet."""

    __slots__ = ("_done", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False

    def claim(self) -> bool:
        """``True`` for the one caller that makes the check."""
        with self._lock:
            done, self._done = self._done, True
            return not done


def _policy_warning(info: Any) -> None:
    """Warn once if Redis, when full, may evict a key without a TTL: a platform user's binding
    ("first binding wins"), after which a forwarded consent link can bind that chat user to
    another account. Only ``allkeys-*`` policies do; ``volatile-*`` ones evict only keys with
    an expiry (https://redis.io/docs/latest/develop/reference/eviction/). ``INFO memory``, not
    ``CONFIG GET``: managed Redis (Azure) allows the first, not the second."""
    if not isinstance(info, Mapping):
        return
    policy = info.get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode("ascii", "replace")
    if not isinstance(policy, str) or not policy.startswith("allkeys-"):
        return
    with contextlib.suppress(TypeError, ValueError):
        if int(info.get("maxmemory") or 0) == 0:
            return  # no memory limit: nothing is ever evicted
    logger.warning(
        "Redis' maxmemory-policy is %s: when Redis reaches maxmemory it may evict any key, "
        "including a platform user's binding (after which a forwarded consent link can bind "
        "that chat user to another account) and consent grants (users are asked to consent "
        "again). Set maxmemory-policy to volatile-ttl or noeviction (docs/scale-out.md).",
        policy[:32] if policy.isprintable() else "allkeys-(unprintable)",
    )


def _policy_unknown(exc: BaseException) -> None:
    """The eviction policy could not be read (the least-privilege ACL has no INFO)."""
    logger.debug(
        "Redis' maxmemory-policy could not be read (%s); allow the user +info to have it "
        "checked, and see docs/scale-out.md for the policy to set.",
        type(exc).__name__,
    )


def _refused(exc: BaseException, cluster: bool) -> bool:
    """Whether Redis refused the command with an answer (out of memory, a read-only replica,
    credentials or ACL refused, a cluster redirect; no Entra token to sign in with): it did not
    run (``STORE_REFUSED``)."""
    if isinstance(exc, RedisClusterException) or (not cluster and _cluster_reply(exc)):
        return True
    if isinstance(exc, ResponseError) and (_read_only(exc) or _acl_refused(exc)):
        return True
    return isinstance(
        exc,
        (
            ClusterDownError,
            ReadOnlyError,
            *_TOKEN_ERRORS,
            _EntraTokenError,
            AuthenticationError,
            AuthorizationError,
            NoPermissionError,
            OutOfMemoryError,
        ),
    )


def _unavailable(
    exc: BaseException,
    acl_extra: str = "",
    *,
    cluster: bool = False,
    namespace: str = "",
    write: bool = False,
    tls: bool | None = None,
    database: int = 0,
) -> SourceUnavailable:
    what, fix = _describe(
        exc,
        acl_extra,
        cluster=cluster,
        namespace=namespace,
        write=write,
        tls=tls,
        database=database,
    )
    return SourceUnavailable(
        f"The shared token store is unavailable: {what}.",
        fix=fix,
        failure=STORE_REFUSED if _refused(exc, cluster) else None,
    )


def _entry(raw: Any) -> Entry | None:
    """The record in ``raw``, or ``None`` for a malformed one (not ``<16 hex>.<value>``: another
    program's value, tampered): as good as absent, for this key only; never an exception, which
    the shared cache would take for a store that is down, for every key."""
    if isinstance(raw, str):  # a client built with decode_responses=True
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes) or len(raw) < _VERSION_CHARS + 1:
        return None
    version = raw[:_VERSION_CHARS]
    if raw[_VERSION_CHARS] != ord(".") or not set(version) <= _HEX:
        return None
    return Entry(raw[_VERSION_CHARS + 1 :], version.decode("ascii"))


def _wrong_type(exc: ResponseError) -> bool:
    """Redis' answer to a GET of a key that holds a list, hash...: not a record of ours."""
    return str(exc).startswith("WRONGTYPE")


def shared_token_cache(
    environ: Mapping[str, str] | None = None,
    *,
    max_entries: int = 10_000,
    cluster: bool | None = None,
) -> TokenCache:
    """A ``TokenCache`` whose L2 is the Redis of ``RedisStore.from_env`` and whose entries are
    sealed with ``Keyring.from_env`` (``ENTRA_PASSTHROUGH_CONSENT_KEYS``): what every replica
    passes to its ``TokenChain``. ``cluster``: as ``RedisStore.from_env`` (``None``: from
    ``ENTRA_PASSTHROUGH_REDIS_CLUSTER``).

    >>> chain = TokenChain([OnBehalfOf.from_env()], cache=shared_token_cache())
    """
    from ._cache import TokenCache
    from ._store import Keyring

    env = _env.environ_or(environ)
    store = RedisStore.from_env(env, cluster=cluster)
    keyring = Keyring.from_env(environ=env)
    shared = SharedTokenCache(store, keyring, sync_store=store.sync())
    return TokenCache(max_entries=max_entries, shared=shared)


def entra_credential_provider(
    credential: Any = None, *, scopes: tuple[str, ...] = (REDIS_SCOPE,)
) -> Any:
    """A redis-py credential provider that signs in to Azure Cache for Redis / Azure Managed
    Redis with Microsoft Entra ID (user = the identity's object id, password = a token).

    With no ``credential`` it is ``redis-entraid``'s provider over ``DefaultAzureCredential``
    (managed identity in Azure, ``az login`` locally), which renews the token before it
    expires and re-authenticates open connections. Pass an azure-identity credential to use
    that one instead.

    >>> store = RedisStore.from_url("rediss://cache.contoso.com:6380",
    ...                             credential_provider=entra_credential_provider())
    """
    if credential is None:
        try:
            from redis_entraid.cred_provider import (  # type: ignore[import-untyped]
                create_from_default_azure_credential,
            )
        except ImportError as exc:  # pragma: no cover - the redis extra installs it
            raise require_extra("redis", "redis", exc) from exc
        return create_from_default_azure_credential(scopes)
    return _AzureIdentityCredentials(credential, scopes)


class _EntraTokenError(ConnectionError):
    """The azure-identity credential gave no token for Redis (a redis-py connection error, so
    the store reports it typed)."""


class _AzureIdentityCredentials:
    """(object id, token) from an azure-identity credential, fetched per new connection."""

    def __init__(self, credential: Any, scopes: tuple[str, ...]) -> None:
        self._credential = credential
        self._scopes = scopes

    def __repr__(self) -> str:
        return f"EntraRedisCredentials(scopes={list(self._scopes)})"

    def get_credentials(self) -> tuple[str, str]:
        from ._jwt import decode_unverified

        try:
            token = self._credential.get_token(*self._scopes).token
        except Exception as exc:  # the credential's own error: its type only (no detail)
            raise _EntraTokenError(type(exc).__name__) from None
        oid = decode_unverified(token).get("oid")
        if not isinstance(oid, str) or not oid:
            raise ConfigurationError(
                "the Entra token for Redis has no oid claim; Redis needs the identity's object "
                "id as user name.",
                fix="use a managed identity, service principal or user credential.",
            )
        return oid, token

    async def get_credentials_async(self) -> tuple[str, str]:
        return await anyio.to_thread.run_sync(self.get_credentials)
