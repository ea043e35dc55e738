"""Deterministic building blocks to run an Agent Framework agent with no model and no network.

``ScriptedChatClient`` answers every turn the same way: it asks for one named tool, then
answers with the tool's result as text. Tests and ``entra-passthrough demo`` share it, so a
hosted agent (``ResponsesHostServer``) and our MCP tool run end to end on loopback::

    client = ScriptedChatClient(tool="whoami")
    agent = Agent(client=client, tools=[tool], middleware=[EntraToolMiddleware()])
    response = await agent.run("who am I?")
    assert "oid=" in response.text
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from agent_framework import (
    BaseChatClient,
    ChatMiddlewareLayer,
    ChatResponse,
    ChatResponseUpdate,
    Content,
    FunctionInvocationLayer,
    Message,
    ResponseStream,
)

__all__ = ["ScriptedChatClient"]


def _result_text(content: Content) -> str:
    result = getattr(content, "result", None)
    if isinstance(result, str):
        return result
    if isinstance(result, list):
        parts = [getattr(item, "text", None) for item in result]
        return "\n".join(p for p in parts if isinstance(p, str))
    if result is None:
        return str(getattr(content, "exception", None) or "")
    return json.dumps(result, default=str)


class ScriptedChatClient(
    FunctionInvocationLayer[Any], ChatMiddlewareLayer[Any], BaseChatClient[Any]
):
    """A chat "model" that calls ``tool`` (with ``arguments``) once per user turn, then answers
    ``"<prefix><tool result>"``. Deterministic, no network; streaming and non-streaming.
    ``input_argument="who"`` passes the user's message text as that tool argument (tests use it
    to tag each call with who asked); ``before_call`` is awaited before the tool is requested
    (tests use it to hold a background run until its POST has returned).

    The tool name is the *local* function name the agent exposes (the MCP tool's remote name
    unless you set ``tool_name_prefix``).

    >>> agent = Agent(client=ScriptedChatClient(tool="whoami"), tools=[tool])
    """

    def __init__(
        self,
        *,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        input_argument: str | None = None,
        prefix: str = "tool said: ",
        before_call: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.tool = tool
        self.arguments = dict(arguments or {})
        self.input_argument = input_argument
        self.prefix = prefix
        self.before_call = before_call
        self._ids = itertools.count(1)

    def _turn(self, messages: Sequence[Message]) -> list[Content]:
        # Only the current turn counts: the contents after the last user message.
        start = 0
        for index, message in enumerate(messages):
            if message.role == "user":
                start = index
        arguments = dict(self.arguments)
        if self.input_argument is not None and messages:
            arguments[self.input_argument] = messages[start].text
        results = [
            content
            for message in messages[start:]
            for content in message.contents
            if content.type == "function_result"
        ]
        if results:
            return [Content.from_text(self.prefix + _result_text(results[-1]))]
        call_id = f"call_{next(self._ids)}"
        return [
            Content.from_function_call(
                call_id=call_id, name=self.tool, arguments=json.dumps(arguments)
            )
        ]

    def _inner_get_response(
        self,
        *,
        messages: Sequence[Message],
        stream: bool,
        options: Mapping[str, Any],
        **kwargs: Any,
    ) -> Awaitable[ChatResponse[Any]] | ResponseStream[ChatResponseUpdate, ChatResponse[Any]]:
        contents = self._turn(messages)

        async def hold() -> None:
            if self.before_call is not None and contents[0].type == "function_call":
                await self.before_call()

        if stream:

            async def updates() -> AsyncIterator[ChatResponseUpdate]:
                await hold()
                yield ChatResponseUpdate(role="assistant", contents=contents)

            return ResponseStream(updates(), finalizer=ChatResponse.from_updates)

        async def respond() -> ChatResponse[Any]:
            await hold()
            return ChatResponse(messages=[Message(role="assistant", contents=contents)])

        return respond()
