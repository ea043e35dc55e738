"""Function middleware: consent and token errors reach the agent run in the right shape.

``EntraMCPTool`` already resolves each call's token in the tool call's task and raises
``UserInputRequiredException([oauth_consent_request])`` for consent. This middleware applies the
same mapping to every function of the agent, including tools we did not build: an MCP server's
URL elicitation (-32042), Foundry's gateway consent error (-32006), or a ``ConsentRequired``
raised by your own function tools. It also ends the run, with the explanation the host shows its
client, when the caller's own token cannot be used (``CallerTokenUnusable``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent_framework import FunctionInvocationContext, FunctionMiddleware, MiddlewareFailure
from agent_framework.exceptions import UserInputRequiredException

from .._caller import active_caller
from .._errors import AssertionNotUsable, TenantNotAllowed, TokenAcquisitionError
from ..mcp import consent_from_exception, exception_chain
from ._signals import CallOutcomeUnknown, consent_exception, middleware_failure_type

__all__ = ["EntraToolMiddleware"]

#: The errors that say the caller's own token cannot be used, whatever the tool: a token issued
#: for another audience, expired (or not valid yet), not a JWT, app-only, or refused by Entra as
#: such (AADSTS50013/500131/500133/7000114/240002: ``AssertionNotUsable``), or one from a tenant the
#: app does not serve (``TenantNotAllowed``). Nothing the model does in this run can help:
#: every call needing the user's token fails the same way, and the client must send another.
#: Not ``ConsentRequired`` (its own shape, above), ``InteractionRequired`` (one resource's
#: conditional access: other tools may work), ``NoCallerError`` (no token at all: code outside
#: a request), ``PolicyViolation``, ``Throttled``, ``EntraError`` or ``SourceUnavailable``
#: (about the policy, Entra or the host, not the token), nor a server's refusal of the token
#: of a call (``TokenVerificationError``: that server's scopes or roles).
_UNUSABLE_TOKEN = (AssertionNotUsable, TenantNotAllowed)


class EntraToolMiddleware(FunctionMiddleware):
    """Turn consent signals from any tool into an ``oauth_consent_request`` the host can show,
    and a caller whose own token cannot be used into a failed run that says why.

    >>> agent = Agent(client=client, tools=[tool], middleware=[EntraToolMiddleware()])
    """

    def __init__(self, *, server_label: str | None = None) -> None:
        self.server_label = server_label

    async def process(
        self,
        context: FunctionInvocationContext,
        call_next: Callable[[], Awaitable[None]],
    ) -> None:
        label = self.server_label or context.function.name
        try:
            await call_next()
        except (UserInputRequiredException, MiddlewareFailure):
            # Already in the shape that ends the run (a consent, or its explained failure).
            raise
        except Exception as exc:
            consent = consent_from_exception(exc, server_label=label)
            if consent is not None:
                raise consent_exception(consent, server_label=label) from exc
            unusable = unusable_caller_token(exc)
            if unusable is None:
                raise
            raise caller_token_unusable(unusable) from exc


def unusable_caller_token(exc: BaseException) -> TokenAcquisitionError | None:
    """The error in ``exc`` (its causes, wrapped args) that says the token of the run's caller
    cannot be used (``_UNUSABLE_TOKEN``), while that caller is active: the token came with the
    request, and it is that token that cannot work. ``None`` otherwise, and for a call that may
    have run (``CallOutcomeUnknown``: the model must hear that, whatever stopped a resend), and
    for a caller that ended during the run (a background run past its token's expiry: the model
    sees the tool's error, and can still report what the run did before)."""
    if active_caller() is None:
        return None
    found: TokenAcquisitionError | None = None
    # A token error the chain raised is its decision: not one it met first and outranked.
    for current in exception_chain(exc, decided=(TokenAcquisitionError,)):
        if isinstance(current, CallOutcomeUnknown):
            return None
        if found is None and isinstance(current, _UNUSABLE_TOKEN):
            found = current
    return found


def caller_token_unusable(error: TokenAcquisitionError) -> MiddlewareFailure:
    """A ``MiddlewareFailure`` (agent-framework ends the run with it rather than hand it to the
    model as a tool result, which it shows as "Error: Function failed.") in the host's public
    failure shape (``ResponsesHostServer`` shows its message as the response's error): the
    same explanation as when that caller's request is the one that opens the tool. ``.error``
    is the typed error. Its message never holds a token."""
    return middleware_failure_type("CallerTokenUnusable")(error)
