"""Text and numbers from outside the library that reached exceptions raw: a developer CLI's
stderr (a JWT, ``client_secret=`` echoed by a wrapper script), an ``expires_in`` too large for a
float, an MCP server's error message nested past the JSON parser's limit. Each becomes a typed
error or a sane value, never a crash and never the secret."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from entra_passthrough import AzureCli, EntraError, TokenAcquisitionError, TokenRequest
from entra_passthrough._sources._base import MAX_LIFETIME, result_from_msal
from entra_passthrough._types import IdentityKind

_JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJvaWQiOiIxMjM0NTY3OC0xMjM0LTEyMzQtMTIzNC0xMjM0NTY3"
    "ODkwMTIiLCJzY3AiOiJyZWFkIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZy1lbm91Z2gtdG8tbG9vay1yZWFs"
)
_SECRET = "s3cr3t-Value-0123456789-abcdefghij"


def _fake_cli(tmp_path: Path, stderr: str) -> str:
    script = tmp_path / "az"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write({stderr!r})\nsys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(
    "stderr",
    [
        f"ERROR: AADSTS50000: failed for token {_JWT}\nTrace ID: x",
        f"ERROR: AADSTS7000215: request was grant_type=x&client_secret={_SECRET}&scope=y",
        f"ERROR: something else: Bearer {_JWT} and client_secret={_SECRET}",
    ],
    ids=["jwt", "form-echo", "bearer"],
)
async def test_a_cli_stderr_never_puts_a_token_or_secret_in_the_error(
    tmp_path: Path, stderr: str
) -> None:
    az = AzureCli(executable=_fake_cli(tmp_path, stderr))
    # (an EntraError when Entra's answer is in it; the CLI's own failure otherwise)
    with pytest.raises(TokenAcquisitionError) as raised:
        await az.get_token_async(TokenRequest(("api://x/.default",)))
    for text in (str(raised.value), repr(raised.value)):
        assert _JWT not in text
        assert _JWT[:40] not in text
        assert _SECRET not in text


async def test_a_huge_code_in_a_cli_stderr_is_no_code(tmp_path: Path) -> None:
    az = AzureCli(executable=_fake_cli(tmp_path, "ERROR: AADSTS" + "9" * 5000 + ": boom"))
    with pytest.raises(EntraError) as raised:
        await az.get_token_async(TokenRequest(("api://x/.default",)))
    assert raised.value.code is None
    assert len(str(raised.value)) < 2000


@pytest.mark.parametrize(
    "expires_in", [10**400, "1" + "0" * 400, "1e999", "nan", float("inf"), "soon", None]
)
def test_an_expires_in_that_is_no_lifetime_gives_a_bounded_one(expires_in: object) -> None:
    before = time.time()
    result = result_from_msal(
        {"access_token": "t", "expires_in": expires_in},
        source="obo",
        scopes=("api://x/.default",),
        kind=IdentityKind.USER,
    )
    assert before < result.expires_on <= time.time() + MAX_LIFETIME


@pytest.mark.parametrize("expires_in", [-5, 0, "-3600"])
def test_an_expires_in_that_says_expired_stays_expired(expires_in: object) -> None:
    """An identity endpoint's ``expires_on`` in the past (MSAL's negative ``expires_in``): the
    result is expired, so the chain refuses it (never served), not given 300 s."""
    result = result_from_msal(
        {"access_token": "t", "expires_in": expires_in},
        source="managed_identity",
        scopes=("api://x/.default",),
        kind=IdentityKind.APP,
    )
    assert result.expires_on <= time.time()


def test_an_mcp_consent_error_nested_too_deep_is_no_consent() -> None:
    from mcp import MCPError
    from mcp_types import ErrorData

    from entra_passthrough.mcp import FOUNDRY_CONSENT_REQUIRED, consent_from_exception

    message = "consent " + '{"a":' * 100_000 + "1" + "}" * 100_000
    exc = MCPError.from_error_data(ErrorData(code=FOUNDRY_CONSENT_REQUIRED, message=message))
    assert consent_from_exception(exc) is None


@pytest.mark.parametrize(
    "body",
    [{"error": "interaction_required"}, {"error": "invalid_grant", "suberror": "consent_required"}],
    ids=["interaction", "consent"],
)
def test_an_error_body_without_a_code_and_a_fix_is_typed(body: dict[str, str]) -> None:
    """A managed identity endpoint (or a proxy) answering a consent or interaction error with
    no AADSTS code: the source's fallback fix must not crash the typed error (it raised
    TypeError: the consent and interaction errors take no fix)."""
    from entra_passthrough import TokenAcquisitionError
    from entra_passthrough._errors import error_from_entra

    error = error_from_entra(body, source="managed_identity", scopes=("x",), fix="check it")
    assert isinstance(error, TokenAcquisitionError)
