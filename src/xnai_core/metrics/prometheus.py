"""Prometheus metrics over :mod:`xnai_core.events` (needs ``xnai-core[prometheus]``).

Names follow Prometheus conventions (base units, ``_total`` counters) and the
Resilience4j names Grafana dashboards already use, under ``xnai_``:

========================================================  =========  =============================
metric                                                    type       labels
========================================================  =========  =============================
``xnai_circuitbreaker_state``                             gauge      name, state (1 current, 0 not)
``xnai_circuitbreaker_calls_seconds``                     histogram  name, kind
``xnai_circuitbreaker_not_permitted_calls_total``         counter    name
``xnai_circuitbreaker_fallback_calls_total``              counter    name
``xnai_circuitbreaker_redis_available``                   gauge      name (Redis-backed only)
``xnai_degradation_calls_total``                          counter    service, source
``xnai_degradation_degraded``                             gauge      service
``xnai_health_status``                                    gauge      service, status
``xnai_health_check_duration_seconds``                    histogram  service
``xnai_health_checks_total``                              counter    service, result
``xnai_alerts_active``                                    gauge      service, alert
``xnai_recovery_attempts_total``                          counter    service, action, result
``xnai_recovery_escalated``                               gauge      service
``xnai_alert_notifications_sent_total``                   counter    sink, kind
``xnai_alert_notifications_retried_total``                counter    sink, kind
``xnai_alert_notifications_dropped_total``                counter    sink, kind, reason
``xnai_alert_queue_length``                               gauge      sink, kind
``xnai_alert_last_error_timestamp_seconds``               gauge      sink, kind
========================================================  =========  =============================

The ``xnai_alert_*`` series are the alert sinks' own counters (``AlertSink.stats()``),
read from the live sinks at scrape time (in multiprocess mode, written by each worker).

Two ways to record, chosen by :func:`enable_prometheus`:

- One process (the default): a custom collector. Events add to our own counters
  and bucket arrays (:mod:`._aggregate`); the collector turns them into samples at
  scrape time and reads current state (a circuit's state, a monitor's statuses, the
  escalation latches) from the live objects (:mod:`._current`), so it is right even
  for a change another process made.
- ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn/uvicorn workers): prometheus_client's
  own metrics, which write to files that ``MultiProcessCollector`` sums
  (:mod:`._multiprocess`). State gauges are written on every change each worker
  sees and by the scraping worker at every scrape, and use ``livemostrecent``;
  "is anything wrong" gauges use ``livemax`` (degraded, alert active) and Redis
  availability ``livemin``, so one worker's trouble shows.

``/metrics`` handlers await :func:`refresh_shared_state` first (what lives in Redis).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import events
from .._validation import check_seconds
from . import _current
from ._aggregate import Aggregate
from ._alert_sinks import sink_counts
from ._current import refresh_shared_state
from ._exposition import exposition
from ._help import HELP
from ._multiprocess import ClientSink, Publisher
from ._sink import CIRCUIT_STATES, DEFAULT_MAX_NAMES, HEALTH_STATUSES, EventsToSink, Labels


def _one_hot(
    family: GaugeMetricFamily, labels: list[str], current: str, values: Iterable[str]
) -> None:
    for value in values:
        family.add_metric([*labels, value], 1.0 if value == current else 0.0)


PUBLISH_INTERVAL = 5.0
"""Seconds between two writes of a worker's own state in multiprocess mode."""


