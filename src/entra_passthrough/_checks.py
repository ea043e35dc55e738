"""Checks of configured values shared by every constructor: a duration in seconds, a count,
a tenant id, a client id and a client secret.

A wrong value is a ``ConfigurationError`` with a fix when the object is built, never a bare
``TypeError``/``ValueError`` from a comparison at the first request, and never NaN, infinity or
a negative number taken silently. Imports nothing of the library but its errors, so that every
module can use them at import time.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

from ._errors import GUID, ConfigurationError


def seconds(value: object, *, what: str, low: float, high: float, above_low: bool = False) -> float:
    """A configured duration: a finite number (not a bool) from ``low`` to ``high`` (above
    ``low`` when ``above_low``), else a ``ConfigurationError`` naming ``what`` (a string such as
    ``"60"`` used to end in a ``TypeError``, NaN was accepted)."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if (
        number is None
        or not math.isfinite(number)
        or number < low
        or number > high
        or (above_low and number == low)
    ):
        bound = "above" if above_low else "at least"
        upper = "" if math.isinf(high) else f" and at most {high:g}"
        raise ConfigurationError(
            f"{what} must be a number of seconds, {bound} {low:g}{upper}.",
            fix=f"pass {what}= a number of seconds in that range (an int or a float).",
        )
    return float(number)


