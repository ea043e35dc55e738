"""The fix for a client certificate file that cannot be read names keywords and variables that
exist: ``AppCredential(client_certificate=)`` (it named ``certificate=``, which no constructor
has) and, for the consent app, ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from entra_passthrough import AppCredential, ConfigurationError, DelegatedConsent, OnBehalfOf
from entra_passthrough._env import VARIABLES

CLIENT = "11111111-1111-1111-1111-111111111111"
TENANT = "22222222-2222-2222-2222-222222222222"


def _fix_of_unreadable(tmp_path: Path) -> str:
    credential = AppCredential(
        client_id=CLIENT, tenant_id=TENANT, client_certificate=str(tmp_path / "missing.pem")
    )
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf(credential=credential)  # the certificate is read when the source is built
    assert info.value.fix
    return info.value.fix


def test_keywords_named_exist(tmp_path: Path) -> None:
    fix = _fix_of_unreadable(tmp_path)
    keywords = set(re.findall(r"\b([a-z_]+)=", fix))
    assert "client_certificate" in keywords, fix
    assert keywords <= set(inspect.signature(AppCredential).parameters), fix


def test_variables_named_exist_and_include_the_consent_apps(tmp_path: Path) -> None:
    fix = _fix_of_unreadable(tmp_path)
    variables = set(re.findall(r"\b[A-Z][A-Z0-9_]{5,}\b", fix))
    assert "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH" in variables, fix
    assert variables <= set(VARIABLES), fix


def test_the_consent_app_read_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "AZURE_TENANT_ID": TENANT,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": CLIENT,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH": str(tmp_path / "missing.pem"),
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
    }
    with pytest.raises(ConfigurationError) as info:
        DelegatedConsent.from_env(environ)
    assert "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH" in (info.value.fix or "")
