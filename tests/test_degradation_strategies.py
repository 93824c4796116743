"""FallbackStrategy and DegradedModeStrategy against real failures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.conftest import free_port
from xnai_core.degradation.call import ServiceCall
from xnai_core.degradation.errors import AllStrategiesFailedError
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.protocols import DegradationStrategy, PrimaryGuard
from xnai_core.degradation.strategies import DegradedModeStrategy, FallbackStrategy


async def refused() -> str:
    """A real failure: connect to a loopback port nobody listens on."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", free_port())
    writer.close()
    return "connected?"


async def test_fallback_answers_a_refused_connection() -> None:
    """A real ConnectionRefusedError from the primary is answered by the fallback."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", FallbackStrategy(lambda: "fallback"))
    result = await manager.call_service_detailed("svc", refused)
    assert (result.value, result.source) == ("fallback", "FallbackStrategy")
    assert isinstance(result.info.error, ConnectionRefusedError)


async def test_fallback_may_be_sync_or_async() -> None:
    """Sync and async fallbacks both get the primary's arguments."""

    async def primary(a: int, b: int = 0) -> int:
        raise OSError("down")

    async def async_fallback(a: int, b: int = 0) -> int:
        return -(a + b)

    def sync_fallback(a: int, b: int = 0) -> int:
        return a * b

    manager = ServiceDegradationManager()
    manager.add_service_strategy("async", FallbackStrategy(async_fallback))
    manager.add_service_strategy("sync", FallbackStrategy(sync_fallback))
    assert await manager.call_service("async", primary, 3, b=4) == -7
    assert await manager.call_service("sync", primary, 3, b=4) == 12


async def test_a_failing_fallback_moves_on() -> None:
    """A fallback that raises counts as failed; the next strategy answers."""

    def broken() -> str:
        raise KeyError("no canned answer")

    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", FallbackStrategy(broken, name="canned"), priority=2)
    manager.add_service_strategy("svc", DegradedModeStrategy("plain"), priority=1)
    assert await manager.call_service("svc", refused) == "plain"


async def test_fallback_runs_even_for_a_primary_blocked_in_a_thread() -> None:
    """A primary awaiting a worker thread that never finishes is cut off by the timeout."""
    release = threading.Event()

    async def stuck() -> str:
        await asyncio.to_thread(release.wait, 5)
        return "late"

    manager = ServiceDegradationManager(timeout=0.05)
    manager.add_service_strategy("svc", FallbackStrategy(lambda: "fallback"))
    try:
        assert await manager.call_service("svc", stuck) == "fallback"
    finally:
        release.set()


def test_fallback_needs_a_callable() -> None:
    """FallbackStrategy of a non-callable is a TypeError."""
    with pytest.raises(TypeError, match="'func' must be callable: 'text'"):
        FallbackStrategy("text")  # type: ignore[arg-type]


async def test_degraded_mode_value_is_copied_per_call() -> None:
    """One caller editing its degraded answer does not change the next caller's."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", DegradedModeStrategy({"items": [], "degraded": True}))
    first = await manager.call_service("svc", refused)
    first["items"].append("mutated")
    second = await manager.call_service("svc", refused)
    assert second == {"items": [], "degraded": True}


async def test_degraded_mode_factory_is_called_per_call() -> None:
    """A callable response is a factory (sync or async), called for every degraded call."""
    counter = iter(range(100))

    async def async_factory() -> dict[str, int]:
        return {"n": next(counter)}

    manager = ServiceDegradationManager()
    manager.add_service_strategy("sync", DegradedModeStrategy(lambda: next(counter)))
    manager.add_service_strategy("async", DegradedModeStrategy(async_factory))
    assert [await manager.call_service("sync", refused) for _ in range(2)] == [0, 1]
    assert await manager.call_service("async", refused) == {"n": 2}


def test_degraded_mode_rejects_values_it_cannot_copy() -> None:
    """A value that cannot be deep-copied is refused at construction; a factory is the fix."""
    with pytest.raises(TypeError, match="must be deep-copyable or a factory"):
        DegradedModeStrategy({"lock": threading.Lock()})


async def test_degraded_mode_factory_error_is_a_strategy_failure() -> None:
    """A factory that raises leaves the all-failed error with its exception inside."""

    def factory() -> str:
        raise LookupError("template missing")

    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", DegradedModeStrategy(factory))
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("svc", refused)
    assert [type(e) for e in caught.value.exceptions] == [ConnectionRefusedError, LookupError]


def test_strategies_satisfy_the_protocols() -> None:
    """The built-in strategies are DegradationStrategy instances; names default to the class."""
    fallback = FallbackStrategy(lambda: 1)
    degraded = DegradedModeStrategy(1, name="static")
    assert isinstance(fallback, DegradationStrategy)
    assert not isinstance(fallback, PrimaryGuard)
    assert (fallback.name, degraded.name) == ("FallbackStrategy", "static")
    with pytest.raises(TypeError, match="'name' must be a non-empty string: ''"):
        DegradedModeStrategy(1, name="")


async def test_execute_can_be_called_directly() -> None:
    """A strategy is usable on its own: execute(call, error) returns its answer."""
    call = ServiceCall("svc", refused, ("q",), {})
    answer = await FallbackStrategy(lambda q: f"echo {q}").execute(call, OSError())
    assert answer == "echo q"
