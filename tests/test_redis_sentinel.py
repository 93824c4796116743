"""Shared circuits and recovery coordination through a real Redis Sentinel failover.

A private topology (tests/sentinel_topology.py: a master, a replica, three sentinels on
free loopback ports), clients built as users build them
(``Sentinel([...]).master_for("mymaster")``), and the faults a failover brings: the master
killed, the last writes lost by asynchronous replication, a graceful ``SENTINEL
FAILOVER``, and a connection left on a demoted master (``READONLY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.recovery_services import close_replicas, restarting_replica, web_healthy_again
from tests.redis_helpers import REPO, Boom, boom, eventually, warnings_of
from tests.sentinel_topology import SERVICE, Relay, SentinelTopology
from tests.service_helpers import run_cli
from xnai_core import CircuitBreaker, CircuitOpenError, create_redis_circuit_breaker
from xnai_core._redis_url import client_from_url, parse_sentinel_url
from xnai_core.circuit.redis_store import RedisStore
from xnai_core.degradation import CacheEntry, RedisCache
from xnai_core.health import HealthStatus, RedisHealthChecker
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager
from xnai_core.service.config import ConfigError, parse_config

pytestmark = pytest.mark.slow

KEY = "xnai:cb:{svc}"
# Long enough that only messages and reconnects bring news in these tests, not a resync.
NO_RESYNC = 60.0


@pytest.fixture
async def topology() -> AsyncIterator[SentinelTopology]:
    found = SentinelTopology()
    try:
        found.start()
        yield found
    finally:
        await found.aclose_clients()
        found.stop()


async def hash_on(port: int, key: str = KEY) -> dict[str, str]:
    """The circuit's hash as the server on ``port`` holds it ({} if it does not answer)."""
    client = aioredis.Redis(port=port, decode_responses=True, socket_timeout=1)
    try:
        raw = await client.hgetall(key)
        return {str(k): str(v) for k, v in raw.items()}
    except (aioredis.RedisError, OSError):
        return {}
    finally:
        await client.aclose()


async def patterns_on(port: int) -> int:
    """How many connections hold a pattern subscription on the server on ``port``."""
    client = aioredis.Redis(port=port, socket_timeout=1)
    try:
        found = await client.client_list(_type="pubsub")
        return sum(1 for item in found if int(item.get("psub", 0)) > 0)
    except (aioredis.RedisError, OSError):
        return 0
    finally:
        await client.aclose()


async def _patterns(port: int, count: int) -> bool:
    return await patterns_on(port) == count


async def failover_to(topology: SentinelTopology, port: int) -> None:
    await asyncio.get_running_loop().run_in_executor(None, topology.wait_for_master, port)


def breaker_on(client: aioredis.Redis, **options: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "failure_threshold": 2,
        "recovery_timeout": 60,
        "op_timeout": 0.25,
        "resync_interval": NO_RESYNC,
    }
    return create_redis_circuit_breaker("svc", client, **{**settings, **options})


async def start(breaker: CircuitBreaker) -> None:
    store = breaker.store
    assert isinstance(store, RedisStore)
    await store.start()


def available(breaker: CircuitBreaker) -> bool:
    return bool(breaker.get_metrics()["redis_available"])


async def fail(breaker: CircuitBreaker) -> None:
    with contextlib.suppress(Boom, CircuitOpenError):
        await breaker.call(boom)


# -- real processes -------------------------------------------------------------------


