"""``entra-passthrough broker``: configuration and refusals (the server itself is uvicorn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entra_passthrough import ConfigurationError
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.consent._cli import build_broker, main

KEYS = "k1:" + "A" * 43


def _config(tmp_path: Path, **extra: object) -> Path:
    data = {
        "client_id": "11111111-1111-1111-1111-111111111111",
        "tenant_id": "22222222-2222-2222-2222-222222222222",
        "redirect_uris": ["https://consent.contoso.com/callback"],
        **extra,
    }
    path = tmp_path / "broker.json"
    path.write_text(json.dumps(data))
    return path


def test_build_broker_from_config_and_environment(tmp_path: Path) -> None:
    config = json.loads(_config(tmp_path).read_text())
    env = {
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "s3cret",
    }
    broker = build_broker(config, env)
    assert isinstance(broker, ConsentBroker)
    assert broker.redirect_uris == ("https://consent.contoso.com/callback",)
    assert broker.client.authority == (
        "https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222"
    )
    with pytest.raises(ConfigurationError, match="exactly one"):
        build_broker(config, {"ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS})
    with pytest.raises(ConfigurationError, match="CONSENT_KEYS"):
        build_broker(config, {"ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "s"})
    with pytest.raises(ConfigurationError, match="HTTPS"):
        build_broker({**config, "redirect_uris": ["http://consent.contoso.com/cb"]}, env)
    with pytest.raises(ConfigurationError, match="redirect_uris"):
        build_broker({**config, "redirect_uris": []}, env)


def test_main_refuses_unsafe_or_broken_setups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_KEYS", KEYS)
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET", "s3cret")
    config = str(_config(tmp_path))
    assert main(["--config", config]) == 2  # no certificate
    assert "--certfile" in capsys.readouterr().err
    assert main(["--config", config, "--insecure-http", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.json"), "--insecure-http"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["--config", str(bad), "--insecure-http"]) == 2
    err = capsys.readouterr().err
    assert "JSON object" in err
    assert "s3cret" not in err


def test_delegated_consent_from_env() -> None:
    from entra_passthrough import DelegatedConsent

    env = {
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "AZURE_TENANT_ID": "22222222-2222-2222-2222-222222222222",
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "s3cret",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
        "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": "22222222-2222-2222-2222-222222222222,t2",
    }
    source = DelegatedConsent.from_env(env)
    assert source.client.client_id == env["ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID"]
    assert source.client.allowed_tenants == (env["AZURE_TENANT_ID"], "t2")
    assert source.broker_url == "https://agent.contoso.com/consent"
    assert "s3cret" not in repr(source)
    source.close()
    with pytest.raises(ConfigurationError, match="BROKER_URL"):
        DelegatedConsent.from_env({**env, "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": ""})
    with pytest.raises(ConfigurationError, match="HTTPS"):
        DelegatedConsent.from_env(
            {**env, "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "http://agent.contoso.com/c"}
        )
    with pytest.raises(ConfigurationError, match="exactly one"):
        DelegatedConsent.from_env({**env, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": ""})
