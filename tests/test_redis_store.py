"""RedisStore and create_redis_circuit_breaker against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis
from tests.redis_helpers import (
    Boom,
    Clock,
    boom,
    client_maker,
    command_counts,
    commands_between,
    fail_once,
    intercept_script,
    ok,
)
from tests.redis_helpers import eventually as poll_until
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    RedisConnectionManager,
    RedisStore,
    create_redis_circuit_breaker,
)
from xnai_core.circuit.machine import Ticket

StoreFactory = Callable[..., RedisStore]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[], aioredis.Redis]]:
    """New clients of the shared Redis, one per simulated process; closed after the test."""

    def build(**kwargs: Any) -> aioredis.Redis:
        return aioredis.Redis.from_url(SHARED_REDIS_URL, **kwargs)

    async with client_maker(build) as make:
        yield make


@pytest.fixture
async def stores(
    clients: Callable[..., aioredis.Redis], key_prefix: str, shared_redis: aioredis.Redis
) -> AsyncIterator[StoreFactory]:
    """RedisStores on the shared Redis under the test's prefix; each on its own client."""
    made: list[RedisStore] = []

    def make(
        config: CircuitBreakerConfig, client: aioredis.Redis | None = None, **kwargs: Any
    ) -> RedisStore:
        store = RedisStore(config, client or clients(), key_prefix=f"{key_prefix}:cb:", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def config(**kwargs: Any) -> CircuitBreakerConfig:
    kwargs.setdefault("name", "svc")
    return CircuitBreakerConfig(**kwargs)


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> float:
    """Wait until ``predicate()`` holds, polled every millisecond; the time it took."""
    return await poll_until(predicate, timeout, poll=0.001)


# -- construction ---------------------------------------------------------------


async def test_factory_touches_no_network_and_works_without_redis() -> None:
    """The seed's client (host "redis", which does not resolve) builds a working breaker."""
    client = aioredis.Redis(host="redis.invalid", port=6379, db=0)
    breaker = create_redis_circuit_breaker(
        name="llm_service", redis_client=client, failure_threshold=2, op_timeout=0.2
    )
    try:
        assert isinstance(breaker, CircuitBreaker)
        assert breaker.get_metrics()["backend"] == "redis"
        started = time.monotonic()
        assert await breaker.call(ok) == "ok"
        assert time.monotonic() - started < 1.0
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.call(boom)
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        metrics = breaker.get_metrics()
        assert (metrics["state"], metrics["redis_available"]) == ("open", False)
    finally:
        await breaker.close()
        await client.aclose()


def test_factory_rejects_a_sync_client() -> None:
    """A synchronous redis.Redis is a TypeError naming the expected types."""
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        create_redis_circuit_breaker("svc", redis.Redis())  # type: ignore[arg-type]


def test_store_validates_its_options() -> None:
    """Prefixes with braces, non-positive deadlines are ValueErrors naming the field."""
    client = aioredis.Redis()
    with pytest.raises(ValueError, match="'key_prefix'"):
        RedisStore(config(), client, key_prefix="a{b}")
    with pytest.raises(ValueError, match="'op_timeout' must be > 0"):
        RedisStore(config(), client, op_timeout=0)
    with pytest.raises(ValueError, match="'resync_interval'"):
        RedisStore(config(), client, resync_interval=float("nan"))


def test_factory_passes_the_seed_arguments() -> None:
    """Every argument of the seed's call lands in the breaker's config."""
    breaker = create_redis_circuit_breaker(
        name="rag_api",
        redis_client=aioredis.Redis(host="redis"),
        failure_threshold=3,
        recovery_timeout=60,
        timeout=30,
        half_open_max_calls=2,
        expected_exception=KeyError,
    )
    cfg = breaker.config
    assert (cfg.name, cfg.failure_threshold, cfg.recovery_timeout, cfg.timeout) == (
        "rag_api",
        3,
        60.0,
        30.0,
    )
    assert (cfg.half_open_max_calls, cfg.counted_exceptions) == (2, (KeyError,))
    assert breaker.store.key == "xnai:cb:{rag_api}"  # type: ignore[attr-defined]


# -- the stored form ------------------------------------------------------------


async def test_state_is_one_hash_of_plain_values(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """One hash-tagged key; every value a decimal string, a state name, or (``by``) the
    request id of the script that made the last transition."""
    store = stores(config(failure_threshold=1))
    await fail_once(store)
    assert store.key.endswith(":cb:{svc}")
    raw: dict[bytes, bytes] = await shared_redis.hgetall(store.key)  # type: ignore[assignment]
    stored = {k.decode(): v.decode() for k, v in raw.items()}
    assert stored["state"] == "open"
    assert stored["failures"] == "1"
    assert {k for k in stored if k not in ("state", "by")} == {
        "v", "gen", "ver", "epoch", "failures", "opened_at", "successes", "next_permit", "forced"
    }  # fmt: skip
    assert all(value.isdigit() for key, value in stored.items() if key not in ("state", "by"))
    assert re.fullmatch(r"[0-9a-f]{12}:[0-9]+", stored["by"])  # the FAILURE that tripped it


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        ({"state": "bogus"}, "state"),
        ({"failures": "-1"}, "failures"),
        ({"epoch": "1e9"}, "epoch"),
        ({"opened_at": "cos('x')"}, "opened_at"),
        ({"trial:1": "soon"}, "trial:1"),
        ({"v": "99"}, "v"),
        # 2^53 and beyond: Lua's doubles no longer hold them exactly.
        ({"opened_at": "9999999999999999"}, "opened_at"),
        ({"epoch": "9007199254740992"}, "epoch"),
        ({"trial:1": "9999999999999999"}, "trial:1"),
        ({"trial:9999999999999999": "1"}, "trial:9999999999999999"),
    ],
)
async def test_malformed_hash_is_logged_and_reset(
    stores: StoreFactory,
    shared_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    damage: dict[str, str],
    field: str,
) -> None:
    """A hash edited by hand is reset to a fresh closed circuit, with a warning."""
    store = stores(config(failure_threshold=1))
    await store.start()
    await shared_redis.hset(store.key, mapping=cast(Any, damage))
    caplog.set_level(logging.WARNING, logger="xnai_core.circuit.redis")
    assert await store.sync()
    assert store.snapshot().state is CircuitState.CLOSED
    assert f"(field '{field}')" in caplog.text
    assert (await shared_redis.hget(store.key, "state")) == b"closed"
    assert (await store.acquire()).ticket is not None


