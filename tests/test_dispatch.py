"""_dispatch: user callbacks run off the event loop, bounded, one thread per hung callback."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from tests.secret_corpus import SHAPES, leaks
from xnai_core._dispatch import CallbackBusyError, Dispatcher, Lane, is_async_callable


class Hung:
    """A sync callback that blocks its thread until released (bounded, so a bug cannot hang CI)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.threads: list[threading.Thread] = []

    def __call__(self, *args: object) -> str:
        self.calls += 1
        self.threads.append(threading.current_thread())
        self.entered.set()
        self.release.wait(10)
        return "done"


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    runner = Dispatcher(max_workers=2, name="test-dispatch")
    yield runner
    runner.close()


async def wait_until(condition: object, bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_sync_callback_runs_on_a_worker_thread(dispatcher: Dispatcher) -> None:
    """A sync callback gets the dispatcher's own thread and its value comes back."""
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []

    def callback(x: int) -> int:
        seen.append(threading.current_thread())
        return x * 2

    assert await dispatcher.call(callback, 21, timeout=5.0) == 42
    assert seen[0] is not loop_thread
    assert seen[0].name.startswith("test-dispatch")
    assert seen[0].daemon


async def test_a_call_made_as_soon_as_the_last_one_returned_is_not_refused(
    dispatcher: Dispatcher,
) -> None:
    """A sync function called again the moment its last call returned runs: its turn is
    handed on before its caller hears. Before, the worker thread cleared the turn after
    waking the caller, and the caller, calling again in between, was refused with
    CallbackBusyError ("still running") most of the time."""
    refused = 0
    for _ in range(1000):
        try:
            assert await dispatcher.call(bool, 1, timeout=None) is True
        except CallbackBusyError:
            refused += 1
    assert refused == 0


async def test_async_callback_is_cut_off_by_its_timeout(dispatcher: Dispatcher) -> None:
    """An async callback past its timeout is cancelled and the caller gets TimeoutError."""
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    with pytest.raises(TimeoutError):
        await dispatcher.call(stuck, timeout=0.01)
    assert cancelled.is_set()


async def test_hung_sync_callback_holds_one_thread_and_is_not_started_again(
    dispatcher: Dispatcher,
) -> None:
    """A hung sync call times out; the next call of it is refused until it returns."""
    hung = Hung()
    with pytest.raises(TimeoutError):
        await dispatcher.call(hung, timeout=0.05)
    assert hung.entered.is_set()
    with pytest.raises(CallbackBusyError):
        await dispatcher.call(hung, timeout=0.05)
    assert hung.calls == 1
    assert dispatcher.running_in_threads() == 1
    hung.release.set()
    await wait_until(lambda: dispatcher.running_in_threads() == 0)
    assert await dispatcher.call(hung, timeout=5.0) == "done"


async def test_hung_callbacks_never_block_the_loop_or_each_other(dispatcher: Dispatcher) -> None:
    """While one sync callback hangs, the loop runs and another callback is served."""
    hung = Hung()
    waiting = asyncio.create_task(dispatcher.call(hung, timeout=None))
    await wait_until(hung.entered.is_set)
    started = time.monotonic()
    assert await dispatcher.call(lambda: "ok", timeout=5.0) == "ok"
    assert time.monotonic() - started < 5.0
    assert not waiting.done()
    hung.release.set()
    assert await waiting == "done"


async def test_workers_are_bounded_and_a_job_timed_out_in_the_queue_never_runs(
    dispatcher: Dispatcher,
) -> None:
    """max_workers threads at most; a call still queued at its timeout is dropped."""
    first, second, third = Hung(), Hung(), Hung()
    tasks = [asyncio.create_task(dispatcher.call(h, timeout=None)) for h in (first, second)]
    await wait_until(lambda: first.entered.is_set() and second.entered.is_set())
    with pytest.raises(TimeoutError):
        await dispatcher.call(third, timeout=0.05)
    first.release.set()
    second.release.set()
    await asyncio.gather(*tasks)
    await wait_until(lambda: dispatcher.running_in_threads() == 0)
    assert third.calls == 0
    names = {t.name for t in first.threads + second.threads}
    assert len(names) == 2


async def test_notify_logs_failures_and_never_raises(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """notify() turns an exception, a timeout and a busy callback into ERROR logs."""

    def broken() -> None:
        raise RuntimeError("boom")

    hung = Hung()
    with caplog.at_level(logging.ERROR, logger="xnai_core.dispatch"):
        assert not await dispatcher.notify(broken, timeout=5.0, what="handler")
        assert not await dispatcher.notify(hung, timeout=0.05, what="handler")
        assert not await dispatcher.notify(hung, timeout=0.05, what="handler")
        assert await dispatcher.notify(lambda: None, timeout=5.0, what="handler")
    hung.release.set()
    messages = [record.getMessage() for record in caplog.records]
    assert any("failed" in m for m in messages)
    assert any("did not finish within 0.05s" in m for m in messages)
    assert any("skipped: its previous call is still running" in m for m in messages)


async def test_sync_function_returning_an_awaitable_is_awaited(dispatcher: Dispatcher) -> None:
    """A lambda that returns a coroutine is called in a thread and its coroutine awaited."""

    async def answer() -> int:
        return 7

    assert await dispatcher.call(lambda: answer(), timeout=5.0) == 7


def test_is_async_callable_sees_through_partials_and_objects() -> None:
    """async def, partials of it and objects with an async __call__ count as async."""
    import functools

    async def coroutine_function(x: int) -> None:
        return None

    class AsyncCallable:
        async def __call__(self) -> None:
            return None

    assert is_async_callable(coroutine_function)
    assert is_async_callable(functools.partial(coroutine_function, 1))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(print)


async def test_closed_dispatcher_starts_fresh_workers() -> None:
    """close() ends the threads; a later call starts new ones."""
    runner = Dispatcher(max_workers=1, name="test-reopen")
    assert await runner.call(lambda: 1, timeout=5.0) == 1
    runner.close()
    assert await runner.call(lambda: 2, timeout=5.0) == 2
    runner.close()
    await wait_until(
        lambda: not any(t.name.startswith("test-reopen") for t in threading.enumerate())
    )


async def test_lane_runs_jobs_in_order_and_survives_a_failure() -> None:
    """Jobs of one lane run one at a time in push order; a raising job is logged."""
    lane = Lane("test")
    order: list[int] = []

    def job(n: int) -> object:
        async def run() -> None:
            await asyncio.sleep(0.001 * (5 - n))
            if n == 2:
                raise RuntimeError("job failed")
            order.append(n)

        return run

    for n in range(5):
        lane.push(job(n))  # type: ignore[arg-type]
    await lane.idle()
    assert order == [0, 1, 3, 4]


def test_max_workers_is_validated() -> None:
    """max_workers below 1 is refused with the field, rule and value."""
    with pytest.raises(ValueError, match="'max_workers' must be >= 1: 0"):
        Dispatcher(max_workers=0)


async def test_idle_workers_end_and_come_back() -> None:
    """A worker idle for idle_timeout ends; the next call starts a fresh one."""
    runner = Dispatcher(max_workers=2, name="test-idle", idle_timeout=0.05)

    def alive() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("test-idle")]

    try:
        assert await runner.call(lambda: 1, timeout=5.0) == 1
        await wait_until(lambda: not alive())
        assert await runner.call(lambda: 2, timeout=5.0) == 2
    finally:
        runner.close()


async def test_notify_queues_a_busy_sync_handler_instead_of_dropping_the_page(
    dispatcher: Dispatcher,
) -> None:
    """Three notices at once to one slow sync handler: all delivered, one at a time, in order."""
    gate = Hung()
    delivered: list[int] = []
    running = 0
    overlapped = False

    def handler(n: int) -> None:
        nonlocal running, overlapped
        running += 1
        overlapped = overlapped or running > 1
        if n == 0:
            gate(n)
        delivered.append(n)
        running -= 1

    tasks = [
        asyncio.create_task(dispatcher.notify(handler, n, timeout=10.0, what="alert handler"))
        for n in range(3)
    ]
    await wait_until(gate.entered.is_set)
    await asyncio.sleep(0.05)  # the later two are waiting their turn, not refused
    assert not any(t.done() for t in tasks)
    gate.release.set()
    assert await asyncio.gather(*tasks) == [True, True, True]
    assert delivered == [0, 1, 2]
    assert not overlapped
    assert dispatcher.dropped == 0


async def test_notify_drops_loudly_behind_a_hung_handler_and_counts_it(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler hung past its timeout: a later notice is refused at once, logged and counted."""
    hung = Hung()
    assert not await dispatcher.notify(hung, timeout=0.05, what="alert handler")
    assert not await dispatcher.notify(hung, timeout=5.0, what="alert handler")
    assert hung.calls == 1
    assert dispatcher.dropped == 1
    assert "skipped: its previous call is still running" in caplog.text
    hung.release.set()
    await wait_until(lambda: dispatcher.running_in_threads() == 0)
    assert await dispatcher.notify(hung, timeout=5.0, what="alert handler")


async def test_notify_queue_per_handler_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Past max_queued waiting calls of one handler, more are refused loudly and counted."""
    runner = Dispatcher(max_workers=1, name="test-bounded-queue", max_queued=2)
    gate = Hung()
    try:
        tasks = [
            asyncio.create_task(runner.notify(gate, timeout=10.0, what="alert handler"))
            for _ in range(5)
        ]
        await wait_until(lambda: sum(t.done() for t in tasks) == 2)
        assert runner.dropped == 2
        gate.release.set()
        assert sorted(await asyncio.gather(*tasks)) == [False, False, True, True, True]
        assert gate.calls == 3
    finally:
        gate.release.set()
        runner.close()


async def test_failure_logs_mask_the_secrets_user_code_carries(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler's error text, its traceback and its description (a partial's repr) are
    masked: a webhook that fails says its URL, token and all."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    corpus = [shape for shape in SHAPES if shape.url]

    def post(url: str, *args: object) -> None:
        raise ConnectionError(f"POST {url} failed")

    async def post_async(url: str, *args: object) -> None:
        raise ConnectionError(f"POST {url} failed")

    class Pager:
        def __init__(self, url: str) -> None:
            self.url = url

        def __repr__(self) -> str:
            return f"Pager(url={self.url!r})"

        def __call__(self, *args: object) -> None:
            raise ConnectionError(f"POST {self.url} failed")

    lane = Lane("test", log=logging.getLogger("xnai_core.dispatch"))
    with caplog.at_level(logging.DEBUG, logger="xnai_core"):
        for shape in corpus:
            for handler in (
                functools.partial(post, shape.text),
                functools.partial(post_async, shape.text),
                Pager(shape.text),
            ):
                assert not await dispatcher.notify(handler, "alert", timeout=5.0, what="handler")

            async def job(url: str = shape.text) -> None:
                raise ConnectionError(f"POST {url} failed")

            lane.push(job)
        await lane.idle()
    shown = [formatter.format(record) for record in caplog.records]
    assert len(shown) >= 4 * len(corpus)
    assert any("Traceback" in line and "ConnectionError" in line for line in shown)
    # Was: every core, in the message, the traceback and the partial's repr.
    assert leaks(shown) == []


async def test_a_failure_quoting_a_megabyte_is_logged_in_bounded_form(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook handler failing with the receiver's whole error page in its exception, and
    described by a partial holding a large payload: the ERROR held both whole (a megabyte
    a failure, each masked on the event loop). The traceback is kept to
    MAX_FAILURE_LENGTH characters and the description to MAX_DESCRIPTION_LENGTH, masked."""
    from xnai_core._dispatch import MAX_DESCRIPTION_LENGTH, MAX_FAILURE_LENGTH

    page = "<html>" + "x" * 1_000_000 + "</html>"

    def post(payload: str, alert: object) -> None:
        raise RuntimeError(f"receiver said 502 (password=hunter22): {page}")

    handler = functools.partial(post, "p" * 100_000)
    caplog.set_level(logging.ERROR, logger="xnai_core.dispatch")
    await dispatcher.notify(handler, "alert", timeout=5, what="alert handler")
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert "receiver said 502" in message
    assert "hunter22" not in message
    assert len(message) <= MAX_FAILURE_LENGTH + MAX_DESCRIPTION_LENGTH + 100
    assert len(record.__dict__["xnai.callback"]) <= MAX_DESCRIPTION_LENGTH
