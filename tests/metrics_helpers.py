"""What the events and metrics tests share: a recording hook, a clean slate of global
hooks, and Prometheus' text exposition parsed as Prometheus parses it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xnai_core import events
from xnai_core.events import (
    AlertChanged,
    DegradationCall,
    Event,
    HealthChecked,
    RecoveryAttempted,
    RecoveryEscalated,
)
from xnai_core.metrics import enable_opentelemetry

E = TypeVar("E")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Recorder:
    """A hook that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture(autouse=True)
def no_global_hooks() -> Iterator[None]:
    """No global hook before or after the test (import it into a test module to use)."""
    events.install_hooks()
    yield
    events.install_hooks()


def parse(text: str) -> Samples:
    """Every sample of a text exposition, by (name, sorted labels); a series twice fails."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name, tuple(sorted(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the registry's text exposition."""
    return parse(generate_latest(registry).decode())


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[metric, tuple(sorted(labels.items()))]


def series(samples: Samples, metric: str) -> list[dict[str, str]]:
    return [dict(labels) for name, labels in samples if name == metric]


Points = dict[str, list[tuple[dict[str, Any], Any]]]


@pytest.fixture(name="reader")
def otel_reader() -> Iterator[InMemoryMetricReader]:
    """Fixture ``reader`` (import ``otel_reader`` to use it): the OpenTelemetry adapter
    enabled on an SDK provider with an in-memory reader."""
    gc.collect()  # live objects of earlier tests must not show here
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    enabled = enable_opentelemetry(provider)
    yield memory
    enabled.disable()
    events.install_hooks()
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> Points:
    """Every instrument's data points: (attributes, point) pairs, by name."""
    data = reader.get_metrics_data()
    assert data is not None
    found: Points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "xnai_core"
            for metric in scope.metrics:
                found[metric.name] = [
                    (dict(point.attributes or {}), point) for point in metric.data.data_points
                ]
    return found


def point(found: Points, metric: str, /, **attrs: str) -> Any:
    matches = [p for a, p in found[metric] if a == attrs]
    assert len(matches) == 1, (metric, attrs, found.get(metric))
    return matches[0]


class Boom(Exception):
    """The protected dependency failed."""


async def boom() -> None:
    raise Boom


OTHER_PARTS: tuple[Event, ...] = (
    DegradationCall("chat", "primary", False, True, 0.01),
    DegradationCall("chat", "cache", True, True, 0.001),
    HealthChecked("rag_api", "unhealthy", "unhealthy", 0.2),
    HealthChecked("rag_api", "healthy", "degraded", 0.003),
    AlertChanged("rag_api", "consecutive_failures", "critical", True),
    AlertChanged("rag_api", "status", "critical", True),
    AlertChanged("rag_api", "status", "critical", False),
    RecoveryAttempted("rag_api", "restart_service", "failure", 1, 0.5),
    RecoveryAttempted("rag_api", "restart_service", "success", 2, 0.5),
    RecoveryEscalated("rag_api", True, "3 attempts failed"),
)
"""Events of the degradation, health and recovery parts, for both adapters' tests."""

_RAG, _RESTART = {"service": "rag_api"}, {"service": "rag_api", "action": "restart_service"}
_ATTEMPTS = ("xnai_recovery_attempts_total", "xnai.recovery.attempts")
OTHER_PARTS_SEEN: tuple[tuple[str, str, dict[str, str], float], ...] = (
    ("xnai_degradation_calls_total", "xnai.degradation.calls",
     {"service": "chat", "source": "primary"}, 1),
    ("xnai_degradation_calls_total", "xnai.degradation.calls",
     {"service": "chat", "source": "cache"}, 1),
    ("xnai_degradation_degraded", "xnai.degradation.degraded", {"service": "chat"}, 1),
    ("xnai_health_checks_total", "xnai.health.checks", {**_RAG, "result": "unhealthy"}, 1),
    ("xnai_health_checks_total", "xnai.health.checks", {**_RAG, "result": "healthy"}, 1),
    ("xnai_health_status", "xnai.health.status", {**_RAG, "status": "degraded"}, 1),
    ("xnai_health_status", "xnai.health.status", {**_RAG, "status": "unhealthy"}, 0),
    ("xnai_alerts_active", "xnai.alerts.active", {**_RAG, "alert": "consecutive_failures"}, 1),
    ("xnai_alerts_active", "xnai.alerts.active", {**_RAG, "alert": "status"}, 0),
    (*_ATTEMPTS, {**_RESTART, "result": "failure"}, 1),
    (*_ATTEMPTS, {**_RESTART, "result": "success"}, 1),
    ("xnai_recovery_escalated", "xnai.recovery.escalated", _RAG, 1),
)  # fmt: skip
"""What :data:`OTHER_PARTS` leaves: (Prometheus metric, OpenTelemetry instrument,
labels, value)."""
