"""Per-call timeouts through the deadline keeper: meaning, precision, cancellation, load."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import VirtualTimeLoop, run_virtual
from xnai_core import CircuitBreaker, CircuitBreakerConfig, CircuitState
from xnai_core.circuit.errors import CallTimeoutError
from xnai_core.deadlines import TICK, pending_deadlines, wait_within


def breaker(timeout: float | None, name: str = "t", **kw: Any) -> CircuitBreaker:
    return CircuitBreaker(
        CircuitBreakerConfig(name=name, timeout=timeout, failure_threshold=1000, **kw),
        kw.pop("fallback", None),
    )


async def sleeper(seconds: float, value: object = "done") -> object:
    await asyncio.sleep(seconds)
    return value


# -- meaning and precision (virtual time: deterministic, no waiting) ---------------


def test_timeout_fires_after_deadline_within_precision() -> None:
    """A timeout never fires before its deadline and fires within 2 ticks after it."""

    async def scenario() -> tuple[float, BaseException]:
        cb = breaker(1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await cb.call(sleeper, 60)
        except TimeoutError as exc:
            return loop.time() - start, exc
        raise AssertionError("no timeout")

    elapsed, exc = run_virtual(scenario())
    assert isinstance(exc, CallTimeoutError)
    assert 1.0 <= elapsed <= 1.0 + 2 * TICK


def test_finish_just_before_deadline_is_never_cancelled_afterwards() -> None:
    """A call that ends at its deadline returns its result, and no cancel hits the caller later."""

    async def scenario() -> tuple[object, int, int]:
        cb = breaker(0.5)
        result = await cb.call(sleeper, 0.5)
        await asyncio.sleep(1.0)  # a stray cancellation would land here
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling(), pending_deadlines()

    assert run_virtual(scenario()) == ("done", 0, 0)


def test_swallowed_cancellation_keeps_result_and_cleans_up() -> None:
    """If the awaited code swallows the timeout's cancel and finishes, its result stands."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    async def scenario() -> tuple[object, int, int]:
        cb = breaker(0.1)
        result = await cb.call(stubborn)
        await asyncio.sleep(1)
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling(), pending_deadlines()

    assert run_virtual(scenario()) == ("finished anyway", 0, 0)


def test_fallback_on_timeout() -> None:
    """With a fallback, a timeout returns the fallback's result and counts as a failure."""

    async def scenario() -> tuple[object, dict[str, Any]]:
        cb = CircuitBreaker(
            CircuitBreakerConfig(name="fb", timeout=0.2, failure_threshold=1), lambda *_: "fb"
        )
        result = await cb.call(sleeper, 5)
        return result, cb.get_metrics()

    result, metrics = run_virtual(scenario())
    assert result == "fb"
    assert (metrics["timeouts"], metrics["fallback_calls"], metrics["state"]) == (1, 1, "open")


# -- cancellation from outside ----------------------------------------------------


