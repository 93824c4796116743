"""RedisCache and CacheFirstStrategy against a real Redis, including one that is killed or hung."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import pickle
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import pytest
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis, free_port
from tests.degradation_helpers import Backend, FakeClock, fresh_backend  # noqa: F401  (fresh_backend: an autouse fixture)
from tests.fault_proxy import FaultProxy, replies_to
from tests.helpers import run_virtual
from xnai_core.degradation.cache import CacheEntry
from xnai_core.degradation.cache_first import CacheFirstStrategy
from xnai_core.degradation.errors import CacheClearError
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.redis_cache import RedisCache
from xnai_core.degradation.strategies import DegradedModeStrategy

START = 1_700_000_000.0  # this module's clocks start here


async def ask(prompt: str) -> dict[str, object]:
    Backend.calls += 1
    if not Backend.healthy:
        raise ConnectionError("LLM down")
    return {"answer": prompt, "n": Backend.calls, "tokens": [1, 2.5, None, True]}


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the private server with short socket timeouts."""
    client = aioredis.Redis.from_url(
        private_redis.url, socket_connect_timeout=0.2, socket_timeout=0.2
    )
    try:
        yield client
    finally:
        await client.aclose()


_CACHE_OF: dict[int, CacheFirstStrategy] = {}


def manager_with(
    cache: RedisCache, clock: FakeClock, *, ttl: float = 60, stale: float = 600
) -> ServiceDegradationManager:
    manager = ServiceDegradationManager(clock=clock)
    strategy = CacheFirstStrategy(cache, ttl=ttl, stale_if_error=stale, clock=clock)
    manager.add_service_strategy("llm", strategy, priority=20)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    _CACHE_OF[id(manager)] = strategy
    return manager


async def written(manager: ServiceDegradationManager) -> None:
    """Wait for the answers the manager's cache writes behind the callers' backs."""
    await _CACHE_OF[id(manager)].flush()


# -- the cache itself ---------------------------------------------------------------------


async def test_entries_are_json_with_a_redis_expiry(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """set() writes plain JSON under the prefix with PX = keep_for; get() reads it back."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:cache:")
    await cache.set("k", CacheEntry({"a": [1, "x"]}, 123.5), keep_for=90)
    raw = await shared_redis.get(f"{key_prefix}:cache:k")
    assert raw is not None
    assert json.loads(raw) == {"v": {"a": [1, "x"]}, "t": 123.5}
    ttl_ms = await shared_redis.pttl(f"{key_prefix}:cache:k")
    assert 89_000 < ttl_ms <= 90_000
    assert await cache.get("k") == CacheEntry({"a": [1, "x"]}, 123.5)
    assert await cache.get("absent") is None


class Point(NamedTuple):
    x: int
    y: int


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [(1, "a"), {"t": (2.5, None)}],
        {"__xnai_tuple__": [1]},
        {"__xnai_dict__": {"a": 1}},
        {"a": {"__xnai_tuple__": "not a list"}},
        ((), [], {}),
    ],
)
async def test_values_come_back_exactly_as_they_went_in(
    shared_redis: aioredis.Redis, key_prefix: str, value: object
) -> None:
    """A tuple is a tuple again, and dicts that look like the tuple tag are dicts."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:")
    await cache.set("k", CacheEntry(value, 0.0), keep_for=5)
    entry = await cache.get("k")
    assert entry is not None
    assert entry.value == value
    assert repr(entry.value) == repr(value)  # the same types all the way down


