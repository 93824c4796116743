"""Redis refusing, hanging (SIGSTOP), dying mid-run and coming back: calls never notice.

Every test runs its own redis-server (``private_redis``); the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from xnai_core import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RedisStore,
    create_redis_circuit_breaker,
)

OP_TIMEOUT = 0.2
# Scheduling noise on a busy 2-core machine; the deadline itself is OP_TIMEOUT.
SLACK = 0.5
WARNING_TEXT = "redis unreachable for circuit breakers"


class Boom(Exception):
    """The protected dependency failed."""


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise Boom


async def timed(breaker: CircuitBreaker, fn: Callable[[], Awaitable[Any]]) -> tuple[str, float]:
    """Run one call; what came out (never a Redis error) and how long it took."""
    started = time.monotonic()
    try:
        await breaker.call(fn)
        outcome = "ok"
    except Boom:
        outcome = "failed"
    except CircuitOpenError:
        outcome = "rejected"
    return outcome, time.monotonic() - started


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def outage_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(WARNING_TEXT in record.getMessage() for record in caplog.records)


@pytest.fixture
async def make_breaker(
    private_redis: PrivateRedis,
) -> AsyncIterator[Callable[..., CircuitBreaker]]:
    """Breakers on their own clients of the private server (one client = one process)."""
    made: list[tuple[CircuitBreaker, aioredis.Redis]] = []

    def make(
        name: str = "svc", client: aioredis.Redis | None = None, **kwargs: Any
    ) -> CircuitBreaker:
        client = client or aioredis.Redis.from_url(private_redis.url)
        kwargs.setdefault("op_timeout", OP_TIMEOUT)
        kwargs.setdefault("failure_threshold", 3)
        breaker = create_redis_circuit_breaker(name, client, **kwargs)
        made.append((breaker, client))
        return breaker

    yield make
    for breaker, client in made:
        await breaker.close()
        await client.aclose()


@pytest.fixture
def outage_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="xnai_core.circuit.redis")
    return caplog


async def stored_state(server: PrivateRedis, name: str = "svc") -> str | None:
    client = aioredis.Redis.from_url(server.url)
    try:
        state = await client.hget(f"xnai:cb:{{{name}}}", "state")
    finally:
        await client.aclose()
    return state.decode() if isinstance(state, bytes) else state


async def test_refused_from_the_start_then_reconciled(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """Nobody listening: calls decide locally within the deadline; the trip reaches Redis later."""
    private_redis.kill()
    breaker = make_breaker()
    results = [await timed(breaker, ok) for _ in range(5)]
    results += [await timed(breaker, boom) for _ in range(3)]
    results += [await timed(breaker, ok) for _ in range(5)]
    assert [outcome for outcome, _ in results] == ["ok"] * 5 + ["failed"] * 3 + ["rejected"] * 5
    assert max(took for _, took in results) < OP_TIMEOUT + SLACK
    metrics = breaker.get_metrics()
    assert (metrics["state"], metrics["backend"], metrics["redis_available"]) == (
        "open",
        "redis",
        False,
    )
    assert outage_warnings(outage_log) == 1

    private_redis.start()
    await eventually(lambda: breaker.get_metrics()["redis_available"] is True)
    assert await stored_state(private_redis) == "open"
    assert "written back to redis" in outage_log.text
    assert "redis answers again" in outage_log.text
    other = make_breaker()
    assert (await timed(other, ok))[0] == "rejected"


async def test_hung_redis_costs_one_deadline_then_nothing(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP: the first call that needs Redis waits one deadline; the rest pay nothing."""
    breaker = make_breaker()
    assert (await timed(breaker, ok))[0] == "ok"
    assert breaker.get_metrics()["redis_available"] is True
    private_redis.pause()
    try:
        results = [await timed(breaker, ok) for _ in range(3)]
        results += [await timed(breaker, boom) for _ in range(3)]
        results += [await timed(breaker, ok) for _ in range(3)]
        assert [o for o, _ in results] == ["ok"] * 3 + ["failed"] * 3 + ["rejected"] * 3
        durations = [took for _, took in results]
        assert max(durations) < OP_TIMEOUT + SLACK
        assert sum(took >= OP_TIMEOUT / 2 for took in durations) == 1
        assert breaker.get_metrics()["redis_available"] is False
        # One script unanswered is one circuit out of step; the PING that follows it
        # unanswered too makes it an outage of the client: one WARNING.
        await eventually(lambda: outage_warnings(outage_log) == 1)
    finally:
        private_redis.resume()
    await eventually(lambda: breaker.get_metrics()["redis_available"] is True)
    assert await stored_state(private_redis) == "open"
    assert outage_warnings(outage_log) == 1


