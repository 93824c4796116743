"""CircuitBreakerStrategy: an open circuit skips the primary; timeouts and failures degrade."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.degradation_helpers import Backend, FakeClock, fresh_backend  # noqa: F401  (fresh_backend: an autouse fixture)
from xnai_core.circuit.breaker import CircuitBreaker
from xnai_core.circuit.config import CircuitBreakerConfig
from xnai_core.circuit.errors import CallTimeoutError, CircuitOpenError
from xnai_core.circuit.factory import create_redis_circuit_breaker
from xnai_core.circuit.machine import CircuitState
from xnai_core.circuit.store import MemoryStore
from xnai_core.degradation.cache_first import CacheFirstStrategy
from xnai_core.degradation.errors import AllStrategiesFailedError, ServiceTimeoutError
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.protocols import PrimaryGuard
from xnai_core.degradation.stats import DegradationEvent
from xnai_core.degradation.strategies import (
    CircuitBreakerStrategy,
    DegradedModeStrategy,
    FallbackStrategy,
)

START = 500.0  # this module's clocks start here


async def llm(prompt: str) -> str:
    Backend.calls += 1
    if not Backend.healthy:
        raise ConnectionError("LLM down")
    return f"answer to {prompt}"


def breaker(
    *,
    threshold: int = 2,
    recovery: float = 30.0,
    timeout: float | None = None,
    clock: FakeClock | None = None,
    fallback: object = None,
) -> CircuitBreaker:
    config = CircuitBreakerConfig(
        name="llm", failure_threshold=threshold, recovery_timeout=recovery, timeout=timeout
    )
    store = MemoryStore(config, clock=clock or FakeClock(START))
    return CircuitBreaker(config, fallback, store=store)  # type: ignore[arg-type]


def protected_manager(
    circuit: CircuitBreaker, *, fallback: bool = True, clock: FakeClock | None = None
) -> ServiceDegradationManager:
    manager = ServiceDegradationManager(clock=clock or FakeClock(START))
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=10)
    if fallback:
        manager.add_service_strategy("llm", DegradedModeStrategy("sorry"), priority=0)
    return manager


async def test_failures_open_the_circuit_and_then_skip_the_primary() -> None:
    """After the threshold, calls never reach the primary: the fallback answers at once."""
    circuit = breaker(threshold=2)
    manager = protected_manager(circuit)
    Backend.healthy = False
    for _ in range(2):
        result = await manager.call_service_detailed("llm", llm, "q")
        assert isinstance(result.info.error, ConnectionError)
    assert circuit.state is CircuitState.OPEN
    for _ in range(5):
        result = await manager.call_service_detailed("llm", llm, "q")
        assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
        assert isinstance(result.info.error, CircuitOpenError)
    assert Backend.calls == 2
    assert circuit.get_metrics()["rejected_calls"] == 5


async def test_open_circuit_without_fallback_raises_the_group() -> None:
    """A forced-open circuit and no fallback: the group's primary error is CircuitOpenError."""
    circuit = breaker()
    await circuit.force_open()
    manager = protected_manager(circuit, fallback=False)
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("llm", llm, "q")
    assert isinstance(caught.value.primary_error, CircuitOpenError)
    assert Backend.calls == 0


async def test_open_circuit_degrades_even_outside_degrade_on() -> None:
    """CircuitOpenError always reaches the strategies, whatever degrade_on names."""
    circuit = breaker()
    await circuit.force_open()
    manager = ServiceDegradationManager(degrade_on=KeyError)
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=1)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    assert await manager.call_service("llm", llm, "q") == "sorry"


async def test_breaker_timeout_degrades() -> None:
    """The breaker's own timeout (CallTimeoutError) is a failure the strategies answer."""
    circuit = breaker(timeout=0.02)
    manager = protected_manager(circuit)

    result = await manager.call_service_detailed("llm", hangs_forever, "q")
    assert result.value == "sorry"
    assert isinstance(result.info.error, CallTimeoutError)
    assert circuit.get_metrics()["timeouts"] == 1