async def test_a_hit_and_a_miss_answer_alike(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    """A namedtuple or an IntEnum is never turned into a list or an int by a hit: such an
    answer is not cached, so every caller gets the primary's own value."""
    clock = FakeClock(START)
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:")
    strategy = CacheFirstStrategy(cache, ttl=60, clock=clock, key_func=str)
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("geo", strategy)

    async def locate(which: str) -> object:
        return {"point": Point(1, 2), "color": Color.RED, "pair": (1, 2)}[which]

    for which in ("point", "color", "pair"):
        answers = []
        for _ in range(2):
            answers.append(await manager.call_service("geo", locate, which))
            await strategy.flush()
        assert [type(a) for a in answers] == [type(await locate(which))] * 2, which
        assert answers == [await locate(which)] * 2
    stats = strategy.get_stats()
    assert stats["hits"] == 1  # the tuple; the namedtuple and the enum always miss
    assert cache.get_stats()["unserialisable_values"] == 4


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1: "int key"}, "a dict key of type int"),
        (float("nan"), "a non-finite float"),
        ({"when": object()}, "a value of type object"),
        ([b"bytes"], "a value of type bytes"),
        (Point(1, 2), "a namedtuple (Point)"),
        ({"c": Color.RED}, "an enum of type Color"),
        ([True, 1, {1.5}], "a value of type set"),
    ],
)
async def test_values_json_cannot_hold_exactly_are_not_stored(
    shared_redis: aioredis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    value: object,
    problem: str,
) -> None:
    """Non-JSON values are skipped with one warning per kind, never pickled."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:")
    await cache.set("k", CacheEntry(value, 0.0), keep_for=5)
    await cache.set("k", CacheEntry(value, 0.0), keep_for=5)
    assert await shared_redis.exists(f"{key_prefix}:k") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"answer not cached in Redis: {problem} is not exact JSON (logged once per type)"
    ]
    assert cache.get_stats()["unserialisable_values"] == 2


@pytest.mark.parametrize(
    "raw",
    [
        pickle.dumps({"v": "x", "t": 1.0}),
        b"not json",
        b'["v", "t"]',
        b'{"v": 1}',
        b'{"v": 1, "t": "yesterday"}',
        b'{"v": 1, "t": true}',
        # not JSON, never written by encode(): a "t" of Infinity would be fresh for ever
        b'{"v": 1, "t": Infinity}',
        b'{"v": 1, "t": 1e999}',
        b'{"v": NaN, "t": 1}',
        b'{"v": [1, -Infinity], "t": 1}',
    ],
)
async def test_foreign_or_malformed_values_are_misses(
    shared_redis: aioredis.Redis, key_prefix: str, raw: bytes
) -> None:
    """Whatever else sits under the key (a pickle, junk) is a miss, never unpickled or eval'd."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:")
    await shared_redis.set(f"{key_prefix}:k", raw)
    assert await cache.get("k") is None
    assert cache.get_stats()["malformed_entries"] == 1


