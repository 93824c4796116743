"""The package's single flight: one call per key, shared until the flight's deadline."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from tests.helpers import VirtualTimeLoop, run_virtual
from xnai_core._singleflight import FlightTimeoutError, SingleFlight


async def _until(condition: Callable[[], bool], *, rounds: int = 1000) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def test_concurrent_callers_share_one_call_and_are_told_so() -> None:
    """Joiners get the flight's value; on_join fires for them only."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    calls = 0
    joined: list[int] = []

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [
        asyncio.create_task(
            flights.run("k", work, deadline=10, on_join=functools.partial(joined.append, i))
        )
        for i in range(5)
    ]
    await _until(lambda: flights.joined == 4)
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 5
    assert (calls, flights.started, len(joined)) == (1, 1, 4)
    assert len(flights) == 0


def test_a_joiner_stops_waiting_at_the_flights_deadline() -> None:
    """A hung flight holds a joiner only until its deadline; the call runs on."""

    async def scenario() -> None:
        flights: SingleFlight[str, int] = SingleFlight()
        never = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def hung() -> int:
            await never.wait()
            return 1

        starter = asyncio.create_task(flights.run("k", hung, deadline=30))
        await asyncio.sleep(10)
        joined_at = loop.time()
        with pytest.raises(FlightTimeoutError) as caught:
            await flights.run("k", hung, deadline=30)
        assert isinstance(caught.value, TimeoutError)
        assert loop.time() - joined_at == pytest.approx(20, abs=0.01)  # not a full 30 s
        assert flights.expired == 1
        assert not starter.done()  # the caller that made the call waits on its own terms
        never.set()
        assert await starter == 1

    run_virtual(scenario())


def test_after_the_deadline_a_caller_starts_a_fresh_flight() -> None:
    """A flight past its deadline is not joined: one hung call never blocks its key."""

    async def scenario() -> None:
        flights: SingleFlight[str, str] = SingleFlight()
        never = asyncio.Event()

        async def hung() -> str:
            await never.wait()
            return "late"

        async def healthy() -> str:
            return "fresh"

        starter = asyncio.create_task(flights.run("k", hung, deadline=30))
        await asyncio.sleep(31)
        assert await flights.run("k", healthy, deadline=30) == "fresh"
        assert (flights.started, flights.overdue, flights.joined) == (2, 1, 0)
        never.set()
        assert await starter == "late"  # the late flight lands without disturbing the fresh one
        assert len(flights) == 0

    run_virtual(scenario())


async def test_the_flights_own_timeout_is_shared_as_it_is() -> None:
    """A TimeoutError raised by the call itself is the flight's outcome, not an expiry."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def times_out() -> int:
        await gate.wait()
        raise TimeoutError("backend said so")

    tasks = [asyncio.create_task(flights.run("k", times_out, deadline=10)) for _ in range(3)]
    await _until(lambda: flights.joined == 2)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(type(r) is TimeoutError and str(r) == "backend said so" for r in results)
    assert flights.expired == 0


async def test_a_cancelled_caller_leaves_the_flight_to_the_others() -> None:
    """Cancelling the starter does not cancel the shared call."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    starter = asyncio.create_task(flights.run("k", work, deadline=10))
    joiner = asyncio.create_task(flights.run("k", work, deadline=10))
    await _until(lambda: flights.joined == 1)
    starter.cancel()
    gate.set()
    assert await joiner == 7
    with pytest.raises(asyncio.CancelledError):
        await starter


@pytest.mark.parametrize("deadline", [0, -1, float("inf"), float("nan")])
async def test_every_flight_needs_a_finite_deadline(deadline: float) -> None:
    """A flight without a real deadline could block its key forever: refused."""
    flights: SingleFlight[str, int] = SingleFlight()

    async def work() -> int:
        return 1

    with pytest.raises(ValueError, match="'deadline' must be a finite number of seconds > 0"):
        await flights.run("k", work, deadline=deadline)


# -- run_here: the flight runs in its caller's task ---------------------------------------


async def test_run_here_runs_in_the_callers_task_and_shares_its_value() -> None:
    """No task is made for the call; joiners get its value."""
    flights: SingleFlight[str, object] = SingleFlight()
    gate = asyncio.Event()
    ran_in: list[asyncio.Task[object] | None] = []

    async def work() -> object:
        ran_in.append(asyncio.current_task())
        await gate.wait()
        return "v"

    starter = asyncio.create_task(flights.run_here("k", work, deadline=10))
    await _until(lambda: len(flights) == 1)
    joiners = [asyncio.create_task(flights.run("k", work, deadline=10)) for _ in range(3)]
    await _until(lambda: flights.joined == 3)
    gate.set()
    assert await starter == "v"
    assert await asyncio.gather(*joiners) == ["v"] * 3
    assert ran_in == [starter]
    assert (flights.started, len(flights)) == (1, 0)


async def test_run_here_shares_an_exception_and_logs_nothing_when_nobody_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call's exception reaches the starter and every joiner, retrieved once."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def boom() -> int:
        await gate.wait()
        raise ValueError("broken")

    starter = asyncio.create_task(flights.run_here("k", boom, deadline=10))
    await _until(lambda: len(flights) == 1)
    joiner = asyncio.create_task(flights.run("k", boom, deadline=10))
    leaver = asyncio.create_task(flights.run("k", boom, deadline=10))
    await _until(lambda: flights.joined == 2)
    leaver.cancel()
    gate.set()
    for task in (starter, joiner):
        with pytest.raises(ValueError, match="broken"):
            await task
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_cancelling_the_starter_ends_the_call_and_cancels_its_joiners() -> None:
    """A run_here flight lives in its caller: cancelled with it, joiners told so."""
    flights: SingleFlight[str, int] = SingleFlight()
    stopped = asyncio.Event()

    async def hangs() -> int:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return 0

    starter = asyncio.create_task(flights.run_here("k", hangs, deadline=10))
    await _until(lambda: len(flights) == 1)
    joiner = asyncio.create_task(flights.run("k", hangs, deadline=10))
    await _until(lambda: flights.joined == 1)
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    await asyncio.gather(starter, return_exceptions=True)
    assert starter.cancelled()
    assert stopped.is_set()
    assert len(flights) == 0


