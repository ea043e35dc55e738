"""The consent broker: users sign in once, the agent then acts as them (``DelegatedConsent``).

Mount it in the agent app (``app.mount("/consent", broker.app)``) or run it alone
(``entra-passthrough broker --config broker.json``) next to a hosted agent that cannot expose
extra routes; either way it shares the ``TokenStore`` and ``Keyring`` with the source (both
live in ``entra_passthrough``: the source needs them without this extra).
docs/consent.md explains the flow and its security model.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from .._errors import require_extra

    raise require_extra("consent", "consent", exc) from exc

from ._broker import ConsentBroker

__all__ = ["ConsentBroker"]
