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
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .._errors import ConfigurationError, require_extra
from .._msal import http_session
from .._sources.obo import credential_from_env
from .._store import Keyring, MemoryStore, TokenStore
from ..cli import parser_for

_KEYS_ENV = "ENTRA_PASSTHROUGH_CONSENT_KEYS"


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
    for required in ("client_id", "tenant_id", "redirect_uris"):
        if not config.get(required):
            raise ConfigurationError(f"the broker config has no {required!r}.")
    ca_file = config.get("ca_file")
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


def main(argv: list[str]) -> int:
    args = parser_for("broker").parse_args(argv)  # defined with the core only (--help works)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        if not isinstance(config, dict):
            raise ConfigurationError("the broker config must be a JSON object.")
        store = build_store(args.store or os.environ.get("ENTRA_PASSTHROUGH_REDIS_URL"))
        broker = build_broker(config, store=store)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"entra-passthrough broker: {exc}\n")
        return 2
    if not args.insecure_http and not (args.certfile and args.keyfile):
        sys.stderr.write(
            "entra-passthrough broker: --certfile and --keyfile are required "
            "(or --insecure-http on loopback, for development only)\n"
        )
        return 2
    if args.insecure_http and args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write("entra-passthrough broker: --insecure-http is loopback only\n")
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
    uvicorn.run(
        broker.app,
        host=args.host,
        port=args.port,
        ssl_certfile=None if args.insecure_http else args.certfile,
        ssl_keyfile=None if args.insecure_http else args.keyfile,
        log_level="info",
    )
    return 0