async def test_manager_timeout_is_counted_by_the_breaker() -> None:
    """The manager's timeout fires inside the breaker, so it counts toward opening it."""
    circuit = breaker(threshold=2)
    manager = protected_manager(circuit)
    manager.configure_service("llm", timeout=0.02)

    for _ in range(2):
        result = await manager.call_service_detailed("llm", hangs_forever, "q")
        assert isinstance(result.info.error, ServiceTimeoutError)
    assert circuit.state is CircuitState.OPEN


async def test_recovery_closes_the_episode() -> None:
    """Open, wait out recovery (injected clock), a good trial closes it: 'recovered' is heard."""
    breaker_clock = FakeClock(START)
    manager_clock = FakeClock(1_000.0)
    circuit = breaker(threshold=1, recovery=30.0, clock=breaker_clock)
    manager = protected_manager(circuit, clock=manager_clock)
    events: list[DegradationEvent] = []
    manager.add_listener(events.append)
    Backend.healthy = False
    await manager.call_service("llm", llm, "q")
    await manager.call_service("llm", llm, "q")  # rejected: circuit open
    Backend.healthy = True
    breaker_clock.now += 30.0
    manager_clock.now += 30.0
    assert await manager.call_service("llm", llm, "q") == "answer to q"
    await manager.drain_listeners()
    assert [e.kind for e in events] == ["degraded", "recovered"]
    assert (events[1].duration, events[1].degraded_calls) == (30.0, 2)
    assert not manager.is_degraded("llm")


async def test_breakers_own_fallback_answers_and_is_labelled() -> None:
    """A breaker with fallback_func answers itself: degraded, from this strategy, final."""
    seen: list[str] = []

    def breaker_fallback(prompt: str) -> str:
        seen.append(prompt)
        return f"breaker fallback for {prompt}"

    circuit = breaker(fallback=breaker_fallback)
    asked: list[str] = []
    manager = ServiceDegradationManager()
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=10)
    manager.add_service_strategy("llm", FallbackStrategy(lambda prompt: asked.append(prompt)))
    Backend.healthy = False
    failed = await manager.call_service_detailed("llm", llm, "q1")
    await circuit.force_open()
    rejected = await manager.call_service_detailed("llm", llm, "q2")
    assert (failed.value, failed.source, failed.degraded) == (
        "breaker fallback for q1",
        "CircuitBreakerStrategy",
        True,
    )
    assert failed.info.reason == (
        "call through circuit 'llm' failed (ConnectionError: LLM down); its fallback answered"
    )
    assert isinstance(failed.info.error, ConnectionError)
    assert rejected.value == "breaker fallback for q2"
    assert rejected.info.reason == "circuit 'llm' is open; its fallback answered"
    assert (seen, asked) == (["q1", "q2"], [])
    stats = manager.get_degradation_stats()["services"]["llm"]
    assert stats["degraded_by_strategy"] == {"CircuitBreakerStrategy": 2}


async def test_breakers_own_fallback_on_timeout_is_labelled() -> None:
    """A timeout answered by the breaker's fallback says it timed out."""
    circuit = breaker(timeout=0.02, fallback=lambda prompt: "late")
    manager = protected_manager(circuit)

    result = await manager.call_service_detailed("llm", hangs_forever, "q")
    assert result.value == "late"
    assert result.info.reason == "call through circuit 'llm' timed out; its fallback answered"


async def hangs_forever(prompt: str) -> str:
    await asyncio.Event().wait()
    return "never"


async def test_timeout_answered_by_the_breakers_fallback_is_counted_as_a_timeout() -> None:
    """Whichever layer answered, a primary that timed out is in the manager's timeouts."""
    circuit = breaker(timeout=0.02, fallback=lambda prompt: "late")
    manager = protected_manager(circuit)
    result = await manager.call_service_detailed("llm", hangs_forever, "q")
    assert (result.value, result.degraded) == ("late", True)
    assert isinstance(result.info.error, CallTimeoutError)
    assert str(result.info.error) == "call through circuit 'llm' timed out after 0.02s"
    stats = manager.get_degradation_stats()["services"]["llm"]
    assert stats["timeouts"] == circuit.get_metrics()["timeouts"] == 1


