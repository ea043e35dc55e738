"""``entra-passthrough doctor``: check the configuration ``from_env()`` reads, path by path,
against Entra (or the local emulator), and say how to fix each failure.

It builds the chain exactly as ``TokenChain.from_env()`` does (same variables, same errors), then
checks what that chain will need at run time:

* ``configuration``  - ``TokenChain.from_env()`` itself (missing or conflicting variables);
* ``ids``            - client and tenant ids have the shape Entra expects;
* ``discovery``      - the tenant's OpenID configuration answers on the authority host;
* ``managed identity`` - the managed identity endpoint gives a token (for the federated
  credential audience when the identity is an app's client credential);
* ``client credential`` - the OBO app's credential (secret, certificate, managed identity as
  federated credential, token file) is accepted: a client-credentials request that Entra must
  authenticate (no user involved, nothing is kept);
* ``agent id blueprint`` - the blueprint gets its exchange token for the agent identity;
* ``consent app``    - when ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID`` is set:
  ``DelegatedConsent.from_env()`` (keys, broker URL) and its app's credential;
* ``shared store``   - when an ``ENTRA_PASSTHROUGH_REDIS_*`` variable is set:
  ``RedisStore.from_env()`` builds the store (configuration only: Redis is not contacted);
* ``scope``          - each ``--scope`` is well formed (``<resource>/.default`` or one permission
  per resource) and not the agent's own app;
* ``consent``        - with ``--user-token-file``, the on-behalf-of exchange for each scope
  (consent is only knowable with a user);
* ``developer sign-in`` - under ``ENTRA_PASSTHROUGH_POLICY=developer``: ``az``/``azd`` is
  signed in.

Nothing it prints contains a token, a secret or an assertion: details come from the library's
typed errors, which never carry them. Exit status 1 if any check failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__, _env
from ._docs import see
from ._errors import (
    GUID,
    ConfigurationError,
    EntraPassthroughError,
    SourceUnavailable,
    error_from_entra,
)
from ._http import TransportFailure
from ._jwt import MAX_TOKEN_BYTES, fingerprint
from ._sources._base import raised_in

__all__ = ["Check", "main", "run"]

PASS, FAIL, SKIP = "pass", "fail", "skip"
#: A resource any app may ask a client-credentials token for (no roles needed): the check
#: proves only that Entra authenticated the app's credential.
_PROBE_RESOURCE = "https://graph.microsoft.com/.default"
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: A JWT (three base64url segments, the JOSE header's ``eyJ``): without a ``_`` it also passes
#: for a domain, and pasted into a tenant variable it is a secret in the wrong place.
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: A tenant id written without its dashes: no caller's ``tid`` claim (always with dashes)
#: equals it.
_DASHLESS_GUID = re.compile(r"[0-9a-fA-F]{32}")
#: The variables listing the tenants whose callers on-behalf-of serves (compared with ``tid``).
_TENANT_LIST_VARIABLES = (
    "ENTRA_PASSTHROUGH_ALLOWED_TENANTS",
    "AZURE_ADDITIONALLY_ALLOWED_TENANTS",
)
_CA_FILE = "ENTRA_PASSTHROUGH_CA_FILE"
#: What an authority host looks like, rightly or not (a URL, a domain with or without a path):
#: another value (a secret, a key, a JWT) is not shown, whatever message quotes it.
_AUTHORITY = re.compile(
    r"(?:https?://[A-Za-z0-9.:\[\]-]+|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]+)?)"
    r"(?:/[A-Za-z0-9._~%-]*)*"
)


def _get(env: Mapping[str, str], name: str) -> str | None:
    return (env.get(name) or "").strip() or None


def _tenant_entries(env: Mapping[str, str], name: str) -> list[str]:
    """The entries of a tenant list variable, split as ``from_env()`` splits them."""
    return (_get(env, name) or "").replace(",", " ").split()


#: The tenant-less authorities: words, not secrets (each has its own check where it matters).
_TENANTLESS = ("common", "organizations", "consumers")


def _is_tenant(value: str) -> bool:
    """A tenant id (GUID), a domain or a tenant-less authority; not a JWT, which can look like
    a domain."""
    if GUID.fullmatch(value) or value.lower() in _TENANTLESS:
        return True
    return bool(_DOMAIN.fullmatch(value)) and not _JWT_SHAPE.fullmatch(value)


def _unprintable(value: str) -> bool:
    """A line break, a space, a tab or another control or invisible character: in an id, the
    sign of a value copied with more than the id (two lines, a wrapped terminal)."""
    return any(c.isspace() or not c.isprintable() for c in value)


def _looks_like_path(value: str) -> bool:
    """What a CA file's value normally is, so it may be shown: a path (``path_may_be_shown``:
    not merely any value with a "/", which an access key pasted by mistake has), or a
    certificate file's name."""
    if _env.path_may_be_shown(value):
        return True
    return (
        value.lower().endswith((".pem", ".crt", ".cer"))
        and re.fullmatch(r"[\w.\-]+", value) is not None
    )


def _masked(variable: str, value: str) -> str:
    """What is shown instead of a value that must not be echoed."""
    return f"<{variable}: not shown, {fingerprint(value)}>"


#: A credential that is the managed identity the check above could not get a token from.
_MI_FAILED_ABOVE = (
    "not asked: its credential is the managed identity, which gave no token (see managed "
    "identity above)"
)


