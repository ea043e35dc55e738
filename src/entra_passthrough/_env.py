"""Reading configuration from environment variables (``from_env()`` of the chain and sources).

azure-identity's names where they mean the same thing (``AZURE_TENANT_ID``,
``AZURE_AUTHORITY_HOST``, ``AZURE_FEDERATED_TOKEN_FILE``, ``IDENTITY_ENDPOINT``,
``IDENTITY_HEADER``, ``AZURE_CLIENT_ID`` = the managed identity), ``ENTRA_PASSTHROUGH_*`` for
ours. docs/configuration.md lists every variable; a test checks the list against this module.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from collections.abc import Mapping

from ._checks import tenant_id
from ._docs import see
from ._errors import ConfigurationError

PREFIX = "ENTRA_PASSTHROUGH_"

#: Every variable any ``from_env()`` reads, with a one-line meaning (docs/configuration.md).
VARIABLES: dict[str, str] = {
    "AZURE_TENANT_ID": "the OBO app's home tenant (authority and default allow-list)",
    "AZURE_AUTHORITY_HOST": "Entra authority host (sovereign clouds); default "
    "https://login.microsoftonline.com",
    "AZURE_CLIENT_ID": "client id of a user-assigned managed identity (AzureCredential.from_env: "
    "the app registration's client id)",
    "AZURE_CLIENT_SECRET": "AzureCredential.from_env: the app registration's client secret",
    "AZURE_CLIENT_CERTIFICATE_PATH": "AzureCredential.from_env: PEM or PFX with the app's key "
    "and certificate",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD": "password of the client certificate (PFX or encrypted "
    "PEM), for ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH and AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "true: send the certificate chain (x5c) with the "
    "client assertion, for subject name/issuer authentication",
    "AZURE_ADDITIONALLY_ALLOWED_TENANTS": "tenant ids (';'-, comma- or space-separated) "
    "allowed besides AZURE_TENANT_ID (OBO: added to the tenant allow-list, '*' refused; "
    "AzureCredential: passed to azure-identity)",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST": "IMDS address MSAL uses on VMs/AKS instead of "
    "http://169.254.169.254 (read by MSAL from the process environment)",
    "IDENTITY_SERVER_THUMBPRINT": "Service Fabric: the managed identity endpoint's certificate "
    "thumbprint (read by MSAL from the process environment)",
    "AZURE_FEDERATED_TOKEN_FILE": "workload identity token file used as the OBO app's (or "
    "the consent app's) client assertion",
    "IDENTITY_ENDPOINT": "managed identity endpoint (App Service / Container Apps)",
    "IDENTITY_HEADER": "secret header value for IDENTITY_ENDPOINT",
    "ENTRA_PASSTHROUGH_CLIENT_ID": "the OBO app's client id",
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": "the OBO app's client secret",
    "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": "PEM file with the OBO app's private key "
    "and certificate",
    "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "which credential the OBO app uses: secret, "
    "certificate, managed_identity or federated_token_file (default: the first configured)",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": "DelegatedConsent: the consent app's client id",
    "ENTRA_PASSTHROUGH_CONSENT_TENANT_ID": "DelegatedConsent: the consent app's tenant "
    "(default AZURE_TENANT_ID)",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "the consent app's client secret",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH": "PEM or PFX with the consent app's "
    "private key and certificate (AZURE_CLIENT_CERTIFICATE_PASSWORD applies)",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "which credential the consent app uses: "
    "secret, certificate, managed_identity or federated_token_file (default: the one configured, "
    "as for the OBO app)",
    "ENTRA_PASSTHROUGH_CONSENT_KEYS": "DelegatedConsent and the broker: the keyring sealing "
    "grants ('kid:<base64url 32 bytes>[,old-kid:...]')",
    "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "DelegatedConsent: the consent broker's public "
    "HTTPS URL, put in consent links",
    "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": "comma-separated tenant ids OBO may use as authority",
    "ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES": "comma-separated extra App ID URIs accepted as the "
    "assertion's aud",
    "ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI": "redirect_uri put in consent links",
    "ENTRA_PASSTHROUGH_POLICY": "user_only (default), user_or_app, app_only or developer",
    "ENTRA_PASSTHROUGH_LIFECYCLE_APP": "true: the app identity may authenticate connection "
    "requests that have no caller under user_only",
    "ENTRA_PASSTHROUGH_CA_FILE": "CA bundle for Entra and managed identity HTTPS (the emulator's "
    "CA in tests)",
    "ENTRA_PASSTHROUGH_MAX_WORKERS": "worker threads for blocking token calls (default 64)",
    "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET": "false: a tools/call the MCP server reset unread "
    "within 1 s is CallOutcomeUnknown, not sent again (a proxy that may reset after "
    "forwarding; default true, never through HTTP(S)_PROXY)",
    "ENTRA_PASSTHROUGH_CONNECT_TIMEOUT": "seconds to connect to Entra per token request "
    "(default 5)",
    "ENTRA_PASSTHROUGH_READ_TIMEOUT": "seconds to wait for each read of Entra's answer "
    "(default 10)",
    "ENTRA_PASSTHROUGH_TOKEN_DEADLINE": "seconds one token acquisition may take in all, retries "
    "included (default 30)",
    "ENTRA_PASSTHROUGH_TOKEN_RETRIES": "extra attempts after a 429/5xx, timeout or reset "
    "(default 2)",
    "ENTRA_PASSTHROUGH_CACHE_MAX_ENTRIES": "token cache size (default 10000)",
    "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "Agent ID: the agent identity's client id (fmi_path)",
    "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "Agent ID: the blueprint's client id",
    "ENTRA_PASSTHROUGH_AZ_TENANT_ID": "AzureCli: tenant passed to az / azd (developer policy)",
    "ENTRA_PASSTHROUGH_DEVELOPER_CLI": "AzureCli.from_env: az (default) or azd, the CLI whose "
    "signed-in account the developer policy uses",
    "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": "Agent ID in a Foundry hosted agent: the agent identity's "
    "client id (set by Foundry; ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID wins)",
    "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": "Agent ID in a Foundry hosted agent: the blueprint's "
    "client id (set by Foundry; ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID wins)",
    "FOUNDRY_AGENT_TENANT_ID": "Agent ID in a Foundry hosted agent: the tenant (set by Foundry; "
    "AZURE_TENANT_ID wins)",
    "ENTRA_PASSTHROUGH_REDIS_URL": "RedisStore.from_env: redis:// or rediss:// URL of the shared "
    "store (ACL user:password in it unless Entra auth)",
    "ENTRA_PASSTHROUGH_REDIS_AUTH": "RedisStore.from_env: password (default, from the URL) or "
    "entra (Microsoft Entra ID for Azure Cache for Redis / Azure Managed Redis)",
    "ENTRA_PASSTHROUGH_REDIS_CA_FILE": "RedisStore.from_env: CA bundle for a private rediss:// "
    "certificate",
    "ENTRA_PASSTHROUGH_REDIS_NAMESPACE": "RedisStore.from_env: prefix of every key (several "
    "deployments in one Redis database)",
    "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT": "RedisStore.from_env: true to allow redis:// (no "
    "TLS) to a host other than loopback",
    "ENTRA_PASSTHROUGH_REDIS_CLUSTER": "RedisStore.from_env: true for a Redis Cluster (Azure "
    "Managed Redis with the OSS clustering policy)",
}

#: The documented ``ENTRA_PASSTHROUGH_*`` variables read elsewhere than a ``from_env()`` (the
#: broker command, telemetry, logging): known names, which ``unknown_variables`` does not report.
OTHER_VARIABLES: dict[str, str] = {
    "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS": "entra-passthrough broker: the "
    "TLS-terminating front end's addresses",
    "ENTRA_PASSTHROUGH_TELEMETRY_SALT": "the salt of the user hash in telemetry",
    "ENTRA_PASSTHROUGH_WARNING_INTERVAL": "seconds between two records of one repeated warning",
    # Not the library's: the repository's test suite (its release tests, which CI runs with it
    # set, start doctor and the hosted agent in that environment).
    "ENTRA_PASSTHROUGH_RELEASE_TESTS": "the repository's test suite: run the release tests",
}

#: Every name with the library's prefix that some part of it reads.
_KNOWN = tuple(name for name in (*VARIABLES, *OTHER_VARIABLES) if name.startswith(PREFIX))
_SUFFIXES = tuple(name[len(PREFIX) :] for name in _KNOWN)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each variable of ``environ`` whose name begins with ``ENTRA_PASSTHROUGH_`` (in any case)
    and that no part of the library reads, set to a value that is not blank, with the closest
    known name (``None``: none is close). A misspelt name (``ENTRA_PASSTHROUGH_POLCY``) was
    silently not applied: the policy, credential or allow-list meant was not the one used.
    Only names: the values are never read into anything shown."""
    found: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        if not isinstance(name, str) or not name.upper().startswith(PREFIX) or name in _KNOWN:
            continue
        value = environ.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        # Compared without the prefix they share: with it, any name was "close" to some.
        close = difflib.get_close_matches(name.upper()[len(PREFIX) :], _SUFFIXES, n=1)
        found.append((name, PREFIX + close[0] if close else None))
    return found


