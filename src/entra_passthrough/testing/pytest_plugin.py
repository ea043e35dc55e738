"""pytest plugin (entry point ``pytest11``): the ``entra_emulator`` fixtures.

- ``entra_emulator``: one emulator for the whole session (fast; shared: do not assume fresh stats,
  call ``idp.reset_stats()`` or diff ``idp.stats()``; undo the consent/faults you change).
- ``entra_emulator_fresh``: a new emulator for one test (its own keys, consents and stats).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._emulator import EntraEmulator


@pytest.fixture(scope="session")
def entra_emulator() -> Iterator[EntraEmulator]:
    with EntraEmulator() as idp:
        yield idp


@pytest.fixture
def entra_emulator_fresh() -> Iterator[EntraEmulator]:
    with EntraEmulator() as idp:
        yield idp
