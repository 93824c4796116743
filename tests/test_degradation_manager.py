"""ServiceDegradationManager: priority, the all-failed error, timeouts, info, stats, episodes."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle

import pytest

from tests.degradation_helpers import FakeClock
from xnai_core.degradation.call import ServiceCall, last_call_info
from xnai_core.degradation.errors import (
    AllStrategiesFailedError,
    ServiceTimeoutError,
    StrategyDeclinedError,
)
from xnai_core.degradation.manager import ServiceDegradationManager
from xnai_core.degradation.stats import DegradationEvent
from xnai_core.degradation.strategies import DegradedModeStrategy, FallbackStrategy


async def failing(*args: object, **kwargs: object) -> str:
    raise ConnectionError("primary down")


async def working(*args: object, **kwargs: object) -> str:
    return "primary"


def recording_strategy(log: list[str], name: str, answer: str | None = None) -> FallbackStrategy:
    """A fallback that notes it was asked, then answers (or fails, when answer is None)."""

    async def fallback(*args: object, **kwargs: object) -> str:
        log.append(name)
        if answer is None:
            raise RuntimeError(f"{name} has no answer")
        return answer

    return FallbackStrategy(fallback, name=name)


# -- priority order -------------------------------------------------------------


async def test_higher_priority_is_tried_first() -> None:
    """Strategies run from the highest priority down, whatever order they were added in."""
    manager = ServiceDegradationManager()
    asked: list[str] = []
    manager.add_service_strategy("svc", recording_strategy(asked, "low"), priority=1)
    manager.add_service_strategy("svc", recording_strategy(asked, "high"), priority=10)
    manager.add_service_strategy("svc", recording_strategy(asked, "mid"), priority=5)
    manager.add_service_strategy("svc", recording_strategy(asked, "lowest"), priority=-3)
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("svc", failing)
    assert asked == ["high", "mid", "low", "lowest"]


async def test_first_answering_strategy_wins() -> None:
    """The highest-priority strategy that answers decides; lower ones are not asked."""
    manager = ServiceDegradationManager()
    asked: list[str] = []
    manager.add_service_strategy("svc", recording_strategy(asked, "b", "from b"), priority=5)
    manager.add_service_strategy("svc", recording_strategy(asked, "a"), priority=9)
    manager.add_service_strategy("svc", recording_strategy(asked, "c", "from c"), priority=1)
    assert await manager.call_service("svc", failing) == "from b"
    assert asked == ["a", "b"]


async def test_equal_priorities_keep_insertion_order() -> None:
    """Among equal priorities, the strategy added first is tried first."""
    manager = ServiceDegradationManager()
    asked: list[str] = []
    for name in ("first", "second", "third"):
        manager.add_service_strategy("svc", recording_strategy(asked, name))
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("svc", failing)
    assert asked == ["first", "second", "third"]


async def test_strategies_are_not_asked_when_the_primary_works() -> None:
    """A working primary answers; no strategy runs."""
    manager = ServiceDegradationManager()
    asked: list[str] = []
    manager.add_service_strategy("svc", recording_strategy(asked, "fb", "fallback"))
    assert await manager.call_service("svc", working) == "primary"
    assert asked == []


async def test_arguments_reach_primary_and_fallback() -> None:
    """Positional and keyword arguments (even ones named like ours) go to both functions."""
    seen: list[tuple[object, ...]] = []

    async def primary(prompt: str, *, service_name: str, func: str) -> str:
        seen.append(("primary", prompt, service_name, func))
        raise ConnectionError("down")

    def fallback(prompt: str, *, service_name: str, func: str) -> str:
        seen.append(("fallback", prompt, service_name, func))
        return f"canned answer to {prompt}"

    manager = ServiceDegradationManager()
    manager.add_service_strategy("llm", FallbackStrategy(fallback))
    answer = await manager.call_service("llm", primary, "hi", service_name="x", func="y")
    assert answer == "canned answer to hi"
    assert seen == [("primary", "hi", "x", "y"), ("fallback", "hi", "x", "y")]


async def test_sync_primary_and_lambda_returning_coroutine() -> None:
    """A plain function and a lambda returning a coroutine both work as the primary."""
    manager = ServiceDegradationManager()
    assert await manager.call_service("svc", lambda: 41 + 1) == 42
    assert await manager.call_service("svc", lambda: working()) == "primary"


# -- the all-failed error ----------------------------------------------------------


async def test_all_failed_error_carries_the_primary_and_every_strategy_error() -> None:
    """The group holds the primary's error first, then each strategy's, in the order tried."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", recording_strategy([], "second"), priority=1)
    manager.add_service_strategy("svc", recording_strategy([], "first"), priority=2)
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("svc", failing)
    error = caught.value
    assert isinstance(error, ExceptionGroup)
    assert error.service_name == "svc"
    assert isinstance(error.primary_error, ConnectionError)
    assert [name for name, _ in error.strategy_errors] == ["first", "second"]
    assert [type(exc) for exc in error.exceptions] == [ConnectionError, RuntimeError, RuntimeError]
    assert [str(exc) for exc in error.exceptions[1:]] == [
        "first has no answer",
        "second has no answer",
    ]
    assert "2 strategies failed (first: RuntimeError, second: RuntimeError)" in str(error)


