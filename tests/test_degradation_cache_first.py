"""CacheFirstStrategy over the in-process cache: fresh hits, TTL, stale-if-error, single flight."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.degradation_helpers import FakeClock
from tests.helpers import run_virtual
from xnai_core.degradation.cache import CacheEntry, MemoryCache
from xnai_core.degradation.cache_first import (
    CLOCK_SKEW,
    DEFAULT_FLIGHT_DEADLINE,
    FLIGHT_GRACE,
    CacheFirstStrategy,
    KeyFunc,
)
from xnai_core.degradation.call import ServiceCall
from xnai_core.degradation.errors import AllStrategiesFailedError, StrategyDeclinedError
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.strategies import DegradedModeStrategy

START = 10_000.0  # this module's clocks start here


class Backend:
    """A primary service whose health the test controls; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.healthy = True

    async def answer(self, prompt: str) -> dict[str, str]:
        self.calls += 1
        if not self.healthy:
            raise ConnectionError("LLM down")
        return {"answer": f"{prompt}#{self.calls}"}


# Module-level functions: the default key can name them safely.
BACKEND = Backend()


async def ask(prompt: str) -> dict[str, str]:
    return await BACKEND.answer(prompt)


@pytest.fixture(autouse=True)
def fresh_backend() -> None:
    BACKEND.calls = 0
    BACKEND.healthy = True


def cached_manager(
    clock: FakeClock,
    *,
    ttl: float = 60.0,
    stale: float = 0.0,
    fallback: bool = True,
    key_func: KeyFunc | None = None,
    cache: MemoryCache | None = None,
) -> tuple[ServiceDegradationManager, CacheFirstStrategy]:
    manager = ServiceDegradationManager(clock=clock)
    strategy = CacheFirstStrategy(
        cache, ttl=ttl, stale_if_error=stale, clock=clock, key_func=key_func
    )
    manager.add_service_strategy("llm", strategy, priority=20)
    if fallback:
        manager.add_service_strategy("llm", DegradedModeStrategy("sorry"), priority=0)
    return manager, strategy


# -- MemoryCache -----------------------------------------------------------------------


async def test_memory_cache_evicts_the_least_recently_used() -> None:
    """Past max_entries, the entry used longest ago goes first."""
    cache = MemoryCache(max_entries=2)
    await cache.set("a", CacheEntry(1, 0.0), 60)
    await cache.set("b", CacheEntry(2, 0.0), 60)
    assert await cache.get("a") is not None  # a is now the most recent
    await cache.set("c", CacheEntry(3, 0.0), 60)
    assert [await cache.get(k) is not None for k in "abc"] == [True, False, True]
    assert cache.get_stats() == {
        "backend": "memory",
        "entries": 2,
        "max_entries": 2,
        "evictions": 1,
    }


async def test_memory_cache_forgets_after_keep_for() -> None:
    """An entry is gone once its keep_for has passed on the cache's clock."""
    clock = FakeClock(0.0)
    cache = MemoryCache(clock=clock)
    await cache.set("k", CacheEntry("v", 0.0), 10)
    clock.now = 9.999
    assert await cache.get("k") == CacheEntry("v", 0.0)
    clock.now = 10.0
    assert await cache.get("k") is None
    assert len(cache) == 0


def test_memory_cache_bound_is_validated() -> None:
    """max_entries must be a positive int."""
    with pytest.raises(ValueError, match="'max_entries' must be >= 1: 0"):
        MemoryCache(max_entries=0)
    with pytest.raises(TypeError, match=r"'max_entries' must be an int: 2\.5"):
        MemoryCache(max_entries=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "'ttl' must be > 0 seconds: 0"),
        ({"ttl": float("inf")}, "'ttl' must be a finite number of seconds: inf"),
        ({"stale_if_error": -1}, "'stale_if_error' must be >= 0 seconds: -1"),
    ],
)
def test_cache_first_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    """ttl and stale_if_error are checked at construction."""
    with pytest.raises(ValueError, match=message):
        CacheFirstStrategy(**kwargs)


