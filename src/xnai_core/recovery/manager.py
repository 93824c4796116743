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
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Iterable

from ..health.alerts import AlertHandler, deliver
from .actions import ActionOutcome, perform, redact
from .coordination import RecoveryCoordinator
from .escalation import escalation_alert, escalation_reason
from .rule import RecoveryRule, backoff_delay
from .seam import SupportsMonitor, check_stable_period, failures_reached
from .state import (
    HEALTHY,
    MANUAL,
    UNHEALTHY,
    RecoveryPhase,
    RuleSlot,
    ServiceState,
    status_text,
)
from .stats import AttemptOutcome, RecoveryAttempt, StatsBook

logger = logging.getLogger("xnai_core.recovery")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


def _seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        rule = "> 0 seconds or None" if allow_none else "> 0 seconds"
        raise ValueError(f"'{name}' must be {rule}: {value!r}")
    return float(value)


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
        if not isinstance(history_size, int) or isinstance(history_size, bool):
            raise TypeError(f"'history_size' must be an int: {history_size!r}")
        if history_size < 1:
            raise ValueError(f"'history_size' must be >= 1: {history_size!r}")
        self.dry_run = dry_run
        self.verify_interval = float(_seconds("verify_interval", verify_interval) or 1.0)
        self.alert_timeout = _seconds("alert_timeout", alert_timeout, allow_none=True)
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._wall = wall_clock
        self._services: dict[str, ServiceState] = {}
        self._book = StatsBook(history_size)
        self._handlers: list[AlertHandler] = []
        self._monitor: SupportsMonitor | None = None
        self._coordinator = coordinator
        self._closed = False
        for rule in rules:
            self.add_rule(rule)

    # -- configuration -----------------------------------------------------------

    def add_rule(self, rule: RecoveryRule) -> None:
        """Add a rule; a service's rules run cheapest action first, then in the order added."""
        if not isinstance(rule, RecoveryRule):
            raise TypeError(f"'rule' must be a RecoveryRule: {rule!r}")
        if self._monitor is not None:
            check_stable_period(rule, self._monitor)
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

        ValueError if a rule's ``stable_period`` is too short for this monitor ever
        to see a crash loop (see :func:`~xnai_core.recovery.seam.check_stable_period`).
        """
        if self._monitor is not None and self._monitor is not monitor:
            raise ValueError(f"this RecoveryManager is already attached to {self._monitor!r}")
        for svc in self._services.values():
            for slot in svc.slots:
                check_stable_period(slot.rule, monitor)
        self._monitor = monitor

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
        svc.note_status(status_text(new_status), self._clock())
        if svc.status != UNHEALTHY or not svc.slots:
            return
        error = getattr(result, "error", None)
        if (
            svc.escalated
            and self._coordinator is not None
            and not self.dry_run
            and await self._coordinator.latched(service_name) is False
        ):
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
        if self._coordinator is not None and not self.dry_run:
            await self._coordinator.unlatch(service_name)
        if was_escalated and not self.dry_run:
            await self._alert(svc, resolved=True, reason=reason)
        if svc.status == UNHEALTHY:
            self._start(svc)
        return was_escalated

    async def wait_idle(self) -> None:
        """Wait until no service has recovery in flight."""
        while tasks := [svc.task for svc in self._services.values() if svc.busy()]:
            await asyncio.wait([task for task in tasks if task is not None])

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
            if svc.slots:
                svc.apply_stable_reset(now)
                services[name] = svc.detail(now)
        stats["services"] = services
        return stats

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
        if self._closed or svc.escalated or svc.busy() or not svc.slots:
            return
        svc.task = asyncio.get_running_loop().create_task(
            self._run(svc), name=f"xnai-recovery:{svc.name}"
        )

    async def _run(self, svc: ServiceState) -> None:
        try:
            # Loop only if the service failed again while the last episode was ending.
            while svc.status == UNHEALTHY and not svc.escalated and not self._closed:
                await self._episode(svc)
        except Exception:
            logger.exception("recovery of %s failed unexpectedly", svc.name)
        finally:
            svc.phase = RecoveryPhase.ESCALATED if svc.escalated else RecoveryPhase.IDLE

    async def _episode(self, svc: ServiceState) -> None:
        """One outage: climb the rules until healthy, or escalate."""
        svc.episodes += 1
        svc.waited_for_peer = False
        started = self._clock()
        acted: RecoveryRule | None = None
        last_failure: str | None = None
        deferred = svc.cooldown_until > started
        try:
            while svc.status == UNHEALTHY:
                slot = svc.next_slot()
                if slot is not None and not await self._wait_ready(svc, slot):
                    return
                if slot is None or slot.rule.action_type is MANUAL:
                    await self._escalate(svc, last_failure)
                    return
                acted = slot.rule
                attempt = await self._attempt(svc, slot)
                if attempt.recovery_time is not None:
                    return
                last_failure = f"{attempt.action.value} attempt {attempt.attempt}: {attempt.reason}"
        finally:
            now = self._clock()
            if deferred and acted is not None:
                svc.deferred_by_cooldown += 1
            if svc.status == HEALTHY:
                svc.recovered_episodes += 1
                svc.time_to_recovery_sum += now - started
            if acted is not None:
                svc.cooldown_until = now + acted.cooldown
            await self._hand_back(svc, acted)

    async def _wait_ready(self, svc: ServiceState, slot: RuleSlot) -> bool:
        """Wait out cooldown, backoff and the rule's failure threshold; False if not sick now."""
        announced = False
        while True:
            if svc.status != UNHEALTHY or self._closed:
                return False
            now = self._clock()
            # A page is never held back by cooldown: only the rule's threshold gates it.
            manual = slot.rule.action_type is MANUAL
            backoff_end = -math.inf if slot.retry_at is None else slot.retry_at
            ready_at = -math.inf if manual else max(svc.cooldown_until, backoff_end)
            threshold_met = failures_reached(self._monitor, svc.name, slot.rule.failure_threshold)
            if now >= ready_at and threshold_met:
                turn = await self._take_turn(svc, slot.rule)
                if turn is not None:
                    return turn
                ready_at = now + self.verify_interval  # a peer is at it: look again later
            svc.phase = RecoveryPhase.WAITING
            if not announced and svc.cooldown_until > now:
                announced = True
                logger.info(
                    "%s: next action deferred %.1fs by cooldown",
                    svc.name,
                    svc.cooldown_until - now,
                    extra={"service": svc.name},
                )
            # Time we know how to wait; a failure streak we can only poll for.
            step = ready_at - now if now < ready_at else self.verify_interval
            await self._renew(svc, step)
            svc.changed.clear()
            await self._wait_changed(svc, step)

    # -- taking turns with other processes (only with a coordinator) -----------------

    async def _take_turn(self, svc: ServiceState, rule: RecoveryRule) -> bool | None:
        """True: act now. False: a peer escalated it (latched here too). None: a peer acts."""
        coordinator = self._coordinator
        if coordinator is None or self.dry_run:
            return True
        if await coordinator.latched(svc.name):
            svc.escalated_at = self._wall()
            svc.escalation_reason = "escalated by another process"
            svc.phase = RecoveryPhase.ESCALATED
            logger.info(
                "%s was escalated by another process; latched here too",
                svc.name,
                extra={"service": svc.name},
            )
            return False
        held = await coordinator.acquire(
            svc.name, self._lease_ttl(rule.timeout + rule.grace_period)
        )
        if held is False:
            if not svc.waited_for_peer:  # count episodes, not polls
                svc.waited_for_peer = True
                svc.deferred_to_peer += 1
            svc.holds_lease = False
            return None
        # None (Redis away) acts alone: better two restarts than none. The coordinator warned.
        svc.holds_lease = held is True
        return True

    def _lease_ttl(self, seconds: float) -> float:
        # Outlive the wait it covers by a margin, so a slow check cannot lose the lease.
        return seconds + max(5.0, 2 * self.verify_interval)

    async def _renew(self, svc: ServiceState, seconds: float) -> None:
        if svc.holds_lease and self._coordinator is not None:
            await self._coordinator.acquire(svc.name, self._lease_ttl(seconds))

    async def _hand_back(self, svc: ServiceState, acted: RecoveryRule | None) -> None:
        """End of episode: after a recovery keep the lease through the cooldown, so a
        peer whose monitor has not yet seen the service healthy does not act on it."""
        if not svc.holds_lease or self._coordinator is None:
            return
        svc.holds_lease = False
        if svc.status == HEALTHY and acted is not None:
            hold = max(acted.cooldown, acted.grace_period)
            await self._coordinator.acquire(svc.name, hold)
        else:
            await self._coordinator.release(svc.name)

    async def _attempt(self, svc: ServiceState, slot: RuleSlot) -> RecoveryAttempt:
        """Run one action, then watch for health through the grace period; record it."""
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
            await self._renew(svc, rule.timeout + rule.grace_period)
            outcome = await perform(rule, svc.name)
        t1 = self._clock()
        healthy_at: float | None = None
        if outcome.ok:
            svc.phase = RecoveryPhase.VERIFYING
            healthy_at = await self._verify(svc, rule.grace_period)
        tries = slot.tries
        slot.next_delay = backoff_delay(rule, tries, self._random())
        slot.retry_at = self._clock() + slot.next_delay
        if not outcome.retryable:
            slot.tries = max(slot.tries, rule.max_attempts)  # repeating it cannot help
        if self.dry_run:
            result, reason = AttemptOutcome.DRY_RUN, None
        elif healthy_at is not None:
            result, reason = AttemptOutcome.SUCCEEDED, None
        else:
            result = AttemptOutcome.FAILED
            reason = outcome.error or f"not healthy within {rule.grace_period:g}s grace period"
        attempt = RecoveryAttempt(
            service=svc.name,
            action=rule.action_type,
            attempt=tries,
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
                tries,
                rule.max_attempts,
                reason,
                "no retry" if slot.exhausted else f"next retry in {slot.next_delay:.2f}s",
                extra={"service": svc.name},
            )
        return attempt

    async def _verify(self, svc: ServiceState, grace: float) -> float | None:
        """The clock time the service is seen healthy within ``grace``, or None."""
        deadline = self._clock() + grace
        step = min(self.verify_interval, grace / 4)
        while svc.status != HEALTHY:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            await self._renew(svc, min(step, remaining))
            svc.changed.clear()
            await self._wait_changed(svc, min(step, remaining))
            if svc.status != HEALTHY:
                await self._probe(svc)
        return self._clock()

    async def _probe(self, svc: ServiceState) -> None:
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
        svc.note_status(status_text(status), self._clock())

    async def _wait_changed(self, svc: ServiceState, timeout: float) -> None:
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

    async def _escalate(self, svc: ServiceState, last_failure: str | None) -> None:
        reason = escalation_reason(svc, last_failure)
        svc.escalated_at = self._wall()
        svc.escalation_reason = reason
        svc.phase = RecoveryPhase.ESCALATED
        self._record(
            svc,
            RecoveryAttempt(
                service=svc.name,
                action=MANUAL,
                attempt=1,
                timestamp=svc.escalated_at,
                duration=0.0,
                outcome=AttemptOutcome.DRY_RUN if self.dry_run else AttemptOutcome.ESCALATED,
                detail=("dry run: would raise " if self.dry_run else "") + "a critical alert",
                reason=reason,
            ),
        )
        if self.dry_run:
            logger.error(
                "dry run: %s would escalate to manual intervention: %s",
                svc.name,
                reason,
                extra={"service": svc.name},
            )
            return
        if self._coordinator is not None:
            await self._coordinator.latch(svc.name, reason)
        logger.error(
            "%s escalated to manual intervention: %s; latched until reset(%r)",
            svc.name,
            reason,
            svc.name,
            extra={"service": svc.name},
        )
        await self._alert(svc, resolved=False, reason=reason)

    def _record(self, svc: ServiceState, attempt: RecoveryAttempt) -> None:
        svc.record(attempt)
        self._book.record(attempt)

    async def _alert(self, svc: ServiceState, *, resolved: bool, reason: str) -> None:
        """Through the monitor's handlers when attached, and always to the manager's own."""
        alert = escalation_alert(svc, resolved=resolved, reason=reason, now=self._wall())
        if self._monitor is not None:
            try:
                await self._monitor.emit_alert(alert)
            except Exception:
                logger.exception("monitor failed to emit the alert for %s", svc.name)
        await deliver(alert, list(self._handlers), self.alert_timeout)
