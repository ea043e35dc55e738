"""``entra-passthrough broker``: configuration and refusals (the server itself is uvicorn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _support.tokens import encrypted_pem_with_chain
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
    err = capsys.readouterr().err
    assert "cannot read the config file" in err
    assert "missing.json: No such file or directory" in err
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert main(["--config", str(passwd), "--insecure-http"]) == 2
    # Not json's "Expecting value: line 1 column 1 (char 0)": the file, and what it must be.
    assert "passwd is not JSON (line 1): it must be a JSON object" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["--config", str(bad), "--insecure-http"]) == 2
    err = capsys.readouterr().err
    assert "JSON object" in err
    assert "s3cret" not in err


def test_main_refuses_plain_http_unless_a_front_end_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain HTTP off loopback only with the front end's addresses named (IP addresses or
    networks, or '*' alone), never with --insecure-http; each refusal says what to do. (The
    broker it then serves: test_front_end.py.)"""
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_KEYS", KEYS)
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET", "s3cret")
    monkeypatch.delenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS", raising=False)
    config = str(_config(tmp_path))
    public = ["--config", config, "--host", "0.0.0.0"]
    # No front end named: the refusals stand, and name the way out.
    assert main(public) == 2
    assert "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS" in capsys.readouterr().err
    assert main([*public, "--insecure-http"]) == 2
    err = capsys.readouterr().err
    assert "loopback only" in err
    assert "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS" in err
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS", " ")
    assert main(public) == 2  # blank: not set
    assert "--certfile" in capsys.readouterr().err

    refused = {
        "proxy.contoso.com": "is not an IP address or network",
        "10.0.0.1/8": "is not an IP address or network",  # host bits set: a typo
        "*, 10.0.0.4": "'*' stands alone",
        ",": "names no proxy address",
    }
    for value, why in refused.items():
        monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS", value)
        assert main(public) == 2, value
        err = capsys.readouterr().err
        assert why in err, err
        assert "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS" in err
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS", "10.0.0.0/23")
    assert main([*public, "--insecure-http"]) == 2
    assert "do not go together" in capsys.readouterr().err
    assert main([*public, "--certfile", str(tmp_path / "cert.pem")]) == 2
    assert "go together" in capsys.readouterr().err

    # The flag names the front end too, and wins over the variable.
    assert main([*public, "--forwarded-allow-ips", "proxy.contoso.com"]) == 2
    err = capsys.readouterr().err
    assert "--forwarded-allow-ips" in err
    assert "is not an IP address or network" in err
    assert main([*public, "--forwarded-allow-ips", "10.0.0.0/23", "--insecure-http"]) == 2
    assert "do not go together" in capsys.readouterr().err

    monkeypatch.delenv("ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS")
    for value, why in ((42, "a list of strings"), ([], "names no proxy address")):
        in_config = str(_config(tmp_path, forwarded_allow_ips=value))
        assert main(["--config", in_config, "--host", "0.0.0.0"]) == 2
        assert why in capsys.readouterr().err


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


def test_the_consent_app_credential_is_read_as_the_obo_apps(tmp_path: Path) -> None:
    """The consent app's client credential is read by the code that reads the OBO app's, for
    ``DelegatedConsent.from_env()`` and the standalone broker alike: an encrypted certificate
    takes ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` (it was loaded without it), the broker can be
    secretless (the host's user-assigned managed identity), a system-assigned one is refused
    before any request naming why it was chosen, and several credentials are chosen between
    in the same order."""
    from entra_passthrough import DelegatedConsent

    key_and_chain, password = encrypted_pem_with_chain()
    pem = tmp_path / "consent.pem"
    pem.write_bytes(key_and_chain)
    env = {
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "AZURE_TENANT_ID": "22222222-2222-2222-2222-222222222222",
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH": str(pem),
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
    }
    config = json.loads(_config(tmp_path).read_text())
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_CERTIFICATE_PASSWORD"):
        DelegatedConsent.from_env(env)
    with_password = {**env, "AZURE_CLIENT_CERTIFICATE_PASSWORD": password}
    source = DelegatedConsent.from_env(with_password)
    assert password not in repr(source)
    source.close()
    assert isinstance(build_broker(config, with_password), ConsentBroker)

    # A secret beside the certificate: the first configured, as for the OBO app, unless
    # ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL chooses.
    both = {**with_password, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "s3cret"}
    assert build_broker(config, both).client.credential.client_secret == "s3cret"
    chosen = {**both, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "certificate"}
    assert build_broker(config, chosen).client.credential.client_secret is None
    source = DelegatedConsent.from_env(chosen)
    assert source.client.credential.client_certificate == str(pem)
    source.close()

    host = {
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
        "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi",
        "IDENTITY_HEADER": "h",
    }
    with pytest.raises(ConfigurationError) as refused:
        build_broker(config, host)  # the system-assigned identity cannot be a credential
    assert str(refused.value).startswith("entra-passthrough broker (IDENTITY_ENDPOINT is set")
    assert "AZURE_CLIENT_ID" in str(refused.value)
    broker = build_broker(
        config, {**host, "AZURE_CLIENT_ID": "5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"}
    )
    assert broker.client.credential.managed_identity is not None
    consent = {k: v for k, v in env.items() if "CERTIFICATE" not in k}
    chosen_mi = {
        **consent,
        **host,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "managed_identity",
    }
    with pytest.raises(ConfigurationError) as refused:
        DelegatedConsent.from_env(chosen_mi)
    assert str(refused.value).startswith(
        "DelegatedConsent.from_env() (ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL=managed_identity)"
    )