@dataclass(frozen=True)
class Check:
    """One line of the report. ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    status: str
    detail: str
    fix: str = ""


def _explain(exc: BaseException) -> tuple[str, str]:
    """(detail, fix) from an exception: the library's own message and fix, never a token."""
    if isinstance(exc, EntraPassthroughError):
        fix = getattr(exc, "fix", "") or ""
        detail = str(exc)
        if fix and detail.endswith(f"Fix: {fix}"):
            detail = detail[: -len(f" Fix: {fix}")]
        link = getattr(exc, "link", None)
        if isinstance(link, str) and link.startswith("https://"):
            fix = (
                f"{fix} Consent link: {link} (or grant admin consent for the app in the "
                "Entra admin center: Enterprise applications > the app > Permissions)."
            ).strip()
        return detail, fix
    if isinstance(exc, TransportFailure) and exc.kind in ("tls", "ca_bundle"):
        # The guarded layer's own TLS failure (the consent app's requests go through it too).
        return (
            "the TLS connection to the authority host failed (its certificate was not trusted, "
            f"or the CA bundle could not be loaded): {exc.describe()}",
            _TLS_FIX,
        )
    if _is_tls_error(exc):
        # requests' SSLError text is urllib3's retry chain, cut mid-word at any bound: what
        # failed, said once, and the variable that fixes it.
        return (
            f"{type(exc).__name__}: the TLS connection to the authority host failed (its "
            "certificate was not trusted, or TLS could not be agreed)",
            _TLS_FIX,
        )
    if _is_transport_error(exc):
        return f"{type(exc).__name__}: no answer from the authority host", ""
    if isinstance(exc, ValueError) and raised_in(exc, "msal.authority"):
        # MSAL's authority module: its text is cut at any bound and may carry the discovery
        # endpoint's answer; said as the sources say it at run time. No fix of its own: the
        # discovery check's, when it failed, else the check's fallback.
        return (
            "MSAL could not use the authority (the authority host and tenant) or fetch its "
            "OpenID configuration (ValueError)",
            "",
        )
    # Anything else: its type and first line, bounded (no request echo).
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}", ""


_TLS_FIX = (
    "set ENTRA_PASSTHROUGH_CA_FILE to the CA bundle that signs the authority host's certificate "
    "(a TLS-inspecting proxy's CA, or the emulator's CA file), or check AZURE_AUTHORITY_HOST."
)


def _from_msal(response: Mapping[str, Any], what: str) -> tuple[bool, str, str]:
    if "access_token" in response:
        return True, f"{what}: Entra accepted it", ""
    error = error_from_entra(response)
    detail, fix = _explain(error)
    return False, f"{what}: {detail}", fix