async def test_all_failed_error_works_with_except_star() -> None:
    """``except* ConnectionError`` catches the primary failure inside the group."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", recording_strategy([], "only"))
    caught: list[BaseException] = []
    try:
        await manager.call_service("svc", failing)
    except* ConnectionError as group:
        caught.extend(group.exceptions)
    except* RuntimeError:
        pass
    assert [str(exc) for exc in caught] == ["primary down"]


async def test_no_strategies_still_raises_the_group() -> None:
    """A service without strategies raises the group with just the primary failure."""
    manager = ServiceDegradationManager()
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("bare", failing)
    assert caught.value.strategy_errors == ()
    assert [type(exc) for exc in caught.value.exceptions] == [ConnectionError]
    assert "no strategy offers a fallback" in str(caught.value)


def test_all_failed_error_pickles() -> None:
    """The error survives pickling with its roles intact (for process pools and logs)."""
    error = AllStrategiesFailedError(
        "svc", ConnectionError("down"), [("cache", StrategyDeclinedError("miss"))]
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is AllStrategiesFailedError
    assert (copy.service_name, str(copy.primary_error)) == ("svc", "down")
    assert [(name, str(exc)) for name, exc in copy.strategy_errors] == [("cache", "miss")]
    assert str(copy) == str(error)


def test_split_returns_plain_groups() -> None:
    """split() works and its parts are plain ExceptionGroups (a part may lack the primary)."""
    error = AllStrategiesFailedError("svc", ConnectionError("down"), [("x", ValueError("v"))])
    match, rest = error.split(ValueError)
    assert match is not None
    assert rest is not None
    assert [type(exc) for exc in match.exceptions] == [ValueError]
    assert type(rest) is ExceptionGroup


# -- timeouts -----------------------------------------------------------------------


async def test_manager_timeout_triggers_the_strategies() -> None:
    """A primary that outlives the timeout is abandoned and the fallback answers."""
    never = asyncio.Event()

    async def hangs() -> str:
        await never.wait()
        return "too late"

    manager = ServiceDegradationManager(timeout=0.02)
    manager.add_service_strategy("llm", DegradedModeStrategy("degraded"))
    result = await manager.call_service_detailed("llm", hangs)
    assert (result.value, result.degraded) == ("degraded", True)
    assert isinstance(result.info.error, ServiceTimeoutError)
    assert result.info.reason == "ServiceTimeoutError: service 'llm' timed out after 0.02s"
    assert manager.get_degradation_stats()["services"]["llm"]["timeouts"] == 1


async def test_configure_service_sets_a_per_service_timeout() -> None:
    """configure_service overrides the manager's default for one service only."""
    never = asyncio.Event()

    async def hangs() -> str:
        await never.wait()
        return "too late"

    manager = ServiceDegradationManager()
    settings = manager.configure_service("llm", timeout=0.02)
    assert settings.timeout == 0.02
    assert manager.get_service_settings("other").timeout is None
    with pytest.raises(AllStrategiesFailedError) as caught:
        await manager.call_service("llm", hangs)
    assert isinstance(caught.value.primary_error, ServiceTimeoutError)
    assert caught.value.primary_error.timeout == 0.02


