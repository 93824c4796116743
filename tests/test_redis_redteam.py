"""Red team of the Redis-shared circuit (issue 10): each documented guarantee attacked
with a fault production throws, against a private redis-server, with clients built as
users build them (``redis.asyncio.Redis(host=..., port=...)``, redis-py's default retry
on). These complement tests/test_redis_faults.py (one test per finding) with faults and
combinations it does not throw: forced state lost, eviction, a restart empty, server-side
connection kills, CLIENT PAUSE, cancellation at every await, random drops under many
concurrent callers, a forward clock step.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from tests.conftest import PrivateRedis
from tests.fault_proxy import FaultProxy, replies_to
from tests.redis_helpers import (
    KEY,
    REDIS_LOGGER,
    Boom,
    Clock,
    Factory,
    boom,
    cfg,
    eventually,
    fail_once,
    hash_of,
    no_trials,
    ok,
    state_in_redis,
    state_is,
    trials_in_redis,
    warnings_of,
)
from xnai_core import (
    CircuitOpenError,
    CircuitState,
    RedisStore,
    create_redis_circuit_breaker,
)
from xnai_core.circuit.machine import Admission

pytest_plugins = ["tests.redis_fixtures"]


Breakers = Callable[..., Any]


@pytest.fixture
async def breakers(private_redis: PrivateRedis) -> AsyncIterator[Breakers]:
    """``breakers(n, **options)``: n breakers named svc, each on its own client (process)."""
    made: list[tuple[Any, aioredis.Redis]] = []

    def make(count: int, **options: Any) -> list[Any]:
        out = []
        for _ in range(count):
            client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
            breaker = create_redis_circuit_breaker("svc", client, **options)
            made.append((breaker, client))
            out.append(breaker)
        return out

    yield make
    for breaker, client in made:
        await breaker.close()
        await client.aclose()


def recorder(breaker: Any) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    breaker.add_listener(lambda n, old, new, why: seen.append((old.value, new.value, why)))
    return seen


# -- state loss: forced open, eviction, restart empty ---------------------------------


async def test_a_forced_open_circuit_flushed_stays_forced_and_nobody_closes(
    breakers: Breakers, direct: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator forced the circuit open; FLUSHDB: Redis holds it open (and forced)
    again, no process ever reports closed, one WARNING per holder names the key."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    here, there = breakers(2, failure_threshold=5, recovery_timeout=1, resync_interval=0.2)
    seen = recorder(here)
    seen_there = recorder(there)
    assert await there.call(ok) == "ok"
    await here.force_open()
    await eventually(lambda: there.state is CircuitState.OPEN)
    await direct.flushdb()
    await eventually(lambda: state_is(direct, "open"), timeout=5)
    await asyncio.sleep(1.5)  # past recovery_timeout: forced open never half-opens
    assert (await hash_of(direct)).get("forced") == "1"
    for breaker in (here, there):
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
    assert [s for s in seen_there + seen if s[1] != "open"] == []
    assert warnings_of(caplog, "lost the open circuit")


async def test_an_open_circuit_lost_to_a_restart_empty_is_written_back(
    breakers: Breakers, direct: aioredis.Redis, private_redis: PrivateRedis
) -> None:
    """Redis is killed and restarted without persistence while the circuit is open:
    after the reconnect Redis holds it open again; no process adopts closed."""
    here, there = breakers(2, failure_threshold=1, recovery_timeout=60, resync_interval=0.2)
    seen = recorder(here)
    seen_there = recorder(there)
    assert await there.call(ok) == "ok"
    with pytest.raises(Boom):
        await here.call(boom)
    await eventually(lambda: there.state is CircuitState.OPEN)
    private_redis.kill()
    private_redis.start()
    await eventually(lambda: state_is(direct, "open"), timeout=15)
    await eventually(
        lambda: (
            bool(here.get_metrics()["redis_available"])
            and bool(there.get_metrics()["redis_available"])
        ),
        timeout=15,
    )
    await asyncio.sleep(0.6)
    assert [here.state, there.state] == [CircuitState.OPEN] * 2
    assert await state_in_redis(direct) == "open"
    assert [s for s in seen + seen_there if s[1] != "open"] == []
    assert not any("forced" in why for _, _, why in seen + seen_there)


async def test_an_open_circuit_rolled_back_by_a_restart_from_an_older_snapshot_is_written_back(
    breakers: Breakers,
    direct: aioredis.Redis,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis restarts from a snapshot taken before the circuit opened (as a failover to
    a replica that lagged does): the same lineage, an older version, closed. Both
    processes adopted closed, labelled "forced (in another process)"; the opening
    was lost without a word. It is written back, with the WARNING and the metric."""
    caplog.set_level(logging.WARNING, logger=REDIS_LOGGER)
    here, there = breakers(2, failure_threshold=2, recovery_timeout=60, resync_interval=0.2)
    seen = recorder(here)
    seen_there = recorder(there)
    assert await there.call(ok) == "ok"
    with pytest.raises(Boom):
        await here.call(boom)
    await direct.save()  # the snapshot: closed, one failure counted
    with pytest.raises(Boom):
        await here.call(boom)
    await eventually(lambda: there.state is CircuitState.OPEN)
    private_redis.kill()
    private_redis.start()  # loads the older snapshot
    await eventually(lambda: state_is(direct, "open"), timeout=15)
    await eventually(
        lambda: all(bool(b.get_metrics()["redis_available"]) for b in (here, there)),
        timeout=15,
    )
    await asyncio.sleep(0.6)  # three resyncs
    assert [here.state, there.state] == [CircuitState.OPEN] * 2
    assert await state_in_redis(direct) == "open"
    assert [s for s in seen + seen_there if s[1] != "open"] == []
    assert sum(b.get_metrics()["redis_state_losses"] for b in (here, there)) >= 1
    assert warnings_of(caplog, "lost the open circuit")


