"""RecoveryManager on an injected clock: backoff, cooldown, escalation, latch, stats.

No real waiting: the clock is fake and its sleep advances it. Actions here are
callables that report the service's health the way a monitor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from xnai_core.health.alerts import Alert
from xnai_core.recovery import (
    AttemptOutcome,
    RecoveryActionType,
    RecoveryManager,
    RecoveryRule,
)

H, U, D = "healthy", "unhealthy", "degraded"


class FakeClock:
    """A monotonic clock whose sleep jumps ahead instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def make_manager(clock: FakeClock, **kwargs: object) -> RecoveryManager:
    return RecoveryManager(
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 0.5,
        wall_clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def rule(action: str = "restart_service", **kwargs: object) -> RecoveryRule:
    defaults: dict[str, object] = {
        "backoff_base": 10.0,
        "backoff_max": 300.0,
        "jitter": 0.5,
        "cooldown": 60.0,
        "grace_period": 30.0,
        "stable_period": 600.0,
    }
    defaults.update(kwargs)
    return RecoveryRule("api", action, **defaults)  # type: ignore[arg-type]


def action(
    manager_ref: list[RecoveryManager],
    clock: FakeClock,
    *,
    heals: Callable[[int], bool] = lambda n: False,
    takes: float = 0.0,
) -> tuple[Callable[[str], Awaitable[None]], list[float]]:
    """A recovery function that records when it ran and, if ``heals(n)``, reports healthy."""
    calls: list[float] = []

    async def run(service: str) -> None:
        calls.append(clock.now)
        clock.now += takes
        if heals(len(calls)):
            await manager_ref[0].on_status_change(service, U, H, None)

    return run, calls


@contextlib.asynccontextmanager
async def running(
    clock: FakeClock, *, heals: Callable[[int], bool] = lambda n: False, takes: float = 0.0
) -> AsyncIterator[
    tuple[RecoveryManager, Callable[[str], Awaitable[None]], list[float], list[Alert]]
]:
    """A manager on ``clock`` whose alerts are kept, and a recovery function for it (see
    :func:`action`): yields the manager, the function, its run times and the alerts."""
    ref: list[RecoveryManager] = []
    func, calls = action(ref, clock, heals=heals, takes=takes)
    alerts: list[Alert] = []
    async with make_manager(clock) as manager:
        ref.append(manager)
        manager.add_alert_handler(alerts.append)
        yield manager, func, calls, alerts


async def go_unhealthy(manager: RecoveryManager, service: str = "api") -> None:
    await manager.on_status_change(service, H, U, None)
    await manager.wait_idle()


async def test_successful_restart_is_recorded_with_its_recovery_time() -> None:
    """One restart, healthy 2.5 s after it started: one success, recovery time 2.5 s."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True, takes=2.5) as (manager, func, calls, _alerts):
        manager.add_rule(rule(recovery_func=func))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert len(calls) == 1
    assert stats["total_attempts"] == 1
    assert stats["success_rate"] == 1.0
    assert stats["average_recovery_time"] == 2.5
    assert stats["actions_by_type"] == {
        "clear_cache": 0,
        "database_reconnect": 0,
        "config_reload": 0,
        "restart_service": 1,
        "manual_intervention": 0,
    }
    assert stats["recent_failures"] == []


async def test_stats_have_exactly_the_seed_keys_plus_services() -> None:
    """The stats dict has the seed's five keys, the rate named for its unit and the
    per-service detail, nothing else."""
    clock = FakeClock()
    async with make_manager(clock) as manager:
        stats = manager.get_recovery_stats()
    assert list(stats) == [
        "total_attempts",
        "success_rate",
        "success_fraction",
        "average_recovery_time",
        "actions_by_type",
        "recent_failures",
        "services",
    ]
    assert (stats["total_attempts"], stats["success_rate"], stats["average_recovery_time"]) == (
        0,
        0.0,
        0.0,
    )


async def test_statuses_are_health_statuses_whatever_form_they_come_in() -> None:
    """HealthStatus members and their strings mean the same; a word that is not a status
    is unknown (shown so, never acted on), not a fourth status of recovery's own."""
    from xnai_core.health import HealthStatus
    from xnai_core.recovery import state

    assert (state.HEALTHY, state.UNHEALTHY) == (HealthStatus.HEALTHY, HealthStatus.UNHEALTHY)
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, fix, calls, _alerts):
        manager.add_rule(rule(recovery_func=fix, failure_threshold=1))
        await manager.on_status_change("api", HealthStatus.HEALTHY, "starting", None)
        await manager.wait_idle()
        shown = manager.get_recovery_stats()["services"]["api"]["status"]  # type: ignore[index]
        assert (shown, calls) == ("unknown", [])
        await manager.on_status_change("api", "starting", HealthStatus.UNHEALTHY, None)
        await manager.wait_idle()
    assert len(calls) == 1
    assert manager.get_recovery_stats()["success_fraction"] == 1.0


