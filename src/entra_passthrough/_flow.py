"""Apply, the decisions: one generator with no I/O, shared by the httpx2 and httpx fronts.

The generator yields *steps*: ``Acquire`` (the driver gets a token and sends back an
``Acquired``) and ``SendRequest`` (the driver yields the request to the client and sends back the
response). It never does I/O and never blocks (dropping a cache entry is an in-memory call it
makes itself), so the same decisions run under ``sync_auth_flow`` and ``async_auth_flow``
(encode/httpx's ``Auth`` pattern, with the drivers overridden because acquiring a token is I/O).

Decisions, in order:
1. The request's origin (scheme, host, port) is not configured -> send it untouched.
2. The request already carries an ``Authorization`` header that we did not set -> a
   configuration conflict: raise (``on_error="raise"``) or record it and strip that header
   (``on_error="record"``): a credential we did not choose never goes out beside, or instead of,
   the user's.
3. A token pre-resolved in this task (``use_token``) for this caller and these scopes -> use it.
   Else a fresh cache hit of the chain (``cached_token``: no I/O) -> use it.
   Else ``Acquire(caller=active_caller())``: the driver asks the chain for the active caller,
   or for the lifecycle identity when there is none (which may be no token at all).
4. Attach ``Authorization: Bearer`` and the result's extra headers; mark the request so that
   ``EntraAuth.request_hook`` can strip them again on a redirect to another origin.
5. 401 with a Bearer claims challenge or ``invalid_token`` from a configured origin ->
   invalidate the entry, acquire again (with the decoded claims), resend once. Never twice.
   A claims challenge to the token acquired with its claims -> ``ClaimsNotAccepted`` (an
   ``InteractionRequired``), and that origin's claims challenges to this caller are held for
   the refusal window (no token request for each request).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from . import _otel
from ._caller import Caller, active_caller, caller_var, current_caller
from ._chain import ended_caller_error
from ._challenge import parse_bearer_challenges
from ._errors import (
    ConfigurationError,
    InteractionRequired,
    NoCallerError,
    TokenAcquisitionError,
)
from ._httpx_seams import append_authorization, has_authorization
from ._origins import OriginKey, format_origin, origin_key, parse_origins
from ._prefetch import orphaned, prefetched_for, prefetched_var, refused, scope_key
from ._types import IdentityKind, TokenResult, header_safe, mark_header_safe

_log = logging.getLogger("entra_passthrough.apply")

OnError = Literal["raise", "record"]

#: ``request.extensions`` key: the header names this library set on the request. The client
#: copies extensions onto redirect requests, which is how the redirect hook finds them.
APPLIED = "entra_passthrough.applied"
#: The caller a user's token was applied for (``_apply``, the hit path): a hop made once it
#: has ended (a redirect the client follows below the auth flow) loses that token
#: (``strip_if_foreign``). Not set for an app's or a connection's own token.
APPLIED_FOR = "entra_passthrough.applied_for"

# Extra headers from a TokenResult may not replace these.
_RESERVED = frozenset(
    {"authorization", "host", "cookie", "content-length", "transfer-encoding", "connection"}
)
_AUTHORIZATION_ONLY: tuple[str, ...] = ("authorization",)
_MAX_ERRORS = 16
_MAX_SEEN_ORIGINS = 256


class Chain(Protocol):
    """What ``EntraAuth`` needs from a ``TokenChain``."""

    def get_token(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | None,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult: ...

    async def get_token_async(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | None,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult: ...

    def invalidate(self, result: TokenResult) -> bool | None: ...

    # Optional (TokenChain has them): the refusal window (``TokenCache.refusal_window``).
    # def invalidate(self, result, *, where=None) -> bool: ``where`` (the refusing origin, or
    #     (origin, "insufficient_claims") for a claims challenge) makes a refusal of a token
    #     that replaced a refused one, within the window, stand.
    # def accepted(self, result, *, where) -> None: the replacement was accepted there.

    # Optional (TokenChain has it): a fresh cache hit without I/O, else None. The flow then
    # attaches the token without an acquisition step (no coroutine, no driver round trip).
    # def cached_token(self, scopes, *, caller, client_capabilities=()) -> TokenResult | None
    # And, with it, the same bound to one (scopes, capabilities), for an active caller:
    # def hit_lookup(self, scopes, client_capabilities=()) -> Callable[[Caller], TokenResult | None]

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None: ...

    def lifecycle_token(self, scopes: Sequence[str]) -> TokenResult | None: ...

    async def call_token_async(
        self, scopes: Sequence[str], *, ended: Caller | None = None
    ) -> TokenResult | None: ...


class _URL(Protocol):
    @property
    def scheme(self) -> str: ...
    @property
    def raw_host(self) -> bytes: ...
    @property
    def port(self) -> int | None: ...


class Request(Protocol):
    @property
    def url(self) -> Any: ...
    @property
    def headers(self) -> Any: ...
    @property
    def extensions(self) -> Any: ...
    @property
    def content(self) -> bytes: ...


class Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Any: ...
    @property
    def request(self) -> Any: ...


# The steps are plain slotted classes, not frozen dataclasses: one is built per request on the
# hot path, and a frozen dataclass pays an object.__setattr__ per field.


class Acquire:
    __slots__ = ("caller", "claims")

    def __init__(self, caller: Caller | None, claims: str | None = None) -> None:
        self.caller = caller
        self.claims = claims


class Acquired:
    __slots__ = ("error", "result")

    def __init__(self, result: TokenResult | None = None, error: Exception | None = None) -> None:
        self.result = result
        self.error = error


class SendRequest:
    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


Step = Acquire | SendRequest


class UnsafeTokenValue(TokenAcquisitionError):
    """A source returned a token or header value that cannot go into an HTTP header."""


class ClaimsNotAccepted(InteractionRequired):
    """A resource answered a claims challenge (401 ``insufficient_claims``) to the token
    acquired with the claims it asked for, or asks again within the refusal window. ``claims``
    is its latest challenge, for ``step_up_challenge``."""

    fix = (
        "have the user sign in again with these claims (step_up_challenge(error) hands them to "
        "the client); if a fresh sign-in is refused too, the resource does not accept the "
        "tokens Entra issues with its claims: check its token checks and its conditional "
        "access settings."
    )


#: The refusal-window slot of an origin's claims challenges (``where`` = (origin, this)): apart
#: from its bare refusals, so a claims challenge to a bare refusal's replacement is met at once.
_CLAIMS_SLOT = "insufficient_claims"


# --- the flow ----------------------------------------------------------------------------


class FlowCore:
    """The configuration and the decisions of ``EntraAuth``; the fronts add the drivers."""

    def __init__(
        self,
        chain: Chain,
        *,
        scopes: Sequence[str],
        origins: Iterable[str],
        on_error: OnError = "raise",
        client_capabilities: Sequence[str] = (),
        allow_insecure_loopback: bool = True,
        connection: bool = False,
    ) -> None:
        if isinstance(scopes, str):
            scopes = (scopes,)
        if not scopes or not all(isinstance(s, str) and s for s in scopes):
            raise ConfigurationError(
                "EntraAuth needs the scopes of the target, e.g. ['api://<app>/.default']"
            )
        if on_error not in ("raise", "record"):
            raise ConfigurationError(f"on_error must be 'raise' or 'record', not {on_error!r}")
        self.chain = chain
        self._takes_where: bool | None = None  # _weighs_refusals
        self.scopes: tuple[str, ...] = tuple(scopes)
        self.origins: frozenset[OriginKey] = parse_origins(
            origins, allow_insecure_loopback=allow_insecure_loopback
        )
        self.on_error: OnError = on_error
        self.client_capabilities: tuple[str, ...] = tuple(client_capabilities)
        #: Serves an MCP connection (the integrations): a request with no active caller is a
        #: connection-lifetime one (``chain.lifecycle_token``) even when its context holds a
        #: caller that ended. Elsewhere such a request is that user's work: refused, never the
        #: app.
        self.connection = connection
        self._key = scope_key(self.scopes)
        self._cached = getattr(chain, "cached_token", None)
        # Optional too (TokenChain has it): ``cached_token`` bound to these scopes, for the hot
        # path (``apply_hit``), with what never changes per request worked out once. A chain
        # with ``cached_token`` alone gets the same hot path through a plain call of it.
        self._lookup: Callable[[Caller], TokenResult | None] | None = None
        hit_lookup = getattr(chain, "hit_lookup", None)
        if hit_lookup is not None and self._cached is not None:
            self._lookup = hit_lookup(self.scopes, self.client_capabilities)
        elif self._cached is not None:
            self._lookup = _bound_lookup(self._cached, self.scopes, self.client_capabilities)
        self._seen: dict[tuple[str, bytes, int | None], bool] = {}
        self._errors: deque[BaseException] = deque(maxlen=_MAX_ERRORS)

    # -- small pure helpers --

    def allows(self, url: _URL) -> bool:
        raw = (url.scheme, url.raw_host, url.port)
        allowed = self._seen.get(raw)
        if allowed is None:  # normalise once per distinct raw origin (bounded memo)
            if len(self._seen) >= _MAX_SEEN_ORIGINS:
                self._seen.clear()
            allowed = self._seen[raw] = origin_key(*raw) in self.origins
        return allowed

    def take_errors(self) -> list[BaseException]:
        """Errors recorded for requests that had no active caller (``on_error="record"``)."""
        errors = list(self._errors)
        self._errors.clear()
        return errors

    def record(self, caller: Caller | None, error: BaseException) -> None:
        """On ``caller`` (or the one bound to this context, ended or not: its task can take
        its errors), else on this auth, for requests with no caller at all."""
        target = caller if caller is not None else current_caller()
        if target is not None:
            target.record(error)
        else:
            self._errors.append(error)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("token acquisition failed, request sent without a token: %s", error)

    def describe(self) -> str:
        origins = ", ".join(sorted(format_origin(o) for o in self.origins))
        return (
            f"scopes={list(self.scopes)!r}, origins=[{origins}], on_error={self.on_error!r}, "
            f"chain={type(self.chain).__name__}"
        )

    # -- the generator --

    def flow(self, request: Request) -> Generator[Step, Any, None]:
        if not self.allows(request.url) or not _otel.tracing():
            return self._flow(request, None)
        return self._traced(request)

    def _traced(self, request: Request) -> Generator[Step, Any, None]:
        """The flow inside an ``entra_passthrough.request`` span: the origin (never the path or
        query), whether a token was applied and by which source, the status, a retry."""
        url = request.url
        key = origin_key(url.scheme, url.raw_host, url.port)
        span = _otel.start_span(
            "entra_passthrough.request",
            {
                "http.request.method": getattr(request, "method", None),
                "server.address": format_origin(key) if key is not None else None,
                "entra_passthrough.user": _otel.user_hash(active_caller()),
            },
        )
        note: dict[str, Any] = {}
        error: BaseException | str | None = None
        try:
            yield from self._flow(request, note)
        except GeneratorExit:
            # The client closed the flow before its end, in a ``finally`` that does not say
            # why: a cancellation, or a transport error that ended the request. (``applied`` is
            # noted as the request goes out: before, only a cancellation can close the flow.)
            error = _otel.why_closed(sent="entra_passthrough.applied" in note)
            raise
        except BaseException as exc:  # a failure (an Exception), else a cancellation
            error = exc
            raise
        finally:
            applied = bool(note.get("entra_passthrough.applied"))
            _otel.count_request(applied, note.get("status"), error)
            status = note.pop("status", None)
            _otel.end_span(span, error, **note, **{"http.response.status_code": status})

    def _flow(self, request: Request, note: dict[str, Any] | None) -> Generator[Step, Any, None]:
        if not self.allows(request.url):
            yield SendRequest(request)
            return
        headers = request.headers
        caller = active_caller()
        if APPLIED in request.extensions:
            # A request sent again (the same object, built once): what an earlier send applied
            # was decided for that send's caller; this one decides afresh, from nothing.
            self.strip(request)
        if has_authorization(headers):  # not ours (what we applied was just stripped)
            conflict = ConfigurationError(
                "the request already has an Authorization header; EntraAuth does not send a "
                "user's token beside (or instead of) a credential it did not choose",
                fix="remove the Authorization header (client headers= or per request) or the "
                "auth=EntraAuth(...) for this origin",
            )
            if self.on_error == "raise":
                raise conflict
            self.record(caller, conflict)
            headers.pop("authorization", None)
            if note is not None:
                note["entra_passthrough.applied"] = False
            sent: Response = yield SendRequest(request)
            if note is not None:
                note["status"] = sent.status_code
            return

        result = prefetched_for(caller, self._key)
        if result is None and self._cached is not None and caller is not None and caller.active:
            result = self._cached(
                self.scopes, caller=caller, client_capabilities=self.client_capabilities
            )
        if result is None and orphaned(caller):
            # A request of a call whose caller ended after its token was resolved: it carries
            # that caller's identity or none, never the one a request without a caller gets.
            ended = NoCallerError(
                "the caller this call was made for ended before its request was sent; the "
                "request carries no token rather than another identity"
            )
            if self.on_error == "raise":
                raise ended
            self.record(caller, ended)
            self.strip(request)
            if note is not None:
                note["entra_passthrough.applied"] = False
            answer: Response = yield SendRequest(request)
            if note is not None:
                note["status"] = answer.status_code
            return
        if result is None:
            outcome: Acquired = yield Acquire(caller)
            result = self._accept(outcome, caller)
        applied = result is not None and self._apply(request, result, caller)
        if note is not None:  # before the send: a request that gets no response says it too
            note["entra_passthrough.applied"] = applied
            if result is not None:
                note["entra_passthrough.source"] = result.source
                note["entra_passthrough.kind"] = result.kind.value
        response: Response = yield SendRequest(request)
        if note is not None:
            note["status"] = response.status_code

        if not applied or result is None or response.status_code != 401:
            return
        yield from self.after_401(request, result, caller, response, note)

    def apply_hit(self, request: Request) -> tuple[TokenResult, Caller] | None:
        """The hot path, no generator: an origin of ours, no Authorization header yet, and the
        active caller's token prefetched or a fresh cache hit already found fit for a header
        -> attach it and return ``(result, caller)``. Anything else (a tracer provider
        configured included) -> ``None`` with the request untouched: the full ``flow`` runs.
        After the response, a 401 goes to ``after_401``, exactly as in ``flow``."""
        lookup = self._lookup
        if lookup is None or _otel.tracing():
            return None
        caller = caller_var.get()
        if caller is None or not caller.active:
            return None  # no caller (lifecycle path): the full flow decides
        url = request.url
        allowed = self._seen.get((url.scheme, url.raw_host, url.port))  # ``allows``, inlined
        if not (allowed or (allowed is None and self.allows(url))):
            return None  # not our origin: the full flow sends it untouched
        headers = request.headers
        if has_authorization(headers):
            return None  # a header to judge: the full flow
        # ``prefetched_for`` only inside a ``use_token`` block (rare): a call saved per request
        result = (prefetched_var.get() is not None and prefetched_for(caller, self._key)) or lookup(
            caller
        )
        if result is None or not header_safe(result):
            return None
        if result.headers:
            self._apply(request, result, caller)  # cannot fail: the token was found safe before
            return result, caller
        # ``_apply`` for the usual result (a bearer, no extra headers), already found safe
        # (ASCII), on headers found without an Authorization header above.
        append_authorization(headers, "Bearer " + result.token)
        extensions = request.extensions
        extensions[APPLIED] = _AUTHORIZATION_ONLY
        extensions[APPLIED_FOR] = caller  # (a hit is the active caller's own token)
        if _log.isEnabledFor(logging.DEBUG):
            self._log_attached(result)
        return result, caller

    def _log_attached(self, result: TokenResult) -> None:
        _log.debug(
            "token %s (%s, source %s) attached for %s",
            result.fingerprint,
            result.kind.value,
            result.source,
            list(self.scopes),
        )

    def after_401(
        self,
        request: Request,
        result: TokenResult,
        caller: Caller | None,
        response: Response,
        note: dict[str, Any] | None = None,
    ) -> Generator[Step, Any, None]:
        """Step 5, for a request sent with ``result`` that got a 401: a Bearer challenge from a
        configured origin that allows a retry -> drop the entry, acquire again, resend once."""
        try:
            final = response.request
        except RuntimeError:
            final = request
        if not self.allows(final.url):
            return  # a 401 from another origin (after a redirect) says nothing about our token
        if final is not request and final.headers.get("authorization") != "Bearer " + result.token:
            # Nor does a 401 to a hop that did not carry it: the client drops Authorization on a
            # redirect to another origin, even one we are configured for. The token the first
            # origin accepted stays cached, and the request is not sent again.
            return
        challenge = parse_bearer_challenges(response.headers.get_list("www-authenticate"))
        if challenge is None or not challenge.retryable:
            return
        # A bare refusal is weighed against this origin's last one. A claims challenge names
        # what a new token must carry (a token with the claims is another entry): met at once,
        # unless this origin refused the token acquired with its claims moments ago and asks
        # again (its own slot: then no token request per request, see ``ClaimsNotAccepted``).
        origin = origin_key(final.url.scheme, final.url.raw_host, final.url.port)
        where: Hashable | None = (
            (origin, _CLAIMS_SLOT) if challenge.claims and origin is not None else origin
        )
        if not _replayable(request):
            # No retry (a stream), but the token is refused: dropped, unless this resource
            # refuses every token of this caller (the window: no new token for each request).
            self._invalidate(result, caller, where=where)
            return
        if result.kind is IdentityKind.USER and (caller is None or not caller.active):
            # The user's caller ended while the request was out: a token acquired now would be
            # another identity's (the app, under ``lifecycle_app``). The 401 stands, with the
            # typed error the chain gives that caller's work (``AssertionExpired`` when its
            # assertion ran out): an MCP tool call raises it instead of a bare 401.
            self._invalidate(result, caller)
            if caller is not None:
                error = ended_caller_error(caller, self.scopes)
                if self.on_error == "raise":
                    raise error
                self.record(caller, error)
            return
        if not self._invalidate(result, caller, where=where):
            # The token that replaced one this resource refused moments ago, never accepted
            # since, is refused too: it refuses every token of this caller
            # (TokenCache.refusal_window). The 401 stands, with no token request that it would
            # refuse again.
            _log.debug("401 from the resource again: token %s not replaced", result.fingerprint)
            if challenge.claims and origin is not None:
                self._claims_not_accepted(caller, origin, challenge.claims, held=True)
            return
        self.strip(request)  # the retry carries only what the new result brings
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "401 %s from the resource: token %s dropped, retrying once%s",
                challenge.error,
                result.fingerprint,
                " with a claims challenge" if challenge.claims else "",
            )
        outcome = yield Acquire(caller, challenge.claims)
        if (
            challenge.claims
            and where is not None
            and outcome.error is not None
            and not isinstance(outcome.error, InteractionRequired)
        ):
            # No token with the claims could be had (Entra down, throttling...): the resource
            # refused none, and its next claims challenge is met at once again. (Entra asking
            # for the user, InteractionRequired, stands for the window: so would its answer.)
            self._accepted(result, where)
        retry = self._accept(outcome, caller)
        if (
            retry is None
            or retry.kind is not result.kind
            or not self._apply(request, retry, caller)
        ):
            # No token, or one of another kind of identity than the one refused (a retry never
            # changes who the request acts for): the client returns the 401 we already have.
            return
        retried: Response = yield SendRequest(request)
        status = getattr(retried, "status_code", 401)
        if where is not None and status != 401:
            # Accepted: this resource does not refuse every token; its next refusal (a revoked
            # token) is retried as the first one was.
            self._accepted(result, where)
        if challenge.claims and status != 401:
            # The claims satisfied the resource: later requests carry that token, not one
            # without the claims that it would refuse again (``TokenChain.adopt``).
            adopt = getattr(self.chain, "adopt", None)
            if adopt is not None:
                adopt(result, retry)
        if note is not None:
            note["entra_passthrough.retried"] = True
            note["status"] = getattr(retried, "status_code", None)
        if challenge.claims and status == 401 and origin is not None:
            # The token with the claims is refused with a claims challenge again: only the user
            # (a new sign-in with them) or the resource can change that. The 401 stands, typed;
            # the refusal window (``where``) holds this origin's next claims challenges.
            again = parse_bearer_challenges(_challenges_of(retried))
            if again is not None and again.claims:
                self._claims_not_accepted(caller, origin, again.claims, held=False)

    def _claims_not_accepted(
        self, caller: Caller | None, origin: OriginKey, claims: str, *, held: bool
    ) -> None:
        what = (
            "the token acquired with its claims moments ago was refused or could not be had; "
            "no token is requested for it until the refusal window ends"
            if held
            else "it refused the token acquired with the claims it asked for"
        )
        error = ClaimsNotAccepted(
            f"{format_origin(origin)} asks again for claims (401 insufficient_claims): {what}.",
            claims=claims,
            scopes=self.scopes,
        )
        if self.on_error == "raise":
            raise error
        self.record(caller, error)

    def _accepted(self, result: TokenResult, where: Hashable) -> None:
        """The refusal at ``where`` needs no window (``TokenChain.accepted``), if the chain
        keeps one."""
        accepted = getattr(self.chain, "accepted", None)
        if accepted is not None:
            accepted(result, where=where)

    def _accept(self, outcome: Acquired, caller: Caller | None) -> TokenResult | None:
        if outcome.error is not None:
            if self.on_error == "raise":
                raise outcome.error
            self.record(caller, outcome.error)
            return None
        return outcome.result

    def _weighs_refusals(self) -> bool:
        """Whether the chain's ``invalidate`` takes ``where`` (``TokenChain``'s does; the
        ``Chain`` protocol's, a test double's or a subclass's override may not). Read once."""
        takes = self._takes_where
        if takes is None:
            try:
                parameters = list(inspect.signature(self.chain.invalidate).parameters.values())
            except (TypeError, ValueError):  # no signature to read: do not pass it
                parameters = []
            takes = self._takes_where = any(
                p.name == "where" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
            )
        return takes

    def _invalidate(
        self, result: TokenResult, caller: Caller | None, *, where: Hashable | None = None
    ) -> bool:
        """Drop ``result`` (refused by the resource); ``False`` when the chain keeps it: the
        resource at ``where`` refused the token that replaced one it refused (no retry)."""
        refused(result)
        try:
            if where is None or not self._weighs_refusals():
                # (a chain without the refusal window, or a subclass's own invalidate(result),
                # takes no ``where``)
                return self.chain.invalidate(result) is not False
            return self.chain.invalidate(result, where=where) is not False  # type: ignore[call-arg]
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.record(caller, exc)
            return True

    def _apply(self, request: Request, result: TokenResult, caller: Caller | None) -> bool:
        token = result.token
        if not header_safe(result) and not _mark_header_safe(result):
            error = UnsafeTokenValue(
                "the token source returned a value that is not a valid bearer token; it was "
                "not sent",
                source=result.source,
                scopes=self.scopes,
            )
            if self.on_error == "raise":
                raise error
            self.record(caller, error)
            self.strip(request)
            return False
        headers = request.headers
        headers["Authorization"] = "Bearer " + token
        names = _AUTHORIZATION_ONLY
        if result.headers:
            extra = _safe_headers(result.headers)
            for name, value in extra.items():
                headers[name] = value
            names += tuple(extra)
        request.extensions[APPLIED] = names
        if result.kind is IdentityKind.USER and caller is not None:
            request.extensions[APPLIED_FOR] = caller
        if _log.isEnabledFor(logging.DEBUG):
            self._log_attached(result)
        return True

    @staticmethod
    def strip(request: Request) -> None:
        names = request.extensions.pop(APPLIED, ())
        request.extensions.pop(APPLIED_FOR, None)
        for name in names:
            request.headers.pop(name, None)

    def strip_if_foreign(self, request: Request) -> None:
        """For the client's request hook: on a hop to an origin we were not configured for
        (a redirect), remove every header this library set; on a hop made once the caller a
        user's token was applied for has ended (a redirect answered after the user's request
        completed: the client copies the first hop's headers onto it, below the auth flow),
        likewise. An app's or a connection's own token, applied with no active caller, stays."""
        extensions = request.extensions
        if APPLIED not in extensions:
            return
        if not self.allows(request.url):
            self.strip(request)
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("redirect to a foreign origin: token headers removed")
            return
        applied_for = extensions.get(APPLIED_FOR)
        if applied_for is not None and not applied_for.active:
            self.strip(request)
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("a hop after the caller ended: token headers removed")