async def test_an_open_circuit_evicted_under_allkeys_lru_is_written_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """maxmemory 2 MB, allkeys-lru, cache traffic evicts the open circuit's hash: the
    holders write it back (WARNING, metric), nobody adopts closed, nothing says forced."""
    caplog.set_level(logging.INFO, logger="xnai_core")
    server = PrivateRedis(extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"))
    server.start()
    clients = [aioredis.Redis(host="127.0.0.1", port=server.port) for _ in range(2)]
    cache = aioredis.Redis(host="127.0.0.1", port=server.port)
    made = [
        create_redis_circuit_breaker(
            "svc", c, failure_threshold=1, recovery_timeout=60, resync_interval=0.3
        )
        for c in clients
    ]
    seen = [s for b in made for s in [recorder(b)]]
    try:
        assert await made[1].call(ok) == "ok"
        with pytest.raises(Boom):
            await made[0].call(boom)
        await eventually(lambda: made[1].state is CircuitState.OPEN)
        await asyncio.sleep(0.5)  # let the hash grow old in the LRU clock
        evicted = False
        blob = b"x" * 20_000
        for n in range(2_000):  # cache traffic: 40 MB into 2 MB
            await cache.set(f"cache:{n}", blob)
            info: dict[str, Any] = await cache.info("stats")
            if n % 50 == 0 and info.get("evicted_keys", 0) and not await cache.exists(KEY):
                evicted = True
                break
        assert evicted, "the circuit's hash was never evicted"
        await eventually(lambda: state_is(cache, "open"), timeout=5)
        await asyncio.sleep(0.7)
        assert [b.state for b in made] == [CircuitState.OPEN] * 2
        assert [s for group in seen for s in group if s[1] != "open"] == []
        assert not any("forced" in why for group in seen for _, _, why in group)
        assert sum(b.get_metrics()["redis_state_losses"] for b in made) >= 1
        assert warnings_of(caplog, "lost the open circuit")
    finally:
        for b in made:
            await b.close()
        for c in [*clients, cache]:
            await c.aclose()
        server.cleanup()


# -- connections cut by the server ----------------------------------------------------


async def test_client_kill_type_pubsub_is_followed_by_resubscribe_and_resync(
    stores: Factory, direct: aioredis.Redis
) -> None:
    """CLIENT KILL TYPE pubsub, then another process trips the circuit at once (its
    message may be lost in the gap): without a periodic resync this process still
    learns it, by the resync after re-subscribing, and later trips reach it by pub/sub."""
    config = cfg(failure_threshold=1, recovery_timeout=1, half_open_max_calls=1)
    clock = Clock(10_000.0)
    here = stores(config, proxied=False, resync_interval=3600, clock=clock)
    there = stores(config, proxied=False, clock=clock)
    await here.start()
    await there.start()
    assert here.available
    killed = await direct.client_kill_filter(_type="pubsub")
    assert int(killed) >= 1
    await fail_once(there)
    await eventually(lambda: here.snapshot().state is CircuitState.OPEN, timeout=6)
    # The new subscription carries later news: half-open + close by the other process.
    clock.now += 2
    trial = await there.acquire()
    assert trial.ticket is not None
    await there.record_success(trial.ticket)
    await eventually(lambda: here.snapshot().state is CircuitState.CLOSED, timeout=6)


async def test_client_kill_type_normal_mid_burst_counts_each_failure_once(
    stores: Factory, direct: aioredis.Redis
) -> None:
    """Failures reported while the server kills the normal connections: every failure
    counts at most once (exact threshold), and the store comes back."""
    store = stores(cfg(failure_threshold=50), proxied=False, op_timeout=2.0)
    await store.start()
    reported = 0
    for _ in range(5):
        ticket = (await store.acquire()).ticket
        assert ticket is not None
        sends = [asyncio.create_task(store.record_failure(ticket)) for _ in range(4)]
        await asyncio.sleep(0)
        await direct.client_kill_filter(_type="normal", skipme=True)
        await asyncio.gather(*sends)
        reported += 4
        await eventually(lambda: store.available, timeout=10)
    await store.sync()
    failures = int((await hash_of(direct)).get("failures", "0"))
    assert failures <= reported
    assert (await hash_of(direct))["state"] == "closed"


async def test_client_pause_is_bounded_and_no_call_sees_a_redis_error(
    stores: Factory, direct: aioredis.Redis
) -> None:
    """CLIENT PAUSE 1500 ALL: calls keep being answered within their deadline
    (op_timeout, generously bounded) and none gets a Redis error; after the pause the
    store is back in sync and Redis holds the failures counted meanwhile or its own."""
    store = stores(cfg(failure_threshold=100), proxied=False, op_timeout=0.3)
    await store.start()
    await direct.client_pause(1500, all=True)
    waits = []
    for _ in range(5):
        started = time.monotonic()
        await fail_once(store)
        waits.append(time.monotonic() - started)
    assert max(waits) < 1.4, waits  # never the pause's 1.5 s: one deadline, not a sum
    await eventually(lambda: store.available, timeout=10)
    await store.sync()
    assert (await hash_of(direct)).get("state") == "closed"


# -- cancellation at every await -----------------------------------------------------


@pytest.mark.parametrize("turns", range(12))
async def test_an_admission_cancelled_after_any_number_of_turns_leaks_no_permit(
    stores: Factory, fault_proxy: FaultProxy, direct: aioredis.Redis, turns: int
) -> None:
    """Half-open, one permit cluster-wide; the admitting caller is cancelled after
    ``turns`` loop turns (anywhere inside acquire): no permit stays taken by nobody,
    so another process is admitted well before the lease ends."""
    clock = Clock(10_000.0)
    config = cfg(failure_threshold=1, recovery_timeout=5, half_open_max_calls=1)
    here = stores(config, clock=clock, op_timeout=2.0)
    there = stores(config, proxied=False, clock=clock, op_timeout=2.0)
    await there.start()
    await fail_once(here)
    # There has heard of the trip (a process that has not admits its calls as closed).
    await eventually(lambda: there.snapshot().state is CircuitState.OPEN)
    clock.now += 5
    fault_proxy.delay_replies(0.02, when=replies_to("EVALSHA"))
    caller = asyncio.create_task(here.acquire())
    for _ in range(turns):
        await asyncio.sleep(0)
    caller.cancel()
    try:
        got = await caller
    except asyncio.CancelledError:
        got = None
    if got is not None and got.ticket is not None:
        await here.record_failure(got.ticket)  # it finished: it reports, as a caller would
        clock.now += 5
    # An ADMIT sent before the cancel may still be on its way to Redis (no trial held
    # yet): there may be turned away once, until that permit is taken and given back.
    # On a clock that never moves, a leaked permit would turn it away for good.
    admitted = await admitted_within(there, 8)
    assert admitted.ticket is not None
    assert admitted.ticket.permit > 0
    assert await trials_in_redis(direct) == [f"trial:{admitted.ticket.permit}"]


async def admitted_within(store: RedisStore, timeout: float) -> Admission:
    """``store.acquire()`` again until it admits (a rejection takes nothing)."""
    deadline = time.monotonic() + timeout
    while (admission := await store.acquire()).ticket is None:
        assert time.monotonic() < deadline, "a permit stays taken by nobody"
        await asyncio.sleep(0.02)
    return admission


@pytest.mark.parametrize("turns", range(12))
async def test_a_failure_report_cancelled_after_any_number_of_turns_counts_at_most_once(
    stores: Factory, fault_proxy: FaultProxy, direct: aioredis.Redis, turns: int
) -> None:
    """One failure report cancelled after ``turns`` loop turns, with a second caller's
    failure queued behind it: Redis counts each at most once, never more, and the count
    it settles on stays (no resend later)."""
    store = stores(cfg(failure_threshold=3), op_timeout=2.0, resync_interval=3600)
    await store.start()
    fault_proxy.delay_replies(0.03, when=replies_to("EVALSHA"))
    ticket = (await store.acquire()).ticket
    assert ticket is not None
    first = asyncio.create_task(store.record_failure(ticket))
    second = asyncio.create_task(store.record_failure(ticket))
    for _ in range(turns):
        await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    await asyncio.sleep(0.3)
    settled = int((await hash_of(direct)).get("failures", "0"))
    assert 1 <= settled <= 2
    await asyncio.sleep(0.3)
    assert (await hash_of(direct)).get("failures") == str(settled)
    assert (await hash_of(direct)).get("state") == "closed"


# -- at most once under random drops and many callers -------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_dropped_replies_under_many_callers_keep_the_threshold_exact(
    stores: Factory, fault_proxy: FaultProxy, direct: aioredis.Redis, seed: int
) -> None:
    """Three processes, 30 concurrent failing callers in rounds, a third of the
    replies dropped after Redis acted (redis-py retries): Redis never counts more
    failures than were reported, and never opens before the threshold."""
    rng = random.Random(seed)
    threshold = 40
    procs = [
        stores(cfg(failure_threshold=threshold), op_timeout=3.0, resync_interval=3600)
        for _ in range(3)
    ]
    for p in procs:
        await p.start()
    reported = 0
    dropped = 0
    for _ in range(3):
        rule = fault_proxy.drop_replies(
            lambda c, cmd: cmd == "EVALSHA" and rng.random() < 0.33, count=None
        )
        calls = []
        for n in range(10):
            p = procs[n % 3]
            ticket = (await p.acquire()).ticket
            assert ticket is not None
            calls.append(asyncio.create_task(p.record_failure(ticket)))
        await asyncio.gather(*calls)
        reported += 10
        dropped += rule.hits
        fault_proxy.heal()
        for p in procs:
            await eventually(lambda p=p: p.available, timeout=15)  # type: ignore[misc]
        held = await hash_of(direct)
        assert held["state"] == "closed", (reported, held)
        assert int(held["failures"]) <= reported, (reported, held)
    assert dropped > 0  # the attack happened
    held = await hash_of(direct)
    # Without an outage every report reached Redis exactly once.
    outages = sum(p.backend_metrics()["redis_outages"] for p in procs)
    if outages == 0:
        assert held["failures"] == str(reported)


