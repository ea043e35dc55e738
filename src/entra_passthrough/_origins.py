"""Which origins may receive a token: normalised (scheme, host, port) and the HTTPS rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._redact import REDACTED

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


def shown_url(url: object, *, path: bool = True) -> str | None:
    """``url`` as it may be shown to an operator: no userinfo, every query value redacted
    (``?code=[redacted]``: an Azure Functions or API Management key), no fragment; its origin
    only without ``path``. ``None`` for a value with no scheme and host: it may not be a URL at
    all (a secret pasted in the wrong place), so it is not shown."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except (ValueError, TypeError, AttributeError):  # a bad port, an unclosed IPv6 bracket
        return None
    if not parts.scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}"
    if not path:
        return shown
    shown += parts.path
    if parts.query:
        fields = parts.query.split("&")
        # a part with no '=' (``?<key>``) may be the secret itself: redacted whole
        shown += "?" + "&".join(
            f"{field.split('=', 1)[0]}={REDACTED}" if "=" in field and field[0] != "=" else REDACTED
            for field in fields
        )
    return shown


def _shown(text: str) -> str:
    """`` 'scheme://host[:port]'`` of a configured origin for an error, or ``""``: never its
    user info, path, query or fragment (``shown_url``), nor what is not an http(s) URL with a
    host, or a host with blanks or control characters (a secret pasted into the wrong place)."""
    shown = shown_url(text.strip(), path=False)
    if shown is None or not shown.startswith(("https://", "http://")):
        return ""
    if any(c.isspace() or not c.isprintable() for c in shown):
        return ""
    return f" {shown}"


def parse_origin(text: str, *, allow_insecure_loopback: bool) -> OriginKey:
    """Parse a configured origin such as ``https://mcp.contoso.com`` (a trailing ``/`` is
    allowed; paths, queries, user info and wildcards are not: an origin is a security
    boundary, not a prefix). Errors name the origin as scheme, host and port only."""
    if not isinstance(text, str) or not text:
        raise ConfigurationError(
            f"an origin must be a non-empty string, not {type(text).__name__}"
            f"{' (empty)' if isinstance(text, str) else ''}",
            fix="origins=['https://mcp.contoso.com']",
        )
    shown = _shown(text)
    try:
        parts = urlsplit(text.strip())
    except ValueError:  # an unclosed IPv6 bracket
        raise ConfigurationError(
            "an origin is not a valid URL", fix="origins=['https://mcp.contoso.com']"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(
            "an origin must start with https:// (or http:// on loopback)",
            fix="origins=['https://mcp.contoso.com']",
        )
    if parts.username or parts.password or "@" in parts.netloc:
        raise ConfigurationError(
            f"origin{shown} must not contain a user name or password",
            fix="pass the origin only, e.g. 'https://mcp.contoso.com'",
        )
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ConfigurationError(
            f"origin{shown} must not contain a query or fragment",
            fix="pass the origin only, e.g. 'https://mcp.contoso.com'",
        )
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"origin{shown} has a path; tokens are bound to whole origins (scheme, host, port)",
            fix="pass the origin only, e.g. 'https://mcp.contoso.com'",
        )
    host = parts.hostname
    if not host or "*" in host:
        raise ConfigurationError(
            f"origin{shown} has no host (wildcards are not supported)",
            fix="name each origin in full, e.g. 'https://mcp.contoso.com'",
        )
    try:
        port = parts.port
        if not host.isascii():
            # As httpx and httpx2 encode a URL's host (the ``idna`` package: IDNA 2008), not
            # Python's "idna" codec (IDNA 2003, which maps "straße.de" to "strasse.de", another
            # domain): the origin configured is the host requests go to, byte for byte.
            import idna  # requests' dependency, so always installed with MSAL

            host = idna.encode(host.lower()).decode("ascii")
    except (ValueError, UnicodeError):  # idna.IDNAError is a UnicodeError
        raise ConfigurationError(
            f"origin{shown} is not a valid URL origin (its port or host cannot be read)",
            fix="write it as https://<host>[:<port>], a non-ASCII host in its punycode form",
        ) from None
    host = host.lower()
    if scheme == "http" and not (allow_insecure_loopback and is_loopback(host)):
        raise ConfigurationError(
            f"origin{shown} is plain HTTP; a bearer token is only sent over HTTPS "
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