async def test_never_recovering_service_backs_off_escalates_once_and_latches() -> None:
    """Attempts follow the backoff, stop at max_attempts, escalate once and stay latched."""
    clock = FakeClock()
    async with running(clock) as (manager, func, calls, alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=3))
        start = clock.now
        await go_unhealthy(manager)
        # retry n waits min(300, 10 * 2**(n-1)) shortened by jitter 0.5 * random 0.5
        assert [t - start for t in calls] == [0.0, 30.0 + 7.5, 30.0 + 7.5 + 30.0 + 15.0]
        assert manager.is_escalated("api")
        assert len(alerts) == 1
        alert = alerts[0]
        assert (alert.key, alert.severity, alert.kind, alert.resolved) == (
            "api:manual_intervention",
            "critical",
            "manual_intervention",
            False,
        )
        assert "restart_service tried 3x" in alert.message
        # More outages while latched: nothing runs, nothing re-alerts, but it is counted.
        for _ in range(3):
            await manager.on_status_change("api", U, H, None)
            await go_unhealthy(manager)
        assert len(calls) == 3
        assert len(alerts) == 1
        stats = manager.get_recovery_stats()
    detail = stats["services"]["api"]  # type: ignore[index]
    assert detail["state"] == "escalated"
    assert detail["suppressed_while_escalated"] == 3
    assert detail["escalations"] == 1
    assert stats["total_attempts"] == 4  # three restarts and the escalation
    assert stats["actions_by_type"]["manual_intervention"] == 1  # type: ignore[index]
    assert stats["success_rate"] == 0.0
    failures = stats["recent_failures"]
    assert isinstance(failures, list)
    assert [f["outcome"] for f in failures] == ["failed"] * 3 + ["escalated"]
    assert failures[0]["reason"] == "not healthy within 30s grace period"


async def test_backoff_is_capped_at_backoff_max() -> None:
    """Delays double up to backoff_max and stay there."""
    clock = FakeClock()
    async with running(clock) as (manager, func, calls, _alerts):
        manager.add_rule(
            rule(recovery_func=func, max_attempts=6, backoff_max=25.0, jitter=0.0, grace_period=1)
        )
        await go_unhealthy(manager)
    gaps = [b - a - 1.0 for a, b in itertools.pairwise(calls)]
    assert gaps == [10.0, 20.0, 25.0, 25.0, 25.0]


async def test_reset_lifts_the_latch_sends_resolved_and_acts_again() -> None:
    """reset() resolves the alert, clears counters, and acts if the service is still down."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: n >= 3) as (manager, func, calls, alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=2))
        await go_unhealthy(manager)
        assert manager.is_escalated("api")
        assert len(calls) == 2
        assert await manager.reset("api") is True
        await manager.wait_idle()
        assert not manager.is_escalated("api")
        assert len(calls) == 3  # acted again at once: counters and cooldown were cleared
        assert [a.resolved for a in alerts] == [False, True]
        assert alerts[1].key == alerts[0].key
        assert await manager.reset("api") is False
        assert await manager.reset("nobody") is False


async def test_failure_inside_cooldown_is_deferred_not_dropped() -> None:
    """A new outage right after a recovery waits for the cooldown, then acts."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, func, calls, _alerts):
        manager.add_rule(rule(recovery_func=func, cooldown=120.0, backoff_base=1.0, jitter=0))
        await go_unhealthy(manager)
        first_end = clock.now
        clock.now += 5  # healthy for 5 s, then down again
        await go_unhealthy(manager)
        detail = manager.get_recovery_stats()["services"]["api"]  # type: ignore[index]
    assert len(calls) == 2
    assert calls[1] == pytest.approx(first_end + 120.0)
    assert detail["deferred_by_cooldown"] == 1


