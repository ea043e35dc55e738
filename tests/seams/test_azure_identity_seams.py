"""The private names of azure-identity that ``_azure_identity_seams`` touches are where it
expects them. Each failure names azure-identity's version, what moved, and the seam."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from entra_passthrough._azure_identity_seams import CliContract, cli_contract

IDENTITY = f"azure-identity {metadata.version('azure-identity')}"


@pytest.mark.parametrize(
    ("tool", "module", "verb"),
    [("az", "azure_cli", "get-access-token"), ("azd", "azd_cli", "token")],
)
def test_the_cli_contract_is_where_the_seam_reads_it(tool: str, module: str, verb: str) -> None:
    where = f"azure.identity._credentials.{module}"
    try:
        contract = cli_contract(tool)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{IDENTITY} moved {where} ({exc}): update _azure_identity_seams.py.")
    assert isinstance(contract, CliContract)
    assert verb in contract.command_line, (
        f"{IDENTITY} changed {where}.COMMAND_LINE to {contract.command_line}: update "
        "_azure_identity_seams.py and AzureCli._argv."
    )
    assert contract.not_found
    assert contract.not_logged_in
    # The output shapes AzureCli hands it: az's accessToken/expiresOn, azd's token/expiresOn.
    field = "accessToken" if tool == "az" else "token"
    output = json.dumps({field: "t", "expiresOn": "2030-01-01T00:00:00Z", "expires_on": 1893456000})
    token = contract.parse_token(output)
    assert token is not None, f"{IDENTITY} changed {where}.parse_token: update the seam."
    assert token.token == "t"
    assert token.expires_on > 0
    assert "s3cret" not in contract.sanitize_output(json.dumps({field: "s3cret"})), (
        f"{IDENTITY} changed {where}.sanitize_output: it no longer removes a token."
    )
