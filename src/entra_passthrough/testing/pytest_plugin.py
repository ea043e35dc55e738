"""The ``entra_emulator`` fixtures, to load explicitly.

    pytest_plugins = ["entra_passthrough.testing.pytest_plugin"]  # in a conftest.py

An installed package already registers them (entry point ``pytest11`` named ``entra_emulator``,
module ``_entra_passthrough_pytest``, which imports nothing optional); this module is for projects
that run with ``-p no:entra_emulator`` or ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` and load the fixtures
explicitly.

- ``entra_emulator``: one emulator for the whole session (fast; shared: do not assume fresh stats,
  call ``idp.reset_stats()`` or diff ``idp.stats()``; undo the consent/faults you change).
- ``entra_emulator_fresh``: a new emulator for one test (its own keys, consents and stats).
"""

from __future__ import annotations

from _entra_passthrough_pytest import entra_emulator, entra_emulator_fresh

__all__ = ["entra_emulator", "entra_emulator_fresh"]
