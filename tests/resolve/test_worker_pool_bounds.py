"""A worker pool's size is checked where it is configured: a typed error with a fix, never a
thread-start crash at start-up (``WorkerPool.start`` starts every worker)."""

from __future__ import annotations

import pytest

from entra_passthrough import ConfigurationError, OnBehalfOf
from entra_passthrough._msal import MAX_WORKERS_LIMIT, WorkerPool


@pytest.mark.parametrize("size", [0, -1, MAX_WORKERS_LIMIT + 1, 10**20, True, 8.0, "8"])
def test_a_pool_size_out_of_bounds_is_a_configuration_error(size: object) -> None:
    with pytest.raises(ConfigurationError, match="max_workers"):
        WorkerPool(max_workers=size)  # type: ignore[arg-type]


def test_the_environment_variable_is_checked_by_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CLIENT_ID", "6cd0b7f2-2473-5d24-a86c-13c1e27b8228")
    monkeypatch.setenv("AZURE_TENANT_ID", "979269af-69e0-5206-a3f3-b961c29811d3")
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CLIENT_SECRET", "not-a-real-secret")
    monkeypatch.setenv("ENTRA_PASSTHROUGH_MAX_WORKERS", "99999999999999999999")
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env()
    assert "between 1 and" in str(info.value)
    assert info.value.fix


def test_a_pool_at_the_limit_is_accepted_and_not_started_until_asked() -> None:
    pool = WorkerPool(max_workers=MAX_WORKERS_LIMIT)
    assert pool.max_workers == MAX_WORKERS_LIMIT
