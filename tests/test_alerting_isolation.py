"""Sinks beside a live monitor and recovery manager: a dead destination harms nothing else."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.alerting_helpers import (
    BlackHole,
    Receiver,
    RecordingSink,
    Reply,
    refused_url,
    served,
    wait_for,
)
from xnai_core import (
    CustomHealthChecker,
    HealthMonitor,
    HealthStatus,
    RecoveryManager,
    RecoveryRule,
)
from xnai_core.alerting import SlackSink, WebhookSink


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from served(Receiver())


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    yield from served(BlackHole())


async def test_hung_and_refusing_sinks_never_slow_checks_or_other_sinks(
    receiver: Receiver, black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    """A flapping service: checks keep their cadence, the good sink hears every change,
    the hung sink's queue stays bounded, and nothing is raised into the monitor."""
    caplog.set_level(logging.WARNING)
    flips = {"n": 0}

    def flapping() -> bool:
        flips["n"] += 1
        return flips["n"] % 2 == 0

    monitor = HealthMonitor(check_interval=0.02, failure_threshold=1, success_threshold=1)
    monitor.add_checker(CustomHealthChecker("flappy", flapping, in_thread=False))
    hung = WebhookSink(black_hole.url, name="hung", timeout=30.0, queue_size=4)
    refusing = WebhookSink(refused_url(), name="refusing", queue_size=4, backoff_base=0.5)
    good = WebhookSink(receiver.url, name="good")
    for sink in (hung, refusing, good):
        monitor.add_alert_handler(sink)
    await monitor.start_monitoring()
    try:
        await wait_for(lambda: len(receiver.requests) >= 30)
    finally:
        await monitor.stop_monitoring()
    history = monitor.get_history("flappy")
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(history)]
    # A check waiting on the hung sink would wait its 30 s timeout; the bound is generous
    # for a shared machine and far below that.
    assert len(history) >= 30
    assert max(gaps) < 3.0
    hung_stats, refusing_stats = hung.stats(), refusing.stats()
    assert hung_stats.queued <= 4 + 1  # the bound, and the one in flight
    assert hung_stats.dropped_by_reason["queue_full"] > 0
    assert hung_stats.sent == 0
    assert refusing_stats.sent == 0
    assert refusing_stats.last_error is not None
    assert "ConnectError" in refusing_stats.last_error
    assert good.stats().dropped == 0
    events = [body["event"] for body in receiver.bodies()]
    assert events[:4] == ["firing", "resolved", "firing", "resolved"]
    # The monitor never saw a handler fail or time out.
    assert [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.name.startswith("xnai_core.alerting")
    ] == []
    for sink in (hung, refusing, good):
        await sink.aclose(timeout=0.5)


async def test_escalation_is_critical_and_reaches_every_sink_that_accepts_it() -> None:
    """Manual intervention pages each sink taking critical (and its service); reset resolves."""
    pager = RecordingSink(name="pager", min_severity="critical")
    chat = RecordingSink(name="chat", min_severity="warning")
    info = RecordingSink(name="info", min_severity="info")
    other_team = RecordingSink(name="other", services=["billing"])
    async with RecoveryManager() as manager:
        for sink in (pager, chat, info, other_team):
            manager.add_alert_handler(sink)
        manager.add_rule(RecoveryRule("db", "manual_intervention"))
        await manager.on_status_change("db", HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, None)
        await manager.wait_idle()
        await manager.reset("db")
    for sink in (pager, chat, info):
        await sink.drain()
        assert [(n.key, n.event, n.severity) for n in sink.delivered] == [
            ("db:manual_intervention", "firing", "critical"),
            ("db:manual_intervention", "resolved", "critical"),
        ]
    assert other_team.delivered == []


async def test_a_sink_on_both_the_monitor_and_the_manager_pages_once() -> None:
    """The escalation reaches a sink through the monitor and the manager: one page."""
    sink = RecordingSink()
    manager = RecoveryManager()
    manager.add_rule(RecoveryRule("db", "manual_intervention", failure_threshold=1))
    monitor = HealthMonitor(check_interval=0.02, failure_threshold=1, recovery_manager=manager)
    monitor.add_checker(CustomHealthChecker("db", lambda: False, in_thread=False))
    monitor.add_alert_handler(sink)
    manager.add_alert_handler(sink)
    await monitor.start_monitoring()
    try:
        await wait_for(lambda: any(n.key == "db:manual_intervention" for n in sink.delivered))
        await monitor.drain_notifications()
        await sink.drain()
    finally:
        await monitor.stop_monitoring()
        await manager.aclose()
    pages = [n for n in sink.delivered if n.key == "db:manual_intervention"]
    assert len(pages) == 1


async def test_a_storm_of_flaps_against_bad_receivers_keeps_each_alerts_order(
    receiver: Receiver, black_hole: BlackHole
) -> None:
    """Three flapping services; sinks to a hung Slack, a 429 with Retry-After 86400, a
    receiver answering slowly, and a good one; the monitor is stopped mid-storm. Every
    sink closes within its deadline; at the good and slow receivers each alert's notices
    alternate firing/resolved (never two raises or two resolves in a row) and no delivery
    id is taken twice."""
    flips: dict[str, int] = {}

    def flapping(name: str) -> Any:
        def check() -> bool:
            flips[name] = flips.get(name, 0) + 1
            return flips[name] % 3 != 0

        return check

    slow = Receiver()
    slow.validator = lambda request: Reply(200, delay=0.05)
    limited = Receiver()
    limited.validator = lambda request: Reply(429, {"Retry-After": "86400"}, b"later")
    monitor = HealthMonitor(check_interval=0.02, failure_threshold=1, success_threshold=1)
    for name in ("a", "b", "c"):
        monitor.add_checker(CustomHealthChecker(name, flapping(name), in_thread=False))
    sinks = [
        SlackSink(f"{black_hole.url}/services/T/B/x", name="hung-slack", timeout=0.2),
        WebhookSink(limited.url, name="limited"),
        WebhookSink(slow.url, name="slow"),
        WebhookSink(receiver.url, name="good"),
    ]
    for sink in sinks:
        monitor.add_alert_handler(sink)
    await monitor.start_monitoring()
    try:
        await wait_for(lambda: len(receiver.requests) >= 20)
    finally:
        await monitor.stop_monitoring()
    closing = [asyncio.ensure_future(sink.aclose(timeout=1.0)) for sink in sinks]
    done, _ = await asyncio.wait(closing, timeout=30)
    assert len(done) == len(sinks)
    for server in (receiver, slow):
        bodies = server.bodies()
        assert len({body["id"] for body in bodies}) == len(bodies)
        by_key: dict[str, list[str]] = {}
        for body in bodies:
            by_key.setdefault(body["alert"]["key"], []).append(body["event"])
        for events in by_key.values():
            assert all(x != y for x, y in itertools.pairwise(events)), events
            assert events[0] == "firing"
    assert sinks[1].stats().sent == 0
    assert all(sink.stats().queued == 0 for sink in sinks)
    slow.close()
    limited.close()