async def test_configure_service_keeps_what_is_left_out() -> None:
    """Only the settings named change; timeout=None removes a limit."""
    manager = ServiceDegradationManager(timeout=5.0, degrade_on=ConnectionError)
    manager.configure_service("svc", strategy_timeout=1.0)
    settings = manager.configure_service("svc", timeout=None)
    assert (settings.timeout, settings.strategy_timeout) == (None, 1.0)
    assert settings.degrade_on == (ConnectionError,)


async def test_a_timeout_inside_the_primary_also_triggers() -> None:
    """A TimeoutError of the primary's own (e.g. an HTTP client's) degrades like any failure."""

    async def client_timeout() -> str:
        raise TimeoutError("read timed out")

    manager = ServiceDegradationManager(degrade_on=ConnectionError)
    manager.add_service_strategy("svc", DegradedModeStrategy("degraded"))
    assert await manager.call_service("svc", client_timeout) == "degraded"


async def test_strategy_timeout_moves_on_to_the_next_strategy() -> None:
    """A strategy slower than strategy_timeout counts as failed; the next one answers."""
    never = asyncio.Event()

    async def slow_fallback() -> str:
        await never.wait()
        return "too late"

    manager = ServiceDegradationManager(strategy_timeout=0.02)
    manager.add_service_strategy("svc", FallbackStrategy(slow_fallback, name="slow"), priority=2)
    manager.add_service_strategy("svc", DegradedModeStrategy("quick"), priority=1)
    assert await manager.call_service("svc", failing) == "quick"
    stats = manager.get_degradation_stats()["services"]["svc"]
    assert stats["strategy_failures"] == {"slow": 1}


# -- which exceptions degrade ----------------------------------------------------------


async def test_exceptions_outside_degrade_on_pass_through_unchanged() -> None:
    """A bug (ValueError) is not hidden behind a fallback when degrade_on is narrower."""

    async def bad_input() -> str:
        raise ValueError("prompt too long")

    manager = ServiceDegradationManager(degrade_on=(ConnectionError, OSError))
    manager.add_service_strategy("svc", DegradedModeStrategy("degraded"))
    with pytest.raises(ValueError, match="prompt too long"):
        await manager.call_service("svc", bad_input)
    stats = manager.get_degradation_stats()["services"]["svc"]
    assert (stats["passed_through"], stats["degraded_responses"]) == (1, 0)


async def test_cancellation_is_never_degraded() -> None:
    """Cancelling the caller cancels the call; no strategy turns it into an answer."""
    started = asyncio.Event()
    asked: list[str] = []

    async def slow() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", recording_strategy(asked, "fb", "fallback"))
    task = asyncio.create_task(manager.call_service("svc", slow))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asked == []


# -- registration errors ----------------------------------------------------------------


def test_add_service_strategy_rejects_a_plain_function() -> None:
    """A bare function is a TypeError that says how to wrap it."""

    async def llm_fallback() -> str:
        return "x"

    manager = ServiceDegradationManager()
    with pytest.raises(TypeError, match=r"wrap a function in FallbackStrategy\(func\)"):
        manager.add_service_strategy("svc", llm_fallback, priority=10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("strategy", "priority", "message"),
    [
        (FallbackStrategy, 0, "not a class: FallbackStrategy"),
        (object(), 0, "must have execute"),
        (DegradedModeStrategy("x"), True, "'priority' must be an int: True"),
        (DegradedModeStrategy("x"), "10", "'priority' must be an int: '10'"),
    ],
)
def test_add_service_strategy_type_errors(strategy: object, priority: object, message: str) -> None:
    """Wrong types fail at registration, naming what is wrong."""
    manager = ServiceDegradationManager()
    with pytest.raises(TypeError, match=message):
        manager.add_service_strategy("svc", strategy, priority)  # type: ignore[arg-type]


