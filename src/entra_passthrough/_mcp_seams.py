"""Every use of a private name of the mcp SDK, in one place.

The rest of the library uses only what this module exposes. Each seam says which private name
it touches, why, and the versions it was checked against; ``tests/seams/test_mcp_seams.py``
fails with "mcp <version> moved <name>: update _mcp_seams.py" when an upgrade moves one, and
``docs/upstream-hooks.md`` proposes the public hook that would remove it.

Checked against mcp 2.3.0 (the range pinned in ``pyproject.toml``: mcp >= 2.2, < 2.4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["set_elicitation_callback"]


def set_elicitation_callback(session: Any, callback: Callable[[Any, Any], Awaitable[Any]]) -> bool:
    """Make ``callback`` answer the elicitation requests of an open ``mcp.ClientSession``
    (its private ``_elicitation_callback``, which ``ClientSession.__init__`` sets from its
    ``elicitation_callback=`` argument and the session calls for every ``elicitation/create``).
    agent-framework builds the session itself and passes no callback, so the SDK's default
    declines a URL elicitation and the link is lost. False (nothing changed) when the session
    has no such slot."""
    if not hasattr(session, "_elicitation_callback"):
        return False
    session._elicitation_callback = callback
    return True