async def test_crash_loop_escalates_even_though_each_restart_works() -> None:
    """A service that comes back but dies before stable_period is crash-looping: escalate."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, func, calls, alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=3, cooldown=0.0))
        for _ in range(5):
            await go_unhealthy(manager)
            clock.now += 60  # up for a minute, well short of the 10 minute stable period
        stats = manager.get_recovery_stats()
    assert len(calls) == 3
    assert manager.is_escalated("api")
    assert len(alerts) == 1
    assert stats["success_rate"] == 0.75  # 3 restarts worked for a while; 1 escalation
    assert "restart_service tried 3x" in str(alerts[0].message)


async def test_stable_period_resets_counters() -> None:
    """After stable_period healthy, attempts start from one again: no escalation."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, func, calls, _alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=2, cooldown=0.0))
        for _ in range(5):
            await go_unhealthy(manager)
            clock.now += 601
        tries = manager.get_recovery_stats()["services"]["api"]["rules"][0]  # type: ignore[index]
    assert len(calls) == 5
    assert not manager.is_escalated("api")
    assert tries["tries_since_stable"] == 0


async def test_crash_loop_backoff_grows_across_episodes() -> None:
    """Between short-lived recoveries the wait before the next restart keeps growing."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, func, calls, _alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=10, cooldown=0.0, jitter=0))
        for _ in range(4):
            await go_unhealthy(manager)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps == [10.0, 20.0, 40.0]


async def test_one_action_in_flight_per_service() -> None:
    """However many times the monitor reports it, one action runs at a time per service."""
    clock = FakeClock()
    release = asyncio.Event()
    running = 0
    peak = 0
    runs = 0

    async def slow_restart(service: str) -> None:
        nonlocal running, peak, runs
        runs += 1
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with make_manager(clock) as manager:
        manager.add_rule(rule(recovery_func=slow_restart, grace_period=1))
        for _ in range(5):
            await manager.on_status_change("api", H, U, None)
            await manager.on_status_change("api", U, H, None)
        await manager.on_status_change("api", H, U, None)
        await asyncio.sleep(0)
        assert manager.get_recovery_stats()["services"]["api"]["state"] == "acting"  # type: ignore[index]
        release.set()
        await manager.on_status_change("api", U, H, None)
        await manager.wait_idle()
    assert (peak, runs) == (1, 1)


async def test_services_recover_independently() -> None:
    """Two services' actions run concurrently, each in its own episode."""
    clock = FakeClock()
    both = asyncio.Barrier(2)
    ref: list[RecoveryManager] = []

    async def restart(service: str) -> None:
        await asyncio.wait_for(both.wait(), 5)  # would time out if the two ran one after another
        await ref[0].on_status_change(service, U, H, None)

    async with make_manager(clock) as manager:
        ref.append(manager)
        manager.add_rule(RecoveryRule("a", "restart_service", recovery_func=restart))
        manager.add_rule(RecoveryRule("b", "restart_service", recovery_func=restart))
        await manager.on_status_change("a", H, U, None)
        await manager.on_status_change("b", H, U, None)
        await manager.wait_idle()
        stats = manager.get_recovery_stats()
    assert stats["total_attempts"] == 2
    assert stats["success_rate"] == 1.0


