"""Finding 10: replicas act once per outage.

Two replicas, each with its own HealthMonitor (one checks every 0.05 s, the other every
0.3 s and needs twelve good answers to believe it) and its own RecoveryManager, share
recovery through the real Redis. A real HTTP service on loopback is killed; its restart
command takes a second, as ``systemctl restart`` does, and logs which replica ran it.
The slow replica still sees the service down well after the fast one fixed it: it must
not restart the service that was just fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL
from tests.recovery_services import Web
from xnai_core.health.checkers import HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule

pytestmark = pytest.mark.slow


class Replica:
    def __init__(
        self,
        who: str,
        web: Web,
        client: aioredis.Redis,
        prefix: str,
        *,
        grace: float = 3.0,  # a restarted Python server may take a while on a busy host
        **monitor: object,
    ) -> None:
        self.who = who
        self.manager = RecoveryManager(
            verify_interval=0.05, coordinator=RecoveryCoordinator(client, key_prefix=prefix)
        )
        self.manager.add_rule(
            RecoveryRule(
                "web",
                "restart_service",
                command=web.restart_command(who),
                failure_threshold=1,  # the service being unhealthy is enough
                max_attempts=3,
                backoff_base=0.1,
                backoff_max=0.5,
                cooldown=0.0,
                grace_period=grace,
                stable_period=10.0,
                timeout=10.0,
            )
        )
        self.monitor = HealthMonitor(
            recovery_manager=self.manager,
            jitter=lambda interval: 0.0,
            **monitor,  # type: ignore[arg-type]
        )
        self.monitor.add_checker(HTTPHealthChecker("web", web.url, timeout=0.25))

    def state(self) -> object:
        return self.manager.get_recovery_stats()["services"]["web"]["state"]  # type: ignore[index]

    async def aclose(self) -> None:
        await self.monitor.stop_monitoring()
        await self.manager.aclose()


@pytest.fixture
async def pair(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> AsyncIterator[tuple[Web, Replica, Replica]]:
    web = Web.create(tmp_path, takes=1.0)
    fast = Replica("fast", web, shared_redis, key_prefix, check_interval=0.05, failure_threshold=2)
    slow = Replica(
        "slow",
        web,
        shared_redis,
        key_prefix,
        check_interval=0.3,
        failure_threshold=2,
        success_threshold=12,  # believes it back 3.6 s after it is: longer than any grace
    )
    web.start()
    try:
        yield web, fast, slow
    finally:
        for replica in (fast, slow):
            await replica.aclose()
        web.stop()


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _healthy_everywhere(*replicas: Replica) -> None:
    for replica in replicas:
        assert await replica.monitor.wait_for_status("web", "healthy", timeout=30)


async def test_a_slower_replica_does_not_restart_a_service_just_fixed(
    pair: tuple[Web, Replica, Replica],
) -> None:
    """Two outages, two replicas with different check intervals: one restart per outage."""
    web, fast, slow = pair
    for replica in (fast, slow):
        await replica.monitor.start_monitoring()
    await _healthy_everywhere(fast, slow)

    for outage in (1, 2):
        web.kill()
        await _until(lambda: all(r.monitor.get_status("web") == "unhealthy" for r in (fast, slow)))
        await _healthy_everywhere(fast, slow)
        for replica in (fast, slow):
            await replica.manager.wait_idle()
        await asyncio.sleep(0.5)  # a wrong second restart would have been logged by now
        assert len(web.restarts()) == outage, web.restarts()
    deferred = [
        r.manager.get_recovery_stats()["services"]["web"]["deferred_to_peer"]  # type: ignore[index]
        for r in (fast, slow)
    ]
    assert sum(deferred) >= 1


async def test_three_replicas_with_different_intervals_restart_an_outage_once(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Three replicas checking every 0.05 s, 0.15 s and 0.3 s (believing it back after 2, 4
    and 12 good answers): each outage is restarted exactly once, by whichever comes first."""
    web = Web.create(tmp_path, takes=1.0)
    # Three monitors load a busy host: the restarted server gets 10 s to answer.
    settings: list[dict[str, Any]] = [
        {"check_interval": 0.05},
        {"check_interval": 0.15, "success_threshold": 4},
        {"check_interval": 0.3, "success_threshold": 12},
    ]
    replicas = [
        Replica(who, web, shared_redis, key_prefix, grace=10.0, failure_threshold=2, **extra)
        for who, extra in zip(("fast", "mid", "slow"), settings, strict=True)
    ]
    web.start()
    try:
        for replica in replicas:
            await replica.monitor.start_monitoring()
        await _healthy_everywhere(*replicas)
        for outage in (1, 2):
            web.kill()
            await _until(lambda: all(r.monitor.get_status("web") == "unhealthy" for r in replicas))
            await _healthy_everywhere(*replicas)
            for replica in replicas:
                await replica.manager.wait_idle()
            await asyncio.sleep(0.5)  # a wrong second restart would have been logged by now
            assert len(web.restarts()) == outage, web.restarts()
        attempts = [r.manager.get_recovery_stats()["total_attempts"] for r in replicas]
        assert sum(attempts) == 2  # type: ignore[arg-type]
    finally:
        for replica in replicas:
            await replica.aclose()
        web.stop()


