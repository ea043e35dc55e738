"""Function middleware: consent and token errors reach the agent run in the right shape.

``EntraMCPTool`` already resolves each call's token in the tool call's task and raises
``UserInputRequiredException([oauth_consent_request])`` for consent. This middleware applies the
same mapping to every function of the agent, including tools we did not build: an MCP server's
URL elicitation (-32042), Foundry's gateway consent error (-32006), or a ``ConsentRequired``
raised by your own function tools.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent_framework import FunctionInvocationContext, FunctionMiddleware, MiddlewareFailure
from agent_framework.exceptions import UserInputRequiredException

from ..mcp import consent_from_exception
from ._signals import consent_exception

__all__ = ["EntraToolMiddleware"]


class EntraToolMiddleware(FunctionMiddleware):
    """Turn consent signals from any tool into an ``oauth_consent_request`` the host can show.

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
            if consent is None:
                raise
            raise consent_exception(consent, server_label=label) from exc