def test_a_late_run_here_flight_lands_without_disturbing_a_fresh_one() -> None:
    """Past its deadline a run_here flight is not joined; when it ends, the fresh one stays."""

    async def scenario() -> None:
        flights: SingleFlight[str, str] = SingleFlight()
        slow_gate, fresh_gate = asyncio.Event(), asyncio.Event()

        async def slow() -> str:
            await slow_gate.wait()
            return "late"

        async def fresh() -> str:
            await fresh_gate.wait()
            return "fresh"

        late = asyncio.create_task(flights.run_here("k", slow, deadline=1))
        await asyncio.sleep(2)  # virtual time: past the late flight's deadline
        current = asyncio.create_task(flights.run("k", fresh, deadline=10))
        await asyncio.sleep(0.1)
        slow_gate.set()
        assert await late == "late"
        joiner = asyncio.create_task(flights.run("k", slow, deadline=10))
        await asyncio.sleep(0.1)
        assert flights.joined == 1  # joined the fresh flight, not a new one
        fresh_gate.set()
        assert await asyncio.gather(current, joiner) == ["fresh", "fresh"]
        assert (flights.overdue, flights.started) == (1, 2)

    run_virtual(scenario())


def test_a_joiner_of_a_hung_run_here_flight_stops_at_its_deadline() -> None:
    """The deadline bounds a joiner of a run_here flight as it does any other."""

    async def scenario() -> None:
        flights: SingleFlight[str, int] = SingleFlight()
        loop = asyncio.get_running_loop()

        async def hung() -> int:
            await asyncio.Event().wait()
            return 1

        starter = asyncio.create_task(flights.run_here("k", hung, deadline=5))
        await asyncio.sleep(1)
        began = loop.time()
        with pytest.raises(FlightTimeoutError):
            await flights.run("k", hung, deadline=30)
        assert loop.time() - began == pytest.approx(4.0)
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)

    run_virtual(scenario())


async def test_run_here_needs_a_finite_deadline() -> None:
    """As run(): a flight without a bound would hold its joiners for ever."""

    async def work() -> int:
        return 1

    flights: SingleFlight[str, int] = SingleFlight()
    with pytest.raises(ValueError, match="'deadline' must be a finite number"):
        await flights.run_here("k", work, deadline=float("inf"))


def test_a_bounded_starter_stops_waiting_at_the_deadline_and_the_flight_goes_on() -> None:
    """``bounded=True``: the caller that starts the flight waits no longer than a joiner."""
    flights: SingleFlight[str, int] = SingleFlight()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        never = asyncio.Event()
        ended: list[int] = []

        async def hung() -> int:
            while not never.is_set():
                try:
                    await never.wait()
                except asyncio.CancelledError:
                    continue  # a call that ignores cancellation
            ended.append(1)
            return 1

        started = loop.time()
        with pytest.raises(FlightTimeoutError):
            await flights.run("k", hung, deadline=5, bounded=True)
        assert loop.time() - started == pytest.approx(5, abs=0.01)
        assert len(flights) == 1  # still in the air, until a caller finds it overdue
        never.set()
        await _until(lambda: ended == [1])

    run_virtual(scenario())


def test_a_flight_that_ends_in_the_same_pass_as_its_deadline_is_not_a_timeout() -> None:
    """A loop lagging past the deadline: the flight's own end lands first."""
    flights: SingleFlight[str, str] = SingleFlight()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def call() -> str:
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.sleep(100)
            except TimeoutError:
                return "its own timeout"
            return "done"

        assert isinstance(loop, VirtualTimeLoop)

        def lag() -> None:
            loop.virtual_now += 10.0  # both the call's timeout and the deadline are due

        loop.call_later(0.5, lag)
        assert await flights.run("k", call, deadline=2, bounded=True) == "its own timeout"

    run_virtual(scenario())


def test_an_abandoning_flight_nobody_waits_for_is_cancelled_at_its_deadline() -> None:
    """``abandon=True``: once every caller left (cancelled, or gone at the deadline), the
    call runs on until its deadline, for whoever joins, then is cancelled. A caller still
    waiting keeps it (the starter of an unbounded flight, past the deadline too)."""
    flights: SingleFlight[str, int] = SingleFlight()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        cancelled_at: list[float] = []

        async def hung() -> int:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled_at.append(loop.time())
                raise
            return 1

        starter = asyncio.create_task(flights.run("k", hung, deadline=5, abandon=True))
        await asyncio.sleep(1)
        starter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starter
        await asyncio.sleep(1)
        assert cancelled_at == []  # before its deadline a joiner may still come
        with pytest.raises(FlightTimeoutError):
            await flights.run("k", hung, deadline=5, abandon=True)  # joins, leaves at 5
        await asyncio.sleep(0.01)
        assert cancelled_at == [pytest.approx(5, abs=0.01)]
        assert len(flights) == 0

        waited = asyncio.create_task(flights.run("w", hung, deadline=5, abandon=True))
        await asyncio.sleep(20)
        assert not waited.done()  # its starter still waits, as long as the call takes
        waited.cancel()
        await asyncio.sleep(0.01)
        assert cancelled_at[1:] == [pytest.approx(25, abs=0.1)]

    run_virtual(scenario())
