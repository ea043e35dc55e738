"""Property: whatever a caller presents, OnBehalfOf answers with a typed error or nothing,
never a crash, and never a request to Entra (nothing listens at its authority)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _support.tokens import unsigned
from entra_passthrough import (
    AssertionNotUsable,
    Caller,
    OnBehalfOf,
    TenantNotAllowed,
    TokenAcquisitionError,
    TokenRequest,
)

CLIENT = "22222222-2222-2222-2222-222222222222"
OBO = OnBehalfOf(
    client_id=CLIENT,
    tenant_id="t1",
    client_secret="s",
    authority_host="https://127.0.0.1:9",
    # Longer than any generated tid: every decodable token stops at the tenant check at last.
    allowed_tenants=["tenant-that-no-strategy-generates"],
)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
claims = st.fixed_dictionaries(
    {},
    optional={
        "aud": st.sampled_from([CLIENT, f"api://{CLIENT}", "https://ai.azure.com"]) | json_values,
        "exp": json_values,
        "tid": st.sampled_from(["t1", "other-tenant"]) | json_values,
        "scp": json_values,
        "roles": json_values,
        "idtyp": json_values,
        "upn": json_values,
    },
)
tokens = (
    st.text(max_size=200)
    | claims.map(lambda c: unsigned({"alg": "RS256"}, c, b"sig"))
    | st.binary(max_size=100).map(lambda b: b.decode("latin-1"))
)


@settings(max_examples=300, deadline=None)
@given(token=tokens)
def test_preflight_never_crashes_and_never_sends(token: str) -> None:
    request = TokenRequest(("api://mcp/.default",), Caller.from_token(token))
    with pytest.raises(TokenAcquisitionError) as info:
        OBO.get_token(request)
    assert info.value.source == "obo"
    # A pre-flight refusal; a request that went out would end as SourceUnavailable.
    assert isinstance(info.value, AssertionNotUsable | TenantNotAllowed), type(info.value)
    if len(token) >= 40:  # short junk can occur in any message text by chance
        assert token not in str(info.value)
    assert OBO.msal_apps() == []
