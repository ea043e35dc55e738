"""A redirect URI the broker can never answer is refused when the broker is built: the broker
serves the sign-in's answer at ``/callback`` under the path it is mounted at, so a redirect URI
such as ``https://host/oauth/cb`` sent the user's code to a 404 and the sign-in was lost with no
explanation. The standalone broker, served at its root, warns at start for a redirect URI under
a path (``/auth/callback``): it is reached only through a front end that strips the path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from entra_passthrough import ConfigurationError
from entra_passthrough.consent._cli import build_broker, main

KEYS = "k1:" + "A" * 43
ENV = {"ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "s3cret"}


def _config(*uris: str) -> dict[str, Any]:
    return {
        "client_id": "11111111-1111-1111-1111-111111111111",
        "tenant_id": "22222222-2222-2222-2222-222222222222",
        "redirect_uris": list(uris),
    }


@pytest.mark.parametrize(
    "uri",
    [
        "https://consent.contoso.com/oauth/cb",
        "https://consent.contoso.com/callback/",
        "https://consent.contoso.com/callbacks",
        "https://consent.contoso.com/",
        "https://consent.contoso.com",
    ],
)
def test_a_redirect_uri_the_broker_never_answers_is_refused(uri: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_broker(_config("https://consent.contoso.com/callback", uri), ENV)
    text = str(info.value)
    assert "/callback" in text
    assert "404" in text
    assert info.value.fix is not None
    assert "mount" in info.value.fix


@pytest.mark.parametrize(
    "uri",
    ["https://consent.contoso.com/callback", "https://agent.contoso.com/consent/callback"],
)
def test_a_redirect_uri_ending_in_callback_is_taken(uri: str) -> None:
    broker = build_broker(_config(uri), ENV)
    try:
        assert broker.redirect_uris == (uri,)
    finally:
        broker.close()


def test_the_standalone_broker_warns_for_a_redirect_uri_under_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ENTRA_PASSTHROUGH_REDIS_URL", raising=False)
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options))
    path = tmp_path / "broker.json"
    for uris, warned in (
        (["https://consent.contoso.com/auth/callback"], True),
        (["https://consent.contoso.com/callback"], False),
    ):
        path.write_text(json.dumps(_config(*uris)))
        assert main(["--config", str(path), "--insecure-http", "--port", "0"]) == 0
        err = capsys.readouterr().err
        assert ("strips the path" in err) is warned, err
        if warned:
            assert uris[0] in err
    assert len(served) == 2
