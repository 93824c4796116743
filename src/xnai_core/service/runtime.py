"""The running service: a HealthMonitor, recovery per service, alert sinks, shared circuits.

:class:`ServiceRuntime` is built from a :class:`ServiceConfig`, started and stopped by the
web app's lifespan, and reloaded in place (:meth:`ServiceRuntime.reload`): services whose
settings did not change keep their checker, history, active alerts and recovery state
(latch, counters, backoff); a changed service is replaced; a change of ``[circuits]``
replaces the circuits' mirrors alone; a change of the monitor's own settings, of
``redis_url`` or of ``[recovery]`` rebuilds everything (said in the log),
except the unchanged alert sinks, which are kept, and the alerts under way, which the new
monitor carries on (``sink_reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .. import HealthMonitor, HealthStatus
from .._redact import redact
from .._redis_url import client_from_url
from ..recovery import RecoveryCoordinator
from ._schema import ConfigError
from .checks import build_checker
from .circuit_watch import CircuitWatch
from .config import ServiceConfig, ServiceSpec, load_config
from .recovery_router import RecoveryRouter
from .sink_reload import SinkHandover
from .sinks import build_sinks

__all__ = ["ServiceRuntime", "check_buildable", "load_checked"]

logger = logging.getLogger("xnai_core.service")

SINK_FLUSH_DEADLINE = 2.0
STOP_FLUSH_DEADLINE = 1.5
"""Seconds the alert sinks get to deliver what is queued when the service stops."""
CLOSE_DEADLINE = 1.0
"""Seconds the shared circuits' mirrors and the Redis client get to close when stopping."""
_MARKS = {
    HealthStatus.HEALTHY: "h",
    HealthStatus.DEGRADED: "d",
    HealthStatus.UNHEALTHY: "u",
}
# Error texts repeat (one outage, the same words every check): mask each text once.
_masked = functools.lru_cache(maxsize=4096)(redact)
HISTORY_SHOWN = 60


@dataclass
class _Parts:
    """What one generation of the runtime holds (rebuilt whole on a deep change)."""

    monitor: HealthMonitor
    router: RecoveryRouter
    redis: aioredis.Redis | None
    circuits: CircuitWatch | None
    sinks: list[Any] = field(default_factory=list)


def _deep_settings(config: ServiceConfig) -> tuple[object, ...]:
    """What cannot change under a running monitor and recovery router. (``[circuits]``
    only concerns the dashboard's mirrors: changing it replaces those alone.)"""
    return (config.monitor, config.redis_url, config.recovery)


