"""HealthMonitor: the front over a scheduler, a pure fold and a notifier.

- :mod:`.scheduler` runs each checker in a task of its own: a jittered first run,
  then ``interval`` after each run ends (runs never overlap).
- Runs of one service share one flight (:mod:`xnai_core._singleflight`): a manual
  check joins a run in progress instead of starting a second; every run is
  bounded by the service's timeout (a timeout is an unhealthy result).
- :mod:`.fold` turns each result into the new status, the outage flag, and the
  alerts to raise or resolve (with hysteresis); no clock, no I/O.
- :mod:`.notifier` delivers alerts, recovery callbacks and status changes in
  background lanes through the monitor's dispatcher (sync ones on its own bounded
  threads), so a slow webhook or a long recovery never delays a check.
- :class:`~.alerts.ActiveAlerts` is the one record of raised alerts.

Callbacks may call back into the monitor (even ``stop_monitoring()`` or
``remove_checker()``): the monitor never cancels or awaits the task it is called
from. Memory is bounded: each service keeps at most ``history_size`` results.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from .._dispatch import Dispatcher
from .._singleflight import FlightTimeoutError, SingleFlight
from ..events import AlertChanged, HealthChecked, HookPoint
from ._validate import check_name, check_seconds
from .alerts import ActiveAlerts, Alert, AlertHandler, deliver
from .fold import ServiceState, fold
from .health_json import overall_status, to_health_json
from .history import ResultHistory
from .hooks import RecoveryCallback, RecoveryHook
from .notifier import Notifier
from .report import HealthReport, HealthSummary, ServiceReport
from .result import HealthCheckResult, HealthStatus, SupportsHealthCheck
from .run import checker_timeout, close_checker, failure, run_check
from .scheduler import Scheduler, uniform_jitter
from .service import ServiceHealth
from .settings import MonitorSettings
from .window import ResultWindow

__all__ = ["HealthMonitor"]

logger = logging.getLogger("xnai_core.health.monitor")

UNHEALTHY = HealthStatus.UNHEALTHY


@dataclass(slots=True, eq=False)
class _Service:
    """The monitor's mutable record of one checker; only the monitor touches it."""

    name: str
    checker: SupportsHealthCheck
    interval: float
    timeout: float
    history: ResultHistory
    window: ResultWindow
    health: ServiceHealth
    state: ServiceState = field(default_factory=ServiceState)
    runner: asyncio.Task[Any] | None = None  # the run in flight
    # A run still going past its deadline (its checker ignores cancellation): until it
    # returns, each run fails at once instead of starting another call beside it.
    stuck: asyncio.Task[Any] | None = None
    stuck_run: int = 0  # the number of that run
    runs: int = 0  # runs started
    in_run: int = 0  # the number of the run going on (0: none)
    changed: asyncio.Event | None = None

    def wake_waiters(self) -> None:
        event, self.changed = self.changed, None
        if event is not None:
            event.set()


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called from ``loop``'s own thread, while it runs."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False  # another thread (or no loop running here)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # no running loop