def whole_number(value: object, *, what: str, low: int, high: int | None = None, fix: str) -> int:
    """A configured count (entries, connections, tenants, retries): an ``int`` (not a bool)
    from ``low`` to ``high``, else a ``ConfigurationError`` naming ``what``. A string such as
    ``"10"`` used to end in a ``TypeError`` from a comparison, and a float such as ``2.5`` or
    a count of 0 was kept until the first request that used it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e6 is a whole number (and was taken before these checks)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{what} must be a whole number, not {type(value).__name__}.", fix=fix
        )
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"{what} must be {bounds}, not {value}.", fix=fix)
    return value


#: The authorities that name no tenant: a caller's token always names its tenant by GUID
#: (``tid``), which never equals one of these, and client credentials there are AADSTS50059.
TENANTLESS = frozenset({"common", "organizations", "consumers"})
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A tenant's domain name (contoso.onmicrosoft.com), as DNS writes it (ASCII: punycode).
_TENANT_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TENANT_FIX = (
    "the Directory (tenant) ID, a GUID without braces (Entra admin center > Overview), or "
    "the tenant's domain (contoso.onmicrosoft.com)"
)


def _named(what: str, variable: str | None, owner: str) -> str:
    named = f"{what} ({variable})" if variable else what
    return f"{owner}: {named}" if owner else named


def _set(what: str, variable: str | None) -> str:
    if what.isupper():  # an environment variable itself
        return f"set {what} to"
    return f"pass {what}=" + (f" (or set {variable})" if variable else "")


def tenant_id(
    value: object,
    *,
    what: str = "tenant_id",
    variable: str | None = None,
    owner: str = "",
    tenantless: bool = False,
    entry: bool = False,
) -> str:
    """A configured tenant: a GUID or a domain name, else a ``ConfigurationError`` naming
    ``what`` (and ``variable``, the environment variable ``from_env()`` reads it from). A
    tenant-less authority (``common``, ``organizations``, ``consumers``) too, unless
    ``tenantless``: no caller's ``tid`` ever equals it, so every request would be refused.
    The value is never echoed (a secret pasted into the wrong variable), only an alias.
    ``entry``: the value is one entry of the list ``what``."""
    name = _named(what, variable, owner)
    if entry:
        name = f"an entry of {name}"
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{name} must be a string, not {type(value).__name__}.",
            fix=f"{_set(what, variable)} {_TENANT_FIX}.",
        )
    if value.lower() in TENANTLESS and not tenantless:
        whose = (
            " (the tenant of personal Microsoft accounts, which on-behalf-of and app tokens "
            "do not serve)"
            if value.lower() == "consumers"
            else ""
        )
        raise ConfigurationError(
            f"{name} is {value.lower()!r}, which names no tenant{whose}: no caller's tid (a "
            "GUID) matches it, so every request would be refused.",
            fix=f"{_set(what, variable)} your organisation's tenant: {_TENANT_FIX}; list other "
            "tenants in allowed_tenants.",
        )
    if not (GUID.fullmatch(value) or _TENANT_NAME.fullmatch(value)):
        raise ConfigurationError(
            f"{name} is not a tenant id (a GUID or a domain name: letters, digits, '-' and "
            "'.' only).",
            fix=f"{_set(what, variable)} {_TENANT_FIX}.",
        )
    return value


def client_id(
    value: object, *, what: str = "client_id", variable: str | None = None, owner: str = ""
) -> str:
    """A configured client (application) id: a non-empty string with no whitespace or control
    character anywhere (a space copied with the id made every caller's audience "different",
    and the two looked the same in the error), else a ``ConfigurationError``."""
    name = _named(what, variable, owner)
    fix = f"{_set(what, variable)} the app registration's Application (client) ID, a GUID."
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}.", fix=fix)
    if not value:
        raise ConfigurationError(f"{name} is empty.", fix=fix)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(
            f"{name} holds whitespace or a control character (copied with more than the id?).",
            fix=fix + " Remove the spaces or line breaks around it.",
        )
    wrapped = wrapping(value)
    if wrapped:
        raise ConfigurationError(f"{name} is {wrapped}.", fix=fix + " Remove them.")
    return value


def wrapping(value: str) -> str | None:
    """What wraps an id that no Entra id has around it: quotes a .env file or a shell kept
    (``"<guid>"``), or braces (``{<guid>}``, the registry's form). Every caller's token was then
    refused as for another audience, the quotes visible but the variable not named."""
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        return "wrapped in quotes (a .env file or a shell kept them)"
    if value[:1] == "{" or value[-1:] == "}":
        return "wrapped in braces (the registry's form of a GUID)"
    return None


#: A tenant id written without its dashes: a caller's ``tid`` claim always has them.
_DASHLESS_GUID = re.compile(r"[0-9A-Fa-f]{32}")
_CALLER_TENANT_FIX = (
    "the tenant's Directory (tenant) ID, a GUID (Entra admin center > Overview; for a domain, "
    "`entra-passthrough doctor` prints it, from the issuer of "
    "<authority host>/<domain>/v2.0/.well-known/openid-configuration)"
)


def caller_tenant(
    value: object, *, what: str, variable: str | None = None, owner: str = "", entry: bool = False
) -> str:
    """A tenant compared with each caller's ``tid`` claim (an entry of an on-behalf-of
    allow-list, or the home tenant when it is the allow-list), else a ``ConfigurationError``
    naming ``what`` and ``variable``. The claim is always the tenant's GUID (with dashes), so a
    domain name, a tenant-less authority, a GUID without dashes or anything that is no tenant
    id at all (braces, a URL, a path) was accepted here and refused every caller
    (``TenantNotAllowed``). A single name that is neither a GUID nor a domain stays accepted (a
    test world's tenant id). Never echoed."""
    name = _named(what, variable, owner)
    fix = f"{_set(what, variable)} {_CALLER_TENANT_FIX}."
    if entry:
        name = f"an entry of {name}"
        fix = f"{_set(what, variable)} a list of GUIDs: for each tenant, {_CALLER_TENANT_FIX}."
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}.", fix=fix)
    if GUID.fullmatch(value):
        return value
    compared = "it is compared with each caller's tid claim (the tenant's GUID)"
    if value.lower() in TENANTLESS:
        problem = f"is {value.lower()!r}, which names no tenant"
    elif _DASHLESS_GUID.fullmatch(value):
        problem = "is a tenant id without dashes; the tid claim always has them"
    elif not _TENANT_NAME.fullmatch(value):
        problem = "is not a tenant id (a GUID without braces, no URL or path)"
    elif "." in value:
        problem = "is a domain name, not the tenant's GUID"
    else:
        return value
    raise ConfigurationError(
        f"{name} {problem}: {compared}, so every caller would be refused.", fix=fix
    )


