"""OpenTelemetry metrics over :mod:`xnai_core.events` (needs ``xnai-core[otel]``).

Only ``opentelemetry-api`` is used: the application chooses the SDK, exporters and
readers. The instruments mirror the Prometheus ones under OpenTelemetry naming
(dotted names, units as metadata, ``_total`` left to exporters):

=====================================  ================  ==========================
instrument                             kind              attributes
=====================================  ================  ==========================
``xnai.circuitbreaker.state``          observable gauge  name, state (1 current)
``xnai.circuitbreaker.call.duration``  histogram (s)     name, kind
``xnai.circuitbreaker.not_permitted``  counter           name
``xnai.circuitbreaker.fallback``       counter           name
``xnai.circuitbreaker.redis_available``observable gauge  name
``xnai.degradation.calls``             counter           service, source
``xnai.degradation.degraded``          observable gauge  service
``xnai.health.status``                 observable gauge  service, status (1 current)
``xnai.health.check.duration``         histogram (s)     service
``xnai.health.checks``                 counter           service, result
``xnai.alerts.active``                 observable gauge  service, alert
``xnai.recovery.attempts``             counter           service, action, result
``xnai.recovery.escalated``            observable gauge  service
``xnai.alert.notifications.sent``      obs. counter      sink, kind
``xnai.alert.notifications.retried``   obs. counter      sink, kind
``xnai.alert.notifications.dropped``   obs. counter      sink, kind, reason
``xnai.alert.queue.length``            observable gauge  sink, kind
``xnai.alert.last_error.timestamp``    observable gauge  sink, kind (Unix time, s)
=====================================  ================  ==========================

Gauges are observed at collection time, circuit states from the live breakers, and
the ``xnai.alert.*`` instruments from the live alert sinks' ``stats()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .. import events
from ..events import CALL_KINDS, CallKind, CallRecorder
from . import _current
from ._alert_sinks import SinkCounts, sink_counts
from ._sink import CIRCUIT_STATES, DEFAULT_MAX_NAMES, HEALTH_STATUSES, EventsToSink, Labels


class OpenTelemetrySink:
    """Counters and histograms recorded as events come; gauges kept for observation."""

    def __init__(self, meter: otel_metrics.Meter, labels: Labels) -> None:
        self._labels = labels
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._redis: dict[str, bool] = {}
        self._degraded: dict[str, bool] = {}
        self._statuses: dict[str, str] = {}
        self._alerts: dict[tuple[str, str], bool] = {}
        self._escalated: dict[str, bool] = {}
        self._calls = meter.create_histogram(
            "xnai.circuitbreaker.call.duration", unit="s", description="Calls, by outcome"
        )
        self._not_permitted = meter.create_counter(
            "xnai.circuitbreaker.not_permitted", unit="{call}", description="Calls rejected"
        )
        self._fallback = meter.create_counter(
            "xnai.circuitbreaker.fallback", unit="{call}", description="Fallback answers"
        )
        self._degradation = meter.create_counter(
            "xnai.degradation.calls", unit="{call}", description="Calls, by who answered"
        )
        self._check_seconds = meter.create_histogram(
            "xnai.health.check.duration", unit="s", description="Health check duration"
        )
        self._checks = meter.create_counter(
            "xnai.health.checks", unit="{check}", description="Health checks, by result"
        )
        self._recovery = meter.create_counter(
            "xnai.recovery.attempts", unit="{attempt}", description="Recovery actions, by result"
        )
        meter.create_observable_gauge(
            "xnai.circuitbreaker.state", [self._observe_states], description="1: current state"
        )
        meter.create_observable_gauge(
            "xnai.circuitbreaker.redis_available", [self._observe_redis], description="1: in step"
        )
        meter.create_observable_gauge(
            "xnai.degradation.degraded", [self._observe_degraded], description="1: degraded"
        )
        meter.create_observable_gauge(
            "xnai.health.status", [self._observe_statuses], description="1: current status"
        )
        meter.create_observable_gauge(
            "xnai.alerts.active", [self._observe_alerts], description="1: alert active"
        )
        meter.create_observable_gauge(
            "xnai.recovery.escalated", [self._observe_escalated], description="1: escalated"
        )
        for name, kind, unit, description, observe in _SINK_INSTRUMENTS:
            create = (
                meter.create_observable_counter
                if kind == "counter"
                else meter.create_observable_gauge
            )
            create(name, [self._sink_observer(observe)], unit=unit, description=description)

    # -- Sink ------------------------------------------------------------------

    def call_recorder(self, breaker: str) -> CallRecorder:
        attributes = {kind: {"name": breaker, "kind": kind} for kind in CALL_KINDS}
        calls, rejected, of_breaker = self._calls, self._not_permitted, {"name": breaker}

        def record(kind: CallKind, seconds: float) -> None:
            if kind == "not_permitted":
                rejected.add(1, of_breaker)
            else:
                calls.record(seconds, attributes[kind])

        return record

    def fallback(self, breaker: str) -> None:
        self._fallback.add(1, {"name": breaker})

    def state(self, breaker: str, state: str) -> None:
        self._states[breaker] = state

    def redis_available(self, breaker: str, available: bool) -> None:
        self._redis[breaker] = available

    def degradation(self, service: str, source: str, degraded: bool) -> None:
        self._degradation.add(1, {"service": service, "source": source})
        self._degraded[service] = degraded

    def health(self, service: str, result: str, status: str, seconds: float) -> None:
        self._checks.add(1, {"service": service, "result": result})
        self._check_seconds.record(seconds, {"service": service})
        self._statuses[service] = status

    def alert(self, service: str, alert: str, active: bool) -> None:
        self._alerts[service, alert] = active

    def recovery(self, service: str, action: str, result: str) -> None:
        self._recovery.add(1, {"service": service, "action": action, "result": result})

    def escalated(self, service: str, escalated: bool) -> None:
        self._escalated[service] = escalated

    # -- observable gauges -------------------------------------------------------

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        states = self._labels.live_states.merge(self._states, _current.circuits(self._labels)[0])
        return [
            Observation(1 if state == value else 0, {"name": name, "state": value})
            for name, state in sorted(states.items())
            for value in CIRCUIT_STATES
        ]

    def _observe_redis(self, options: CallbackOptions) -> Iterable[Observation]:
        redis = self._labels.live_links.merge(self._redis, _current.circuits(self._labels)[1])
        return [Observation(int(up), {"name": name}) for name, up in sorted(redis.items())]

    def _observe_degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        items = sorted(self._degraded.items())
        return [Observation(int(flag), {"service": service}) for service, flag in items]

    def _observe_statuses(self, options: CallbackOptions) -> Iterable[Observation]:
        live = _current.statuses(self._labels)
        statuses = self._labels.live_statuses.merge(self._statuses, live)
        return [
            Observation(1 if status == value else 0, {"service": service, "status": value})
            for service, status in sorted(statuses.items())
            for value in HEALTH_STATUSES
        ]

    def _observe_alerts(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(flag), {"service": service, "alert": alert})
            for (service, alert), flag in sorted(self._alerts.items())
        ]

    def _observe_escalated(self, options: CallbackOptions) -> Iterable[Observation]:
        live = _current.escalations(self._labels)
        escalated = self._labels.live_escalations.merge(self._escalated, live)
        return [Observation(int(flag), {"service": s}) for s, flag in sorted(escalated.items())]

    def _sink_observer(
        self, observe: _SinkObservation
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """One callback over the live sinks' counts, ``observe`` making its observations."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(amount, {"sink": sink, "kind": kind, **extra})
                for (sink, kind), counts in sink_counts(self._labels).items()
                for amount, extra in observe(counts)
            ]

        return callback


