"""Redis health checks against real servers: the shared one, and private ones we break."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis, free_port
from tests.redis_helpers import LoopbackCluster
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


async def test_checker_alone_times_out_on_a_paused_server(private_redis: PrivateRedis) -> None:
    """Without a monitor, check() itself gives up after the checker's timeout, then recovers."""
    client = aioredis.Redis.from_url(private_redis.url)  # no socket timeout of its own
    checker = RedisHealthChecker("cache", client, timeout=0.3)
    try:
        assert (await checker.check()).status == HEALTHY
        private_redis.pause()
        try:
            async with asyncio.timeout(5):
                hung = await checker.check()
        finally:
            private_redis.resume()
        again = await checker.check()
    finally:
        private_redis.resume()
        await client.aclose()
    assert (hung.status, hung.error) == (UNHEALTHY, "timed out after 0.3s")
    assert 0.3 <= hung.response_time < 1.0
    assert hung.details["address"] == f"127.0.0.1:{private_redis.port}"
    assert again.status == HEALTHY


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


@pytest.fixture
def single_node_cluster() -> Iterator[PrivateRedis]:
    """A private one-node Redis Cluster (all 16384 slots on it), on free loopback ports."""
    server = PrivateRedis()
    server.extra_args = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(server.workdir / "nodes.conf"),
        "--cluster-port",
        str(free_port()),
    )
    server.start()
    try:
        with redis.Redis(port=server.port) as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while admin.cluster("INFO")["cluster_state"] != "ok":
                assert time.monotonic() < deadline, "the one-node cluster did not become ok"
                time.sleep(0.05)
        yield server
    finally:
        server.cleanup()


async def test_redis_cluster_client_is_checked(
    single_node_cluster: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A RedisCluster client works: PING + INFO, its nodes in details, its password hidden."""
    password, wrong = "cl-s3cret-pw", "cl-wr0ng-pw"
    port = single_node_cluster.port
    with redis.Redis(port=port) as admin:
        admin.config_set("requirepass", password)
    good = aioredis.RedisCluster(host="127.0.0.1", port=port, password=password)
    bad = aioredis.RedisCluster(host="127.0.0.1", port=port, password=wrong)
    monitor = HealthMonitor(check_interval=1.0, failure_threshold=1)
    monitor.add_checker(create_redis_health_checker(good, name="cluster"))
    monitor.add_checker(RedisHealthChecker("denied", bad, timeout=1.0))
    try:
        with caplog.at_level(logging.DEBUG):
            ok = await monitor.trigger_manual_check("cluster")
            denied = await monitor.trigger_manual_check("denied")
            await monitor.drain_notifications()
    finally:
        await monitor.stop_monitoring()
        await good.aclose()
        await bad.aclose()
    assert (ok.status, ok.error) == (HEALTHY, None)
    assert ok.details["cluster_nodes"] == [f"127.0.0.1:{port}"]
    assert ok.details["role"] == "master"
    assert isinstance(ok.details["connected_clients"], int)
    assert denied.status == UNHEALTHY
    seen = json.dumps([ok.to_dict(), denied.to_dict(), monitor.get_health_report()])
    seen += json.dumps(monitor.get_health_json()) + caplog.text
    seen += repr(RedisHealthChecker("x", good)) + repr(RedisHealthChecker("y", bad))
    assert password not in seen
    assert wrong not in seen


async def test_redis_cluster_with_a_stuck_primary_is_unhealthy() -> None:
    """PING goes to every primary: one that stops answering fails the cluster's check."""
    cluster = LoopbackCluster()
    try:
        cluster.start()
        client = cluster.client()
        checker = RedisHealthChecker("cluster", client, timeout=0.5)
        try:
            ok = await checker.check()
            victim = next(
                process
                for port, process in zip(cluster.ports, cluster.processes, strict=True)
                if f"127.0.0.1:{port}" != client.get_default_node().name
            )
            victim.send_signal(signal.SIGSTOP)  # not the node INFO is read from
            try:
                stuck = await checker.check()
            finally:
                victim.send_signal(signal.SIGCONT)
            again = await checker.check()
        finally:
            await client.aclose()
    finally:
        cluster.stop()
    assert (ok.status, ok.error) == (HEALTHY, None)
    assert ok.details["cluster_nodes"] == sorted(f"127.0.0.1:{p}" for p in cluster.ports)
    assert (stuck.status, stuck.error) == (UNHEALTHY, "timed out after 0.5s")
    assert again.status == HEALTHY