def test_service_name_is_checked() -> None:
    """Service names are non-empty strings."""
    manager = ServiceDegradationManager()
    with pytest.raises(TypeError, match="'service_name' must be a str: 3"):
        manager.add_service_strategy(3, DegradedModeStrategy("x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'service_name' must be a non-empty string"):
        manager.add_service_strategy("", DegradedModeStrategy("x"))


def test_the_same_strategy_twice_is_a_value_error() -> None:
    """Adding one instance twice to a service is refused; other services may share it."""
    manager = ServiceDegradationManager()
    strategy = DegradedModeStrategy("x")
    manager.add_service_strategy("a", strategy)
    manager.add_service_strategy("b", strategy)
    with pytest.raises(ValueError, match="already added to 'a'"):
        manager.add_service_strategy("a", strategy, priority=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"timeout": 0}, ValueError, "'timeout' must be > 0 seconds or None: 0"),
        ({"timeout": -1.5}, ValueError, "'timeout' must be > 0 seconds or None: -1.5"),
        ({"timeout": "3"}, TypeError, "'timeout' must be a number of seconds or None: '3'"),
        ({"strategy_timeout": float("nan")}, ValueError, "'strategy_timeout' must be a finite"),
        ({"degrade_on": KeyboardInterrupt}, TypeError, "'degrade_on' must be Exception"),
        ({"degrade_on": ()}, ValueError, "'degrade_on' must name at least one"),
    ],
)
def test_manager_settings_are_validated(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Bad settings fail at construction with the field, rule and value."""
    with pytest.raises(error, match=message):
        ServiceDegradationManager(**kwargs)  # type: ignore[arg-type]


async def test_remove_service_strategy() -> None:
    """A removed strategy is no longer asked; removing it twice is a ValueError."""
    manager = ServiceDegradationManager()
    asked: list[str] = []
    strategy = recording_strategy(asked, "gone", "x")
    manager.add_service_strategy("svc", strategy)
    manager.remove_service_strategy("svc", strategy)
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("svc", failing)
    assert asked == []
    with pytest.raises(ValueError, match="is not added to 'svc'"):
        manager.remove_service_strategy("svc", strategy)


# -- telling a degraded answer apart ------------------------------------------------------


async def test_call_service_detailed_labels_primary_and_degraded_answers() -> None:
    """The result wrapper says who answered and why, without looking at the payload."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", DegradedModeStrategy({"text": "sorry"}))
    good = await manager.call_service_detailed("svc", working)
    bad = await manager.call_service_detailed("svc", failing)
    assert (good.value, good.degraded, good.source, good.info.reason) == (
        "primary",
        False,
        "primary",
        None,
    )
    assert (bad.value, bad.degraded, bad.source) == (
        {"text": "sorry"},
        True,
        "DegradedModeStrategy",
    )
    assert bad.info.reason == "ConnectionError: primary down"
    assert isinstance(bad.info.error, ConnectionError)
    assert bad.info.to_dict() == {
        "service_name": "svc",
        "source": "DegradedModeStrategy",
        "degraded": True,
        "reason": "ConnectionError: primary down",
    }


async def test_last_call_info_follows_call_service() -> None:
    """last_call_info() describes the last call awaited in this task; None after a failure."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("fb", DegradedModeStrategy("sorry"))
    assert last_call_info() is None
    await manager.call_service("fb", working)
    info = last_call_info()
    assert info is not None
    assert (info.source, info.degraded) == ("primary", False)
    await manager.call_service("fb", failing)
    info = last_call_info()
    assert info is not None
    assert (info.source, info.degraded) == ("DegradedModeStrategy", True)
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("none", failing)
    assert last_call_info() is None


async def test_last_call_info_is_per_task() -> None:
    """Calls made in other tasks do not overwrite this task's last_call_info()."""
    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", DegradedModeStrategy("sorry"))
    await manager.call_service("svc", working)
    await asyncio.gather(*(manager.call_service("svc", failing) for _ in range(5)))
    info = last_call_info()
    assert info is not None
    assert info.source == "primary"


# -- stats ----------------------------------------------------------------------------------


