"""Multiprocess mode: prometheus_client's own metrics, one set of files per worker.

Events write as they come (counters, histograms, state changes). What *is* is
written too: at scrape time by the scraping worker (:meth:`ClientSink.publish_current`,
from :func:`~xnai_core.metrics.prometheus.serving_registry`), and every few seconds by
each worker for what only it can know (its Redis links, its alert sinks' counters:
:meth:`ClientSink.publish_own`, from a :class:`Publisher` thread). prometheus_client
sums or picks across the files per each gauge's ``multiprocess_mode``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..events import CallKind, CallRecorder
from . import _current
from ._aggregate import HISTOGRAM_KINDS, LATENCY_BUCKETS
from ._alert_sinks import each_sink
from ._help import HELP
from ._sink import CIRCUIT_STATES, HEALTH_STATUSES, Labels

if TYPE_CHECKING:
    from ..alerting._sink import AlertSink

logger = logging.getLogger("xnai_core.metrics")


class ClientSink:
    """prometheus_client's own metrics, for multiprocess mode (one file per worker)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._metrics: list[Gauge | Counter | Histogram] = []

        def gauge(name: str, labels: list[str], mode: str) -> Gauge:
            made = Gauge(name, HELP[name], labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
            self._metrics.append(made)
            return made

        def counter(name: str, labels: list[str]) -> Counter:
            made = Counter(name, HELP[name], labels, registry=registry)
            self._metrics.append(made)
            return made

        def histogram(name: str, labels: list[str]) -> Histogram:
            made = Histogram(name, HELP[name], labels, registry=registry, buckets=LATENCY_BUCKETS)
            self._metrics.append(made)
            return made

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
        # Written by events and by every scrape from the latch as the replicas see it:
        # the most recent reading is the truth (a reset on a peer lowers it).
        self._escalated = gauge("xnai_recovery_escalated", ["service"], "livemostrecent")
        self._sent = counter("xnai_alert_notifications_sent", ["sink", "kind"])
        self._retried = counter("xnai_alert_notifications_retried", ["sink", "kind"])
        self._dropped = counter("xnai_alert_notifications_dropped", ["sink", "kind", "reason"])
        self._queued = gauge("xnai_alert_queue_length", ["sink", "kind"], "livesum")
        self._last_error = gauge(
            "xnai_alert_last_error_timestamp_seconds", ["sink", "kind"], "livemax"
        )
        self._lock = threading.Lock()
        self._published: weakref.WeakKeyDictionary[AlertSink, _Published] = (
            weakref.WeakKeyDictionary()
        )
        self._queue_labels: set[tuple[str, str]] = set()
        self.on_new_breaker: Callable[[], None] = lambda: None

    def unregister(self) -> None:
        """Take these metrics out of the registry (a later enable makes them again)."""
        for metric in self._metrics:
            self._registry.unregister(metric)
        self._metrics.clear()

    def call_recorder(self, breaker: str) -> CallRecorder:
        timed = {kind: self._calls.labels(breaker, kind) for kind in HISTOGRAM_KINDS}
        rejected = self._not_permitted.labels(breaker)
        self._fallback.labels(breaker)  # at 0 before the first (increase() needs it)
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

    # -- what is, written at scrape time and every few seconds ------------------

    def publish_current(self, labels: Labels) -> None:
        """Write what this process sees now of what every process shares: the states
        of Redis-backed circuits in step with Redis and the escalation latches as read
        from Redis (the most recent write wins); then :meth:`publish_own`.

        Never this process's own circuits or latches: an in-memory breaker, a shared
        circuit cut off from Redis (each worker then decides alone), or a manager
        without a coordinator, is one per worker, and writing this worker's closed
        circuit at every scrape would hide another worker's open one."""
        states, _ = _current.circuits(labels, shared_only=True)
        for name, state in states.items():
            self.state(name, state)
        for service, escalated in _current.escalations(labels, shared_only=True).items():
            self.escalated(service, escalated)
        self.publish_own(labels)

    def publish_own(self, labels: Labels) -> None:
        """Write what only this process knows and the others cannot read: its Redis
        links, its alert sinks' counters, and its monitors' and recovery managers'
        counters at 0 before their first increment (each worker, every few seconds)."""
        states, links = _current.circuits(labels)
        for name, available in links.items():
            self.redis_available(name, available)
        # A breaker collected, a service removed, rules dropped: its one-hot gauges
        # stay in this worker's file; retracted (see _retract) rather than its last value.
        with self._lock:
            for name in labels.live_states.gone(states):
                for value in CIRCUIT_STATES:
                    _retract(self._state.labels(name, value))
            for service in labels.live_statuses.gone(_current.statuses(labels)):
                for value in HEALTH_STATUSES:
                    _retract(self._status.labels(service, value))
        for service in labels.live_escalations.gone(_current.escalations(labels)):
            _retract(self._escalated.labels(service))
        # Counters that may be counted, at 0 before their first increment.
        for service, result in _current.health_results(labels):
            self._checks.labels(service, result)
        for service, action, result in _current.recovery_results(labels):
            self._recovery.labels(service, action, result)
        queued: dict[tuple[str, str], int] = {}
        last_error: dict[tuple[str, str], float] = {}
        with self._lock:  # the scrape and the publisher thread: one delta each
            for sink, key, stats in each_sink(labels):
                before = self._published.get(sink) or _Published()
                self._sent.labels(*key).inc(stats.sent - before.sent)
                self._retried.labels(*key).inc(stats.retried - before.retried)
                for reason, dropped in stats.dropped_by_reason.items():
                    gone = dropped - before.dropped.get(reason, 0)
                    self._dropped.labels(*key, reason).inc(gone)
                self._published[sink] = _Published(
                    stats.sent, stats.retried, dict(stats.dropped_by_reason)
                )
                queued[key] = queued.get(key, 0) + stats.queued
                if stats.last_error_at is not None:
                    last_error[key] = max(last_error.get(key, 0.0), stats.last_error_at)
            # A sink gone since: its queue is no longer this process's.
            for key in self._queue_labels - queued.keys():
                self._queued.labels(*key).set(0)
            self._queue_labels = set(queued)
            for key, length in queued.items():
                self._queued.labels(*key).set(length)
            for key, at in last_error.items():
                self._last_error.labels(*key).set(at)


def _retract(gauge: Gauge) -> None:
    """Write 0 as the oldest write there can be (time 0) to a ``livemostrecent`` gauge
    of something no live object of this worker shows any more.

    Written at the present time, the 0 was the most recent write: a worker that dropped
    its breaker of a shared circuit hid the open state every other worker's live breaker
    had written, in every scrape. At time 0 it loses to any worker's write, and alone it
    shows nothing (prometheus_client keeps only writes after time 0), as a collected
    breaker shows nothing in one process. ``Gauge.set`` stamps the present time, so the
    value is set with its timestamp directly.
    """
    try:
        gauge._value.set(0.0, timestamp=0.0)
    except (AttributeError, TypeError):  # a prometheus_client without write timestamps
        gauge.set(0.0)


@dataclass(frozen=True, slots=True)
class _Published:
    """A sink's counts as last written to this process's files."""

    sent: int = 0
    retried: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Publisher:
    """A daemon thread that calls ``publish`` every ``interval`` seconds, in this
    process and (restarted after a fork) in each child, until stopped."""

    def __init__(self, publish: Callable[[], None], interval: float) -> None:
        self._publish = publish
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start()
        me = weakref.ref(self)

        def restart_in_child() -> None:
            publisher = me()
            if publisher is not None and not publisher._stop.is_set():
                publisher.start()

        os.register_at_fork(after_in_child=restart_in_child)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="xnai-metrics-publisher", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._publish()
            except Exception:  # a live object changing under us: next round
                logger.exception("publishing the metrics of this process failed")

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