#: The longest redirect URI an app registration takes
#: (https://learn.microsoft.com/entra/identity-platform/reply-url).
REDIRECT_URI_MAX = 256
#: The hosts Entra accepts an ``http://`` redirect URI for (the localhost exceptions).
_HTTP_REDIRECT_HOSTS = frozenset({"localhost", "127.0.0.1"})


def redirect_uri(value: object, *, what: str, variable: str | None = None, owner: str = "") -> str:
    """A redirect URI put in authorize links, checked as Entra checks one
    (https://learn.microsoft.com/entra/identity-platform/reply-url): an ``https://`` URL with a
    host (``http://`` only on ``localhost`` or ``127.0.0.1``), no user info or fragment, at most
    256 characters; else a ``ConfigurationError`` naming ``what`` and ``variable``. Any text was
    taken and put in every consent link, where the user met Entra's refusal (AADSTS50011,
    AADSTS500117). Never echoed (only its scheme, when it is a short word)."""
    name = _named(what, variable, owner)
    fix = (
        f"{_set(what, variable)} a redirect URI registered on the app (Authentication > Web): "
        "https://<host>/<path>, or http://localhost or http://127.0.0.1 for local development."
    )
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}.", fix=fix)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(
            f"{name} holds whitespace or a control character (a URL has none).", fix=fix
        )
    if len(value) > REDIRECT_URI_MAX:
        raise ConfigurationError(
            f"{name} is longer than the {REDIRECT_URI_MAX} characters Entra takes.", fix=fix
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(f"{name} is not a URL (its host or port).", fix=fix) from None
    scheme = parts.scheme.lower()
    if not scheme or not host or "://" not in value:
        raise ConfigurationError(f"{name} is not an absolute URL with a host.", fix=fix)
    shown = scheme if len(scheme) <= 16 and scheme.isalpha() else "another scheme"
    if scheme != "https" and not (scheme == "http" and host in _HTTP_REDIRECT_HOSTS):
        raise ConfigurationError(
            f"{name} is not HTTPS ({shown}://...); Entra takes http:// only for localhost "
            "and 127.0.0.1 (AADSTS500117 otherwise).",
            fix=fix,
        )
    if "@" in parts.netloc or "#" in value:
        raise ConfigurationError(
            f"{name} has user info or a fragment, which a redirect URI cannot have.", fix=fix
        )
    return value


def client_secret(
    value: object, *, what: str = "client_secret", variable: str | None = None, owner: str = ""
) -> None:
    """A configured client secret, when one is given: a non-blank string, else a
    ``ConfigurationError`` (an empty secret went all the way to Entra: AADSTS7000218). Never
    echoed."""
    if value is None:
        return
    name = _named(what, variable, owner)
    fix = (
        f"{_set(what, variable)} the secret's Value (Certificates & secrets in the app "
        "registration), or use another client credential."
    )
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}.", fix=fix)
    if not value.strip():
        raise ConfigurationError(f"{name} is empty or blank.", fix=fix)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not text (a secret read from a file saved in another encoding): it
        # could not be put into the request, and every token request failed as a retried
        # transport failure.
        raise ConfigurationError(
            f"{name} holds characters that are not text (not UTF-8).", fix=fix
        ) from None


def registration(
    owner: str,
    credential: object,
    *,
    tenant_variable: str | None,
    client_variable: str | None,
    secret_variable: str | None,
    tenantless: bool = False,
) -> None:
    """The tenant, client id and client secret of an ``AppCredential`` (built from the simple
    path's keywords or given): each checked above, the errors naming ``owner``'s keyword and
    the variable ``from_env()`` reads it from. ``tenantless``: ``common``/``organizations``
    are accepted (a multi-tenant app with ``allowed_tenants``: each caller's token is requested
    in its own tenant)."""
    tenant_id(
        getattr(credential, "tenant_id", None),
        variable=tenant_variable,
        owner=owner,
        tenantless=tenantless,
    )
    client_id(getattr(credential, "client_id", None), variable=client_variable, owner=owner)
    client_secret(getattr(credential, "client_secret", None), variable=secret_variable, owner=owner)
