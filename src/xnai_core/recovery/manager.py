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
import enum
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..health.alerts import Alert, AlertHandler, deliver
from .actions import ActionOutcome, perform, redact
from .rule import RecoveryActionType, RecoveryRule, backoff_delay
from .stats import AttemptOutcome, RecoveryAttempt, StatsBook

logger = logging.getLogger("xnai_core.recovery")

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
MANUAL = RecoveryActionType.MANUAL_INTERVENTION

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class SupportsMonitor(Protocol):
    """The part of ``HealthMonitor`` the manager uses once attached."""

    def get_status(self, service_name: str) -> object: ...

    async def trigger_manual_check(self, service_name: str) -> object: ...

    async def emit_alert(self, alert: Alert) -> object: ...


def _status_text(status: object) -> str:
    # HealthStatus is a str enum; plain strings work too (standalone use).
    value = getattr(status, "value", status)
    return str(value) if value is not None else "unknown"


class RecoveryPhase(enum.StrEnum):
    """Where a service's recovery stands."""

    IDLE = "idle"
    WAITING = "waiting"  # for cooldown, backoff or a rule's failure threshold
    ACTING = "acting"
    VERIFYING = "verifying"  # action done; waiting to see the service healthy
    ESCALATED = "escalated"  # latched until reset()


@dataclass(slots=True, eq=False)
class _Slot:
    """A rule and its counters since the service was last stable."""

    rule: RecoveryRule
    tries: int = 0
    retry_at: float | None = None  # monotonic: the backoff ends here
    next_delay: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.rule.action_type is not MANUAL and self.tries >= self.rule.max_attempts


