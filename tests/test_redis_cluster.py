"""The Redis-backed circuit on a 3-node Redis Cluster on loopback (cluster-replicas 0).

The cluster is started once for this module (redis-server --cluster-enabled yes on
free ports, formed by redis-cli --cluster create) and torn down after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.redis_helpers import (
    LoopbackCluster,
    client_maker,
    command_counts,
    commands_between,
    run_together,
)
from tests.test_redis_stateful import run_twins
from xnai_core import (
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    RedisStore,
    create_redis_circuit_breaker,
)

pytestmark = pytest.mark.slow


class Clock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    nodes = LoopbackCluster()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def prefix() -> str:
    return f"xnai-test-{uuid.uuid4().hex[:10]}:cb:"


@pytest.fixture
async def clients(cluster: LoopbackCluster) -> AsyncIterator[Callable[..., aioredis.RedisCluster]]:
    """New cluster clients, one per simulated process."""
    async with client_maker(cluster.client) as make:
        yield make


@pytest.fixture
async def stores(
    clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> AsyncIterator[Callable[..., RedisStore]]:
    made: list[RedisStore] = []

    def make(config: CircuitBreakerConfig, **kwargs: Any) -> RedisStore:
        # A cluster client's first connection (CLUSTER SLOTS on every node) takes
        # 100-300 ms on a busy machine: more than the default first call's deadline.
        kwargs.setdefault("op_timeout", 2.0)
        store = RedisStore(config, clients(), key_prefix=prefix, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def names_on_every_node(cluster: LoopbackCluster, prefix: str) -> list[str]:
    """One circuit name per node: their hash-tagged keys land in each node's slots."""
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]  # redis-cli's split for 3 nodes
    found: dict[int, str] = {}
    index = 0
    while len(found) < len(ranges):
        name = f"svc-{index}"
        slot = key_slot(f"{prefix}{{{name}}}".encode())
        for node, (low, high) in enumerate(ranges):
            if low <= slot <= high:
                found.setdefault(node, name)
        index += 1
    return [found[node] for node in range(len(ranges))]


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def test_trip_propagates_for_circuits_on_every_node(
    cluster: LoopbackCluster, stores: Callable[..., RedisStore], prefix: str
) -> None:
    """Scripts route to the key's node; PUBLISH reaches a subscriber on any node."""
    for name in names_on_every_node(cluster, prefix):
        cfg = CircuitBreakerConfig(name=name, failure_threshold=2, recovery_timeout=30)
        a, b = stores(cfg), stores(cfg, resync_interval=3600)
        await b.start()
        assert (a.available, b.available) == (False, True)
        for _ in range(2):
            admission = await a.acquire()
            assert admission.ticket is not None
            await a.record_failure(admission.ticket)
        await eventually(lambda b=b: b.snapshot().state is CircuitState.OPEN)  # type: ignore[misc]
        assert (await b.acquire()).ticket is None
        await b.force(CircuitState.CLOSED)
        await eventually(lambda a=a: a.hot_epoch is not None)  # type: ignore[misc]