def test_cache_first_rejects_a_non_cache() -> None:
    """Passing something that is not a cache backend is a TypeError."""
    with pytest.raises(TypeError, match="'cache' must be a CacheBackend"):
        CacheFirstStrategy({})  # type: ignore[arg-type]


# -- fresh hits and TTL ------------------------------------------------------------------


async def test_fresh_entry_is_served_without_calling_the_primary() -> None:
    """Within ttl the cached answer comes back, labelled as a (non-degraded) cache hit."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock)
    first = await manager.call_service_detailed("llm", ask, "q")
    clock.now += 59.9
    second = await manager.call_service_detailed("llm", ask, "q")
    assert BACKEND.calls == 1
    assert first.value == second.value == {"answer": "q#1"}
    assert (first.source, first.degraded) == ("primary", False)
    assert (second.source, second.degraded) == ("CacheFirstStrategy", False)
    stats = manager.get_degradation_stats()["services"]["llm"]
    assert (stats["primary_successes"], stats["cache_hits"]) == (1, 1)


async def test_after_ttl_the_primary_is_called_again() -> None:
    """An entry older than ttl is refreshed from the primary."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock)
    await manager.call_service("llm", ask, "q")
    clock.now += 60.0
    assert await manager.call_service("llm", ask, "q") == {"answer": "q#2"}
    assert BACKEND.calls == 2


async def test_different_arguments_are_different_entries() -> None:
    """Each distinct call is cached on its own."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock)
    assert await manager.call_service("llm", ask, "a") == {"answer": "a#1"}
    assert await manager.call_service("llm", ask, "b") == {"answer": "b#2"}
    assert await manager.call_service("llm", ask, "a") == {"answer": "a#1"}


# -- stale-if-error ----------------------------------------------------------------------


async def test_stale_entry_is_served_when_the_primary_fails() -> None:
    """Past ttl but within the stale window, a failing primary is answered from the cache."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock, ttl=60, stale=300, cache=never_expiring())
    await manager.call_service("llm", ask, "q")
    BACKEND.healthy = False
    clock.now += 60 + 299.9
    result = await manager.call_service_detailed("llm", ask, "q")
    assert result.value == {"answer": "q#1"}
    assert (result.source, result.degraded) == ("CacheFirstStrategy", True)
    assert result.info.reason == "ConnectionError: LLM down"
    assert BACKEND.calls == 2  # the primary was tried first


