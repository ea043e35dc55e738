"""OpenTelemetry in tests: spans into an in-memory exporter, whatever provider is already there."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def export_spans_to(exporter: InMemorySpanExporter) -> None:
    """Send every finished span to ``exporter``. The global tracer provider can be set once per
    process: an SDK provider already there (another module's, the hygiene harness's) gets the
    exporter added, else one is installed."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        current.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