async def test_a_holder_gone_mid_grace_leaves_its_restart_to_settle(
    pair: tuple[Web, Replica, Replica],
) -> None:
    """The replica that restarted the service goes away while it waits to see it healthy
    (its lease released, as a closing manager does): the other does not restart it again."""
    web, fast, slow = pair
    for replica in (fast, slow):
        await replica.monitor.start_monitoring()
    await _healthy_everywhere(fast, slow)

    web.kill()
    await _until(lambda: fast.state() == "verifying" or slow.state() == "verifying")
    holder, peer = (fast, slow) if fast.state() == "verifying" else (slow, fast)
    await holder.aclose()  # gone before it saw the service healthy
    assert await peer.monitor.wait_for_status("web", "healthy", timeout=30)
    await peer.manager.wait_idle()
    await asyncio.sleep(0.5)
    assert web.restarts() == [holder.who]


async def test_a_killed_holder_s_restart_is_not_repeated_by_its_peer(
    pair: tuple[Web, Replica, Replica], key_prefix: str
) -> None:
    """The replica that runs the restart is SIGKILLed while its command runs (the command,
    in a session of its own, still starts the service); a peer that then sees the service
    down leaves it alone: the killed holder's lease and settle record outlive it."""
    web, _, slow = pair
    async with _worker(web, key_prefix) as worker:
        web.kill()
        await _until(lambda: web.restarts() == ["worker"])  # its command has started
        os.kill(worker.pid, signal.SIGKILL)
        # The peer starts looking now, with the service still down for a second.
        await slow.monitor.start_monitoring()
        assert await slow.monitor.wait_for_status("web", "unhealthy", timeout=30)
        assert await slow.monitor.wait_for_status("web", "healthy", timeout=30)
        await slow.manager.wait_idle()
        await asyncio.sleep(0.5)
        assert web.restarts() == ["worker"]
        stats = slow.manager.get_recovery_stats()
        assert stats["total_attempts"] == 0
        assert stats["services"]["web"]["deferred_to_peer"] == 1  # type: ignore[index]


