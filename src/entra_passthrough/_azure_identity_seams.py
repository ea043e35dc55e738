"""Every use of a private name of azure-identity, in one place.

``AzureCli``'s async path runs the CLI itself (azure-identity's aio credential leaves the CLI
running when the awaiting task is cancelled) but keeps azure-identity's command line, parser
and texts, which live in its private ``azure.identity._credentials.azure_cli`` / ``azd_cli``
modules. ``tests/seams/test_azure_identity_seams.py`` fails with "azure-identity <version>
moved <name>: update _azure_identity_seams.py" when an upgrade moves one.

Checked against azure-identity 1.27 (``pyproject.toml`` allows >= 1.25, < 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CliContract", "cli_contract"]


@dataclass(frozen=True, slots=True)
class CliContract:
    """What azure-identity's credential for one CLI runs and says."""

    #: The command line after the executable (``az account get-access-token --output json``).
    command_line: tuple[str, ...]
    #: The CLI's JSON output -> an ``AccessToken``-like value (``None`` if unreadable).
    parse_token: Callable[[str], Any]
    #: The CLI's error output, with anything that looks like a secret removed.
    sanitize_output: Callable[[str], str]
    #: azure-identity's texts for "the CLI is not installed" / "not signed in".
    not_found: str
    not_logged_in: str


def cli_contract(tool: str) -> CliContract:
    """azure-identity's ``COMMAND_LINE``, ``parse_token``, ``sanitize_output``,
    ``CLI_NOT_FOUND`` and ``NOT_LOGGED_IN`` for ``az`` (``_credentials.azure_cli``) or ``azd``
    (``_credentials.azd_cli``)."""
    module: Any
    if tool == "az":
        from azure.identity._credentials import azure_cli as module
    else:
        from azure.identity._credentials import azd_cli as module
    return CliContract(
        command_line=tuple(module.COMMAND_LINE),
        parse_token=module.parse_token,
        sanitize_output=module.sanitize_output,
        not_found=module.CLI_NOT_FOUND,
        not_logged_in=module.NOT_LOGGED_IN,
    )
