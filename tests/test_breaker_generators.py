"""Generators are refused: the breaker would count a success for an iteration it never sees."""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import pytest

from tests.helpers import FakeClock, breaker_with_clock
from xnai_core import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState


class Boom(Exception):
    """The failure the tests' dependency raises."""


def numbers() -> Iterator[int]:
    yield 1
    raise Boom("the iteration fails, after the breaker would have counted a success")


async def stream() -> AsyncIterator[int]:
    yield 1
    raise Boom("the iteration fails, after the breaker would have counted a success")


async def boom() -> None:
    raise Boom("down")


async def ok() -> str:
    return "ok"


def counts(breaker: CircuitBreaker) -> tuple[int, int, int, int]:
    """(failure_count, success_count, total_failures, total_calls)."""
    m = breaker.get_metrics()
    return (m["failure_count"], m["success_count"], m["total_failures"], m["total_calls"])


async def ready_to_half_open() -> CircuitBreaker:
    """A breaker (one trial permit) tripped by one failure whose recovery timeout has passed."""
    clock = FakeClock()
    breaker = breaker_with_clock(
        clock, failure_threshold=1, recovery_timeout=1, half_open_max_calls=1
    )
    with pytest.raises(Boom):
        await breaker.call(boom)
    clock.advance(1)
    return breaker


# -- at decoration time ------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "kind"),
    [(numbers, "the generator function 'numbers'"), (stream, "the async generator function")],
)
def test_decorating_a_generator_function_is_refused(func: Any, kind: str) -> None:
    """Decorating a (sync or async) generator function raises TypeError naming it and why."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="gen"))
    with pytest.raises(TypeError, match=kind) as info:
        breaker(func)
    message = str(info.value)
    assert func.__qualname__ in message
    assert "circuit 'gen'" in message
    assert "never see how the iteration ends" in message


def test_decorating_generator_methods_and_partials_is_refused() -> None:
    """A generator method (in the class body or bound) and a partial of one are refused too."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="gen"))

    with pytest.raises(TypeError, match=r"Feed\.items'"):

        class Feed:
            @breaker
            def items(self) -> Iterator[int]:
                yield 1

    class Source:
        async def rows(self, n: int) -> AsyncIterator[int]:
            yield n

    with pytest.raises(TypeError, match=r"async generator function .*Source\.rows'"):
        breaker(Source().rows)
    with pytest.raises(TypeError, match=r"async generator function .*Source\.rows'"):
        breaker(functools.partial(Source().rows, 3))


async def test_decorated_method_still_works() -> None:
    """A decorated async method gets its self and arguments, and failures count."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)

    class Client:
        def __init__(self) -> None:
            self.base = 10

        @breaker
        async def get(self, x: int) -> int:
            if x < 0:
                raise Boom("negative")
            return self.base + x

    client = Client()
    assert await client.get(1) == 11
    with pytest.raises(Boom):
        await client.get(-1)
    with pytest.raises(CircuitOpenError):
        await client.get(1)


# -- at call time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "named"),
    [
        (numbers, "'numbers', which returned the generator 'numbers'"),
        (lambda: numbers(), "'<lambda>', which returned the generator 'numbers'"),
        (stream, "'stream', which returned the async generator 'stream'"),
        (lambda: stream(), "'<lambda>', which returned the async generator 'stream'"),
        (
            lambda: (n for n in range(3)),
            "which returned the generator '<lambda>.<locals>.<genexpr>'",
        ),
    ],
)
async def test_call_returning_a_generator_is_refused_and_counts_neither_way(
    fn: Any, named: str
) -> None:
    """call() refuses a fn that returns a generator: TypeError, no success, no failure.

    expected_exception is Exception and one failure opens the circuit, so a refusal
    that counted as a failure would open it; one that counted as a success would show.
    """
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)
    with pytest.raises(TypeError, match="cannot protect") as info:
        await breaker.call(fn)
    assert named in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert counts(breaker) == (0, 0, 0, 1)
    assert breaker.state is CircuitState.CLOSED


async def test_refusal_is_not_replaced_by_the_fallback() -> None:
    """A refused generator is a programming error: the fallback never hides it."""
    fallback_calls = 0

    def fallback() -> str:
        nonlocal fallback_calls
        fallback_calls += 1
        return "fallback"

    breaker = breaker_with_clock(FakeClock(), fallback, failure_threshold=1)
    with pytest.raises(TypeError, match="cannot protect"):
        await breaker.call(numbers)
    assert fallback_calls == 0
    assert breaker.get_metrics()["fallback_calls"] == 0


async def test_refused_half_open_trial_gives_its_permit_back() -> None:
    """In half-open, a refused call returns its trial permit: the next caller is admitted."""
    breaker = await ready_to_half_open()
    with pytest.raises(TypeError, match="cannot protect"):
        await breaker.call(lambda: stream())
    assert breaker.get_metrics()["half_open_trials_in_flight"] == 0
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


async def test_a_wrapped_generator_function_is_refused_when_called() -> None:
    """A generator hidden behind a wrapper slips past decoration, and is refused at the call."""

    def passthrough(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            return func(*args)

        return wrapper

    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)
    hidden = breaker(passthrough(numbers))
    with pytest.raises(TypeError, match="'numbers', which returned the generator 'numbers'"):
        await hidden()
    assert counts(breaker) == (0, 0, 0, 1)


async def test_a_consuming_function_is_protected() -> None:
    """The advice in the error works: a function that consumes the iteration counts its failure."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)

    async def collect() -> list[int]:
        return [n async for n in stream()]

    with pytest.raises(Boom):
        await breaker.call(collect)
    assert breaker.state is CircuitState.OPEN


# -- what is still awaited ---------------------------------------------------------


@types.coroutine
def legacy_coroutine() -> Generator[Any, None, str]:
    """A generator-based coroutine: a generator object, yet awaitable."""
    yield from asyncio.sleep(0).__await__()
    return "legacy"


async def test_generator_based_coroutine_is_awaited_not_refused() -> None:
    """@types.coroutine functions are awaitable: decorated or called, they are protected."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="legacy"))
    assert await breaker.call(legacy_coroutine) == "legacy"
    decorated: Callable[[], Awaitable[object]] = breaker(legacy_coroutine)
    assert await decorated() == "legacy"
    assert breaker.get_metrics()["success_count"] == 2


async def test_sync_callable_returning_an_awaitable_is_awaited() -> None:
    """A plain function returning a Future (not a coroutine) is awaited under the breaker."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)
    loop = asyncio.get_running_loop()

    def resolved(value: object) -> asyncio.Future[object]:
        future = loop.create_future()
        future.set_result(value)
        return future

    def failed() -> asyncio.Future[object]:
        future = loop.create_future()
        future.set_exception(Boom("down"))
        return future

    assert await breaker.call(resolved, 5) == 5
    with pytest.raises(Boom):
        await breaker.call(failed)
    assert breaker.state is CircuitState.OPEN


async def test_coroutine_returning_a_generator_is_its_result() -> None:
    """An async def whose result is a generator ran to completion: its result is data."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="data"))

    async def fetch() -> Iterator[int]:
        return iter([1, 2])

    async def lazy() -> Generator[int, None, None]:
        return (n for n in (1, 2))

    assert list(await breaker.call(fetch)) == [1, 2]
    assert list(await breaker.call(lazy)) == [1, 2]
    assert breaker.get_metrics()["success_count"] == 2