async def test_clear_removes_only_its_prefix(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    """clear() unlinks every key under its prefix (glob characters escaped) and nothing else."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:c*:")
    for i in range(3):
        await cache.set(f"k{i}", CacheEntry(i, 0.0), keep_for=30)
    await shared_redis.set(f"{key_prefix}:cx:other", "keep")
    assert await cache.clear() == 3
    assert await shared_redis.get(f"{key_prefix}:cx:other") == b"keep"


async def test_repr_never_shows_the_client() -> None:
    """The client's URL (and password) stays out of the repr."""
    client = aioredis.Redis.from_url("redis://user:s3cret@127.0.0.1:1/0")
    cache = RedisCache(client, prefix="p:")
    assert "s3cret" not in repr(cache)
    assert repr(cache) == "RedisCache(prefix='p:', op_timeout=0.5)"
    await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prefix": ""}, ValueError, "'prefix' must be a non-empty string: ''"),
        ({"op_timeout": 0}, ValueError, "'op_timeout' must be > 0 seconds: 0"),
        ({"op_timeout": "1"}, TypeError, "'op_timeout' must be a number of seconds: '1'"),
    ],
)
async def test_redis_cache_settings_are_validated(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Bad settings fail at construction."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(error, match=message):
        RedisCache(client, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'client' must be a redis\.asyncio\.Redis"):
        RedisCache("redis://localhost")  # type: ignore[arg-type]
    await client.aclose()


# -- CacheFirstStrategy over Redis --------------------------------------------------------


async def test_answers_are_shared_between_managers(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Two managers (two processes' worth of state) share answers through Redis."""
    clock = FakeClock(START)
    other_client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    try:
        first = manager_with(RedisCache(shared_redis, prefix=f"{key_prefix}:"), clock)
        second = manager_with(RedisCache(other_client, prefix=f"{key_prefix}:"), clock)
        answer = await first.call_service("llm", ask, "q")
        await written(first)
        read = await second.call_service_detailed("llm", ask, "q")
        assert read.value == answer
        assert (read.source, read.degraded) == ("CacheFirstStrategy", False)
        assert Backend.calls == 1
    finally:
        await other_client.aclose()


async def test_stale_window_over_redis(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    """Past ttl, a failing primary is answered from Redis until ttl + stale_if_error."""
    clock = FakeClock(START)
    manager = manager_with(
        RedisCache(shared_redis, prefix=f"{key_prefix}:"), clock, ttl=60, stale=600
    )
    fresh = await manager.call_service("llm", ask, "q")
    await written(manager)
    Backend.healthy = False
    clock.now += 659.0
    stale = await manager.call_service_detailed("llm", ask, "q")
    assert (stale.value, stale.source, stale.degraded) == (fresh, "CacheFirstStrategy", True)
    clock.now += 1.0
    assert await manager.call_service("llm", ask, "q") == "sorry"


async def test_killed_redis_is_a_miss_not_an_error(
    private_redis: PrivateRedis,
    private_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis dead, calls still work: fresh answers pass through, failures fall back.
    Only the first operation pays for the outage; the others skip Redis."""
    clock = FakeClock(START)
    cache = RedisCache(private_client, prefix="xnai-test:", op_timeout=0.3, probe_interval=30)
    manager = manager_with(cache, clock)
    await manager.call_service("llm", ask, "q")  # cached while Redis lives
    await written(manager)
    private_redis.kill()

    clock.now += 120  # past ttl: the primary is asked
    assert (await manager.call_service("llm", ask, "q"))["n"] == 2
    await written(manager)
    Backend.healthy = False
    result = await manager.call_service_detailed("llm", ask, "q")
    assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
    assert cache.available is False
    stats = cache.get_stats()
    # The lookup of the second call found it down; its write, the third call's lookup and
    # its stale lookup never touched the network.
    assert (stats["errors"], stats["writes_dropped"], stats["skipped_while_down"]) == (1, 1, 2)
    await cache.aclose()
    outage_warnings = [
        r for r in caplog.records if r.getMessage().startswith("redis cache unavailable")
    ]
    assert len(outage_warnings) == 1


async def test_redis_coming_back_is_used_again(
    private_redis: PrivateRedis,
    private_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a restart the cache stores and serves again, and says so once."""
    caplog.set_level(logging.INFO, logger="xnai_core.degradation")
    clock = FakeClock(START)
    cache = RedisCache(private_client, prefix="xnai-test:", op_timeout=0.3, probe_interval=0.02)
    manager = manager_with(cache, clock)
    private_redis.kill()
    await manager.call_service("llm", ask, "q")
    assert cache.available is False
    private_redis.start()
    await eventually(lambda: cache.available, timeout=10)  # the background probe saw it
    await manager.call_service("llm", ask, "q")
    await written(manager)  # stored now
    Backend.healthy = False
    hit = await manager.call_service_detailed("llm", ask, "q")
    assert (hit.source, hit.degraded) == ("CacheFirstStrategy", False)
    assert cache.available is True
    assert any(r.getMessage() == "redis cache available again" for r in caplog.records)


async def eventually(condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_hung_redis_costs_at_most_op_timeout(
    private_redis: PrivateRedis, private_client: aioredis.Redis
) -> None:
    """A Redis that accepts but never answers (SIGSTOP) is a miss after op_timeout."""
    clock = FakeClock(START)
    cache = RedisCache(private_client, prefix="xnai-test:", op_timeout=0.1)
    manager = manager_with(cache, clock)
    private_redis.pause()
    try:
        Backend.healthy = False
        result = await manager.call_service_detailed("llm", ask, "q")
        assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
        assert cache.available is False
    finally:
        private_redis.resume()


# -- clear() on a Redis that fails or hangs ---------------------------------------------


async def _fill(cache: RedisCache, count: int) -> None:
    for i in range(count):
        await cache.set(f"k{i}", CacheEntry(i, 0.0), keep_for=60)


async def test_clear_of_a_hung_redis_fails_after_op_timeout(private_redis: PrivateRedis) -> None:
    """A Redis that accepts but never answers: clear() raises after op_timeout, it does not
    hang forever (the client has no socket timeout of its own to save it)."""
    client = aioredis.Redis.from_url(private_redis.url)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=0.2)
    strategy = CacheFirstStrategy(cache)
    try:
        await _fill(cache, 3)
        private_redis.pause()
        for clear in (cache.clear, strategy.clear):
            started = time.monotonic()
            with pytest.raises(CacheClearError) as caught:
                await asyncio.wait_for(clear(), 10)
            assert time.monotonic() - started < 2.0
            assert isinstance(caught.value, ConnectionError)
            assert caught.value.removed == 0
            assert str(caught.value) == (
                "clearing the cache under 'xnai-test:' stopped after 0 keys: no answer within 0.2s"
            )
        assert cache.available is False
    finally:
        private_redis.resume()
        await client.aclose()


async def test_clear_of_a_dead_redis_fails(private_redis: PrivateRedis) -> None:
    """Redis down: clear() says it did not clear, rather than answering 0."""
    client = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=0.2)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=0.5)
    try:
        private_redis.kill()
        with pytest.raises(CacheClearError, match="stopped after 0 keys") as caught:
            await cache.clear()
        assert caught.value.prefix == "xnai-test:"
        assert caught.value.__cause__ is not None
    finally:
        await client.aclose()


class PausesAfterFirstUnlink:
    """A client whose server hangs right after the first UNLINK batch went through."""

    def __init__(self, client: aioredis.Redis, server: PrivateRedis) -> None:
        self.client = client
        self.server = server
        self.get, self.set = client.get, client.set
        self.scan_iter = client.scan_iter

    async def unlink(self, *names: bytes | str) -> int:
        removed = int(await self.client.unlink(*names))
        self.server.pause()
        return removed


async def test_clear_that_stops_midway_says_how_many_keys_went(
    private_redis: PrivateRedis,
) -> None:
    """Each round trip is bounded: a hang after one batch ends the clear, and the error
    tells how many keys had been removed."""
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await _fill(RedisCache(client, prefix="xnai-test:"), 1200)
        cache = RedisCache(
            PausesAfterFirstUnlink(client, private_redis),  # type: ignore[arg-type]
            prefix="xnai-test:",
            op_timeout=0.2,
        )
        with pytest.raises(CacheClearError) as caught:
            await asyncio.wait_for(cache.clear(), 10)
        assert caught.value.removed == 500
    finally:
        private_redis.resume()
        await client.aclose()


# -- what reaches Redis key names ---------------------------------------------------------


def configured(model: str) -> Any:
    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        async def wrapper(prompt: str) -> Any:
            return await func(f"{model}: {prompt}")

        return wrapper

    return decorate


async def test_argument_text_never_appears_in_redis_key_names(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """The default key is a digest: a prompt, a keyword value or a wrapper's captured model
    name is nowhere in the keys under the cache's prefix."""
    prompt = "PROMPT-ZEBRA-4411 what is my password hunter2?"
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:")
    manager = manager_with(cache, FakeClock(START))
    await manager.call_service("llm", ask, prompt)
    await manager.call_service("llm", ask, prompt=f"{prompt} (as keyword)")
    await manager.call_service("llm", configured("MODEL-OKAPI-77")(ask), prompt)
    keys = [
        key.decode() async for key in shared_redis.scan_iter(match=f"{key_prefix}:*", count=500)
    ]
    assert len(keys) == 3
    for key in keys:
        assert re.fullmatch(re.escape(f"{key_prefix}:3:llm:") + "[0-9a-f]{64}", key), key
        for secret in ("ZEBRA", "4411", "hunter2", "password", "OKAPI", "keyword"):
            assert secret not in key


# -- a Redis that is down costs a call nothing after the first failure ---------------------


async def _outage_calls(
    manager: ServiceDegradationManager, cache: RedisCache, calls: int
) -> list[str]:
    """``calls`` calls, half answered by the primary, half by the fallback after a failure
    (which also asks the cache for a stale entry)."""
    sources = []
    for i in range(calls):
        Backend.healthy = i % 2 == 0
        result = await manager.call_service_detailed("llm", ask, f"q{i}")
        await written(manager)
        sources.append(result.source)
    return sources


@pytest.mark.parametrize("fault", ["killed", "paused", "dropped"])
async def test_a_down_redis_is_tried_once_then_skipped_until_a_probe_finds_it(
    private_redis: PrivateRedis,
    fault_proxy: FaultProxy,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a client built as the docs build it (redis-py's default retry), a refused, hung
    or reply-dropping Redis is paid for by one operation, bounded by op_timeout; the
    lookups, writes and stale lookups after it never reach the network; a background
    probe finds Redis back."""
    caplog.set_level(logging.INFO, logger="xnai_core.degradation")
    port = fault_proxy.port if fault == "dropped" else private_redis.port
    client = aioredis.Redis(host="127.0.0.1", port=port)  # default retry on
    clock = FakeClock(START)
    cache = RedisCache(
        client, prefix="xnai-test:", op_timeout=0.2, probe_interval=0.05, probe_max_interval=0.2
    )
    manager = manager_with(cache, clock)
    try:
        await manager.call_service("llm", ask, "warm")  # a connection exists
        await written(manager)
        if fault == "killed":
            private_redis.kill()
        elif fault == "paused":
            private_redis.pause()
        else:
            fault_proxy.drop_replies(count=None)  # Redis acts; the client never hears
        sources = await _outage_calls(manager, cache, 20)
        assert sources == ["primary", "DegradedModeStrategy"] * 10
        stats = cache.get_stats()
        assert stats["errors"] == 1  # the first lookup; nothing after it touched Redis
        assert stats["skipped_while_down"] == 29  # 19 lookups + 10 stale lookups
        assert stats["writes_dropped"] == 10
        assert cache.available is False
        if fault == "killed":
            private_redis.start()
        elif fault == "paused":
            private_redis.resume()
        else:
            fault_proxy.heal()
        await eventually(lambda: cache.available, timeout=15)
        probes = cache.get_stats()["probes"]
        assert isinstance(probes, int)
        assert probes >= 1
        Backend.healthy = True
        await manager.call_service("llm", ask, "back")
        await written(manager)
        Backend.healthy = False
        hit = await manager.call_service_detailed("llm", ask, "back")
        assert (hit.source, hit.degraded) == ("CacheFirstStrategy", False)  # stored again
        messages = [r.getMessage() for r in caplog.records]
        assert sum(m.startswith("redis cache unavailable") for m in messages) == 1
        assert messages.count("redis cache available again") == 1
    finally:
        if fault == "paused":
            private_redis.resume()
        await cache.aclose()
        await client.aclose()


async def test_the_answer_never_waits_for_the_cache_write(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """A SET that hangs (its reply held back) does not hold the answer: the call returns
    while the write is still in flight, and the next caller is served the pending answer
    without a second primary call."""
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    clock = FakeClock(START)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=10)
    manager = manager_with(cache, clock)
    strategy = _CACHE_OF[id(manager)]
    fault_proxy.delay_replies(2.0, when=replies_to("SET"))
    try:
        first = await manager.call_service_detailed("llm", ask, "q")
        assert first.source == "primary"
        assert strategy.get_stats()["pending_writes"] == 1  # still writing
        second = await manager.call_service_detailed("llm", ask, "q")
        assert (second.value, second.source) == (first.value, "CacheFirstStrategy")
        assert Backend.calls == 1
        await strategy.flush()  # the held reply arrives: the write lands
        assert strategy.get_stats()["pending_writes"] == 0
        assert cache.available is True
    finally:
        await cache.aclose()
        await client.aclose()


def test_one_probe_at_a_time_backing_off_with_jitter() -> None:
    """While Redis is down (a port nothing listens on), one background probe PINGs it,
    after probe_interval, then twice as long each time up to probe_max_interval; lookups
    meanwhile start no probe of their own. Jitter shortens each wait by up to half.
    (On a loop whose clock jumps to the next timer: no test time is slept.)"""

    def probes_seen(rand: float, checkpoints: list[float]) -> list[int]:
        async def scenario() -> list[int]:
            loop = asyncio.get_running_loop()
            client = aioredis.Redis(host="127.0.0.1", port=free_port())  # default retry
            cache = RedisCache(
                client,
                prefix="xnai-test:",
                op_timeout=0.1,
                probe_interval=1,
                probe_max_interval=8,
                random=lambda: rand,
            )
            seen = []
            try:
                assert await cache.get("k") is None  # finds it down
                start = loop.time()
                for checkpoint in checkpoints:
                    await asyncio.sleep(start + checkpoint - loop.time())
                    await asyncio.gather(*(cache.get("k") for _ in range(20)))
                    probes = cache.get_stats()["probes"]
                    assert isinstance(probes, int)
                    seen.append(probes)
                assert cache.get_stats()["errors"] == 1
            finally:
                await cache.aclose()
                await client.aclose()
            return seen

        return run_virtual(scenario())

    # No jitter drawn: probes at about 1, 3, 7, 15, 23 s (each PING costs <= 0.1 s).
    assert probes_seen(0.0, [0.9, 2, 5, 10, 20, 30]) == [0, 1, 2, 3, 4, 5]
    # The largest draw halves every wait: about 0.5, 1.5, 3.5, 7.5, 11.5 s.
    assert probes_seen(0.999, [0.9, 2, 5, 10, 14]) == [1, 2, 3, 4, 5]


async def test_clear_drops_answers_still_being_written(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """An answer whose write is in flight when the cache is cleared does not come back:
    neither from the strategy's pending writes nor from Redis."""
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    clock = FakeClock(START)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=10)
    manager = manager_with(cache, clock)
    strategy = _CACHE_OF[id(manager)]
    fault_proxy.delay_replies(2.0, when=replies_to("SET"), count=1)
    try:
        await manager.call_service("llm", ask, "q")
        assert strategy.get_stats()["pending_writes"] == 1
        await strategy.clear()
        assert strategy.get_stats()["pending_writes"] == 0
        again = await manager.call_service_detailed("llm", ask, "q")
        assert again.source == "primary"  # a miss: the cleared answer is gone
        assert Backend.calls == 2
    finally:
        await strategy.flush()
        await cache.aclose()
        await client.aclose()


def _write_tasks() -> int:
    return sum(
        1
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "CacheFirstStrategy._write"
    )


@pytest.mark.parametrize("hang", ["server", "writes"])
async def test_write_behind_stays_bounded_while_redis_hangs(
    private_redis: PrivateRedis, fault_proxy: FaultProxy, hang: str
) -> None:
    """A burst of distinct misses while Redis hangs (the whole server SIGSTOPped, or only
    its SET replies held while reads answer): the answers never wait for the cache, write
    tasks stay under MAX_PENDING_WRITES, at most max_writes SETs hold a connection (the
    client's pool stays free for its other users), and every write ends within op_timeout,
    dropped and counted."""
    from xnai_core.degradation.cache_first import MAX_PENDING_WRITES

    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)  # default retry on
    clock = FakeClock(START)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=0.3, probe_interval=30)
    manager = manager_with(cache, clock)
    strategy = _CACHE_OF[id(manager)]
    burst = 2 * MAX_PENDING_WRITES
    try:
        await manager.call_service("llm", ask, "warm")
        await written(manager)
        if hang == "server":
            private_redis.pause()
        else:
            fault_proxy.delay_replies(60.0, when=replies_to("SET"))
        results = await asyncio.gather(
            *(manager.call_service_detailed("llm", ask, f"q{i}") for i in range(burst))
        )
        assert {r.source for r in results} == {"primary"}
        assert _write_tasks() <= MAX_PENDING_WRITES
        in_flight = cache.get_stats()["writes_in_flight"]
        assert isinstance(in_flight, int)
        assert in_flight <= cache.max_writes
        if hang == "writes":
            # The client's other users still get connections: reads answer.
            async with asyncio.timeout(2):
                assert await client.get("xnai-test:nothing") is None
        async with asyncio.timeout(5):  # each write is cut at op_timeout
            await strategy.flush()
        stats = cache.get_stats()
        assert (strategy.get_stats()["pending_writes"], stats["writes_in_flight"]) == (0, 0)
        dropped = [strategy.get_stats()["writes_dropped"], stats["writes_dropped"]]
        assert all(isinstance(count, int) for count in dropped)
        assert sum(dropped) == burst, dropped  # type: ignore[arg-type]  # none written, all counted
    finally:
        if hang == "server":
            private_redis.resume()
        await cache.aclose()
        await client.aclose()


async def test_a_burst_past_the_client_pool_is_no_outage(shared_redis: aioredis.Redis) -> None:
    """More concurrent lookups than the client's pool has connections (redis-py: 100),
    against a healthy Redis: a full pool is this process being busy, not Redis down; the
    lookups wait for a connection, and the cache stays available."""
    pool = aioredis.Redis.from_url(SHARED_REDIS_URL, max_connections=4)
    cache = RedisCache(pool, prefix=f"xnai-test-{id(pool)}:", op_timeout=5)
    try:
        found = await asyncio.gather(*(cache.get(f"k{i}") for i in range(200)))
        assert found == [None] * 200
        stats = cache.get_stats()
        assert (stats["available"], stats["errors"], stats["busy"]) == (True, 0, 0)
    finally:
        await cache.aclose()
        await pool.aclose()


async def test_a_stalled_event_loop_is_not_a_redis_outage(
    shared_redis: aioredis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that blocks the loop past op_timeout while a lookup is under way (its
    deadline fires late, the reply is in the socket or the request not even sent): the
    lookup is answered, and a healthy Redis is not marked down."""
    cache = RedisCache(shared_redis, prefix=f"{key_prefix}:", op_timeout=0.1)
    await cache.set("k", CacheEntry("v", 1.0), keep_for=30)

    async def stall() -> None:
        await asyncio.sleep(0)
        time.sleep(0.25)  # noqa: ASYNC251  (the fault under test: a blocking callback)

    try:
        for _ in range(3):
            staller = asyncio.ensure_future(stall())
            assert await cache.get("k") == CacheEntry("v", 1.0)
            await staller
        stats = cache.get_stats()
        assert (stats["available"], stats["errors"]) == (True, 0)
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
    finally:
        await cache.aclose()


async def test_a_caller_cancelled_at_any_await_leaves_no_operation_behind(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """Callers cancelled after 0, 1, 2 ... loop turns of a lookup (replies slowed so every
    await is reached): the Redis operation is cancelled with its caller, no turn is kept,
    the cache is not marked down, and the next lookup answers."""
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=2, max_lookups=1)
    await cache.set("k", CacheEntry("v", 1.0), keep_for=30)
    fault_proxy.delay_replies(0.01, when=replies_to("GET"))
    try:
        for turns in range(12):
            lookup = asyncio.ensure_future(cache.get("k"))
            for _ in range(turns):
                await asyncio.sleep(0)
            lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)
            # The operation's own task was cancelled with it and ends at once.
            await eventually(lambda: cache.get_stats()["lookups_in_flight"] == 0, timeout=2)
        # max_lookups=1: a turn kept by a cancelled caller would leave this one waiting.
        assert await cache.get("k") == CacheEntry("v", 1.0)
        stats = cache.get_stats()
        assert (stats["available"], stats["errors"], stats["busy"]) == (True, 0, 0)
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_blocking_pool_held_by_the_application_is_no_outage(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A client on a BlockingConnectionPool (redis-py's way to bound connections), every
    connection held by the application's own slow calls (BLPOP): redis-py waits for a
    connection inside the command, where it looked like Redis not answering, so a healthy
    Redis was marked down with a WARNING and skipped until a probe got through. A pool
    that has no connection to give is waited out as a full one is: a miss, counted busy."""
    pool = aioredis.BlockingConnectionPool(
        host="127.0.0.1", port=private_redis.port, max_connections=2, timeout=20
    )
    client = aioredis.Redis(connection_pool=pool)
    cache = RedisCache(client, prefix="xnai-test:", op_timeout=0.3)
    await cache.set("k", CacheEntry("v", 1.0), keep_for=30)
    held = [asyncio.ensure_future(client.blpop([f"xnai-test-q{i}"], timeout=2)) for i in range(2)]
    try:
        await eventually(lambda: not pool.can_get_connection(), timeout=5)
        assert await cache.get("k") is None  # no connection in time: a miss
        stats = cache.get_stats()
        assert (stats["available"], stats["errors"], stats["busy"]) == (True, 0, 1)
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
        await asyncio.gather(*held)  # the application's calls end: connections come back
        assert await cache.get("k") == CacheEntry("v", 1.0)
    finally:
        await asyncio.gather(*held, return_exceptions=True)
        await cache.aclose()
        await client.aclose()
        await pool.aclose()  # a pool passed in is not closed with its client
