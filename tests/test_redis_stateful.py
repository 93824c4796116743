"""MemoryStore and RedisStore driven by the same steps on one clock: the same decision every time.

Hypothesis picks the steps (calls admitted, results reported late or twice-removed,
forced states, resets, the clock moving); both stores must admit, reject, hand out
permits and move between states identically. The same machine runs against the
Redis Cluster in test_redis_cluster.py, and through the fault proxy with a step that
drops the next reply of a script after Redis ran it (redis-py's default retry on).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import SHARED_REDIS_URL, PrivateRedis
from tests.fault_proxy import FaultProxy, replies_to_script
from xnai_core import CircuitBreakerConfig, CircuitState, MemoryStore, RedisStore
from xnai_core.circuit import redis_scripts
from xnai_core.circuit.machine import Admission, Snapshot, Ticket

T = TypeVar("T")
PREFIX = "xnai-test-twins:cb:"
ClientFactory = Callable[[], "aioredis.Redis | aioredis.RedisCluster"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def same_admission(memory: Admission, shared: Admission) -> None:
    assert (memory.ticket is None) == (shared.ticket is None)
    if memory.ticket is not None and shared.ticket is not None:
        assert memory.ticket.permit == shared.ticket.permit
    if memory.retry_after is None or shared.retry_after is None:
        assert memory.retry_after == shared.retry_after
    else:
        assert math.isclose(memory.retry_after, shared.retry_after, abs_tol=1e-6)


def comparable(snap: Snapshot, now: float) -> tuple[Any, ...]:
    """What must agree: everything but epoch numbering (Redis starts on its own scale)."""
    live = tuple(
        sorted((permit, round(expiry, 6)) for permit, expiry in snap.trials if expiry > now)
    )
    opened_at = round(snap.opened_at, 6) if snap.state is not CircuitState.CLOSED else 0.0
    return (
        snap.state,
        snap.failure_count,
        opened_at,
        live,
        snap.half_open_successes,
        snap.forced,
        snap.next_permit,
    )


class Twins(RuleBasedStateMachine):
    """One MemoryStore, one RedisStore, one clock, the same steps.

    The event loop and the client are the run's (see :func:`run_twins`), so an
    example costs one store and one round trip to set up: shrinking stays quick.
    """

    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis | aioredis.RedisCluster

    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.config = CircuitBreakerConfig(
            name=f"twin-{uuid.uuid4().hex[:10]}",
            failure_threshold=2,
            recovery_timeout=4,
            half_open_max_calls=2,
            half_open_lease=6,
            timeout=None,
        )
        self.memory = MemoryStore(self.config, clock=self.clock)
        self.shared = RedisStore(
            self.config, self.client, key_prefix=PREFIX, clock=self.clock, op_timeout=5.0
        )
        self.run(self.shared.start())
        for _ in range(100):  # bounded: a loaded machine may be slower than op_timeout
            if self.shared.available:
                break
            self.run(asyncio.sleep(0.05))
        assert self.shared.available, "the Redis store could not sync"
        self.epochs = (self.memory.snapshot().epoch, self.shared.snapshot().epoch)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        async def close() -> None:
            await self.shared.close()
            await self.client.delete(self.shared.key)

        self.run(close())

    @rule(target=tickets)
    def acquire(self) -> Any:
        memory = self.run(self.memory.acquire())
        shared = self.run(self.shared.acquire())
        same_admission(memory, shared)
        if memory.ticket is None or shared.ticket is None:
            return multiple()
        return (memory.ticket, shared.ticket)

    @rule(fails=st.booleans())
    def call(self, fails: bool) -> None:
        """A whole call, as the breaker makes it: admitted, then reported at once."""
        memory = self.run(self.memory.acquire())
        shared = self.run(self.shared.acquire())
        same_admission(memory, shared)
        if memory.ticket is not None and shared.ticket is not None:
            if fails:
                self.run(self.memory.record_failure(memory.ticket))
                self.run(self.shared.record_failure(shared.ticket))
            else:
                self.run(self.memory.record_success(memory.ticket))
                self.run(self.shared.record_success(shared.ticket))

    @rule(pair=consumes(tickets))
    def succeed(self, pair: tuple[Ticket, Ticket]) -> None:
        self.run(self.memory.record_success(pair[0]))
        self.run(self.shared.record_success(pair[1]))

    @rule(pair=consumes(tickets))
    def fail(self, pair: tuple[Ticket, Ticket]) -> None:
        self.run(self.memory.record_failure(pair[0]))
        self.run(self.shared.record_failure(pair[1]))

    @rule(pair=consumes(tickets))
    def release(self, pair: tuple[Ticket, Ticket]) -> None:
        self.run(self.memory.release(pair[0]))
        self.run(self.shared.release(pair[1]))

    @rule(state=st.sampled_from(list(CircuitState)))
    def force(self, state: CircuitState) -> None:
        self.run(self.memory.force(state))
        self.run(self.shared.force(state))

    @rule()
    def reset(self) -> None:
        self.run(self.memory.reset())
        self.run(self.shared.reset())

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.5, 4.0, 6.0]))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def resync(self) -> None:
        """Re-reading Redis changes nothing: the mirror was already the truth."""
        assert self.run(self.shared.sync())

    @invariant()
    def same_circuit(self) -> None:
        memory, shared = self.memory.snapshot(), self.shared.snapshot()
        now = self.clock.now
        assert comparable(memory, now) == comparable(shared, now)
        assert (self.memory.hot_epoch is None) == (self.shared.hot_epoch is None)
        assert self.shared.available
        moved = (memory.epoch != self.epochs[0], shared.epoch != self.epochs[1])
        assert moved[0] == moved[1]
        self.epochs = (memory.epoch, shared.epoch)


class TwinsWithDrops(Twins):
    """The twins, where a step may arm the loss of the next reply of one script: Redis
    runs it, the connection closes instead of answering, and the client's retry policy
    (redis-py's default) does what it does. The stores must still agree at every step."""

    proxy: FaultProxy
    SHAS: ClassVar[dict[str, str]] = {
        name: hashlib.sha1(getattr(redis_scripts, name.upper()).encode()).hexdigest()
        # Not READ: the link's background resync runs it too, at times of its own.
        for name in ("admit", "success", "failure", "release", "force", "reset")
    }

    def __init__(self) -> None:
        self.proxy.heal()  # nothing armed by the previous example
        super().__init__()

    @rule(script=st.sampled_from(sorted(SHAS)))
    def drop_next_reply(self, script: str) -> None:
        self.proxy.heal()
        self.proxy.drop_replies(replies_to_script(self.SHAS[script]))

    @invariant()
    def same_circuit(self) -> None:
        # A lost reply may cost the store a reconnect: give it that (bounded), then compare.
        for _ in range(100):
            if self.shared.available:
                break
            self.run(asyncio.sleep(0.05))
        super().same_circuit()


def run_twins(
    make_client: ClientFactory,
    max_examples: int,
    machine_class: type[Twins] = Twins,
    around: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]] | None = None,
    **attributes: Any,
) -> None:
    """Run ``machine_class`` on one loop with one client from ``make_client`` (called on
    that loop); ``around`` runs first and last on that loop (start and stop a proxy);
    ``attributes`` are set on the machine class."""
    loop = asyncio.new_event_loop()

    async def setup() -> tuple[aioredis.Redis | aioredis.RedisCluster, RedisStore]:
        if around is not None:
            await around[0]()
        client = make_client()
        # Holds the client's link (subscription, loaded scripts) open between examples.
        keeper = RedisStore(CircuitBreakerConfig(name="keeper"), client, key_prefix=PREFIX)
        await keeper.start()
        return client, keeper

    client, keeper = loop.run_until_complete(setup())
    machine = type(
        f"{machine_class.__name__}On",
        (machine_class,),
        {"loop": loop, "client": client, **attributes},
    )
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
    finally:

        async def close() -> None:
            await keeper.close()
            await client.delete(keeper.key)
            await client.aclose()
            if around is not None:
                await around[1]()

        loop.run_until_complete(close())
        loop.close()


def test_memory_and_redis_stores_decide_alike() -> None:
    """Same steps, same clock: MemoryStore and RedisStore agree at every step."""
    run_twins(lambda: aioredis.Redis.from_url(SHARED_REDIS_URL), max_examples=100)


@pytest.mark.parametrize("decode", [True])
def test_decoded_responses_decide_alike(decode: bool) -> None:
    """The same with a client that decodes responses to str."""
    run_twins(
        lambda: aioredis.Redis.from_url(SHARED_REDIS_URL, decode_responses=decode),
        max_examples=10,
    )


@pytest.mark.slow
def test_the_stores_decide_alike_when_replies_are_lost(private_redis: PrivateRedis) -> None:
    """Through the fault proxy, with replies of the scripts lost after Redis ran them."""
    proxy = FaultProxy(private_redis.port)
    run_twins(
        lambda: aioredis.Redis(host="127.0.0.1", port=proxy.port),
        max_examples=30,
        machine_class=TwinsWithDrops,
        around=(proxy.start, proxy.aclose),
        proxy=proxy,
    )
