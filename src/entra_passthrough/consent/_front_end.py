"""The standalone broker behind a TLS-terminating front end (Azure Container Apps or App Service
ingress, Application Gateway, Front Door, a reverse proxy): plain HTTP on the container's
interface, trusted only from the proxy addresses the operator names.

``FrontEnd`` wraps the broker's ASGI app. A request whose peer address is one of the trusted
proxies takes its scheme from ``X-Forwarded-Proto`` and its client address from
``X-Forwarded-For`` (what uvicorn's ``--proxy-headers --forwarded-allow-ips`` do); any other
request gets no forwarded-header trust at all. Whatever the connection, a request the browser did
not send over HTTPS is refused: one that reached the port without going through the front end, or
that the front end received over plain HTTP. The broker builds no URL from the request (its
redirect URIs are configured, its cookies are always ``Secure``), so the forwarded host is not
needed and not read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

from .._errors import ConfigurationError
from ._pages import error_response

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FIX = (
    "name the front end's addresses, comma-separated: IP addresses or networks, e.g. "
    "'10.0.0.0/23' (the Container Apps environment's infrastructure subnet), or '*' when nothing "
    "but the front end can reach the broker's port"
)


class TrustedProxies:
    """The peers whose ``X-Forwarded-*`` headers are believed: IP addresses and networks, or
    ``*`` (any peer: only when nothing but the front end can reach the port)."""

    def __init__(self, networks: Sequence[Network], *, any_peer: bool = False) -> None:
        self.networks = tuple(networks)
        self.any_peer = any_peer

    @classmethod
    def parse(cls, value: str | Sequence[str], *, where: str) -> TrustedProxies:
        """From ``"10.0.0.0/23, 10.1.0.4"`` or a list; ``ConfigurationError`` naming ``where``
        for an empty list or anything that is not an IP address or network (no host names:
        the peer address is what is checked)."""
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",")]
        elif isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
            items = [item.strip() for item in value]
        else:
            raise ConfigurationError(f"{where} must be a string or a list of strings.", fix=_FIX)
        items = [item for item in items if item]
        if not items:
            raise ConfigurationError(f"{where} names no proxy address.", fix=_FIX)
        if "*" in items:
            if len(items) > 1:
                raise ConfigurationError(f"{where}: '*' stands alone.", fix=_FIX)
            return cls((), any_peer=True)
        networks: list[Network] = []
        for item in items:
            try:
                network = ipaddress.ip_network(item, strict=True)
            except ValueError:
                raise ConfigurationError(
                    f"{where}: {item[:64]!r} is not an IP address or network.", fix=_FIX
                ) from None
            networks.append(_unmapped(network))
        return cls(networks)

    def __contains__(self, host: object) -> bool:
        if self.any_peer:
            return True
        if not isinstance(host, str):
            return False
        address = _address(host)
        return address is not None and self.holds(address)

    def holds(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return self.any_peer or any(address in network for network in self.networks)

    def __str__(self) -> str:
        return "*" if self.any_peer else ",".join(str(network) for network in self.networks)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/120``, as dual-stack logs write them) as
    the IPv4 network it maps: peers are compared as IPv4 addresses (``_address``)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network(f"{base}/{network.prefixlen - 96}")
    return network


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a peer or an ``X-Forwarded-For`` entry (``1.2.3.4``, ``1.2.3.4:5678``,
    ``::1``, ``[::1]:80``); None for anything else."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every comma-separated value of every ``name`` header, in order."""
    found: list[str] = []
    for key, value in headers:
        if key == name:
            found.extend(part.strip() for part in value.decode("latin-1").split(","))
    return found


class FrontEnd:
    """ASGI: the broker's app behind the trusted proxies (see the module's docstring)."""

    def __init__(self, app: Any, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # In place, as uvicorn's ProxyHeadersMiddleware does: the server's access log reads
        # the client from this scope.
        peer = scope.get("client")
        # With a front end named, only what came through it over HTTPS is served, whatever the
        # connection: a peer that reaches the port directly (over TLS too, when the front end
        # re-encrypts) would skip the front end's rules.
        secure = False
        if peer and peer[0] in self.trusted:
            headers = scope.get("headers", [])
            protos = _values(headers, b"x-forwarded-proto")
            if protos:
                # Every hop the front end reports must have been HTTPS.
                secure = all(proto.lower() == "https" for proto in protos)
                scheme = "https" if secure else "http"
                if scope["type"] == "websocket":
                    scheme = scheme.replace("http", "ws")
                scope["scheme"] = scheme
            client = _forwarded_client(_values(headers, b"x-forwarded-for"), self.trusted)
            if client is not None:
                scope["client"] = (client, 0)
        if not secure:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = error_response(
                Request(scope),
                "https_required",
                "This sign-in service answers only HTTPS requests through its front end; open "
                "the link from the chat again.",
                status=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: ``X-Forwarded-For`` entries looked at, from the right: each proxy of a chain adds one, and a
#: client can send any number of its own (bounded work per request).
_MAX_HOPS = 16


def _forwarded_client(entries: list[str], trusted: TrustedProxies) -> str | None:
    """The client as the trusted proxies saw it: walking from the right (each proxy appends
    the address it received from), the first entry that is not itself a trusted proxy; the
    entries left of it are the client's own claims and are never read. None when the entry at
    that position is not an address (nothing better is known than the peer). Only the access
    log shows it: nothing in the broker decides on the client address."""
    for seen, entry in enumerate(reversed(entries), start=1):
        address = _address(entry)
        if address is None:
            return None
        if trusted.any_peer or not trusted.holds(address) or seen >= _MAX_HOPS:
            # With '*' every entry is "trusted": the one the front end appended is the client.
            return str(address)
    return None