async def test_rules_run_cheapest_first() -> None:
    """Clear the cache first, restart once that rule is used up, then escalate."""
    clock = FakeClock()
    order: list[str] = []

    async def restart(service: str) -> None:
        order.append("restart")

    async def clear(service: str) -> None:
        order.append("clear")

    async with make_manager(clock) as manager:
        manager.add_rule(rule("restart_service", recovery_func=restart, max_attempts=2))
        manager.add_rule(rule("clear_cache", recovery_func=clear, max_attempts=1))
        assert [r.action.value for r in manager.get_rules("api")] == [  # type: ignore[union-attr]
            "clear_cache",
            "restart_service",
        ]
        await go_unhealthy(manager)
    assert order == ["clear", "restart", "restart"]
    assert manager.is_escalated("api")


async def test_explicit_manual_intervention_rule_alone_pages_at_once() -> None:
    """A service whose only rule is manual intervention escalates as soon as it is down."""
    clock = FakeClock()
    alerts: list[Alert] = []
    async with make_manager(clock) as manager:
        manager.add_alert_handler(alerts.append)
        manager.add_rule(RecoveryRule("db", "manual_intervention"))
        await go_unhealthy(manager, "db")
    assert [a.key for a in alerts] == ["db:manual_intervention"]
    assert "no automatic action configured" in alerts[0].message


async def test_non_retryable_failure_skips_the_remaining_attempts() -> None:
    """A restart command that does not exist escalates after one attempt, not three."""
    clock = FakeClock()
    async with make_manager(clock) as manager:
        manager.add_rule(rule(command=["/nonexistent/restart-api"], max_attempts=3))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert manager.is_escalated("api")
    assert stats["actions_by_type"]["restart_service"] == 1  # type: ignore[index]
    assert "FileNotFoundError" in str(stats["recent_failures"][0]["reason"])  # type: ignore[index]


async def test_failed_action_does_not_wait_for_grace() -> None:
    """An action that raises is a failure at once; the backoff follows, not the grace."""
    clock = FakeClock()
    calls: list[float] = []

    async def broken(service: str) -> None:
        calls.append(clock.now)
        raise RuntimeError("restart refused")

    async with make_manager(clock) as manager:
        manager.add_rule(rule(recovery_func=broken, max_attempts=2, jitter=0))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert calls[1] - calls[0] == 10.0
    assert stats["recent_failures"][0]["reason"] == "RuntimeError: restart refused"  # type: ignore[index]


async def test_degraded_is_not_recovered_and_not_acted_on() -> None:
    """unhealthy -> degraded: the attempt does not count as success, and no retry runs."""
    clock = FakeClock()
    ref: list[RecoveryManager] = []
    calls: list[float] = []

    async def half_fix(service: str) -> None:
        calls.append(clock.now)
        await ref[0].on_status_change(service, U, D, None)

    async with make_manager(clock) as manager:
        ref.append(manager)
        manager.add_rule(rule(recovery_func=half_fix))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert len(calls) == 1
    assert not manager.is_escalated("api")
    assert stats["success_rate"] == 0.0
    assert stats["services"]["api"]["state"] == "idle"  # type: ignore[index]


async def test_service_that_heals_itself_during_backoff_ends_the_episode() -> None:
    """No further action once the monitor sees the service healthy on its own."""
    clock = FakeClock()
    calls: list[float] = []

    async def restart(service: str) -> None:
        calls.append(clock.now)

    async with make_manager(clock) as manager:
        manager.add_rule(rule(recovery_func=restart, grace_period=1.0, backoff_base=100))
        await manager.on_status_change("api", H, U, None)
        for _ in range(20):
            await asyncio.sleep(0)
        await manager.on_status_change("api", U, H, None)
        await manager.wait_idle()
        detail = manager.get_recovery_stats()["services"]["api"]  # type: ignore[index]
    assert len(calls) == 1
    assert detail["recovered_episodes"] == 1


