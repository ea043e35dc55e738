"""The standalone broker's config refuses a key it does not have, naming it and the closest known
one (docs/consent.md): a misspelt ``allowed_tenant`` was ignored, and a broker for
``organizations`` then took every tenant."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from entra_passthrough import ConfigurationError
from entra_passthrough.consent._cli import build_broker

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BASE = {
    "client_id": "6cd0a8b1-1111-2222-3333-444455556666",
    "tenant_id": "organizations",
    "redirect_uris": ["https://consent.contoso.com/callback"],
}
ENV = {
    "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:"
    + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "placeholder-secret-value-0123456789",
}


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("allowed_tenant", "allowed_tenants"),
        ("redirect_uri", "redirect_uris"),
        ("post_logout_redirect_url", "post_logout_redirect_uri"),
        ("forwarded_allowed_ips", "forwarded_allow_ips"),
    ],
)
def test_a_misspelt_key_is_named_with_the_closest_one(key: str, closest: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_broker({**BASE, key: [TENANT]}, ENV)
    assert f"unknown key {key!r}" in str(info.value)
    assert f"did you mean {closest!r}" in str(info.value)
    assert TENANT not in str(info.value)  # values are never echoed


def test_the_documented_keys_and_comments_still_load() -> None:
    config = {
        **BASE,
        "_comment": "skipped, as in the emulator's world files",
        "allowed_tenants": [TENANT],
        "authority_host": "https://login.microsoftonline.com",
        "ca_file": None,
        "post_logout_redirect_uri": None,
        "forwarded_allow_ips": None,
    }
    broker = build_broker(config, ENV)
    assert broker.client.allowed_tenants == (TENANT,)


def test_the_broker_command_says_it_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    path.write_text(json.dumps({**BASE, "allowed_tenant": [TENANT]}))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_"))
    }
    env.update(ENV)
    # A config that would otherwise start (on loopback, any port): the key stops it first.
    cli = [sys.executable, "-m", "entra_passthrough", "broker", "--config", str(path)]
    done = subprocess.run(
        [*cli, "--insecure-http", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("entra-passthrough broker: the broker config has an unknown key")
    assert "'allowed_tenant' (did you mean 'allowed_tenants'?)" in line
