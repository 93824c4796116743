"""HealthMonitor: runs checkers on a schedule and keeps each service's status.

Scheduling (Kubernetes / Consul style):

- one task per checker; the first run waits a random part of the interval so a
  fleet of checks does not start at once;
- the next run starts ``check_interval`` after the previous one ENDS, so runs of
  one check never overlap; a manual check joins a run in flight instead of
  starting a second one;
- each run is bounded by a timeout no longer than the interval; a timeout is an
  unhealthy result.

Status follows results with hysteresis (see :mod:`.hysteresis`). The report reads
stored state and never runs a check. Alert handlers, recovery callbacks and the
recovery manager's hook run in per-service background lanes, so a slow webhook or
a long recovery never delays a health check; they may call back into the monitor
(even ``stop_monitoring()`` or ``remove_checker()``): the monitor never cancels or
awaits the task it is called from. Memory is bounded: each service keeps at most
``history_size`` results.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from .._dispatch import Dispatcher, Job, Lane
from ._validate import check_int, check_name, check_seconds
from .alerts import Alert, AlertHandler, AlertThresholds, deliver, evaluate, success_rate
from .health_json import overall_status, to_health_json
from .hooks import RecoveryCallback, RecoveryHook
from .hysteresis import Counters, StatusPolicy, step
from .redact import scrub
from .report import HealthReport, HealthSummary, ServiceReport
from .result import HealthCheckResult, HealthStatus, SupportsHealthCheck, error_text
from .service import ServiceHealth

__all__ = ["HealthMonitor"]

logger = logging.getLogger("xnai_core.health.monitor")

UNHEALTHY = HealthStatus.UNHEALTHY
HEALTHY = HealthStatus.HEALTHY


def _uniform_jitter(interval: float) -> float:
    return random.uniform(0.0, interval)


@dataclass(slots=True, eq=False)
class _Service:
    """The monitor's mutable record of one checker; only the monitor touches it."""

    name: str
    checker: SupportsHealthCheck
    interval: float
    timeout: float
    history: deque[HealthCheckResult]
    health: ServiceHealth
    counters: Counters = field(default_factory=Counters)
    task: asyncio.Task[None] | None = None
    # The run in progress, for joiners; `runner` is the task of a manual run (a
    # scheduled run executes inside `task` itself, saving loop hops on every check).
    inflight: asyncio.Future[HealthCheckResult] | None = None
    runner: asyncio.Task[HealthCheckResult] | None = None
    changed: asyncio.Event | None = None
    in_outage: bool = False
    active_alerts: set[str] = field(default_factory=set)
    alert_lane: Lane = field(init=False)
    hook_lane: Lane = field(init=False)
    callback_lane: Lane = field(init=False)

    def __post_init__(self) -> None:
        self.alert_lane = Lane(f"{self.name}:alerts", log=logger)
        self.hook_lane = Lane(f"{self.name}:recovery_hook", log=logger)
        self.callback_lane = Lane(f"{self.name}:recovery_callbacks", log=logger)

    def lanes(self) -> tuple[Lane, Lane, Lane]:
        return self.alert_lane, self.hook_lane, self.callback_lane

    def wake_waiters(self) -> None:
        event, self.changed = self.changed, None
        if event is not None:
            event.set()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # no running loop


def _secrets_of(checker: object) -> tuple[str, ...]:
    secrets = getattr(checker, "secrets", None)
    if callable(secrets):
        value = secrets()
        if isinstance(value, tuple):
            return tuple(str(item) for item in value)
    return ()


def _describe(checker: object) -> dict[str, object]:
    describe = getattr(checker, "describe", None)
    if callable(describe):
        value = describe()
        if isinstance(value, dict):
            return dict(value)
    return {}