async def test_outer_cancel_is_not_a_timeout() -> None:
    """Cancelling the caller's task propagates CancelledError and counts nothing."""
    cb = breaker(30.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cb.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metrics = cb.get_metrics()
    assert (metrics["timeouts"], metrics["total_failures"]) == (0, 0)
    assert pending_deadlines() == 0


def test_outer_cancel_in_the_same_instant_as_our_deadline_wins() -> None:
    """An outside cancel that lands together with our deadline stays a cancellation."""

    async def scenario() -> str:
        cb = breaker(1.0)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        # The call is filed now (t=0); the first tick closes its generation at t=TICK,
        # so its deadline comes due at TICK + 1.0: cancel from outside at that instant.
        loop.call_at(loop.time() + TICK + 1.0, task.cancel)
        try:
            await cb.call(sleeper, 60)
        except CallTimeoutError:
            return "timeout"
        except asyncio.CancelledError:
            return "cancelled" if task.uncancel() == 0 else "cancel count wrong"
        return "finished"

    assert run_virtual(scenario()) == "cancelled"


def test_outer_timeout_shorter_than_ours() -> None:
    """An enclosing asyncio.timeout that expires first raises its own TimeoutError."""

    async def scenario() -> tuple[str, dict[str, Any]]:
        cb = breaker(10.0)
        try:
            async with asyncio.timeout(0.5):
                await cb.call(sleeper, 60)
        except CallTimeoutError:
            return "ours", cb.get_metrics()
        except TimeoutError:
            return "outer", cb.get_metrics()
        return "none", cb.get_metrics()

    which, metrics = run_virtual(scenario())
    assert which == "outer"
    assert (metrics["timeouts"], metrics["total_failures"]) == (0, 0)


def test_ours_shorter_than_outer() -> None:
    """Our timeout fires first; the enclosing asyncio.timeout is untouched and still works."""

    async def scenario() -> tuple[str, str, int]:
        cb = breaker(0.5)
        loop = asyncio.get_running_loop()
        first = "none"
        async with asyncio.timeout(5.0):
            try:
                await cb.call(sleeper, 60)
            except CallTimeoutError:
                first = "ours"
            await asyncio.sleep(1.0)  # still inside the outer scope: must not be cancelled
        second = "none"
        start = loop.time()
        try:
            async with asyncio.timeout(2.0):
                await asyncio.sleep(60)
        except TimeoutError:
            second = f"outer after {loop.time() - start:.1f}"
        task = asyncio.current_task()
        assert task is not None
        return first, second, task.cancelling()

    assert run_virtual(scenario()) == ("ours", "outer after 2.0", 0)


def test_outer_timeout_equal_to_ours_is_one_timeout_error() -> None:
    """When both expire together, the caller gets exactly one TimeoutError and no stray cancel."""

    async def scenario() -> int:
        cb = breaker(1.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0 + TICK):
                await cb.call(sleeper, 60)
        await asyncio.sleep(1)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert run_virtual(scenario()) == 0


def test_taskgroup_sibling_failure_cancels_without_timeout() -> None:
    """A TaskGroup cancelling our call on a sibling's failure is not turned into a timeout."""

    async def fail_soon() -> None:
        await asyncio.sleep(0.1)
        raise ValueError("sibling")

    async def scenario() -> tuple[list[type[BaseException]], dict[str, Any]]:
        cb = breaker(30.0)
        kinds: list[type[BaseException]] = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(cb.call(sleeper, 60))
                group.create_task(fail_soon())
        except BaseExceptionGroup as eg:
            kinds = [type(e) for e in eg.exceptions]
        return kinds, cb.get_metrics()

    kinds, metrics = run_virtual(scenario())
    assert kinds == [ValueError]
    assert (metrics["timeouts"], metrics["total_failures"]) == (0, 0)


def test_nested_breakers_inner_shorter() -> None:
    """Inner breaker's timeout fires: the inner counts a timeout, the outer a plain failure."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        outer, inner = breaker(5.0, "outer"), breaker(0.5, "inner")
        with pytest.raises(CallTimeoutError) as info:
            await outer.call(inner.call, sleeper, 60)
        assert info.value.breaker == "inner"
        return outer.get_metrics(), inner.get_metrics()

    outer, inner = run_virtual(scenario())
    assert (inner["timeouts"], inner["total_failures"]) == (1, 1)
    assert (outer["timeouts"], outer["total_failures"]) == (0, 1)


def test_nested_breakers_outer_shorter() -> None:
    """Outer breaker's timeout fires: the inner sees a cancellation and counts nothing."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], int]:
        outer, inner = breaker(0.5, "outer"), breaker(5.0, "inner")
        with pytest.raises(CallTimeoutError) as info:
            await outer.call(inner.call, sleeper, 60)
        assert info.value.breaker == "outer"
        return outer.get_metrics(), inner.get_metrics(), pending_deadlines()

    outer, inner, pending = run_virtual(scenario())
    assert (outer["timeouts"], outer["total_failures"]) == (1, 1)
    assert (inner["timeouts"], inner["total_failures"]) == (0, 0)
    assert pending == 0


# -- property: exactly the calls past their deadline time out ---------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.05, 0.1, 0.25, 1.0]),  # timeout
            st.integers(0, 300).map(lambda ms: ms / 200),  # duration, up to 1.5 s
        ),
        min_size=1,
        max_size=40,
    )
)
def test_exactly_calls_past_deadline_time_out(calls: list[tuple[float, float]]) -> None:
    """Before the deadline: never timed out. Past deadline + 2 ticks: always. Nothing left."""
    breakers = {t: breaker(t, f"b{t}") for t, _ in calls}

    async def one(timeout: float, duration: float) -> bool:
        try:
            await breakers[timeout].call(sleeper, duration)
        except CallTimeoutError:
            return True
        return False

    async def scenario() -> tuple[list[bool], int]:
        outcomes = await asyncio.gather(*(one(t, d) for t, d in calls))
        return outcomes, pending_deadlines()

    outcomes, pending = run_virtual(scenario())
    assert pending == 0
    for (timeout, duration), timed_out in zip(calls, outcomes, strict=True):
        if duration < timeout:
            assert not timed_out, (timeout, duration)
        elif duration > timeout + 2 * TICK:
            assert timed_out, (timeout, duration)