async def test_random_dropped_admissions_never_exceed_the_half_open_limit(
    stores: Factory, fault_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    """Half-open, two permits cluster-wide, three processes each sending 5 concurrent
    admissions while half the replies are dropped: at most two trials run at a time
    across all processes (Redis-admitted ones), and none of Redis's permits is left
    held by nobody once they report."""
    clock = Clock(10_000.0)
    rng = random.Random(7)
    config = cfg(failure_threshold=1, recovery_timeout=5, half_open_max_calls=2)
    procs = [stores(config, clock=clock, op_timeout=2.5) for _ in range(3)]
    for p in procs:
        await p.start()
    ticket = (await procs[0].acquire()).ticket
    assert ticket is not None
    await procs[0].record_failure(ticket)
    # Every process has heard of the trip (a process that has not would admit its calls
    # as closed: no trial, and not what this attacks).
    await eventually(lambda: all(p.snapshot().state is CircuitState.OPEN for p in procs))
    clock.now += 5
    rule = fault_proxy.drop_replies(
        lambda c, cmd: cmd == "EVALSHA" and rng.random() < 0.5, count=None
    )
    admissions = await asyncio.gather(*(p.acquire() for p in procs for _ in range(5)))
    fault_proxy.heal()
    assert rule.hits > 0
    shared = [a.ticket for a in admissions if a.ticket is not None and a.ticket.epoch >= 0]
    assert len(shared) <= 2, shared
    assert len({t.permit for t in shared}) == len(shared)
    for p in procs:
        await eventually(lambda p=p: p.available, timeout=15)  # type: ignore[misc]
    assert len(await trials_in_redis(direct)) <= 2


# -- clock steps -----------------------------------------------------------------------


async def test_a_clock_stepped_back_an_hour_shows_retry_after_within_recovery_timeout(
    breakers: Breakers, private_redis: PrivateRedis
) -> None:
    """Through the public breaker: after a backward step of an hour, CircuitOpenError's
    retry_after stays within recovery_timeout, in this process and in another."""
    clock = Clock(10_000.0)
    here, there = breakers(2, failure_threshold=1, recovery_timeout=30, clock=clock)
    assert await there.call(ok) == "ok"
    with pytest.raises(Boom):
        await here.call(boom)
    await eventually(lambda: there.state is CircuitState.OPEN)
    clock.now -= 3600
    for breaker in (here, there):
        with pytest.raises(CircuitOpenError) as caught:
            await breaker.call(ok)
        assert caught.value.retry_after is not None
        assert 0 <= caught.value.retry_after <= 30
    clock.now += 30
    assert await there.call(ok) == "ok"  # a trial, not an hour's wait


async def test_a_clock_stepped_forward_ten_minutes_bounds_every_lease(
    stores: Factory, direct: aioredis.Redis
) -> None:
    """A trial runs; the clock steps forward ten minutes: any lease Redis holds ends at
    most one lease after now, and the half-open limit is documented to give way only
    once; after the first trial reports, the episode's permits are not wedged."""
    clock = Clock(10_000.0)
    config = cfg(
        failure_threshold=1, recovery_timeout=5, half_open_max_calls=1, timeout=7, half_open_lease=9
    )
    store = stores(config, proxied=False, clock=clock)
    ticket = (await store.acquire()).ticket
    assert ticket is not None
    await store.record_failure(ticket)
    clock.now += 5
    first = await store.acquire()
    assert first.ticket is not None
    clock.now += 600
    second = await store.acquire()
    lease_us = int((clock.now + 9) * 1_000_000)
    for field, value in (await hash_of(direct)).items():
        if field.startswith("trial:"):
            assert int(value) <= lease_us, (field, value)
    if second.ticket is not None:
        await store.record_success(second.ticket)
    await store.record_success(first.ticket)
    assert await trials_in_redis(direct) == []


# -- a stall, high RTT -------------------------------------------------------------------


async def test_a_stall_right_after_a_send_is_not_an_outage(
    outside_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    """time.sleep(0.3) in the loop right after a failure report was sent (op_timeout
    0.25), the reply arriving 50 ms later, during the stall: it is used, no outage,
    counted once. The proxy runs on its own thread, so it is not stalled with us."""
    client = aioredis.Redis(host="127.0.0.1", port=outside_proxy.port)
    store = RedisStore(cfg(failure_threshold=5), client, op_timeout=0.25, resync_interval=3600)
    try:
        await store.start()
        outside_proxy.delay_replies(0.05, when=replies_to("EVALSHA"))
        for expected in range(1, 4):
            ticket = (await store.acquire()).ticket
            assert ticket is not None
            asyncio.get_running_loop().call_later(0.01, time.sleep, 0.3)  # after the send
            await store.record_failure(ticket)
            assert store.available
            assert (await hash_of(direct))["failures"] == str(expected)
        assert store.backend_metrics()["redis_outages"] == 0
    finally:
        await store.close()
        await client.aclose()


async def test_high_round_trip_does_not_flap(
    outside_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    """100-150 ms per packet (connection set-up included; the proxy on its own thread),
    op_timeout 1.5 s (above four round trips, as documented): a fresh store comes up,
    stays up over a run of calls, and counts each failure once."""
    outside_proxy.set_latency(0.1, 0.15)
    client = aioredis.Redis(host="127.0.0.1", port=outside_proxy.port)
    store = RedisStore(cfg(failure_threshold=50), client, op_timeout=1.5)
    try:
        await store.start()
        await eventually(lambda: store.available, timeout=20)
        for _ in range(6):
            ticket = (await store.acquire()).ticket
            assert ticket is not None
            await store.record_failure(ticket)
        assert store.available
        assert store.backend_metrics()["redis_outages"] == 0
        assert (await hash_of(direct))["failures"] == "6"
    finally:
        await store.close()
        await client.aclose()


async def test_many_concurrent_callers_in_three_processes_open_at_exactly_the_threshold(
    breakers: Breakers, direct: aioredis.Redis
) -> None:
    """150 failing calls at once, 50 in each of three processes, threshold 7: Redis
    opens once, with exactly 7 failures counted, and every process ends open."""
    made = breakers(3, failure_threshold=7, recovery_timeout=60)
    for breaker in made:
        assert await breaker.call(ok) == "ok"
    seen = [recorder(b) for b in made]
    outcomes = await asyncio.gather(
        *(b.call(boom) for b in made for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(o, Boom | CircuitOpenError) for o in outcomes)
    held = await hash_of(direct)
    assert (held["state"], held["failures"]) == ("open", "7")
    await eventually(lambda: all(b.state is CircuitState.OPEN for b in made))
    assert all([t[1] for t in group] == ["open"] for group in seen), seen


async def test_one_deadline_per_call_when_every_connection_goes_black(
    stores: Factory, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection to Redis black-holed (no FIN, no RST) with calls in flight:
    each call (admission plus its report) waits at most op_timeout in total, give or
    take a generous scheduling margin, and none sees a Redis error; one WARNING."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    store = stores(cfg(failure_threshold=100), op_timeout=0.5, resync_interval=3600)
    await store.start()

    async def one_call(fail: bool) -> float:
        started = time.monotonic()
        ticket = (await store.acquire()).ticket
        assert ticket is not None
        if fail:
            await store.record_failure(ticket)
        else:
            await store.record_success(ticket)
        return time.monotonic() - started

    first = [asyncio.create_task(one_call(n % 2 == 0)) for n in range(20)]
    await asyncio.sleep(0)
    fault_proxy.black_hole()
    fault_proxy.black_hole_replies(count=None)
    waits = await asyncio.gather(*first)
    assert max(waits) < 0.5 + 0.6, sorted(waits)[-3:]
    # A script unanswered op_timeout after it was sent takes the circuit out of step
    # (a caller that gave up earlier leaves that to a watcher).
    await eventually(lambda: not store.available, timeout=5)
    # The script unanswered, then the PING that asks whether Redis is there at all: one
    # WARNING per outage, not per call.
    await eventually(lambda: len(warnings_of(caplog, "unreachable")) >= 1, timeout=5)
    assert len(warnings_of(caplog, "unreachable")) == 1


# -- cancellation through the public breaker -------------------------------------------


async def test_a_trial_cancelled_mid_call_gives_its_permit_back_at_once(
    breakers: Breakers, direct: aioredis.Redis
) -> None:
    """Half-open, one trial cluster-wide; the trial's caller goes away (an HTTP client
    disconnects) while the protected call runs: the permit goes back now, so another
    process runs the next trial long before the lease (default ~90 s) ends."""
    clock = Clock(10_000.0)
    here, there = breakers(
        2, failure_threshold=1, recovery_timeout=5, half_open_max_calls=1, clock=clock
    )
    assert await there.call(ok) == "ok"
    with pytest.raises(Boom):
        await here.call(boom)
    clock.now += 5
    entered = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        await asyncio.sleep(30)

    trial = asyncio.create_task(here.call(hangs))
    await asyncio.wait_for(entered.wait(), 10)
    assert len(await trials_in_redis(direct)) == 1
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    await eventually(lambda: no_trials(direct), timeout=5)
    assert await there.call(ok) == "ok"


async def test_a_trial_whose_caller_leaves_during_its_success_report_still_closes(
    breakers: Breakers, direct: aioredis.Redis, fault_proxy: FaultProxy
) -> None:
    """The trial succeeded; its caller is cancelled while the success report is on the
    wire (replies held 0.3 s): the report is not lost nor sent twice, the circuit closes
    and no permit stays taken."""
    clock = Clock(10_000.0)
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    here = create_redis_circuit_breaker(
        "svc",
        client,
        failure_threshold=1,
        recovery_timeout=5,
        half_open_max_calls=1,
        clock=clock,
        op_timeout=2.0,
    )
    try:
        assert await here.call(ok) == "ok"
        with pytest.raises(Boom):
            await here.call(boom)
        clock.now += 5
        reported = asyncio.Event()

        async def succeeds() -> str:
            fault_proxy.delay_replies(0.3, when=replies_to("EVALSHA"), count=1)
            reported.set()
            return "ok"

        trial = asyncio.create_task(here.call(succeeds))
        await asyncio.wait_for(reported.wait(), 10)
        await asyncio.sleep(0.05)  # the report is on the wire
        trial.cancel()
        await asyncio.gather(trial, return_exceptions=True)
        await eventually(lambda: state_is(direct, "closed"), timeout=5)
        assert await trials_in_redis(direct) == []
        await eventually(lambda: here.state is CircuitState.CLOSED, timeout=5)
    finally:
        await here.close()
        await client.aclose()


# -- memory: names that only pass through pub/sub ---------------------------------------


@pytest.mark.slow
async def test_trips_of_names_this_process_never_uses_leave_its_memory_flat(
    private_redis: PrivateRedis, direct: aioredis.Redis
) -> None:
    """Other processes trip thousands of distinct circuits (each trip is published on
    the pattern this process subscribes to): this process, which serves one circuit,
    keeps no per-name bookkeeping for names it never used. The trips are replayed as
    raw PUBLISHes of a real trip message, so only this process's link allocates."""
    import gc
    import tracemalloc

    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    keeper = RedisStore(cfg(name="keeper"), client)
    tripper = RedisStore(cfg(name="model", failure_threshold=1), direct)
    listener = direct.pubsub()
    try:
        await keeper.start()
        link: Any = keeper.link
        assert link is not None
        await listener.psubscribe("xnai:cb:*")
        await fail_once(tripper)
        payload = None
        for _ in range(200):
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                payload = message["data"]
                break
        assert payload is not None

        async def trips(first: int, count: int) -> None:
            for n in range(first, first + count):
                await direct.publish(f"xnai:cb:{{t-{n}}}", payload)

        await trips(0, 500)
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await trips(500, 2_000)
        await asyncio.sleep(1.0)  # the messages reach this process's subscription
        gc.collect()
        after = tracemalloc.take_snapshot()
        assert link.channels == 1
        grown = sum(
            stat.size_diff
            for stat in after.compare_to(before, "filename")
            if "xnai_core" in str(stat.traceback)
        )
        assert grown < 100_000, grown  # ~50 bytes a name would already be 100 KB
    finally:
        tracemalloc.stop()
        await listener.aclose()
        await tripper.close()
        await keeper.close()
        await client.aclose()


async def test_a_forced_open_circuit_survives_a_restart_empty(
    breakers: Breakers, direct: aioredis.Redis, private_redis: PrivateRedis
) -> None:
    """Forced open by an operator; Redis restarts without persistence: after the
    reconnect Redis holds it forced open again, past recovery_timeout nobody half-opens."""
    here, there = breakers(2, failure_threshold=5, recovery_timeout=1, resync_interval=0.2)
    seen_here, seen_there = recorder(here), recorder(there)
    assert await there.call(ok) == "ok"
    await here.force_open()
    await eventually(lambda: there.state is CircuitState.OPEN)
    private_redis.kill()
    private_redis.start()
    await eventually(lambda: state_is(direct, "open"), timeout=15)
    await asyncio.sleep(1.5)
    assert (await hash_of(direct)).get("forced") == "1"
    assert [here.state, there.state] == [CircuitState.OPEN] * 2
    with pytest.raises(CircuitOpenError):
        await there.call(ok)
    assert [s for s in seen_here + seen_there if s[1] != "open"] == []
    assert seen_there  # the listener did hear the forced open


async def a_trial_running(
    breakers: Breakers, **options: Any
) -> tuple[Any, Any, asyncio.Task[str], asyncio.Event]:
    """Two processes on a circuit (one trial at a time, clock by hand); ``here`` trips it
    and runs the half-open trial, which holds until the returned event is set."""
    clock = Clock(10_000.0)
    here, there = breakers(
        2,
        failure_threshold=1,
        recovery_timeout=5,
        half_open_max_calls=1,
        clock=clock,
        resync_interval=0.2,
        **options,
    )
    assert await there.call(ok) == "ok"
    with pytest.raises(Boom):
        await here.call(boom)
    clock.now += 5
    entered = asyncio.Event()
    release = asyncio.Event()

    async def trial() -> str:
        entered.set()
        await release.wait()
        return "ok"

    running = asyncio.create_task(here.call(trial))
    await asyncio.wait_for(entered.wait(), 10)
    return here, there, running, release


async def test_a_flush_during_a_trial_leaves_a_consistent_circuit_everywhere(
    breakers: Breakers, direct: aioredis.Redis
) -> None:
    """FLUSHDB while a half-open trial runs: whatever its report meets, Redis ends
    with a well-formed hash that holds no permit, and every process agrees with it
    (no wedged half-open, no second trial beyond the limit)."""
    here, there, running, release = await a_trial_running(breakers)
    await direct.flushdb()
    await asyncio.sleep(0.5)
    release.set()
    assert await running == "ok"
    await eventually(lambda: _agreed(direct, here, there), timeout=10)
    assert await trials_in_redis(direct) == []
    assert await there.call(ok) == "ok"
    assert await here.call(ok) == "ok"


async def _agreed(direct: aioredis.Redis, *made: Any) -> bool:
    state = await state_in_redis(direct)
    return state is not None and all(b.state.value == state for b in made)


async def test_a_trial_report_held_by_client_pause_leaks_no_permit(
    breakers: Breakers, direct: aioredis.Redis
) -> None:
    """A half-open trial succeeds while Redis is paused for writes (CLIENT PAUSE 1500
    WRITE, op_timeout 0.3 s): the caller gets its result at once, and once the pause
    ends no permit stays taken and every process agrees with Redis."""
    here, there, running, release = await a_trial_running(breakers, op_timeout=0.3)
    await direct.client_pause(1500, all=False)
    release.set()
    started = time.monotonic()
    assert await running == "ok"
    assert time.monotonic() - started < 1.4  # never the whole pause
    await eventually(lambda: no_trials(direct), timeout=10)
    await eventually(lambda: _agreed(direct, here, there), timeout=10)
    assert await there.call(ok) == "ok"


async def test_a_stall_is_not_taken_for_a_silent_subscription(
    stores: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop blocks 1.2 s (past the heartbeat's 1 s deadline) just after the idle
    subscription was PINGed: the PONG waits in the socket, so this is no silence: no
    WARNING, no replaced subscription, no outage."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    store = stores(cfg(), proxied=False, resync_interval=3600)
    await store.start()
    assert store.available
    for pause in (0.42, 0.45, 0.5, 0.6):
        await asyncio.sleep(pause)  # quiet: the heartbeat PINGs at 0.4 s
        asyncio.get_running_loop().call_soon(time.sleep, 1.2)  # a blocking callback
        await asyncio.sleep(0.3)
    assert store.backend_metrics()["redis_subscription_silences"] == 0
    assert warnings_of(caplog, "silent") == []
    assert store.backend_metrics()["redis_outages"] == 0


@pytest.mark.parametrize("when", ["while it is sent", "right after it is sent"])
async def test_a_stall_at_the_heartbeat_ping_is_not_a_silence(
    stores: Factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The loop blocks 1.2 s (past the heartbeat's 1 s deadline) at the idle subscription's
    PING, three times: while the PING is on its way out, or right after, before its PONG is
    read. The PONG comes, and waits in the socket: no silence, no replaced subscription.
    Before, the deadline ran from before the send and was checked right after it, and the
    poll cut short by the stall was taken for an unanswered PING."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    real_ping = PubSub.ping
    pings = 0

    async def stalled_ping(self: PubSub, message: Any = None) -> Any:
        nonlocal pings
        pings += 1
        stall = pings <= 3
        if stall and when == "while it is sent":
            asyncio.get_running_loop().call_soon(time.sleep, 1.2)
            await asyncio.sleep(0)  # the stall comes before the PING is written
        answer = await real_ping(self, message)
        if stall and when == "right after it is sent":
            asyncio.get_running_loop().call_soon(time.sleep, 1.2)
        return answer

    monkeypatch.setattr(PubSub, "ping", stalled_ping)
    store = stores(cfg(), proxied=False, resync_interval=3600)
    await store.start()
    await eventually(lambda: pings >= 5, timeout=30)
    assert warnings_of(caplog, "silent") == []
    assert store.backend_metrics()["redis_subscription_silences"] == 0
    assert store.backend_metrics()["redis_outages"] == 0