class ServiceRuntime:
    """Monitor, recovery, alerts and circuits for one config; see the module docstring."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.reloads = 0
        self._parts: _Parts | None = None
        self._lock = asyncio.Lock()
        self._targets: dict[str, str] = {}  # masked once: redaction is not free
        self._histories: dict[str, _HistoryView] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            self._parts = await self._build(self.config)
            await self._parts.monitor.start_monitoring()
        logger.info(
            "watching %d services%s",
            len(self.config.services),
            "; recovery coordinated through Redis" if self.config.redis_url else "",
        )

    async def stop(self) -> None:
        async with self._lock:
            parts, self._parts = self._parts, None
            if parts is not None:
                await self._teardown(parts)

    async def reload(self, new: ServiceConfig) -> list[str]:
        """Apply ``new`` in place; the changes made, as log-ready phrases.

        Raises ConfigError (and keeps the running config) when ``new`` cannot be built.
        """
        async with self._lock:
            parts = self._parts
            if parts is None:
                raise RuntimeError("the service is not running")
            old = self.config
            await check_buildable(new)  # refused here: nothing has changed yet
            if _deep_settings(new) != _deep_settings(old):
                fresh = await self._build(new)  # refused here: the old one keeps running
                await self._rebuild(parts, old, new, fresh)
                self._parts = fresh
                await fresh.monitor.start_monitoring()
                changes = ["monitor, redis_url or [recovery] changed: rebuilt all"]
            else:
                changes = await self._reload_services(parts, old, new)
                changes += await self._reload_sinks(parts, old, new)
                changes += await self._reload_circuits(parts, old, new)
            self.config = new
            self._targets.clear()
            self._histories.clear()
            self.reloads += 1
            return changes

    # -- building ---------------------------------------------------------------------

    async def _build(self, config: ServiceConfig) -> _Parts:
        redis_client = None
        coordinator = None
        if config.redis_url is not None:
            redis_client = client_from_url(
                config.redis_url, socket_connect_timeout=2, socket_timeout=5
            )
            coordinator = RecoveryCoordinator(redis_client, key_prefix=config.recovery.key_prefix)
        router = RecoveryRouter(
            coordinator=coordinator,
            dry_run=config.recovery.dry_run,
            verify_interval=config.recovery.verify_interval,
        )
        monitor = _monitor(config, router)
        parts = _Parts(monitor=monitor, router=router, redis=redis_client, circuits=None)
        try:
            for index, service in enumerate(config.services):
                await self._add_service(parts, service, index)
            parts.sinks = self._make_sinks(config)
            for sink in parts.sinks:
                monitor.add_alert_handler(sink)
                router.add_alert_handler(sink)
            if redis_client is not None:
                parts.circuits = await _watch_circuits(redis_client, config)
        except BaseException:
            await self._teardown(parts)
            raise
        return parts

    def _make_sinks(self, config: ServiceConfig) -> list[Any]:
        return build_sinks(config.alerts)

    async def _add_service(self, parts: _Parts, spec: ServiceSpec, index: int) -> None:
        try:
            checker = build_checker(spec)
            parts.monitor.add_checker(checker, interval=spec.interval)
            await parts.router.set_rules(spec.name, spec.rules)
        except (TypeError, ValueError, ImportError) as exc:
            # What only the library can judge: a rule's stable_period against this
            # monitor's detection time, a checker's own argument checks.
            raise ConfigError(f"services[{index}]", redact(str(exc))) from None

    async def _reload_circuits(
        self, parts: _Parts, old: ServiceConfig, new: ServiceConfig
    ) -> list[str]:
        if old.circuits == new.circuits or parts.redis is None:
            return []
        fresh = await _watch_circuits(parts.redis, new)
        previous, parts.circuits = parts.circuits, fresh
        await _bounded(previous.aclose() if previous is not None else None)
        return ["[circuits] changed: the circuits' mirrors replaced"]

    async def _teardown(self, parts: _Parts, *, flush: float = STOP_FLUSH_DEADLINE) -> None:
        """Stop one generation, its parts side by side: SIGTERM's 5 s promise is the sum
        of what runs one after the other here, so nothing that can wait on a hung peer
        does (checks are cancelled, restart commands get SIGTERM then SIGKILL a second
        later, sinks get ``flush`` seconds to deliver, Redis CLOSE_DEADLINE to part)."""
        await asyncio.gather(
            parts.monitor.stop_monitoring(),
            parts.router.aclose(),
            *(sink.aclose(flush) for sink in parts.sinks),
            _bounded(parts.circuits.aclose() if parts.circuits is not None else None),
            return_exceptions=True,
        )
        if parts.redis is not None:
            await _bounded(parts.redis.aclose())

    async def _reload_services(
        self, parts: _Parts, old: ServiceConfig, new: ServiceConfig
    ) -> list[str]:
        changes: list[str] = []
        before = {spec.name: spec for spec in old.services}
        after = {spec.name: spec for spec in new.services}
        # Check everything buildable first: a bad new service refuses the whole reload.
        for index, spec in enumerate(new.services):
            if _checker_changed(before.get(spec.name), spec):
                try:
                    build_checker(spec)
                except (TypeError, ValueError, ImportError) as exc:
                    raise ConfigError(f"services[{index}]", redact(str(exc))) from None
        for name in before.keys() - after.keys():
            parts.monitor.remove_checker(name)
            await parts.router.set_rules(name, ())
            parts.router.end_episode(name, "removed")
            changes.append(f"removed {name}")
        for index, spec in enumerate(new.services):
            previous = before.get(spec.name)
            if previous is None:
                await self._add_service(parts, spec, index)
                changes.append(f"added {spec.name}")
            elif _checker_changed(previous, spec):
                parts.monitor.remove_checker(spec.name)
                await self._add_service(parts, spec, index)
                changes.append(f"replaced {spec.name}")
            elif previous.rules != spec.rules:
                try:
                    await parts.router.set_rules(spec.name, spec.rules)
                except ValueError as exc:
                    raise ConfigError(f"services[{index}].recovery", redact(str(exc))) from None
                changes.append(f"new recovery rules for {spec.name}")
        return changes

    async def _reload_sinks(
        self, parts: _Parts, old: ServiceConfig, new: ServiceConfig
    ) -> list[str]:
        """Sinks kept, added, changed or removed in place (see ``sink_reload``)."""
        handover = SinkHandover.plan(old.alerts, parts.sinks, new.alerts)
        if handover is None:
            return []
        handover.attach(parts.monitor, parts.router, parts.monitor.get_active_alerts())
        parts.sinks = handover.sinks
        await handover.finish(SINK_FLUSH_DEADLINE)
        return handover.changes

    async def _rebuild(
        self, parts: _Parts, old: ServiceConfig, new: ServiceConfig, fresh: _Parts
    ) -> None:
        """Replace ``parts`` by ``fresh``: unchanged sinks and the alerts under way go along."""
        handover = SinkHandover.plan(old.alerts, parts.sinks, new.alerts, built=fresh.sinks)
        assert handover is not None
        carried = handover.move(
            (parts.monitor, parts.router),
            (fresh.monitor, fresh.router),
            parts.monitor.get_active_alerts(),
            {spec.name for spec in new.services},
        )
        fresh.sinks = handover.sinks
        parts.sinks = [sink for _, sink in handover.gone]
        # From here the new parts are the runtime's: a reload cancelled below (the service
        # stopping) leaves them to stop(), and the old ones are torn down all the same.
        self._parts = fresh
        try:
            await handover.carry(fresh.monitor, carried)
            handover.name_open()
        finally:
            try:
                await self._teardown(parts, flush=SINK_FLUSH_DEADLINE)
            finally:
                await handover.finish(SINK_FLUSH_DEADLINE, flush=False)

    # -- reading ----------------------------------------------------------------------

    @property
    def monitor(self) -> HealthMonitor | None:
        return None if self._parts is None else self._parts.monitor

    @property
    def router(self) -> RecoveryRouter | None:
        return None if self._parts is None else self._parts.router

    @property
    def circuits(self) -> CircuitWatch | None:
        return None if self._parts is None else self._parts.circuits

    @property
    def sinks(self) -> Sequence[Any]:
        return () if self._parts is None else tuple(self._parts.sinks)

    def snapshot(self, *, detail: bool = False, sensitive: bool = False) -> dict[str, object]:
        """Everything the dashboard shows, JSON-ready (fresh objects only), masked.

        ``sensitive`` adds what ``/ops/health`` shows only to the control token's bearer:
        each service's target (URL, host, command line), error texts, alert messages,
        episode and escalation reasons; without it they are None. ``detail`` adds each
        shown result's start time (``started_at``), for tools such as bench_service.
        """
        parts = self._parts
        if parts is None:
            return {"running": False}
        monitor = parts.monitor
        report = monitor.get_health_report()
        stats = parts.router.get_recovery_stats()
        recovery_services: dict[str, Any] = stats["services"]  # type: ignore[assignment]
        services = []
        for spec in self.config.services:
            if spec.name not in report["services"]:
                continue
            entry = report["services"][spec.name]
            shown_history = self._history_view(monitor, spec.name)
            recovery = recovery_services.get(spec.name)
            target = None
            if sensitive:
                target = self._targets.get(spec.name)
                if target is None:
                    target = self._targets[spec.name] = spec.target()
            last_error = shown_history.last_error
            shown: dict[str, object] = {
                "name": spec.name,
                "type": spec.type,
                "target": target,
                "critical": spec.critical,
                "status": entry["status"],
                "last_check": entry["last_check"],
                "response_time": entry["response_time"],
                "uptime": shown_history.uptime,
                "total_checks": entry["total_checks"],
                "consecutive_failures": entry["consecutive_failures"],
                # The plot's data, compact: response times (ms) and one letter per
                # result (h healthy, d degraded, u unhealthy, x unknown).
                "times_ms": list(shown_history.times_ms),
                "marks": shown_history.marks,
                "last_error": None
                if last_error is None
                else {"error": last_error[0] if sensitive else None, "at": last_error[1]},
                "recovery": None if recovery is None else _recovery_view(recovery, sensitive),
            }
            if detail:
                shown["started_at"] = list(shown_history.started_at)
            services.append(shown)
        return {
            "running": True,
            "now": time.time(),
            "started_at": self.started_at,
            "reloads": self.reloads,
            "overall": monitor.get_overall_status().value,
            "summary": dict(report["summary"]),
            "services": services,
            "circuits": None if parts.circuits is None else parts.circuits.views(),
            "alerts": [
                {
                    "key": alert.key,
                    "service": alert.service,
                    "kind": alert.kind,
                    "severity": alert.severity,
                    "message": _masked(alert.message) if sensitive else None,
                    "since": alert.timestamp,
                }
                for alert in monitor.get_active_alerts()
            ],
            "episodes": [
                {**episode, "reason": episode.get("reason") if sensitive else None}
                for episode in reversed(parts.router.episodes)
            ],
            "recovery": {
                "total_attempts": stats["total_attempts"],
                "coordinated": self.config.redis_url is not None,
            },
            "controls": self.config.control_token is not None and parts.circuits is not None,
            "token": self.config.control_token is not None,
            "sensitive": sensitive,
        }

    def _history_view(self, monitor: HealthMonitor, name: str) -> _HistoryView:
        """The shown part of ``name``'s history, computed again only when a result has
        been added since (most polls come between two checks of a service)."""
        history = monitor.get_history(name)
        newest = history[-1] if history else None
        cached = self._histories.get(name)
        if cached is not None and cached.newest is newest and cached.length == len(history):
            return cached
        shown = history[-HISTORY_SHOWN:]
        marks = "".join(_MARKS.get(result.status, "x") for result in shown)
        last_error = None
        for result in reversed(shown):
            if result.error:
                last_error = (_masked(result.error), result.timestamp)
                break
        view = _HistoryView(
            newest=newest,
            length=len(history),
            marks=marks,
            times_ms=tuple(int(result.response_time * 1000 + 0.5) for result in shown),
            started_at=tuple(round(result.timestamp, 3) for result in shown),
            # Percent answered (healthy or degraded) over the results shown.
            uptime=round(100.0 * (len(marks) - marks.count("u")) / len(marks), 2)
            if marks
            else None,
            last_error=last_error,
        )
        self._histories[name] = view
        return view


@dataclass(frozen=True, slots=True)
class _HistoryView:
    newest: object
    length: int
    marks: str
    times_ms: tuple[int, ...]
    started_at: tuple[float, ...]
    uptime: float | None
    last_error: tuple[str, float] | None


async def check_buildable(config: ServiceConfig) -> None:
    """Raise ConfigError for what only the library can judge (a rule's stable_period
    against this monitor, a sink's own checks), starting nothing and touching no network."""
    router = RecoveryRouter(coordinator=None, dry_run=True)
    monitor = _monitor(config, router)
    try:
        for index, service in enumerate(config.services):
            try:
                monitor.add_checker(build_checker(service), interval=service.interval)
                await router.set_rules(service.name, service.rules)
            except (TypeError, ValueError, ImportError) as exc:
                raise ConfigError(
                    f"services[{index}]", redact(str(exc)), file=config.path
                ) from None
        try:
            sinks = build_sinks(config.alerts)
        except ConfigError as exc:
            raise exc.in_file(config.path) from None
        await asyncio.gather(*(sink.aclose(0.1) for sink in sinks), return_exceptions=True)
    finally:
        await monitor.stop_monitoring()
        await router.aclose()


async def _watch_circuits(client: aioredis.Redis, config: ServiceConfig) -> CircuitWatch:
    watch = CircuitWatch(
        client,
        key_prefix=config.circuits.key_prefix,
        names=config.circuits.names,
        recovery_timeout=config.circuits.recovery_timeout,
    )
    await watch.start()
    return watch


async def _bounded(closing: Awaitable[object] | None) -> None:
    """Await ``closing`` for at most CLOSE_DEADLINE seconds (a hung Redis must not hold
    the shutdown); errors are dropped: the connection is being let go anyway."""
    if closing is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_DEADLINE):
            await closing


