"""Exception groups (a TaskGroup's): when a group counts as a failure, and when it does not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import FakeClock, breaker_with_clock
from xnai_core import CircuitBreaker, CircuitState


class Boom(Exception):
    """The expected failure of the tests' dependency."""


class CancelledBoom(Boom, asyncio.CancelledError):
    """An expected exception that is also a cancellation: it must never count."""


def raising(error: BaseException) -> Any:
    async def fn(*args: object) -> None:
        raise error

    return fn


async def raising_nothing() -> str:
    return "ok"


def breaker(fallback: Any = None, **config: Any) -> CircuitBreaker:
    """One counted failure opens it; only Boom counts."""
    config.setdefault("failure_threshold", 1)
    return breaker_with_clock(FakeClock(), fallback, expected_exception=Boom, **config)


async def ready_to_half_open() -> CircuitBreaker:
    clock = FakeClock()
    b = breaker_with_clock(
        clock,
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=1,
        expected_exception=Boom,
    )
    with pytest.raises(Boom):
        await b.call(raising(Boom("trip")))
    clock.advance(1)
    return b


def counts(b: CircuitBreaker) -> tuple[str, int, int]:
    """(state, total_failures, fallback_calls)."""
    m = b.get_metrics()
    return (m["state"], m["total_failures"], m["fallback_calls"])


# -- a group holding an expected exception counts ------------------------------------


async def test_taskgroup_failure_counts_and_is_reraised_unchanged() -> None:
    """A TaskGroup whose child raised an expected exception is a counted failure."""
    b = breaker()
    sibling_cancelled = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise

    async def fan_out() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(raising(Boom("child"))())

    with pytest.raises(ExceptionGroup) as info:
        await b.call(fan_out)
    assert info.value.subgroup(Boom) is not None
    assert sibling_cancelled.is_set()
    assert counts(b) == ("open", 1, 0)


@pytest.mark.parametrize(
    "group",
    [
        ExceptionGroup("mixed", [Boom("expected"), KeyError("unexpected")]),
        ExceptionGroup("outer", [ExceptionGroup("inner", [Boom("deep")]), KeyError("x")]),
        ExceptionGroup("o", [ExceptionGroup("m", [ExceptionGroup("i", [Boom("deeper")])])]),
    ],
    ids=["mixed", "nested", "nested-twice"],
)
async def test_group_holding_an_expected_exception_at_any_depth_counts(
    group: ExceptionGroup[Exception],
) -> None:
    """The whole group is the caller's own exception, re-raised as it is; the failure counts."""
    b = breaker()
    with pytest.raises(ExceptionGroup) as info:
        await b.call(raising(group))
    assert info.value is group
    assert counts(b) == ("open", 1, 0)


async def test_counted_group_gives_the_fallbacks_result() -> None:
    """With a fallback, a counted group is answered by the fallback, with the call's args."""
    seen: list[tuple[Any, ...]] = []

    def fallback(*args: Any) -> str:
        seen.append(args)
        return "fallback"

    b = breaker(fallback)
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [Boom("deep")])])
    assert await b.call(raising(group), 7) == "fallback"
    assert seen == [(7,)]
    assert counts(b) == ("open", 1, 1)


async def test_counted_group_in_half_open_reopens() -> None:
    """A half-open trial ending in a group with an expected member re-opens the circuit."""
    b = await ready_to_half_open()
    with pytest.raises(ExceptionGroup):
        await b.call(raising(ExceptionGroup("trial", [Boom("still down")])))
    assert b.state is CircuitState.OPEN


async def test_expected_group_class_matches_the_group_itself() -> None:
    """expected_exception=ExceptionGroup counts any group, whatever its members."""
    b = breaker_with_clock(FakeClock(), failure_threshold=1, expected_exception=ExceptionGroup)
    with pytest.raises(ExceptionGroup):
        await b.call(raising(ExceptionGroup("any", [KeyError("k")])))
    assert b.state is CircuitState.OPEN


# -- a group of only unexpected exceptions passes through -----------------------------


@pytest.mark.parametrize(
    "group",
    [
        ExceptionGroup("flat", [KeyError("a"), ValueError("b")]),
        ExceptionGroup("outer", [ExceptionGroup("inner", [KeyError("deep")]), ValueError("b")]),
    ],
    ids=["flat", "nested"],
)
async def test_group_of_only_unexpected_exceptions_passes_through_uncounted(
    group: ExceptionGroup[Exception],
) -> None:
    """No expected member: the group passes through, uncounted, and no fallback runs."""
    b = breaker(lambda: "fallback")
    with pytest.raises(ExceptionGroup) as info:
        await b.call(raising(group))
    assert info.value is group
    assert counts(b) == ("closed", 0, 0)


async def test_unexpected_group_in_half_open_gives_the_permit_back() -> None:
    """An uncounted group in half-open returns the trial permit."""
    b = await ready_to_half_open()
    with pytest.raises(ExceptionGroup):
        await b.call(raising(ExceptionGroup("x", [KeyError("k")])))
    assert b.get_metrics()["half_open_trials_in_flight"] == 0
    assert await b.call(raising_nothing) == "ok"
    assert b.state is CircuitState.CLOSED


# -- a group holding a cancellation is a cancellation -----------------------------


@pytest.mark.parametrize(
    "group",
    [
        BaseExceptionGroup("c", [asyncio.CancelledError(), Boom("expected")]),
        BaseExceptionGroup("o", [BaseExceptionGroup("i", [KeyboardInterrupt()]), Boom("e")]),
        ExceptionGroup("both", [CancelledBoom("expected yet cancelled"), Boom("expected")]),
        ExceptionGroup("o", [ExceptionGroup("i", [CancelledBoom("deep")]), Boom("e")]),
    ],
    ids=["cancelled", "nested-base-exception", "cancelled-boom", "nested-cancelled-boom"],
)
async def test_group_holding_a_cancellation_counts_neither_way(
    group: BaseExceptionGroup[BaseException],
) -> None:
    """A group with a cancellation (at any depth) passes through like a cancellation."""
    b = breaker(lambda: "fallback")
    with pytest.raises(BaseExceptionGroup) as info:
        await b.call(raising(group))
    assert info.value is group
    assert counts(b) == ("closed", 0, 0)
    assert b.get_metrics()["total_calls"] == 1


async def test_cancelled_group_in_half_open_gives_the_permit_back() -> None:
    """A half-open trial ending in a group holding a cancellation returns its permit."""
    b = await ready_to_half_open()
    with pytest.raises(BaseExceptionGroup):
        await b.call(raising(BaseExceptionGroup("c", [asyncio.CancelledError(), Boom("e")])))
    assert b.get_metrics()["half_open_trials_in_flight"] == 0
    assert await b.call(raising_nothing) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_caller_cancelled_while_its_taskgroup_runs_counts_neither_way() -> None:
    """Cancelling the caller while the protected TaskGroup runs: CancelledError, uncounted."""
    b = await ready_to_half_open()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async def fan_out() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(hang())
            tg.create_task(hang())

    task = asyncio.create_task(b.call(fan_out))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.get_metrics()["half_open_trials_in_flight"] == 0
    assert b.get_metrics()["total_failures"] == 1  # the trip only
    assert await b.call(raising_nothing) == "ok"
    assert b.state is CircuitState.CLOSED