class Worker:
    """tests/sentinel_worker.py in its own OS process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.sentinel_worker",
            json.dumps(spec),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        worker = cls(process)
        assert await worker.answer() == {"ready": True}
        return worker

    async def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line, "the worker died"
        found: dict[str, Any] = json.loads(line)
        return found

    async def ask(self, what: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"do": what}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.answer()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@pytest.fixture
async def workers(topology: SentinelTopology) -> AsyncIterator[list[Worker]]:
    spec = {
        "sentinels": topology.sentinel_ports,
        "service": SERVICE,
        "name": "svc",
        "prefix": "xnai:cb:",
        "config": {
            "failure_threshold": 3,
            "recovery_timeout": 60,
            "op_timeout": 0.25,
            "resync_interval": NO_RESYNC,
        },
    }
    started = await asyncio.gather(Worker.start(spec), Worker.start(spec))
    yield list(started)
    await asyncio.gather(*(worker.stop() for worker in started))


async def test_open_circuit_in_two_processes_outlives_the_master_killed(
    topology: SentinelTopology, workers: list[Worker]
) -> None:
    """Two processes hold the circuit open; the master is SIGKILLed and Sentinel promotes
    the replica. Meanwhile each rejects locally (no Redis error reaches a caller); then
    both come back on the new master, subscribed there, still agreeing it is open, and a
    change made by one reaches the other by message."""
    first, second = workers
    assert (await first.ask("trip"))["state"] == "open"
    await eventually(lambda: _state(second, "open"), timeout=5)
    # The opening reached the replica: this test is about the kill, not a lost write.
    await eventually(lambda: _field_on(topology.replica.port, "state", "open"), timeout=5)

    topology.master.kill()
    for worker in workers:
        await eventually(functools.partial(_unavailable, worker), timeout=10)
        assert (await worker.ask("call"))["outcome"] == "rejected"

    await failover_to(topology, topology.replica.port)
    for worker in workers:
        # Back within the reconnect backoff (capped at 5 s) of the new master answering.
        await eventually(functools.partial(_available, worker), timeout=15)
        state = await worker.ask("state")
        assert state["state"] == "open"
        assert state["redis_outages"] == 1
        assert (await worker.ask("call"))["outcome"] == "rejected"
    await eventually(lambda: _patterns(topology.replica.port, 2), timeout=10)
    assert (await hash_on(topology.replica.port))["state"] == "open"

    await first.ask("force_close")
    await eventually(lambda: _state(second, "closed"), timeout=3)
    assert (await second.ask("call"))["outcome"] == "ok"


async def _state(worker: Worker, state: str) -> bool:
    return bool((await worker.ask("state"))["state"] == state)


async def _available(worker: Worker) -> bool:
    return bool((await worker.ask("state"))["redis_available"])


async def _unavailable(worker: Worker) -> bool:
    return not await _available(worker)


async def _field_on(port: int, field: str, value: str) -> bool:
    return (await hash_on(port)).get(field) == value


# -- writes lost by asynchronous replication ------------------------------------------


@pytest.mark.parametrize("replica_had", ["no hash", "an older hash"])
async def test_opening_lost_by_async_replication_is_written_back(
    topology: SentinelTopology, caplog: pytest.LogCaptureFixture, replica_had: str
) -> None:
    """The circuit opens on the master, which dies before its replica received the
    opening; Sentinel promotes the replica, which holds no hash (or the hash as it was
    before the opening). Both processes held the circuit open: the loss is detected, not
    adopted. The opening is written back, with the state-loss WARNING, once per process."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    clients = [topology.master_client() for _ in range(2)]
    breakers = [breaker_on(client) for client in clients]
    first, second = breakers
    try:
        for breaker in breakers:
            await start(breaker)
        if replica_had == "an older hash":
            await fail(first)  # one failure below the threshold, replicated
            await eventually(lambda: _field_on(topology.replica.port, "failures", "1"))
        topology.relay.freeze()
        for _ in range(2):
            await fail(first)
        assert first.state.value == "open"
        await eventually(lambda: second.state.value == "open", timeout=5)
        on_replica = await hash_on(topology.replica.port)
        assert on_replica.get("state") in (None, "closed"), on_replica

        topology.master.kill()
        await failover_to(topology, topology.replica.port)
        await eventually(lambda: _field_on(topology.replica.port, "state", "open"), timeout=15)
        await eventually(lambda: all(available(b) for b in breakers), timeout=15)
        assert [b.state.value for b in breakers] == ["open", "open"]
        losses = [b.get_metrics()["redis_state_losses"] for b in breakers]
        lost = warnings_of(caplog, "lost the open circuit")
        assert max(losses) == 1, losses  # one per process that saw it, at least one
        assert len(lost) == sum(losses), lost
        for breaker in breakers:
            with pytest.raises(CircuitOpenError):
                await breaker.call(boom)
    finally:
        for breaker in breakers:
            await breaker.close()
        for client in clients:
            await client.aclose()


# -- a graceful failover and a connection left on the demoted master ---------------------


