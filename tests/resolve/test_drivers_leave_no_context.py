"""Both drivers of a decision flow throw a step's error into the flow outside their own
``except``: an error the flow raises later (the chain's chosen one) does not carry the error it
outranked as ``__context__`` (a consent link walked out of an MFA error's context sent an MFA
user to the consent broker)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from entra_passthrough._drive import drive, drive_async


class _Outranked(Exception):
    pass


class _Chosen(Exception):
    pass


def _flow() -> Generator[str, object, None]:
    outranked: list[Exception] = []
    try:
        yield "ask"
    except _Outranked as exc:
        outranked.append(exc)  # recorded, and outranked
    raise _Chosen(f"the chain's decision over {len(outranked)}")


def _failing(step: str) -> object:
    raise _Outranked(step)


async def _failing_async(step: str) -> object:
    raise _Outranked(step)


def test_the_sync_driver() -> None:
    with pytest.raises(_Chosen) as raised:
        drive(_flow(), _failing)
    assert raised.value.__context__ is None


async def test_the_async_driver() -> None:
    with pytest.raises(_Chosen) as raised:
        await drive_async(_flow(), _failing_async)
    assert raised.value.__context__ is None