# -- load --------------------------------------------------------------------------


def test_ten_thousand_in_flight_mixed_deadlines() -> None:
    """10,000 concurrent calls with mixed deadlines: each one behaves, nothing stays filed."""

    async def scenario() -> tuple[int, int, int]:
        cbs = [breaker(t, f"m{t}") for t in (0.1, 0.5, 2.0)]

        async def one(i: int) -> bool:
            cb = cbs[i % 3]
            assert cb.config.timeout is not None
            slow = i % 7 == 0
            duration = cb.config.timeout * (3 if slow else 0.5)
            try:
                await cb.call(sleeper, duration)
            except CallTimeoutError:
                return slow
            return not slow

        results = await asyncio.gather(*(one(i) for i in range(10_000)))
        timeouts = sum(cb.get_metrics()["timeouts"] for cb in cbs)
        return sum(results), timeouts, pending_deadlines()

    correct, timeouts, pending = run_virtual(scenario())
    assert correct == 10_000
    assert timeouts == len([i for i in range(10_000) if i % 7 == 0])
    assert pending == 0


async def test_ten_thousand_in_flight_on_a_real_loop() -> None:
    """On a real loop too, 10,000 calls in flight: slow ones time out, fast ones do not."""
    cb = breaker(0.5, "real")

    async def one(i: int) -> str:
        try:
            return str(await cb.call(sleeper, 3.0 if i % 10 == 0 else 0.01))
        except CallTimeoutError:
            return "timeout"

    results = await asyncio.gather(*(one(i) for i in range(10_000)))
    assert results.count("timeout") == 1_000
    assert results.count("done") == 9_000
    assert pending_deadlines() == 0


