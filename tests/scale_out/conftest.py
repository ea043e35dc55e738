from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A server of its own, for tests that kill, restart or fill it."""
    server = RedisServer()
    yield server
    server.stop()


# The consent tests' emulator + HTTPS slot, for grants shared through Redis (an instance of
# its own: this directory's users do not collide with the consent tests').
from _support.consent import consent_env  # noqa: E402, F401