async def test_manager_timeout_answered_by_the_breakers_fallback_is_counted() -> None:
    """The manager's own timeout inside a breaker with a fallback counts as well."""
    circuit = breaker(fallback=lambda prompt: "late")
    manager = protected_manager(circuit)
    manager.configure_service("llm", timeout=0.02)
    result = await manager.call_service_detailed("llm", hangs_forever, "q")
    assert result.value == "late"
    assert isinstance(result.info.error, ServiceTimeoutError)
    assert manager.get_degradation_stats()["services"]["llm"]["timeouts"] == 1


async def test_failures_and_open_circuits_answered_by_the_breaker_are_not_timeouts() -> None:
    """Only timeouts count as timeouts: a failure or an open circuit does not."""
    circuit = breaker(threshold=1, fallback=lambda prompt: "fallback")
    manager = protected_manager(circuit)
    Backend.healthy = False
    assert await manager.call_service("llm", llm, "q") == "fallback"  # failed, opens
    assert await manager.call_service("llm", llm, "q") == "fallback"  # rejected: open
    stats = manager.get_degradation_stats()["services"]["llm"]
    assert (stats["degraded_responses"], stats["timeouts"]) == (2, 0)


async def test_fresh_cache_skips_even_an_open_circuit() -> None:
    """Cache (priority 20) outside the breaker (10): a fresh hit never touches the breaker."""
    clock = FakeClock(START)
    circuit = breaker()
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("llm", CacheFirstStrategy(ttl=60, clock=clock), priority=20)
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=10)
    await manager.call_service("llm", llm, "q")
    await circuit.force_open()
    calls_before = circuit.get_metrics()["total_calls"]
    hit = await manager.call_service_detailed("llm", llm, "q")
    assert (hit.value, hit.source, hit.degraded) == ("answer to q", "CacheFirstStrategy", False)
    assert circuit.get_metrics()["total_calls"] == calls_before


async def test_open_circuit_serves_stale_from_cache() -> None:
    """Past ttl with the circuit open, the stale entry answers (stale-if-error)."""
    clock = FakeClock(START)
    circuit = breaker()
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy(
        "llm", CacheFirstStrategy(ttl=60, stale_if_error=600, clock=clock), priority=20
    )
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=10)
    await manager.call_service("llm", llm, "q")
    await circuit.force_open()
    clock.now += 300
    stale = await manager.call_service_detailed("llm", llm, "q")
    assert (stale.value, stale.source, stale.degraded) == (
        "answer to q",
        "CacheFirstStrategy",
        True,
    )
    assert isinstance(stale.info.error, CircuitOpenError)
    assert Backend.calls == 1


async def test_breaker_fallback_answers_are_never_cached() -> None:
    """The breaker's substitute is not stored: once the circuit closes, the primary answers."""
    clock = FakeClock(START)
    circuit = breaker(fallback=lambda prompt: "substitute")
    manager = ServiceDegradationManager(clock=clock)
    cache = CacheFirstStrategy(ttl=60, clock=clock)
    manager.add_service_strategy("llm", cache, priority=20)
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=10)
    await circuit.force_open()
    assert await manager.call_service("llm", llm, "q") == "substitute"
    await circuit.force_close()
    assert await manager.call_service("llm", llm, "q") == "answer to q"
    assert cache.get_stats()["hits"] == 0


def test_circuit_breaker_strategy_is_a_guard_only() -> None:
    """It wraps the primary and offers no fallback of its own; a non-breaker is refused."""
    strategy = CircuitBreakerStrategy(breaker())
    assert isinstance(strategy, PrimaryGuard)
    assert not hasattr(strategy, "execute")
    with pytest.raises(TypeError, match="'circuit_breaker' must have an async call"):
        CircuitBreakerStrategy(object())  # type: ignore[arg-type]


