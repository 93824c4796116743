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
read from the live sinks at scrape time; one process only (not in multiprocess mode).

Two ways to record, chosen by :func:`enable_prometheus`:

- One process (the default): a custom collector. Events add to our own counters
  and bucket arrays (:mod:`._aggregate`); the collector turns them into samples at
  scrape time and reads current state (a circuit's state, a monitor's statuses)
  from the live objects, so it is right even for a change another process made.
- ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn/uvicorn workers): prometheus_client's
  own metrics, which write to files that ``MultiProcessCollector`` sums. State
  gauges are set on every change each worker sees and use ``livemostrecent``;
  "is anything wrong" gauges use ``livemax`` (degraded, alert active, escalated)
  and Redis availability ``livemin``, so one worker's trouble shows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import events
from ..circuit.breaker import CircuitBreaker
from ..events import CallKind, CallRecorder
from ..health.monitor import HealthMonitor
from ._aggregate import HISTOGRAM_KINDS, LATENCY_BUCKETS, Aggregate
from ._alert_sinks import sink_counts
from ._sink import CIRCUIT_STATES, DEFAULT_MAX_NAMES, HEALTH_STATUSES, EventsToSink, Labels

_HELP = {
    "xnai_circuitbreaker_state": "1 for the circuit's current state, 0 for the others",
    "xnai_circuitbreaker_calls_seconds": "Duration of calls through the circuit, by outcome",
    "xnai_circuitbreaker_not_permitted_calls": "Calls the open circuit rejected",
    "xnai_circuitbreaker_fallback_calls": "Calls the fallback answered",
    "xnai_circuitbreaker_redis_available": "1 while the circuit is in step with Redis",
    "xnai_degradation_calls": "Degradation manager calls, by who answered",
    "xnai_degradation_degraded": "1 while the service is answered by a degraded strategy",
    "xnai_health_status": "1 for the service's current health status, 0 for the others",
    "xnai_health_check_duration_seconds": "Duration of health checks",
    "xnai_health_checks": "Health checks run, by result",
    "xnai_alerts_active": "1 while the alert is active",
    "xnai_recovery_attempts": "Recovery actions run, by result",
    "xnai_recovery_escalated": "1 while automated recovery has escalated to a person",
    "xnai_alert_notifications_sent": "Alert notifications the sink delivered",
    "xnai_alert_notifications_retried": "Failed alert delivery attempts that were tried again",
    "xnai_alert_notifications_dropped": "Alert notifications never delivered, by reason",
    "xnai_alert_queue_length": "Alert notifications waiting in the sink (in flight included)",
    "xnai_alert_last_error_timestamp_seconds": "When the sink's last delivery attempt failed",
}


_RANK = {"closed": 0, "half_open": 1, "open": 2}


def _one_hot(
    family: GaugeMetricFamily, labels: list[str], current: str, values: Iterable[str]
) -> None:
    for value in values:
        family.add_metric([*labels, value], 1.0 if value == current else 0.0)


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
        return {name: kind(name, _HELP[name], labels=labels) for name, kind, labels in specs}

    def _fill(self, f: dict[str, Any]) -> None:
        agg, hook = self.aggregate, self.hook
        # A circuit's state and Redis link are read from the live breakers (a dead
        # breaker's series goes with it); a service's status from the live monitors,
        # else from the last check event.
        redis: dict[str, bool] = {}
        statuses = dict(agg.statuses)
        states: dict[str, str] = {}
        for source in events.live_sources():
            if isinstance(source, CircuitBreaker):
                name = hook.labels.breaker(source.name)
                # Two live breakers of one name: show the worse state, never hide an open one.
                state = source.state.value
                if _RANK[state] >= _RANK[states.get(name, "closed")]:
                    states[name] = state
                available = source.store.available
                if available is not None:
                    redis[name] = available
            elif isinstance(source, HealthMonitor):
                for service in source.services:
                    statuses[hook.labels.service(service)] = source.get_status(service).value
        for name, state in sorted(states.items()):
            _one_hot(f["xnai_circuitbreaker_state"], [name], state, CIRCUIT_STATES)
        for name, available in sorted(redis.items()):
            f["xnai_circuitbreaker_redis_available"].add_metric([name], float(available))
        for labels, buckets, total in agg.histograms(agg.calls):
            f["xnai_circuitbreaker_calls_seconds"].add_metric(list(labels), buckets, total)
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
                "xnai_recovery_escalated": list(agg.escalations.items()),
            }
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
        for (sink, kind), sink_count in sink_counts(hook.labels).items():
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