async def test_dry_run_records_and_runs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """dry_run: no action, no alert, no totals; the would-be actions are logged and counted."""
    clock = FakeClock()
    calls: list[str] = []
    alerts: list[Alert] = []

    async def restart(service: str) -> None:
        calls.append(service)

    caplog.set_level(logging.WARNING, logger="xnai_core.recovery")
    async with make_manager(clock, dry_run=True) as manager:
        manager.add_alert_handler(alerts.append)
        manager.add_rule(rule(recovery_func=restart, max_attempts=2))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert calls == []
    assert alerts == []
    assert stats["total_attempts"] == 0
    detail = stats["services"]["api"]  # type: ignore[index]
    assert detail["dry_run_actions"] == 3  # two restarts and the escalation it would make
    assert detail["last_attempt"]["outcome"] == AttemptOutcome.DRY_RUN.value
    assert sum("dry run: api would run" in r.getMessage() for r in caplog.records) == 2
    assert any("would escalate" in r.getMessage() for r in caplog.records)


async def test_recent_failures_are_bounded() -> None:
    """recent_failures keeps the last history_size failures only."""
    clock = FakeClock()

    async def broken(service: str) -> None:
        raise RuntimeError("no")

    async with make_manager(clock, history_size=4) as manager:
        manager.add_rule(rule(recovery_func=broken, max_attempts=10, backoff_base=1, jitter=0))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert stats["total_attempts"] == 11
    assert len(stats["recent_failures"]) == 4  # type: ignore[arg-type]
    assert stats["recent_failures"][-1]["outcome"] == "escalated"  # type: ignore[index]


async def test_rule_added_while_service_is_down_acts() -> None:
    """A rule added for a service already reported unhealthy starts recovery."""
    clock = FakeClock()
    calls: list[str] = []

    async def restart(service: str) -> None:
        calls.append(service)

    async with make_manager(clock) as manager:
        await manager.on_status_change("api", H, U, None)
        manager.add_rule(rule(recovery_func=restart, max_attempts=1))
        await manager.wait_idle()
    assert calls == ["api"]


async def test_alert_handler_errors_do_not_stop_recovery(caplog: pytest.LogCaptureFixture) -> None:
    """A broken alert handler is logged; the next handler still gets the alert."""
    clock = FakeClock()
    received: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("pager down")

    async def good(alert: Alert) -> None:
        received.append(alert)

    async with make_manager(clock) as manager:
        manager.add_alert_handler(broken)
        manager.add_alert_handler(good)
        manager.add_rule(RecoveryRule("api", "manual_intervention"))
        await go_unhealthy(manager)
    assert len(received) == 1
    assert any("alert handler failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"verify_interval": 0}, "'verify_interval' must be > 0 seconds: 0"),
        ({"history_size": 0}, "'history_size' must be >= 1: 0"),
        ({"alert_timeout": -1}, "'alert_timeout' must be > 0 seconds or None: -1"),
    ],
)
def test_manager_settings_are_validated(kwargs: dict[str, object], message: str) -> None:
    """Bad manager settings fail at construction with field, rule and value."""
    with pytest.raises(ValueError, match=message):
        RecoveryManager(**kwargs)  # type: ignore[arg-type]


def test_add_rule_takes_only_rules() -> None:
    """add_rule refuses anything but a RecoveryRule."""
    with pytest.raises(TypeError, match="'rule' must be a RecoveryRule"):
        RecoveryManager().add_rule("restart api")  # type: ignore[arg-type]


def test_rules_given_at_construction() -> None:
    """RecoveryManager(rules) is add_rule for each."""
    manager = RecoveryManager([RecoveryRule("api", "manual_intervention")])
    assert manager.get_rules("api")[0].action is RecoveryActionType.MANUAL_INTERVENTION


async def test_explicit_manual_rule_is_not_held_back_by_cooldown() -> None:
    """In a crash loop, the page goes out at once, not after the restart cooldown."""
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, func, calls, alerts):
        manager.add_rule(rule(recovery_func=func, max_attempts=1, cooldown=500.0))
        manager.add_rule(RecoveryRule("api", "manual_intervention"))
        await go_unhealthy(manager)
        clock.now += 10  # back for ten seconds only
        before = clock.now
        await go_unhealthy(manager)
    assert len(calls) == 1
    assert len(alerts) == 1
    assert alerts[0].timestamp == before