@pytest.fixture
async def redis_breakers(
    shared_redis: aioredis.Redis, key_prefix: str
) -> AsyncIterator[tuple[CircuitBreaker, CircuitBreaker]]:
    """Two breakers of one circuit, sharing state through the real Redis (two 'processes')."""
    made = [
        create_redis_circuit_breaker(
            "llm",
            shared_redis,
            failure_threshold=2,
            recovery_timeout=60,
            timeout=None,
            key_prefix=f"{key_prefix}:cb:",
        )
        for _ in range(2)
    ]
    try:
        yield made[0], made[1]
    finally:
        for each in made:
            await each.close()


async def test_a_circuit_opened_elsewhere_skips_the_primary_here(
    redis_breakers: tuple[CircuitBreaker, CircuitBreaker],
) -> None:
    """Failures seen by one manager open the shared circuit; the other stops calling too."""
    first_breaker, second_breaker = redis_breakers
    first = protected_manager(first_breaker)
    second = protected_manager(second_breaker)
    Backend.healthy = False
    for _ in range(2):
        await first.call_service("llm", llm, "q")
    assert Backend.calls == 2
    # The second breaker has not been used yet: its first call reads the shared state.
    result = await second.call_service_detailed("llm", llm, "q")
    assert (result.value, result.source) == ("sorry", "DegradedModeStrategy")
    assert isinstance(result.info.error, CircuitOpenError)
    assert Backend.calls == 2


async def test_stats_include_the_breakers_metrics() -> None:
    """The manager's stats show the breaker's state next to the strategy."""
    circuit = breaker()
    manager = protected_manager(circuit)
    await circuit.force_open()
    await manager.call_service("llm", llm, "q")
    strategies = manager.get_degradation_stats()["services"]["llm"]["strategies"]
    assert strategies[0]["name"] == "CircuitBreakerStrategy"
    assert strategies[0]["roles"] == ["guard"]
    assert strategies[0]["stats"]["circuit"]["state"] == "open"


async def test_a_live_peer_hears_the_circuit_open(
    redis_breakers: tuple[CircuitBreaker, CircuitBreaker],
) -> None:
    """Both managers in use: A's failures open the circuit and B's next call skips the primary."""
    first_breaker, second_breaker = redis_breakers
    first = protected_manager(first_breaker)
    second = protected_manager(second_breaker)
    assert await first.call_service("llm", llm, "q") == "answer to q"
    assert await second.call_service("llm", llm, "q") == "answer to q"
    Backend.healthy = False
    for _ in range(2):
        await first.call_service("llm", llm, "q")
    for _ in range(200):  # the opening travels by pub/sub; bounded wait
        if second_breaker.state is CircuitState.OPEN:
            break
        await asyncio.sleep(0.01)
    result = await second.call_service_detailed("llm", llm, "q")
    assert isinstance(result.info.error, CircuitOpenError)
    assert Backend.calls == 4


# -- a breaker placed above a cache --------------------------------------------------------


def breaker_above_cache(
    circuit: CircuitBreaker, clock: FakeClock
) -> tuple[ServiceDegradationManager, CacheFirstStrategy]:
    manager = ServiceDegradationManager(clock=clock)
    cache = CacheFirstStrategy(ttl=3600, clock=clock, key_func=str)
    manager.add_service_strategy("llm", CircuitBreakerStrategy(circuit), priority=20)
    manager.add_service_strategy("llm", cache, priority=10)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"), priority=0)
    return manager, cache


async def test_cache_hits_below_a_breaker_do_not_keep_a_dead_backend_closed() -> None:
    """Popular prompts answered by the cache are not breaker successes: failures of the
    others still add up and open the circuit."""
    clock = FakeClock(START)
    circuit = breaker(threshold=3, clock=clock)
    manager, _ = breaker_above_cache(circuit, clock)
    assert await manager.call_service("llm", llm, "popular") == "answer to popular"
    Backend.healthy = False
    for i in range(3):
        hit = await manager.call_service_detailed("llm", llm, "popular")
        assert (hit.source, hit.degraded) == ("CacheFirstStrategy", False)
        assert await manager.call_service("llm", llm, f"rare {i}") == "sorry"
    assert circuit.state is CircuitState.OPEN
    metrics = circuit.get_metrics()
    assert (metrics["success_count"], metrics["total_failures"]) == (1, 3)


