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
) -> str:
    """A configured tenant: a GUID or a domain name, else a ``ConfigurationError`` naming
    ``what`` (and ``variable``, the environment variable ``from_env()`` reads it from). A
    tenant-less authority (``common``, ``organizations``, ``consumers``) too, unless
    ``tenantless``: no caller's ``tid`` ever equals it, so every request would be refused.
    The value is never echoed (a secret pasted into the wrong variable), only an alias."""
    name = _named(what, variable, owner)
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