async def test_stats_count_every_outcome_and_are_json() -> None:
    """Calls, primary successes, degraded answers by strategy, failures, last degradation."""
    clock = FakeClock(5_000.0)
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("svc", recording_strategy([], "flaky"), priority=2)
    manager.add_service_strategy("svc", DegradedModeStrategy("sorry"), priority=1)
    await manager.call_service("svc", working)
    clock.now = 5_010.0
    await manager.call_service("svc", failing)
    await manager.call_service("svc", failing)
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("lonely", failing)
    stats = json.loads(json.dumps(manager.get_degradation_stats()))
    svc = stats["services"]["svc"]
    assert stats["timestamp"] == 5_010.0
    assert stats["summary"] == {"total": 2, "degraded": 2}
    assert {
        key: svc[key]
        for key in (
            "calls",
            "primary_successes",
            "degraded_responses",
            "degraded_by_strategy",
            "strategy_failures",
            "failures",
            "degraded",
            "degraded_since",
            "episodes",
            "last_degradation",
        )
    } == {
        "calls": 3,
        "primary_successes": 1,
        "degraded_responses": 2,
        "degraded_by_strategy": {"DegradedModeStrategy": 2},
        "strategy_failures": {"flaky": 2},
        "failures": 0,
        "degraded": True,
        "degraded_since": 5_010.0,
        "episodes": 1,
        "last_degradation": {
            "time": 5_010.0,
            "reason": "ConnectionError: primary down",
            "strategy": "DegradedModeStrategy",
        },
    }
    assert [(s["name"], s["priority"], s["roles"]) for s in svc["strategies"]] == [
        ("flaky", 2, ["fallback"]),
        ("DegradedModeStrategy", 1, ["fallback"]),
    ]
    assert stats["services"]["lonely"]["failures"] == 1


async def test_reasons_never_show_credentials() -> None:
    """A password in a failing URL is masked in stats, results and logs."""

    async def leaky() -> str:
        raise ConnectionError("cannot reach redis://admin:hunter2@cache:6379/0 (password=hunter2)")

    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", DegradedModeStrategy("sorry"))
    result = await manager.call_service_detailed("svc", leaky)
    dumped = json.dumps(manager.get_degradation_stats())
    assert "hunter2" not in dumped
    assert result.info.reason is not None
    assert "hunter2" not in result.info.reason
    assert "redis://admin:***@cache:6379/0" in result.info.reason


# -- episodes, logs, listeners -----------------------------------------------------------


async def test_degraded_episode_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Many degraded calls log one WARNING; the first primary success logs one INFO."""
    caplog.set_level(logging.INFO, logger="xnai_core.degradation")
    clock = FakeClock()
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    for _ in range(5):
        await manager.call_service("llm", failing)
    clock.now += 12.5
    await manager.call_service("llm", working)
    await manager.call_service("llm", working)
    messages = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "xnai_core.degradation"
    ]
    assert messages == [
        (
            "WARNING",
            "service 'llm' degraded: ConnectionError: primary down; "
            "answered by DegradedModeStrategy",
        ),
        ("INFO", "service 'llm' recovered after 12.500s; 5 calls degraded"),
    ]
    assert not manager.is_degraded("llm")


async def test_listeners_hear_each_episode_edge() -> None:
    """Sync and async listeners get 'degraded' then 'recovered', once per episode."""
    clock = FakeClock(100.0)
    manager = ServiceDegradationManager(clock=clock)
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    heard: list[DegradationEvent] = []
    heard_async: list[str] = []

    async def async_listener(event: DegradationEvent) -> None:
        heard_async.append(event.kind)

    manager.add_listener(heard.append)
    manager.add_listener(async_listener)
    await manager.call_service("llm", failing)
    await manager.call_service("llm", failing)
    clock.now = 103.0
    await manager.call_service("llm", working)
    with pytest.raises(AllStrategiesFailedError):
        await manager.call_service("llm2", failing)
    await manager.drain_listeners()
    assert [(e.service_name, e.kind) for e in heard] == [
        ("llm", "degraded"),
        ("llm", "recovered"),
        ("llm2", "degraded"),
    ]
    assert heard[0].to_dict() == {
        "service_name": "llm",
        "kind": "degraded",
        "at": 100.0,
        "reason": "ConnectionError: primary down",
        "strategy": "DegradedModeStrategy",
        "duration": None,
        "degraded_calls": 1,
    }
    assert (heard[1].duration, heard[1].degraded_calls) == (3.0, 2)
    assert heard[2].strategy is None
    assert heard_async == ["degraded", "recovered", "degraded"]


async def test_a_failing_listener_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged; the caller still gets its answer."""

    def broken(event: DegradationEvent) -> None:
        raise RuntimeError("listener bug")

    async def broken_async(event: DegradationEvent) -> None:
        raise RuntimeError("async listener bug")

    manager = ServiceDegradationManager()
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    manager.add_listener(broken)
    manager.add_listener(broken_async)
    assert await manager.call_service("llm", failing) == "sorry"
    await manager.drain_listeners()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    manager.remove_listener(broken)
    with pytest.raises(ValueError):  # noqa: PT011 (list.remove's own error)
        manager.remove_listener(broken)