class ClientSink:
    """prometheus_client's own metrics, for multiprocess mode (one file per worker)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, labels: list[str], mode: str) -> Gauge:
            return Gauge(name, _HELP[name], labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]

        def counter(name: str, labels: list[str]) -> Counter:
            return Counter(name, _HELP[name], labels, registry=registry)

        def histogram(name: str, labels: list[str]) -> Histogram:
            return Histogram(name, _HELP[name], labels, registry=registry, buckets=LATENCY_BUCKETS)

        self._state = gauge("xnai_circuitbreaker_state", ["name", "state"], "livemostrecent")
        self._calls = histogram("xnai_circuitbreaker_calls_seconds", ["name", "kind"])
        self._not_permitted = counter("xnai_circuitbreaker_not_permitted_calls", ["name"])
        self._fallback = counter("xnai_circuitbreaker_fallback_calls", ["name"])
        self._redis = gauge("xnai_circuitbreaker_redis_available", ["name"], "livemin")
        self._degradation = counter("xnai_degradation_calls", ["service", "source"])
        self._degraded = gauge("xnai_degradation_degraded", ["service"], "livemax")
        self._status = gauge("xnai_health_status", ["service", "status"], "livemostrecent")
        self._check_seconds = histogram("xnai_health_check_duration_seconds", ["service"])
        self._checks = counter("xnai_health_checks", ["service", "result"])
        self._alerts = gauge("xnai_alerts_active", ["service", "alert"], "livemax")
        self._recovery = counter("xnai_recovery_attempts", ["service", "action", "result"])
        self._escalated = gauge("xnai_recovery_escalated", ["service"], "livemax")
        self._lock = threading.Lock()
        self.on_new_breaker: Callable[[], None] = lambda: None

    def call_recorder(self, breaker: str) -> CallRecorder:
        timed = {kind: self._calls.labels(breaker, kind) for kind in HISTOGRAM_KINDS}
        rejected = self._not_permitted.labels(breaker)
        first = True

        def record(kind: CallKind, seconds: float) -> None:
            nonlocal first
            if first:  # a breaker made after enable_prometheus(): show its state
                first = False
                self.on_new_breaker()
            if kind == "not_permitted":
                rejected.inc()
            else:
                timed[kind].observe(seconds)

        return record

    def fallback(self, breaker: str) -> None:
        self._fallback.labels(breaker).inc()

    def state(self, breaker: str, state: str) -> None:
        with self._lock:  # the three samples of one circuit change together
            for value in CIRCUIT_STATES:
                self._state.labels(breaker, value).set(1.0 if value == state else 0.0)

    def redis_available(self, breaker: str, available: bool) -> None:
        self._redis.labels(breaker).set(float(available))

    def degradation(self, service: str, source: str, degraded: bool) -> None:
        self._degradation.labels(service, source).inc()
        self._degraded.labels(service).set(float(degraded))

    def health(self, service: str, result: str, status: str, seconds: float) -> None:
        self._checks.labels(service, result).inc()
        self._check_seconds.labels(service).observe(seconds)
        with self._lock:
            for value in HEALTH_STATUSES:
                self._status.labels(service, value).set(1.0 if value == status else 0.0)

    def alert(self, service: str, alert: str, active: bool) -> None:
        self._alerts.labels(service, alert).set(float(active))

    def recovery(self, service: str, action: str, result: str) -> None:
        self._recovery.labels(service, action, result).inc()

    def escalated(self, service: str, escalated: bool) -> None:
        self._escalated.labels(service).set(float(escalated))


class PrometheusMetrics:
    """What :func:`enable_prometheus` installed: the hook and where it records."""

    def __init__(self, registry: CollectorRegistry, multiprocess: bool, max_names: int) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self.collector: XnaiCollector | None = None
        if multiprocess:
            sink = ClientSink(registry)
            self.hook = EventsToSink(sink, Labels(max_names))
            sink.on_new_breaker = self.hook.sync_breakers
        else:
            aggregate = Aggregate()
            self.hook = EventsToSink(aggregate, Labels(max_names))
            self.collector = XnaiCollector(aggregate, self.hook)
            registry.register(self.collector)
        events.add_hook(self.hook)
        if multiprocess:
            self.hook.sync_breakers()

    def __repr__(self) -> str:
        return f"<PrometheusMetrics multiprocess={self.multiprocess} registry={self.registry!r}>"

    def disable(self) -> None:
        """Stop recording: remove the hook (and the collector) again."""
        events.remove_hook(self.hook)
        if self.collector is not None:
            self.registry.unregister(self.collector)
            self.collector = None
        _enabled.pop(self.registry, None)


_enabled: dict[CollectorRegistry, PrometheusMetrics] = {}
_enable_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, when set (prometheus_client's multiprocess mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def enable_prometheus(
    registry: CollectorRegistry | None = None, *, max_names: int = DEFAULT_MAX_NAMES
) -> PrometheusMetrics:
    """Record xnai-core's metrics into ``registry`` (prometheus_client's default one
    when None) from now on; calling it again for the same registry returns the same
    object. Multiprocess mode is chosen when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    if registry is None:
        registry = REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"'registry' must be a prometheus_client CollectorRegistry: {registry!r}")
    with _enable_lock:
        existing = _enabled.get(registry)
        if existing is not None:
            return existing
        enabled = PrometheusMetrics(registry, multiprocess_dir() is not None, max_names)
        _enabled[registry] = enabled
        return enabled


def serving_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry a ``/metrics`` handler should expose: in multiprocess mode a fresh
    one over ``MultiProcessCollector`` (every worker's files), else ``registry``."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        served = CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
        return served
    return REGISTRY if registry is None else registry


__all__ = [
    "CIRCUIT_STATES",
    "HEALTH_STATUSES",
    "ClientSink",
    "PrometheusMetrics",
    "XnaiCollector",
    "enable_prometheus",
    "multiprocess_dir",
    "serving_registry",
]
