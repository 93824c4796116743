"""Redis health checks against real servers: the shared one, and private ones we break."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis, free_port
from xnai_core.health.checkers import HealthStatus, RedisHealthChecker
from xnai_core.health.factories import create_redis_health_checker
from xnai_core.health.monitor import HealthMonitor

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY


async def test_shared_redis_is_healthy_with_info_facts(shared_redis: aioredis.Redis) -> None:
    """PING latency and INFO facts (role, memory, clients, version) are in details."""
    checker = create_redis_health_checker(shared_redis)
    result = await checker.check()
    assert result.status == HEALTHY
    details = result.details
    assert details["address"] == "127.0.0.1:6379"
    assert details["role"] == "master"
    assert isinstance(details["used_memory"], int)
    assert isinstance(details["connected_clients"], int)
    assert isinstance(details["redis_version"], str)
    assert 0 <= float(details["ping_latency"]) <= result.response_time  # type: ignore[arg-type]
    await checker.aclose()  # the client is the caller's: it must still work
    assert await shared_redis.ping()


async def test_private_redis_killed_mid_run_then_restarted(private_redis: PrivateRedis) -> None:
    """Kill -> unhealthy; restart on the same port -> healthy again, one recovery callback."""
    client = aioredis.Redis.from_url(private_redis.url)
    monitor = HealthMonitor(
        check_interval=0.05,
        check_timeout=0.05,
        failure_threshold=2,
        success_threshold=2,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(create_redis_health_checker(client, name="cache"))
    recovered: list[str] = []
    monitor.add_recovery_callback("cache", recovered.append)
    try:
        await monitor.start_monitoring()
        assert await monitor.wait_for_status("cache", HEALTHY, timeout=10)
        private_redis.kill()
        assert await monitor.wait_for_status("cache", UNHEALTHY, timeout=10)
        failed = monitor.get_service_health("cache").last_result
        assert failed is not None
        assert failed.error is not None
        private_redis.start()
        assert await monitor.wait_for_status("cache", HEALTHY, timeout=10)
        await monitor.drain_notifications()
    finally:
        await monitor.stop_monitoring()
        await client.aclose()
    assert recovered == ["cache"]


async def test_paused_redis_times_out(private_redis: PrivateRedis) -> None:
    """A server that accepts but never answers (SIGSTOP) fails by timeout."""
    client = aioredis.Redis.from_url(private_redis.url)
    monitor = HealthMonitor(check_interval=1.0, check_timeout=0.2)
    monitor.add_checker(RedisHealthChecker("cache", client))
    try:
        assert (await monitor.trigger_manual_check("cache")).status == HEALTHY
        private_redis.pause()
        hung = await monitor.trigger_manual_check("cache")
        private_redis.resume()
    finally:
        private_redis.resume()
        await monitor.stop_monitoring()
        await client.aclose()
    assert (hung.status, hung.error) == (UNHEALTHY, "timed out after 0.2s")


async def test_unreachable_redis_is_unhealthy() -> None:
    """Nothing on the port: unhealthy within the timeout, never an exception."""
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    monitor = HealthMonitor(check_interval=1.0, check_timeout=0.3)
    monitor.add_checker(RedisHealthChecker("cache", client))
    result = await monitor.trigger_manual_check("cache")
    await monitor.stop_monitoring()
    await client.aclose()
    assert result.status == UNHEALTHY


async def test_redis_password_never_appears(caplog: pytest.LogCaptureFixture) -> None:
    """With requirepass, right and wrong passwords never show in results, reports or logs."""
    password, wrong = "r3dis-s3cret", "wr0ng-pa55"
    server = PrivateRedis()
    server.start()  # its readiness probe is an unauthenticated PING: set the password after
    setup = aioredis.Redis.from_url(server.url)
    await setup.config_set("requirepass", password)
    await setup.aclose()
    good = aioredis.Redis.from_url(f"redis://:{password}@127.0.0.1:{server.port}/0")
    bad = aioredis.Redis.from_url(f"redis://:{wrong}@127.0.0.1:{server.port}/0")
    monitor = HealthMonitor(check_interval=1.0, check_timeout=0.5, failure_threshold=1)
    monitor.add_checker(RedisHealthChecker("good", good))
    monitor.add_checker(RedisHealthChecker("bad", bad))
    owned = create_redis_health_checker(None, name="owned")
    try:
        with caplog.at_level(logging.DEBUG):
            ok = await monitor.trigger_manual_check("good")
            denied = await monitor.trigger_manual_check("bad")
            await monitor.drain_notifications()
    finally:
        await monitor.stop_monitoring()
        await good.aclose()
        await bad.aclose()
        await owned.aclose()
        server.cleanup()
    assert ok.status == HEALTHY
    assert denied.status == UNHEALTHY
    seen = json.dumps([ok.to_dict(), denied.to_dict(), monitor.get_health_report()])
    seen += repr(monitor) + caplog.text + repr(RedisHealthChecker("x", good))
    assert password not in seen
    assert wrong not in seen


async def test_factory_builds_and_owns_a_client_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    """Without a client, XNAI_REDIS_URL is used and the checker closes what it opened."""
    monkeypatch.setenv("XNAI_REDIS_URL", private_redis.url)
    checker = create_redis_health_checker()
    first = await checker.check()
    await checker.aclose()
    second = await checker.check()  # reopens after aclose
    await checker.aclose()
    assert (first.status, second.status) == (HEALTHY, HEALTHY)
    assert first.details["url"] == private_redis.url


async def test_many_checks_share_one_connection(private_redis: PrivateRedis) -> None:
    """A run of checks uses the client's pool, not a connection per check."""
    client = aioredis.Redis.from_url(private_redis.url)
    checker = RedisHealthChecker("cache", client)
    for _ in range(20):
        assert (await checker.check()).status == HEALTHY
    clients = await client.client_list()
    await client.aclose()
    assert len(clients) == 1
    await asyncio.sleep(0)