def _bound_lookup(
    cached_token: Callable[..., TokenResult | None],
    scopes: tuple[str, ...],
    client_capabilities: tuple[str, ...],
) -> Callable[[Caller], TokenResult | None]:
    """``cached_token`` bound to one ``EntraAuth``'s scopes, for a chain without
    ``hit_lookup``."""

    def lookup(caller: Caller) -> TokenResult | None:
        return cached_token(scopes, caller=caller, client_capabilities=client_capabilities)

    return lookup


def _mark_header_safe(result: TokenResult) -> bool:
    """Whether ``result.token`` can go into an HTTP header; remembered on the result.

    isprintable() rejects CR/LF and control characters: no header injection, and no encoding
    error inside the client (which would kill an MCP connection). Scanning a 1.5 KB token
    costs ~4 us, so a result that passed is marked (a cached result is the same object on
    every hit: the hit path reads one attribute). The mark lives and dies with the result, so
    nothing here keeps a token alive after the cache dropped it (evicted, or invalidated after
    a 401)."""
    token = result.token
    if not (token and token.isascii() and token.isprintable() and " " not in token):
        return False
    mark_header_safe(result)
    return True


def _safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower() if isinstance(name, str) else ""
        if (
            not lname
            or lname in _RESERVED
            or not lname.isascii()
            or not all(c.isalnum() or c in "-_" for c in lname)
            or not isinstance(value, str)
            or not value.isascii()
            or not value.isprintable()
        ):
            continue  # dropped, never half-applied
        out[lname] = value
    return out


def _challenges_of(response: Response) -> list[str]:
    """The ``WWW-Authenticate`` values of ``response`` (none when it has no headers)."""
    headers = getattr(response, "headers", None)
    get_list = getattr(headers, "get_list", None)
    return list(get_list("www-authenticate")) if get_list is not None else []


def _replayable(request: Request) -> bool:
    """A request can be sent again only if its body is in memory (not a consumed stream)."""
    try:
        request.content  # noqa: B018 - raises RequestNotRead for a streaming body
    except Exception:
        return False
    return True