class HealthMonitor:
    """Schedules health checks and keeps each service's status, report and alerts.

    ``check_interval`` seconds between the end of one check and the start of the
    next. ``alert_thresholds``: ``{"success_rate": 95, "response_time": 5.0,
    "consecutive_failures": 5}`` (percent, seconds, count; any subset) evaluated
    over the last ``alert_window`` results; the window kinds only once it holds
    ``alert_min_samples`` results (default: a full window). A raised window alert
    resolves once its value is back past ``alert_clear_thresholds`` (same keys;
    default halfway from the success-rate threshold to 100%, 80% of the
    response-time threshold) for ``alert_clear_after`` results in a row (default:
    ``alert_window``). ``failure_threshold`` failures in a row make a service
    unhealthy (fewer: degraded); ``success_threshold`` successes in a row make it
    healthy again. ``check_timeout`` caps every check (default: the checker's own
    timeout, never more than the interval). ``clock`` gives the wall-clock
    timestamps of reports and monitor-made results; ``jitter(interval)`` the delay
    before a checker's first run (default: uniform over the interval).
    ``recovery_manager`` receives every status change (see
    :class:`~xnai_core.health.hooks.RecoveryHook`). Alert handlers are bounded by
    ``alert_handler_timeout``, recovery callbacks and the hook by
    ``callback_timeout``; sync ones run on at most ``callback_workers`` threads of
    the monitor's own.
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
        alert_clear_thresholds: Mapping[str, float] | None = None,
        alert_clear_after: int | None = None,
        alert_handler_timeout: float | None = 10.0,
        callback_timeout: float | None = 60.0,
        callback_workers: int = 4,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self._settings = MonitorSettings.parse(
            check_interval=check_interval,
            alert_thresholds=alert_thresholds,
            alert_clear_thresholds=alert_clear_thresholds,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            check_timeout=check_timeout,
            history_size=history_size,
            alert_window=alert_window,
            alert_min_samples=alert_min_samples,
            alert_clear_after=alert_clear_after,
            alert_handler_timeout=alert_handler_timeout,
            callback_timeout=callback_timeout,
            callback_workers=callback_workers,
        )
        self.check_interval = self._settings.check_interval
        self._clock = clock
        self._services: dict[str, _Service] = {}
        self._recovery_callbacks: dict[str, list[RecoveryCallback]] = {}
        self._alert_handlers: list[AlertHandler] = []
        self._alerts = ActiveAlerts()
        self._flights: SingleFlight[_Service, HealthCheckResult] = SingleFlight()
        self._scheduler = Scheduler(jitter or uniform_jitter, logger)
        # Sync handlers, callbacks and hooks run on these threads, never on the loop.
        self._dispatcher = Dispatcher(
            max_workers=self._settings.callback_workers, name="xnai-health-callback", log=logger
        )
        self._notifier = Notifier(
            handlers=self._alert_handlers,
            dispatcher=self._dispatcher,
            alert_timeout=self._settings.alert_handler_timeout,
            callback_timeout=self._settings.callback_timeout,
            log=logger,
        )
        # Removed services still delivering their last notices and closing.
        self._retiring: dict[asyncio.Task[None], _Service] = {}
        self._active = False
        self._stops = 0  # stop_monitoring() calls: a run begun before one is not recorded
        self._loop: asyncio.AbstractEventLoop | None = None  # where its tasks run
        self.hooks = HookPoint(self)
        """Where this monitor's events go (:mod:`xnai_core.events`)."""
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
        """The thresholds in force (only the kinds that are set; the seed's keys)."""
        return self._settings.fold.thresholds.as_dict()

    @property
    def alert_clear_thresholds(self) -> dict[str, float]:
        """The clear thresholds of the window alert kinds that are set."""
        return self._settings.fold.thresholds.clear_dict()

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that make a service unhealthy."""
        return self._settings.fold.policy.failure_threshold

    @property
    def success_threshold(self) -> int:
        """Successes in a row that make a service healthy again."""
        return self._settings.fold.policy.success_threshold

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
        limits = [every, checker_timeout(checker), self._settings.check_timeout]
        timeout = min(limit for limit in limits if limit is not None)
        component_type = getattr(checker, "component_type", "component")
        service = _Service(
            name=name,
            checker=checker,
            interval=every,
            timeout=timeout,
            history=ResultHistory(self._settings.history_size),
            window=ResultWindow(self._settings.alert_window),
            health=ServiceHealth(
                name=name,
                component_type=component_type if isinstance(component_type, str) else "component",
                interval=every,
                timeout=timeout,
            ),
        )
        self._services[name] = service
        if self._active:
            self._start(service)

    def remove_checker(self, name: str) -> None:
        """Stop monitoring ``name``; its task is cancelled and its connections closed.

        Its active alerts are resolved: the handlers get a resolved notice for each
        (after any notice still queued for it), then its notification lanes close.
        Safe to call from the service's own check, callbacks or alert handlers; from
        another thread (a sync callback or handler, on the monitor's worker threads)
        the removal is handed to the monitor's event loop and done there right after.
        Raises ``KeyError`` for an unknown name.
        """
        service = self._service(name)
        loop = self._loop
        if loop is not None and loop.is_running() and not _runs_on(loop):
            # Tasks, lanes and the record of alerts belong to the loop's thread: a
            # removal done here cancelled tasks unsafely and never closed the checker.
            loop.call_soon_threadsafe(self._remove, service)
            return
        self._remove(service)

    def _remove(self, service: _Service) -> None:
        name = service.name
        if self._services.get(name) is not service:
            return  # removed (or replaced) meanwhile
        del self._services[name]
        service.wake_waiters()
        caller = _current_task()
        tasks = [
            task
            for task in (self._scheduler.detach(name), service.runner)
            if task is not None and not task.done() and task is not caller
        ]
        for task in tasks:
            task.cancel()
        now = self._clock()
        notices = [
            Alert(
                key=key,
                service=name,
                kind=active.kind,
                severity="info",
                message=f"resolved: {name} is no longer monitored",
                resolved=True,
                timestamp=now,
                details={"reason": "checker removed"},
            )
            for key, active in sorted(self._alerts.of(name).items())
        ]
        for notice in notices:
            self._announce(name, notice, queue=False)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, so nothing of it can be running (nor deliver the notices)
        for notice in notices:
            self._notifier.alert(name, notice)
        retire = loop.create_task(
            self._retire(service, tasks, caller), name=f"xnai-health-retire-{name}"
        )
        self._retiring[retire] = service
        retire.add_done_callback(self._forget_retired)

    def _forget_retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)

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
        if handler not in self._alert_handlers:
            self._notifier.forget_handler(handler)

    # -- lifecycle -------------------------------------------------------------------

    async def start_monitoring(self) -> None:
        """Start one background task per checker and return; idempotent."""
        if self._active:
            return
        self._active = True
        self._loop = asyncio.get_running_loop()
        for service in self._services.values():
            self._start(service)
        logger.info("health monitoring started", extra={"xnai.services": len(self._services)})

    async def stop_monitoring(self) -> None:
        """Cancel every check and notification task, await them, close connections.

        Idempotent; nothing of the monitor runs afterwards. Pending notifications
        are dropped: await :meth:`drain_notifications` first to deliver them.

        May be called from a recovery callback, an alert handler, the recovery
        hook or a check: the task it is called from is neither cancelled nor
        awaited; it finishes what it is doing and nothing queued runs after it.
        """
        was_active, self._active = self._active, False
        self._stops += 1
        caller = _current_task()
        tasks: list[asyncio.Task[Any]] = list(self._scheduler.detach_all())
        tasks.extend(s.runner for s in self._services.values() if s.runner is not None)
        tasks = [task for task in tasks if not task.done() and task is not caller]
        for task in tasks:
            task.cancel()
        for retiring in list(self._retiring.values()):
            # Removed services: drop their undelivered notices too, then let them close.
            await self._notifier.close(retiring.name, spare=caller)
        tasks.extend(task for task in self._retiring if task is not caller)
        await self._settle(tasks, [*self._services.values(), *self._retiring.values()])
        await self._notifier.close_all()
        for service in list(self._services.values()):
            await self._close_checker(service)
        self._dispatcher.close()
        if was_active:
            logger.info("health monitoring stopped", extra={"xnai.services": len(self._services)})

    async def drain_notifications(self) -> None:
        """Wait until queued alerts, recovery callbacks and hook calls have run.

        Includes the resolved notices of removed checkers. From inside a callback,
        it does not wait for that callback's own lane.
        """
        for name in self._notifier.services():
            await self._notifier.idle(name)
        caller = _current_task()
        retiring = [
            task
            for task, service in self._retiring.items()
            if task is not caller and not self._notifier.runs_in(service.name, caller)
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
        return self._service(name).state.counters.status

    def get_service_health(self, name: str) -> ServiceHealth:
        """The full snapshot of ``name``: streaks, totals, success percent, last result."""
        return self._service(name).health

    def get_history(self, name: str) -> tuple[HealthCheckResult, ...]:
        """The last results of ``name``, oldest first (at most ``history_size``)."""
        return self._service(name).history.results()

    def get_overall_status(self) -> HealthStatus:
        """The worst status of all services (unknown only if all are unknown)."""
        return overall_status(s.state.counters.status for s in self._services.values())

    def get_active_alerts(self) -> list[Alert]:
        """Alerts raised and not yet resolved, oldest first."""
        return self._alerts.all()

    def get_health_report(self) -> HealthReport:
        """The seed's report: timestamp, monitoring_active, services, summary.

        Reads stored state only; it never runs a check.
        """
        counts = dict.fromkeys(HealthStatus, 0)
        services: dict[str, ServiceReport] = {}
        for name, service in self._services.items():
            counts[service.state.counters.status] += 1
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
        starting a second. A run still going at twice its timeout (its checker
        ignores cancellation) is not waited for: the answer is an unhealthy result
        saying so.
        ``KeyError`` for an unknown name, and for a checker removed while it was checked.
        """
        service = self._service(name)
        try:
            return await self._run(service)
        except FlightTimeoutError as exc:
            return failure(service.checker, name, self._clock(), time.perf_counter(), str(exc))

    async def wait_for_status(
        self, name: str, status: HealthStatus | str, timeout: float | None = None
    ) -> bool:
        """Wait until ``name`` has ``status``; False if ``timeout`` seconds pass first."""
        target = HealthStatus(status)
        service = self._service(name)
        try:
            async with asyncio.timeout(timeout):
                while service.state.counters.status is not target:
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
        self._announce(alert.service, alert, queue=False)
        await deliver(
            alert,
            tuple(self._alert_handlers),
            self._settings.alert_handler_timeout,
            self._dispatcher,
        )

    # -- internals -------------------------------------------------------------------

    def _service(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no health checker named {name!r}") from None

    def _start(self, service: _Service) -> None:
        self._scheduler.start(service.name, service.interval, lambda: self._scheduled(service))

    async def _scheduled(self, service: _Service) -> None:
        try:
            await self._run(service, here=True)
        except FlightTimeoutError:
            logger.warning(
                "a check of %s is still running past twice its timeout",
                service.name,
                extra={"xnai.service": service.name},
            )

    async def _run(self, service: _Service, *, here: bool = False) -> HealthCheckResult:
        """Run a check of ``service``, or join the one in flight.

        ``here``: a run this call starts runs in the calling task (the schedule's own,
        which would only wait for it): a task per scheduled run made the young
        collections four times as frequent and fed the full ones (the tail lag).
        """
        # A flight is shared for twice the check's own bound: the run ends by its
        # timeout, so only a checker that ignores cancellation outlives that.
        deadline = 2.0 * service.timeout
        self._loop = asyncio.get_running_loop()
        try:
            if here:
                return await self._flights.run_here(
                    service, lambda: self._execute(service), deadline=deadline
                )
            # The caller that starts a flight waits no longer than one that joins it.
            return await self._flights.run(
                service, lambda: self._execute(service), deadline=deadline, bounded=True
            )
        except asyncio.CancelledError:
            runner = service.runner
            current = asyncio.current_task()
            if (
                runner is not None
                and runner.cancelled()
                and (current is None or not current.cancelling())
            ):
                if self._services.get(service.name) is not service:
                    # Removed meanwhile (a reload): a name no longer monitored, as documented.
                    raise KeyError(
                        f"no health checker named {service.name!r} (removed while it was checked)"
                    ) from None
                raise RuntimeError(
                    f"the health check of {service.name!r} was cancelled (monitor stopped)"
                ) from None
            raise

    async def _execute(self, service: _Service) -> HealthCheckResult:
        stops = self._stops
        if service.stuck is not None:
            result = failure(
                service.checker,
                service.name,
                self._clock(),
                time.perf_counter(),
                f"the previous check is still running past its {2.0 * service.timeout:g}s"
                " deadline (the checker does not stop when cancelled)",
            )
            self._record(service, result, stops)
            return result
        runner = service.runner = asyncio.current_task()
        assert runner is not None  # a flight runs in a task
        run = service.in_run = service.runs = service.runs + 1
        # The run's timeout cancels the check; this fires only if the checker ignores
        # that, so a stuck check neither stops its schedule nor hides the service.
        watchdog = asyncio.get_running_loop().call_later(
            2.0 * service.timeout, self._overdue, service, runner, run, stops, time.perf_counter()
        )
        try:
            result = await run_check(service.checker, service.name, service.timeout, self._clock)
        finally:
            watchdog.cancel()
            if service.in_run == run:
                service.in_run = 0
            late = service.stuck_run == run
            if late:
                service.stuck, service.stuck_run = None, 0
        # Hold a finished run no longer than it runs (a cancelled one stays, so _run
        # can tell a stopped monitor from a caller's own cancellation). A task kept
        # until the next run, with its coroutine, context and the HTTP client's
        # per-task state, outlives the young collections; every run then feeds the
        # full collections whose pauses delay every schedule of the process.
        if service.runner is runner:
            service.runner = None
        if not late:  # a late run was already recorded as failed, by _overdue
            self._record(service, result, stops)
        return result

    def _overdue(
        self,
        service: _Service,
        runner: asyncio.Task[Any],
        run: int,
        stops: int,
        started: float,
        confirmed: bool = False,
    ) -> None:
        """A run is still going at twice its timeout: its checker ignores cancellation.

        Record it as failed, and go on with the schedule in a new task if the run
        holds the schedule's own; the stuck call is left to return when it will.
        """
        if service.in_run != run:
            return  # it ended
        if not confirmed:
            # On a loop lagging by a whole timeout, the timeout's cancellation and this
            # fire in one pass: let the run take the step that ends it first.
            asyncio.get_running_loop().call_soon(
                self._overdue, service, runner, run, stops, started, True
            )
            return
        service.stuck, service.stuck_run = runner, run
        if stops != self._stops or self._services.get(service.name) is not service:
            return  # the monitor stopped, or the service was removed: nothing to record
        deadline = 2.0 * service.timeout
        logger.warning(
            "a check of %s is still running %gs after it started: its checker ignores"
            " its %gs timeout",
            service.name,
            deadline,
            service.timeout,
            extra={"xnai.service": service.name},
        )
        error = (
            f"still running after {deadline:g}s: the checker does not stop"
            f" at its {service.timeout:g}s timeout"
        )
        self._record(
            service, failure(service.checker, service.name, self._clock(), started, error), stops
        )
        if self._scheduler.task_of(service.name) is runner and self._active:
            self._scheduler.replace(
                service.name, service.interval, lambda: self._scheduled(service)
            )

    async def _settle(self, tasks: list[asyncio.Task[Any]], services: list[_Service]) -> None:
        """Await ``tasks`` (cancelled), but not past the deadline of a run that ignores it.

        A run already known stuck is not waited for at all; the others get twice the
        longest timeout among ``services``. What is still running then is left.
        """
        stuck = {service.stuck for service in services}
        waited = [task for task in tasks if task not in stuck]
        if waited:
            bound = max((2.0 * service.timeout for service in services), default=0.0)
            _, pending = await asyncio.wait(waited, timeout=bound)
            for task in pending:
                logger.warning("left running after stop: %s ignores cancellation", task.get_name())
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # seen: ended tasks log nothing at collection

    def _record(self, service: _Service, result: HealthCheckResult, stops: int) -> None:
        if self._services.get(service.name) is not service:
            return  # removed while the check ran
        if stops != self._stops:
            return  # begun before stop_monitoring(): nothing of it is recorded after that
        service.history.append(result)
        service.window.append(result)
        outcome = fold(
            service.state,
            result,
            service.window,
            self._alerts.of(service.name),
            self._settings.fold,
            self._clock(),
        )
        service.state = outcome.state
        service.health = service.health.after(
            result, outcome.state.counters, service.window.success_percent()
        )
        emit = self.hooks.emit
        if emit is not None:
            status = outcome.state.counters.status.value
            seconds = result.response_time or 0.0
            emit(HealthChecked(service.name, result.status.value, status, seconds))
        if outcome.change is not None:
            self._on_status_change(service, *outcome.change, result)
        if outcome.recovered:
            callbacks = self._recovery_callbacks.get(service.name, ())
            self._notifier.recovered(service.name, callbacks)
        for alert in outcome.alerts:
            self._announce(service.name, alert, queue=True)

    def _announce(self, service: str, alert: Alert, *, queue: bool) -> None:
        """Record ``alert`` in the one record of active alerts, log it, queue it if asked."""
        self._alerts.apply(alert)
        emit = self.hooks.emit
        if emit is not None:
            emit(AlertChanged(alert.service, alert.kind, alert.severity, not alert.resolved))
        if alert.resolved:
            logger.info("alert resolved", extra={"xnai.alert_key": alert.key})
        else:
            logger.warning(
                "alert raised: %s",
                alert.message,
                extra={"xnai.alert_key": alert.key, "xnai.severity": alert.severity},
            )
        if queue:
            self._notifier.alert(service, alert)

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
            extra={
                "xnai.service": service.name,
                "xnai.old_status": old.value,
                "xnai.new_status": new.value,
            },
        )
        service.wake_waiters()
        if self._recovery_hook is not None:
            self._notifier.status_changed(self._recovery_hook, service.name, old, new, result)

    async def _retire(
        self,
        service: _Service,
        tasks: list[asyncio.Task[Any]],
        caller: asyncio.Task[Any] | None,
    ) -> None:
        await self._settle(tasks, [service])
        # Deliver what is queued for the service (its resolved notices last), then close.
        await self._notifier.idle(service.name, alerts_only=True)
        if service.name not in self._services:  # not added again meanwhile
            await self._notifier.close(service.name, spare=caller)
        await self._close_checker(service)

    async def _close_checker(self, service: _Service) -> None:
        await close_checker(service.checker, service.name, logger)
