"""``entra-passthrough inspect``: claims table, per-source verdicts, never the token itself."""

from __future__ import annotations

import json
import re
import time

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_foundry_token_explains_why_obo_cannot(capsys: pytest.CaptureFixture[str]) -> None:
    token = unsigned_jwt(aud="https://ai.azure.com", oid="o1", tid="t1", upn="alice@contoso.com")
    code, out, _ = run(capsys, f"Bearer {token}")
    assert code == 0
    assert "alice@contoso.com" in out
    assert "[no ] OnBehalfOf" in out
    # Entra's code for a token issued for another audience is AADSTS500131, as OnBehalfOf and
    # docs/errors.md say (AADSTS50013 is a bad signature, issuer or tenant).
    assert "AADSTS500131" in out
    assert not re.search(r"AADSTS50013\b", out)
    assert "[yes] FoundryToolboxRoute" in out
    assert token not in out
    assert "NOT verified" in out


def test_json_and_client_id_check(capsys: pytest.CaptureFixture[str]) -> None:
    good = unsigned_jwt(aud="api://agent", oid="o", tid="t")
    code, out, _ = run(capsys, good, "--client-id", "agent", "--json")
    assert code == 0
    report = json.loads(out)
    obo = next(s for s in report["sources"] if s["source"] == "OnBehalfOf")
    assert obo["usable"] is True
    assert report["verified"] is False
    other = unsigned_jwt(aud="api://someone-else", oid="o", tid="t")
    _, out, _ = run(capsys, other, "--client-id", "agent", "--json")
    obo = next(s for s in json.loads(out)["sources"] if s["source"] == "OnBehalfOf")
    assert obo["usable"] is False
    assert "AADSTS500131" in obo["why"]
    assert not re.search(r"AADSTS50013\b", obo["why"])


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({"aud": "api://agent", "exp": time.time() - 10}, "AADSTS500133"),
        ({"aud": "api://agent", "scp": None, "roles": ["Task.Read"], "azp": "c"}, "AADSTS7000114"),
        ({"aud": "api://agent", "tid": "evil"}, "allow-list"),
    ],
)
def test_other_refusals(capsys: pytest.CaptureFixture[str], claims: dict, needle: str) -> None:
    body = {k: v for k, v in claims.items() if v is not None}
    token = unsigned_jwt(**body)
    if claims.get("scp", "") is None:
        token = unsigned_jwt(**body, scp="")
    code, out, _ = run(capsys, token, "--tenant", "contoso")
    assert code == 0
    assert needle in out


def test_not_a_jwt(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "opaque-secret-value")
    assert code == 2
    assert "opaque-secret-value" not in out + err
    assert "presented" in err