class XnaiCollector(Collector):
    """Samples from the in-process aggregate and the live objects, built at scrape."""

    def __init__(self, aggregate: Aggregate, hook: EventsToSink) -> None:
        self.aggregate = aggregate
        self.hook = hook

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        self._fill(families)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, Any]:
        gauge, counter, histogram = GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
        specs: list[tuple[str, Any, list[str]]] = [
            ("xnai_circuitbreaker_state", gauge, ["name", "state"]),
            ("xnai_circuitbreaker_calls_seconds", histogram, ["name", "kind"]),
            ("xnai_circuitbreaker_not_permitted_calls", counter, ["name"]),
            ("xnai_circuitbreaker_fallback_calls", counter, ["name"]),
            ("xnai_circuitbreaker_redis_available", gauge, ["name"]),
            ("xnai_degradation_calls", counter, ["service", "source"]),
            ("xnai_degradation_degraded", gauge, ["service"]),
            ("xnai_health_status", gauge, ["service", "status"]),
            ("xnai_health_check_duration_seconds", histogram, ["service"]),
            ("xnai_health_checks", counter, ["service", "result"]),
            ("xnai_alerts_active", gauge, ["service", "alert"]),
            ("xnai_recovery_attempts", counter, ["service", "action", "result"]),
            ("xnai_recovery_escalated", gauge, ["service"]),
            ("xnai_alert_notifications_sent", counter, ["sink", "kind"]),
            ("xnai_alert_notifications_retried", counter, ["sink", "kind"]),
            ("xnai_alert_notifications_dropped", counter, ["sink", "kind", "reason"]),
            ("xnai_alert_queue_length", gauge, ["sink", "kind"]),
            ("xnai_alert_last_error_timestamp_seconds", gauge, ["sink", "kind"]),
        ]
        return {name: kind(name, HELP[name], labels=labels) for name, kind, labels in specs}

    def _fill(self, f: dict[str, Any]) -> None:
        agg, guard = self.aggregate, self.hook.labels
        # What is (states, links, statuses, latches) is read from the live objects
        # (a dead breaker's series goes with it); what they no longer say, from events.
        states, redis = _current.circuits(guard)
        live_statuses, live_escalations = _current.statuses(guard), _current.escalations(guard)
        for name, state in states.items():
            _one_hot(f["xnai_circuitbreaker_state"], [name], state, CIRCUIT_STATES)
        for name, available in redis.items():
            f["xnai_circuitbreaker_redis_available"].add_metric([name], float(available))
        for labels, buckets, total in agg.histograms(agg.calls):
            f["xnai_circuitbreaker_calls_seconds"].add_metric(list(labels), buckets, total)
        known_checks = _current.health_results(guard)
        known_recoveries = _current.recovery_results(guard)
        with agg.lock:
            counts: dict[str, list[tuple[Any, int]]] = {
                "xnai_circuitbreaker_not_permitted_calls": list(agg.not_permitted_calls.items()),
                "xnai_circuitbreaker_fallback_calls": list(agg.fallback_calls.items()),
                "xnai_degradation_calls": list(agg.degradation_calls.items()),
                "xnai_health_checks": list(agg.checks.items()),
                "xnai_recovery_attempts": list(agg.recoveries.items()),
            }
            gauges: dict[str, list[tuple[Any, bool]]] = {
                "xnai_degradation_degraded": list(agg.degraded.items()),
                "xnai_alerts_active": list(agg.alerts.items()),
            }
            event_statuses, event_escalations = dict(agg.statuses), dict(agg.escalations)
        statuses = guard.live_statuses.merge(event_statuses, live_statuses)
        escalated = guard.live_escalations.merge(event_escalations, live_escalations)
        gauges["xnai_recovery_escalated"] = list(escalated.items())
        # Series that may be counted exist at 0 before (increase() needs a sample).
        for metric, known in (
            ("xnai_health_checks", known_checks),
            ("xnai_recovery_attempts", known_recoveries),
        ):
            counted = {labels for labels, _ in counts[metric]}
            counts[metric] += [(labels, 0) for labels in known if labels not in counted]
        for metric, items in counts.items():
            for labels, count in sorted(items):
                f[metric].add_metric(_labels(labels), float(count))
        for metric, flags in gauges.items():
            for labels, flag in sorted(flags):
                f[metric].add_metric(_labels(labels), float(flag))
        for service, status in sorted(statuses.items()):
            _one_hot(f["xnai_health_status"], [service], status, HEALTH_STATUSES)
        for labels, buckets, total in agg.histograms(agg.check_seconds):
            f["xnai_health_check_duration_seconds"].add_metric(list(labels), buckets, total)
        for (sink, kind), sink_count in sink_counts(guard).items():
            f["xnai_alert_notifications_sent"].add_metric([sink, kind], sink_count.sent)
            f["xnai_alert_notifications_retried"].add_metric([sink, kind], sink_count.retried)
            for reason, dropped in sorted(sink_count.dropped.items()):
                f["xnai_alert_notifications_dropped"].add_metric([sink, kind, reason], dropped)
            f["xnai_alert_queue_length"].add_metric([sink, kind], sink_count.queued)
            if sink_count.last_error_at is not None:
                last_error = f["xnai_alert_last_error_timestamp_seconds"]
                last_error.add_metric([sink, kind], sink_count.last_error_at)