def test_breakers_shared_by_loops_in_several_threads() -> None:
    """One breaker used from four event loops in four threads: each loop's calls behave."""
    shared = breaker(0.05, "threads")
    outcomes: dict[int, tuple[int, int, int]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def run() -> tuple[int, int, int]:
            ok = timed_out = 0
            for i in range(200):
                try:
                    await shared.call(sleeper, 1.0 if i % 50 == 0 else 0)
                    ok += 1
                except CallTimeoutError:
                    timed_out += 1
            return ok, timed_out, pending_deadlines()

        try:
            outcomes[n] = asyncio.run(run())
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert outcomes == dict.fromkeys(range(4), (196, 4, 0))
    # The state is updated under a lock; plain counters may race between threads.
    assert 0 < shared.get_metrics()["timeouts"] <= 16
    assert shared.state is CircuitState.CLOSED


async def test_sequential_loops_in_one_thread() -> None:
    """A new loop in the same thread gets its own keeper (pytest runs one loop per test)."""
    cb = breaker(0.01, "seq")
    with pytest.raises(CallTimeoutError):
        await cb.call(sleeper, 1)

    def in_new_loop() -> object:
        return asyncio.run(cb.call(sleeper, 0))

    result = await asyncio.to_thread(in_new_loop)
    assert result == "done"


def test_wait_within_a_future_shared_by_two_callers() -> None:
    """Two callers awaiting one future each get their own deadline; the future survives one."""

    async def scenario() -> tuple[str, object, int]:
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[str] = loop.create_future()
        loop.call_later(1.0, shared.set_result, "late")

        async def waiter(timeout: float) -> object:
            try:
                return await wait_within(asyncio.shield(shared), timeout, lambda: TimeoutError("x"))
            except TimeoutError:
                return "timed out"

        short, long = await asyncio.gather(waiter(0.2), waiter(5.0))
        return str(short), long, pending_deadlines()

    assert run_virtual(scenario()) == ("timed out", "late", 0)


def test_wait_within_one_awaitable_object_shared_by_two_callers() -> None:
    """One awaitable object (not a coroutine) awaited by two callers: each keeps its deadline."""

    class SharedWait:
        def __init__(self, future: asyncio.Future[str]) -> None:
            self.future = future

        def __await__(self) -> Generator[Any, None, str]:
            return asyncio.shield(self.future).__await__()

    async def scenario() -> tuple[object, object, int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        loop.call_later(1.0, future.set_result, "late")
        shared = SharedWait(future)

        async def waiter(timeout: float) -> object:
            try:
                return await wait_within(shared, timeout, lambda: TimeoutError("x"))
            except TimeoutError:
                return "timed out"

        short, long = await asyncio.gather(waiter(0.2), waiter(5.0))
        return short, long, pending_deadlines()

    assert run_virtual(scenario()) == ("timed out", "late", 0)


def test_cleanup_call_in_a_cancelled_task_still_times_out() -> None:
    """A call made while its task is being cancelled (cleanup) times out like asyncio.timeout."""

    async def scenario() -> tuple[str, float]:
        cb = breaker(0.1)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(10)  # cancelled from outside below
        except asyncio.CancelledError:
            start = loop.time()
            try:
                await cb.call(sleeper, 60)  # cleanup work, still under our timeout
            except CallTimeoutError:
                return "timed out", loop.time() - start
            return "finished", loop.time() - start
        return "not cancelled", 0.0

    async def main() -> tuple[str, float]:
        task = asyncio.create_task(scenario())
        await asyncio.sleep(1)
        task.cancel()
        return await task

    outcome, elapsed = run_virtual(main())
    assert outcome == "timed out"
    assert 0.1 <= elapsed <= 0.1 + 2 * TICK


def test_deadline_due_with_an_inner_timeout_still_fires() -> None:
    """An inner asyncio.timeout expiring in the same instant does not cost us our deadline."""

    async def inner_then_carry_on() -> str:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + TICK + 1.0):  # our deadline's instant
                await asyncio.sleep(60)
        except TimeoutError:
            await asyncio.sleep(30)  # degrade inside the call, for far longer than allowed
        return "carried on"

    async def scenario() -> tuple[str, float]:
        cb = breaker(1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            return str(await cb.call(inner_then_carry_on)), loop.time() - start
        except CallTimeoutError:
            return "timed out", loop.time() - start

    outcome, elapsed = run_virtual(scenario())
    assert outcome == "timed out"
    assert elapsed <= 1.0 + 2 * TICK


def test_nested_deadlines_swept_together_after_a_blocked_loop() -> None:
    """When a blocked loop makes inner and outer deadlines come due together, both fire."""

    async def nested(inner: CircuitBreaker) -> str:
        try:
            return str(await inner.call(sleeper, 60))
        except CallTimeoutError:
            await asyncio.sleep(2.0)  # work after the inner timeout: the outer must end it
            return "inner timed out, then ran on"

    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any]]:
        outer, inner = breaker(0.2, "outer"), breaker(0.1, "inner")
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        # The loop "blocks" for 0.5 s at t=0.05: both deadlines are overdue at once.
        loop.call_later(0.05, lambda: setattr(loop, "virtual_now", loop.virtual_now + 0.5))
        try:
            result = str(await outer.call(nested, inner))
        except CallTimeoutError as exc:
            result = f"timeout from {exc.breaker}"
        return result, outer.get_metrics(), inner.get_metrics()

    result, outer, inner = run_virtual(scenario())
    assert result == "timeout from outer"
    assert outer["timeouts"] == 1
    # As with nested asyncio.timeout scopes, the inner call saw a cancellation: not counted.
    assert (inner["timeouts"], inner["total_failures"]) == (0, 0)


def test_fired_then_other_exception_leaves_no_cancel_count() -> None:
    """Code that turns our cancellation into another error leaves the task's count clean."""

    async def converts() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("converted") from None
        return "slept"

    async def scenario() -> tuple[str, int, int]:
        hot, slow = breaker(0.1, "hot"), breaker(0.1, "slow")
        outcomes = []
        for cb in (hot, slow):
            if cb is slow:
                await cb.force_open()
                await cb.force_close()  # slow path: the store is asked once
            try:
                await cb.call(converts)
            except ValueError:
                outcomes.append("value error")
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(1)  # a stray cancellation would land here
        return ",".join(outcomes), task.cancelling(), pending_deadlines()

    assert run_virtual(scenario()) == ("value error,value error", 0, 0)


def test_same_named_nested_breakers_tell_their_timeouts_apart() -> None:
    """An inner breaker's timeout is not the outer's own, even when both have one name."""

    async def scenario() -> tuple[str, dict[str, Any]]:
        outer = CircuitBreaker(
            CircuitBreakerConfig(name="default", timeout=5.0, expected_exception=KeyError),
            lambda *_: "outer fallback",
        )
        inner = CircuitBreaker(CircuitBreakerConfig(name="default", timeout=0.1))
        try:
            result = str(await outer.call(inner.call, sleeper, 60))
        except CallTimeoutError as exc:
            result = f"inner timeout passed through: {exc.source is inner}"
        return result, outer.get_metrics()

    result, outer = run_virtual(scenario())
    assert result == "inner timeout passed through: True"
    assert (outer["timeouts"], outer["total_failures"], outer["fallback_calls"]) == (0, 0, 0)
