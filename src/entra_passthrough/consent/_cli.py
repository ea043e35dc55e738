"""``entra-passthrough broker``: serve the consent broker on its own (HTTPS).

Configuration is a JSON file with no secrets in it; secrets come from the environment::

    {"client_id": "<consent app id>", "tenant_id": "<tenant>",
     "authority_host": "https://login.microsoftonline.com",
     "redirect_uris": ["https://consent.contoso.com/callback"],
     "allowed_tenants": ["<tenant>"], "ca_file": null, "post_logout_redirect_uri": null}

    ENTRA_PASSTHROUGH_CONSENT_KEYS          "kid:<base64url 32 bytes>[,old-kid:...]"
    ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET the consent app's secret, or
    ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH  a PEM or PFX with its key and certificate
                                            (AZURE_CLIENT_CERTIFICATE_PASSWORD), or the host's
                                            user-assigned managed identity (AZURE_CLIENT_ID)
                                            as its federated credential; choose with
                                            ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL
    ENTRA_PASSTHROUGH_REDIS_URL             the store shared with the agents (or --store);
                                            ENTRA_PASSTHROUGH_REDIS_AUTH=entra etc. apply
    ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS
                                            behind a TLS-terminating front end: the proxy
                                            addresses to trust, comma-separated IPs or
                                            networks (or "*"); or "forwarded_allow_ips" in the
                                            config. Plain HTTP on any interface, HTTPS
                                            requests through those proxies only (_front_end)
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from .._errors import ConfigurationError, require_extra
from .._msal import http_session
from .._sources.obo import credential_from_env
from .._store import Keyring, MemoryStore, TokenStore
from ..cli import parser_for
from ._front_end import FrontEnd, TrustedProxies

_KEYS_ENV = "ENTRA_PASSTHROUGH_CONSENT_KEYS"
_FORWARDED_ENV = "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_store(url: str | None, environ: dict[str, str] | None = None) -> TokenStore:
    """The grant store: ``RedisStore`` for a ``redis://``/``rediss://`` URL (the other
    ``ENTRA_PASSTHROUGH_REDIS_*`` variables apply), a ``MemoryStore`` for none or ``memory``."""
    if not url or url == "memory":
        return MemoryStore()
    from ..redis import RedisStore

    env = dict(os.environ if environ is None else environ)
    return RedisStore.from_env({**env, "ENTRA_PASSTHROUGH_REDIS_URL": url})


def build_broker(
    config: dict[str, Any],
    environ: dict[str, str] | None = None,
    *,
    store: TokenStore | None = None,
) -> Any:
    """A ``ConsentBroker`` from a parsed config, the environment (secrets) and the store."""
    from ._broker import ConsentBroker

    env = dict(os.environ if environ is None else environ)
    check_keys(config)
    for required in ("client_id", "tenant_id", "redirect_uris"):
        if not config.get(required):
            raise ConfigurationError(f"the broker config has no {required!r}.")
    _check_types(config)
    ca_file = config.get("ca_file")
    if ca_file and not os.path.isfile(ca_file):
        # Found at start, not as a 503 on every sign-in ("try again") with only the error's
        # type in the log.
        raise ConfigurationError(
            "the broker config's 'ca_file' is not a readable file.",
            fix="point ca_file at the PEM bundle of the CAs that sign the identity provider's "
            "certificate, or remove it to use the system's",
        )
    http_client = http_session(str(ca_file)) if ca_file else None
    return ConsentBroker(
        # The consent app's credential, read by the code DelegatedConsent.from_env() and
        # OnBehalfOf.from_env() use: secret, certificate (with its password), token file or
        # the host's user-assigned managed identity.
        credential=credential_from_env(
            env,
            client_id=str(config["client_id"]),
            tenant_id=str(config["tenant_id"]),
            http_client=http_client,
            owner="entra-passthrough broker",
            app="consent",
            authority_host=str(config.get("authority_host") or "") or None,
        ),
        redirect_uris=[str(u) for u in config["redirect_uris"]],
        allowed_tenants=config.get("allowed_tenants") or None,
        post_logout_redirect_uri=config.get("post_logout_redirect_uri"),
        # A standalone broker must share the agents' store (Redis): with the memory store
        # this mode is for trying the flow only (docs/consent.md, docs/scale-out.md).
        store=store if store is not None else MemoryStore(),
        keyring=Keyring.from_env(_KEYS_ENV, environ=env),
        http_client=http_client,
    )


#: The broker config's keys and the JSON type each must have (values are never echoed).
_TYPES: dict[str, tuple[type, ...]] = {
    "client_id": (str,),
    "tenant_id": (str,),
    "authority_host": (str,),
    "ca_file": (str,),
    "post_logout_redirect_uri": (str,),
    "redirect_uris": (list,),
    "allowed_tenants": (list,),
}


#: Every key of the broker config (docs/consent.md): ``_TYPES`` and the front end's addresses.
_KEYS = frozenset({*_TYPES, "forwarded_allow_ips"})


def check_keys(config: dict[str, Any]) -> None:
    """A key the config does not have is refused with the closest known one: a misspelt
    ``allowed_tenant`` was ignored, and a tenantless broker then took every tenant. Keys that
    start with ``_`` (a ``"_comment"``) are skipped, as in the emulator's world files."""
    for key in config:
        if str(key) in _KEYS or str(key).startswith("_"):
            continue
        close = difflib.get_close_matches(str(key), sorted(_KEYS), n=1)
        raise ConfigurationError(
            f"the broker config has an unknown key {str(key)[:64]!r}"
            + (f" (did you mean {close[0]!r}?)." if close else "."),
            fix=f"use only the keys {', '.join(sorted(_KEYS))} (docs/consent.md)",
        )


