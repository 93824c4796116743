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
from xnai_core.events import Event
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
