"""Helpers for judging the emulator with other people's code (MSAL, azure-identity, PyJWT)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import no_http_cache


@pytest.fixture
def idp(entra_emulator: EntraEmulator) -> Iterator[EntraEmulator]:
    """The session emulator, with faults and latency cleared after each test."""
    yield entra_emulator
    entra_emulator.clear_faults()
    entra_emulator.token_latency = 0.0


@pytest.fixture
def cca(idp: EntraEmulator) -> Callable[..., msal.ConfidentialClientApplication]:
    def make(
        client_id: str | None = None, credential: Any = None, authority: str | None = None
    ) -> msal.ConfidentialClientApplication:
        return msal.ConfidentialClientApplication(
            client_id or idp.agent.client_id,
            client_credential=credential if credential is not None else idp.agent.secret,
            authority=authority or idp.authority,
            instance_discovery=False,
            http_client=idp.msal_http_client(),
            http_cache=no_http_cache(),
        )

    return make
