"""Which origins may receive a token: normalised (scheme, host, port) and the HTTPS rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from ._errors import ConfigurationError

_DEFAULT_PORTS = {"https": 443, "http": 80}

#: (scheme, host, port): host lower-case ASCII (IDNA), IPv6 without brackets.
OriginKey = tuple[str, str, int]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1). Never resolves a name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_key(scheme: str, raw_host: bytes | str, port: int | None) -> OriginKey | None:
    """The key of a request URL's origin; ``None`` for schemes that never carry a token."""
    scheme = scheme.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is None:
        return None
    host = raw_host.decode("ascii", "replace") if isinstance(raw_host, bytes) else raw_host
    return (scheme, host.lower(), default if port is None else port)


def parse_origin(text: str, *, allow_insecure_loopback: bool) -> OriginKey:
    """Parse a configured origin such as ``https://mcp.contoso.com`` (a trailing ``/`` is
    allowed; paths, queries, user info and wildcards are not: an origin is a security
    boundary, not a prefix)."""
    if not isinstance(text, str) or not text:
        raise ConfigurationError(f"origin {text!r} is not a non-empty string")
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(
            f"origin {text!r} must start with https:// (or http:// on loopback)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(f"origin {text!r} must not contain user info, query or fragment")
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"origin {text!r} has a path; tokens are bound to whole origins (scheme, host, port)",
            fix="pass the origin only, e.g. 'https://mcp.contoso.com'",
        )
    host = parts.hostname
    if not host or "*" in host:
        raise ConfigurationError(f"origin {text!r} has no host (wildcards are not supported)")
    try:
        port = parts.port
        if not host.isascii():
            # As httpx and httpx2 encode a URL's host (the ``idna`` package: IDNA 2008), not
            # Python's "idna" codec (IDNA 2003, which maps "straße.de" to "strasse.de", another
            # domain): the origin configured is the host requests go to, byte for byte.
            import idna  # requests' dependency, so always installed with MSAL

            host = idna.encode(host.lower()).decode("ascii")
    except (ValueError, UnicodeError) as exc:  # idna.IDNAError is a UnicodeError
        raise ConfigurationError(f"origin {text!r} is not a valid URL origin") from exc
    host = host.lower()
    if scheme == "http" and not (allow_insecure_loopback and is_loopback(host)):
        raise ConfigurationError(
            f"origin {text!r} is plain HTTP; a bearer token is only sent over HTTPS "
            "(except to a loopback address when allow_insecure_loopback=True)",
            fix="use the https:// origin of the service",
        )
    return (scheme, host, _DEFAULT_PORTS[scheme] if port is None else port)


def parse_origins(origins: Iterable[str], *, allow_insecure_loopback: bool) -> frozenset[OriginKey]:
    if isinstance(origins, str):
        origins = (origins,)  # a lone string is one origin, not a list of characters
    keys = frozenset(
        parse_origin(o, allow_insecure_loopback=allow_insecure_loopback) for o in origins
    )
    if not keys:
        raise ConfigurationError(
            "EntraAuth needs at least one origin: a token is attached only to the origins you name",
            fix="origins=['https://mcp.contoso.com']",
        )
    return keys


def format_origin(key: OriginKey) -> str:
    scheme, host, port = key
    shown = f"[{host}]" if ":" in host else host
    return (
        f"{scheme}://{shown}"
        if _DEFAULT_PORTS.get(scheme) == port
        else f"{scheme}://{shown}:{port}"
    )