class Doctor:
    def __init__(
        self,
        env: Mapping[str, str],
        *,
        scopes: Sequence[str] = (),
        user_token: str | None = None,
    ) -> None:
        self.env = env
        self.scopes = tuple(scopes)
        self.user_token = user_token
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    def failed(self, name: str) -> bool:
        return any(c.name == name and c.status == FAIL for c in self.checks)

    def guard(
        self, name: str, probe: Callable[[], tuple[bool, str, str]], *, fallback_fix: str = ""
    ) -> bool:
        """Run one probe; a failure always carries a fix: the error's own, else (the discovery
        failure above, else) ``fallback_fix``, what this check's failures usually need."""
        try:
            ok, detail, fix = probe()
        except Exception as exc:
            detail, fix = _explain(exc)
            ok = False
            proxy = _proxy_in(self.env)
            if _is_tls_error(exc) and self.failed("CA file"):
                # The TLS failure's own fix names the CA variable; the check above says what
                # is wrong with the file it names.
                fix = "fix the CA file above first (ENTRA_PASSTHROUGH_CA_FILE)."
            elif fix == _TLS_FIX and self.env.get("ENTRA_PASSTHROUGH_CA_FILE", "").strip():
                # The authority's TLS failure (``_explain``'s fix), with the CA file set:
                fix = (
                    "ENTRA_PASSTHROUGH_CA_FILE is set, and no CA in it signs the authority "
                    "host's certificate: set it to the bundle that does (a TLS-inspecting "
                    "proxy's CA, or the emulator's CA file), or check AZURE_AUTHORITY_HOST."
                )
            elif not fix and proxy and _is_transport_error(exc):
                # No answer at all, through a proxy the environment names: the proxy first,
                # not the tenant id.
                fix = (
                    f"the request went through the proxy in {proxy}: check that it runs and "
                    "lets this host reach the authority host, or exempt the host in NO_PROXY."
                )
            elif not fix and self.failed("CA file"):
                fix = "fix the CA file above first (ENTRA_PASSTHROUGH_CA_FILE)."
            elif not fix and self.failed("discovery"):
                fix = "fix the discovery failure above first (tenant id, authority host)."
        if not ok and not fix:
            fix = fallback_fix
        self.add(name, PASS if ok else FAIL, detail, fix)
        return ok

    # -- the checks ----------------------------------------------------------------------

    def run(self) -> list[Check]:
        self._checks()
        hidden = self.hidden()
        if hidden:
            self.checks = [_redacted(check, hidden) for check in self.checks]
        return self.checks

    def hidden(self) -> dict[str, str]:
        """Configured values never to print, each with what is shown instead: every secret
        variable's value, and an id variable's value that is not an id (a secret pasted as
        an id is the mistake the ids check exists for; its value must not be echoed by the
        lines that name the id, such as a source's repr)."""
        found: dict[str, str] = {}
        if self.user_token:
            found[self.user_token] = "<the user token>"
        for variable in _SECRET_VARIABLES:
            value = _get(self.env, variable)
            if value:  # a secret of any length (a short one only where it stands alone)
                found.setdefault(value, f"<{variable}>")
        for variable in _ID_VARIABLES:
            value = _get(self.env, variable)
            if value and len(value) >= _MIN_HIDDEN and not GUID.fullmatch(value):
                found.setdefault(value, _masked(variable, value))
        for variable in _TENANT_VARIABLES:
            value = _get(self.env, variable)
            if value and len(value) >= _MIN_HIDDEN and not _is_tenant(value):
                found.setdefault(value, _masked(variable, value))
        for variable in _TENANT_LIST_VARIABLES:
            # An entry no caller's tid can match (no dashes, not a tenant at all): the ids
            # check names the variable; a source's repr (allowed_tenants=[...]) must not echo it.
            for entry in _tenant_entries(self.env, variable):
                if len(entry) >= _MIN_HIDDEN and not _is_tenant(entry):  # dashless included
                    found.setdefault(entry, _masked(variable, entry))
        for variable in (_CA_FILE, _REDIS_CA_FILE):
            ca_file = _get(self.env, variable)
            if ca_file and not _looks_like_path(ca_file):
                found.setdefault(ca_file, _masked(variable, ca_file))
        password = _url_password(_get(self.env, "ENTRA_PASSTHROUGH_REDIS_URL"))
        for value in password:  # the URL's password alone, as written and decoded
            if len(value) >= _MIN_HIDDEN:  # (a shorter one is hidden within the URL only)
                found.setdefault(value, "<the Redis password>")
        host = _get(self.env, "AZURE_AUTHORITY_HOST")
        if (
            host
            and len(host) >= _MIN_HIDDEN
            and (not _AUTHORITY.fullmatch(host) or _JWT_SHAPE.search(host))
        ):
            found.setdefault(host, _masked("AZURE_AUTHORITY_HOST", host))
        # Every form a line may give a value: as set, inside a repr or an ascii() (its line
        # breaks, tabs, quotes, backslashes and other characters escaped), inside JSON, and each
        # of its lines (a message quoting the first line of an error). Case is ignored where
        # they are looked for (_redacted).
        hidden: dict[str, str] = {}
        for value, shown in found.items():
            for form in _forms(value):
                hidden.setdefault(form, shown)
        return hidden

    def _checks(self) -> list[Check]:
        from ._chain import TokenChain

        self.check_variables()
        try:
            chain = TokenChain.from_env(self.env)
        except ConfigurationError as exc:
            detail, fix = _explain(exc)
            self.add("configuration", FAIL, detail, fix or _CONFIGURATION_FIX)
            self.check_ids()  # the build refuses an id no caller can match: say which, how
            self.check_ca_file()  # the build refuses a CA file it cannot use: say why
            self.check_certificates()  # an expired certificate refuses the build: say which
            self.check_store()  # the store is built apart from the chain: its own problems too
            unbuilt = self._unbuilt()
            if unbuilt is not None:  # a tenant domain refuses the build: name its GUID
                self.check_discovery(unbuilt)
            self.check_scopes(None)
            return self.checks
        try:
            names = ", ".join(repr(s) for s in chain.sources)
            self.add("configuration", PASS, f"policy {chain.policy.value}: {names}{self.chosen()}")
            self.check_ids()
            self.check_ca_file()
            self.check_discovery(chain)
            self.check_managed_identity(chain)
            self.check_certificates()
            self.check_credentials(chain)
            self.check_consent_app()
            self.check_store()
            self.check_scopes(chain)
            self.check_consent(chain)
            self.check_developer(chain)
        finally:
            chain.close()
        return self.checks

    def chosen(self, app: str = "obo") -> str:
        """Which of several client credentials set for the OBO app (``"obo"``) or the consent
        app (``"consent"``) ``from_env()`` uses."""
        from ._sources.obo import CLIENT_VARIABLES

        _, prefix = CLIENT_VARIABLES[app]
        if _get(self.env, f"{prefix}CREDENTIAL") or not _get(self.env, f"{prefix}ID"):
            return ""
        # In from_env()'s order of precedence (the platform's IDENTITY_ENDPOINT is left out:
        # an Azure host sets it whether or not the app uses it).
        variables = (f"{prefix}SECRET", f"{prefix}CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE")
        present = [variable for variable in variables if _get(self.env, variable)]
        if len(present) < 2:
            return ""
        return (
            f" (several client credentials are set: {', '.join(present)}; from_env() uses "
            f"{present[0]}, set {prefix}CREDENTIAL to choose)"
        )

    def check_variables(self) -> None:
        """Every ``ENTRA_PASSTHROUGH_*`` variable set is one the library reads: a misspelt one
        (``ENTRA_PASSTHROUGH_POLCY``) is not applied, and the run would pass on the setting
        the user did not get. Shown only when one is not (names only, never values)."""
        unknown = _env.unknown_variables(self.env)
        if unknown:
            self.add("variables", FAIL, _env.unknown_sentence(unknown), _env.UNKNOWN_FIX)

    def check_ids(self) -> None:
        """Client ids are GUIDs, tenants GUIDs or domains, tenant lists GUIDs; a value that is
        not is named by its variable, never shown."""
        problems: list[tuple[str, str]] = []  # (what is wrong, how to fix it)
        for variable in (*_ID_VARIABLES, *_TENANT_VARIABLES):
            value = _get(self.env, variable)
            if not value:
                continue
            if _unprintable(value):
                problems.append(
                    (
                        f"{variable} has a line break, space or control character in it (its "
                        "value is not shown)",
                        _ONE_LINE_FIX,
                    )
                )
            elif variable in _ID_VARIABLES and not GUID.fullmatch(value):
                problems.append((f"{variable} is not a client id (a GUID)", _IDS_FIX))
            elif variable in _TENANT_VARIABLES and not _is_tenant(value):
                problems.append(
                    (f"{variable} is neither a tenant id (GUID) nor a domain", _IDS_FIX)
                )
        for variable in _TENANT_LIST_VARIABLES:
            entries = [e for e in _tenant_entries(self.env, variable) if e != "*"]
            if any(_DASHLESS_GUID.fullmatch(e) for e in entries):  # ('*' is from_env's error)
                problems.append(
                    (
                        f"{variable} lists a tenant id without dashes, which no caller's tid "
                        "claim (always written with them) matches",
                        _DASHES_FIX,
                    )
                )
            if any(not (_is_tenant(e) or _DASHLESS_GUID.fullmatch(e)) for e in entries):
                problems.append(
                    (f"{variable} lists an entry that is not a tenant id (not shown)", _LIST_FIX)
                )
            elif any(not GUID.fullmatch(e) and not _DASHLESS_GUID.fullmatch(e) for e in entries):
                # a domain (or common/organizations): each caller's tid claim is a GUID, which
                # never equals it
                problems.append(
                    (
                        f"{variable} lists a domain name or a tenant-less authority, which "
                        "on-behalf-of never matches with a caller's tid claim (a tenant id, a "
                        "GUID; only a consent broker matches its own tenant's domain)",
                        _LIST_FIX,
                    )
                )
        if problems:
            fixes = dict.fromkeys(fix.rstrip(".") for _, fix in problems)
            self.add("ids", FAIL, "; ".join(what for what, _ in problems), "; ".join(fixes) + ".")
        else:
            self.add("ids", PASS, "client and tenant ids are well formed")

    def check_ca_file(self) -> None:
        """``ENTRA_PASSTHROUGH_CA_FILE``, when set: a PEM bundle this process can read (every
        HTTPS request to Entra trusts it alone)."""
        path = _get(self.env, "ENTRA_PASSTHROUGH_CA_FILE")
        if path is None:
            return
        import ssl

        # A path is shown; a value that does not look like one may be a secret pasted into the
        # wrong variable (docs/configuration.md), and is not.
        shown = path if _looks_like_path(path) else _masked(_CA_FILE, path)

        def probe() -> tuple[bool, str, str]:
            if _special_file(path):
                # A FIFO, a device, a socket: opening it could wait for ever (a FIFO with no
                # writer) or read without end (/dev/zero); a CA bundle is a regular file.
                return (
                    False,
                    f"ENTRA_PASSTHROUGH_CA_FILE ({shown}) is not a regular file (a pipe, a "
                    "device or a socket), so it was not opened",
                    "point ENTRA_PASSTHROUGH_CA_FILE at a PEM file of the CA that signs the "
                    "authority's certificate (a TLS-inspecting proxy's), or unset it to trust "
                    "the system's CAs.",
                )
            try:
                context = ssl.create_default_context(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                return (
                    False,
                    f"ENTRA_PASSTHROUGH_CA_FILE ({shown}) cannot be used: {type(exc).__name__}",
                    "point ENTRA_PASSTHROUGH_CA_FILE at a readable PEM bundle of the CA that "
                    "signs the authority's certificate (a TLS-inspecting proxy's), or unset it "
                    "to trust the system's CAs.",
                )
            count = len(context.get_ca_certs())
            return True, f"ENTRA_PASSTHROUGH_CA_FILE ({shown}): {count} CA certificate(s)", ""

        self.guard("CA file", probe)

    def _unbuilt(self) -> Any:
        """What ``check_discovery`` reads of a chain, from the variables, when the chain could
        not be built: the authority and the tenant, an allow-list too when none is set."""
        from types import SimpleNamespace

        from ._msal import PUBLIC_AUTHORITY_HOST, normalize_authority_host

        tenant = _get(self.env, "AZURE_TENANT_ID") or _get(self.env, "FOUNDRY_AGENT_TENANT_ID")
        if tenant is None:
            return None
        try:
            host = normalize_authority_host(
                _get(self.env, "AZURE_AUTHORITY_HOST") or PUBLIC_AUTHORITY_HOST,
                what="AZURE_AUTHORITY_HOST",
            )
        except ConfigurationError:
            return None  # the configuration check above names it
        listed = () if _get(self.env, "ENTRA_PASSTHROUGH_ALLOWED_TENANTS") else (tenant,)
        source = SimpleNamespace(authority_host=host, tenant_id=tenant, allowed_tenants=listed)
        return SimpleNamespace(sources=[source])

    def _authorities(self, chain: Any) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for source in chain.sources:
            host = getattr(source, "authority_host", None)
            tenant = getattr(source, "tenant_id", None)
            if host and tenant and (host, tenant) not in seen:
                seen.append((host, tenant))
        return seen

    def _verify(self) -> Any:
        import ssl

        ca_file = _get(self.env, "ENTRA_PASSTHROUGH_CA_FILE")
        if ca_file and _special_file(ca_file):  # never opened: the CA file check says why
            raise ConfigurationError(
                "ENTRA_PASSTHROUGH_CA_FILE is not a regular file, so no request was sent.",
                fix="fix the CA file above first (ENTRA_PASSTHROUGH_CA_FILE).",
            )
        return ssl.create_default_context(cafile=ca_file) if ca_file else True

    def check_discovery(self, chain: Any) -> None:
        import httpx2

        from ._msal import MSA_TENANT_ID

        authorities = self._authorities(chain)
        if not authorities:
            self.add("discovery", SKIP, "no Entra authority in the chain")
            return
        # The tenants that are an allow-list too (a source's own tenant, with no
        # allowed_tenants): compared with each caller's tid claim, a GUID.
        listed = {
            t.lower() for source in chain.sources for t in getattr(source, "allowed_tenants", ())
        }
        for host, tenant in authorities:
            url = f"{host}/{tenant}/v2.0/.well-known/openid-configuration"

            def probe(url: str = url, tenant: str = tenant) -> tuple[bool, str, str]:
                with httpx2.Client(verify=self._verify(), timeout=10) as client:
                    answer = client.get(url)
                if answer.status_code == 200:
                    issuer = str(answer.json().get("issuer", ""))
                    found = GUID.search(issuer)
                    named = found.group(0).lower() if found else None
                    if tenant.lower() in ("consumers", MSA_TENANT_ID):
                        return (
                            False,
                            f"{url} -> issuer {issuer}: the tenant is the personal Microsoft "
                            "accounts' (consumers), where no organisational app exists "
                            "(AADSTS700016) and no work account signs in",
                            "set AZURE_TENANT_ID (tenant_id) to your organisation's tenant id: "
                            "Directory (tenant) ID on the app registration's Overview page",
                        )
                    if tenant.lower() in listed and named and named != tenant.lower():
                        return (
                            False,
                            f"{url} -> issuer {issuer}: {tenant!r} names tenant "
                            f"{named}, and every caller's tid claim is a GUID, so "
                            "on-behalf-of would refuse every caller (TenantNotAllowed)",
                            f"set AZURE_TENANT_ID (tenant_id) to {named}",
                        )
                    return True, f"{url} -> issuer {issuer}", ""
                try:
                    body = answer.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("error"):
                    refused = error_from_entra(
                        body, source="discovery", request="the OpenID configuration request"
                    )
                    detail, fix = _explain(refused)
                    return False, f"{url}: {detail}", fix or _TENANT_FIX
                return False, f"{url}: HTTP {answer.status_code}", _TENANT_FIX

            self.guard("discovery", probe, fallback_fix=_TENANT_FIX)

    def check_managed_identity(self, chain: Any) -> None:
        from ._msal import federation_audience
        from ._sources.managed_identity import ManagedIdentity

        wants = _get(self.env, "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL") == "managed_identity"
        configured = _get(self.env, "IDENTITY_ENDPOINT") or wants
        if not configured and not any(isinstance(s, ManagedIdentity) for s in chain.sources):
            self.add("managed identity", SKIP, "no managed identity configured")
            return
        host = _get(self.env, "AZURE_AUTHORITY_HOST") or "https://login.microsoftonline.com"
        audience = federation_audience(host)

        def probe() -> tuple[bool, str, str]:
            identity = ManagedIdentity.from_env(self.env)
            try:
                identity.token_for_resource(audience)
            except SourceUnavailable as exc:
                if self.names_an_endpoint():
                    raise
                # No endpoint variable: IMDS was asked, and whatever answered there (nothing,
                # or another server's page) says this is no Azure host with an identity: the
                # doctor's fix says that, not the error's (check the endpoint's address).
                return False, _explain(exc)[0], self.managed_identity_fix()
            finally:
                identity.close()
            return True, f"{identity!r} gave a token for {audience}", ""

        self.guard("managed identity", probe, fallback_fix=self.managed_identity_fix())

    def names_an_endpoint(self) -> bool:
        """Whether a variable names the host's managed identity endpoint (else IMDS is asked)."""
        return any(
            _get(self.env, v) for v in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT")
        )

    def managed_identity_fix(self) -> str:
        """What a managed identity failure usually needs, for the host the variables name."""
        if not self.names_an_endpoint():
            where = (
                "no managed identity endpoint is set (IDENTITY_ENDPOINT, MSI_ENDPOINT), so the "
                "instance metadata service (IMDS) was asked: this check passes only on an "
                "Azure host with the identity assigned (a VM, AKS node, App Service, Container "
                "Apps, a Foundry hosted agent); elsewhere (a laptop, CI) use "
                "ENTRA_PASSTHROUGH_CLIENT_SECRET or a certificate instead"
            )
        else:
            where = (
                "the host's managed identity endpoint refused or did not answer: check that the "
                "identity is enabled on this host, that IDENTITY_HEADER is the one the platform "
                "set, and that AZURE_CLIENT_ID is the client id of a user-assigned identity "
                "assigned to this host"
            )
        return f"{where} ({see('configuration', 'managed-identity-hosts')})."

    def check_certificates(self) -> None:
        """A client certificate's validity period: Entra refuses an expired one (AADSTS700027,
        "the key used is expired") and one not valid yet; checked locally, with the date."""
        for variable in _CERTIFICATE_VARIABLES:
            path = _get(self.env, variable)
            if path is None:
                continue

            def probe(path: str = path, variable: str = variable) -> tuple[bool, str, str]:
                return _certificate_validity(
                    path, _get(self.env, "AZURE_CLIENT_CERTIFICATE_PASSWORD"), variable
                )

            self.guard("certificate", probe, fallback_fix=_CONFIGURATION_FIX)

    def check_credentials(self, chain: Any) -> None:
        from ._sources.agent_id import AgentIdentityOnBehalfOf
        from ._sources.obo import OnBehalfOf

        checked = False
        for source in chain.sources:
            if isinstance(source, AgentIdentityOnBehalfOf):
                checked = True

                def blueprint(agent: AgentIdentityOnBehalfOf = source) -> tuple[bool, str, str]:
                    agent.check_blueprint()  # its exchange token for the agent identity
                    return (
                        True,
                        f"blueprint {agent.blueprint_client_id} got the exchange token for "
                        f"agent identity {agent.agent_identity_id}",
                        "",
                    )

                self.guard("agent id blueprint", blueprint, fallback_fix=_CONFIGURATION_FIX)
            elif isinstance(source, OnBehalfOf):
                checked = True
                if source.credential.kind == "managed_identity" and self.failed("managed identity"):
                    # The same endpoint, for the same audience: asked once (a silent endpoint
                    # made doctor wait out its deadline twice).
                    self.add("client credential", SKIP, _MI_FAILED_ABOVE)
                    continue

                def credential(obo: OnBehalfOf = source) -> tuple[bool, str, str]:
                    response = obo.check_client_credential([_PROBE_RESOURCE])
                    what = f"the {obo.credential.kind} of app {obo.client_id}"
                    return _from_msal(response, what)

                fallback = (
                    self.managed_identity_fix()
                    if source.credential.kind == "managed_identity"
                    else _CONFIGURATION_FIX
                )
                self.guard("client credential", credential, fallback_fix=fallback)
        if not checked:
            self.add("client credential", SKIP, "no on-behalf-of source configured")

    def check_consent_app(self) -> None:
        """``DelegatedConsent.from_env()`` (the consent broker's app), when configured."""
        if not _get(self.env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID"):
            return
        from ._msal import http_session
        from ._sources.delegated import DelegatedConsent

        mi = _get(self.env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL") == "managed_identity"
        if mi and self.failed("managed identity"):
            self.add("consent app", SKIP, _MI_FAILED_ABOVE)
            return

        def probe() -> tuple[bool, str, str]:
            # The session from_env() would build (the CA file), made here so that it is closed.
            session = http_session(_get(self.env, "ENTRA_PASSTHROUGH_CA_FILE"))
            try:
                source = DelegatedConsent.from_env(self.env, http_client=session)
                try:
                    response = source.client.app().acquire_token_for_client([_PROBE_RESOURCE])
                finally:
                    source.close()
            finally:
                if session is not None:
                    session.close()
            ok, detail, fix = _from_msal(response, f"consent app {source.client.client_id}")
            return ok, detail + self.chosen("consent"), fix

        self.guard("consent app", probe, fallback_fix=_CONFIGURATION_FIX)

    def check_store(self) -> None:
        """``RedisStore.from_env()`` (the shared store of grants, owners and the token cache),
        when any of its variables is set: the same variables and errors; then, when it builds,
        one read of a key that is never written (``shared store connection``): connected,
        authenticated (a password, or Entra's token for Redis) and allowed to read the
        library's keys, within the store's own timeouts (about 4 s at most)."""
        if not any(_get(self.env, variable) for variable in _REDIS_VARIABLES):
            return
        built: list[Any] = []

        def probe() -> tuple[bool, str, str]:
            from .redis import RedisStore  # MissingExtraError: the redis extra, as the app

            store = RedisStore.from_env(self.env)
            built.append(store)
            auth = (_get(self.env, "ENTRA_PASSTHROUGH_REDIS_AUTH") or "password").lower()
            return True, f"RedisStore.from_env() builds the store ({auth} auth): {store!r}", ""

        if not self.guard("shared store", probe, fallback_fix=_STORE_FIX):
            return

        def connect() -> tuple[bool, str, str]:
            sync = built[0].sync()  # blocking calls: doctor runs no event loop
            try:
                sync.get("doctor-probe")  # never written: an answer of nothing is a pass
            finally:
                sync.close()
            return True, "Redis answered a read of the library's keys", ""

        self.guard("shared store connection", connect, fallback_fix=_STORE_FIX)

    def check_scopes(self, chain: Any) -> None:
        if not self.scopes:
            self.add(
                "scope",
                SKIP,
                "no --scope given",
                "pass the scopes your tools request, e.g. --scope api://<mcp app>/.default",
            )
            return
        own: set[str] = set()
        for source in chain.sources if chain is not None else ():
            for audience in getattr(source, "accepted_audiences", ()):
                own.add(str(audience).rstrip("/"))
        problems = scope_problems(self.scopes, own_audiences=own)
        if problems:
            self.add(
                "scope",
                FAIL,
                "; ".join(problems),
                "request '<resource>/.default' (the permissions granted to the app) or "
                "'<resource>/<permission>', one resource per token request, for the API you "
                "call - never the agent's own app id.",
            )
        else:
            self.add("scope", PASS, " ".join(self.scopes))

    def check_consent(self, chain: Any) -> None:
        from ._caller import Caller
        from ._types import IdentityKind

        users = [s for s in chain.sources if getattr(s, "kind", None) is IdentityKind.USER]
        if not users:
            self.add("consent", SKIP, "no user source (on-behalf-of, consent) configured")
            return
        if not self.scopes:
            self.add("consent", SKIP, "needs --scope")
            return
        if not self.user_token:
            # Agent ID: the user's token is for the blueprint, not for an agent app.
            blueprint = next(
                (b for s in users if (b := getattr(s, "blueprint_client_id", None))), None
            )
            whose = (
                f"for the agent identity blueprint (api://{blueprint}/<scope> or {blueprint})"
                if blueprint
                else "for the agent app"
            )
            self.add(
                "consent",
                SKIP,
                "consent can only be known for a user: pass --user-token-file with a token "
                + whose,
            )
            return
        caller = Caller.from_token(self.user_token)

        def probe() -> tuple[bool, str, str]:
            result = chain.get_token(self.scopes, caller=caller)
            return (
                True,
                f"{' '.join(self.scopes)}: token issued by {result.source} "
                f"(kind {result.kind.value})",
                "",
            )

        self.guard("consent", probe, fallback_fix=_CONFIGURATION_FIX)

    def check_developer(self, chain: Any) -> None:
        from ._sources.azure_cli import AzureCli
        from ._types import TokenRequest

        clis = [s for s in chain.sources if isinstance(s, AzureCli)]
        if not clis:
            self.add("developer sign-in", SKIP, "policy is not developer")
            return
        scopes = self.scopes or ("https://management.azure.com/.default",)
        cli = clis[0]
        tenant = _get(self.env, "AZURE_TENANT_ID") or "<tenant id>"
        if cli.tool == "az":
            fix = (
                f"install the Azure CLI (https://aka.ms/installazurecli) and sign in: az login "
                f"--tenant {tenant}"
            )
        else:
            fix = (
                f"install the Azure Developer CLI (https://aka.ms/azure-dev/install) and sign "
                f"in: azd auth login --tenant-id {tenant}"
            )

        def probe() -> tuple[bool, str, str]:
            result = cli.get_token(TokenRequest(tuple(scopes)))
            if result is None:
                return False, "the CLI gave no token", fix
            return True, f"{cli!r} is signed in", ""

        self.guard("developer sign-in", probe, fallback_fix=fix)


_IDS_FIX = (
    "use the Application (client) ID and Directory (tenant) ID from the app registration's "
    "Overview page (not an object id, a secret or a name)."
)
_ONE_LINE_FIX = (
    "set each variable named to the id alone, on one line: no line break, space, quote or "
    "invisible character copied with it."
)
_DASHES_FIX = (
    "write each tenant id with dashes (8-4-4-4-12 hex digits), as the Entra admin center "
    "shows the Directory (tenant) ID."
)
_LIST_FIX = (
    "list tenant ids (GUIDs), comma-separated: the Directory (tenant) ID of each tenant's "
    "Overview page in the Entra admin center."
)

#: Variables naming a client id (what Foundry injects into a hosted agent included).
_ID_VARIABLES = (
    "ENTRA_PASSTHROUGH_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
    "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID",
    "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID",
    "FOUNDRY_AGENT_INSTANCE_CLIENT_ID",
)
_TENANT_VARIABLES = (
    "AZURE_TENANT_ID",
    "ENTRA_PASSTHROUGH_CONSENT_TENANT_ID",
    "FOUNDRY_AGENT_TENANT_ID",
)
#: Variables holding a secret: their values never appear in the report, whatever echoes them.
_SECRET_VARIABLES = (
    "ENTRA_PASSTHROUGH_CLIENT_SECRET",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET",
    "ENTRA_PASSTHROUGH_CONSENT_KEYS",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "IDENTITY_HEADER",
    "MSI_SECRET",
    "ENTRA_PASSTHROUGH_REDIS_URL",  # may carry a password
)
#: ``RedisStore.from_env()``'s variables (from the registry every variable is read through):
#: any of them set means a shared store was meant.
_REDIS_VARIABLES = tuple(
    name for name in _env.VARIABLES if name.startswith("ENTRA_PASSTHROUGH_REDIS_")
)
_REDIS_CA_FILE = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"
_STORE_FIX = (
    "check the ENTRA_PASSTHROUGH_REDIS_* variables; what RedisStore.from_env() reads: "
    + see("configuration", "variables")
    + "."
)
_CERTIFICATE_VARIABLES = (
    "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH",
)
#: A certificate that expires sooner is reported (still a pass) with its date.
_EXPIRY_WARNING_DAYS = 30


def _certificate_validity(path: str, password: str | None, variable: str) -> tuple[bool, str, str]:
    """(ok, detail, fix) for the validity period of the certificate the library would send."""
    import datetime as dt

    from cryptography import x509

    from ._msal import load_certificate

    credential = load_certificate(path, password=password)  # ConfigurationError: its own fix
    leaf = x509.load_pem_x509_certificate(credential["public_certificate"].encode())
    now = dt.datetime.now(dt.UTC)
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    renew = (
        "create a new certificate, upload its public key to the app registration "
        f"(Certificates & secrets) and point {variable} at it."
    )
    if end <= now:
        return False, f"{variable}: the certificate expired on {end:%Y-%m-%d %H:%M} UTC", renew
    if start > now:
        return (
            False,
            f"{variable}: the certificate is not valid before {start:%Y-%m-%d %H:%M} UTC",
            "use a certificate that is valid now (check the clock of the machine that made it).",
        )
    left = (end - now).days
    soon = f" (expires in {left} days: renew it)" if left < _EXPIRY_WARNING_DAYS else ""
    return True, f"{variable}: valid until {end:%Y-%m-%d} UTC{soon}", ""


#: Ids shorter than this are not redacted; a secret this short is redacted only where it stands
#: alone, not inside a longer word (replaced everywhere, "abc" would garble every "abcd").
_MIN_HIDDEN = 8


def _url_password(url: str | None) -> list[str]:
    """The password of a Redis URL, as written and percent-decoded (none when unreadable)."""
    from urllib.parse import unquote, urlsplit

    if not url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return list(dict.fromkeys(p for p in (password, unquote(password or "")) if p))


def _forms(value: str) -> list[str]:
    """``value`` as a line may show it: as is, the inside of its ``repr()`` and ``ascii()``
    (either quote), of its JSON string (ASCII or not), and each of its lines long enough to be
    looked for anywhere."""
    forms = [
        value,
        repr(value)[1:-1],
        ascii(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    ]
    lines = value.splitlines()
    if len(lines) > 1:
        forms += [line.strip() for line in lines if len(line.strip()) >= _MIN_HIDDEN]
    return list(dict.fromkeys(forms))


def _redacted(check: Check, hidden: Mapping[str, str]) -> Check:
    detail, fix = check.detail, check.fix
    for value in sorted(hidden, key=len, reverse=True):  # a value inside another: longest first
        shown = hidden[value]
        if len(value) >= _MIN_HIDDEN:
            # In any case: a message that lower-cases what it echoes (a boolean's, once) must
            # not slip past an exact-copy match.
            anycase = re.compile(re.escape(value), re.IGNORECASE)
            detail = anycase.sub(lambda _: shown, detail)  # noqa: B023 - used at once
            fix = anycase.sub(lambda _: shown, fix)  # noqa: B023
        else:
            alone = re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])")
            detail = alone.sub(lambda _: shown, detail)  # noqa: B023 - used at once
            fix = alone.sub(lambda _: shown, fix)  # noqa: B023
    return Check(check.name, check.status, detail, fix)


_CONFIGURATION_FIX = (
    "check the variable or file named above; every variable from_env() reads: "
    + see("configuration", "variables")
    + "."
)


def _special_file(path: str) -> bool:
    """Whether ``path`` exists and is not a regular file or a folder (a FIFO, a device, a
    socket): checked without opening it."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name: the open says it
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


#: The most ``--user-token-file`` is read of: one token (``MAX_TOKEN_BYTES``, what the library
#: decodes at most) and the whitespace around it. ``/dev/zero`` or a huge file was read whole.
_TOKEN_FILE_MAX = MAX_TOKEN_BYTES + 1024


class _TokenFileTooLarge(Exception):
    pass


def _read_token_file(path: Path) -> str:
    """The text of ``path``, read up to ``_TOKEN_FILE_MAX`` bytes (a pipe, ``<(az ...)``, is
    fine); more is ``_TokenFileTooLarge``, before it is all read."""
    with path.open("rb") as handle:
        data = handle.read(_TOKEN_FILE_MAX + 1)
    if len(data) > _TOKEN_FILE_MAX:
        raise _TokenFileTooLarge
    return data.decode("utf-8")


def _proxy_in(env: Mapping[str, str]) -> str | None:
    """The proxy variable httpx and requests would use for an https URL, if one is set."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if env.get(name) or os.environ.get(name):
            return name
    return None


def _is_tls_error(exc: BaseException) -> bool:
    """requests' (and ssl's) TLS failures: a certificate not trusted, no TLS agreed; also under
    another library's error (httpx2 raises its ``ConnectError`` from ssl's): the chain is
    walked, bounded."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if {c.__name__ for c in type(current).__mro__} & {"SSLError", "SSLCertVerificationError"}:
            return True
        # The cause, else the context, except under one of the library's own errors raised
        # ``from None`` (the store's typed error over redis-py's says what failed itself).
        # httpcore raises its ``ConnectError`` ``from None`` over ssl's: followed.
        hidden = current.__suppress_context__ and isinstance(current, EntraPassthroughError)
        cause = current.__cause__
        current = cause if cause is not None or hidden else current.__context__
    return False


def _is_transport_error(exc: BaseException) -> bool:
    """No answer came back (connect, proxy, read): httpx's and requests' transport errors."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "ProxyError", "ConnectError"})


_TENANT_FIX = (
    "check AZURE_TENANT_ID (the Directory (tenant) ID) and AZURE_AUTHORITY_HOST (your cloud's "
    "login host); behind a TLS-inspecting proxy set ENTRA_PASSTHROUGH_CA_FILE."
)


def _split_scope(scope: str) -> tuple[str, str]:
    """``(resource, permission)``: ``api://x/perm``, ``https://host/path/.default`` (the
    permission is the last segment) or ``<app id GUID>/perm``; no permission gives ``""``."""
    stripped = scope.rstrip("/")
    scheme, separator, rest = stripped.partition("://")
    if not separator:  # <app id>[/permission]: the resource is the first segment
        resource, _, permission = stripped.partition("/")
        return resource, permission
    path, slash, permission = rest.rpartition("/")
    if not slash or not path:
        return stripped, ""
    return f"{scheme}://{path}", permission


def scope_problems(scopes: Sequence[str], *, own_audiences: Collection[str] = ()) -> list[str]:
    """What is wrong with a token request's scopes (empty: nothing)."""
    problems: list[str] = []
    resources: dict[str, list[str]] = {}
    for scope in scopes:
        if not scope or any(c.isspace() for c in scope):
            problems.append(f"{scope!r} is empty or has spaces (one scope per --scope)")
            continue
        if "://" not in scope and not GUID.fullmatch(scope.split("/", 1)[0]):
            problems.append(
                f"{scope!r} names no resource (write api://<app id>/{scope} or <resource>/.default)"
            )
            continue
        resource, permission = _split_scope(scope)
        if not permission:
            problems.append(
                f"{scope!r} names a resource but no permission: use {scope.rstrip('/')}/.default"
            )
            continue
        resources.setdefault(resource.rstrip("/"), []).append(permission)
    for resource, permissions in resources.items():
        if ".default" in permissions and len(permissions) > 1:
            problems.append(f"{resource}: .default cannot be combined with other permissions")
        if resource in own_audiences:
            problems.append(
                f"{resource} is the agent's own app: on-behalf-of needs the downstream API's "
                "resource"
            )
    if len(resources) > 1:
        problems.append("one token request names one resource; these scopes name several")
    return problems


def run(
    environ: Mapping[str, str] | None = None,
    *,
    scopes: Sequence[str] = (),
    user_token: str | None = None,
) -> list[Check]:
    """All checks, in order, against ``environ`` (default ``os.environ``)."""
    env = _env.environ_or(environ)
    return Doctor(env, scopes=scopes, user_token=user_token).run()


_MARK = {PASS: "PASS", FAIL: "FAIL", SKIP: "skip"}


def table(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=5)
    lines = [f"{'':4}  {'check':<{width}}  detail"]
    for c in checks:
        lines.append(f"{_MARK[c.status]:<4}  {c.name:<{width}}  {c.detail}")
        if c.status == FAIL and c.fix:
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append("")
    lines.append(f"{failed} check(s) failed." if failed else "All checks passed.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="entra-passthrough doctor",
        description="Check the configuration from_env() reads (this process' environment) "
        "against Entra or the emulator, path by path; exit 1 if any check fails.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--version", action="version", version=f"entra-passthrough {__version__}")
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope your tools request (repeat), e.g. api://<mcp app>/.default",
    )
    parser.add_argument(
        "--user-token-file",
        type=Path,
        help="a file holding a user's token for the agent app: checks consent for --scope "
        "(the token is never printed)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    token = None
    unreadable: Check | None = None
    if args.user_token_file is not None:
        try:
            token = _read_token_file(args.user_token_file).strip()
        except _TokenFileTooLarge:
            token = None
            unreadable = Check(
                "user token file",
                FAIL,
                f"{args.user_token_file} holds more than {_TOKEN_FILE_MAX // 1024} KiB (or does "
                "not end, as /dev/zero): not one token, which is a few KiB; it was not read "
                "further",
                "pass a file holding one user's access token for the agent app "
                "(--user-token-file), or leave the option out to skip the consent check.",
            )
        except (OSError, UnicodeDecodeError) as exc:
            # A check like the others (the --json report stays one JSON document); the file's
            # content is never read into the message, only its name and the error's type.
            unreadable = Check(
                "user token file",
                FAIL,
                f"cannot read {args.user_token_file} ({type(exc).__name__})",
                "pass a readable file holding one user's access token for the agent app "
                "(--user-token-file), or leave the option out to skip the consent check.",
            )
        else:
            if not token:
                # Given, but empty (a CI step that was to write it failed): never a silent
                # skip of the check the option asks for, and an overall pass.
                unreadable = Check(
                    "user token file",
                    FAIL,
                    f"{args.user_token_file} is empty: it holds no token",
                    "write one user's access token for the agent app into the file "
                    "(--user-token-file), or leave the option out to skip the consent check.",
                )
                token = None
    # The report says what failed; the library's and azure-identity's own warnings would
    # repeat it on stderr.
    loggers = [logging.getLogger(name) for name in ("entra_passthrough", "azure.identity")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        checks = run(scopes=args.scope, user_token=token)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if unreadable is not None:
        checks.insert(0, unreadable)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        out = json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2)
    else:
        out = table(checks)
    sys.stdout.write(out + "\n")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
