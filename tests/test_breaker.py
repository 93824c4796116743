"""CircuitBreaker on in-process state: the call path, fallbacks, control, listeners, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

import pytest

from tests.helpers import FakeClock, breaker_with_clock
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitOpenError,
    CircuitState,
    MemoryStore,
    fallback_return_none,
)


class Boom(Exception):
    """The failure the tests' dependency raises."""


async def ok(value: object = "ok") -> object:
    return value


async def boom() -> object:
    raise Boom("down")


async def trip(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            await breaker.call(boom)


async def ready_to_half_open(half_open_max_calls: int = 1, **config: Any) -> CircuitBreaker:
    """A breaker tripped by one failure whose 1 s recovery timeout has just passed."""
    clock = FakeClock()
    breaker = breaker_with_clock(
        clock,
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=half_open_max_calls,
        **config,
    )
    await trip(breaker, 1)
    clock.advance(1)
    return breaker


# -- closed / open / half-open ---------------------------------------------------


async def test_success_returns_result_and_counts() -> None:
    """A successful call returns its result and is counted."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="s"))
    assert await breaker.call(ok, 42) == 42
    metrics = breaker.get_metrics()
    assert (metrics["success_count"], metrics["total_calls"]) == (1, 1)


async def test_threshold_consecutive_failures_open() -> None:
    """failure_threshold consecutive failures open the circuit; one fewer does not."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=3)
    await trip(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    await trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN


async def test_success_resets_failure_count() -> None:
    """A success between failures resets the consecutive count."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=3)
    await trip(breaker, 2)
    await breaker.call(ok)
    await trip(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_metrics()["failure_count"] == 2


async def test_open_rejects_without_calling() -> None:
    """An open circuit raises CircuitOpenError with retry_after and never calls fn."""
    clock = FakeClock()
    breaker = breaker_with_clock(clock, failure_threshold=1, recovery_timeout=10)
    await trip(breaker, 1)
    clock.advance(4)
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(counted)
    assert calls == 0
    assert info.value.name == "test"
    assert info.value.retry_after == pytest.approx(6.0)
    assert breaker.get_metrics()["rejected_calls"] == 1


async def test_half_open_after_recovery_timeout_then_closes() -> None:
    """After recovery_timeout, half_open_max_calls successful trials close the circuit."""
    clock = FakeClock()
    breaker = breaker_with_clock(
        clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=2
    )
    await trip(breaker, 1)
    clock.advance(5)
    await breaker.call(ok)
    assert breaker.state is CircuitState.HALF_OPEN
    await breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED


async def test_trial_failure_reopens() -> None:
    """Any failed trial re-opens the circuit for another recovery_timeout."""
    clock = FakeClock()
    breaker = breaker_with_clock(clock, failure_threshold=1, recovery_timeout=5)
    await trip(breaker, 1)
    clock.advance(5)
    await breaker.call(ok)
    await trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(5.0)


async def test_thousand_concurrent_callers_half_open() -> None:
    """With 1,000 concurrent callers in half-open, exactly half_open_max_calls reach fn."""
    breaker = await ready_to_half_open(half_open_max_calls=3)
    release = asyncio.Event()
    reached = 0

    async def trial() -> str:
        nonlocal reached
        reached += 1
        await release.wait()
        return "ok"

    async def caller() -> str:
        try:
            return str(await breaker.call(trial))
        except CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(caller()) for _ in range(1000)]
    for _ in range(5):  # each rejected caller finishes in its first step
        await asyncio.sleep(0)
    assert sum(t.done() for t in tasks) == 997
    assert reached == 3
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 3
    assert results.count("rejected") == 997
    assert breaker.state is CircuitState.CLOSED


# -- what counts -----------------------------------------------------------------


async def test_only_expected_exception_counts() -> None:
    """Other exceptions pass through unchanged and are not counted."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1, expected_exception=Boom)

    async def other() -> None:
        raise KeyError("not ours")

    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(other)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_metrics()["total_failures"] == 0


async def test_tuple_expected_exception() -> None:
    """A tuple of classes counts each of them."""
    breaker = breaker_with_clock(
        FakeClock(), failure_threshold=2, expected_exception=(Boom, KeyError)
    )

    async def key_error() -> None:
        raise KeyError("k")

    await trip(breaker, 1)
    with pytest.raises(KeyError):
        await breaker.call(key_error)
    assert breaker.state is CircuitState.OPEN


async def test_failure_reraises_callers_own_exception() -> None:
    """Without a fallback, the caller gets its own exception object back."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="raise"))
    error = Boom("mine")

    async def raising() -> None:
        raise error

    with pytest.raises(Boom) as info:
        await breaker.call(raising)
    assert info.value is error


async def test_timeout_is_a_failure() -> None:
    """A call past its timeout raises TimeoutError and counts as a failure."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="t", timeout=0.02, failure_threshold=1))
    with pytest.raises(TimeoutError):
        await breaker.call(asyncio.sleep, 5)
    metrics = breaker.get_metrics()
    assert (metrics["timeouts"], metrics["state"]) == (1, "open")


# -- fn shapes -------------------------------------------------------------------


async def test_plain_function_and_lambda_coroutine() -> None:
    """fn may be a plain function or a lambda returning a coroutine, as in the seed."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="shapes"))
    assert await breaker.call(lambda: 7) == 7
    assert await breaker.call(lambda: ok("coro")) == "coro"
    assert await breaker.call(dict, a=1) == {"a": 1}


async def test_decorator_async_and_sync() -> None:
    """The breaker decorates async def and def; both become awaitable."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)

    @breaker
    async def fetch(x: int) -> int:
        return x * 2

    @breaker
    def compute(x: int) -> int:
        if x < 0:
            raise Boom("negative")
        return x + 1

    assert await fetch(2) == 4
    assert await compute(2) == 3
    assert fetch.__name__ == "fetch"
    with pytest.raises(Boom):
        await compute(-1)
    with pytest.raises(CircuitOpenError):
        await fetch(1)


# -- fallbacks -------------------------------------------------------------------


async def test_fallback_on_open_failure_and_timeout() -> None:
    """With a fallback, open, failure and timeout all return its result, with the call's args."""
    seen: list[tuple[Any, ...]] = []

    async def fallback(*args: Any) -> str:
        seen.append(args)
        return "fallback"

    cfg = CircuitBreakerConfig(name="fb", failure_threshold=2, timeout=0.02)
    breaker = CircuitBreaker(cfg, fallback)

    async def fails(x: int) -> object:
        raise Boom(x)

    assert await breaker.call(fails, 1) == "fallback"
    assert await breaker.call(asyncio.sleep, 5, "result") == "fallback"
    assert breaker.state is CircuitState.OPEN
    assert await breaker.call(fails, 3) == "fallback"
    assert seen == [(1,), (5, "result"), (3,)]
    metrics = breaker.get_metrics()
    assert (metrics["fallback_calls"], metrics["rejected_calls"], metrics["timeouts"]) == (3, 1, 1)


async def test_fallback_return_none_and_sync_fallback() -> None:
    """fallback_return_none answers None; a sync fallback works too."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="none"), fallback_return_none)
    assert await breaker.call(boom) is None
    breaker2 = CircuitBreaker(CircuitBreakerConfig(name="sync"), lambda: "sync")
    assert await breaker2.call(boom) == "sync"


async def test_fallback_not_used_for_uncounted_exception() -> None:
    """An exception that does not count is not a failure, so no fallback."""
    breaker = CircuitBreaker(
        CircuitBreakerConfig(name="nf", expected_exception=Boom), fallback_return_none
    )

    async def other() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await breaker.call(other)


# -- cancellation ----------------------------------------------------------------


async def test_cancel_in_closed_counts_neither_way() -> None:
    """A cancelled call in closed is neither a success nor a failure."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=2)
    await trip(breaker, 1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metrics = breaker.get_metrics()
    assert (metrics["failure_count"], metrics["success_count"]) == (1, 0)


async def test_cancel_in_half_open_gives_permit_back() -> None:
    """A cancelled trial returns its permit: the next caller is admitted."""
    breaker = await ready_to_half_open()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.get_metrics()["half_open_trials_in_flight"] == 0
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


async def test_cancel_while_open_fallback_runs() -> None:
    """Cancelling a caller whose async fallback is running propagates the cancellation."""
    started = asyncio.Event()

    async def slow_fallback() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    clock = FakeClock()
    breaker = breaker_with_clock(clock, slow_fallback, failure_threshold=1)
    await breaker.force_open()
    task = asyncio.create_task(breaker.call(ok))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CircuitState.OPEN


async def test_uncounted_exception_in_half_open_releases_permit() -> None:
    """An exception that does not count gives the trial permit back."""
    breaker = await ready_to_half_open(expected_exception=Boom)

    async def other() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await breaker.call(other)
    assert await breaker.call(ok) == "ok"


# -- manual control --------------------------------------------------------------


async def test_force_open_holds_until_force_close() -> None:
    """force_open holds past recovery_timeout; force_close closes it."""
    clock = FakeClock()
    breaker = breaker_with_clock(clock, recovery_timeout=1)
    await breaker.force_open()
    clock.advance(100)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_after is None
    await breaker.force_close()
    assert await breaker.call(ok) == "ok"


async def test_reset_clears_state_and_counters() -> None:
    """reset() closes the circuit and zeroes this process's counters."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)
    await trip(breaker, 1)
    await breaker.reset()
    metrics = breaker.get_metrics()
    assert metrics["state"] == "closed"
    assert (metrics["total_calls"], metrics["failure_count"], metrics["total_failures"]) == (
        0,
        0,
        0,
    )


# -- listeners, logs, metrics ----------------------------------------------------


async def test_listeners_sync_and_async_receive_transitions() -> None:
    """Sync and async listeners get (name, old, new, reason) for every transition."""
    clock = FakeClock()
    breaker = breaker_with_clock(
        clock, failure_threshold=1, recovery_timeout=1, half_open_max_calls=1
    )
    sync_seen: list[tuple[str, str, str]] = []
    async_seen: list[tuple[str, str, str]] = []

    def on_sync(name: str, old: CircuitState, new: CircuitState, reason: str) -> None:
        sync_seen.append((name, old.value, new.value))

    async def on_async(name: str, old: CircuitState, new: CircuitState, reason: str) -> None:
        await asyncio.sleep(0)
        async_seen.append((name, old.value, new.value))

    breaker.add_listener(on_sync)
    breaker.add_listener(on_async)
    await trip(breaker, 1)
    clock.advance(1)
    await breaker.call(ok)
    for _ in range(5):
        await asyncio.sleep(0)
    expected = [
        ("test", "closed", "open"),
        ("test", "open", "half_open"),
        ("test", "half_open", "closed"),
    ]
    assert sync_seen == expected
    assert async_seen == expected


async def test_failing_listeners_never_break_a_call(caplog: pytest.LogCaptureFixture) -> None:
    """A listener's exception, sync or async, is logged and the call still answers."""
    breaker = breaker_with_clock(FakeClock(), fallback_return_none, failure_threshold=1)

    def bad_sync(*_: object) -> None:
        raise RuntimeError("sync listener bug")

    async def bad_async(*_: object) -> None:
        raise RuntimeError("async listener bug")

    breaker.add_listener(bad_sync)
    breaker.add_listener(bad_async)
    with caplog.at_level(logging.ERROR, logger="xnai_core"):
        assert await breaker.call(boom) is None
        for _ in range(3):
            await asyncio.sleep(0)
    assert breaker.state is CircuitState.OPEN
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed" in m for m in messages) == 2


async def test_transitions_logged_under_xnai_core(caplog: pytest.LogCaptureFixture) -> None:
    """Opening is logged once as a WARNING on the xnai_core logger tree."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=2)
    with caplog.at_level(logging.INFO, logger="xnai_core"):
        await trip(breaker, 2)
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
    opened = [r for r in caplog.records if "closed -> open" in r.getMessage()]
    assert len(opened) == 1
    assert opened[0].levelno == logging.WARNING
    assert opened[0].name.startswith("xnai_core")


async def test_metrics_shape_and_json() -> None:
    """get_metrics() has the promised keys and is JSON-serialisable."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=1)
    await trip(breaker, 1)
    metrics = breaker.get_metrics()
    json.dumps(metrics)
    for key in (
        "name",
        "state",
        "failure_count",
        "success_count",
        "total_calls",
        "rejected_calls",
        "timeouts",
        "fallback_calls",
        "last_failure_time",
        "last_state_change",
        "backend",
        "redis_available",
    ):
        assert key in metrics
    assert (metrics["backend"], metrics["redis_available"]) == ("memory", None)
    assert metrics["state"] == "open"
    assert isinstance(metrics["last_failure_time"], float)
    assert isinstance(metrics["last_state_change"], float)


# -- construction and registry ---------------------------------------------------


def test_bad_arguments_are_clear() -> None:
    """A wrong config, fallback or store fails at construction, naming the argument."""
    with pytest.raises(TypeError, match="'config'"):
        CircuitBreaker({"name": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'fallback_func'"):
        CircuitBreaker(CircuitBreakerConfig(), fallback_func=42)  # type: ignore[arg-type]
    other = MemoryStore(CircuitBreakerConfig(name="other"))
    with pytest.raises(ValueError, match="'store'"):
        CircuitBreaker(CircuitBreakerConfig(name="mine"), store=other)


async def test_registry_by_name_and_all_metrics() -> None:
    """The registry keeps breakers by name and reports all their metrics."""
    registry = CircuitBreakerRegistry()
    llm = registry.register(CircuitBreaker(CircuitBreakerConfig(name="llm")))
    assert registry.get_or_create("vector", failure_threshold=2).config.failure_threshold == 2
    assert registry.get("llm") is llm
    assert "vector" in registry
    assert len(registry) == 2
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CircuitBreaker(CircuitBreakerConfig(name="llm")))
    with pytest.raises(KeyError, match="nope"):
        registry.get("nope")
    await llm.call(ok)
    assert set(registry.get_all_metrics()) == {"llm", "vector"}
    assert registry.get_all_metrics()["llm"]["success_count"] == 1
    assert registry.unregister("vector").name == "vector"
    assert "vector" not in registry


def test_circuit_open_error_pickles_and_reads() -> None:
    """CircuitOpenError says which circuit and when to retry."""
    error = CircuitOpenError("llm", 1.5)
    assert str(error) == "circuit 'llm' is open: retry after 1.500s"
    assert (error.name, error.retry_after) == ("llm", 1.5)


# -- found in review -------------------------------------------------------------


async def test_hot_success_resets_a_failure_that_landed_meanwhile() -> None:
    """A success admitted on the hot path still resets a failure recorded while it ran."""
    breaker = breaker_with_clock(FakeClock(), failure_threshold=3)
    release = asyncio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "ok"

    slow = asyncio.create_task(breaker.call(slow_ok))
    await asyncio.sleep(0)
    await trip(breaker, 1)
    assert breaker.get_metrics()["failure_count"] == 1
    release.set()
    assert await slow == "ok"
    assert breaker.get_metrics()["failure_count"] == 0


def test_stale_success_after_a_full_cycle_keeps_the_count() -> None:
    """A success admitted in an earlier closed episode cannot reset the new episode's count."""
    from xnai_core.circuit import machine
    from xnai_core.circuit.machine import Snapshot, Ticket

    cfg = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=1, half_open_max_calls=1)
    old = Ticket(0)
    snap = Snapshot()
    for _ in range(2):
        snap = machine.on_failure(snap, cfg, 0.0, Ticket(snap.epoch))
    admission, snap = machine.admit(snap, cfg, 1.0)
    assert admission.ticket is not None
    snap = machine.on_success(snap, cfg, 1.0, admission.ticket)
    assert snap.state is CircuitState.CLOSED
    snap = machine.on_failure(snap, cfg, 1.0, Ticket(snap.epoch))
    assert machine.on_success(snap, cfg, 1.0, old).failure_count == 1


async def test_half_open_rejection_says_half_open_and_no_retry_hint() -> None:
    """A caller turned away in half-open learns the state, and no made-up retry time."""
    breaker = await ready_to_half_open()
    release = asyncio.Event()

    async def trial() -> str:
        await release.wait()
        return "ok"

    running = asyncio.create_task(breaker.call(trial))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert (info.value.state, info.value.retry_after) == ("half_open", None)
    assert "half-open" in str(info.value)
    release.set()
    await running


async def test_listeners_hear_only_real_changes() -> None:
    """reset() or force_close() on a closed circuit, a second force_open(): no event."""
    breaker = breaker_with_clock(FakeClock())
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda _n, old, new, _r: seen.append((old.value, new.value)))
    await breaker.reset()
    await breaker.force_close()
    await breaker.force_open()
    await breaker.force_open()
    assert seen == [("closed", "open")]


def test_listeners_see_transitions_in_order_across_threads() -> None:
    """One in-memory breaker driven from four threads' loops: every event follows the last."""
    import threading

    breaker = CircuitBreaker(
        CircuitBreakerConfig(
            name="threads", failure_threshold=1, recovery_timeout=0, half_open_max_calls=1,
            timeout=None,
        )
    )  # fmt: skip
    events: list[tuple[str, str]] = []
    breaker.add_listener(lambda _n, old, new, _r: events.append((old.value, new.value)))

    async def churn(n: int) -> None:
        for i in range(400):
            with contextlib.suppress(Boom, CircuitOpenError):
                await breaker.call(boom if (i + n) % 3 else ok)

    threads = [threading.Thread(target=asyncio.run, args=(churn(n),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(events) > 10
    for previous, current in itertools.pairwise(events):
        assert previous[1] == current[0], (previous, current)


def _items() -> Any:
    yield 1


async def test_a_name_holding_a_credential_is_masked_in_logs_reprs_and_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A breaker named after a URL with its password (the docs' example of a careless
    name, masked in metrics labels and the ops routes): its transitions were logged, its
    repr and its errors' texts written, with the password in them."""
    from xnai_core import CallTimeoutError, CircuitOpenError

    secret = "pw-in-a-name-77"
    caplog.set_level(logging.INFO, logger="xnai_core")
    breaker = CircuitBreaker(
        CircuitBreakerConfig(
            name=f"redis://:{secret}@cache:6379", failure_threshold=1, timeout=0.01
        )
    )

    async def slow() -> None:
        await asyncio.sleep(1)

    with pytest.raises(CallTimeoutError) as timed_out:
        await breaker.call(slow)
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(slow)
    await breaker.force_open()
    with pytest.raises(CircuitOpenError) as forced:
        await breaker.call(slow)
    await breaker.reset()
    with pytest.raises(TypeError) as refused:
        await breaker.call(_items)
    shown = [str(timed_out.value), str(rejected.value), str(forced.value), str(refused.value)]
    shown += [repr(breaker), repr(breaker.store), caplog.text]
    shown += [repr(vars(record)) for record in caplog.records]
    for text in shown:
        assert secret not in text, text
    assert "redis://:***@cache:6379" in caplog.text
    assert rejected.value.name == breaker.name  # the attribute stays the name itself