async def test_key_of_another_type_is_reset(
    stores: StoreFactory, shared_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A string (or any non-hash) at the circuit's key is replaced, not a crash."""
    store = stores(config(failure_threshold=1))
    await shared_redis.set(store.key, "not a hash")
    caplog.set_level(logging.WARNING, logger="xnai_core.circuit.redis")
    await fail_once(store)
    assert store.available
    assert (await shared_redis.hget(store.key, "state")) == b"open"
    assert "(field 'type')" in caplog.text


async def test_an_older_epoch_cannot_overwrite_a_newer_state(stores: StoreFactory) -> None:
    """A late success or failure from before a trip changes nothing."""
    cfg = config(failure_threshold=2)
    a, b = stores(cfg), stores(cfg)
    early = await a.acquire()
    assert early.ticket is not None
    for _ in range(2):
        await fail_once(b)
    await b.sync()
    epoch = b.snapshot().epoch
    await a.sync()
    await a.record_success(early.ticket)
    await a.record_failure(early.ticket)
    await b.sync()
    assert (b.snapshot().state, b.snapshot().epoch) == (CircuitState.OPEN, epoch)


async def behind_a_newer_epoch(
    stores: StoreFactory, cfg: CircuitBreakerConfig
) -> tuple[RedisStore, Ticket, RedisStore]:
    """A store whose mirror keeps an old epoch (and a ticket of it), and another that
    moved the stored epoch on behind its back (forced closed)."""
    lagging = stores(cfg, resync_interval=3600)
    await lagging.start()
    old = Ticket(lagging.snapshot().epoch)
    fresh = stores(cfg)
    await fresh.force(CircuitState.CLOSED)
    return lagging, old, fresh


async def test_a_stale_ticket_is_refused_by_redis_itself(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """The script fences epochs even when the caller's mirror is behind."""
    a, old, fresh = await behind_a_newer_epoch(stores, config(failure_threshold=1))
    await fresh.sync()
    newer = fresh.snapshot().epoch
    assert newer > old.epoch
    # Ask Redis directly, as a process whose mirror has not heard yet would.
    await a.run_script("failure", (str(old.epoch), "0"))
    assert (await shared_redis.hget(a.key, "state")) == b"closed"
    assert int(await shared_redis.hget(a.key, "epoch") or 0) == newer


# -- sharing between processes (separate clients stand in for processes) --------


async def test_a_trip_in_one_process_is_seen_by_another(stores: StoreFactory) -> None:
    """B's mirror opens through pub/sub (resync disabled) and B rejects locally."""
    cfg = config(failure_threshold=3, recovery_timeout=30)
    a, b = stores(cfg), stores(cfg, resync_interval=3600)
    await b.start()
    for _ in range(3):
        await fail_once(a)
    took = await eventually(lambda: b.snapshot().state is CircuitState.OPEN)
    assert took < 2.0
    rejected = await b.acquire()
    assert rejected.ticket is None
    assert rejected.retry_after is not None
    assert 29 < rejected.retry_after <= 30


async def test_open_rejects_locally_then_half_opens_through_redis(
    private_redis: PrivateRedis,
) -> None:
    """While open no command is sent; after recovery_timeout one script half-opens."""
    client = aioredis.Redis.from_url(private_redis.url)
    clock = Clock()
    store = RedisStore(config(failure_threshold=1, recovery_timeout=10), client, clock=clock)
    try:
        await fail_once(store)
        before = await command_counts(client)
        for _ in range(100):
            assert (await store.acquire()).ticket is None
        assert commands_between(before, await command_counts(client)) == {}
        clock.now += 10
        trial = await store.acquire()
        assert trial.ticket is not None
        assert trial.ticket.permit > 0
        assert store.snapshot().state is CircuitState.HALF_OPEN
    finally:
        await store.close()
        await client.aclose()


async def test_half_open_permits_are_shared(stores: StoreFactory) -> None:
    """Two processes asking at once get half_open_max_calls permits in total."""
    clock = Clock()
    cfg = config(failure_threshold=1, recovery_timeout=5, half_open_max_calls=3)
    a, b = stores(cfg, clock=clock), stores(cfg, clock=clock)
    await b.start()
    await fail_once(a)
    await eventually(lambda: b.snapshot().state is CircuitState.OPEN)
    clock.now += 5
    answers = await asyncio.gather(*(s.acquire() for s in (a, b) for _ in range(10)))
    permits = [x.ticket.permit for x in answers if x.ticket is not None]
    assert sorted(permits) == [1, 2, 3]


async def test_an_expired_lease_frees_its_permit(stores: StoreFactory) -> None:
    """A trial that never reports back stops holding its permit when its lease ends."""
    clock = Clock()
    cfg = config(
        failure_threshold=1, recovery_timeout=5, half_open_max_calls=1, half_open_lease=7, timeout=6
    )
    store = stores(cfg, clock=clock)
    await fail_once(store)
    clock.now += 5
    lost = await store.acquire()
    assert lost.ticket is not None
    refused = await store.acquire()
    assert (refused.ticket, refused.retry_after) == (None, None)
    clock.now += 7
    again = await store.acquire()
    assert again.ticket is not None
    assert again.ticket.permit == lost.ticket.permit + 1
    await store.record_success(lost.ticket)  # too late: its permit was reclaimed
    assert store.snapshot().state is CircuitState.HALF_OPEN
    await store.record_success(again.ticket)
    assert store.snapshot().state is CircuitState.CLOSED


async def test_state_survives_a_restart(stores: StoreFactory, clients: Callable[[], Any]) -> None:
    """A new process finds the stored state: open stays open."""
    cfg = config(failure_threshold=1, recovery_timeout=60)
    first = stores(cfg)
    await fail_once(first)
    await first.close()
    later = stores(cfg)
    rejected = await later.acquire()
    assert rejected.ticket is None
    assert later.snapshot().state is CircuitState.OPEN


async def test_forced_open_and_reset_propagate(stores: StoreFactory) -> None:
    """force(OPEN) holds in every process until reset."""
    cfg = config()
    a, b = stores(cfg), stores(cfg, resync_interval=3600)
    await b.start()
    await a.force(CircuitState.OPEN)
    await eventually(lambda: b.snapshot().forced)
    assert await b.acquire() == (None, None)
    await b.reset()
    await eventually(lambda: a.hot_epoch is not None)
    assert a.snapshot().state is CircuitState.CLOSED


async def test_failures_pending_elsewhere_are_reset_by_a_success_here(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """A's failure makes B leave the hot path; B's next success clears the count."""
    cfg = config(failure_threshold=3)
    a, b = stores(cfg), stores(cfg, resync_interval=3600)
    await b.start()
    assert b.hot_epoch is not None
    await fail_once(a)
    await eventually(lambda: b.hot_epoch is None)
    mine = await b.acquire()
    assert mine.ticket is not None
    await b.record_success(mine.ticket)
    assert (await shared_redis.hget(a.key, "failures")) == b"0"
    await eventually(lambda: a.hot_epoch is not None)


async def test_clients_with_decoded_responses_and_resp3(
    stores: StoreFactory, clients: Callable[..., aioredis.Redis]
) -> None:
    """decode_responses=True and protocol=3 clients run the same scripts."""
    cfg = config(failure_threshold=1)
    a = stores(cfg, clients(decode_responses=True))
    b = stores(cfg, clients(protocol=3), resync_interval=3600)
    await b.start()
    await fail_once(a)
    await eventually(lambda: b.snapshot().state is CircuitState.OPEN)
    await b.force(CircuitState.CLOSED)
    await eventually(lambda: a.snapshot().state is CircuitState.CLOSED)


# -- the breaker on top ------------------------------------------------------------


async def test_breaker_listeners_fire_in_every_process(
    clients: Callable[[], aioredis.Redis], key_prefix: str, shared_redis: aioredis.Redis
) -> None:
    """A trip in one breaker is a transition, with its reason, in the other."""
    made = [
        create_redis_circuit_breaker(
            "svc", clients(), failure_threshold=2, key_prefix=f"{key_prefix}:cb:"
        )
        for _ in range(2)
    ]
    seen: list[tuple[str, str, str]] = []
    made[1].add_listener(lambda name, old, new, why: seen.append((old.value, new.value, why)))
    try:
        assert await made[1].call(ok) == "ok"
        for _ in range(2):
            with pytest.raises(Boom):
                await made[0].call(boom)
        await eventually(lambda: bool(seen))
        assert seen == [
            ("closed", "open", "2 consecutive failures reached the threshold (in another process)")
        ]
        with pytest.raises(CircuitOpenError):
            await made[1].call(ok)
        assert made[1].get_metrics()["redis_available"] is True
    finally:
        for breaker in made:
            await breaker.close()


async def test_successful_closed_calls_send_no_commands(private_redis: PrivateRedis) -> None:
    """10,000 successful calls: fewer than 0.01 Redis commands per call (INFO commandstats)."""
    client = aioredis.Redis.from_url(private_redis.url)
    breaker = create_redis_circuit_breaker("hot", client)
    try:
        assert await breaker.call(ok) == "ok"  # loads the state, subscribes
        await asyncio.sleep(0.05)
        before = await command_counts(client)
        for _ in range(10_000):
            await breaker.call(ok)
        sent = commands_between(before, await command_counts(client))
        assert sum(sent.values()) < 100, sent
    finally:
        await breaker.close()
        await client.aclose()


async def test_a_failure_costs_one_round_trip(private_redis: PrivateRedis) -> None:
    """Each counted failure is one EVALSHA; the first success after them is one more."""
    client = aioredis.Redis.from_url(private_redis.url)
    breaker = create_redis_circuit_breaker("cold", client, failure_threshold=100)
    try:
        assert await breaker.call(ok) == "ok"
        await asyncio.sleep(0.05)
        before = await command_counts(client)
        for _ in range(10):
            with pytest.raises(Boom):
                await breaker.call(boom)
        after_failures = await command_counts(client)
        assert commands_between(before, after_failures).get("evalsha") == 10
        for _ in range(10):
            await breaker.call(ok)
        assert commands_between(after_failures, await command_counts(client)).get("evalsha") == 1
    finally:
        await breaker.close()
        await client.aclose()


# -- many failures at once, and small connection pools ----------------------------

REDIS_LOGGER = "xnai_core.circuit.redis"


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == REDIS_LOGGER and record.levelno >= logging.WARNING
    ]


async def slow_boom() -> None:
    await asyncio.sleep(0.001)  # every call is in flight before the first one fails
    raise Boom


async def test_a_burst_of_failures_through_a_small_pool_opens_the_circuit(
    clients: Callable[..., aioredis.Redis],
    key_prefix: str,
    shared_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """300 concurrent failures, threshold 200, a pool of 3: open in Redis and here, no outage."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    breaker = create_redis_circuit_breaker(
        "burst", clients(max_connections=3), failure_threshold=200, key_prefix=f"{key_prefix}:cb:"
    )
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda name, old, new, why: seen.append((old.value, new.value)))
    try:
        assert await breaker.call(ok) == "ok"
        results = await asyncio.gather(
            *(breaker.call(slow_boom) for _ in range(300)), return_exceptions=True
        )
        assert all(isinstance(result, Boom) for result in results)
        assert breaker.state is CircuitState.OPEN
        assert breaker.get_metrics()["redis_available"] is True
        key = breaker.store.key  # type: ignore[attr-defined]
        assert await shared_redis.hmget(key, ["state", "failures"]) == [b"open", b"200"]
        assert seen == [("closed", "open")]
        assert redis_warnings(caplog) == []
    finally:
        await breaker.close()


async def test_concurrent_failures_are_all_counted_through_a_managers_pool(
    key_prefix: str, shared_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """300 concurrent failures below the threshold, a manager's pool of 4: Redis counts 300."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    async with RedisConnectionManager(
        SHARED_REDIS_URL, max_connections=4, health_check_interval=0
    ) as manager:
        breaker = create_redis_circuit_breaker(
            "count", manager, failure_threshold=1000, key_prefix=f"{key_prefix}:cb:"
        )
        try:
            assert await breaker.call(ok) == "ok"
            await asyncio.gather(
                *(breaker.call(slow_boom) for _ in range(300)), return_exceptions=True
            )
            key = breaker.store.key  # type: ignore[attr-defined]
            assert await shared_redis.hmget(key, ["state", "failures"]) == [b"closed", b"300"]
            assert breaker.store.snapshot().failure_count == 300
            assert breaker.get_metrics()["redis_available"] is True
            assert redis_warnings(caplog) == []
        finally:
            await breaker.close()


@pytest.fixture(params=["full", "blocking"])
async def small_pool(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """A client of two connections (one for the subscription, one for everything else):
    a ConnectionPool that raises when full, or a BlockingConnectionPool that waits for a
    connection inside the command."""
    if request.param == "full":
        pool = aioredis.ConnectionPool.from_url(SHARED_REDIS_URL, max_connections=2)
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            SHARED_REDIS_URL, max_connections=2, timeout=30
        )
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.aclose()


async def test_a_full_pool_is_waited_for_not_an_outage(
    stores: StoreFactory,
    small_pool: aioredis.Redis,
    shared_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The application holds the pool's last connection for a moment: the failure waits.
    Held past op_timeout, the WARNING names the full pool, not Redis not answering (a
    BlockingConnectionPool's wait inside redis-py was taken for no answer from Redis)."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    client = small_pool
    store = stores(config(failure_threshold=5), client, op_timeout=1.0)
    await store.start()
    pool = client.connection_pool
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(pool.release(held)))
    admission = await store.acquire()
    assert admission.ticket is not None
    started = time.monotonic()
    await store.record_failure(admission.ticket)
    assert 0.05 < time.monotonic() - started < 1.0
    assert store.available
    assert (await shared_redis.hget(store.key, "failures")) == b"1"
    assert redis_warnings(caplog) == []

    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        admission = await store.acquire()
        assert admission.ticket is not None
        await store.record_failure(admission.ticket)
        await eventually(lambda: redis_warnings(caplog) != [], timeout=10)
        assert "MaxConnectionsError" in redis_warnings(caplog)[0], redis_warnings(caplog)
    finally:
        await pool.release(held)
    await eventually(lambda: store.available, timeout=15)


async def test_an_answer_that_arrives_after_redis_went_away_is_not_mirrored(
    stores: StoreFactory,
) -> None:
    """While a FAILURE is in flight another operation fails and the circuit trips here:
    the late answer (closed, 1 failure) must not undo the local trip."""
    cfg = config(failure_threshold=3)
    store = stores(cfg, resync_interval=3600)
    await store.start()

    async def late(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        raw = await real(**kwargs)
        assert store.link is not None
        store.link.mark_down(ConnectionError("another operation failed meanwhile"))
        for _ in range(3):
            await store.record_failure(Ticket(store.snapshot().epoch))
        assert store.snapshot().state is CircuitState.OPEN
        return raw

    intercept_script(store, "failure", late)
    await fail_once(store)
    assert store.snapshot().state is CircuitState.OPEN


async def test_a_trip_made_here_while_reconciling_is_kept(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """The circuit trips here during the reconcile's own round trip: it is pushed, not lost."""
    store = stores(config(failure_threshold=2, recovery_timeout=60))
    await store.start()
    calls = 0

    async def tripping(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            # Sent as closed; the store still decides locally until the answer is in.
            for _ in range(2):
                await store.record_failure(Ticket(store.snapshot().epoch))
        return await real(**kwargs)

    intercept_script(store, "reconcile", tripping)
    assert store.link is not None
    store.link.mark_down(ConnectionError("simulated outage"))
    await eventually(lambda: store.available, timeout=5)
    assert calls >= 2
    assert store.snapshot().state is CircuitState.OPEN
    assert (await shared_redis.hget(store.key, "state")) == b"open"


# -- unreadable answers, lineages, stale news ----------------------------------------


async def test_an_unreadable_answer_is_one_circuits_problem(
    stores: StoreFactory,
    clients: Callable[..., aioredis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Answers that do not decode, for one circuit: logged once, no outage, others go on."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    client = clients()
    poison = stores(config(name="poison", failure_threshold=5), client)
    healthy = stores(config(name="healthy", failure_threshold=5), client)
    await poison.start()  # first: the link recovers it first
    await healthy.start()

    async def junk(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        raw = await real(**kwargs)
        return [b"junk"] if kwargs["keys"][0] == poison.key else raw

    for name in ("failure", "reconcile", "read"):
        intercept_script(poison, name, junk)
    for _ in range(2):
        await fail_once(poison)
    assert (poison.available, healthy.available) == (True, True)
    assert [m for m in redis_warnings(caplog) if "could not read" in m] == [
        "circuit 'poison': could not read redis's answer to failure (ValueError: a circuit "
        "script answers with 7 items: [b'junk']); keeping the last known state until an "
        "answer can be read"
    ]
    assert not any("unreachable" in m for m in redis_warnings(caplog))
    # After an outage the link reconciles every circuit: the unreadable one stays local,
    # the others come back.
    assert poison.link is not None
    poison.link.mark_down(ConnectionError("simulated outage"))
    await eventually(lambda: healthy.available, timeout=5)
    assert not poison.available
    assert poison.link.down is False


class _Deaf(RedisStore):
    """A circuit with a bug: taking a message raises."""

    def on_message(self, payload: str) -> None:
        raise RuntimeError("a bug in taking a message")


async def test_a_bug_in_taking_a_message_is_logged_not_taken_for_a_broken_subscription(
    stores: StoreFactory,
    clients: Callable[..., aioredis.Redis],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception a circuit raises on a message is ours, not Redis's: it is logged with
    its traceback, the subscription stays (it used to be dropped and renewed, logged as
    "broke" at INFO, the bug's traceback nowhere), and the other circuits of that name
    on the link still hear the message."""
    caplog.set_level(logging.INFO, logger="xnai_core.circuit.redis")
    client = clients()
    deaf = _Deaf(config(failure_threshold=1), client, key_prefix=f"{key_prefix}:cb:")
    try:
        hearing = stores(config(failure_threshold=1), client, resync_interval=3600)
        tripper = stores(config(failure_threshold=1))
        await deaf.start()
        await hearing.start()
        await tripper.start()
        await fail_once(tripper)
        await eventually(lambda: hearing.snapshot().state is CircuitState.OPEN)
        bugs = [r.exc_info[1] for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
        assert {str(bug) for bug in bugs} == {"a bug in taking a message"}
        assert not any("broke" in r.getMessage() for r in caplog.records)
    finally:
        await deaf.close()


async def test_an_answer_from_a_replaced_hash_is_not_mirrored(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """P's answer from the hash it knew arrives after news of the hash that replaced it."""
    p = stores(config(failure_threshold=2), resync_interval=3600)
    q = stores(config(failure_threshold=1), resync_interval=3600)
    await p.start()
    await q.start()

    async def overtaken(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        raw = await real(**kwargs)  # the old hash: closed, 1 failure
        await shared_redis.delete(p.key)  # lost: flushed, evicted, deleted by hand
        for _ in range(3):  # Q's first failure creates a new hash, the next one trips it
            admission = await q.acquire()
            if admission.ticket is None:
                break
            await q.record_failure(admission.ticket)
        await eventually(lambda: p.snapshot().state is CircuitState.OPEN)
        return raw

    intercept_script(p, "failure", overtaken)
    await fail_once(p)
    assert p.snapshot().state is CircuitState.OPEN
    assert (await shared_redis.hget(p.key, "state")) == b"open"


async def test_an_answer_overtaken_in_flight_is_not_mirrored(stores: StoreFactory) -> None:
    """P's FAILURE answer (closed, 1 failure) arrives after P heard of Q's trip: kept open."""
    cfg = config(failure_threshold=2)
    p = stores(cfg, resync_interval=3600)
    q = stores(cfg, resync_interval=3600)
    await p.start()
    await q.start()

    async def overtaken(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        raw = await real(**kwargs)
        await eventually(lambda: q.hot_epoch is None)  # Q heard of P's failure
        await fail_once(q)
        await eventually(lambda: p.snapshot().state is CircuitState.OPEN)
        return raw

    intercept_script(p, "failure", overtaken)
    await fail_once(p)
    assert p.snapshot().state is CircuitState.OPEN


async def test_a_stale_message_is_ignored(
    stores: StoreFactory, clients: Callable[..., aioredis.Redis], shared_redis: aioredis.Redis
) -> None:
    """A message older than the mirrored version (a late duplicate) changes nothing."""
    cfg = config()
    a, b = stores(cfg), stores(cfg, resync_interval=3600)
    await b.start()
    listener = clients().pubsub()
    await listener.subscribe(b.channel)
    await a.force(CircuitState.OPEN)
    await a.reset()
    await eventually(lambda: b.hot_epoch is not None and a.snapshot().epoch == b.snapshot().epoch)
    payloads: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(payloads) < 2 and time.monotonic() < deadline:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            payloads.append(message["data"])
    await listener.aclose()
    assert payloads[0].split(b" ")[3] == b"open"
    await shared_redis.publish(b.channel, payloads[0])  # the forced open, again
    await asyncio.sleep(0.3)
    assert b.snapshot().state is CircuitState.CLOSED
    assert b.hot_epoch is not None


async def test_a_change_nobody_announced_is_found_by_the_resync(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """The hash changed without a PUBLISH: the periodic resync brings it in."""
    store = stores(config(recovery_timeout=60), resync_interval=0.2)
    await store.start()
    assert store.hot_epoch is not None
    raw: dict[bytes, bytes] = await shared_redis.hgetall(store.key)  # type: ignore[assignment]
    await shared_redis.hset(
        store.key,
        mapping={
            "state": "open",
            "failures": "5",
            "opened_at": str(int(time.time() * 1_000_000)),
            "epoch": str(int(raw[b"epoch"]) + 1),
            "ver": str(int(raw[b"ver"]) + 1),
        },
    )
    await eventually(lambda: store.snapshot().state is CircuitState.OPEN, timeout=3)
    assert (await store.acquire()).ticket is None


# -- the scripts' own fences (asked directly, past the Python mirror) ---------------


async def test_redis_counts_trial_successes_against_the_permits(stores: StoreFactory) -> None:
    """half_open_max_calls=2, one trial succeeded, one in flight: the ADMIT script says no."""
    clock = Clock()
    cfg = config(failure_threshold=1, recovery_timeout=5, half_open_max_calls=2)
    a, b = stores(cfg, clock=clock), stores(cfg, clock=clock)
    await b.start()
    await fail_once(a)
    clock.now += 5
    first, second = await a.acquire(), await a.acquire()
    assert first.ticket is not None
    assert second.ticket is not None
    await a.record_success(first.ticket)
    assert a.snapshot().state is CircuitState.HALF_OPEN
    # B's admission script, as a process whose mirror has not heard yet would run it.
    reply = await b.run_script("admit", ())
    assert reply is not None
    assert (reply.admitted, reply.permit) == (0, 0)


async def test_a_stale_success_is_refused_by_redis_itself(
    stores: StoreFactory, shared_redis: aioredis.Redis
) -> None:
    """The SUCCESS script fences epochs: an old ticket does not clear newer failures."""
    a, old, fresh = await behind_a_newer_epoch(stores, config(failure_threshold=3))
    for _ in range(2):
        await fail_once(fresh)
    assert (await shared_redis.hget(a.key, "failures")) == b"2"
    await a.run_script("success", (str(old.epoch), "0"))
    assert (await shared_redis.hget(a.key, "failures")) == b"2"