async def test_backoff_ending_at_clock_zero_is_still_waited() -> None:
    """A retry time of exactly 0.0 on the clock is a time, not 'no backoff'."""
    clock = FakeClock()
    clock.now = -6.0  # one 1 s grace and a 5 s backoff end exactly at 0.0
    async with running(clock) as (manager, func, calls, _alerts):
        manager.add_rule(
            rule(recovery_func=func, max_attempts=2, jitter=0, grace_period=1, backoff_base=5)
        )
        await go_unhealthy(manager)
    assert calls == [-6.0, 0.0]


# -- an action that raises what nobody expected (supervisord's FATAL trap) -------------


def _explode(error: Exception) -> Callable[..., Awaitable[object]]:
    async def run(*args: object, **kwargs: object) -> object:
        raise error

    return run


async def test_unexpected_exception_in_an_action_is_recorded_and_the_next_rule_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An action that raises unexpectedly is one failed attempt, not retried; the next
    rule of the ladder runs, instead of recovery ending with nothing recorded."""
    from xnai_core.recovery import actions

    monkeypatch.setattr(actions, "run_command", _explode(OverflowError("int too large")))
    clock = FakeClock()
    async with running(clock, heals=lambda n: True) as (manager, restart, calls, _alerts):
        manager.add_rule(rule("config_reload", command=["/usr/bin/reload-api"], max_attempts=3))
        manager.add_rule(rule(recovery_func=restart))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert len(calls) == 1  # the restart rule ran after the reload rule failed
    assert not manager.is_escalated("api")
    assert stats["total_attempts"] == 2
    assert stats["actions_by_type"]["config_reload"] == 1  # type: ignore[index]
    failure = stats["recent_failures"][0]  # type: ignore[index]
    assert (failure["action"], failure["outcome"]) == ("config_reload", "failed")
    assert failure["reason"] == "OverflowError: int too large"
    assert stats["services"]["api"]["rules"][0]["tries_since_stable"] == 3  # type: ignore[index]


async def test_unexpected_exception_in_the_last_rule_escalates_and_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no rule left, the unexpected failure escalates once, with a critical alert."""
    from xnai_core.recovery import actions

    monkeypatch.setattr(actions, "run_command", _explode(ValueError("embedded null byte")))
    clock = FakeClock()
    alerts: list[Alert] = []
    async with make_manager(clock) as manager:
        manager.add_alert_handler(alerts.append)
        manager.add_rule(rule(command=["/usr/bin/restart-api"], max_attempts=3))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert manager.is_escalated("api")
    assert [a.severity for a in alerts] == ["critical"]
    assert "ValueError: embedded null byte" in alerts[0].message
    assert stats["actions_by_type"]["restart_service"] == 1  # type: ignore[index]
    assert stats["services"]["api"]["escalations"] == 1  # type: ignore[index]


async def test_a_crash_inside_the_episode_escalates_instead_of_stopping_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a bug of the manager's own ends in a page, not in a service nobody watches."""
    from xnai_core.recovery import episode

    monkeypatch.setattr(episode, "perform", _explode(RuntimeError("internal bug")))
    clock = FakeClock()
    alerts: list[Alert] = []
    ref: list[RecoveryManager] = []
    func, _ = action(ref, clock)
    async with make_manager(clock) as manager:
        ref.append(manager)
        manager.add_alert_handler(alerts.append)
        manager.add_rule(rule(recovery_func=func))
        await go_unhealthy(manager)
        stats = manager.get_recovery_stats()
    assert manager.is_escalated("api")
    assert [a.severity for a in alerts] == ["critical"]
    detail = stats["services"]["api"]  # type: ignore[index]
    assert detail["state"] == "escalated"
    assert "recovery failed unexpectedly: RuntimeError: internal bug" in str(
        detail["escalation_reason"]
    )
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)
