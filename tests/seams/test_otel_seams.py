"""The private names of opentelemetry-api that ``_otel`` reads (to tell an application's
provider from the API's no-op proxy without creating one) are where it expects them."""

from __future__ import annotations

from importlib import metadata

import pytest

otel_trace = pytest.importorskip("opentelemetry.trace")
otel_metrics_internal = pytest.importorskip("opentelemetry.metrics._internal")

OTEL = f"opentelemetry-api {metadata.version('opentelemetry-api')}"


@pytest.mark.parametrize(
    ("module", "name", "seam"),
    [
        (otel_trace, "_TRACER_PROVIDER", "_otel.tracing"),
        (otel_metrics_internal, "_METER_PROVIDER", "_otel.metering"),
    ],
)
def test_the_global_provider_slots(module: object, name: str, seam: str) -> None:
    # Without the slot, _otel falls back to the public get_*_provider(): still correct, but a
    # few microseconds more on every request's check.
    assert hasattr(module, name), (
        f"{OTEL} moved {getattr(module, '__name__', module)}.{name}: update {seam} in _otel.py."
    )