def _check_types(config: dict[str, Any]) -> None:
    """A value of the wrong JSON type is a one-line refusal, not a traceback, nor a string
    iterated letter by letter (``"redirect_uris": "https://..."``)."""
    for key, types in _TYPES.items():
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, types):
            kind = "a list of strings" if types == (list,) else "a string"
            raise ConfigurationError(f"the broker config's {key!r} must be {kind}.")
        if isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigurationError(
                f"the broker config's {key!r} must be a list of non-empty strings."
            )


def trusted_proxies(
    config: dict[str, Any], environ: dict[str, str] | None = None, *, flag: str | None = None
) -> TrustedProxies | None:
    """The front end's addresses: ``--forwarded-allow-ips`` (``flag``), else
    ``ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS``, else the config's
    ``forwarded_allow_ips``; None when none is set (no forwarded header is trusted)."""
    env = os.environ if environ is None else environ
    if flag is not None:
        return TrustedProxies.parse(flag, where="--forwarded-allow-ips")
    if env.get(_FORWARDED_ENV, "").strip():
        return TrustedProxies.parse(env[_FORWARDED_ENV], where=_FORWARDED_ENV)
    if config.get("forwarded_allow_ips") is not None:
        return TrustedProxies.parse(
            config["forwarded_allow_ips"], where="the broker config's 'forwarded_allow_ips'"
        )
    return None


def _unloadable(args: Any) -> str | None:
    """Why the TLS certificate and key cannot be served, or None: checked before the server
    starts (uvicorn would stop with a traceback)."""
    if args.insecure_http or not (args.certfile and args.keyfile):
        return None
    import ssl

    for flag, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
        if not os.path.isfile(path):
            return f"{flag} {str(path)[:200]!r} is not a file"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            args.certfile, args.keyfile
        )
    except FileNotFoundError as exc:
        return f"--certfile/--keyfile: {exc.filename or 'a file'} does not exist"
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or "unreadable"
        return (
            f"--certfile/--keyfile cannot be used: {type(exc).__name__} ({why}); give a PEM "
            "certificate (chain) and its unencrypted private key"
        )
    return None


def _refusal(args: Any, trusted: TrustedProxies | None) -> str | None:
    """Why this way of serving is unsafe or cannot start, or None."""
    if not 0 <= args.port <= 65535:  # uvicorn would stop with a traceback (as the emulator says)
        return f"--port must be 0-65535 (0: any free port), got {args.port}"
    if trusted is not None:
        if args.insecure_http:
            return (
                "--insecure-http (loopback development) and trusted proxies do not go together; "
                "behind a TLS front end, name its addresses only"
            )
        if bool(args.certfile) != bool(args.keyfile):
            return "--certfile and --keyfile go together"
        return None
    if not args.insecure_http and not (args.certfile and args.keyfile):
        return (
            "--certfile and --keyfile are required, or, behind a TLS-terminating front end, "
            f"its addresses (--forwarded-allow-ips or {_FORWARDED_ENV}; or --insecure-http "
            "on loopback, for "
            "development only)"
        )
    if args.insecure_http and args.host not in _LOOPBACK:
        return (
            "--insecure-http is loopback only; behind a TLS-terminating front end, name its "
            f"addresses (--forwarded-allow-ips or {_FORWARDED_ENV})"
        )
    return None