@contextlib.asynccontextmanager
async def _worker(web: Web, key_prefix: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A replica in a process of its own (``tests/recovery_worker.py``), watching ``web``
    and restarting it as "worker"; yielded once it watches, killed at the end."""
    spec = {
        "url": SHARED_REDIS_URL,
        "prefix": key_prefix,
        "web_url": web.url,
        "command": web.restart_command("worker"),
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.recovery_worker",
        json.dumps(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert worker.stdout is not None
        async with asyncio.timeout(30):
            assert await worker.stdout.readline() == b"ready\n"
        yield worker
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.wait()


async def test_a_holder_killed_right_after_its_restart_worked_is_not_repeated(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """The replica that restarted the service is SIGKILLed the moment it judged the restart a
    success (cooldown 0: its lease may still be held, its recovery just recorded); a peer
    that still sees the service down for seconds leaves it alone."""
    # The restart takes 2 s: the peer sees the service down meanwhile (after 4 * 0.3 s,
    # later than the worker, so the worker acts), and back only 12 * 0.3 s after it is.
    web = Web.create(tmp_path, takes=2.0)
    peer = Replica(
        "peer",
        web,
        shared_redis,
        key_prefix,
        check_interval=0.3,
        failure_threshold=4,
        success_threshold=12,
    )
    web.start()
    try:
        async with _worker(web, key_prefix) as worker:
            assert worker.stdout is not None
            await peer.monitor.start_monitoring()
            assert await peer.monitor.wait_for_status("web", "healthy", timeout=30)
            web.kill()
            async with asyncio.timeout(30):
                assert await worker.stdout.readline() == b"recovered\n"
            os.kill(worker.pid, signal.SIGKILL)
            assert peer.monitor.get_status("web") != "healthy"  # its view still lags
            assert await peer.monitor.wait_for_status("web", "healthy", timeout=30)
            await peer.manager.wait_idle()
            await asyncio.sleep(0.5)
            assert web.restarts() == ["worker"]
            stats = peer.manager.get_recovery_stats()
            assert stats["total_attempts"] == 0
            assert stats["services"]["web"]["deferred_to_peer"] == 1  # type: ignore[index]
    finally:
        await peer.aclose()
        web.stop()


async def test_a_replica_whose_monitor_stops_gives_its_turn_back(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Finding 9 with replicas: a replica paused by its stopped monitor does not keep the
    service's lease (renewed forever, it would lock every peer out); it gives it back at
    its next decision (here, when its backoff ends)."""
    web = Web.create(tmp_path)  # never started: refused
    replica = Replica("me", web, shared_redis, key_prefix, check_interval=0.05)
    replica.manager.add_rule(
        RecoveryRule(
            "web",
            "clear_cache",
            recovery_func=lambda service: None,  # "works", fixes nothing
            failure_threshold=1,
            grace_period=0.2,
            backoff_base=1.0,
            backoff_max=1.0,
            stable_period=10.0,
        )
    )
    lease = RecoveryCoordinator(shared_redis, key_prefix=key_prefix).lease_key("web")
    try:
        await replica.monitor.start_monitoring()
        await _until(lambda: replica.state() == "waiting" and bool(web.restarts()) is False)
        await _until_async_true(lambda: shared_redis.exists(lease))  # held through its backoff
        await replica.monitor.stop_monitoring()
        await _until_async_true(lambda: _not(shared_redis.exists(lease)))
    finally:
        await replica.aclose()


async def _not(found: Awaitable[int]) -> bool:
    return not await found


async def _until_async_true(look: Callable[[], Awaitable[object]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await look():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class _Rebuilt:
    """A service's recovery as the service's reload rebuilds it: the same coordinator (the
    same token), a new manager, a recovery function that counts its runs."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.coordinator = RecoveryCoordinator(client, key_prefix=prefix)
        self.runs: list[int] = []

    def manager(self, grace: float = 2.0) -> RecoveryManager:
        manager = RecoveryManager(verify_interval=0.05, coordinator=self.coordinator)
        manager.add_rule(
            RecoveryRule(
                "web",
                "restart_service",
                recovery_func=self._restart,
                failure_threshold=1,
                cooldown=0.0,
                grace_period=grace,  # the restart takes effect late: nothing seen in this test
                stable_period=10.0,
                timeout=1.0,
            )
        )
        return manager

    async def _restart(self, service: str) -> None:
        self.runs.append(len(self.runs) + 1)


def _state(manager: RecoveryManager) -> object:
    return manager.get_recovery_stats()["services"]["web"]["state"]  # type: ignore[index]


def _deferred(manager: RecoveryManager) -> object:
    return manager.get_recovery_stats()["services"]["web"]["deferred_to_peer"]  # type: ignore[index]


@pytest.mark.parametrize("old_closed", [True, False], ids=["old-closed", "old-running"])
async def test_a_manager_rebuilt_on_the_same_coordinator_mid_grace_does_not_restart_again(
    shared_redis: aioredis.Redis, key_prefix: str, old_closed: bool
) -> None:
    """A reload (SIGHUP) replaces a service's manager while its restart's grace period runs;
    the new one, on the same coordinator, leaves that restart to settle."""
    service = _Rebuilt(shared_redis, key_prefix)
    # The whole test runs inside the old restart's grace period, however slow the host.
    old = service.manager(grace=10.0)
    new = service.manager(grace=10.0)
    try:
        await old.on_status_change("web", "healthy", "unhealthy")
        await _until(lambda: _state(old) == "verifying")
        if old_closed:
            await old.aclose()
        await new.on_status_change("web", "unknown", "unhealthy")
        await _until(lambda: _deferred(new) == 1 or len(service.runs) > 1)
        await asyncio.sleep(0.5)  # several polls of the new manager
        assert service.runs == [1]
    finally:
        await old.aclose()
        await new.aclose()


async def test_a_manager_rebuilt_mid_outage_takes_over_once_the_old_restart_has_settled(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Rebuilt while the service is down and stays down, the new manager does not wait
    for a status change that never comes: it leaves the old restart its grace period,
    then restarts once itself."""
    from xnai_core.health.checker import HealthChecker

    class Down(HealthChecker):
        async def probe(self) -> dict[str, object]:
            raise ConnectionRefusedError("down")

    service = _Rebuilt(shared_redis, key_prefix)
    old = service.manager()
    monitor = HealthMonitor(
        check_interval=0.05,
        failure_threshold=1,
        recovery_manager=old,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(Down("web", timeout=0.05))
    new = service.manager()
    try:
        await monitor.start_monitoring()
        await _until(lambda: _state(old) == "verifying")
        await old.aclose()
        new.attach(monitor)  # as the reload's router attaches the manager it rebuilt
        await _until(lambda: len(service.runs) == 2, timeout=20)
        assert _deferred(new) == 1
    finally:
        await monitor.stop_monitoring()
        await new.aclose()