class _Service:
    """Everything the manager knows about one service."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slots: list[_Slot] = []
        self.status = "unknown"
        self.healthy_since: float | None = None
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.phase = RecoveryPhase.IDLE
        self.cooldown_until = -math.inf
        self.escalated_at: float | None = None
        self.escalation_reason: str | None = None
        self.last_attempt: RecoveryAttempt | None = None
        self.episodes = 0
        self.recovered_episodes = 0
        self.time_to_recovery_sum = 0.0
        self.attempts = 0
        self.successes = 0
        self.escalations = 0
        self.deferred_by_cooldown = 0
        self.suppressed_while_escalated = 0
        self.dry_run_actions = 0

    @property
    def escalated(self) -> bool:
        return self.escalated_at is not None

    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class RecoveryManager:
    """Runs recovery rules when services turn unhealthy.

    Wire it to a monitor with ``HealthMonitor(..., recovery_manager=manager)``: the
    monitor calls :meth:`attach` and then :meth:`on_status_change` on every status
    change. Without a monitor, call :meth:`on_status_change` yourself; success is
    then seen only when you report the service healthy.

    ``dry_run=True`` records (and logs) what would be done and runs nothing; it raises
    no alert. ``clock``/``sleep``/``random`` are injectable for tests: ``clock`` is
    monotonic seconds, ``sleep`` waits on that clock, ``random`` draws from [0, 1).
    ``verify_interval`` is how often, during a grace period, the attached monitor is
    asked for a fresh check (and how often a rule's failure threshold is polled).
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
    ) -> None:
        if not isinstance(dry_run, bool):
            raise TypeError(f"'dry_run' must be a bool: {dry_run!r}")
        if (
            not isinstance(verify_interval, int | float)
            or isinstance(verify_interval, bool)
            or not 0 < verify_interval < math.inf
        ):
            raise ValueError(f"'verify_interval' must be > 0 seconds: {verify_interval!r}")
        if alert_timeout is not None and not (
            isinstance(alert_timeout, int | float)
            and not isinstance(alert_timeout, bool)
            and 0 < alert_timeout < math.inf
        ):
            raise ValueError(f"'alert_timeout' must be > 0 seconds or None: {alert_timeout!r}")
        if not isinstance(history_size, int) or isinstance(history_size, bool):
            raise TypeError(f"'history_size' must be an int: {history_size!r}")
        if history_size < 1:
            raise ValueError(f"'history_size' must be >= 1: {history_size!r}")
        self.dry_run = dry_run
        self.verify_interval = float(verify_interval)
        self.alert_timeout = alert_timeout
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._wall = wall_clock
        self._services: dict[str, _Service] = {}
        self._book = StatsBook(history_size)
        self._handlers: list[AlertHandler] = []
        self._monitor: SupportsMonitor | None = None
        self._closed = False
        for rule in rules:
            self.add_rule(rule)

    # -- configuration -----------------------------------------------------------

    def add_rule(self, rule: RecoveryRule) -> None:
        """Add a rule; a service's rules run cheapest action first, then in the order added."""
        if not isinstance(rule, RecoveryRule):
            raise TypeError(f"'rule' must be a RecoveryRule: {rule!r}")
        if self._monitor is not None:
            self._check_stable_period(rule, self._monitor)
        svc = self._service(rule.service_name)
        cost = rule.action_type.cost
        index = sum(1 for slot in svc.slots if slot.rule.action_type.cost <= cost)
        svc.slots.insert(index, _Slot(rule))
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

        Raises ValueError if a rule's ``stable_period`` is too short for this
        monitor to ever see a crash loop (see :meth:`_check_stable_period`).
        """
        if self._monitor is not None and self._monitor is not monitor:
            raise ValueError(f"this RecoveryManager is already attached to {self._monitor!r}")
        for svc in self._services.values():
            for slot in svc.slots:
                self._check_stable_period(slot.rule, monitor)
        self._monitor = monitor

    @staticmethod
    def _check_stable_period(rule: RecoveryRule, monitor: object) -> None:
        """A stable period the monitor cannot outlast would reset counters on every crash.

        A service that dies right after a restart still looks healthy until the
        monitor's next failed check (one interval), and unhealthy only after
        ``failure_threshold`` of them. A stable period shorter than that passes on
        every lap of a crash loop, so max_attempts would never be reached: the
        systemd trap of a limit that can never trigger.
        """
        interval = getattr(monitor, "check_interval", None)
        threshold = getattr(monitor, "failure_threshold", None)
        if not isinstance(interval, int | float) or not isinstance(threshold, int):
            return
        detection = interval * threshold
        if rule.stable_period <= detection:
            raise ValueError(
                f"'stable_period' of the {rule.action_type.value!r} rule for "
                f"{rule.service_name!r} must be > the monitor's failure_threshold * "
                f"check_interval ({threshold} * {interval:g}s = {detection:g}s), or a crash "
                f"loop never escalates: {rule.stable_period!r}"
            )

    @property
    def monitor(self) -> SupportsMonitor | None:
        """The attached monitor, if any."""
        return self._monitor

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
        self._note_status(svc, _status_text(new_status))
        if svc.status == UNHEALTHY and svc.slots:
            error = getattr(result, "error", None)
            if svc.escalated:
                svc.suppressed_while_escalated += 1
                logger.info(
                    "recovery of %s is escalated; not acting until reset (%s)",
                    service_name,
                    error or "unhealthy",
                    extra={"service": service_name},
                )
            elif not svc.busy():
                logger.warning(
                    "%s is unhealthy; recovery starts (%s)",
                    service_name,
                    redact(str(error)) if error else "no error given",
                    extra={"service": service_name},
                )
            self._start(svc)

    # -- operator actions ----------------------------------------------------------

    def is_escalated(self, service_name: str) -> bool:
        """True while the service is latched in manual intervention."""
        svc = self._services.get(service_name)
        return bool(svc and svc.escalated)

    async def reset(self, service_name: str) -> bool:
        """Lift the manual-intervention latch and clear the service's counters and cooldown.

        Returns whether the service was escalated. A resolved alert (same key) goes
        out for a lifted latch. If the service is still unhealthy, recovery starts
        afresh.
        """
        svc = self._services.get(service_name)
        if svc is None:
            return False
        was_escalated = svc.escalated
        reason = svc.escalation_reason
        svc.escalated_at = None
        svc.escalation_reason = None
        svc.cooldown_until = -math.inf
        for slot in svc.slots:
            slot.tries, slot.retry_at, slot.next_delay = 0, None, 0.0
        if svc.phase is RecoveryPhase.ESCALATED:
            svc.phase = RecoveryPhase.IDLE
        logger.info(
            "recovery of %s reset%s",
            service_name,
            " (manual intervention latch lifted)" if was_escalated else "",
            extra={"service": service_name},
        )
        if was_escalated and not self.dry_run:
            await self._alert(svc, resolved=True, reason=reason or "reset")
        if svc.status == UNHEALTHY and svc.slots:
            self._start(svc)
        return was_escalated

    async def wait_idle(self) -> None:
        """Wait until no service has recovery in flight."""
        while True:
            tasks = [svc.task for svc in self._services.values() if svc.busy()]
            if not tasks:
                return
            await asyncio.wait([t for t in tasks if t is not None])

    async def aclose(self) -> None:
        """Cancel recovery in flight (killing any running command) and stop acting."""
        self._closed = True
        tasks = [svc.task for svc in self._services.values() if svc.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> RecoveryManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- statistics ------------------------------------------------------------------

    def get_recovery_stats(self) -> dict[str, object]:
        """The seed's structure, plus ``services``: per-service detail.

        ``total_attempts``, ``success_rate`` (0..1; 0.0 before any attempt),
        ``average_recovery_time`` (seconds from action to healthy, over successful
        attempts), ``actions_by_type`` (every action string, escalations counted as
        ``manual_intervention``), ``recent_failures`` (bounded, oldest first).
        """
        stats = self._book.summary()
        now = self._clock()
        services: dict[str, object] = {}
        for name, svc in self._services.items():
            if not svc.slots:
                continue
            self._apply_stable_reset(svc, now)
            services[name] = self._service_detail(svc, now)
        stats["services"] = services
        return stats

    def _service_detail(self, svc: _Service, now: float) -> dict[str, object]:
        recovered = svc.recovered_episodes
        return {
            "status": svc.status,
            "state": svc.phase.value,
            "escalated": svc.escalated,
            "escalated_at": svc.escalated_at,
            "escalation_reason": svc.escalation_reason,
            "episodes": svc.episodes,
            "recovered_episodes": recovered,
            "mean_time_to_recovery": svc.time_to_recovery_sum / recovered if recovered else None,
            "attempts": svc.attempts,
            "successes": svc.successes,
            "failures": svc.attempts - svc.successes,
            "escalations": svc.escalations,
            "deferred_by_cooldown": svc.deferred_by_cooldown,
            "suppressed_while_escalated": svc.suppressed_while_escalated,
            "dry_run_actions": svc.dry_run_actions,
            "cooldown_remaining": max(0.0, svc.cooldown_until - now),
            "healthy_for": None if svc.healthy_since is None else now - svc.healthy_since,
            "rules": [
                {
                    "action": slot.rule.action_type.value,
                    "runs": slot.rule.describe(),
                    "failure_threshold": slot.rule.failure_threshold,
                    "max_attempts": slot.rule.max_attempts,
                    "tries_since_stable": slot.tries,
                    "backoff_remaining": (
                        max(0.0, slot.retry_at - now) if slot.retry_at is not None else 0.0
                    ),
                }
                for slot in svc.slots
            ],
            "last_attempt": svc.last_attempt.as_dict() if svc.last_attempt else None,
        }

    # -- the episode -----------------------------------------------------------------

    def _service(self, name: str) -> _Service:
        if not isinstance(name, str) or not name:
            raise ValueError(f"'service_name' must be a non-empty string: {name!r}")
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(name)
        return svc

    def _note_status(self, svc: _Service, status: str) -> None:
        if status == svc.status:
            return
        now = self._clock()
        if status == HEALTHY:
            svc.healthy_since = now
        elif svc.status == HEALTHY:
            self._apply_stable_reset(svc, now)
            svc.healthy_since = None
        svc.status = status
        svc.changed.set()

    def _apply_stable_reset(self, svc: _Service, now: float) -> None:
        """Forget attempts once the service has stayed healthy for a rule's stable period."""
        if svc.status != HEALTHY or svc.healthy_since is None:
            return
        healthy_for = now - svc.healthy_since
        for slot in svc.slots:
            if slot.tries and healthy_for >= slot.rule.stable_period:
                logger.info(
                    "%s stable for %.1fs: %s counters reset",
                    svc.name,
                    healthy_for,
                    slot.rule.action_type.value,
                    extra={"service": svc.name},
                )
                slot.tries, slot.retry_at, slot.next_delay = 0, None, 0.0

    def _start(self, svc: _Service) -> None:
        """Start the service's episode unless one is in flight, it is latched, or we closed."""
        if self._closed or svc.escalated or svc.busy() or not svc.slots:
            return
        svc.task = asyncio.get_running_loop().create_task(
            self._run(svc), name=f"xnai-recovery:{svc.name}"
        )

    async def _run(self, svc: _Service) -> None:
        try:
            # Loop only if the service failed again while the last episode was ending.
            while svc.status == UNHEALTHY and not svc.escalated and not self._closed:
                await self._episode(svc)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("recovery of %s failed unexpectedly", svc.name)
        finally:
            svc.phase = RecoveryPhase.ESCALATED if svc.escalated else RecoveryPhase.IDLE

    async def _episode(self, svc: _Service) -> None:
        svc.episodes += 1
        started = self._clock()
        acted: RecoveryRule | None = None
        deferred = False
        last_failure: str | None = None
        try:
            while svc.status == UNHEALTHY:
                slot = next((s for s in svc.slots if not s.exhausted), None)
                if slot is None or slot.rule.action_type is MANUAL:
                    if slot is not None and not await self._wait_ready(svc, slot, started):
                        return
                    await self._escalate(svc, slot, last_failure)
                    return
                if not await self._wait_ready(svc, slot, started):
                    return
                if not deferred and svc.cooldown_until > started:
                    deferred = True
                acted = slot.rule
                attempt = await self._attempt(svc, slot)
                if attempt.outcome is AttemptOutcome.SUCCEEDED or (
                    attempt.outcome is AttemptOutcome.DRY_RUN and attempt.recovery_time is not None
                ):
                    return
                last_failure = f"{attempt.action.value} attempt {attempt.attempt}: {attempt.reason}"
        finally:
            if deferred:
                svc.deferred_by_cooldown += 1
            if svc.status == HEALTHY:
                svc.recovered_episodes += 1
                svc.time_to_recovery_sum += self._clock() - started
            if acted is not None:
                svc.cooldown_until = self._clock() + acted.cooldown

    async def _wait_ready(self, svc: _Service, slot: _Slot, started: float) -> bool:
        """Wait out cooldown, backoff and the rule's failure threshold; False if no longer sick."""
        rule = slot.rule
        announced = False
        while True:
            if svc.status != UNHEALTHY or self._closed:
                return False
            now = self._clock()
            ready_at = max(svc.cooldown_until, slot.retry_at if slot.retry_at is not None else 0.0)
            threshold_met = self._failures(svc.name, rule.failure_threshold)
            if now >= ready_at and threshold_met:
                return True
            svc.phase = RecoveryPhase.WAITING
            if not announced and svc.cooldown_until > now:
                announced = True
                logger.info(
                    "%s: next action deferred %.1fs by cooldown",
                    svc.name,
                    svc.cooldown_until - now,
                    extra={"service": svc.name},
                )
            step = max(0.0, ready_at - now)
            if threshold_met is False and now >= ready_at:
                step = self.verify_interval
            svc.changed.clear()
            await self._wait_changed(svc, step)

    def _failures(self, name: str, threshold: int) -> bool:
        """Whether the monitor has counted ``threshold`` failed checks in a row.

        Without a monitor (or one that cannot say), an unhealthy report is taken
        to have met every threshold.
        """
        monitor = self._monitor
        if monitor is None or threshold <= 1:
            return True
        get_service_health = getattr(monitor, "get_service_health", None)
        if get_service_health is None:
            return True
        try:
            failures = get_service_health(name).consecutive_failures
            return int(failures) >= threshold
        except (AttributeError, KeyError, TypeError, ValueError):
            return True

    async def _attempt(self, svc: _Service, slot: _Slot) -> RecoveryAttempt:
        rule = slot.rule
        slot.tries += 1
        svc.phase = RecoveryPhase.ACTING
        wall = self._wall()
        t0 = self._clock()
        if self.dry_run:
            outcome = ActionOutcome(ok=True, detail=f"dry run: would run {rule.describe()}")
            logger.warning(
                "dry run: %s would run %s (%s attempt %d)",
                svc.name,
                rule.describe(),
                rule.action_type.value,
                slot.tries,
                extra={"service": svc.name},
            )
        else:
            outcome = await perform(rule, svc.name)
        t1 = self._clock()
        healthy_at: float | None = None
        if outcome.ok:
            svc.phase = RecoveryPhase.VERIFYING
            healthy_at = await self._verify(svc, rule.grace_period)
        end = self._clock()
        slot.next_delay = backoff_delay(rule, slot.tries, self._random())
        slot.retry_at = end + slot.next_delay
        if not outcome.retryable:
            slot.tries = max(slot.tries, rule.max_attempts)  # repeating it cannot help
        if self.dry_run:
            result = AttemptOutcome.DRY_RUN
            reason = None if healthy_at is not None else "dry run"
        elif healthy_at is not None:
            result, reason = AttemptOutcome.SUCCEEDED, None
        else:
            result = AttemptOutcome.FAILED
            reason = outcome.error or f"not healthy within {rule.grace_period:g}s grace period"
        attempt = RecoveryAttempt(
            service=svc.name,
            action=rule.action_type,
            attempt=slot.tries if outcome.retryable else min(slot.tries, rule.max_attempts),
            timestamp=wall,
            duration=t1 - t0,
            outcome=result,
            detail=outcome.detail,
            reason=reason,
            recovery_time=None if healthy_at is None else healthy_at - t0,
            exit_code=outcome.exit_code,
            output_tail=outcome.output_tail,
            timed_out=outcome.timed_out,
            keys_deleted=outcome.keys_deleted,
        )
        self._record(svc, attempt)
        if result is AttemptOutcome.SUCCEEDED:
            logger.info(
                "%s recovered by %s in %.2fs",
                svc.name,
                rule.action_type.value,
                attempt.recovery_time,
                extra={"service": svc.name},
            )
        elif result is AttemptOutcome.FAILED:
            logger.warning(
                "%s: %s attempt %d/%d failed: %s; %s",
                svc.name,
                rule.action_type.value,
                slot.tries,
                rule.max_attempts,
                reason,
                "no retry" if slot.exhausted else f"next retry in {slot.next_delay:.2f}s",
                extra={"service": svc.name},
            )
        return attempt

    async def _verify(self, svc: _Service, grace: float) -> float | None:
        """The clock time the service is seen healthy within ``grace``, or None."""
        deadline = self._clock() + grace
        step = min(self.verify_interval, grace / 4)
        while True:
            if svc.status == HEALTHY:
                return self._clock()
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            svc.changed.clear()
            await self._wait_changed(svc, min(step, remaining))
            if svc.status != HEALTHY and self._monitor is not None:
                await self._probe(svc)

    async def _probe(self, svc: _Service) -> None:
        """Ask the monitor for a fresh check now, rather than at its next interval."""
        monitor = self._monitor
        if monitor is None:
            return
        try:
            await monitor.trigger_manual_check(svc.name)
            status = monitor.get_status(svc.name)
        except Exception as exc:  # the monitor's trouble must not end recovery
            logger.debug("manual check of %s failed: %r", svc.name, exc)
            return
        self._note_status(svc, _status_text(status))

    async def _wait_changed(self, svc: _Service, timeout: float) -> None:
        """Sleep up to ``timeout`` on the injected clock, waking early on a status change."""
        if svc.changed.is_set():
            return
        waiter = asyncio.ensure_future(svc.changed.wait())
        sleeper = asyncio.ensure_future(self._sleep(timeout))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    # -- escalation --------------------------------------------------------------------

    async def _escalate(self, svc: _Service, slot: _Slot | None, last_failure: str | None) -> None:
        tried = [s for s in svc.slots if s.tries and s.rule.action_type is not MANUAL]
        summary = (
            "; ".join(f"{s.rule.action_type.value} tried {s.tries}x" for s in tried)
            or "no automatic action configured"
        )
        reason = f"{summary}; last: {last_failure}" if last_failure else summary
        svc.escalated_at = self._wall()
        svc.escalation_reason = reason
        svc.phase = RecoveryPhase.ESCALATED
        attempt = RecoveryAttempt(
            service=svc.name,
            action=MANUAL,
            attempt=1,
            timestamp=svc.escalated_at,
            duration=0.0,
            outcome=AttemptOutcome.DRY_RUN if self.dry_run else AttemptOutcome.ESCALATED,
            detail="dry run: would raise a critical alert" if self.dry_run else "critical alert",
            reason=reason,
        )
        self._record(svc, attempt)
        if self.dry_run:
            logger.error(
                "dry run: %s would escalate to manual intervention: %s",
                svc.name,
                reason,
                extra={"service": svc.name},
            )
            return
        svc.escalations += 1
        logger.error(
            "%s escalated to manual intervention: %s; latched until reset(%r)",
            svc.name,
            reason,
            svc.name,
            extra={"service": svc.name},
        )
        await self._alert(svc, resolved=False, reason=reason)

    def _record(self, svc: _Service, attempt: RecoveryAttempt) -> None:
        svc.last_attempt = attempt
        self._book.record(attempt)
        if attempt.outcome is AttemptOutcome.DRY_RUN:
            svc.dry_run_actions += 1
        elif attempt.outcome is not AttemptOutcome.ESCALATED:
            svc.attempts += 1
            if attempt.outcome is AttemptOutcome.SUCCEEDED:
                svc.successes += 1

    async def _alert(self, svc: _Service, *, resolved: bool, reason: str) -> None:
        if resolved:
            message = f"{svc.name}: manual intervention latch reset; automated recovery resumes"
        else:
            message = (
                f"{svc.name}: automated recovery gave up ({reason}); manual intervention "
                f"needed, then reset({svc.name!r})"
            )
        alert = Alert(
            key=f"{svc.name}:manual_intervention",
            service=svc.name,
            kind="manual_intervention",
            severity="info" if resolved else "critical",
            message=message,
            resolved=resolved,
            timestamp=self._wall(),
            details={
                "reason": reason,
                "last_attempt": svc.last_attempt.as_dict() if svc.last_attempt else None,
            },
        )
        if self._monitor is not None:
            try:
                await self._monitor.emit_alert(alert)
            except Exception:
                logger.exception("monitor failed to emit the alert for %s", svc.name)
        await deliver(alert, list(self._handlers), self.alert_timeout)
