"""``entra_mcp_tool`` and ``entra_middleware``: the integration's two front doors (re-exported
by ``entra_passthrough.agent_framework``)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Collection, Sequence
from typing import Any, Literal, TypedDict, Unpack, overload
from urllib.parse import urlsplit

import httpx2

from .._auth import EntraAuth
from .._errors import ConfigurationError
from .._flow import Chain
from .._user_key import UserKey
from ._middleware import EntraToolMiddleware
from ._pool import EntraMCPToolPool, PoolOptions
from ._tool import EntraMCPTool

__all__ = ["MCPToolOptions", "entra_mcp_tool", "entra_middleware"]


class MCPToolOptions(TypedDict, total=False):
    """The options of ``entra_mcp_tool`` beyond the Entra ones, listed once (the overloads and
    the implementation take them as ``**options``). ``description`` to ``terminate_on_close``
    go to agent-framework's ``MCPStreamableHTTPTool``; ``timeout``/``verify`` configure its
    httpx2 client; ``client_capabilities`` are the client's CAE capabilities (``["cp1"]``).
    ``auth``/``headers`` are accepted only to warn: ``MCPStreamableHTTPTool`` silently drops
    them, and here the token comes from ``chain``."""

    description: str | None
    approval_mode: Any
    allowed_tools: Collection[str] | None
    tool_name_prefix: str | None
    load_prompts: bool
    request_timeout: int | None
    terminate_on_close: bool | None
    timeout: httpx2.Timeout | None
    verify: Any
    client_capabilities: Sequence[str]
    auth: Any
    headers: Any


def _origin_of(url: str) -> str:
    # The URL is never echoed: MCP URLs sometimes carry a key (query string or user info).
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(
            "the MCP url is not an absolute http(s) URL (the url is not shown: it may carry a "
            "key).",
            fix="pass the MCP server's endpoint as https://host[:port]/path (http:// only for "
            "a server on this machine), e.g. https://mcp.contoso.com/mcp.",
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "the MCP url must not contain user info (user:password@): it would be sent as "
            "Basic credentials beside the user's token.",
            fix="remove the user info from the url; the tool authenticates with the user's "
            "token for the MCP server's scopes.",
        )
    return f"{parts.scheme}://{parts.netloc}"


@overload
def entra_mcp_tool(
    name: str,
    url: str,
    *,
    chain: Chain,
    scopes: Sequence[str],
    origins: Sequence[str] | None = ...,
    server_label: str | None = ...,
    per_user: Literal[False] = ...,
    **options: Unpack[MCPToolOptions],
) -> EntraMCPTool: ...


@overload
def entra_mcp_tool(
    name: str,
    url: str,
    *,
    chain: Chain,
    scopes: Sequence[str],
    origins: Sequence[str] | None = ...,
    server_label: str | None = ...,
    per_user: Literal[True] | PoolOptions,
    **options: Unpack[MCPToolOptions],
) -> EntraMCPToolPool: ...


def entra_mcp_tool(
    name: str,
    url: str,
    *,
    chain: Chain,
    scopes: Sequence[str],
    origins: Sequence[str] | None = None,
    server_label: str | None = None,
    per_user: bool | PoolOptions = False,
    **options: Unpack[MCPToolOptions],
) -> EntraMCPTool | EntraMCPToolPool:
    """A user-correct MCP tool for an Entra-protected server.

    ``per_user=False`` (default): one shared connection for every user (servers that neither
    bind sessions to a principal nor filter ``tools/list`` per user, e.g. stateless mcp 2.x).
    ``per_user=True`` or ``PoolOptions(...)``: an ``EntraMCPToolPool`` of per-user connections
    (principal-bound sessions, per-user tool lists); get the caller's tool with
    ``await pool.tool()`` in a ``ResponsesHostServer(agent=<factory>)``.

    ``origins`` default to the URL's origin: the only place the token is ever sent. The other
    options (``MCPToolOptions``): ``description``, ``approval_mode``, ``allowed_tools``,
    ``tool_name_prefix``, ``load_prompts``, ``request_timeout`` and ``terminate_on_close`` are
    passed to ``MCPStreamableHTTPTool``; ``timeout``/``verify`` configure its httpx2 client;
    ``client_capabilities``. ``auth=``/``headers=`` are accepted only to warn:
    ``MCPStreamableHTTPTool`` silently ignores them, and here the token comes from ``chain``.

    >>> tool = entra_mcp_tool("files", "https://mcp.contoso.com/mcp", chain=chain,
    ...                       scopes=["api://<mcp-app>/.default"])
    """
    unknown = sorted(set(options) - set(MCPToolOptions.__annotations__))
    if unknown:
        raise TypeError(f"entra_mcp_tool() got unexpected keyword arguments: {unknown}")
    for option in ("auth", "headers"):
        if option in options:
            del options[option]
            warnings.warn(
                f"entra_mcp_tool({option}=...) is ignored: agent-framework's "
                f"MCPStreamableHTTPTool silently drops {option}= (it only takes http_client, "
                "static_headers or header_provider). The Entra token comes from chain=; pass "
                "other fixed headers through a header-free design or your own tool.",
                UserWarning,
                stacklevel=2,
            )
    allowed = list(origins) if origins is not None else [_origin_of(url)]
    client_capabilities = options.get("client_capabilities", ())
    common: dict[str, Any] = {
        **options,
        "chain": chain,
        "scopes": scopes,
        "origins": allowed,
        "server_label": server_label,
    }
    if not isinstance(per_user, bool | PoolOptions):
        # ``per_user is False`` below: None or 0 would otherwise have built a pool.
        raise ConfigurationError(
            f"per_user must be True, False or a PoolOptions, not {type(per_user).__name__}.",
            fix="pass per_user=False (one shared connection), True (a per-user pool with the "
            "default bounds) or PoolOptions(max_connections=..., idle_timeout=...).",
        )
    if per_user is False:
        return EntraMCPTool(name, url, mode="shared", **common)
    pool_options = per_user if isinstance(per_user, PoolOptions) else PoolOptions()

    def make(pool: EntraMCPToolPool, key: UserKey) -> EntraMCPTool:
        return EntraMCPTool(name, url, mode="per_user", pool=pool, pool_key=key, **common)

    # The pool resolves each caller's token before leasing and keys by the identity Entra
    # issued (see EntraMCPToolPool); record mode: nothing here raises inside a transport.
    resolver = EntraAuth(
        chain,
        scopes=scopes,
        origins=allowed,
        on_error="record",
        client_capabilities=client_capabilities,
    )

    def unpooled() -> EntraMCPTool:
        return EntraMCPTool(name, url, mode="per_user", **common)

    return EntraMCPToolPool(
        make,
        resolve=functools.partial(resolver.acquire_async, call=True),
        unpooled=unpooled,
        options=pool_options,
        name=name,
        scopes=scopes,
    )


def entra_middleware(*, server_label: str | None = None) -> list[Any]:
    """The middleware list for an ``Agent`` using Entra-protected tools.

    >>> Agent(client=client, tools=[tool], middleware=entra_middleware())
    """
    return [EntraToolMiddleware(server_label=server_label)]