_SinkObservation = Callable[[SinkCounts], Iterable[tuple[float, dict[str, str]]]]

_SINK_INSTRUMENTS: tuple[tuple[str, str, str, str, _SinkObservation], ...] = (
    (
        "xnai.alert.notifications.sent", "counter", "{notification}",
        "Alert notifications delivered", lambda c: [(c.sent, {})],
    ),
    (
        "xnai.alert.notifications.retried", "counter", "{attempt}",
        "Failed alert delivery attempts tried again", lambda c: [(c.retried, {})],
    ),
    (
        "xnai.alert.notifications.dropped", "counter", "{notification}",
        "Alert notifications never delivered, by reason",
        lambda c: [(n, {"reason": reason}) for reason, n in sorted(c.dropped.items())],
    ),
    (
        "xnai.alert.queue.length", "gauge", "{notification}",
        "Alert notifications waiting in the sink", lambda c: [(c.queued, {})],
    ),
    (
        "xnai.alert.last_error.timestamp", "gauge", "s",
        "When the sink's last delivery attempt failed (Unix time)",
        lambda c: [] if c.last_error_at is None else [(c.last_error_at, {})],
    ),
)  # fmt: skip
"""The alert sinks' instruments: name, kind, unit, description, observations."""


class OpenTelemetryMetrics:
    """What :func:`enable_opentelemetry` installed."""

    def __init__(self, provider: MeterProvider | None, max_names: int) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            own_version = version("xnai-core")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            own_version = ""
        meter = otel_metrics.get_meter("xnai_core", own_version, provider)
        labels = Labels(max_names)
        self.sink = OpenTelemetrySink(meter, labels)
        self.hook = EventsToSink(self.sink, labels)
        events.add_hook(self.hook)
        self.hook.sync_breakers()

    def disable(self) -> None:
        """Stop recording (instruments stay registered with the meter, silent); enabling
        again for the same provider makes a new adapter."""
        events.remove_hook(self.hook)


def enable_opentelemetry(
    meter_provider: MeterProvider | None = None, *, max_names: int = DEFAULT_MAX_NAMES
) -> OpenTelemetryMetrics:
    """Record xnai-core's metrics with ``meter_provider`` (the global one when None)."""
    if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
        raise TypeError(
            f"'meter_provider' must be an OpenTelemetry MeterProvider: {meter_provider!r}"
        )
    with _enable_lock:
        existing = _enabled.get(meter_provider)
        if existing is None or existing.hook not in events.get_hooks():
            existing = _enabled[meter_provider] = OpenTelemetryMetrics(meter_provider, max_names)
        return existing


# One adapter per meter provider (None: the global one): enabling twice records once.
_enabled: dict[MeterProvider | None, OpenTelemetryMetrics] = {}
_enable_lock = threading.Lock()
