"""What the metrics adapters do with events, as one small interface, and the hook
that turns events into calls of it.

:class:`EventsToSink` is the hook installed by ``enable_prometheus`` and
``enable_opentelemetry``; it maps each event to one sink method, with label values
made safe and bounded once per name (:mod:`._labels`). A sink records; it never
decides what an event means.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Hashable, Mapping
from typing import Generic, Protocol, TypeVar

from ..circuit.breaker import CircuitBreaker
from ..circuit.machine import CircuitState
from ..events import (
    AlertChanged,
    CallCompleted,
    CallRecorder,
    DegradationCall,
    Event,
    FallbackUsed,
    HealthChecked,
    RecoveryAttempted,
    RecoveryEscalated,
    StateChanged,
    live_sources,
)
from ..health.monitor import HealthMonitor
from ..health.result import HealthStatus
from ._labels import LabelGuard

DEFAULT_MAX_NAMES = 500
"""Distinct breaker and service names kept apart in labels, each (the rest: ``_other``)."""

CIRCUIT_STATES: tuple[str, ...] = tuple(state.value for state in CircuitState)
HEALTH_STATUSES: tuple[str, ...] = tuple(status.value for status in HealthStatus)


def redis_link(breaker: CircuitBreaker) -> bool | None:
    """Whether ``breaker`` is in step with Redis; None when that is not known: a store
    with no backend, or one this process has not started yet (a worker that never
    used the circuit must not say Redis is down)."""
    store = breaker.store
    if not getattr(store, "started", True):
        return None
    return store.available


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LiveFirst(Generic[K, V]):
    """Current state by label: what the live objects say, else what events said of a
    label no live object has shown. A label a live object showed and no longer does
    (a service removed from its monitor, a breaker collected) is gone, not stuck at
    its last event's value (an unhealthy service removed by a reload kept
    ``XnaiServiceUnhealthy`` firing)."""

    def __init__(self) -> None:
        self._seen_live: set[K] = set()  # bounded: label values are (LabelGuard)
        self._lock = threading.Lock()

    def note(self, key: K) -> None:
        """A live object shows ``key`` (an event it emitted, before any scrape)."""
        with self._lock:
            self._seen_live.add(key)

    def merge(self, from_events: Mapping[K, V], live: Mapping[K, V]) -> dict[K, V]:
        """``live`` over ``from_events``, without the labels live objects showed before."""
        with self._lock:
            self._seen_live.update(live)
            seen = set(self._seen_live)
        kept = {key: value for key, value in from_events.items() if key not in seen}
        return {**kept, **live}

    def gone(self, live: Mapping[K, V]) -> set[K]:
        """Labels live objects showed before and no longer do (and forget them)."""
        with self._lock:
            gone = self._seen_live - live.keys()
            self._seen_live = set(live)
        return gone


class Labels:
    """The label guards of one adapter: names made safe and bounded once each; and
    which labels live objects have shown (:class:`LiveFirst`), per kind of state."""

    def __init__(self, max_names: int = DEFAULT_MAX_NAMES) -> None:
        self.breaker = LabelGuard("breaker", max_names)
        self.service = LabelGuard("service", max_names)
        # Small vocabularies the user may extend (strategy, alert and action names).
        self.word = LabelGuard("strategy/alert/action", max_names)
        # Alert sinks' names and kinds (a name is the user's, so it is guarded too).
        self.sink = LabelGuard("alert sink", max_names)
        self.live_states: LiveFirst[str, str] = LiveFirst()
        self.live_links: LiveFirst[str, bool] = LiveFirst()
        self.live_statuses: LiveFirst[str, str] = LiveFirst()
        self.live_escalations: LiveFirst[str, bool] = LiveFirst()


class Sink(Protocol):
    """Where one adapter records; every argument is already a safe label value."""

    def call_recorder(self, breaker: str) -> CallRecorder:
        """Where ``breaker``'s call outcomes go: (kind, seconds), on the hot path."""

    def fallback(self, breaker: str) -> None: ...
    def state(self, breaker: str, state: str) -> None: ...
    def redis_available(self, breaker: str, available: bool) -> None: ...
    def degradation(self, service: str, source: str, degraded: bool) -> None: ...
    def health(self, service: str, result: str, status: str, seconds: float) -> None: ...
    def alert(self, service: str, alert: str, active: bool) -> None: ...
    def recovery(self, service: str, action: str, result: str) -> None: ...
    def escalated(self, service: str, escalated: bool) -> None: ...


