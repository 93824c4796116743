"""Current state, read from the live objects when metrics are collected.

Counters come from events; what *is* (a circuit's state, its Redis link, a
service's status, an escalation latch) is read here at scrape time, so it is right
for changes this process only saw (a circuit another process opened, a latch a
peer replica wrote) and needs no event at all. Every adapter reads through these
functions: the Prometheus collector, the multiprocess publisher, OpenTelemetry's
observable gauges.

Some of it lives in Redis and can only be read with ``await``:
:func:`refresh_shared_state` (awaited by ``create_ops_app``'s ``/metrics`` before it
collects) loads the state of every Redis-backed circuit this process has not
loaded yet and reads the shared escalation latches; the synchronous readers use
what it found for :data:`FRESH_FOR` seconds, and this process's own view after.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import events
from .._redact import redact
from ..circuit.breaker import CircuitBreaker
from ..health.monitor import HealthMonitor
from ._sink import HEALTH_STATUSES, Labels, redis_link

if TYPE_CHECKING:
    from ..recovery.manager import RecoveryManager

# Read through sys.modules, not imported: the recovery package is heavy to import
# (most of a second), and while it was never imported no manager can exist.
_RECOVERY_MODULE = "xnai_core.recovery.manager"

logger = logging.getLogger("xnai_core.metrics")

FRESH_FOR = 10.0
"""Seconds a shared-latch reading by :func:`refresh_shared_state` is used for."""

LOAD_WAIT = 1.0
"""At most this long, in seconds, a scrape waits for circuits to load from Redis (the
loading goes on in the background; the scrape then shows what this process knew)."""

_RANK = {"closed": 0, "half_open": 1, "open": 2}

# Scrapes may run in another thread than the objects' event loop (prometheus_client's
# own HTTP server, OpenTelemetry's reader thread, the multiprocess publisher,
# create_ops_app's /metrics): a live object may change while it is read.
_READ_ATTEMPTS = 3

_MANUAL = "manual_intervention"
_ESCALATED = ("escalated",)
_JUDGED = ("succeeded", "failed")


@dataclass(frozen=True, slots=True)
class _Reading:
    at: float
    escalated: dict[str, bool]


_shared: weakref.WeakKeyDictionary[RecoveryManager, _Reading] = weakref.WeakKeyDictionary()


def _live(kind: type[object]) -> list[object]:
    return [source for source in events.live_sources() if isinstance(source, kind)]


def _managers() -> list[RecoveryManager]:
    module = sys.modules.get(_RECOVERY_MODULE)
    if module is None:
        return []
    kind: type[RecoveryManager] = module.RecoveryManager
    return [source for source in events.live_sources() if isinstance(source, kind)]


def circuits(
    labels: Labels, *, shared_only: bool = False
) -> tuple[dict[str, str], dict[str, bool]]:
    """Each circuit's state and (Redis-backed only) link, by label value.

    Two live breakers of one name (or names folded into ``_other``) show the worse
    state and the worse link: an open circuit is never hidden. ``shared_only``: only
    circuits whose state is shared now, the same in every process: Redis-backed and
    in step with Redis. One cut off from Redis (or not loaded yet) decides on this
    process's state alone, and another worker's may differ (open there, closed here).
    """
    states: dict[str, str] = {}
    links: dict[str, bool] = {}
    for breaker in _live(CircuitBreaker):
        assert isinstance(breaker, CircuitBreaker)
        if shared_only and breaker.store.available is not True:
            continue
        name = labels.breaker(breaker.name)
        state = breaker.state.value
        if _RANK[state] >= _RANK[states.get(name, "closed")]:
            states[name] = state
        available = redis_link(breaker)
        if available is not None:
            links[name] = links.get(name, True) and available
    return dict(sorted(states.items())), dict(sorted(links.items()))


def statuses(labels: Labels) -> dict[str, str]:
    """Each service's status in the live health monitors, by label value."""
    found: dict[str, str] = {}
    for monitor in _live(HealthMonitor):
        assert isinstance(monitor, HealthMonitor)
        for service in monitor.services:
            try:
                status = monitor.get_status(service)
            except KeyError:  # removed since (a collection in another thread)
                continue
            found[labels.service(service)] = status.value
    return found