async def test_hung_at_the_start_delays_the_first_call_by_one_deadline_at_most(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """A server that accepts but never answers: the first call is bounded by the deadline."""
    private_redis.pause()
    try:
        breaker = make_breaker()
        results = [await timed(breaker, ok) for _ in range(20)]
        assert {o for o, _ in results} == {"ok"}
        assert max(took for _, took in results) < OP_TIMEOUT + SLACK
        assert sum(took >= OP_TIMEOUT / 2 for _, took in results) <= 1
        await eventually(lambda: outage_warnings(outage_log) == 1)
        assert breaker.get_metrics()["redis_available"] is False
    finally:
        private_redis.resume()
    await eventually(lambda: breaker.get_metrics()["redis_available"] is True)


async def test_killed_mid_run_and_restarted_empty(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """Killed under load, restarted without its data: no Redis error escapes, open stays open."""
    breaker = make_breaker(recovery_timeout=60)
    peer = make_breaker(recovery_timeout=60)
    assert (await timed(peer, ok))[0] == "ok"
    stop = asyncio.Event()
    seen: list[tuple[str, float]] = []

    async def load() -> None:
        while not stop.is_set():
            seen.append(await timed(breaker, ok))
            await asyncio.sleep(0)

    task = asyncio.create_task(load())
    await asyncio.sleep(0.05)
    for _ in range(3):
        await timed(breaker, boom)
    await eventually(lambda: peer.state is CircuitState.OPEN)
    private_redis.kill()
    await asyncio.sleep(0.2)
    assert (await timed(breaker, ok))[0] == "rejected"
    await eventually(lambda: breaker.get_metrics()["redis_available"] is False)
    private_redis.start()  # empty: no persistence
    await eventually(lambda: breaker.get_metrics()["redis_available"] is True)
    await eventually(lambda: peer.get_metrics()["redis_available"] is True)
    stop.set()
    await task
    assert {outcome for outcome, _ in seen} <= {"ok", "rejected"}
    assert max(took for _, took in seen) < OP_TIMEOUT + SLACK
    # The restarted server lost the hash; the processes that knew it was open put it back.
    assert await stored_state(private_redis) == "open"
    fresh = make_breaker(recovery_timeout=60)
    assert (await timed(fresh, ok))[0] == "rejected"
    assert outage_warnings(outage_log) == 2  # one per link (each client is a process here)


async def _acl_user(
    server: PrivateRedis, *, enabled: bool, password: str | None = None, scripts: bool = True
) -> None:
    """Create, switch off (killing its connections) or on the ACL user "proc-a"."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        if password is None:
            await admin.acl_setuser("proc-a", enabled=enabled)
        else:
            await admin.acl_setuser(
                "proc-a", enabled=enabled, passwords=[f"+{password}"], keys=["*"],
                channels=["*"], categories=["+@all"] if scripts else ["+@all", "-@scripting"],
            )  # fmt: skip
        if not enabled:
            await admin.client_kill_filter(user="proc-a")
    finally:
        await admin.aclose()


async def test_redis_wins_unless_the_circuit_opened_here(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """Cut off one process (ACL); meanwhile another forces the circuit open: Redis wins."""
    await _acl_user(private_redis, enabled=True, password="secret-a")
    client_a = aioredis.Redis.from_url(private_redis.url, username="proc-a", password="secret-a")
    a = make_breaker(client=client_a, failure_threshold=2)
    b = make_breaker(failure_threshold=2)
    assert (await timed(a, ok))[0] == "ok"
    assert (await timed(b, ok))[0] == "ok"
    await _acl_user(private_redis, enabled=False)
    assert (await timed(a, boom))[0] == "failed"  # its script fails: a goes local
    assert a.get_metrics()["redis_available"] is False
    await b.force_open()
    await _acl_user(private_redis, enabled=True)
    await eventually(lambda: a.get_metrics()["redis_available"] is True)
    assert a.get_metrics()["forced_open"] is True
    assert a.state is CircuitState.OPEN
    assert "secret-a" not in outage_log.text


async def test_a_circuit_opened_during_the_outage_is_written_back(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    """Cut off one process; it trips locally; Redis still says closed: the trip is pushed."""
    await _acl_user(private_redis, enabled=True, password="secret-a")
    client_a = aioredis.Redis.from_url(private_redis.url, username="proc-a", password="secret-a")
    a = make_breaker(client=client_a, failure_threshold=2, recovery_timeout=60)
    b = make_breaker(failure_threshold=2, recovery_timeout=60, resync_interval=60)
    assert (await timed(a, ok))[0] == "ok"
    assert (await timed(b, ok))[0] == "ok"
    await _acl_user(private_redis, enabled=False)
    assert [(await timed(a, boom))[0] for _ in range(2)] == ["failed", "failed"]
    assert a.state is CircuitState.OPEN
    assert b.state is CircuitState.CLOSED
    await _acl_user(private_redis, enabled=True)
    await eventually(lambda: b.state is CircuitState.OPEN)
    assert (await timed(b, ok))[0] == "rejected"


async def test_a_refusing_server_is_an_outage_too(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """A user not allowed to run scripts (NOPERM) never sees the error; decisions stay local."""
    await _acl_user(private_redis, enabled=True, password="secret-b", scripts=False)
    client = aioredis.Redis.from_url(private_redis.url, username="proc-a", password="secret-b")
    breaker = make_breaker(client=client, failure_threshold=2)
    outcomes = [(await timed(breaker, fn))[0] for fn in (ok, boom, boom, ok)]
    assert outcomes == ["ok", "failed", "failed", "rejected"]
    assert breaker.get_metrics()["redis_available"] is False
    assert outage_warnings(outage_log) == 1
    assert "secret-b" not in outage_log.text


async def test_force_open_during_an_outage_is_written_back(
    private_redis: PrivateRedis,
    make_breaker: Callable[..., CircuitBreaker],
    outage_log: pytest.LogCaptureFixture,
) -> None:
    """Redis holds a plain open circuit; the operator forces it open here while Redis
    hangs: on return the forced flag is written back, and the circuit never half-opens."""
    now = [1000.0]
    breaker = make_breaker(failure_threshold=1, recovery_timeout=10, clock=lambda: now[0])
    assert (await timed(breaker, boom))[0] == "failed"
    assert (breaker.state, breaker.get_metrics()["forced_open"]) == (CircuitState.OPEN, False)
    private_redis.pause()
    try:
        store = breaker.store
        assert isinstance(store, RedisStore)
        assert await store.sync() is False  # one deadline, then local
        assert breaker.get_metrics()["redis_available"] is False
        await breaker.force_open()
        assert breaker.get_metrics()["forced_open"] is True
    finally:
        private_redis.resume()
    await eventually(lambda: breaker.get_metrics()["redis_available"] is True)
    assert breaker.get_metrics()["forced_open"] is True
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        assert await client.hmget("xnai:cb:{svc}", ["state", "forced"]) == [b"open", b"1"]
    finally:
        await client.aclose()
    now[0] += 60
    assert (await timed(breaker, ok))[0] == "rejected"
    assert breaker.state is CircuitState.OPEN
