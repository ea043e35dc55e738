"""The one private name of MSAL the library uses: fails loudly, naming what moved."""

from __future__ import annotations

import inspect

import msal
from msal import managed_identity as msal_mi


def test_msal_app_service_helper_is_where_the_adapter_expects_it() -> None:
    obtain = getattr(msal_mi, "_obtain_token_on_app_service", None)
    assert obtain is not None, (
        f"MSAL {msal.__version__} moved msal.managed_identity._obtain_token_on_app_service; "
        "update entra_passthrough._msal.app_service_token (explicit managed identity endpoint)."
    )
    params = list(inspect.signature(obtain).parameters)
    assert len(params) == 5, (
        f"MSAL {msal.__version__} changed _obtain_token_on_app_service{params}; "
        "update entra_passthrough._msal.app_service_token."
    )
