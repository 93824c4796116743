"""RecoveryManager: heal sick services by rule, without thrashing, and call a human for the rest.

One *episode* per outage: it starts when a service turns unhealthy and ends when the
service is seen healthy again, or when automation gives up and escalates. Inside an
episode the manager climbs the service's rules cheapest first; each rule is retried
with capped exponential backoff until ``max_attempts``; then the next rule; then
manual intervention (a critical alert) and a latch that only ``reset()`` lifts.

The anchors' traps and what answers them here:

- a restart loop that never stops (systemd, supervisord's RUNNING->EXITED): attempt
  counters survive a "successful" restart and only reset after ``stable_period``
  healthy, so a crash-looping service escalates instead of restarting forever;
- a failure counter not reset after an action, so the next one fires at once (monit
  #787): each action is followed by a grace period and the backoff;
- a give-up that silently stops watching (supervisord FATAL): escalation raises a
  critical alert, stays visible in the statistics, and counts what it suppresses;
- a failure inside the cooldown is deferred to the cooldown's end, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random as _random
import time
from collections.abc import Callable, Iterable

from .._dispatch import Dispatcher
from .._redact import redact
from .._validation import MAX_HISTORY, check_int, check_optional_seconds, check_seconds
from ..events import HookPoint, RecoveryAttempted, RecoveryEscalated
from ..health.alerts import AlertHandler
from .actions import ActionContext
from .coordination import RecoveryCoordinator
from .episode import Clock, EpisodeRunner, Sleep
from .rule import RecoveryRule
from .seam import (
    SupportsMonitor,
    check_stable_period,
    current_status,
    stable_period_too_short,
)
from .state import UNHEALTHY, ServiceState, as_status
from .stats import AttemptOutcome, RecoveryAttempt, StatsBook

logger = logging.getLogger("xnai_core.recovery")


def _seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    return check_optional_seconds(name, value) if allow_none else check_seconds(name, value)


class RecoveryManager:
    """Runs recovery rules when services turn unhealthy.

    Wire it to a monitor with ``HealthMonitor(..., recovery_manager=manager)``: the
    monitor calls :meth:`attach` and then :meth:`on_status_change` on every status
    change. Without a monitor, call :meth:`on_status_change` yourself; success is
    then seen only when you report the service healthy.

    ``dry_run=True`` records (and logs) what would be done and runs nothing; it raises
    no alert. ``verify_interval``: how often, during a grace period, the attached
    monitor is asked for a fresh check (and a rule's failure threshold is polled).
    ``alert_timeout`` bounds each async alert handler of the manager's own.
    ``clock``/``sleep``/``random``/``wall_clock`` are injectable for tests: ``clock``
    is monotonic seconds, ``sleep`` waits on it, ``random`` draws from [0, 1).
    ``coordinator`` (a :class:`RecoveryCoordinator` on a shared Redis) makes replicas
    take turns: one runs a service's episode, the others wait, and a latch set by
    one holds for all.
    """

    def __init__(
        self,
        rules: Iterable[RecoveryRule] = (),
        *,
        dry_run: bool = False,
        verify_interval: float = 1.0,
        history_size: int = 50,
        alert_timeout: float | None = 10.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        wall_clock: Clock = time.time,
        coordinator: RecoveryCoordinator | None = None,
    ) -> None:
        if not isinstance(dry_run, bool):
            raise TypeError(f"'dry_run' must be a bool: {dry_run!r}")
        if coordinator is not None and not isinstance(coordinator, RecoveryCoordinator):
            raise TypeError(f"'coordinator' must be a RecoveryCoordinator: {coordinator!r}")
        check_int("history_size", history_size, 1, maximum=MAX_HISTORY)
        self._clock = clock
        self._services: dict[str, ServiceState] = {}
        self._book = StatsBook(history_size)
        self.hooks = HookPoint(self)
        """Where this manager's events go (:mod:`xnai_core.events`)."""
        self._book.on_judged = self._report_attempt
        self._handlers: list[AlertHandler] = []
        self._coordinator = coordinator
        self._warned: set[int] = set()
        self._runner = EpisodeRunner(
            clock=clock,
            sleep=sleep,
            random=random,
            wall_clock=wall_clock,
            book=self._book,
            handlers=self._handlers,
            dry_run=dry_run,
            verify_interval=float(_seconds("verify_interval", verify_interval) or 1.0),
            alert_timeout=_seconds("alert_timeout", alert_timeout, allow_none=True),
            coordinator=coordinator,
            context=ActionContext(dispatcher=Dispatcher(name="xnai-recovery", log=logger)),
            alerts=Dispatcher(max_workers=2, name="xnai-recovery-alerts", log=logger),
        )
        for rule in rules:
            self.add_rule(rule)

    # -- configuration -----------------------------------------------------------

    def add_rule(self, rule: RecoveryRule) -> None:
        """Add a rule; a service's rules run cheapest action first, then in the order added."""
        if not isinstance(rule, RecoveryRule):
            raise TypeError(f"'rule' must be a RecoveryRule: {rule!r}")
        if self._runner.monitor is not None:
            check_stable_period(rule, self._runner.monitor)
        svc = self._service(rule.service_name)
        svc.add(rule)
        # A service already known to be down must not wait for its next status change.
        if svc.status == UNHEALTHY:
            with contextlib.suppress(RuntimeError):  # no running loop: the next change starts it
                self._start(svc)

    def get_rules(self, service_name: str) -> tuple[RecoveryRule, ...]:
        """The service's rules in the order they run."""
        svc = self._services.get(service_name)
        return tuple(slot.rule for slot in svc.slots) if svc else ()

    def add_alert_handler(self, handler: AlertHandler) -> None:
        """Also send escalation alerts (and their resolution on reset) to ``handler``."""
        if not callable(handler):
            raise TypeError(f"'handler' must be callable: {handler!r}")
        self._handlers.append(handler)

    def attach(self, monitor: SupportsMonitor) -> None:
        """Called once by ``HealthMonitor(recovery_manager=...)``; idempotent for one monitor.

        The monitor's current status of each service with rules is taken at once: a
        manager attached while a service is down (rebuilt by a reload) recovers it.

        ValueError if a rule's ``stable_period`` is too short for this monitor ever
        to see a crash loop (see :func:`~xnai_core.recovery.seam.check_stable_period`).
        """
        if self._runner.monitor is not None and self._runner.monitor is not monitor:
            raise ValueError(
                f"this RecoveryManager is already attached to {self._runner.monitor!r}"
            )
        for svc in self._services.values():
            for slot in svc.slots:
                check_stable_period(slot.rule, monitor)
        self._runner.monitor = monitor
        # A manager attached mid-outage (a reload rebuilt it) must not wait for a status
        # change that may never come: it takes the monitor's current view of its services.
        for svc in self._services.values():
            status = current_status(monitor, svc.name)
            if status is not None and svc.slots:
                svc.note_status(status, self._clock())
                if svc.status == UNHEALTHY:
                    with contextlib.suppress(RuntimeError):  # no running loop: next change
                        self._start(svc)

    @property
    def monitor(self) -> SupportsMonitor | None:
        """The attached monitor, if any."""
        return self._runner.monitor

    @property
    def dry_run(self) -> bool:
        """True when actions are recorded and logged, never run."""
        return self._runner.dry_run

    @property
    def verify_interval(self) -> float:
        """Seconds between fresh checks asked of the monitor during a grace period."""
        return self._runner.verify_interval

    # -- input from the monitor --------------------------------------------------

    async def on_status_change(
        self,
        service_name: str,
        old_status: object,
        new_status: object,
        result: object | None = None,
    ) -> None:
        """A service's status changed (after the monitor's hysteresis).

        Returns at once: recovery runs in a task of its own, one per service.
        """
        svc = self._service(service_name)
        svc.note_status(as_status(new_status), self._clock())
        if svc.status != UNHEALTHY or not svc.slots:
            return
        error = getattr(result, "error", None)
        # Only a reset() recorded in Redis lifts the latch here, never its mere absence.
        if svc.escalated and await self._runner.reset_elsewhere(svc):
            svc.reset()
            logger.info(
                "recovery of %s was reset on another process; latch lifted here too",
                service_name,
                extra={"service": service_name},
            )
        if svc.escalated:
            svc.suppressed_while_escalated += 1
            logger.info(
                "recovery of %s is escalated; not acting until reset (%s)",
                service_name,
                redact(str(error)) if error else "unhealthy",
                extra={"service": service_name},
            )
        elif not svc.busy():
            self._warn_short_stable_period(svc)
            logger.warning(
                "%s is unhealthy; recovery starts (%s)",
                service_name,
                redact(str(error)) if error else "no error given",
                extra={"service": service_name},
            )
        self._start(svc)

    def _warn_short_stable_period(self, svc: ServiceState) -> None:
        for slot in svc.slots:
            detection = stable_period_too_short(slot.rule, self._runner.monitor)
            if detection is not None and id(slot) not in self._warned:
                self._warned.add(id(slot))
                logger.warning(
                    "%s: stable_period %.1fs of the %s rule is not longer than this "
                    "service's detection time (%.1fs); a crash loop may never escalate",
                    svc.name,
                    slot.rule.stable_period,
                    slot.rule.action_type.value,
                    detection,
                    extra={"service": svc.name},
                )

    # -- operator actions ----------------------------------------------------------

    def is_escalated(self, service_name: str) -> bool:
        """True while the service is latched in manual intervention."""
        svc = self._services.get(service_name)
        return bool(svc and svc.escalated)

    def escalations(self) -> dict[str, bool]:
        """Every service with rules: whether this process holds it latched."""
        return {name: svc.escalated for name, svc in self._services.items() if svc.slots}

    async def shared_escalations(self) -> dict[str, bool] | None:
        """:meth:`escalations` as the replicas sharing the coordinator see them.

        A latch a peer wrote to Redis counts, though this process has not acted on the
        service (and so not latched it here yet); a latch this process holds but that a
        ``reset()`` on another process lifted (a new reset id in Redis) does not. Where
        Redis does not answer (within the coordinator's timeout), this process's own
        view stands. None without a coordinator (or in a dry run): nothing is shared.
        """
        local = self.escalations()
        coordinator = self._coordinator
        if coordinator is None or self._runner.dry_run:
            return None
        if not local:
            return local
        names = list(local)
        views = await asyncio.gather(*(coordinator.latch_state(name) for name in names))
        shared = dict(local)
        for name, view in zip(names, views, strict=True):
            if view is None:
                continue
            svc = self._services[name]
            reset_elsewhere = (
                svc.latch_shared
                and view.reset_id is not None
                and view.reset_id != svc.latch_reset_seen
            )
            shared[name] = view.latched or (local[name] and not reset_elsewhere)
        return shared

    async def reset(self, service_name: str) -> bool:
        """Lift the manual-intervention latch and clear the service's counters and cooldown.

        Returns whether the service was escalated. A lifted latch sends the resolved
        alert (same key). If the service is still unhealthy, recovery starts afresh.
        """
        svc = self._services.get(service_name)
        if svc is None:
            return False
        was_escalated = svc.escalated
        reason = svc.escalation_reason or "reset"
        svc.reset()
        logger.info(
            "recovery of %s reset%s",
            service_name,
            " (manual intervention latch lifted)" if was_escalated else "",
            extra={"service": service_name},
        )
        if (
            self._coordinator is not None
            and not self.dry_run
            and not await self._coordinator.unlatch(service_name)
        ):
            logger.warning(
                "reset of %s could not reach Redis: other processes stay latched, and this "
                "one latches again when it next finds the shared latch; call reset(%r) again "
                "once Redis answers",
                service_name,
                service_name,
                extra={"service": service_name},
            )
        if was_escalated and not self.dry_run:
            emit = self.hooks.emit
            if emit is not None:
                emit(RecoveryEscalated(service_name, False, "reset"))
            await self._runner.alert(svc, resolved=True, reason=reason)
        if svc.status == UNHEALTHY:
            self._start(svc)
        return was_escalated

    async def wait_idle(self) -> None:
        """Wait until no service has recovery in flight."""
        while tasks := [svc.task for svc in self._services.values() if svc.busy()]:
            await asyncio.wait([task for task in tasks if task is not None])

    async def aclose(self) -> None:
        """Cancel recovery in flight (killing any running command) and stop acting."""
        self._runner.closed = True
        tasks = [
            task
            for svc in self._services.values()
            for task in (svc.task, svc.latch_task)
            if task is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner.context.close()
        self._runner.alerts.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: it acts no more."""
        return self._runner.closed

    async def __aenter__(self) -> RecoveryManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- statistics ------------------------------------------------------------------

    def get_recovery_stats(self) -> dict[str, object]:
        """The seed's structure, plus ``services``: per-service detail.

        ``total_attempts``, ``success_fraction`` (0..1 of the judged attempts; 0.0
        before any; ``success_rate`` is the seed's name for the same fraction, unlike the
        health monitor's ``success_rate``, a percent),
        ``average_recovery_time`` (seconds from action to healthy, over successful
        attempts), ``actions_by_type`` (every action string, escalations counted as
        ``manual_intervention``), ``recent_failures`` (bounded, oldest first).
        """
        stats = self._book.summary()
        now = self._clock()
        services: dict[str, object] = {}
        for name, svc in self._services.items():
            if svc.slots:
                svc.apply_stable_reset(now)
                services[name] = svc.detail(now, functools.partial(self._grace, service=name))
        stats["services"] = services
        return stats

    def _report_attempt(self, attempt: RecoveryAttempt) -> None:
        """An attempt's outcome to the hooks; an escalation also as the latch it sets."""
        emit = self.hooks.emit
        if emit is None:
            return
        outcome = attempt.outcome.value
        action = attempt.action.value
        emit(RecoveryAttempted(attempt.service, action, outcome, attempt.attempt, attempt.duration))
        if attempt.outcome is AttemptOutcome.ESCALATED:
            emit(RecoveryEscalated(attempt.service, True, redact(attempt.reason or "escalated")))

    def _grace(self, rule: RecoveryRule, service: str) -> float:
        return self._runner.grace(rule, service)

    # -- the episode -----------------------------------------------------------------

    def _service(self, name: str) -> ServiceState:
        if not isinstance(name, str) or not name:
            raise ValueError(f"'service_name' must be a non-empty string: {name!r}")
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = ServiceState(name)
        return svc

    def _start(self, svc: ServiceState) -> None:
        """Start the service's episode unless one is in flight, it is latched, or we closed."""
        if self._runner.closed or svc.escalated or svc.busy() or not svc.slots:
            return
        svc.task = asyncio.get_running_loop().create_task(
            self._runner.run(svc), name=f"xnai-recovery:{svc.name}"
        )