class HealthMonitor:
    """Schedules health checks and keeps each service's status, report and alerts.

    ``check_interval`` seconds between the end of one check and the start of the
    next. ``alert_thresholds``: ``{"success_rate": 95, "response_time": 5.0,
    "consecutive_failures": 5}`` (percent, seconds, count; any subset) evaluated
    over the last ``alert_window`` results; the window kinds (success rate, mean
    response time) only once it holds ``alert_min_samples`` results (default: a
    full window), so one failure among the first checks does not page.
    ``failure_threshold`` failures in a row
    make a service unhealthy (fewer: degraded); ``success_threshold`` successes in
    a row make it healthy again. ``check_timeout`` caps every check (default: the
    checker's own timeout, never more than the interval). ``clock`` gives the
    wall-clock timestamps of reports and monitor-made results; ``jitter(interval)``
    gives the delay before a checker's first run (default: uniform over the
    interval). ``recovery_manager`` receives every status change (see
    :class:`~xnai_core.health.hooks.RecoveryHook`). Alert handlers are bounded by
    ``alert_handler_timeout``, recovery callbacks and the hook by ``callback_timeout``;
    sync ones run on at most ``callback_workers`` threads of the monitor's own.
    """

    def __init__(
        self,
        check_interval: float = 30.0,
        alert_thresholds: Mapping[str, float] | None = None,
        *,
        recovery_manager: RecoveryHook | None = None,
        failure_threshold: int = 3,
        success_threshold: int = 2,
        check_timeout: float | None = None,
        history_size: int = 100,
        alert_window: int = 20,
        alert_min_samples: int | None = None,
        alert_handler_timeout: float | None = 10.0,
        callback_timeout: float | None = 60.0,
        callback_workers: int = 4,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.check_interval = check_seconds("check_interval", check_interval)
        self._thresholds = AlertThresholds.from_mapping(alert_thresholds)
        self._policy = StatusPolicy(
            failure_threshold=failure_threshold, success_threshold=success_threshold
        )
        self._check_timeout: float | None = None
        if check_timeout is not None:
            self._check_timeout = check_seconds("check_timeout", check_timeout)
            if self._check_timeout > self.check_interval:
                raise ValueError(
                    f"'check_timeout' must be <= check_interval ({self.check_interval:g}):"
                    f" {check_timeout!r}"
                )
        self._history_size = check_int("history_size", history_size, 1)
        self._alert_window = check_int("alert_window", alert_window, 1)
        if self._alert_window > self._history_size:
            raise ValueError(
                f"'alert_window' must be <= history_size ({self._history_size}): {alert_window!r}"
            )
        if alert_min_samples is None:
            self._alert_min_samples = self._alert_window
        else:
            self._alert_min_samples = check_int("alert_min_samples", alert_min_samples, 1)
            if self._alert_min_samples > self._alert_window:
                raise ValueError(
                    f"'alert_min_samples' must be <= alert_window ({self._alert_window}):"
                    f" {alert_min_samples!r}"
                )
        self._alert_handler_timeout = (
            None
            if alert_handler_timeout is None
            else check_seconds("alert_handler_timeout", alert_handler_timeout)
        )
        self._callback_timeout = (
            None
            if callback_timeout is None
            else check_seconds("callback_timeout", callback_timeout)
        )
        # Sync handlers, callbacks and hooks run on these threads, never on the loop.
        self._dispatcher = Dispatcher(
            max_workers=check_int("callback_workers", callback_workers, 1),
            name="xnai-health-callback",
            log=logger,
        )
        self._clock = clock
        self._jitter = jitter or _uniform_jitter
        self._services: dict[str, _Service] = {}
        self._recovery_callbacks: dict[str, list[RecoveryCallback]] = {}
        self._alert_handlers: list[AlertHandler] = []
        self._active_alerts: dict[str, Alert] = {}
        # Removed services still delivering their last notices and closing.
        self._retiring: dict[asyncio.Task[None], _Service] = {}
        self._active = False
        self._recovery_hook = recovery_manager
        if recovery_manager is not None:
            attach = getattr(recovery_manager, "attach", None)
            if callable(attach):
                outcome = attach(self)
                if inspect.iscoroutine(outcome):
                    outcome.close()
                    raise TypeError(f"'recovery_manager.attach' must be sync: {attach!r}")

    # -- configuration ---------------------------------------------------------------

    @property
    def monitoring_active(self) -> bool:
        """True between start_monitoring() and stop_monitoring()."""
        return self._active

    @property
    def alert_thresholds(self) -> dict[str, float]:
        """The thresholds in force (only the kinds that are set)."""
        return self._thresholds.as_dict()

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that make a service unhealthy."""
        return self._policy.failure_threshold

    @property
    def success_threshold(self) -> int:
        """Successes in a row that make a service healthy again."""
        return self._policy.success_threshold

    @property
    def services(self) -> tuple[str, ...]:
        """Names of the monitored services, in the order they were added."""
        return tuple(self._services)

    def add_checker(self, checker: SupportsHealthCheck, *, interval: float | None = None) -> None:
        """Monitor ``checker`` under its ``name``; starts it now if monitoring is active.

        ``interval`` overrides ``check_interval`` for this checker.
        """
        if not isinstance(checker, SupportsHealthCheck):
            raise TypeError(f"'checker' must have a name and an async check(): {checker!r}")
        name = check_name(checker.name)
        if name in self._services:
            raise ValueError(f"'name' must be unique in a monitor: {name!r} is already monitored")
        every = self.check_interval if interval is None else check_seconds("interval", interval)
        own_timeout = getattr(checker, "timeout", None)
        limits = [every]
        if (
            isinstance(own_timeout, int | float)
            and not isinstance(own_timeout, bool)
            and 0 < own_timeout < math.inf
        ):
            limits.append(float(own_timeout))
        if self._check_timeout is not None:
            limits.append(self._check_timeout)
        component_type = getattr(checker, "component_type", "component")
        service = _Service(
            name=name,
            checker=checker,
            interval=every,
            timeout=min(limits),
            history=deque(maxlen=self._history_size),
            health=ServiceHealth(
                name=name,
                component_type=component_type if isinstance(component_type, str) else "component",
                interval=every,
            ),
        )
        self._services[name] = service
        if self._active:
            self._start(service)

    def remove_checker(self, name: str) -> None:
        """Stop monitoring ``name``; its task is cancelled and its connections closed.

        Its active alerts are resolved: the handlers get a resolved notice for each
        (after any notice still queued for it), then its notification lanes close.
        Safe to call from the service's own check, callbacks or alert handlers.
        Raises ``KeyError`` for an unknown name.
        """
        service = self._service(name)
        del self._services[name]
        resolved = self._resolve_alerts_of(name, service)
        service.wake_waiters()
        caller = _current_task()
        tasks = [
            t
            for t in (service.task, service.runner)
            if t is not None and not t.done() and t is not caller
        ]
        service.task = None  # a schedule loop calling this from its own check ends after it
        for task in tasks:
            task.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, so nothing of it can be running (nor deliver the notices)
        for alert in resolved:
            service.alert_lane.push(self._delivery(alert))
        retire = loop.create_task(
            self._retire(service, tasks, caller), name=f"xnai-health-retire-{name}"
        )
        self._retiring[retire] = service
        retire.add_done_callback(self._forget_retired)

    def _forget_retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)

    def _resolve_alerts_of(self, name: str, service: _Service) -> list[Alert]:
        """Resolved notices for every active alert of a service that is going away."""
        keys = set(service.active_alerts)
        keys.update(key for key, alert in self._active_alerts.items() if alert.service == name)
        service.active_alerts.clear()
        notices = []
        now = self._clock()
        for key in sorted(keys):
            active = self._active_alerts.get(key)
            kind = active.kind if active is not None else key.rpartition(":")[2] or "status"
            notice = Alert(
                key=key,
                service=name,
                kind=kind,
                severity="info",
                message=f"resolved: {name} is no longer monitored",
                resolved=True,
                timestamp=now,
                details={"reason": "checker removed"},
            )
            self._track_alert(notice)
            notices.append(notice)
        return notices

    def add_recovery_callback(self, name: str, callback: RecoveryCallback) -> None:
        """Call ``callback(name)`` (sync or async) each time ``name`` recovers.

        Recovery means reaching ``healthy`` after having been ``unhealthy``: once
        per outage, however many checks it takes. An exception from the callback is
        logged and never stops the monitor. The service may be added later.
        """
        if not callable(callback):
            raise TypeError(f"'callback' must be callable: {callback!r}")
        self._recovery_callbacks.setdefault(name, []).append(callback)

    def add_alert_handler(self, handler: AlertHandler) -> None:
        """Send every :class:`Alert` (raised and resolved) to ``handler``, sync or async."""
        if not callable(handler):
            raise TypeError(f"'handler' must be callable: {handler!r}")
        self._alert_handlers.append(handler)

    def remove_alert_handler(self, handler: AlertHandler) -> None:
        """Stop sending alerts to ``handler``; ``ValueError`` if it was not added."""
        self._alert_handlers.remove(handler)

    # -- lifecycle -------------------------------------------------------------------

    async def start_monitoring(self) -> None:
        """Start one background task per checker and return; idempotent."""
        if self._active:
            return
        self._active = True
        for service in self._services.values():
            self._start(service)
        logger.info("health monitoring started", extra={"services": len(self._services)})

    async def stop_monitoring(self) -> None:
        """Cancel every check and notification task, await them, close connections.

        Idempotent; nothing of the monitor runs afterwards. Pending notifications
        are dropped: await :meth:`drain_notifications` first to deliver them.

        May be called from a recovery callback, an alert handler, the recovery
        hook or a check: the task it is called from is neither cancelled nor
        awaited; it finishes what it is doing and nothing queued runs after it.
        """
        was_active, self._active = self._active, False
        caller = _current_task()
        tasks: list[asyncio.Task[Any]] = []
        for service in self._services.values():
            for task in (service.task, service.runner):
                if task is not None and not task.done() and task is not caller:
                    task.cancel()
                    tasks.append(task)
            service.task = None
        for retiring in list(self._retiring.values()):
            # Removed services: drop their undelivered notices too, then let them close.
            await retiring.alert_lane.aclose()
        tasks.extend(task for task in self._retiring if task is not caller)
        await asyncio.gather(*tasks, return_exceptions=True)
        for service in list(self._services.values()):
            if service.runner is not caller:
                service.runner = None
            for lane in service.lanes():
                await lane.aclose()
            await self._close_checker(service)
        self._dispatcher.close()
        if was_active:
            logger.info("health monitoring stopped", extra={"services": len(self._services)})

    async def drain_notifications(self) -> None:
        """Wait until queued alerts, recovery callbacks and hook calls have run.

        Includes the resolved notices of removed checkers. From inside a callback,
        it does not wait for that callback's own lane.
        """
        for service in list(self._services.values()):
            for lane in service.lanes():
                await lane.idle()
        caller = _current_task()
        retiring = [
            task
            for task, service in self._retiring.items()
            if task is not caller and not any(lane.runs_in(caller) for lane in service.lanes())
        ]
        if retiring:
            await asyncio.wait(retiring)

    async def __aenter__(self) -> Self:
        await self.start_monitoring()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_monitoring()

    # -- reading state ---------------------------------------------------------------

    def get_status(self, name: str) -> HealthStatus:
        """The current status of ``name``; ``KeyError`` for an unknown name."""
        return self._service(name).counters.status

    def get_service_health(self, name: str) -> ServiceHealth:
        """The full snapshot of ``name``: streaks, totals, success rate, last result."""
        return self._service(name).health

    def get_history(self, name: str) -> tuple[HealthCheckResult, ...]:
        """The last results of ``name``, oldest first (at most ``history_size``)."""
        return tuple(self._service(name).history)

    def get_overall_status(self) -> HealthStatus:
        """The worst status of all services (unknown only if all are unknown)."""
        return overall_status(s.counters.status for s in self._services.values())

    def get_active_alerts(self) -> list[Alert]:
        """Alerts raised and not yet resolved, oldest first."""
        return sorted(self._active_alerts.values(), key=lambda alert: alert.timestamp)

    def get_health_report(self) -> HealthReport:
        """The seed's report: timestamp, monitoring_active, services, summary.

        Reads stored state only; it never runs a check.
        """
        counts = dict.fromkeys(HealthStatus, 0)
        services: dict[str, ServiceReport] = {}
        for name, service in self._services.items():
            counts[service.counters.status] += 1
            services[name] = service.health.report_entry()
        summary: HealthSummary = {
            "total": len(services),
            "healthy": counts[HealthStatus.HEALTHY],
            "degraded": counts[HealthStatus.DEGRADED],
            "unhealthy": counts[HealthStatus.UNHEALTHY],
            "unknown": counts[HealthStatus.UNKNOWN],
        }
        return {
            "timestamp": self._clock(),
            "monitoring_active": self._active,
            "services": services,
            "summary": summary,
        }

    def get_health_json(
        self,
        *,
        service_id: str | None = None,
        description: str | None = None,
        version: str | None = None,
        release_id: str | None = None,
    ) -> dict[str, object]:
        """The same state as an ``application/health+json`` document (IETF draft)."""
        return to_health_json(
            (s.health for s in self._services.values()),
            service_id=service_id,
            description=description,
            version=version,
            release_id=release_id,
        )

    # -- checking --------------------------------------------------------------------

    async def trigger_manual_check(self, name: str) -> HealthCheckResult:
        """Check ``name`` now and return the result (recorded like any other).

        If a check of ``name`` is already running, waits for that one instead of
        starting a second. ``KeyError`` for an unknown name.
        """
        service = self._service(name)
        running = service.inflight
        if running is None or running.done():
            running = self._begin(service)
            service.runner = asyncio.get_running_loop().create_task(
                self._run_into(service, running), name=f"xnai-health-check-{service.name}"
            )
        return await self._join(service, running)

    async def wait_for_status(
        self, name: str, status: HealthStatus | str, timeout: float | None = None
    ) -> bool:
        """Wait until ``name`` has ``status``; False if ``timeout`` seconds pass first."""
        target = HealthStatus(status)
        service = self._service(name)
        try:
            async with asyncio.timeout(timeout):
                while service.counters.status is not target:
                    if service.changed is None:
                        service.changed = asyncio.Event()
                    await service.changed.wait()
                    service = self._service(name)
        except TimeoutError:
            return False
        return True

    async def emit_alert(self, alert: Alert) -> None:
        """Send ``alert`` to every alert handler now, and track it as active until resolved.

        For components beside the monitor (the recovery manager's escalation).
        """
        if not isinstance(alert, Alert):
            raise TypeError(f"'alert' must be an Alert: {alert!r}")
        self._track_alert(alert)
        await deliver(
            alert, tuple(self._alert_handlers), self._alert_handler_timeout, self._dispatcher
        )

    # -- internals -------------------------------------------------------------------

    def _service(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no health checker named {name!r}") from None

    def _start(self, service: _Service) -> None:
        if service.task is None or service.task.done():
            service.task = asyncio.get_running_loop().create_task(
                self._schedule(service), name=f"xnai-health-{service.name}"
            )

    async def _schedule(self, service: _Service) -> None:
        me = asyncio.current_task()
        first = min(max(self._jitter(service.interval), 0.0), service.interval)
        await asyncio.sleep(first)
        # service.task stops being this task when monitoring stops, or the checker is
        # removed, from inside its own check (which is then not cancelled).
        while service.task is me:
            try:
                await self._check(service)
            except Exception:
                # A bug must not end this service's monitoring.
                logger.exception("health check loop error", extra={"service": service.name})
            if service.task is not me:
                return
            await asyncio.sleep(service.interval)

    async def _check(self, service: _Service) -> HealthCheckResult:
        """The scheduler's run: join a manual run in flight, else run here, inline."""
        running = service.inflight
        if running is not None and not running.done():
            return await self._join(service, running)
        return await self._run_into(service, self._begin(service))

    @staticmethod
    def _begin(service: _Service) -> asyncio.Future[HealthCheckResult]:
        running: asyncio.Future[HealthCheckResult] = asyncio.get_running_loop().create_future()
        service.inflight = running
        return running

    async def _run_into(
        self, service: _Service, running: asyncio.Future[HealthCheckResult]
    ) -> HealthCheckResult:
        try:
            result = await self._execute(service)
        except asyncio.CancelledError:
            running.cancel()
            raise
        except BaseException as exc:
            running.set_exception(exc)
            running.exception()  # joiners still get it; nobody waiting is no error to log
            raise
        running.set_result(result)
        return result

    @staticmethod
    async def _join(
        service: _Service, running: asyncio.Future[HealthCheckResult]
    ) -> HealthCheckResult:
        try:
            # shield: a joiner that is cancelled must not cancel the run for the others.
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if running.cancelled() and (current is None or not current.cancelling()):
                raise RuntimeError(
                    f"the health check of {service.name!r} was cancelled (monitor stopped)"
                ) from None
            raise

    async def _execute(self, service: _Service) -> HealthCheckResult:
        checker = service.checker
        timestamp = self._clock()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(service.timeout) as deadline:
                result = await checker.check()
            if not isinstance(result, HealthCheckResult):
                raise TypeError(f"check() must return a HealthCheckResult: {type(result).__name__}")
            if result.service != service.name:
                result = replace(result, service=service.name)
        except TimeoutError as exc:
            if deadline.expired():
                error = f"timed out after {service.timeout:g}s"
            else:
                error = scrub(error_text(exc), _secrets_of(checker))
            result = self._failure(service, timestamp, started, error)
        except Exception as exc:
            result = self._failure(
                service, timestamp, started, scrub(error_text(exc), _secrets_of(checker))
            )
        self._record(service, result)
        return result

    def _failure(
        self, service: _Service, timestamp: float, started: float, error: str
    ) -> HealthCheckResult:
        return HealthCheckResult(
            service=service.name,
            status=UNHEALTHY,
            response_time=time.perf_counter() - started,
            timestamp=timestamp,
            details=_describe(service.checker),
            error=error,
        )

    def _record(self, service: _Service, result: HealthCheckResult) -> None:
        if self._services.get(service.name) is not service:
            return  # removed while the check ran
        before = service.counters
        after = step(before, result.status, self._policy)
        service.counters = after
        service.history.append(result)
        window = list(service.history)[-self._alert_window :]
        decided = result.status is not HealthStatus.UNKNOWN
        previous = service.health
        service.health = replace(
            previous,
            status=after.status,
            consecutive_failures=after.consecutive_failures,
            consecutive_successes=after.consecutive_successes,
            total_checks=previous.total_checks + 1,
            total_failures=previous.total_failures + (decided and not result.ok),
            last_check=result.timestamp,
            response_time=result.response_time,
            last_success=result.timestamp if result.ok else previous.last_success,
            last_failure=(result.timestamp if decided and not result.ok else previous.last_failure),
            success_rate=success_rate(window),
            last_result=result,
        )
        if after.status is not before.status:
            self._on_status_change(service, before.status, after.status, result)
        alerts = evaluate(
            service.name,
            status=after.status,
            consecutive_failures=after.consecutive_failures,
            window=window,
            thresholds=self._thresholds,
            active=service.active_alerts,
            now=self._clock(),
            min_samples=self._alert_min_samples,
        )
        for alert in alerts:
            if alert.resolved:
                service.active_alerts.discard(alert.key)
            else:
                service.active_alerts.add(alert.key)
            self._track_alert(alert)
            service.alert_lane.push(self._delivery(alert))

    def _delivery(self, alert: Alert) -> Job:
        async def job() -> None:
            await deliver(
                alert, tuple(self._alert_handlers), self._alert_handler_timeout, self._dispatcher
            )

        return job

    def _track_alert(self, alert: Alert) -> None:
        if alert.resolved:
            self._active_alerts.pop(alert.key, None)
            logger.info("alert resolved", extra={"alert_key": alert.key})
        else:
            self._active_alerts[alert.key] = alert
            logger.warning(
                "alert raised: %s",
                alert.message,
                extra={"alert_key": alert.key, "severity": alert.severity},
            )

    def _on_status_change(
        self,
        service: _Service,
        old: HealthStatus,
        new: HealthStatus,
        result: HealthCheckResult,
    ) -> None:
        level = logging.WARNING if new is UNHEALTHY else logging.INFO
        logger.log(
            level,
            "service %s is %s (was %s)%s",
            service.name,
            new.value,
            old.value,
            f": {result.error}" if result.error else "",
            extra={"service": service.name, "old_status": old.value, "new_status": new.value},
        )
        service.wake_waiters()
        if new is UNHEALTHY:
            service.in_outage = True
        elif new is HEALTHY and service.in_outage:
            service.in_outage = False
            for callback in self._recovery_callbacks.get(service.name, ()):
                service.callback_lane.push(self._callback_job(callback, service.name))
        hook = self._recovery_hook
        if hook is not None:

            async def notify() -> None:
                await self._dispatcher.notify(
                    hook.on_status_change,
                    service.name,
                    old,
                    new,
                    result,
                    timeout=self._callback_timeout,
                    what="recovery hook",
                )

            service.hook_lane.push(notify)

    def _callback_job(self, callback: RecoveryCallback, name: str) -> Job:
        async def job() -> None:
            await self._dispatcher.notify(
                callback, name, timeout=self._callback_timeout, what="recovery callback"
            )

        return job

    async def _retire(
        self,
        service: _Service,
        tasks: list[asyncio.Task[Any]],
        caller: asyncio.Task[Any] | None,
    ) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        # Deliver what is queued for the service (its resolved notices last), then close.
        await service.alert_lane.idle()
        for lane in service.lanes():
            await lane.aclose(spare=caller)
        await self._close_checker(service)

    async def _close_checker(self, service: _Service) -> None:
        aclose = getattr(service.checker, "aclose", None)
        if not callable(aclose):
            return
        try:
            outcome = aclose()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("closing a health checker failed", extra={"service": service.name})