class EventsToSink:
    """A hook that feeds one sink (:class:`xnai_core.events.RecordsCalls`: breakers
    hand it call outcomes through a recorder bound to each, not as events)."""

    def __init__(self, sink: Sink, labels: Labels) -> None:
        self.sink = sink
        self.labels = labels
        self._recorders: dict[str, CallRecorder] = {}
        self._seen: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sink={self.sink!r}>"

    def call_recorder(self, breaker: str) -> CallRecorder:
        # By label value, not by name: names minted per tenant or request share the
        # overflow label's recorder instead of keeping one each for ever.
        label = self.labels.breaker(breaker)
        try:
            return self._recorders[label]
        except KeyError:
            return self._recorders.setdefault(label, self.sink.call_recorder(label))

    def sync_breakers(self) -> None:
        """Record the state (and Redis link) of every live breaker not seen yet (the
        state of a Redis-backed one only while it is in step with Redis)."""
        for source in live_sources():
            if isinstance(source, CircuitBreaker) and source not in self._seen:
                self._seen.add(source)
                self._sync(source, self.labels.breaker(source.name))

    def _sync(self, breaker: CircuitBreaker, name: str) -> None:
        # A shared circuit not in step with Redis (not loaded yet, or cut off) has
        # only the state this process assumed or decided alone: written, it would
        # hide what another worker knows (a worker starting during an outage would
        # say closed over a peer's open). Its transitions are still written.
        if breaker.store.available is not False:
            self.sink.state(name, breaker.state.value)
        available = redis_link(breaker)
        if available is not None:
            self.sink.redis_available(name, available)

    def __call__(self, event: Event) -> None:
        labels = self.labels
        if isinstance(event, CallCompleted):
            self.call_recorder(event.breaker)(event.kind, event.duration)
        elif isinstance(event, FallbackUsed):
            self.sink.fallback(labels.breaker(event.breaker))
        elif isinstance(event, StateChanged):
            name = labels.breaker(event.breaker)
            self.sink.state(name, event.new)
            for source in live_sources():
                if isinstance(source, CircuitBreaker) and source.name == event.breaker:
                    labels.live_states.note(name)
                    labels.live_links.note(name)
                    available = redis_link(source)
                    if available is not None:
                        self.sink.redis_available(name, available)
        elif isinstance(event, DegradationCall):
            self.sink.degradation(
                labels.service(event.service), labels.word(event.source), event.degraded
            )
        elif isinstance(event, HealthChecked):
            service = labels.service(event.service)
            if _monitored(event.service):
                labels.live_statuses.note(service)
            self.sink.health(service, event.result, event.status, event.duration)
        elif isinstance(event, AlertChanged):
            self.sink.alert(labels.service(event.service), labels.word(event.alert), event.active)
        elif isinstance(event, RecoveryAttempted):
            self.sink.recovery(
                labels.service(event.service), labels.word(event.action), event.result
            )
        elif isinstance(event, RecoveryEscalated):
            service = labels.service(event.service)
            if _with_rules(event.service):
                labels.live_escalations.note(service)
            self.sink.escalated(service, event.escalated)


def _monitored(service: str) -> bool:
    """Whether a live health monitor checks ``service``."""
    return any(
        isinstance(source, HealthMonitor) and service in source.services
        for source in live_sources()
    )


def _with_rules(service: str) -> bool:
    """Whether a live recovery manager has rules for ``service``."""
    module = sys.modules.get("xnai_core.recovery.manager")
    if module is None:
        return False
    kind = module.RecoveryManager
    return any(
        isinstance(source, kind) and bool(source.get_rules(service)) for source in live_sources()
    )
