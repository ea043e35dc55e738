"""The OAuth ``state`` of a consent sign-in: signed, short-lived, single-use, bound to a user.

``state`` travels through the browser and the identity provider, so it carries nothing secret:
a random flow id, the hashed user key and an expiry, HMAC-SHA256-signed with the keyring's
current state key (``"<kid>.<payload>.<mac>"``; verification accepts any listed key id). The
PKCE verifier and the nonce stay server side, in the store, under the flow id; single use is
enforced by the store (a used-marker written with compare-and-set, then the flow record taken
with compare-and-delete), so it holds across replicas.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from .._store import Keyring, KeyringError

MAX_STATE_CHARS = 512


class StateError(ValueError):
    """The state is not acceptable; ``code`` is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class State:
    flow_id: str
    key_hash: str
    exp: float

    @classmethod
    def new(cls, key_hash: str, *, lifetime: float) -> State:
        return cls(secrets.token_urlsafe(18), key_hash, time.time() + lifetime)

    def sign(self, keyring: Keyring) -> str:
        payload = json.dumps({"f": self.flow_id, "k": self.key_hash, "e": int(self.exp)})
        return keyring.sign("state", payload.encode())

    @classmethod
    def verify(cls, keyring: Keyring, value: str, *, now: float | None = None) -> State:
        if not value or len(value) > MAX_STATE_CHARS:
            raise StateError("invalid_state", "The sign-in state is missing or too long.")
        try:
            data = json.loads(keyring.verify("state", value))
            state = cls(str(data["f"]), str(data["k"]), float(data["e"]))
        except (KeyringError, ValueError, KeyError, TypeError, OverflowError):
            raise StateError(
                "invalid_state", "The sign-in state is not valid (bad signature or format)."
            ) from None
        if state.exp < (time.time() if now is None else now):
            raise StateError("state_expired", "This sign-in took too long; start again.")
        return state