def _monitor(config: ServiceConfig, router: RecoveryRouter) -> HealthMonitor:
    spec = config.monitor
    return HealthMonitor(
        spec.check_interval,
        dict(spec.alert_thresholds) or None,
        recovery_manager=router,
        failure_threshold=spec.failure_threshold,
        success_threshold=spec.success_threshold,
        history_size=spec.history_size,
        alert_window=spec.alert_window,
    )


def load_checked(path: str) -> ServiceConfig:
    """The config at ``path``, validated as ``serve`` validates it: the file's own rules
    (:func:`load_config`), then what only the library can judge (:func:`check_buildable`).
    ``serve``, ``check`` and ``config check`` all load through here."""
    config = load_config(path)
    asyncio.run(check_buildable(config))
    return config


def _recovery_view(detail: dict[str, Any], sensitive: bool) -> dict[str, object]:
    last = detail.get("last_attempt")
    return {
        "state": detail.get("state"),
        "escalated": detail.get("escalated"),
        "escalation_reason": None
        if not detail.get("escalation_reason") or not sensitive
        else redact(str(detail["escalation_reason"])),
        "attempts": detail.get("attempts"),
        "successes": detail.get("successes"),
        "episodes": detail.get("episodes"),
        "last_attempt": None
        if not isinstance(last, dict)
        else {
            "action": last.get("action"),
            "outcome": last.get("outcome") or last.get("result"),
            "at": last.get("started_at") or last.get("timestamp"),
        },
    }


def _checker_changed(old: ServiceSpec | None, new: ServiceSpec) -> bool:
    """Whether the check itself differs (rules aside)."""
    if old is None:
        return True
    keys = (
        "type",
        "timeout",
        "interval",
        "degraded_threshold",
        "url",
        "host",
        "port",
        "dsn",
        "command",
        "method",
        "expected_status",
        "verify",
        "critical",
    )
    return any(getattr(old, key) != getattr(new, key) for key in keys)
