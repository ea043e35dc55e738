"""pytest plugin of entra-passthrough (entry point ``pytest11``, name ``entra_emulator``).

Registered for every install, so it must cost nothing and break nothing where the ``testing``
extra is absent: this module imports only pytest, and lives outside the ``entra_passthrough``
package so that loading it does not import the library either. The fixtures import the emulator
when a test asks for them; without the extra that test fails with ``MissingExtraError`` naming
``pip install 'entra-passthrough[testing]'``, and every other test runs as before. Disable the
plugin with ``-p no:entra_emulator``.

- ``entra_emulator``: one emulator for the whole session (fast; shared: do not assume fresh stats,
  call ``idp.reset_stats()`` or diff ``idp.stats()``; undo the consent/faults you change).
- ``entra_emulator_fresh``: a new emulator for one test (its own keys, consents and stats).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from entra_passthrough.testing import EntraEmulator


def _start() -> EntraEmulator:
    # Raises MissingExtraError (an ImportError) without the 'testing' extra.
    from entra_passthrough.testing import EntraEmulator

    return EntraEmulator()


@pytest.fixture(scope="session")
def entra_emulator() -> Iterator[EntraEmulator]:
    """A local Entra ID emulator for the session (entra-passthrough; the 'testing' extra),
    shared by every test: diff ``idp.stats()`` and undo the consents and faults you change."""
    with _start() as idp:
        yield idp


@pytest.fixture
def entra_emulator_fresh() -> Iterator[EntraEmulator]:
    """A new local Entra ID emulator for this test alone (its own keys, consents and stats)."""
    with _start() as idp:
        yield idp
