"""Every number docs/redis.md states about the shared circuit, each held by a test that
fails if the code and the page part: defaults, the request log's horizon and the spans
it must cover, the heartbeat's timings, the set-up deadline, the round trips of a
burst, and the metrics table. (Bounds, backoff and clocks have tests of their own:
test_redis_bounds.py, test_redis_backoff.py, test_redis_faults.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.redis_helpers import Boom, command_counts, commands_between, ok
from xnai_core import RedisStore, create_redis_circuit_breaker
from xnai_core.circuit import redis_requests, redis_scripts, redis_subscription
from xnai_core.circuit.redis_link import LATE_CAP, setup_timeout

TIMES = "\N{MULTIPLICATION SIGN}"
DOC = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()


def test_the_options_table_defaults_are_the_factorys() -> None:
    """failure_threshold 5, recovery_timeout 60, timeout 30, half_open_max_calls 3,
    expected_exception Exception, half_open_lease timeout + max(recovery_timeout, 1,
    2 x op_timeout), key_prefix "xnai:cb:", op_timeout 0.25, resync_interval 5.0."""
    breaker = create_redis_circuit_breaker("svc", aioredis.Redis())
    config, store = breaker.config, breaker.store
    assert isinstance(store, RedisStore)
    assert (config.failure_threshold, config.recovery_timeout, config.timeout) == (5, 60.0, 30.0)
    assert (config.half_open_max_calls, config.counted_exceptions) == (3, (Exception,))
    assert config.lease_seconds == 30 + max(60, 1, 2 * 0.25)
    assert (store.key, store.op_timeout, store.resync_interval) == ("xnai:cb:{svc}", 0.25, 5.0)
    for row in (
        "| `failure_threshold` | 5 |",
        "| `recovery_timeout` | 60 |",
        "| `timeout` | 30 |",
        "| `half_open_max_calls` | 3 |",
        "| `op_timeout` | 0.25 |",
        "| `resync_interval` | 5.0 |",
        '| `key_prefix` | `"xnai:cb:"` |',
        "| `half_open_lease` | `timeout + max(recovery_timeout, 1, 2 " + TIMES + " op_timeout)` |",
    ):
        assert row in DOC, row
    # The default lease grows with op_timeout (2 x 4 s > recovery_timeout 5 s).
    slow = create_redis_circuit_breaker("svc", aioredis.Redis(), recovery_timeout=5, op_timeout=4)
    assert slow.config.lease_seconds == 30 + 8


def test_the_set_up_deadline_is_max_5_s_and_10_op_timeouts() -> None:
    """The link's own work: "their own, longer deadline: `max(5 s, 10 x op_timeout)`"."""
    assert "`max(5 s, 10 " + TIMES + " op_timeout)`" in DOC
    assert setup_timeout(0.25) == 5.0
    assert setup_timeout(0.5) == 5.0
    assert setup_timeout(1.5) == 15.0


def test_the_request_log_outlives_every_copy_of_a_request() -> None:
    """Answers kept two minutes; a request resent for at most 30 s, each send read for at
    most 30 s more: every copy arrives within a minute, half the log's horizon."""
    assert "each answer kept two minutes" in DOC
    assert "resent for at most 30 s and each send is read for at most 30 s more" in DOC
    horizon = re.search(r"local HORIZON = (\d+)", redis_scripts.PRELUDE)
    assert horizon is not None
    horizon_seconds = int(horizon.group(1)) / 1e6
    assert horizon_seconds == 120
    assert redis_requests._RESEND_HORIZON == 30
    assert LATE_CAP == 30
    assert horizon_seconds >= 2 * (redis_requests._RESEND_HORIZON + LATE_CAP)


async def test_a_request_logs_answer_expires_after_two_minutes(
    private_redis: PrivateRedis,
) -> None:
    """A failure report (it changes the hash) leaves its answer in ``<key>:rq``, which
    Redis expires two minutes after the last write."""
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    breaker = create_redis_circuit_breaker("svc", client, failure_threshold=10)
    try:
        assert await breaker.call(ok) == "ok"

        async def boom() -> None:
            raise Boom

        with contextlib.suppress(Boom):
            await breaker.call(boom)
        ttl = await client.pttl("xnai:cb:{svc}:rq")
        assert 110_000 < ttl <= 120_000, ttl
        [(rid, record)] = (await client.hgetall("xnai:cb:{svc}:rq")).items()
        expiry_us = int(record.split()[0])
        assert abs(expiry_us / 1e6 - (time.time() + 120)) < 10, (rid, record)
    finally:
        await breaker.close()
        await client.aclose()


def test_the_heartbeat_finds_a_silent_subscription_within_2_s() -> None:
    """ "quiet for 0.4 s the link PINGs it; no answer within 1 s and it is dropped ...
    found within 2 s": the idle time, the PING's deadline and one poll each side."""
    assert "quiet\nfor 0.4 s the link PINGs it; no answer within 1 s" in DOC
    assert redis_subscription.HEARTBEAT_IDLE == 0.4
    assert redis_subscription.HEARTBEAT_DEADLINE == 1.0
    poll = redis_subscription.POLL
    worst = redis_subscription.HEARTBEAT_IDLE + poll + redis_subscription.HEARTBEAT_DEADLINE + poll
    assert worst <= 2.0


async def test_a_burst_of_300_failing_calls_costs_at_most_two_round_trips(
    private_redis: PrivateRedis,
) -> None:
    """ "A burst of 300 concurrent failing calls costs two round trips and one connection":
    the first failure's FAILURE, and one more carrying the rest as a count."""
    assert "A burst of 300\n  concurrent failing calls costs two round trips" in DOC
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    counter = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    breaker = create_redis_circuit_breaker("svc", client, failure_threshold=1000)
    try:
        assert await breaker.call(ok) == "ok"
        connections = len(client.connection_pool._available_connections)

        async def slow_boom() -> None:
            await asyncio.sleep(0.001)  # every call is in flight before the first fails
            raise Boom

        before = await command_counts(counter)
        results = await asyncio.gather(
            *(breaker.call(slow_boom) for _ in range(300)), return_exceptions=True
        )
        assert all(isinstance(result, Boom) for result in results)
        round_trips = commands_between(before, await command_counts(counter)).get("evalsha")
        assert round_trips in (1, 2), round_trips  # at most two: all 300 may go in one
        assert await client.hget("xnai:cb:{svc}", "failures") == b"300"
        assert len(client.connection_pool._available_connections) == connections
    finally:
        await breaker.close()
        await client.aclose()
        await counter.aclose()


async def test_the_metrics_table_lists_what_get_metrics_adds(
    private_redis: PrivateRedis,
) -> None:
    """The table under "Metrics" names exactly the keys a Redis-backed breaker adds."""
    section = DOC.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(redis_[a-z_]+)` \|", section, flags=re.MULTILINE))
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    breaker = create_redis_circuit_breaker("svc", client)
    try:
        assert await breaker.call(ok) == "ok"
        added = {key for key in breaker.get_metrics() if key.startswith("redis_")}
        assert added - {"redis_available"} == documented
    finally:
        await breaker.close()
        await client.aclose()