async def test_cache_hits_give_back_half_open_permits_and_close_nothing() -> None:
    """Three cache hits in half-open neither close the circuit nor use up its permits:
    the next call still reaches the backend, and only backend answers close it."""
    clock = FakeClock(START)
    circuit = breaker(threshold=1, recovery=30, clock=clock)
    manager, _ = breaker_above_cache(circuit, clock)
    for prompt in ("a", "b", "c"):
        await manager.call_service("llm", llm, prompt)
    Backend.healthy = False
    await manager.call_service("llm", llm, "down")
    assert circuit.state is CircuitState.OPEN
    clock.now += 31  # past recovery_timeout: half-open, 3 trial permits
    Backend.healthy = True
    calls_before = Backend.calls
    for prompt in ("a", "b", "c"):
        hit = await manager.call_service_detailed("llm", llm, prompt)
        assert hit.source == "CacheFirstStrategy"
    assert circuit.state is CircuitState.HALF_OPEN
    assert Backend.calls == calls_before
    for prompt in ("x", "y", "z"):  # the permits are all there for real trials
        assert await manager.call_service("llm", llm, prompt) == f"answer to {prompt}"
    assert Backend.calls == calls_before + 3
    assert circuit.state is CircuitState.CLOSED


async def test_callers_sharing_one_primary_call_count_once_for_the_breaker() -> None:
    """Fifty callers coalesced into one failing primary call are one breaker failure."""
    clock = FakeClock(START)
    circuit = breaker(threshold=5, clock=clock)
    manager, cache = breaker_above_cache(circuit, clock)
    gate = asyncio.Event()

    async def slow_failure(prompt: str) -> str:
        Backend.calls += 1
        await gate.wait()
        raise ConnectionError("LLM down")

    tasks = [
        asyncio.create_task(manager.call_service("llm", slow_failure, "same")) for _ in range(50)
    ]
    for _ in range(1000):  # until every caller reached the flight
        if cache.get_stats()["coalesced_calls"] == 49:
            break
        await asyncio.sleep(0.001)
    gate.set()
    assert await asyncio.gather(*tasks) == ["sorry"] * 50
    assert Backend.calls == 1
    assert circuit.get_metrics()["total_failures"] == 1
    assert circuit.state is CircuitState.CLOSED


async def test_callers_cancelled_at_any_await_above_a_cache_keep_no_half_open_permit() -> None:
    """In half-open, callers of a breaker above a cache are cancelled after 0, 1, 2 ...
    loop turns (on a hit, on a miss whose primary call hangs, on a call coalesced into
    another's): no trial stays in flight, and three real trials still close the circuit."""
    clock = FakeClock(START)
    circuit = breaker(threshold=1, recovery=30, clock=clock)
    manager, cache = breaker_above_cache(circuit, clock)
    never = asyncio.Event()

    async def hangs(prompt: str) -> str:
        await never.wait()
        return await llm(prompt)

    await manager.call_service("llm", llm, "cached")
    Backend.healthy = False
    await manager.call_service("llm", llm, "down")
    assert circuit.state is CircuitState.OPEN
    clock.now += 31
    Backend.healthy = True
    for turns in range(12):
        for prompts in (["cached"], [f"miss {turns}"], [f"shared {turns}"] * 2):
            callers = [
                asyncio.ensure_future(manager.call_service("llm", hangs, p)) for p in prompts
            ]
            for _ in range(turns):
                await asyncio.sleep(0)
            for caller in callers:
                caller.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
            assert circuit.get_metrics()["half_open_trials_in_flight"] == 0, (turns, prompts)
    assert circuit.state is CircuitState.HALF_OPEN
    for prompt in ("x", "y", "z"):
        assert await manager.call_service("llm", llm, prompt) == f"answer to {prompt}"
    assert circuit.state is CircuitState.CLOSED
    never.set()  # the flights their callers left go on for the cache, and end now
    for _ in range(100):
        await asyncio.sleep(0)
    await cache.flush()
