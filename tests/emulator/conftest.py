"""Helpers for judging the emulator with other people's code (MSAL, azure-identity, PyJWT)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import msal_app


@pytest.fixture
def idp(entra_emulator: EntraEmulator) -> Iterator[EntraEmulator]:
    """The session emulator, with faults and latency cleared after each test."""
    yield entra_emulator
    entra_emulator.clear_faults()
    entra_emulator.token_latency = 0.0


@pytest.fixture
def cca(idp: EntraEmulator) -> Callable[..., msal.ConfidentialClientApplication]:
    """``cca(client_id=None, credential=None, authority=None)``: MSAL at the session emulator."""
    return functools.partial(msal_app, idp)