def _labels(labels: str | tuple[str, ...]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


class PrometheusMetrics:
    """What :func:`enable_prometheus` installed: the hook and where it records."""

    def __init__(
        self,
        registry: CollectorRegistry,
        multiprocess: bool,
        max_names: int,
        publish_interval: float = PUBLISH_INTERVAL,
    ) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self.collector: XnaiCollector | None = None
        self.client_sink: ClientSink | None = None
        self._publisher: Publisher | None = None
        if multiprocess:
            sink = self.client_sink = ClientSink(registry)
            self.hook = EventsToSink(sink, Labels(max_names))
            sink.on_new_breaker = self.hook.sync_breakers
        else:
            aggregate = Aggregate()
            self.hook = EventsToSink(aggregate, Labels(max_names))
            self.collector = XnaiCollector(aggregate, self.hook)
            registry.register(self.collector)
        events.add_hook(self.hook)
        if self.client_sink is not None:
            self.hook.sync_breakers()
            labels, own = self.hook.labels, self.client_sink.publish_own
            self._publisher = Publisher(lambda: own(labels), publish_interval)

    def __repr__(self) -> str:
        return f"<PrometheusMetrics multiprocess={self.multiprocess} registry={self.registry!r}>"

    def publish(self) -> None:
        """Multiprocess mode: write what this process sees now (circuit states, Redis
        links, escalation latches, alert sinks' counters) for the next collection;
        :func:`serving_registry` does it at every scrape. One process: nothing to do."""
        if self.client_sink is not None:
            self.client_sink.publish_current(self.hook.labels)

    def disable(self) -> None:
        """Stop recording: remove the hook (and the collector, or the publisher) again."""
        events.remove_hook(self.hook)
        if self.collector is not None:
            self.registry.unregister(self.collector)
            self.collector = None
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
        if self.client_sink is not None:
            self.client_sink.unregister()
            self.client_sink = None
        _enabled.pop(self.registry, None)


_enabled: dict[CollectorRegistry, PrometheusMetrics] = {}
_enable_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, when set (prometheus_client's multiprocess mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def enable_prometheus(
    registry: CollectorRegistry | None = None,
    *,
    max_names: int = DEFAULT_MAX_NAMES,
    publish_interval: float = PUBLISH_INTERVAL,
) -> PrometheusMetrics:
    """Record xnai-core's metrics into ``registry`` (prometheus_client's default one
    when None) from now on; calling it again for the same registry returns the same
    object. Multiprocess mode is chosen when ``PROMETHEUS_MULTIPROC_DIR`` is set; each
    worker then writes what only it knows (Redis links, alert sinks' counters) every
    ``publish_interval`` seconds."""
    check_seconds("publish_interval", publish_interval)
    if registry is None:
        registry = REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"'registry' must be a prometheus_client CollectorRegistry: {registry!r}")
    with _enable_lock:
        existing = _enabled.get(registry)
        if existing is not None:
            return existing
        multiprocess = multiprocess_dir() is not None
        enabled = PrometheusMetrics(registry, multiprocess, max_names, float(publish_interval))
        _enabled[registry] = enabled
        return enabled


def serving_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry a ``/metrics`` handler should expose: in multiprocess mode a fresh
    one over ``MultiProcessCollector`` (every worker's files) that first writes what
    this worker sees now (:meth:`PrometheusMetrics.publish`), else ``registry``.

    Await :func:`refresh_shared_state` before collecting it, so what lives in Redis
    (circuits not loaded yet, peers' escalation latches) is current too."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        served = CollectorRegistry()
        served.register(_PublishThenCollect(multiprocess.MultiProcessCollector(None)))  # type: ignore[no-untyped-call]
        return served
    return REGISTRY if registry is None else registry


class _PublishThenCollect(Collector):
    def __init__(self, files: Collector) -> None:
        self._files = files

    def collect(self) -> Iterable[Metric]:
        for enabled in list(_enabled.values()):
            enabled.publish()
        return self._files.collect()


__all__ = [
    "CIRCUIT_STATES",
    "HEALTH_STATUSES",
    "PUBLISH_INTERVAL",
    "ClientSink",
    "PrometheusMetrics",
    "XnaiCollector",
    "enable_prometheus",
    "exposition",
    "multiprocess_dir",
    "refresh_shared_state",
    "serving_registry",
]
