"""Every answering strategy against every kind of real failure: exception, timeout, open circuit."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import free_port
from tests.degradation_helpers import FakeClock
from xnai_core.circuit.breaker import CircuitBreaker
from xnai_core.circuit.config import CircuitBreakerConfig
from xnai_core.circuit.errors import CircuitOpenError
from xnai_core.degradation.cache_first import CacheFirstStrategy
from xnai_core.degradation.errors import AllStrategiesFailedError, ServiceTimeoutError
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.strategies import (
    CircuitBreakerStrategy,
    DegradedModeStrategy,
    FallbackStrategy,
)


class Service:
    """The primary: answers, refuses (a real refused TCP connection), or hangs."""

    mode = "ok"

    @staticmethod
    async def fetch(question: str) -> str:
        if Service.mode == "refuse":
            _reader, writer = await asyncio.open_connection("127.0.0.1", free_port())
            writer.close()
        elif Service.mode == "hang":
            await asyncio.Event().wait()
        return f"live answer to {question}"


@pytest.fixture(autouse=True)
def service_ok() -> None:
    Service.mode = "ok"


FAILURES = {
    "exception": ConnectionRefusedError,
    "timeout": ServiceTimeoutError,
    "open circuit": CircuitOpenError,
}


async def answer_under_failure(strategy_kind: str, failure: str) -> tuple[object, str, object]:
    clock = FakeClock()
    circuit = CircuitBreaker(CircuitBreakerConfig(name="svc", failure_threshold=50, timeout=None))
    manager = ServiceDegradationManager(timeout=0.05, clock=clock)
    manager.add_service_strategy("svc", CircuitBreakerStrategy(circuit), priority=30)
    if strategy_kind == "fallback":
        manager.add_service_strategy("svc", FallbackStrategy(lambda q: f"fallback for {q}"))
    elif strategy_kind == "degraded mode":
        manager.add_service_strategy("svc", DegradedModeStrategy("temporarily unavailable"))
    else:
        cache = CacheFirstStrategy(ttl=10, stale_if_error=100, clock=clock, key_func=str)
        manager.add_service_strategy("svc", cache, priority=40)
        await manager.call_service("svc", Service.fetch, "q")  # cached while healthy
        clock.now += 50  # stale now, still inside the window
    if failure == "exception":
        Service.mode = "refuse"
    elif failure == "timeout":
        Service.mode = "hang"
    else:
        await circuit.force_open()
    result = await manager.call_service_detailed("svc", Service.fetch, "q")
    assert result.degraded
    return result.value, result.source, result.info.error


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize(
    ("strategy_kind", "expected"),
    [
        ("fallback", ("fallback for q", "FallbackStrategy")),
        ("degraded mode", ("temporarily unavailable", "DegradedModeStrategy")),
        ("cache first", ("live answer to q", "CacheFirstStrategy")),
    ],
)
async def test_strategy_answers_real_failure(
    strategy_kind: str, expected: tuple[str, str], failure: str
) -> None:
    """The strategy answers, and the result names the failure that made it answer."""
    value, source, error = await answer_under_failure(strategy_kind, failure)
    assert (value, source) == expected
    assert isinstance(error, FAILURES[failure])


class _Unprintable(Exception):
    """An error whose message cannot be made (a broken ``__str__``, as an exception
    unpickled without its arguments has)."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


async def test_an_error_whose_message_cannot_be_made_still_degrades() -> None:
    """The primary fails with an error whose ``str()`` raises: the fallback answers, through
    a breaker and a cache, and the reason says so (before: the RuntimeError of its
    ``__str__`` escaped from the call); if every strategy fails so, the caller gets
    ``AllStrategiesFailedError``."""

    async def broken() -> str:
        raise _Unprintable()

    def fallback_broken() -> str:
        raise _Unprintable()

    manager = ServiceDegradationManager()
    breaker = CircuitBreaker(
        CircuitBreakerConfig(name="unprintable", failure_threshold=5, timeout=None)
    )
    manager.add_service_strategy("svc", CircuitBreakerStrategy(breaker), priority=20)
    manager.add_service_strategy("svc", CacheFirstStrategy(ttl=60), priority=10)
    manager.add_service_strategy("svc", FallbackStrategy(lambda: "fallback"))
    result = await manager.call_service_detailed("svc", broken)
    assert result.value == "fallback"
    assert result.info.degraded
    assert "_Unprintable" in str(result.info.reason)
    assert manager.get_degradation_stats()

    manager.add_service_strategy("only", FallbackStrategy(fallback_broken))
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("only", broken)