_PREFIX = "entra-passthrough broker: "


def _say(message: str) -> None:
    """One line on stderr, prefixed with the command once (the consent app's credential errors
    already name it: ``credential_from_env(owner="entra-passthrough broker")``)."""
    sys.stderr.write(f"{'' if message.startswith(_PREFIX) else _PREFIX}{message}\n")


def main(argv: list[str]) -> int:
    args = parser_for("broker").parse_args(argv)  # defined with the core only (--help works)
    try:
        try:
            with open(args.config, encoding="utf-8") as handle:
                config = json.load(handle)
        except OSError as exc:
            _say(
                f"cannot read the config file {args.config}: {exc.strerror or type(exc).__name__}."
            )
            return 2
        except ValueError as exc:  # JSONDecodeError, a file that is not UTF-8
            where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
            _say(f"the config file {args.config} is not JSON{where}: it must be a JSON object.")
            return 2
        except RecursionError:  # arrays or objects nested thousands deep: no config has that
            _say(
                f"the config file {args.config} is nested too deeply to be read: it must be a "
                "JSON object of the broker's keys (docs/consent.md)."
            )
            return 2
        if not isinstance(config, dict):
            raise ConfigurationError("the broker config must be a JSON object.")
        check_keys(config)  # before "forwarded_allow_ips" is read: a misspelt one is named
        trusted = trusted_proxies(config, flag=args.forwarded_allow_ips)
        refusal = _refusal(args, trusted) or _unloadable(args)
        if refusal is not None:
            _say(refusal)
            return 2
        store = build_store(args.store or os.environ.get("ENTRA_PASSTHROUGH_REDIS_URL"))
        broker = build_broker(config, store=store)
    except (OSError, ValueError) as exc:
        _say(str(exc))
        return 2
    try:
        import uvicorn
    except ImportError as exc:
        raise require_extra("consent", "consent", exc) from exc

    if isinstance(store, MemoryStore):
        sys.stderr.write(
            "consent broker: WARNING the memory store is not shared with any agent process; "
            "use --store rediss://... (the agents' RedisStore) or the mounted broker "
            "(ConsentBroker.for_source).\n"
        )
    else:
        sys.stderr.write(f"consent broker: grants are shared through {store!r}\n")
    from ._broker import CALLBACK_PATH  # (the consent extra is installed: it was built)

    prefixed = sorted({u for u in broker.redirect_uris if urlsplit(u).path != CALLBACK_PATH})
    if prefixed:
        # Served at its root, the broker answers /callback: a redirect URI under a path is
        # reached only through a front end that strips that path.
        sys.stderr.write(
            f"consent broker: WARNING the broker answers {CALLBACK_PATH} at its root; the "
            f"redirect URI{'s' if len(prefixed) > 1 else ''} {', '.join(prefixed)} reach it "
            "only through a front end that strips the path before "
            f"{CALLBACK_PATH} (and before /start, /signout)\n"
        )
    tls = bool(args.certfile and args.keyfile) and not args.insecure_http
    app = broker.app
    if trusted is not None:
        app = FrontEnd(app, trusted)
        sys.stderr.write(
            f"consent broker: behind a front end: {'HTTPS' if tls else 'plain HTTP'} on "
            f"{args.host}, X-Forwarded-Proto/-For trusted from {trusted} only; a request that "
            "did not reach the front end over HTTPS is refused\n"
        )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.certfile if tls else None,
        ssl_keyfile=args.keyfile if tls else None,
        # Forwarded headers are trusted from the named front end only (FrontEnd), never from
        # uvicorn's default (127.0.0.1, or $FORWARDED_ALLOW_IPS).
        proxy_headers=False,
        log_level="info",
        # One process: uvicorn reads $WEB_CONCURRENCY (set by some hosts) when no count is
        # given, and exits at once for more than one with an app object. The broker scales by
        # replicas sharing the store, not by workers.
        workers=1,
    )
    return 0
