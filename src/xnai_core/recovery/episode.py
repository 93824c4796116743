"""EpisodeRunner: carries out, for one outage of one service, what ``decide`` says.

An episode starts when a service turns unhealthy. The runner asks
:func:`~xnai_core.recovery.decide.decide` for the next step and does it: waits out
cooldown, backoff, the rule's failure threshold or a peer (with a coordinator);
runs the cheapest rule with attempts left (the attempt counts at once, pending);
watches for health through the grace period; judges the attempt; escalates and
latches when no rule is left. It loops until ``decide`` says there is nothing to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable

from .._dispatch import Dispatcher
from .._redact import redact
from ..health.alerts import AlertHandler
from . import local_settle
from .actions import ActionContext, ActionOutcome, longest_run, perform
from .coordination import RecoveryCoordinator, Turn
from .decide import Act, Conclude, Escalate, Idle, Verify, View, Wait, decide
from .escalation import escalation_alert, escalation_reason
from .rule import RecoveryRule, backoff_delay
from .seam import (
    SupportsMonitor,
    consecutive_failures,
    detection_time,
    grace_period,
    monitor_running,
)
from .state import (
    HEALTHY,
    MANUAL,
    UNHEALTHY,
    RecoveryPhase,
    RuleSlot,
    ServiceState,
    Verifying,
    as_status,
)
from .stats import AttemptOutcome, RecoveryAttempt, StatsBook

logger = logging.getLogger("xnai_core.recovery")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class EpisodeRunner:
    """Runs episodes for the manager, with its clock, sleep, jitter and coordinator.

    ``monitor`` is set when the manager is attached; ``closed`` stops new actions.
    ``context`` holds what actions share: the dispatcher that runs sync recovery
    functions off the loop, and leftover daemons' output pipes. ``alerts`` runs the
    manager's alert handlers, on threads of their own: hung recovery functions can never
    hold back a page.
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
        context: ActionContext,
        alerts: Dispatcher,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._wall = wall_clock
        self._book = book
        self._handlers = handlers
        self._coordinator = coordinator
        # This manager's own name in Redis: a manager rebuilt on the same coordinator
        # (a reload) is a peer, and honours this one's lease and settle record.
        self.owner = None if coordinator is None else coordinator.new_owner()
        self.context = context
        self.alerts = alerts
        self._alerting = asyncio.Lock()
        self.dry_run = dry_run
        self.verify_interval = verify_interval
        self.alert_timeout = alert_timeout
        self.monitor: SupportsMonitor | None = None
        self.closed = False

    def grace(self, rule: RecoveryRule, service_name: str) -> float:
        """The rule's grace period: its own, or derived from the attached monitor."""
        return grace_period(rule, self.monitor, service_name, self.verify_interval)

    def lag(self, service_name: str) -> float:
        """How far this process's view of a service may trail reality: twice the time its
        monitor needs to see it healthy (probing), plus one poll."""
        detection = detection_time(self.monitor, service_name, self.verify_interval)
        return 2 * (detection or 0.0) + self.verify_interval

    def view(self, svc: ServiceState) -> View:
        """The snapshot ``decide`` reads."""
        return View(
            status=svc.status,
            slots=svc.slot_views(),
            poll=self.verify_interval,
            escalated=svc.escalated,
            closed=self.closed,
            monitor_running=monitor_running(self.monitor),
            consecutive_failures=consecutive_failures(self.monitor, svc.name),
            cooldown_until=svc.cooldown_until,
            verifying_until=None if svc.verifying is None else svc.verifying.deadline,
            peer_until=svc.peer_until,
            peer_settling=svc.peer_settling,
        )

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
        """One outage: do what ``decide`` says until it says there is nothing to do."""
        svc.episodes += 1
        svc.waited_for_peer = False
        svc.peer_until, svc.peer_settling = -math.inf, False
        started = self._clock()
        acted: RecoveryRule | None = None
        last_failure: str | None = None
        deferred = svc.cooldown_until > started
        announced: set[str] = set()
        try:
            while True:
                step = decide(self.view(svc), self._clock())
                if isinstance(step, Idle):
                    return
                if isinstance(step, Wait):
                    svc.phase = RecoveryPhase.WAITING
                    self._announce(svc, step.reason, announced)
                    if step.reason == "monitor stopped":
                        # Blind here: let a peer whose monitor runs take the service.
                        await self._hand_back(svc)
                    await self._wait(svc, step.until, probe=step.probe)
                elif isinstance(step, Verify):
                    svc.phase = RecoveryPhase.VERIFYING
                    if not step.probe and svc.verifying is not None:
                        svc.verifying.unseen = True
                    await self._wait(svc, step.until, probe=step.probe, verifying=True)
                elif isinstance(step, Act):
                    slot = svc.slots[step.slot]
                    turn = await self._take_turn(svc, slot.rule)
                    if turn is False:
                        return
                    if turn and svc.status == UNHEALTHY:  # it may have come back meanwhile
                        acted = slot.rule
                        attempt = await self._act(svc, slot)
                        if attempt is not None:
                            last_failure = _failure_text(attempt)
                elif isinstance(step, Conclude):
                    attempt = await self._conclude(svc, succeeded=step.succeeded)
                    if not step.succeeded:
                        last_failure = _failure_text(attempt)
                elif isinstance(step, Escalate):
                    if step.take_turn:
                        manual = next(s for s in svc.slots if s.rule.action_type is MANUAL)
                        turn = await self._take_turn(svc, manual.rule)
                        if turn is False:
                            return
                        if turn is None:
                            continue
                    await self._escalate(svc, last_failure)
                    return
        finally:
            if svc.verifying is not None:  # cancelled mid-grace (closing): judge it now
                await self._conclude(svc, succeeded=svc.status == HEALTHY, closing=True)
            now = self._clock()
            if deferred and acted is not None:
                svc.deferred_by_cooldown += 1
            if svc.status == HEALTHY:
                svc.recovered_episodes += 1
                svc.time_to_recovery_sum += now - started
            if acted is not None:
                svc.cooldown_until = now + acted.cooldown
            await self._hand_back(svc)

    def _announce(self, svc: ServiceState, reason: str, announced: set[str]) -> None:
        """Log a reason for waiting once per episode."""
        if reason in announced or reason not in ("cooldown", "monitor stopped"):
            return
        announced.add(reason)
        if reason == "cooldown":
            logger.info(
                "%s: next action deferred %.1fs by cooldown",
                svc.name,
                svc.cooldown_until - self._clock(),
                extra={"service": svc.name},
            )
        else:
            logger.info(
                "%s: recovery paused while the health monitor is stopped",
                svc.name,
                extra={"service": svc.name},
            )

    async def _wait(
        self, svc: ServiceState, until: float, *, probe: bool, verifying: bool = False
    ) -> None:
        """Wait until ``until`` (in steps of a poll when looking), waking on a status change."""
        # Cleared before anything awaits, so a change that comes meanwhile still wakes us.
        svc.changed.clear()
        now = self._clock()
        step = max(0.0, until - now)
        if probe or verifying:
            poll = self.verify_interval
            if verifying and svc.verifying is not None:
                poll = min(poll, max(svc.verifying.grace / 4, 1e-3))
            step = min(step, poll)
        await self._renew(svc, step)
        if probe and not verifying:
            await self._probe(svc)  # a peer may have fixed it: look now, not at our interval
        await self._wait_changed(svc, step)
        if verifying and probe and svc.status != HEALTHY and self._clock() < until:
            await self._probe(svc)

    # -- taking turns with other processes (only with a coordinator) -----------------

    async def _take_turn(self, svc: ServiceState, rule: RecoveryRule) -> bool | None:
        """True: act now. False: a peer escalated it (latched here too). None: not now."""
        coordinator = self._coordinator
        if self.dry_run:
            return True
        # A manager this one replaced (a reload) acted or saw a recovery moments ago: as
        # a peer's settle record in Redis would, that holds this one off (no Redis needed).
        left = local_settle.settling(self.monitor, svc.name, self, self._clock)
        if left > 0:
            svc.peer_settled_until = max(svc.peer_settled_until, self._clock() + left)
        if coordinator is None:
            if self._clock() < svc.peer_settled_until:
                self._defer_to_peer(svc, Turn.SETTLING)
                return None
            return True
        # One step: a peer that latches and then releases between a separate latch check
        # and lease grab would hand us the lease for a service it already escalated.
        if self._clock() < svc.peer_settled_until:
            turn: Turn | None = Turn.SETTLING  # seen in Redis before; it may have lost it since
        else:
            # Ours the moment Redis answers ACT: cancelled before we read the answer, the
            # episode's end must still give it back (RELEASE deletes only our own lease).
            svc.holds_lease = True
            found = await coordinator.take_turn_settling(
                svc.name,
                self._lease_ttl(longest_run(rule) + self.grace(rule, svc.name)),
                lag=self.lag(svc.name),
                owner=self.owner,
            )
            turn = None if found is None else found[0]
            if found is not None and found[0] is Turn.SETTLING:
                svc.peer_settled_until = self._clock() + found[1]
            elif found is not None and found[0] is Turn.WAIT:
                svc.peer_lease_until = self._clock() + found[1]
            elif found is None and self._clock() < svc.peer_lease_until:
                # Redis is away (a failover, a restart) while a peer we saw holds the
                # lease: it is still at work, so wait for its lease rather than act beside
                # it. Once that lease would have ended (the peer gone too), act alone.
                turn = Turn.WAIT
        if turn is Turn.LATCHED:
            svc.holds_lease = False  # the script takes nothing while latched
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
        if turn in (Turn.WAIT, Turn.SETTLING, Turn.BUSY):
            # BUSY: this process's pool had no connection for the coordinator. Redis is up
            # and a peer may hold the lease: not knowing, wait as for a peer's lease (acting
            # alone is for Redis away, where no peer can hold one we would miss for long).
            self._defer_to_peer(svc, turn)
            return None
        # None (Redis away) acts alone: better two restarts than none. The coordinator warned.
        svc.holds_lease = turn is Turn.ACT
        svc.peer_lease_until = -math.inf
        svc.peer_until, svc.peer_settling = -math.inf, False
        return True

    def _defer_to_peer(self, svc: ServiceState, turn: Turn) -> None:
        """Not our turn: another holds the lease or its action is settling; look again."""
        if not svc.waited_for_peer:  # count episodes, not polls
            svc.waited_for_peer = True
            svc.deferred_to_peer += 1
        svc.holds_lease = False
        svc.peer_until = self._clock() + self.verify_interval
        svc.peer_settling = turn is Turn.SETTLING

    def _lease_ttl(self, seconds: float) -> float:
        # Outlive the wait it covers by a margin, so a slow check cannot lose the lease.
        return seconds + max(5.0, 2 * self.verify_interval)

    async def _renew(self, svc: ServiceState, seconds: float) -> None:
        if not svc.holds_lease or self._coordinator is None:
            return
        ttl = self._lease_ttl(seconds)
        if await self._coordinator.acquire(svc.name, ttl, owner=self.owner) is False:
            # It expired and a peer took it: finish what is running, then take turns.
            svc.holds_lease = False
            logger.warning(
                "%s: recovery lease lost to another process",
                svc.name,
                extra={"service": svc.name},
            )

    async def _hand_back(self, svc: ServiceState) -> None:
        """End of episode: give the lease back. Peers whose monitors have not yet seen a
        recovery are held off by the settle record written when it was seen."""
        if not svc.holds_lease or self._coordinator is None:
            return
        svc.holds_lease = False
        release = asyncio.ensure_future(self._coordinator.release(svc.name, owner=self.owner))
        try:
            await asyncio.shield(release)
        except asyncio.CancelledError:
            # Closed while giving it back: finish (bounded by the coordinator's timeout),
            # or the lease would lock every peer out until it expires.
            await release
            raise

    # -- one attempt --------------------------------------------------------------------

    async def _act(self, svc: ServiceState, slot: RuleSlot) -> RecoveryAttempt | None:
        """Run one action; the attempt counts now (pending) and is judged by ``_conclude``.

        Returns the judged attempt if the action itself failed (nothing to verify).
        """
        rule = slot.rule
        slot.tries += 1
        svc.phase = RecoveryPhase.ACTING
        grace = self.grace(rule, svc.name)
        pending = RecoveryAttempt(
            service=svc.name,
            action=rule.action_type,
            attempt=slot.tries,
            timestamp=self._wall(),
            duration=0.0,
            outcome=AttemptOutcome.DRY_RUN if self.dry_run else AttemptOutcome.PENDING,
            detail=f"running {rule.describe()}",
        )
        t0 = self._clock()
        svc.started(pending)
        self._book.started(pending)
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
            try:
                local_settle.settle(
                    self.monitor, svc.name, self, self._clock, longest_run(rule) + grace
                )
                if self._coordinator is not None:
                    # Peers (even if this process dies now) leave the service alone until
                    # this attempt's grace period is over, plus their own view's lag.
                    # A command may outlive this process, never its timeout and kill grace
                    # (its supervisor sees to it): the record covers both.
                    await self._coordinator.settle(
                        svc.name, longest_run(rule) + grace, owner=self.owner
                    )
                await self._renew(svc, longest_run(rule) + grace)
                outcome = await perform(rule, svc.name, self.context)
            except BaseException:  # cancelled mid-action: the episode's end judges it
                outcome = ActionOutcome(
                    ok=False,
                    detail=f"{rule.describe()} interrupted",
                    error="recovery closed while the action ran",
                )
                svc.verifying = Verifying(slot, t0, self._clock(), grace, pending, outcome, 0.0)
                raise
        t1 = self._clock()
        svc.verifying = Verifying(
            slot=slot,
            started=t0,
            deadline=t1 + grace,
            grace=grace,
            attempt=pending,
            outcome=outcome,
            duration=t1 - t0,
        )
        if outcome.ok:
            svc.phase = RecoveryPhase.VERIFYING
            return None
        return await self._conclude(svc, succeeded=False)

    async def _conclude(
        self, svc: ServiceState, *, succeeded: bool, closing: bool = False
    ) -> RecoveryAttempt:
        """Judge the attempt under verification: record it, set the rule's backoff."""
        verifying = svc.verifying
        assert verifying is not None  # decide() concludes only while verifying
        svc.verifying = None
        slot, rule, outcome = verifying.slot, verifying.slot.rule, verifying.outcome
        now = self._clock()
        tries = slot.tries
        slot.next_delay = backoff_delay(rule, tries, self._random())
        slot.retry_at = now + slot.next_delay
        if not outcome.retryable:
            slot.tries = max(slot.tries, rule.max_attempts)  # repeating it cannot help
        succeeded = succeeded and outcome.ok
        if self.dry_run:
            result, reason = AttemptOutcome.DRY_RUN, None
        elif succeeded:
            result, reason = AttemptOutcome.SUCCEEDED, None
        else:
            result = AttemptOutcome.FAILED
            reason = outcome.error or f"not healthy within {verifying.grace:g}s grace period"
            if outcome.error is None and closing:
                reason = "recovery closed before the service was seen healthy"
            elif outcome.error is None and verifying.unseen:
                reason += " (the health monitor was stopped: nothing was checked)"
        attempt = dataclasses.replace(
            verifying.attempt,
            duration=verifying.duration,
            outcome=result,
            detail=outcome.detail,
            reason=reason,
            recovery_time=now - verifying.started if succeeded else None,
            exit_code=outcome.exit_code,
            output_tail=outcome.output_tail,
            timed_out=outcome.timed_out,
            keys_deleted=outcome.keys_deleted,
        )
        svc.finished(verifying.attempt, attempt)
        self._book.finished(attempt)
        if result is AttemptOutcome.SUCCEEDED:
            logger.info(
                "%s recovered by %s in %.2fs",
                svc.name,
                rule.action_type.value,
                attempt.recovery_time,
                extra={"service": svc.name},
            )
            if not closing:
                local_settle.settle(self.monitor, svc.name, self, self._clock, rule.cooldown)
            if self._coordinator is not None and not closing:
                # Peers whose monitors still see it down leave it alone through our
                # cooldown plus their own lag: one restart per outage, cluster-wide.
                await self._coordinator.settle(svc.name, rule.cooldown, owner=self.owner)
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

    async def _probe(self, svc: ServiceState) -> None:
        """Ask the monitor for a fresh check now, rather than at its next interval.

        Never while the monitor is stopped: that would reopen the connections it closed.
        """
        monitor = self.monitor
        if monitor is None or not monitor_running(monitor):
            return
        try:
            await monitor.trigger_manual_check(svc.name)
            status = monitor.get_status(svc.name)
        except Exception as exc:  # the monitor's trouble must not end recovery
            logger.debug("manual check of %s failed: %r", svc.name, exc)
            return
        svc.note_status(as_status(status), self._clock())

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
            if not svc.escalated:
                # reset() ran while the latch was being written: its resolve is out, so a
                # page now would stay open with nothing latched; and our latch may have
                # reached Redis after the reset's unlatch.
                await self._coordinator.unlatch(svc.name)
                logger.warning(
                    "%s: escalation reset while its latch was being written; no page sent",
                    svc.name,
                    extra={"service": svc.name},
                )
                return
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
        svc.started(attempt)
        self._book.started(attempt)

    async def alert(self, svc: ServiceState, *, resolved: bool, reason: str) -> None:
        """Through the monitor's handlers when attached, and always to the manager's own."""
        alert = escalation_alert(svc, resolved=resolved, reason=reason, now=self._wall())
        # One page at a time: the dispatcher refuses a sync handler while its previous call
        # still runs, so services escalating together would otherwise lose pages.
        async with self._alerting:
            if self.monitor is not None:
                try:
                    await self.monitor.emit_alert(alert)
                except Exception:
                    logger.exception("monitor failed to emit the alert for %s", svc.name)
            for handler in list(self._handlers):
                # Off the loop if sync, bounded either way: a slow pager delays no check.
                await self.alerts.notify(
                    handler, alert, timeout=self.alert_timeout, what="recovery alert handler"
                )


def _failure_text(attempt: RecoveryAttempt) -> str:
    return f"{attempt.action.value} attempt {attempt.attempt}: {attempt.reason}"
