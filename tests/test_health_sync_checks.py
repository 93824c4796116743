"""Sync check functions run on threads of their own, never the loop's default executor.

Issue 11, finding 8: with as many hung sync checks as the default executor has
workers, DNS lookups (which asyncio runs in that executor) queued behind them and a
healthy ``http://localhost`` service was reported unhealthy.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.test_health_support import LoopbackHTTPServer
from xnai_core.health.checkers import CustomHealthChecker, HealthStatus, HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY
DEFAULT_EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default


class Hung:
    """A sync check function that blocks its thread until released (bounded)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        self.entered.set()
        self.release.wait(20)
        return True


async def wait_until(condition: Callable[[], bool], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def check_threads(tag: str) -> list[str]:
    prefix = f"xnai-health-check-{tag}"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


async def test_hung_sync_checks_never_starve_dns_or_other_checks() -> None:
    """As many hung sync checks as the default executor has workers: localhost stays healthy."""
    hung = [Hung() for _ in range(DEFAULT_EXECUTOR_WORKERS)]
    async with LoopbackHTTPServer() as server:
        # Bounds generous for a loaded machine: the old code fails by many seconds.
        monitor = HealthMonitor(check_interval=0.5, jitter=lambda interval: 0.0)
        for n, function in enumerate(hung):
            monitor.add_checker(CustomHealthChecker(f"hung{n}", function, timeout=0.05))
        # Its own interval, so its timeout stays 2 s (not capped at 0.5 s): on a loaded
        # machine a thread may start a 0.5 s call late, and the test is about starvation.
        monitor.add_checker(CustomHealthChecker("quick", lambda: True, timeout=2.0), interval=5.0)
        await monitor.start_monitoring()
        try:
            await wait_until(lambda: all(h.entered.is_set() for h in hung))
            # Only now does the HTTP checker open its first connection: "localhost"
            # must be resolved while every hung check holds a thread.
            monitor.add_checker(
                HTTPHealthChecker("api", f"http://localhost:{server.port}/health", timeout=0.5)
            )
            assert await monitor.wait_for_status("api", HEALTHY, timeout=15.0)
            for _ in range(5):
                await monitor.trigger_manual_check("quick")
            assert monitor.get_status("quick") is HEALTHY
            await wait_until(lambda: monitor.get_service_health("hung0").total_checks > 0)
            assert monitor.get_status("hung0") is not HEALTHY
            last = monitor.get_service_health("hung0").last_result
            assert last is not None
            assert last.error in (
                "timed out after 0.05s",
                "previous call of the check function is still running",
            )
            assert [h.calls for h in hung] == [1] * len(hung)
        finally:
            for function in hung:
                function.release.set()
            await monitor.stop_monitoring()


async def test_sync_checks_never_use_the_loop_default_executor() -> None:
    """A shut-down default executor does not matter: sync checks have threads of their own."""
    closed = ThreadPoolExecutor(max_workers=1)
    closed.shutdown()
    asyncio.get_running_loop().set_default_executor(closed)
    checker = CustomHealthChecker("quick", lambda: True)
    try:
        result = await checker.check()
    finally:
        await checker.aclose()
    assert (result.status, result.error) == (HEALTHY, None)


async def test_one_thread_per_sync_checker_ended_by_stop() -> None:
    """A stuck sync check holds exactly its own thread; stop_monitoring ends the threads."""
    stuck = Hung()
    tag = uuid.uuid4().hex[:8]
    monitor = HealthMonitor(check_interval=0.05, jitter=lambda interval: 0.0)
    monitor.add_checker(CustomHealthChecker(f"{tag}-stuck", stuck, timeout=0.02))
    monitor.add_checker(CustomHealthChecker(f"{tag}-fine", lambda: True, timeout=0.5))
    await monitor.start_monitoring()
    try:
        await wait_until(lambda: monitor.get_service_health(f"{tag}-stuck").total_checks >= 5)
        await wait_until(lambda: monitor.get_service_health(f"{tag}-fine").total_checks >= 5)
        assert stuck.calls == 1
        assert sorted(check_threads(tag)) == [
            f"xnai-health-check-{tag}-fine-1",
            f"xnai-health-check-{tag}-stuck-1",
        ]
    finally:
        stuck.release.set()
        await monitor.stop_monitoring()
    await wait_until(lambda: not check_threads(tag))


async def test_a_sync_check_run_back_to_back_is_never_still_running() -> None:
    """Manual checks one right after another: each runs the function; none is refused as
    "previous call of the check function is still running" (its call had returned; the
    worker thread had not yet handed its turn on when the next check came)."""
    calls = 0

    def quick() -> bool:
        nonlocal calls
        calls += 1
        return True

    monitor = HealthMonitor(check_interval=60.0, jitter=lambda interval: 0.0)
    monitor.add_checker(CustomHealthChecker("quick", quick, timeout=5.0))
    try:
        for _ in range(200):
            result = await monitor.trigger_manual_check("quick")
            assert (result.status, result.error) == (HEALTHY, None)
        assert calls == 200
    finally:
        await monitor.stop_monitoring()