async def test_custom_strategy_via_protocol() -> None:
    """Any object with an async execute(call, error) is a strategy."""

    class EchoStrategy:
        name = "echo"

        async def execute(self, call: ServiceCall, error: Exception) -> str:
            return f"{call.service_name} failed with {type(error).__name__}; args={call.args}"

    manager = ServiceDegradationManager()
    manager.add_service_strategy("svc", EchoStrategy())
    result = await manager.call_service_detailed("svc", failing, 1, 2)
    assert result.value == "svc failed with ConnectionError; args=(1, 2)"
    assert result.source == "echo"


async def test_passing_a_coroutine_instead_of_the_function_is_a_type_error() -> None:
    """call_service(name, fn()) is a TypeError that says so, and leaves no unawaited warning."""
    manager = ServiceDegradationManager()
    with pytest.raises(TypeError, match="must be the function, not a coroutine it returned"):
        await manager.call_service("svc", working())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'func' must be callable: 42"):
        await manager.call_service("svc", 42)  # type: ignore[arg-type]


def _listener_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_spawn_listener" in repr(t.get_coro())]


async def test_a_hung_async_listener_is_bounded_in_time_and_in_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An async listener that never returns (a webhook on a black-holed host), on a service
    that flaps: each edge left a task waiting on it for ever (2,000 calls, 2,000 tasks).
    Each call of an async listener is cancelled after listener_timeout (logged), and at
    most MAX_LISTENER_TASKS run at once (the rest are dropped, logged once per burst)."""
    from xnai_core.degradation.manager import MAX_LISTENER_TASKS

    manager = ServiceDegradationManager(listener_timeout=0.2)
    manager.add_service_strategy("flappy", DegradedModeStrategy("sorry"))
    heard = 0

    async def hung(event: DegradationEvent) -> None:
        nonlocal heard
        heard += 1
        await asyncio.Event().wait()

    manager.add_listener(hung)
    calls = 0

    async def flaps() -> str:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise ConnectionError("down")
        return "up"

    for _ in range(2 * MAX_LISTENER_TASKS + 100):
        await manager.call_service("flappy", flaps)
    assert len(_listener_tasks()) == MAX_LISTENER_TASKS
    async with asyncio.timeout(10):  # main: never
        await asyncio.wait(_listener_tasks())
    assert heard == MAX_LISTENER_TASKS
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum("did not finish within 0.2s" in e for e in errors) == MAX_LISTENER_TASKS
    assert sum("listener calls dropped" in e for e in errors) == 1
    await manager.call_service("flappy", flaps)  # room again: heard
    await asyncio.sleep(0)
    assert heard == MAX_LISTENER_TASKS + 1


def test_listener_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="'listener_timeout' must be > 0 seconds: 0"):
        ServiceDegradationManager(listener_timeout=0)


async def test_a_slow_sync_listener_never_delays_a_call() -> None:
    """A sync listener that blocks (a requests.post to a webhook, a log shipper on a full
    disk) ran on the event loop at once, in the call that made the edge: every call of
    every service waited for it. Sync listeners run on the manager's own worker threads
    now, in order, each call bounded by listener_timeout; drain_listeners() waits."""
    import threading

    release = threading.Event()
    heard: list[str] = []
    on_loop: list[bool] = []

    def blocking(event: DegradationEvent) -> None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        release.wait(3)  # main: the call below waited out these 3 s
        heard.append(event.kind)

    manager = ServiceDegradationManager()
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    manager.add_listener(blocking)
    assert await manager.call_service("llm", failing) == "sorry"
    assert heard == []  # the call is answered while the listener still works
    release.set()
    await manager.drain_listeners()
    assert heard == ["degraded"]
    assert on_loop == [False]
