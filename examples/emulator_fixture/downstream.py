"""Your code: exchange the caller's token for a downstream API token (on-behalf-of)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msal


@dataclass(frozen=True)
class Settings:
    client_id: str
    client_secret: str
    authority: str
    downstream_scope: str
    http_client: Any = None  # production: None (MSAL's default); tests: idp.msal_http_client()


class ExchangeFailed(Exception):
    def __init__(self, code: int | None, error: str) -> None:
        super().__init__(f"on-behalf-of failed: {error} (AADSTS{code})")
        self.code = code


def downstream_token(settings: Settings, caller_token: str) -> str:
    app = msal.ConfidentialClientApplication(
        settings.client_id,
        client_credential=settings.client_secret,
        authority=settings.authority,
        instance_discovery=settings.http_client is None,
        http_client=settings.http_client,
    )
    result = app.acquire_token_on_behalf_of(caller_token, [settings.downstream_scope])
    if "access_token" not in result:
        raise ExchangeFailed((result.get("error_codes") or [None])[0], result.get("error", "?"))
    return str(result["access_token"])