def shown_name(name: str) -> str:
    """A variable's name as a message may show it: as is when it is made of letters, digits
    and ``_``, else escaped (no control character reaches a terminal or a log), bounded."""
    if re.fullmatch(r"[A-Za-z0-9_]{1,100}", name):
        return name
    return ascii(name[:100])


#: The most unknown names one message lists (the others are counted).
_MAX_NAMED = 10


def unknown_sentence(unknown: list[tuple[str, str | None]]) -> str:
    """What ``unknown_variables`` found, said once for a message: each name, with the known
    name it is closest to."""
    named = [
        shown_name(name)
        if close is None
        else f"{shown_name(name)} (did you mean {close}? names are case-sensitive)"
        if close == name.upper()
        else f"{shown_name(name)} (did you mean {close}?)"
        for name, close in unknown[:_MAX_NAMED]
    ]
    if len(unknown) > _MAX_NAMED:
        named.append(f"{len(unknown) - _MAX_NAMED} more")
    it = "it" if len(unknown) == 1 else "them"
    return (
        f"{', '.join(named)} {'is' if len(unknown) == 1 else 'are'} set, but no part of "
        f"entra-passthrough reads {it}: the setting meant is not applied"
    )


UNKNOWN_FIX = (
    "rename each variable named to the one meant, or unset it; every variable the library "
    "reads: " + see("configuration", "variables") + "."
)

