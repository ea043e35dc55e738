"""The alternatives compared: our TokenChain and the patterns users write today.

Every alternative answers one question per tool call: "the token for the MCP server's scope, on
behalf of the user who presented ``assertion``". Each baseline is written the way its origin
writes it (cited in its docstring), only pointed at the emulator: authority host = the emulator's
URL, instance discovery off, the emulator's CA for TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msal
import requests
from azure.identity import OnBehalfOfCredential as SyncOnBehalfOfCredential
from azure.identity.aio import OnBehalfOfCredential

from ._emu import Emulator

if TYPE_CHECKING:
    from entra_passthrough import Caller


class Pattern(Protocol):
    name: str

    def prepare(self, assertions: Sequence[str]) -> None:
        """Work a server does when the request ARRIVES, before any tool call (not timed)."""

    async def token(self, assertion: str) -> str: ...

    async def aclose(self) -> None: ...


def _requests_session(emu: Emulator) -> requests.Session:
    session = requests.Session()
    session.verify = emu.ca_file
    session.trust_env = False  # a test CA on loopback: no proxy, no REQUESTS_CA_BUNDLE override
    return session


def _aio_kwargs(emu: Emulator) -> dict[str, Any]:
    return {
        "tenant_id": emu.tenant_id,
        "client_id": emu.agent.client_id,
        "client_secret": emu.agent.secret,
        "authority": emu.url,
        "connection_verify": emu.ca_file,
    }


class _NothingToPrepare:
    def prepare(self, assertions: Sequence[str]) -> None:
        return None  # the baselines take the raw assertion: nothing happens at request arrival


class PerCallCredential(_NothingToPrepare):
    """A new ``azure.identity.aio.OnBehalfOfCredential`` per tool call.

    Origin: the Azure Functions MCP OBO sample (mattchenderson/FunctionsMcpAuthorization,
    ``AppServiceAuthenticationOnBehalfOfCredential``: the credential is built from the incoming
    request's token inside each tool invocation) and the many Python MCP servers written after
    it (``obo_credential = OnBehalfOfCredential(..., user_assertion=access_token)`` inside the
    tool). The credential's cache lives and dies with the instance: one POST per call.
    """

    name = "per-call credential"

    def __init__(self, emu: Emulator) -> None:
        self._kw = _aio_kwargs(emu)
        self._scope = emu.mcp_scope

    async def token(self, assertion: str) -> str:
        credential = OnBehalfOfCredential(user_assertion=assertion, **self._kw)
        try:
            return (await credential.get_token(self._scope)).token
        finally:
            await credential.close()  # aio credentials own an aiohttp session

    async def aclose(self) -> None:
        return None


class SharedMsalApp(_NothingToPrepare):
    """One ``msal.ConfidentialClientApplication``; ``acquire_token_on_behalf_of`` on every call.

    Origin: MSAL Python's documented OBO call (``ConfidentialClientApplication.
    acquire_token_on_behalf_of(user_assertion, scopes)``) as used by the Azure Functions remote
    MCP Python samples (a module-level ``cca_auth_client`` and ``acquire_token_on_behalf_of`` in
    each ``mcpToolTrigger``). MSAL is synchronous, so async code runs it in a thread
    (``asyncio.to_thread``). MSAL never reads its cache for OBO: every call is a POST, and every
    result is written to the app's token cache, which grows without bound.
    """

    name = "shared MSAL app"

    def __init__(self, emu: Emulator) -> None:
        self.app = msal.ConfidentialClientApplication(
            emu.agent.client_id,
            client_credential=emu.agent.secret,
            authority=emu.authority,
            instance_discovery=False,
            http_client=_requests_session(emu),
        )
        self._scopes = [emu.mcp_scope]

    async def token(self, assertion: str) -> str:
        result = await asyncio.to_thread(
            self.app.acquire_token_on_behalf_of, user_assertion=assertion, scopes=self._scopes
        )
        if "access_token" not in result:
            raise RuntimeError(f"OBO failed: {result.get('error')}")
        return str(result["access_token"])

    async def aclose(self) -> None:
        return None


class CredentialLRU(_NothingToPrepare):
    """A dict of ``azure.identity.aio.OnBehalfOfCredential`` keyed by the assertion's hash.

    Origin: fastmcp (PrefectHQ/fastmcp ``server/auth/providers/azure.py``,
    ``AzureProvider.get_obo_credential``): ``OrderedDict`` keyed by ``sha256(user_assertion)``,
    ``move_to_end`` on a hit, at most 128 credentials, the oldest evicted and closed; then
    ``await credential.get_token(*scopes)`` per tool call (``EntraOBOToken``).
    """

    name = "credential LRU"
    max_credentials = 128  # fastmcp's _obo_max_credentials

    def __init__(self, emu: Emulator) -> None:
        self._kw = _aio_kwargs(emu)
        self._scope = emu.mcp_scope
        self._credentials: OrderedDict[str, OnBehalfOfCredential] = OrderedDict()

    async def _credential(self, assertion: str) -> OnBehalfOfCredential:
        key = hashlib.sha256(assertion.encode()).hexdigest()
        if key in self._credentials:
            self._credentials.move_to_end(key)
            return self._credentials[key]
        credential = OnBehalfOfCredential(user_assertion=assertion, **self._kw)
        self._credentials[key] = credential
        while len(self._credentials) > self.max_credentials:
            _, evicted = self._credentials.popitem(last=False)
            await evicted.close()
        return credential

    async def token(self, assertion: str) -> str:
        credential = await self._credential(assertion)
        return (await credential.get_token(self._scope)).token

    async def aclose(self) -> None:
        for credential in self._credentials.values():
            await credential.close()
        self._credentials.clear()


class SharedCacheCredential(_NothingToPrepare):
    """An aio ``OnBehalfOfCredential`` per call, all sharing ONE in-memory MSAL ``TokenCache``.

    The best stock azure-identity 1.27 allows: its ``AadClientBase`` namespaces OBO cache entries
    by ``sha256(assertion)`` ("permits per-request credentials to reuse tokens",
    ``aio/_credentials/on_behalf_of.py``), so a cache shared across per-call credentials gives
    cache hits without holding credentials. The in-memory share is the ``cache=`` keyword that
    ``OnBehalfOfCredential(**kwargs)`` forwards to ``AadClientBase(cache=...)`` (accepted, not
    documented); the documented alternative, ``cache_persistence_options``, is file-backed and
    slower. No request coalescing: concurrent misses for one user each POST.
    """

    name = "shared-cache credential"

    def __init__(self, emu: Emulator) -> None:
        self._kw = _aio_kwargs(emu)
        self._scope = emu.mcp_scope
        self.cache = msal.TokenCache()

    async def token(self, assertion: str) -> str:
        credential = OnBehalfOfCredential(user_assertion=assertion, cache=self.cache, **self._kw)
        try:
            return (await credential.get_token(self._scope)).token
        finally:
            await credential.close()

    async def aclose(self) -> None:
        return None


class SyncInAsync(_NothingToPrepare):
    """Sync ``azure.identity.OnBehalfOfCredential`` (MSAL inside) called directly in async code.

    Origin: MCP servers whose async tools call a sync credential as in the azure-identity
    samples (``credential.get_token(scope)`` with no ``await``, no thread), here with the
    credentials kept per assertion hash (the fastmcp layout) so that repeat calls hit MSAL's
    cache: the best case of this pattern. Every miss blocks the event loop for a full round trip.
    """

    name = "sync-in-async"

    def __init__(self, emu: Emulator) -> None:
        self._emu = emu
        self._scope = emu.mcp_scope
        self._credentials: dict[str, SyncOnBehalfOfCredential] = {}

    async def token(self, assertion: str) -> str:
        key = hashlib.sha256(assertion.encode()).hexdigest()
        credential = self._credentials.get(key)
        if credential is None:
            credential = SyncOnBehalfOfCredential(
                tenant_id=self._emu.tenant_id,
                client_id=self._emu.agent.client_id,
                client_secret=self._emu.agent.secret,
                user_assertion=assertion,
                authority=self._emu.url,
                disable_instance_discovery=True,
                connection_verify=self._emu.ca_file,
            )
            self._credentials[key] = credential
        return credential.get_token(self._scope).token  # blocks the loop on a miss

    async def aclose(self) -> None:
        for credential in self._credentials.values():
            credential.close()
        self._credentials.clear()


class Ours:
    """``TokenChain([OnBehalfOf(...)])``: the resolve stage of entra-passthrough."""

    name = "entra-passthrough"

    def __init__(self, emu: Emulator) -> None:
        from entra_passthrough import OnBehalfOf, Policy, TokenChain
        from entra_passthrough._caller import Caller

        self._caller_from_token = Caller.from_token
        self.chain = TokenChain(
            [
                OnBehalfOf(
                    client_id=emu.agent.client_id,
                    tenant_id=emu.tenant_id,
                    client_secret=emu.agent.secret,
                    authority_host=emu.url,
                    http_client=_requests_session(emu),
                )
            ],
            policy=Policy.USER_ONLY,
        )
        self._scopes = [emu.mcp_scope]
        self._callers: dict[str, Caller] = {}

    def prepare(self, assertions: Sequence[str]) -> None:
        # The capture stage: CallerMiddleware builds the Caller when the request arrives, not
        # when a tool call acquires (its cost is the middleware scenario's figure). The claims
        # are decoded on first use, so that part is still inside each timed call.
        for a in assertions:
            if a not in self._callers:
                self._callers[a] = self._caller_from_token(a)

    async def token(self, assertion: str) -> str:
        caller = self._callers.get(assertion) or self._caller_from_token(assertion)
        result = await self.chain.get_token_async(self._scopes, caller=caller)
        return result.token

    async def aclose(self) -> None:
        self.chain.close()  # stops the OBO source's worker threads


BASELINES: tuple[Callable[[Emulator], Pattern], ...] = (
    PerCallCredential,
    SharedMsalApp,
    CredentialLRU,
    SharedCacheCredential,
    SyncInAsync,
)


def ours_available() -> str | None:
    """``None`` when our resolve stage can be imported, else why not."""
    try:
        from entra_passthrough import OnBehalfOf, TokenChain  # noqa: F401
    except ImportError as exc:
        return f"entra_passthrough.TokenChain/OnBehalfOf not importable yet: {exc}"
    return None


def all_patterns() -> list[Callable[[Emulator], Pattern]]:
    factories: list[Callable[[Emulator], Pattern]] = []
    if ours_available() is None:
        factories.append(Ours)
    factories.extend(BASELINES)
    return factories
