"""The shared circuit's config bounds (issue 10, findings 8, 12, 13, 14), against real Redis.

- 8: a half-open lease outlasts its trial's timeout by a documented margin, so a slow link
  cannot free a permit while its trial still runs;
- 12: ``half_open_max_calls`` has a cap, and no script deletes the hash before it can write
  it (Lua's ``unpack`` fails beyond a few thousand values);
- 13: ``RedisConnectionManager`` hands redis-py a fractional ``health_check_interval`` whole;
- 14: durations too large for the Redis scripts are refused by the config, naming the
  setting, and the largest accepted ones work in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis
from tests.fault_proxy import FaultProxy, replies_to
from xnai_core import (
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    RedisConnectionManager,
    RedisStore,
    create_redis_circuit_breaker,
)
from xnai_core.circuit.config import (
    LEASE_MARGIN,
    MAX_HALF_OPEN_CALLS,
    MAX_SECONDS,
    lease_margin,
)
from xnai_core.circuit.machine import Ticket


class Boom(Exception):
    """The protected dependency failed."""


async def boom() -> None:
    raise Boom


async def ok() -> str:
    return "ok"


async def synced(store: RedisStore) -> None:
    """Start ``store`` and wait (bounded) until it is in step with Redis: a loaded machine
    may need longer than its op_timeout."""
    await store.start()
    for _ in range(200):
        if store.available:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the store could not sync with Redis")


@pytest.fixture
async def shared() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    yield client
    await client.aclose()


# -- finding 8: the lease outlasts the trial ----------------------------------------


def test_a_lease_no_longer_than_the_timeout_is_refused() -> None:
    """Equal to the timeout used to be accepted: the trial then outlived its permit."""
    with pytest.raises(ValueError, match=r"'half_open_lease' must be >= 'timeout' \+ 1 s \(6\): 5"):
        CircuitBreakerConfig(timeout=5, half_open_lease=5)
    assert CircuitBreakerConfig(timeout=5, half_open_lease=5 + LEASE_MARGIN).lease_seconds == 6


def test_the_redis_margin_covers_two_op_timeouts() -> None:
    """A store that may wait op_timeout for the admission and again for the report."""
    client = aioredis.Redis()
    with pytest.raises(ValueError, match=r"'half_open_lease' must be >= 'timeout' \+ 2 x 'op_t"):
        create_redis_circuit_breaker("svc", client, timeout=5, half_open_lease=7, op_timeout=1.5)
    # The default lease grows to fit instead.
    breaker = create_redis_circuit_breaker(
        "svc", client, timeout=5, recovery_timeout=0.5, op_timeout=1.5
    )
    assert breaker.config.lease_seconds == 5 + 3.0
    assert lease_margin(0.25) == LEASE_MARGIN


def test_a_store_built_by_hand_refuses_a_lease_shorter_than_its_round_trips() -> None:
    """RedisStore is public (CircuitBreaker(config, store=RedisStore(config, client, ...))):
    it holds the same bound as the factory. It accepted any lease the config allowed
    (timeout + 1 s), so with op_timeout 1.5 s a trial slow to be admitted and reported
    outlived its permit and one more trial was let in."""
    client = aioredis.Redis()
    match = r"'half_open_lease' must be >= 'timeout' \+ 2 x 'op_timeout' \(8\): "
    with pytest.raises(ValueError, match=match + "7"):
        RedisStore(CircuitBreakerConfig(timeout=5, half_open_lease=7), client, op_timeout=1.5)
    with pytest.raises(ValueError, match=match + "6"):  # the config's default lease: 5 + 1
        RedisStore(CircuitBreakerConfig(timeout=5, recovery_timeout=0.5), client, op_timeout=1.5)
    fits = CircuitBreakerConfig(timeout=5, half_open_lease=8)
    assert RedisStore(fits, client, op_timeout=1.5).config.lease_seconds == 8
    assert RedisStore(CircuitBreakerConfig(timeout=None), client, op_timeout=100).op_timeout == 100


async def test_a_trial_on_a_slow_link_keeps_its_permit_until_it_reports(
    fault_proxy: FaultProxy, private_redis: PrivateRedis
) -> None:
    """Process A reaches Redis through a link that delays every script reply by 0.2 s; its
    trial runs into its timeout. Process B, next to Redis, keeps asking for a permit: with
    the shortest lease allowed, B never runs a second trial while A's still runs."""
    timeout = 0.5
    settings: dict[str, Any] = {
        "failure_threshold": 1,
        "recovery_timeout": 0.2,
        "half_open_max_calls": 1,
        "timeout": timeout,
        "half_open_lease": timeout + lease_margin(0.25),
    }
    slow_client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    near_client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    slow = create_redis_circuit_breaker("svc", slow_client, **settings)
    near = create_redis_circuit_breaker("svc", near_client, **settings)
    running: set[str] = set()
    overlaps: list[set[str]] = []
    slow_started = asyncio.Event()

    def trial(name: str) -> Any:
        async def run() -> None:
            running.add(name)
            if len(running) > 1:
                overlaps.append(set(running))
            try:
                if name == "slow":
                    slow_started.set()
                    await asyncio.sleep(3600)
            finally:
                running.discard(name)

        return run

    try:
        await synced(cast(RedisStore, slow.store))
        await synced(cast(RedisStore, near.store))
        with pytest.raises(Boom):
            await slow.call(boom)
        fault_proxy.delay_replies(0.2, when=replies_to("EVALSHA"))
        admitted = None
        for _ in range(100):  # bounded: the recovery timeout is 0.2 s
            await asyncio.sleep(0.05)
            admitted = asyncio.create_task(slow.call(trial("slow")))
            started = asyncio.create_task(slow_started.wait())
            await asyncio.wait({admitted, started}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if slow_started.is_set():
                break
            with pytest.raises(CircuitOpenError):
                await admitted
        assert admitted is not None
        assert running == {"slow"}
        while not admitted.done():
            with contextlib.suppress(CircuitOpenError):
                await near.call(trial("near"))
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await admitted
        assert overlaps == []
    finally:
        await slow.close()
        await near.close()
        await slow_client.aclose()
        await near_client.aclose()


# -- finding 12: a capped number of permits, and no delete before the write -------------


def test_half_open_max_calls_is_capped() -> None:
    with pytest.raises(ValueError, match=r"'half_open_max_calls' must be <= 100: 101"):
        CircuitBreakerConfig(half_open_max_calls=MAX_HALF_OPEN_CALLS + 1)
    assert CircuitBreakerConfig(half_open_max_calls=MAX_HALF_OPEN_CALLS).half_open_max_calls


async def test_a_hash_with_thousands_of_permits_is_never_deleted(
    shared: aioredis.Redis, key_prefix: str
) -> None:
    """A half-open hash holding 5,000 trial permits (another version's, or one written by
    hand) that a script rewrites: it used to DEL the key, then fail in Lua's ``unpack``,
    and the circuit was gone."""
    now_us = 1_000_000_000
    config = CircuitBreakerConfig(name="many", failure_threshold=1, half_open_max_calls=3)
    # Scripts over 5,000 fields take a while on a loaded machine: this test is about the
    # hash surviving, not about the deadline.
    store = RedisStore(
        config, shared, key_prefix=f"{key_prefix}:cb:", clock=lambda: 1000.0, op_timeout=5.0
    )
    fields: dict[str, str] = {
        "v": "1", "gen": "1", "ver": "1", "epoch": "7", "state": "half_open",
        "failures": "1", "opened_at": str(now_us - 10_000_000), "successes": "0",
        "next_permit": "5001", "forced": "0",
    }  # fmt: skip
    for permit in range(1, 5001):
        fields[f"trial:{permit}"] = str(now_us + 60_000_000)
    await shared.hset(store.key, mapping=cast(Any, fields))
    try:
        await synced(store)
        assert store.snapshot().epoch == 7
        await store.release(Ticket(7, 1))  # RELEASE rewrites the other 4,999
        stored: dict[bytes | str, bytes | str] = await shared.hgetall(store.key)
        assert stored[b"state"] == b"half_open"
        assert b"trial:1" not in stored
        assert (
            sum(1 for field in stored if isinstance(field, bytes) and field.startswith(b"trial:"))
            == 4999
        )
        assert store.available
    finally:
        await store.close()
        await shared.delete(store.key)


async def test_the_cap_works_in_redis(shared: aioredis.Redis, key_prefix: str) -> None:
    """At the cap, every permit is handed out once and their successes close the circuit."""
    config = CircuitBreakerConfig(
        name="cap", failure_threshold=1, recovery_timeout=0, half_open_max_calls=MAX_HALF_OPEN_CALLS
    )
    store = RedisStore(config, shared, key_prefix=f"{key_prefix}:cb:", clock=lambda: 1000.0)
    try:
        await synced(store)
        first = await store.acquire()
        assert first.ticket is not None
        await store.record_failure(first.ticket)
        tickets = []
        for _ in range(MAX_HALF_OPEN_CALLS):
            admission = await store.acquire()
            assert admission.ticket is not None
            tickets.append(admission.ticket)
        assert (await store.acquire()).ticket is None
        for ticket in tickets:
            await store.record_success(ticket)
        assert store.snapshot().state is CircuitState.CLOSED
        assert store.available
    finally:
        await store.close()
        await shared.delete(store.key)


# -- finding 13: health_check_interval reaches redis-py whole --------------------------


async def test_a_fractional_health_check_interval_reaches_redis_py(
    private_redis: PrivateRedis,
) -> None:
    """0.5 used to become int(0.5) == 0, which switches redis-py's idle check off."""
    manager = RedisConnectionManager(private_redis.url, health_check_interval=0.5)
    try:
        assert await manager.connect()
        pool = manager.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            assert connection.health_check_interval == 0.5
        finally:
            await pool.release(connection)
    finally:
        await manager.close()


# -- finding 14: durations the scripts cannot hold ---------------------------------------


@pytest.mark.parametrize("setting", ["recovery_timeout", "timeout", "half_open_lease"])
@pytest.mark.parametrize("value", [sys.float_info.max, math.inf, math.nan, MAX_SECONDS * 10])
def test_a_duration_too_large_is_refused_naming_the_setting(setting: str, value: float) -> None:
    """It used to work in memory and crash the Redis factory with a bare OverflowError."""
    with pytest.raises(ValueError, match=f"'{setting}' must be"):
        create_redis_circuit_breaker("svc", aioredis.Redis(), **{setting: value})  # type: ignore[arg-type]


async def test_the_longest_durations_work_in_redis(shared: aioredis.Redis, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    breaker = create_redis_circuit_breaker(
        "longest",
        client,
        failure_threshold=2,
        recovery_timeout=MAX_SECONDS,
        timeout=MAX_SECONDS,
        key_prefix=f"{key_prefix}:cb:",
    )
    try:
        assert breaker.config.lease_seconds == 2 * MAX_SECONDS
        assert await breaker.call(ok) == "ok"
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.call(boom)
        with pytest.raises(CircuitOpenError) as refused:
            await breaker.call(ok)
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > MAX_SECONDS - 60
        assert breaker.store.available
    finally:
        await breaker.close()
        await client.delete(f"{key_prefix}:cb:{{longest}}")
        await client.aclose()