async def test_concurrent_failures_open_at_exactly_the_threshold(
    stores: Callable[..., RedisStore], clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> None:
    """4 clients x 10 concurrent failures against a threshold of 25: 25 counted, one trip."""
    cfg = CircuitBreakerConfig(name="exact", failure_threshold=25, recovery_timeout=60)
    many = [stores(cfg) for _ in range(4)]
    for store in many:
        await store.start()
    epoch = many[0].snapshot().epoch

    async def fail(store: RedisStore) -> None:
        admission = await store.acquire()
        if admission.ticket is not None:
            await store.record_failure(admission.ticket)

    await asyncio.gather(*(fail(store) for store in many for _ in range(10)))
    stored = await clients(decode_responses=True).hgetall(many[0].key)
    assert (stored["state"], stored["failures"], int(stored["epoch"])) == ("open", "25", epoch + 1)


async def test_half_open_permits_and_leases(stores: Callable[..., RedisStore]) -> None:
    """Permits are shared by every client, and a lost trial's lease expires."""
    clock = Clock()
    cfg = CircuitBreakerConfig(
        name="permits", failure_threshold=1, recovery_timeout=5, half_open_max_calls=2,
        half_open_lease=10, timeout=6,
    )  # fmt: skip
    many = [stores(cfg, clock=clock) for _ in range(3)]
    for store in many:
        await store.start()
    admission = await many[0].acquire()
    assert admission.ticket is not None
    await many[0].record_failure(admission.ticket)
    await eventually(lambda: all(s.snapshot().state is CircuitState.OPEN for s in many))
    clock.now += 5
    answers = await asyncio.gather(*(s.acquire() for s in many for _ in range(5)))
    assert sorted(a.ticket.permit for a in answers if a.ticket is not None) == [1, 2]
    clock.now += 10
    later = await many[2].acquire()
    assert later.ticket is not None
    assert later.ticket.permit == 3


async def test_state_survives_a_new_client(
    stores: Callable[..., RedisStore], clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> None:
    """A process started later finds the circuit open, and a malformed hash is reset."""
    cfg = CircuitBreakerConfig(name="kept", failure_threshold=1, recovery_timeout=60)
    first = stores(cfg)
    admission = await first.acquire()
    assert admission.ticket is not None
    await first.record_failure(admission.ticket)
    later = stores(cfg)
    assert (await later.acquire()).ticket is None
    await clients().hset(later.key, "failures", "many")
    assert await later.sync()
    assert later.snapshot().state is CircuitState.CLOSED


async def test_successful_calls_send_no_commands(
    cluster: LoopbackCluster, clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> None:
    """10,000 successful calls: no command reaches any node."""
    nodes = [aioredis.Redis(host=host, port=port) for host, port in cluster.startup_nodes]
    breaker = create_redis_circuit_breaker("hot", clients(), key_prefix=prefix)

    async def ok() -> str:
        return "ok"

    async def totals() -> dict[str, int]:
        merged: dict[str, int] = {}
        for node in nodes:
            for name, calls in (await command_counts(node)).items():
                merged[name] = merged.get(name, 0) + calls
        return merged

    try:
        assert await breaker.call(ok) == "ok"
        await asyncio.sleep(0.05)
        before = await totals()
        for _ in range(10_000):
            await breaker.call(ok)
        sent = commands_between(before, await totals())
        assert sum(sent.values()) < 100, sent
    finally:
        await breaker.close()
        for node in nodes:
            await node.aclose()


async def test_processes_share_one_circuit_on_the_cluster(
    cluster: LoopbackCluster, clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> None:
    """4 OS processes fail at once on the cluster; then 4 probe in half-open: 1 trial in all."""
    admin = clients(decode_responses=True)
    nodes = [list(node) for node in cluster.startup_nodes]
    base = {"cluster": nodes, "prefix": prefix, "name": "procs"}
    config = {"failure_threshold": 12, "recovery_timeout": 0.5, "half_open_max_calls": 1}
    results = await run_together(
        admin, [{**base, "scenario": "fail", "config": config, "rounds": [5]}] * 4
    )
    assert sum(r["failed"] + r["rejected"] for r in results) == 20
    key = f"{prefix}{{procs}}"
    stored = await admin.hgetall(key)
    assert (stored["state"], stored["failures"]) == ("open", "12")

    await asyncio.sleep(0.55)
    orders = {**base, "scenario": "half_open", "config": config, "count": 10, "hold": 0.2}
    results = await run_together(admin, [orders] * 4)
    assert sum(r["trials"] for r in results) == 1
    assert (await admin.hget(key, "state")) == "closed"


async def test_breaker_rejects_after_a_trip_in_another_client(
    clients: Callable[..., aioredis.RedisCluster], prefix: str
) -> None:
    """The seed's factory on a RedisCluster client, end to end."""
    made = [
        create_redis_circuit_breaker("e2e", clients(), failure_threshold=1, key_prefix=prefix)
        for _ in range(2)
    ]

    async def ok() -> str:
        return "ok"

    async def boom() -> None:
        raise RuntimeError("down")

    try:
        assert await made[1].call(ok) == "ok"
        with pytest.raises(RuntimeError):
            await made[0].call(boom)
        await eventually(lambda: made[1].state is CircuitState.OPEN)
        with pytest.raises(CircuitOpenError):
            await made[1].call(ok)
        assert made[1].get_metrics()["redis_available"] is True
    finally:
        for breaker in made:
            await breaker.close()


def test_memory_and_cluster_stores_decide_alike(cluster: LoopbackCluster) -> None:
    """The hypothesis twin machine (test_redis_stateful.py) against the cluster."""
    run_twins(cluster.client, max_examples=30)