async def test_past_the_stale_window_the_next_strategy_answers() -> None:
    """At ttl + stale_if_error the entry is no use; the cache declines, the fallback answers."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock, ttl=60, stale=300, cache=never_expiring())
    await manager.call_service("llm", ask, "q")
    BACKEND.healthy = False
    clock.now += 360
    result = await manager.call_service_detailed("llm", ask, "q")
    assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
    assert strategy.get_stats()["declined"] == 1


def never_expiring() -> MemoryCache:
    """A cache whose own clock stands still: it keeps every entry, so only the strategy's
    window decides what is fresh, stale or too old (the cache's expiry cannot hide it)."""
    return MemoryCache(clock=lambda: 0.0)


@pytest.mark.parametrize(
    ("age", "answer"),
    [
        (59.999, "fresh"),  # inside ttl: served without calling the primary
        (60.0, "stale"),  # ttl reached: the primary is called, fails, the entry is stale
        (60 + 299.999, "stale"),
        (60 + 300.0, "declined"),  # ttl + stale_if_error reached
        (60 + 300.001, "declined"),
        (60 + 600.0, "declined"),
    ],
)
async def test_the_strategy_itself_enforces_ttl_and_the_stale_window(
    age: float, answer: str
) -> None:
    """ttl=60, stale_if_error=300, from the strategy's own clock: fresh below 60 s, stale
    below 360 s, refused from 360 s on, whatever the cache would still hold."""
    clock = FakeClock(START)
    cache = never_expiring()
    manager, strategy = cached_manager(clock, ttl=60, stale=300, cache=cache)
    await manager.call_service("llm", ask, "q")
    BACKEND.healthy = False
    clock.now += age
    result = await manager.call_service_detailed("llm", ask, "q")
    assert len(cache) == 1  # the entry was there to be (mis)used every time
    if answer == "fresh":
        assert (result.value, result.degraded) == ({"answer": "q#1"}, False)
        assert BACKEND.calls == 1
    elif answer == "stale":
        assert (result.value, result.source, result.degraded) == (
            {"answer": "q#1"},
            "CacheFirstStrategy",
            True,
        )
        assert strategy.get_stats()["stale_served"] == 1
    else:
        assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
        assert strategy.get_stats()["declined"] == 1


async def test_without_a_stale_window_a_failure_is_not_served_stale() -> None:
    """stale_if_error=0 (the default) never serves an expired entry."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock, ttl=60, stale=0, fallback=False)
    await manager.call_service("llm", ask, "q")
    BACKEND.healthy = False
    clock.now += 60
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("llm", ask, "q")
    assert [type(e) for e in caught.value.exceptions] == [ConnectionError, StrategyDeclinedError]
    assert str(caught.value.exceptions[1]) == "CacheFirstStrategy: no cached answer"


async def test_a_miss_with_a_failing_primary_declines() -> None:
    """Nothing cached and the primary down: the cache declines with 'no cached answer'."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock, fallback=False)
    BACKEND.healthy = False
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("llm", ask, "q")
    assert str(caught.value.strategy_errors[0][1]) == "CacheFirstStrategy: no cached answer"


async def test_failures_are_not_cached() -> None:
    """A failed primary stores nothing; the next healthy call goes to the primary."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock)
    BACKEND.healthy = False
    assert await manager.call_service("llm", ask, "q") == "sorry"
    BACKEND.healthy = True
    assert await manager.call_service("llm", ask, "q") == {"answer": "q#2"}


async def test_degraded_answers_are_not_cached() -> None:
    """A fallback's answer is never stored as if the primary had said it."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock)
    BACKEND.healthy = False
    await manager.call_service("llm", ask, "q")
    assert strategy.cache.get_stats()["entries"] == 0


# -- keys ---------------------------------------------------------------------------------


async def test_key_func_names_the_entry() -> None:
    """A user key function decides which calls share an entry."""
    clock = FakeClock(START)
    manager = ServiceDegradationManager(clock=clock)
    strategy = CacheFirstStrategy(key_func=lambda prompt, **_: prompt.lower(), clock=clock)
    manager.add_service_strategy("llm", strategy)
    await manager.call_service("llm", ask, "Hello")
    assert await manager.call_service("llm", ask, "HELLO") == {"answer": "Hello#1"}
    assert strategy.cache_key(ServiceCall("llm", ask, ("hello",), {})) == "3:llm:hello"


async def test_key_func_none_skips_the_cache() -> None:
    """A key function returning None means: do not cache this call."""
    clock = FakeClock(START)
    manager = ServiceDegradationManager(clock=clock)
    strategy = CacheFirstStrategy(key_func=lambda prompt: None, clock=clock)
    manager.add_service_strategy("llm", strategy)
    await manager.call_service("llm", ask, "q")
    await manager.call_service("llm", ask, "q")
    assert BACKEND.calls == 2
    assert strategy.get_stats()["bypassed"] == 2


async def test_a_broken_key_func_is_logged_and_skips_the_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key function returning a non-string or raising: one ERROR each, the call still works."""

    def raising(prompt: str) -> str:
        raise KeyError(prompt)

    manager = ServiceDegradationManager()
    manager.add_service_strategy("a", CacheFirstStrategy(key_func=lambda prompt: 42))  # type: ignore[arg-type,return-value]
    manager.add_service_strategy("b", CacheFirstStrategy(key_func=raising))
    for _ in range(2):
        assert (await manager.call_service("a", ask, "q"))["answer"].startswith("q#")
        assert (await manager.call_service("b", ask, "q"))["answer"].startswith("q#")
    assert BACKEND.calls == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "service 'a': CacheFirstStrategy skips the cache for this call: "
        "'key_func' must return a str or None: 42",
        "service 'b': CacheFirstStrategy skips the cache for this call: "
        "key_func raised KeyError: 'q'",
    ]


async def test_a_key_func_returning_a_non_string_holding_a_token_is_logged_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wrong key is built from the call's arguments, which may carry a credential:
    the ERROR quoted it as returned ("('https://u:tok-77x@llm/', 'q')")."""
    manager = ServiceDegradationManager()
    strategy = CacheFirstStrategy(key_func=lambda prompt: ("https://u:tok-77x@llm/", prompt))  # type: ignore[arg-type,return-value]
    manager.add_service_strategy("a", strategy)
    assert (await manager.call_service("a", ask, "q"))["answer"].startswith("q#")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "must return a str or None" in errors[0]
    assert "tok-77x" not in caplog.text


async def test_unkeyable_calls_skip_the_cache_and_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lambda primary cannot be keyed safely: no caching, one warning, still answered."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock)
    for _ in range(3):
        assert (await manager.call_service("llm", lambda: ask("q")))["answer"].startswith("q#")
    assert BACKEND.calls == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skips the cache for this call" in warnings[0]
    assert "pass key_func" in warnings[0]
    assert strategy.get_stats()["bypassed"] == 3


def configured(model: str | object) -> Any:
    """A functools.wraps decorator factory capturing its configuration, as LLM clients do."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        async def wrapper(prompt: str) -> dict[str, str]:
            answer = await func(prompt)
            return {"answer": f"{model}: {answer['answer']}"}

        return wrapper

    return decorate


async def test_differently_configured_wrappers_do_not_share_cache_entries() -> None:
    """ask wrapped for 'gpt' and for 'llama': the second call is not served the first's."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock)
    ask_gpt, ask_llama = configured("gpt")(ask), configured("llama")(ask)
    assert await manager.call_service("llm", ask_gpt, "hi") == {"answer": "gpt: hi#1"}
    assert await manager.call_service("llm", ask_llama, "hi") == {"answer": "llama: hi#2"}
    assert await manager.call_service("llm", ask_gpt, "hi") == {"answer": "gpt: hi#1"}
    assert await manager.call_service("llm", configured("llama")(ask), "hi") == {
        "answer": "llama: hi#2"
    }
    assert strategy.get_stats()["hits"] == 2


async def test_wrapper_capturing_an_object_skips_the_cache_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrapper over state the key cannot see is not cached: one WARNING, still answered."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock)
    ask_client = configured(object())(ask)
    for _ in range(3):
        assert (await manager.call_service("llm", ask_client, "q"))["answer"].endswith(
            "q#" + str(BACKEND.calls)
        )
    assert BACKEND.calls == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "is a closure over 'model' (object)" in warnings[0]
    assert strategy.get_stats()["bypassed"] == 3


# -- single flight ---------------------------------------------------------------------------


async def test_one_hundred_concurrent_misses_make_one_primary_call() -> None:
    """100 callers missing the same key share a single primary call and its answer."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock, key_func=str)
    gate = asyncio.Event()
    calls = 0

    async def slow_ask(prompt: str) -> dict[str, str]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"answer": prompt}

    tasks = [asyncio.create_task(manager.call_service("llm", slow_ask, "q")) for _ in range(100)]
    await asyncio.sleep(0.01)  # let every caller reach the flight
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert results == [{"answer": "q"}] * 100
    stats = strategy.get_stats()
    assert (stats["primary_flights"], stats["coalesced_calls"]) == (1, 99)
    service = manager.get_degradation_stats()["services"]["llm"]
    # One primary call answered them all: counted once, the 99 others as coalesced.
    assert (service["primary_successes"], service["coalesced"]) == (1, 99)


async def test_one_hundred_concurrent_misses_share_one_failure() -> None:
    """When the single primary call fails, all 100 callers fall back; it ran once."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock, key_func=str)
    gate = asyncio.Event()
    calls = 0

    async def slow_fail(prompt: str) -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ConnectionError("LLM down")

    tasks = [asyncio.create_task(manager.call_service("llm", slow_fail, "q")) for _ in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*tasks) == ["sorry"] * 100
    assert calls == 1


def gated() -> tuple[asyncio.Event, Callable[[str], Awaitable[str]]]:
    """A primary that answers its prompt once the returned gate is set."""
    gate = asyncio.Event()

    async def slow_ask(prompt: str) -> str:
        await gate.wait()
        return prompt

    return gate, slow_ask


async def test_distinct_keys_fly_separately() -> None:
    """Concurrent misses for different keys do not wait on each other."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock, key_func=str)
    gate, slow_ask = gated()
    tasks = [
        asyncio.create_task(manager.call_service("llm", slow_ask, f"q{i % 10}")) for i in range(100)
    ]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*tasks) == [f"q{i % 10}" for i in range(100)]
    assert strategy.get_stats()["primary_flights"] == 10


async def test_a_cancelled_caller_does_not_cancel_the_flight() -> None:
    """The first caller giving up leaves the shared call running for the others."""
    clock = FakeClock(START)
    manager, _ = cached_manager(clock, key_func=str)
    gate, slow_ask = gated()
    leader = asyncio.create_task(manager.call_service("llm", slow_ask, "q"))
    await asyncio.sleep(0)
    follower = asyncio.create_task(manager.call_service("llm", slow_ask, "q"))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await follower == "q"
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await manager.call_service("llm", slow_ask, "q") == "q"  # cached by the flight


class BrokenCache:
    """A user's cache backend that fails every operation."""

    async def get(self, key: str) -> CacheEntry | None:
        raise OSError("cache node gone")

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        raise OSError("cache node gone")

    async def delete(self, key: str) -> None:
        raise OSError("cache node gone")

    async def clear(self) -> int:
        return 0

    def get_stats(self) -> dict[str, str | int | float | bool | None]:
        return {"backend": "broken"}


async def test_a_failing_cache_backend_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    """A backend that raises never breaks the call: misses, one warning, a counter."""
    clock = FakeClock(START)
    manager = ServiceDegradationManager(clock=clock)
    strategy = CacheFirstStrategy(BrokenCache(), clock=clock, key_func=str)
    manager.add_service_strategy("llm", strategy, priority=20)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    assert (await manager.call_service("llm", ask, "q"))["answer"] == "q#1"
    BACKEND.healthy = False
    assert await manager.call_service("llm", ask, "q") == "sorry"
    assert strategy.get_stats()["cache_errors"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[:1] == [
        "CacheFirstStrategy: cache get failed, treated as a miss (logged once): "
        "OSError: cache node gone"
    ]


# -- flights have deadlines --------------------------------------------------------------


def test_a_hung_primary_never_blocks_its_key() -> None:
    """Without a service timeout, a hung call is shared for DEFAULT_FLIGHT_DEADLINE only:
    a caller that joined it gets the fallback then, and a caller after it reaches the
    (healthy again) backend instead of joining the hung call."""

    async def scenario() -> None:
        clock = FakeClock(START)
        manager, strategy = cached_manager(clock, key_func=str)  # timeout=None
        never = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def sometimes_hangs(prompt: str) -> str:
            BACKEND.calls += 1
            if BACKEND.calls == 1:
                await never.wait()
            return f"fresh {prompt}"

        async with asyncio.timeout(10 * DEFAULT_FLIGHT_DEADLINE):  # old code: forever
            hung = asyncio.create_task(manager.call_service("llm", sometimes_hangs, "q"))
            await asyncio.sleep(1)
            started = loop.time()
            joiner = await manager.call_service_detailed("llm", sometimes_hangs, "q")
            assert (joiner.value, joiner.source) == ("sorry", "DegradedModeStrategy")
            assert type(joiner.info.error).__name__ == "FlightTimeoutError"
            assert loop.time() - started == pytest.approx(DEFAULT_FLIGHT_DEADLINE - 1, abs=0.1)
            late = await manager.call_service_detailed("llm", sometimes_hangs, "q")
            assert (late.value, late.source) == ("fresh q", "primary")
        assert not hung.done()
        never.set()  # the hung call ends: nothing is left running
        assert await hung == "fresh q"
        stats = manager.get_degradation_stats()["services"]["llm"]
        # The joiner shared the hung call: counted as coalesced, not as a timeout of its own.
        assert (stats["coalesced"], stats["timeouts"], stats["primary_successes"]) == (1, 0, 2)
        assert strategy.get_stats()["flights_expired"] == 1

    run_virtual(scenario())


def test_with_a_service_timeout_every_caller_of_a_flight_shares_it() -> None:
    """The flight's deadline is the service's timeout: joiners get its ServiceTimeoutError
    at the same moment as the caller that made the call, counted once."""

    async def scenario() -> None:
        clock = FakeClock(START)
        manager, _ = cached_manager(clock, key_func=str)
        manager.configure_service("llm", timeout=5)
        never = asyncio.Event()

        async def hangs(prompt: str) -> str:
            await never.wait()
            return prompt

        tasks = [
            asyncio.create_task(manager.call_service_detailed("llm", hangs, "q")) for _ in range(3)
        ]
        results = await asyncio.gather(*tasks)
        assert [r.value for r in results] == ["sorry"] * 3
        assert {type(r.info.error).__name__ for r in results} == {"ServiceTimeoutError"}
        stats = manager.get_degradation_stats()["services"]["llm"]
        assert (stats["timeouts"], stats["coalesced"]) == (1, 2)

    run_virtual(scenario())


def test_a_joiner_never_waits_past_its_own_deadline() -> None:
    """A call hung under no timeout; the service's timeout is then set to 5 s. A caller
    that joins the old flight waits its own 5 s (plus the grace), not the hung flight's
    remaining DEFAULT_FLIGHT_DEADLINE, and the fallback answers."""

    async def scenario() -> None:
        clock = FakeClock(START)
        manager, strategy = cached_manager(clock, key_func=str)  # timeout=None
        never = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def hangs(prompt: str) -> str:
            await never.wait()
            return prompt

        hung = asyncio.create_task(manager.call_service("llm", hangs, "q"))
        await asyncio.sleep(1)
        manager.configure_service("llm", timeout=5)
        started = loop.time()
        joiner = await manager.call_service_detailed("llm", hangs, "q")
        assert (joiner.value, joiner.source) == ("sorry", "DegradedModeStrategy")
        assert type(joiner.info.error).__name__ == "FlightTimeoutError"
        # old code: DEFAULT_FLIGHT_DEADLINE - 1 (59 s)
        assert loop.time() - started == pytest.approx(5 + FLIGHT_GRACE, abs=0.1)
        assert strategy.get_stats()["flights_expired"] == 1
        never.set()
        assert await hung == "q"

    run_virtual(scenario())


def test_flight_deadline_is_validated() -> None:
    """A flight deadline must be a positive number of seconds."""
    with pytest.raises(ValueError, match="'flight_deadline' must be > 0 seconds: 0"):
        CacheFirstStrategy(flight_deadline=0)


async def test_service_names_with_colons_never_share_entries() -> None:
    """("a:b", "c") and ("a", "b:c") are different entries even in one shared cache."""
    clock = FakeClock(START)
    shared = MemoryCache(clock=clock)
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("a:b", CacheFirstStrategy(shared, clock=clock, key_func=str))
    manager.add_service_strategy(
        "a", CacheFirstStrategy(shared, clock=clock, key_func=lambda q: f"b:{q}")
    )

    async def named(prompt: str) -> str:
        return f"answer of {prompt}"

    assert await manager.call_service("a:b", named, "c") == "answer of c"
    result = await manager.call_service_detailed("a", named, "c")
    assert (result.value, result.source) == ("answer of c", "primary")
    assert len(shared) == 2


async def test_a_hung_call_nobody_waits_for_ends_at_its_deadline() -> None:
    """Callers cancelled while the primary hangs on a loopback server that never answers
    (no service timeout): each flight was left running, shielded, with its connection,
    for as long as the server stayed silent, and every flight deadline started another
    (one task and one socket more per deadline, without end). A flight nobody waits for
    is cancelled at its deadline: its primary gives back its connection."""
    opened = closed = 0
    all_closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened, closed
        opened += 1
        await reader.read()  # never answers; returns at the client's close
        closed += 1
        if closed == 3:
            all_closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def ask_silent(prompt: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(prompt.encode())
            return await reader.read(100)
        finally:
            writer.close()

    manager = ServiceDegradationManager()  # no timeout: the flight's deadline is the bound
    strategy = CacheFirstStrategy(key_func=str, flight_deadline=0.2)
    manager.add_service_strategy("llm", strategy, priority=20)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    loop = asyncio.get_running_loop()
    async with server:
        for _ in range(3):
            started = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(manager.call_service("llm", ask_silent, "q"), 0.05)
            # the next caller comes after this flight's deadline: it starts a fresh one
            await asyncio.sleep(max(0.0, started + 0.25 - loop.time()))
        async with asyncio.timeout(10):  # main: never
            await all_closed.wait()
        assert (opened, closed) == (3, 3)
    stats = strategy.get_stats()
    assert (stats["primary_flights"], stats["flights_overdue"]) == (3, 0)  # none left to find


async def test_a_call_its_caller_left_still_fills_the_cache_within_its_deadline() -> None:
    """The other side: a flight whose only caller was cancelled goes on until its deadline
    and stores its answer (the next caller is served from the cache)."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock, key_func=str)
    gate, slow_ask = gated()
    leader = asyncio.create_task(manager.call_service("llm", slow_ask, "q"))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    gate.set()
    await strategy.flush()
    for _ in range(5):
        await asyncio.sleep(0)
    result = await manager.call_service_detailed("llm", slow_ask, "q")
    assert (result.value, result.source) == ("q", "CacheFirstStrategy")


async def test_a_clock_stepped_back_does_not_stretch_freshness() -> None:
    """The wall clock stepped back an hour (an NTP step, a VM restored from a snapshot):
    every entry was stored "in the future", its age negative, so a 60 s answer was served
    as fresh for an hour and a minute. An entry from more than CLOCK_SKEW in the future is
    not fresh (the primary answers, and its answer replaces it); it may still stand in
    when the primary fails (stale-if-error)."""
    clock = FakeClock(START)
    manager, strategy = cached_manager(clock, key_func=str, stale=600)
    assert (await manager.call_service("llm", ask, "q"))["answer"] == "q#1"
    await strategy.flush()
    clock.now -= 3600
    result = await manager.call_service_detailed("llm", ask, "q")
    assert (result.value["answer"], result.source) == ("q#2", "primary")
    await strategy.flush()
    again = await manager.call_service_detailed("llm", ask, "q")  # the fresh answer's entry
    assert (again.value["answer"], again.source) == ("q#2", "CacheFirstStrategy")
    clock.now -= 3600
    BACKEND.healthy = False
    stale = await manager.call_service_detailed("llm", ask, "q")
    assert (stale.value["answer"], stale.source, stale.degraded) == (
        "q#2",
        "CacheFirstStrategy",
        True,
    )
    # clocks of processes sharing a cache differ by a little: that is still fresh
    BACKEND.healthy = True
    clock.now += 3600 - CLOCK_SKEW / 2
    skewed = await manager.call_service_detailed("llm", ask, "q")
    assert skewed.source == "CacheFirstStrategy"
