"""The private names of MSAL the library uses (the explicit App Service endpoint, Service
Fabric's certificate-pinning session): fail loudly, naming what moved."""

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


def test_msal_service_fabric_pinning_helper_is_where_the_adapter_expects_it() -> None:
    derive = getattr(msal_mi, "_create_service_fabric_http_client", None)
    assert derive is not None, (
        f"MSAL {msal.__version__} moved msal.managed_identity._create_service_fabric_http_client"
        "; update entra_passthrough._msal.service_fabric_session (Service Fabric's "
        "certificate-pinning session)."
    )
    params = list(inspect.signature(derive).parameters)
    assert params == ["http_client", "endpoint", "server_thumbprint"], (
        f"MSAL {msal.__version__} changed _create_service_fabric_http_client{params}; "
        "update entra_passthrough._msal.service_fabric_session."
    )