def health_results(labels: Labels) -> list[tuple[str, str]]:
    """(service, result) of every check result the live monitors' services may count:
    their counters exist at 0 before the first such result (rate() and increase()
    see no increase in a series born at 1)."""
    return [(service, result) for service in statuses(labels) for result in HEALTH_STATUSES]


def recovery_results(labels: Labels) -> list[tuple[str, str, str]]:
    """(service, action, result) of every recovery attempt the live managers' rules
    may count (``escalated`` for manual intervention, else ``succeeded`` and
    ``failed``), for their counters to exist at 0 before the first attempt."""
    found: set[tuple[str, str, str]] = set()
    for manager in _managers():
        for service in _latches(manager):  # every service with rules
            for rule in manager.get_rules(service):
                action = rule.action_type.value
                results = _ESCALATED if action == _MANUAL else _JUDGED
                for result in results:
                    found.add((labels.service(service), labels.word(action), result))
    return sorted(found)


def _latches(manager: RecoveryManager) -> dict[str, bool]:
    """``manager.escalations()``, read again if the manager's services changed while
    it was read (a collection in another thread than the manager's loop)."""
    for _ in range(_READ_ATTEMPTS - 1):
        try:
            return manager.escalations()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return manager.escalations()


def escalations(labels: Labels, *, shared_only: bool = False) -> dict[str, bool]:
    """Each service's escalation latch in the live recovery managers, by label value:
    as the replicas see it when :func:`refresh_shared_state` read it lately, else as
    this process holds it (``shared_only``: only the former, the same in every
    process). Several managers of one service: escalated if any is."""
    now = time.monotonic()
    found: dict[str, bool] = {}
    for manager in _managers():
        reading = _shared.get(manager)
        fresh = reading is not None and now - reading.at <= FRESH_FOR
        if fresh and reading is not None:
            # Services added since the reading: this process's view.
            latches = {**_latches(manager), **reading.escalated}
        elif shared_only:
            continue
        else:
            latches = _latches(manager)
        for service, escalated in latches.items():
            label = labels.service(service)
            found[label] = found.get(label, False) or escalated
    return found


async def _load(breaker: CircuitBreaker) -> None:
    try:
        await breaker.store.start()  # type: ignore[attr-defined]
    except Exception:  # it never should: the next call tries again
        logger.exception("could not load circuit '%s' for a scrape", redact(breaker.name))


async def _read_latches(manager: RecoveryManager) -> None:
    try:
        latches = await manager.shared_escalations()
    except Exception:  # the scrape goes on with this process's view
        logger.exception("could not read the shared escalation latches")
        return
    if latches is not None:  # None: no coordinator, nothing shared
        _shared[manager] = _Reading(time.monotonic(), latches)


async def refresh_shared_state() -> None:
    """Read what lives in Redis, for the next collection: the shared escalation
    latches of every live recovery manager with a coordinator, and the state of every
    Redis-backed circuit this process has not loaded yet (waiting for those at most
    :data:`LOAD_WAIT`). Call it (``await``) in a ``/metrics`` handler before
    collecting, in the event loop the breakers' Redis clients run in (a circuit is
    loaded as its first call would load it); it never raises for Redis trouble."""
    jobs: list[asyncio.Future[None]] = []
    for breaker in _live(CircuitBreaker):
        assert isinstance(breaker, CircuitBreaker)
        store = breaker.store
        # A store its owner closed is left closed: loading it would reconnect through
        # a client that may be closed too, or belong to an event loop that has ended.
        if (
            store.available is False
            and hasattr(store, "start")
            and not getattr(store, "closed", False)
        ):
            jobs.append(asyncio.ensure_future(_load(breaker)))
    loading = list(jobs)
    for manager in _managers():
        # A closed one (replaced by a reload; of an event loop that has ended) is not
        # read: its coordinator's client may belong to a loop that is gone.
        if not manager.closed:
            jobs.append(asyncio.ensure_future(_read_latches(manager)))
    if not jobs:
        return
    if loading:
        # A store that cannot reach Redis keeps trying in the background.
        await asyncio.wait(loading, timeout=LOAD_WAIT)
    await asyncio.gather(*(job for job in jobs if job not in loading), return_exceptions=True)
