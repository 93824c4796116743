"""The OpenTelemetry adapter, read through the SDK's in-memory reader."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.metrics_helpers import (  # noqa: F401 (otel_reader: a fixture)
    OTHER_PARTS,
    OTHER_PARTS_SEEN,
    Boom,
    boom,
    otel_reader,
    point,
    points,
)
from xnai_core import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, events
from xnai_core.metrics import enable_opentelemetry


async def test_breaker_instruments(reader: InMemoryMetricReader) -> None:
    b = CircuitBreaker(CircuitBreakerConfig(name="otel-llm", failure_threshold=1, timeout=None))
    await b.call(asyncio.sleep, 0)
    with pytest.raises(Boom):
        await b.call(boom)
    with pytest.raises(CircuitOpenError):
        await b.call(asyncio.sleep, 0)
    found = points(reader)
    duration = "xnai.circuitbreaker.call.duration"
    assert point(found, duration, name="otel-llm", kind="successful").count == 1
    assert point(found, duration, name="otel-llm", kind="failed").count == 1
    assert point(found, "xnai.circuitbreaker.not_permitted", name="otel-llm").value == 1
    state = "xnai.circuitbreaker.state"
    assert point(found, state, name="otel-llm", state="open").value == 1
    assert point(found, state, name="otel-llm", state="closed").value == 0


def test_other_instruments(reader: InMemoryMetricReader) -> None:
    hook = events.get_hooks()[-1]
    for event in OTHER_PARTS:
        hook(event)
    found = points(reader)
    for _, instrument, labels, expected in OTHER_PARTS_SEEN:
        assert point(found, instrument, **labels).value == expected, (instrument, labels)
    checks = point(found, "xnai.health.check.duration", service="rag_api")
    assert (checks.count, checks.sum) == (2, 0.203)


def test_enabling_twice_records_once() -> None:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    first = enable_opentelemetry(provider)
    try:
        assert enable_opentelemetry(provider) is first
        assert events.get_hooks().count(first.hook) == 1
    finally:
        first.disable()
        provider.shutdown()
    assert first.hook not in events.get_hooks()


def test_meter_provider_is_checked() -> None:
    with pytest.raises(TypeError, match="'meter_provider' must be an OpenTelemetry MeterProvider"):
        enable_opentelemetry("provider")