async def test_graceful_failover_splits_nothing_for_long(
    topology: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """SENTINEL FAILOVER promotes the replica at once but reconfigures the old master
    only at its next look (up to Sentinel's 10 s INFO period): meanwhile a process whose
    connections still point there writes to the old master, and a process that connected
    since writes to the new one. The circuit opened on the old master in that window is
    lost when it is demoted; the process that opened it writes it back on the new master,
    and both processes end up agreeing, subscribed on the new master."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    old, new = topology.master.port, topology.replica.port
    early = topology.master_client()
    opener = breaker_on(early)
    late_client: aioredis.Redis | None = None
    late: CircuitBreaker | None = None
    sentinel = aioredis.Redis(port=topology.sentinel_ports[0])
    try:
        await start(opener)
        await sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)  # type: ignore[no-untyped-call]
        await eventually(lambda: topology.master_port() == new, timeout=10)
        late_client = topology.master_client()
        late = breaker_on(late_client)
        await start(late)
        await eventually(lambda: available(late), timeout=5)
        for _ in range(2):
            await fail(opener)  # on the old master, still a master for now
        assert opener.state.value == "open"
        assert (await hash_on(new)).get("state") in (None, "closed")

        # Sentinel demotes the old master and cuts its clients: all of them move.
        await eventually(lambda: topology.info(old).get("role") == "slave", timeout=20)
        await eventually(lambda: _field_on(new, "state", "open"), timeout=15)
        await eventually(lambda: late.state.value == "open", timeout=10)
        await eventually(lambda: available(opener) and available(late), timeout=10)
        await eventually(lambda: _patterns(new, 2), timeout=10)
        assert await patterns_on(old) == 0
        assert warnings_of(caplog, "lost the open circuit")
        with pytest.raises(CircuitOpenError):
            await late.call(boom)
    finally:
        await opener.close()
        if late is not None:
            await late.close()
        for client in (early, late_client, sentinel):
            if client is not None:
                await client.aclose()


class MovedEndpoint:
    """A master and its replica behind one address that moves on failover, as a managed
    Redis's primary endpoint does: connections made before the failover stay on the old
    node, which becomes a replica (``READONLY`` for writes)."""

    def __init__(self) -> None:
        self.old = PrivateRedis(extra_args=("--repl-diskless-sync-delay", "0"))
        self.old.start()
        self.new = PrivateRedis(extra_args=("--replicaof", "127.0.0.1", str(self.old.port)))
        self.new.start()
        self.endpoint = Relay(self.old.port)

    async def synced(self) -> bool:
        client = aioredis.Redis(port=self.new.port, decode_responses=True)
        try:
            return bool((await client.info("replication"))["master_link_status"] == "up")
        finally:
            await client.aclose()

    async def fail_over(self) -> None:
        for port, args in (
            (self.new.port, ("NO", "ONE")),
            (self.old.port, ("127.0.0.1", self.new.port)),
        ):
            client = aioredis.Redis(port=port)
            try:
                await client.execute_command("REPLICAOF", *args)  # type: ignore[no-untyped-call]
            finally:
                await client.aclose()
            if port == self.new.port:
                self.endpoint.target_port = self.new.port

    def stop(self) -> None:
        self.endpoint.close()
        self.new.cleanup()
        self.old.cleanup()


@pytest.fixture
async def moved() -> AsyncIterator[MovedEndpoint]:
    found = MovedEndpoint()
    try:
        await eventually(found.synced, timeout=10)
        yield found
    finally:
        found.stop()


async def test_readonly_from_a_demoted_master_is_one_outage_then_the_new_master(
    moved: MovedEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A pooled connection still on the demoted master answers every script READONLY:
    Redis away for now (one WARNING, nothing reaches the caller), and the reconnect must
    reach the new master. Before: the pooled connection was kept, reads on the replica
    passed for a reconnect, and every failure report met READONLY again: an outage per
    call, and a dependency failing call after call never opened the circuit."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    client = aioredis.Redis(port=moved.endpoint.port)
    breaker = breaker_on(client, failure_threshold=3)
    try:
        await start(breaker)
        await fail(breaker)
        await eventually(lambda: _field_on(moved.new.port, "failures", "1"))
        await moved.fail_over()
        for _ in range(6):
            await fail(breaker)
            await asyncio.sleep(0.2)
        await eventually(lambda: available(breaker), timeout=10)
        assert breaker.state.value == "open"
        assert (await hash_on(moved.new.port))["state"] == "open"
        assert breaker.get_metrics()["redis_outages"] == 1
        assert len(warnings_of(caplog, "redis unreachable")) == 1
    finally:
        await breaker.close()
        await client.aclose()


async def test_coordinator_leaves_a_demoted_master_for_the_new_one(
    moved: MovedEndpoint,
) -> None:
    """The recovery coordinator's pooled connection on the demoted master: the call that
    meets READONLY answers "Redis away" (None), the next reaches the new master. Before:
    every call met READONLY, and every replica acted alone for as long as the pool lived."""
    client = aioredis.Redis(port=moved.endpoint.port)
    coordinator = RecoveryCoordinator(client, key_prefix="sentinel", timeout=1.0)
    try:
        assert await coordinator.acquire("web", 30) is True
        await coordinator.release("web")
        await moved.fail_over()
        found = [await coordinator.acquire("web", 30) for _ in range(3)]
        assert found[0] is None
        assert found[1:] == [True, True]
        direct = aioredis.Redis(port=moved.new.port)
        try:
            assert await direct.exists(coordinator.lease_key("web")) == 1
        finally:
            await direct.aclose()
    finally:
        await client.aclose()


async def test_redis_cache_leaves_a_demoted_master_for_the_new_one(
    moved: MovedEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The degradation's Redis cache, its pooled connection left on the demoted master: the
    write that meets READONLY is one outage (one WARNING), and once its probe answers the
    cache writes to the new master. Before: the probe's PING passed on the replica, the
    next write met READONLY again, and no entry ever reached the new master."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    client = aioredis.Redis(port=moved.endpoint.port)
    cache = RedisCache(
        client, prefix="sentinel:cache:", probe_interval=0.05, probe_max_interval=0.2
    )
    direct = aioredis.Redis(port=moved.new.port)
    try:
        await cache.set("before", CacheEntry("a", 1.0), keep_for=60)
        await moved.fail_over()

        async def written() -> bool:
            await cache.set("after", CacheEntry("b", 2.0), keep_for=60)
            return bool(await direct.exists("sentinel:cache:after"))

        await eventually(written, timeout=10, poll=0.1)
        assert await cache.get("after") == CacheEntry("b", 2.0)
        unavailable = [r for r in caplog.records if "redis cache unavailable" in r.getMessage()]
        assert len(unavailable) == 1
    finally:
        await cache.aclose()
        await client.aclose()
        await direct.aclose()


# -- redis+sentinel:// URLs (the service's redis_url, the command's --redis-url) ---------


def sentinel_url(topology: SentinelTopology, auth: str = "") -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in topology.sentinel_ports)
    return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"


async def test_sentinel_url_client_follows_a_failover(topology: SentinelTopology) -> None:
    """A client built from a redis+sentinel:// URL finds the master through the sentinels,
    finds the new one after a failover, and closes the sentinels' connections with it
    (the suite fails on any unclosed socket)."""
    client = client_from_url(sentinel_url(topology), socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.set("sentinel:url", "before")
        await eventually(lambda: _value_on(topology.replica.port, "before"), timeout=5)
        topology.master.kill()
        await failover_to(topology, topology.replica.port)

        async def written() -> bool:
            try:
                await client.set("sentinel:url", "after")
            except aioredis.RedisError:
                return False
            return True

        await eventually(written, timeout=15, poll=0.1)
        assert await _value_on(topology.replica.port, "after")
    finally:
        await client.aclose()


async def _value_on(port: int, value: str) -> bool:
    client = aioredis.Redis(port=port, decode_responses=True, socket_timeout=1)
    try:
        return bool(await client.get("sentinel:url") == value)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:hunter2secret@h1:26379", "service name"),
        ("redis+sentinel://:hunter2secret@h1:99999/mymaster", "port from 1 to 65535"),
        ("redis+sentinel://:hunter2secret@h1:26379,/mymaster", "host[:port]"),
        ("redis+sentinel://:hunter2secret@h1/mymaster/x", "must be a number"),
        ("redis+sentinel://:hunter2secret@h1/mymaster?password=x", "no query"),
    ],
)
def test_sentinel_url_refused_with_its_password_masked(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as caught:
        parse_sentinel_url(url)
    assert "hunter2secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="redis_url") as refused:
        parse_config({"redis_url": url})
    assert "hunter2secret" not in str(refused.value)


def test_sentinel_url_taken_apart() -> None:
    parsed = parse_sentinel_url("redis+sentinel://me:p%40ss@a:1,[::1],b/my%20master/3")
    assert parsed.sentinels == (("a", 1), ("::1", 26379), ("b", 26379))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "my master",
        3,
        "me",
        "p@ss",
    )
    assert "p@ss" not in repr(parsed)
    config = parse_config({"redis_url": "redis+sentinel://a:1,b:2/mymaster"})
    assert config.redis_url == "redis+sentinel://a:1,b:2/mymaster"


async def test_redis_health_check_through_the_sentinels(topology: SentinelTopology) -> None:
    """A ``redis`` health check given a redis+sentinel:// URL checks the master."""
    shown = RedisHealthChecker("redis", url=sentinel_url(topology, auth=":hunter2secret@"))
    assert "hunter2secret" not in str(shown.describe())
    await shown.aclose()
    checker = RedisHealthChecker("redis", url=sentinel_url(topology))
    try:
        result = await checker.check()
        assert result.status is HealthStatus.HEALTHY, result
        assert result.details["role"] == "master"
    finally:
        await checker.aclose()


async def test_cli_opens_a_circuit_through_the_sentinels(topology: SentinelTopology) -> None:
    """``xnai-core circuits open --redis-url redis+sentinel://...`` writes on the master."""
    loop = asyncio.get_running_loop()
    ran = await loop.run_in_executor(
        None,
        functools.partial(
            run_cli,
            "circuits", "open", "svc", "--redis-url", sentinel_url(topology),
            "--yes", "--create", "--json",
        ),
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert (await hash_on(topology.master.port))["state"] == "open"


# -- recovery coordination through a failover -----------------------------------------


def _replica(
    who: str, client: aioredis.Redis, restarts: list[str], *, grace: float, backoff: float
) -> RecoveryManager:
    return restarting_replica(
        who,
        RecoveryCoordinator(client, key_prefix="sentinel", timeout=0.5),
        restarts,
        verify_interval=0.1,
        max_attempts=2,
        backoff_base=backoff,
        backoff_max=backoff,
        grace_period=grace,
        stable_period=60.0,
    )


def _web(manager: RecoveryManager) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = manager.get_recovery_stats()["services"]  # type: ignore[assignment]
    return services["web"]


@pytest.mark.parametrize("peer_saw", ["the lease", "the settle record"])
async def test_one_restart_for_one_outage_through_a_failover(
    topology: SentinelTopology, peer_saw: str
) -> None:
    """Two replicas; the holder has restarted the service; the master is killed and
    Sentinel fails over while the peer still sees the service down. The peer restarts
    nothing.

    - "the lease": the holder's restart failed and it waits out its backoff, holding the
      lease (its settle record's window is over). While Redis is away the peer honours
      the lease it last saw, until that lease would have ended; after the failover it
      sees it again. Before: the peer's first look with Redis away acted alone.
    - "the settle record": the holder waits out its grace period; its lease and record
      never reached the replica (replication frozen), so the new master has neither. The
      peer saw the record and honours it on its own clock (docs/recovery.md).
    """
    restarts: list[str] = []
    clients = [topology.master_client() for _ in range(2)]
    grace, backoff = (0.5, 30.0) if peer_saw == "the lease" else (12.0, 0.1)
    holder, peer = (
        _replica(who, client, restarts, grace=grace, backoff=backoff)
        for who, client in zip(("holder", "peer"), clients, strict=True)
    )
    try:
        if peer_saw == "the settle record":
            topology.relay.freeze()  # the holder's lease and record never reach the replica
        await holder.on_status_change("web", "healthy", "unhealthy", None)
        await eventually(lambda: restarts == ["holder"], timeout=10)
        await peer.on_status_change("web", "healthy", "unhealthy", None)
        await eventually(lambda: _web(peer)["deferred_to_peer"] == 1, timeout=10)
        if peer_saw == "the lease":
            # The holder's attempt failed: it backs off, holding the lease; the peer's
            # view of its settle record (1.5 s window, 0.1 s lag) runs out meanwhile.
            await eventually(lambda: _web(holder)["failures"] == 1, timeout=10)
            await asyncio.sleep(2.0)
        topology.master.kill()
        await failover_to(topology, topology.replica.port)
        # Past the failover: the peer has looked again (Redis away, then the new master).
        await asyncio.sleep(1.0)
        assert restarts == ["holder"]
        await web_healthy_again((holder, peer), timeout=10)
        assert restarts == ["holder"]
    finally:
        await close_replicas((holder, peer), clients)
