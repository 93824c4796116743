"""EpisodeRunner: what the manager does during one outage of one service.

An episode starts when a service turns unhealthy. It waits out cooldown, backoff
and the rule's failure threshold (and, with a coordinator, its turn among
processes), runs the cheapest rule with attempts left, watches for health through
the grace period, and repeats, until the service is healthy or no rule is left:
then it escalates and latches.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from .._redact import redact
from ..health.alerts import AlertHandler, deliver
from .actions import ActionOutcome, perform
from .coordination import RecoveryCoordinator, Turn
from .escalation import escalation_alert, escalation_reason
from .rule import RecoveryRule, backoff_delay
from .seam import SupportsMonitor, failures_reached
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


class EpisodeRunner:
    """Runs episodes for the manager, with its clock, sleep, jitter and coordinator.

    ``monitor`` is set when the manager is attached; ``closed`` stops new actions.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        sleep: Sleep,
        random: Callable[[], float],
        wall_clock: Clock,
        book: StatsBook,
        handlers: list[AlertHandler],
        dry_run: bool,
        verify_interval: float,
        alert_timeout: float | None,
        coordinator: RecoveryCoordinator | None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._wall = wall_clock
        self._book = book
        self._handlers = handlers
        self._coordinator = coordinator
        self.dry_run = dry_run
        self.verify_interval = verify_interval
        self.alert_timeout = alert_timeout
        self.monitor: SupportsMonitor | None = None
        self.closed = False

    async def run(self, svc: ServiceState) -> None:
        """The service's recovery task: episodes while it stays unhealthy and unlatched."""
        try:
            # Loop only if the service failed again while the last episode was ending.
            while svc.status == UNHEALTHY and not svc.escalated and not self.closed:
                await self._episode(svc)
        except Exception as exc:
            # A bug of ours must not end recovery silently (supervisord's FATAL): page.
            logger.exception("recovery of %s failed unexpectedly", svc.name)
            if not svc.escalated and not self.closed:
                try:
                    await self._escalate(
                        svc, redact(f"recovery failed unexpectedly: {type(exc).__name__}: {exc}")
                    )
                except Exception:
                    logger.exception("escalation of %s failed", svc.name)
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
            if svc.status != UNHEALTHY or self.closed:
                return False
            now = self._clock()
            # A page is never held back by cooldown: only the rule's threshold gates it.
            manual = slot.rule.action_type is MANUAL
            backoff_end = -math.inf if slot.retry_at is None else slot.retry_at
            ready_at = -math.inf if manual else max(svc.cooldown_until, backoff_end)
            threshold_met = failures_reached(self.monitor, svc.name, slot.rule.failure_threshold)
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
        # One step: a peer that latches and then releases between a separate latch check
        # and lease grab would hand us the lease for a service it already escalated.
        turn = await coordinator.take_turn(
            svc.name, self._lease_ttl(rule.timeout + rule.grace_period)
        )
        if turn is Turn.LATCHED:
            # Which reset would lift it: read with the latch, so a reset in between shows.
            view = await coordinator.latch_state(svc.name)
            if view is not None and not view.latched:
                return None  # reset since our look: look again
            svc.latch_shared = view is not None
            svc.latch_reset_seen = view.reset_id if view is not None else None
            svc.escalated_at = self._wall()
            svc.escalation_reason = "escalated by another process"
            svc.phase = RecoveryPhase.ESCALATED
            logger.info(
                "%s was escalated by another process; latched here too",
                svc.name,
                extra={"service": svc.name},
            )
            return False
        if turn is Turn.WAIT:
            if not svc.waited_for_peer:  # count episodes, not polls
                svc.waited_for_peer = True
                svc.deferred_to_peer += 1
            svc.holds_lease = False
            return None
        # None (Redis away) acts alone: better two restarts than none. The coordinator warned.
        svc.holds_lease = turn is Turn.ACT
        return True

    def _lease_ttl(self, seconds: float) -> float:
        # Outlive the wait it covers by a margin, so a slow check cannot lose the lease.
        return seconds + max(5.0, 2 * self.verify_interval)

    async def _renew(self, svc: ServiceState, seconds: float) -> None:
        if not svc.holds_lease or self._coordinator is None:
            return
        if await self._coordinator.acquire(svc.name, self._lease_ttl(seconds)) is False:
            # It expired and a peer took it: finish what is running, then take turns.
            svc.holds_lease = False
            logger.warning(
                "%s: recovery lease lost to another process",
                svc.name,
                extra={"service": svc.name},
            )

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
        monitor = self.monitor
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
            await self.share_latch(svc)
        logger.error(
            "%s escalated to manual intervention: %s; latched until reset(%r)",
            svc.name,
            reason,
            svc.name,
            extra={"service": svc.name},
        )
        await self.alert(svc, resolved=False, reason=reason)

    # -- the shared latch (only with a coordinator) -------------------------------------

    async def share_latch(self, svc: ServiceState) -> None:
        """Write the latch for every process; while Redis is away, keep trying to."""
        if await self._write_latch(svc):
            return
        if svc.latch_task is None or svc.latch_task.done():
            svc.latch_task = asyncio.get_running_loop().create_task(
                self._keep_writing_latch(svc), name=f"xnai-recovery-latch:{svc.name}"
            )

    async def _write_latch(self, svc: ServiceState) -> bool:
        coordinator = self._coordinator
        if coordinator is None:
            return True
        view = await coordinator.latch(svc.name, svc.escalation_reason or "escalated")
        if view is None:
            svc.latch_shared = False
            return False
        svc.latch_shared, svc.latch_reset_seen = True, view.reset_id
        return True

    async def _keep_writing_latch(self, svc: ServiceState) -> None:
        """A latch whose write failed is written once Redis answers again (until reset)."""
        while svc.escalated and not svc.latch_shared and not self.closed:
            await self._sleep(self.verify_interval)
            if not svc.escalated or svc.latch_shared or self.closed:
                return
            if await self._write_latch(svc):
                logger.warning(
                    "%s: manual-intervention latch shared through Redis now that it answers",
                    svc.name,
                    extra={"service": svc.name},
                )

    async def reset_elsewhere(self, svc: ServiceState) -> bool:
        """For a latched service: whether ``reset()`` ran on another process since the latch
        was written. Only a new reset id in Redis says so; a latch that is merely gone
        (Redis restarted empty, failed over, lost the key) is written again instead."""
        coordinator = self._coordinator
        if coordinator is None or self.dry_run:
            return False
        view = await coordinator.latch_state(svc.name)
        if view is None:
            return False  # cannot tell: the latch holds
        if view.latched:
            svc.latch_shared, svc.latch_reset_seen = True, view.reset_id
            return False
        if svc.latch_shared and view.reset_id is not None and view.reset_id != svc.latch_reset_seen:
            return True
        logger.warning(
            "%s: the shared manual-intervention latch is missing from Redis and no reset() "
            "was recorded since it was %s; latch kept and written again",
            svc.name,
            "written" if svc.latch_shared else "set here (its write had failed)",
            extra={"service": svc.name},
        )
        await self.share_latch(svc)
        return False

    def _record(self, svc: ServiceState, attempt: RecoveryAttempt) -> None:
        svc.record(attempt)
        self._book.record(attempt)

    async def alert(self, svc: ServiceState, *, resolved: bool, reason: str) -> None:
        """Through the monitor's handlers when attached, and always to the manager's own."""
        alert = escalation_alert(svc, resolved=resolved, reason=reason, now=self._wall())
        if self.monitor is not None:
            try:
                await self.monitor.emit_alert(alert)
            except Exception:
                logger.exception("monitor failed to emit the alert for %s", svc.name)
        await deliver(alert, list(self._handlers), self.alert_timeout)