_logger = logging.getLogger("entra_passthrough")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_unknown(environ: Mapping[str, str]) -> None:
    """One WARNING per unknown ``ENTRA_PASSTHROUGH_*`` name of the process environment, once
    per process (``from_env()`` reads the environment at start-up; a name is said once)."""
    unknown = unknown_variables(environ)
    with _warned_lock:
        new = [(name, close) for name, close in unknown if name not in _warned]
        _warned.update(name for name, _ in new)
    if new:
        _logger.warning("%s. Fix: %s", unknown_sentence(new), UNKNOWN_FIX)


#: azure-identity's variables for an *app registration* (EnvironmentCredential). This library
#: reads AZURE_CLIENT_ID as the user-assigned managed identity instead, so a user who set these
#: for the OBO app is told what to set (the values are never echoed).
AZURE_APP_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH")


def environ_or(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    """``environ``, else the process environment: then an ``ENTRA_PASSTHROUGH_*`` variable
    the library does not read is one WARNING naming it (once per process; never its value)."""
    if environ is not None:
        return environ
    _warn_unknown(os.environ)
    return os.environ


#: The variables naming a tenant, checked when read so that the error names the variable: a
#: GUID or a domain name; a tenant-less authority (``common``...) only where ``True`` (``az
#: --tenant`` takes one; a multi-tenant source checks it again with its allowed tenants).
TENANT_VARIABLES: dict[str, bool] = {
    # A multi-tenant app (``organizations`` with ENTRA_PASSTHROUGH_ALLOWED_TENANTS): the source
    # that reads it decides, knowing its allowed tenants.
    "AZURE_TENANT_ID": True,
    "ENTRA_PASSTHROUGH_CONSENT_TENANT_ID": True,
    "FOUNDRY_AGENT_TENANT_ID": False,
    "ENTRA_PASSTHROUGH_AZ_TENANT_ID": True,
}


def get(environ: Mapping[str, str], name: str) -> str | None:
    """``name``'s value (stripped; ``None`` when unset or blank). A tenant variable or
    ``AZURE_AUTHORITY_HOST`` that cannot be one is a ``ConfigurationError`` naming ``name``
    here, whichever ``from_env()`` reads it (the sources' own checks named the keyword)."""
    assert name in VARIABLES, name  # every variable read is documented
    value = environ.get(name, "").strip()
    if value and name in TENANT_VARIABLES:
        tenant_id(value, what=name, tenantless=TENANT_VARIABLES[name])
    elif value and name == "AZURE_AUTHORITY_HOST":
        from ._msal import normalize_authority_host  # MSAL is imported on first use only

        normalize_authority_host(value, what=name)
    elif value and name in SECRET_TEXT_VARIABLES:
        check_text(value, name)
    elif value and name in HOST_URL_VARIABLES:
        check_url_host(value, name)
    return value or None


#: The secrets sent to Entra as text: a value holding bytes that are not UTF-8 (a ``.env`` file
#: saved as Latin-1; Python keeps them as surrogates) could not be encoded into the request,
#: and every token request failed as "the connection to Entra failed", retried.
SECRET_TEXT_VARIABLES = frozenset(
    {
        "ENTRA_PASSTHROUGH_CLIENT_SECRET",
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET",
        "AZURE_CLIENT_SECRET",
    }
)


def check_text(value: str, name: str) -> None:
    """A ``ConfigurationError`` naming ``name`` when ``value`` cannot be encoded as UTF-8 (never
    showing it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{name} holds bytes that are not text (not UTF-8: a .env or shell file saved in "
            "another encoding, such as Latin-1?), so it cannot be sent to Entra; its value is "
            "not shown.",
            fix=f"set {name} to the secret's Value as plain text (save the file that sets it "
            "as UTF-8), copied from Certificates & secrets in the app registration.",
        ) from None


#: URLs whose host is checked as ``AZURE_AUTHORITY_HOST``'s is (the rest of the URL is the
#: reader's to check: ``check_https_url``).
HOST_URL_VARIABLES = frozenset({"ENTRA_PASSTHROUGH_CONSENT_BROKER_URL"})


def check_url_host(value: str, name: str) -> None:
    """A ``ConfigurationError`` naming ``name`` when the host of the http(s) URL ``value``
    cannot be a host name (a space, a tab, a byte that is not text, an empty label, a port
    that is not a number): the same check as ``AZURE_AUTHORITY_HOST``'s, on the URL's
    ``scheme://host[:port]``. Such a URL was accepted and every link made from it was
    unusable. Nothing else is judged here (a scheme, user info, a query: the URL's own check
    says it, showing the origin at most); the value is never shown."""
    scheme, separator, rest = value.partition("://")
    if not separator or scheme.lower() not in ("https", "http"):
        return
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        return
    from ._msal import normalize_authority_host  # MSAL is imported on first use only

    try:
        normalize_authority_host(f"https://{netloc}", what=name)
    except ConfigurationError:
        pass
    else:
        return
    if not netloc.isascii() or any(c.isspace() or not c.isprintable() for c in netloc):
        problem = (
            "has a space, a control character or a character outside ASCII in its host (a "
            "non-ASCII name is written in its punycode form, xn--...)"
        )
    else:
        problem = (
            "has a host that cannot be a host name (letters, digits, '-' and '.' without an "
            "empty label, or an IP address), or a port that is not a number"
        )
    raise ConfigurationError(
        f"{name} {problem}; its value is not shown.",
        fix=f"set {name} to the broker's public URL, https://<host name>[/path].",
    )


def require(
    environ: Mapping[str, str],
    name: str,
    *,
    what: str,
    fallback: str | None = None,
    app_hint: bool = True,
) -> str:
    """``name`` (else ``fallback``, a variable a host sets for the same thing), or a
    ``ConfigurationError`` naming it (and the fallback), and naming azure-identity's app
    variables when they are set instead (their values never appear; ``app_hint=False`` where
    the on-behalf-of app is not what is being configured)."""
    return require_from(environ, name, what=what, fallback=fallback, app_hint=app_hint)[0]


def require_from(
    environ: Mapping[str, str],
    name: str,
    *,
    what: str,
    fallback: str | None = None,
    app_hint: bool = True,
) -> tuple[str, str]:
    """``require`` and the variable the value came from (``name`` or ``fallback``), for the
    errors about the value to name the one that was read."""
    value = get(environ, name)
    if value is not None:
        return value, name
    if fallback is not None:
        value = get(environ, fallback)
        if value is not None:
            return value, fallback
    hint = azure_app_hint(environ) if app_hint else ""
    if fallback is None:
        raise ConfigurationError(f"{name} is not set; it names {what}.{hint}", fix=f"set {name}.")
    raise ConfigurationError(
        f"neither {name} nor {fallback} is set; they name {what} ({name} wins when both "
        f"are set).{hint}",
        fix=f"set {name} (or {fallback}).",
    )


def azure_app_hint(environ: Mapping[str, str]) -> str:
    """A sentence for an error when azure-identity's app-registration variables are set but
    this library does not read them for the on-behalf-of app; empty otherwise. Names only,
    never values. ``AZURE_CLIENT_SECRET`` / ``AZURE_CLIENT_CERTIFICATE_PATH`` are named even
    when ``ENTRA_PASSTHROUGH_CLIENT_ID`` is set (the client id is right, the credential is in
    the variable this library does not read for that app)."""
    seen = [name for name in AZURE_APP_VARIABLES if get(environ, name)]
    credentials = [name for name in seen if name != "AZURE_CLIENT_ID"]
    if not seen or (get(environ, "ENTRA_PASSTHROUGH_CLIENT_ID") and not credentials):
        return ""
    ours = {
        "AZURE_CLIENT_SECRET": "ENTRA_PASSTHROUGH_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH": "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH",
    }
    token_file = bool(get(environ, "AZURE_FEDERATED_TOKEN_FILE"))
    wanted = [ours[name] for name in credentials]
    if not wanted and not token_file:
        # With a workload identity token file (AKS) the file is the credential: asking for a
        # secret too would send the user after one they do not need.
        wanted = ["ENTRA_PASSTHROUGH_CLIENT_SECRET or ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH"]
    if not get(environ, "ENTRA_PASSTHROUGH_CLIENT_ID"):
        wanted.insert(0, "ENTRA_PASSTHROUGH_CLIENT_ID (the app's client id)")
    credential = (
        " (AZURE_FEDERATED_TOKEN_FILE is its credential: the app needs a federated identity "
        "credential for this workload's service account)"
        if token_file and not credentials
        else ""
    )
    return (
        f" The environment sets {', '.join(seen)} (azure-identity's names for an app "
        "registration); this library reads AZURE_CLIENT_ID only as the managed identity (on "
        "AKS: the workload identity), and the on-behalf-of app's credential from its own "
        f"variables. For the on-behalf-of app set {' and '.join(wanted)}{credential} "
        f"({see('configuration')})."
    )


#: A file path as people write one: from the root, the home folder, the working folder or a
#: drive, of the characters paths are made of. Not "+" or "=" (base64's: an access key pasted
#: into the variable by mistake often holds "/"), nor whitespace (a PEM pasted whole).
_PATH_SHAPE = re.compile(r"(?:/|~/|\.{1,2}/|[A-Za-z]:[\\/])[\w.\-/\\:]{0,250}")


def path_may_be_shown(value: str) -> bool:
    """Whether a variable's value that should name a file may be echoed in a message: an
    existing file, or a value shaped like a path. A secret pasted there (a Redis access key, a
    PEM key's text) is neither, whatever "/" it holds."""
    if _PATH_SHAPE.fullmatch(value) is not None:
        return True
    try:
        return len(value) <= 260 and os.path.isfile(value)
    except (OSError, ValueError):  # NUL bytes, a name too long
        return False


def get_ca_file(environ: Mapping[str, str], name: str) -> str | None:
    """``name``'s CA bundle path (``ENTRA_PASSTHROUGH_CA_FILE``), or ``None`` when unset; a
    path that is not a readable file holding at least one certificate is a
    ``ConfigurationError`` naming ``name`` here, when the source is built: it was first opened
    at the first token request, and every request then failed as "the connection to Entra
    failed ... nothing to configure if it is transient". The path is shown, not the file."""
    path = get(environ, name)
    if path is None:
        return None
    import ssl

    fix = (
        f"set {name} to a readable PEM file with the CA certificates that sign the authority's "
        "certificate (a TLS-inspecting proxy's CA, or the emulator's), or unset it to trust the "
        "system's CAs (REQUESTS_CA_BUNDLE applies then)."
    )
    shown = path if path_may_be_shown(path) else "(not shown)"
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        what = (
            "is a folder"
            if os.path.isdir(path)
            else "is not a regular file (a pipe, a device or a socket)"
            if os.path.exists(path) and not os.path.isfile(path)
            else "does not exist or cannot be read"
        )
        raise ConfigurationError(f"{name} {shown} {what}; it must be a CA bundle file.", fix=fix)
    try:
        count = ssl.create_default_context(cafile=path).cert_store_stats()["x509"]
    except (ssl.SSLError, OSError, ValueError):
        count = 0
    if count == 0:
        raise ConfigurationError(
            f"{name} {shown} holds no certificate that can be read (empty, or not PEM).", fix=fix
        )
    return path


def get_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """The entries of a list variable, separated by commas, semicolons (azure-identity's
    separator for ``AZURE_ADDITIONALLY_ALLOWED_TENANTS``) or whitespace."""
    value = get(environ, name) or ""
    return tuple(part for part in value.replace(",", " ").replace(";", " ").split() if part)


# A value that is not one of the accepted words or numbers is never shown in an error: it may
# be a secret pasted into the wrong variable (the message names the variable and what it takes).


def get_bool(environ: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    value = (get(environ, name) or "").lower()
    if not value:
        return default
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(
        f"{name} is not a boolean (true/false, yes/no, on/off, 1/0).",
        fix=f"set {name} to true or false.",
    )


def get_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = get(environ, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(
            f"{name} is not a whole number.",
            fix=f"set {name} to a whole number, at least 1 (or unset it for {default}).",
        ) from None
    if number < 1:
        raise ConfigurationError(
            f"{name} must be at least 1.",
            fix=f"set {name} to a whole number, at least 1 (or unset it for {default}).",
        )
    return number
