"""AzureCli when ``az`` exits 0 but prints JSON that is not the token object (``[]``, ``null``, a
string, a number too large for a float): azure-identity's parser raised ``TypeError`` /
``OverflowError`` and the chain said "source failed unexpectedly". It is "az printed no token",
typed, with a fix, on both the sync and the async path."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

from entra_passthrough import AzureCli, Policy, SourceUnavailable, TokenChain

SCOPE = ["api://11111111-2222-3333-4444-555555555555/.default"]


def _fake_az(tmp_path: Path, output: str) -> str:
    script = tmp_path / "az"
    script.write_text(f"#!{sys.executable}\nprint({output!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in for az")
@pytest.mark.parametrize(
    "output",
    ["[]", "null", '"x"', "1e400", "true", '{"accessToken": "a.b.c", "expires_on": 1e400}'],
)
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_az_printing_json_that_is_not_a_token_object_is_typed(
    tmp_path: Path, output: str, driver: str
) -> None:
    chain = TokenChain([AzureCli(executable=_fake_az(tmp_path, output))], policy=Policy.DEVELOPER)
    get = chain.get_token if driver == "sync" else lambda s: asyncio.run(chain.get_token_async(s))
    try:
        with pytest.raises(SourceUnavailable) as info:
            get(SCOPE)
    finally:
        chain.close()
    message = str(info.value)
    assert "az printed no token" in message
    assert "unexpectedly" not in message
    assert info.value.fix is not None
    assert "az account get-access-token" in info.value.fix
