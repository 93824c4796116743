"""Running user callbacks: the package's one home for it.

Handlers, callbacks and hooks are user code, and user code may be slow, hang,
block or raise. :class:`Dispatcher` runs one call so that none of that reaches
the caller's event loop:

- an ``async`` callback runs in the calling task, bounded by ``timeout``
  (cancelled when it expires);
- a sync callback runs on one of the dispatcher's own worker threads (a bounded
  pool owned by whoever owns the dispatcher, never the loop's default executor,
  where DNS lookups queue), and the caller stops waiting after ``timeout``;
- a sync callback never runs twice at once. :meth:`Dispatcher.call` refuses a
  call while an earlier one of the same function is still running
  (:class:`CallbackBusyError`): one hung callback holds at most one thread, and a
  recovery action or check is never started beside its stuck self.
  :meth:`Dispatcher.notify` instead queues the call behind the running one (one
  queue per function, at most ``max_queued`` waiting), so a slow alert handler
  still receives every page, in order. A queued call's ``timeout`` covers its wait.
  Once the running call has outlived its caller's timeout (hung), later calls
  are refused at once; refused calls and calls whose timeout expired while still
  waiting are logged at ERROR and counted in :attr:`Dispatcher.dropped`;
- a call that timed out while still queued (for its turn or for a worker) never runs.

:meth:`Dispatcher.call` returns the callback's value or raises its error (for
callers that need the outcome, such as a recovery action); :meth:`Dispatcher.notify`
logs every failure and never raises (for notifications). :class:`Lane` keeps
order: jobs pushed to one lane run one after another in a task of their own, so
the code that pushes them never waits.

The worker threads are daemons: a callback that never returns does not keep the
process from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import queue
import threading
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ._redact import redact_cut
from ._validation import MAX_THREADS, check_int, check_seconds, check_size

__all__ = [
    "MAX_DESCRIPTION_LENGTH",
    "MAX_FAILURE_LENGTH",
    "CallbackBusyError",
    "Dispatcher",
    "Job",
    "Lane",
    "callback_key",
    "describe_callback",
    "describe_failure",
    "is_async_callable",
]

logger = logging.getLogger("xnai_core.dispatch")

Job = Callable[[], Awaitable[None]]
"""A unit of work for a :class:`Lane`."""


class CallbackBusyError(RuntimeError):
    """Raised when a sync callback's earlier call is still running in its thread."""


def is_async_callable(func: object) -> bool:
    """True for ``async def`` functions, methods, partials and async callable objects."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004  (async callable objects)
    )


def callback_key(func: object) -> object:
    """What identifies ``func`` as one callback: itself if hashable (bound methods are made
    anew on each attribute access but compare equal), else its id."""
    try:
        hash(func)
    except TypeError:
        return id(func)
    return func


MAX_DESCRIPTION_LENGTH = 300
"""Characters of a callback's description (a partial's repr) a log line shows."""

MAX_FAILURE_LENGTH = 16_384
"""Characters of a callback's failure (traceback and message) a log line shows: a webhook's
error may quote the receiver's whole error page."""


def describe_callback(func: object) -> str:
    # A partial or a callable object shows its repr, which may carry a webhook's token.
    return redact_cut(getattr(func, "__qualname__", None) or repr(func), MAX_DESCRIPTION_LENGTH)


def describe_failure(exc: BaseException) -> str:
    """``exc`` with its traceback, masked: user code's errors carry what it was given
    (a webhook that fails names its URL, token and all), and so do its source lines.
    Masked, then cut to :data:`MAX_FAILURE_LENGTH` (only what shows is masked)."""
    return redact_cut("".join(traceback.format_exception(exc)).rstrip(), MAX_FAILURE_LENGTH)


class _Workers:
    """A bounded pool of daemon threads, started on demand, ended after ``idle_timeout`` idle."""

    def __init__(self, limit: int, name: str, idle_timeout: float) -> None:
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._name = name
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._waiting = 0  # workers blocked on the queue
        self._queued = 0  # jobs in the queue no worker has taken yet
        self._closed = False

    def submit(self, func: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the dispatcher's workers are shut down")
            self._jobs.put((future, func))
            self._queued += 1
            if self._queued > self._waiting and self._threads < self._limit:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            try:
                item = self._jobs.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._queued > self._waiting - 1:
                        self._waiting -= 1
                        continue  # a job came in as the wait ended: this worker is counted on
                    self._waiting -= 1
                    self._threads -= 1
                    return  # idle too long: a later job starts a fresh thread
            with self._lock:
                self._waiting -= 1
                if item is not None:
                    self._queued -= 1
            if item is None:
                return
            future, func = item
            if future.set_running_or_notify_cancel():
                try:
                    result = func()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, func  # drop references while idle

    def shutdown(self) -> None:
        """End idle workers now and busy ones after their job; queued jobs fail."""
        with self._lock:
            self._closed = True
            threads = self._threads
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:
                continue
            with self._lock:
                self._queued -= 1
            if item[0].set_running_or_notify_cancel():
                item[0].set_exception(RuntimeError("the dispatcher was closed"))
        for _ in range(threads):
            self._jobs.put(None)


class _Turns:
    """One function's sync calls: at most one running, the rest waiting in order."""

    __slots__ = ("overdue", "running", "waiting")

    def __init__(self) -> None:
        self.running: concurrent.futures.Future[Any] | None = None  # the call's future
        self.overdue = False  # the running call outlived its caller's timeout
        self.waiting: deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = deque()


class Dispatcher:
    """Runs user callbacks off the event loop, each bounded, one thread per hung callback.

    ``max_workers`` bounds the threads running sync callbacks at once; they are
    started when first needed and end after ``idle_timeout`` seconds without work,
    or at :meth:`close` (a later call starts fresh ones). ``name`` prefixes the
    threads' names. ``log`` receives the failures :meth:`notify` swallows.
    """

    def __init__(
        self,
        *,
        max_workers: int = 4,
        name: str = "xnai-callback",
        log: logging.Logger | None = None,
        idle_timeout: float = 30.0,
        max_queued: int = 64,
    ) -> None:
        self._max_workers = check_int("max_workers", max_workers, 1, maximum=MAX_THREADS)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self._max_queued = check_size("max_queued", max_queued, 0)
        self._name = name
        self._log = log or logger
        self._workers: _Workers | None = None
        # Per function: its calls started or waiting. Reentrant: a worker future's
        # done-callback may run at once, inside the lock's holder.
        self._turns: dict[object, _Turns] = {}
        self._busy_lock = threading.RLock()
        self._dropped = 0

    @property
    def max_workers(self) -> int:
        """Threads that may run sync callbacks at once."""
        return self._max_workers

    def running_in_threads(self) -> int:
        """Sync callbacks started or queued and not yet returned (hung ones included)."""
        with self._busy_lock:
            return len(self._turns)

    @property
    def dropped(self) -> int:
        """Queued calls that never ran: refused (hung call, full queue) or timed out waiting."""
        with self._busy_lock:
            return self._dropped

    async def call(
        self, func: Callable[..., Any], /, *args: Any, timeout: float | None, queue: bool = False
    ) -> Any:
        """``func(*args)``, awaited if async, in a worker thread if sync; bounded by ``timeout``.

        Returns its value (an awaitable returned by a sync function is awaited
        too, within the same bound). Raises its exception, ``TimeoutError`` after
        ``timeout`` seconds (a sync call keeps running in its thread until it
        returns) or :class:`CallbackBusyError`: at once while an earlier call of
        ``func`` runs, or with ``queue=True`` only when that call is hung past its
        caller's timeout or ``max_queued`` calls already wait for their turn.
        """
        async with asyncio.timeout(timeout):
            if is_async_callable(func):
                return await func(*args)
            value = await self._in_thread(func, args, queue)
            if inspect.isawaitable(value):
                value = await value
            return value

    async def notify(
        self, func: Callable[..., Any], /, *args: Any, timeout: float | None, what: str
    ) -> bool:
        """:meth:`call`, with every failure logged instead of raised; True if it succeeded.

        ``what`` names the callback's role in the log ("alert handler").
        Cancellation still propagates.
        """
        try:
            await self.call(func, *args, timeout=timeout, queue=True)
        except TimeoutError:
            self._log.error(
                "%s did not finish within %gs (%s)",
                what,
                timeout,
                describe_callback(func),
                extra={"xnai.callback": describe_callback(func)},
            )
        except CallbackBusyError:
            self._log.error(
                "%s skipped: its previous call is still running (%s; %d dropped so far)",
                what,
                describe_callback(func),
                self.dropped,
                extra={"xnai.callback": describe_callback(func), "xnai.dropped": self.dropped},
            )
        except Exception as exc:
            self._log.error(
                "%s failed (%s)\n%s",
                what,
                describe_callback(func),
                describe_failure(exc),
                extra={"xnai.callback": describe_callback(func)},
            )
        else:
            return True
        return False

    async def _in_thread(self, func: Callable[..., Any], args: tuple[Any, ...], queue: bool) -> Any:
        key = callback_key(func)
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        context = contextvars.copy_context()
        call = functools.partial(context.run, func, *args)
        with self._busy_lock:
            turns = self._turns.get(key)
            if turns is not None:
                if not queue or turns.overdue or len(turns.waiting) >= self._max_queued:
                    if queue:
                        self._dropped += 1
                    why = "hung" if turns.overdue else "still running"
                    raise CallbackBusyError(
                        f"previous call of {describe_callback(func)} is {why} in its thread"
                    )
            else:
                turns = self._turns[key] = _Turns()
            turns.waiting.append((outer, call))
            if turns.running is None:
                self._start_next(key, turns)
        try:
            # Cancelling the wrapper cancels a call still waiting; a running one finishes.
            return await asyncio.wrap_future(outer)
        except asyncio.CancelledError:
            with self._busy_lock:
                if outer.cancelled():
                    if queue:
                        self._dropped += 1  # gave up waiting: this call never runs
                elif turns.running is outer:  # still running (not one that has just ended)
                    turns.overdue = True  # its caller gave up on it: later ones are refused
            raise

    def _start_next(self, key: object, turns: _Turns) -> None:
        """Hand the next call still wanted to a worker (the lock is held)."""
        while turns.waiting:
            outer, call = turns.waiting.popleft()
            if outer.cancelled():
                continue  # its caller gave up while it waited
            turns.running = outer
            turns.overdue = False

            def run(outer: concurrent.futures.Future[Any] = outer, call: Any = call) -> None:
                if not outer.set_running_or_notify_cancel():
                    return  # timed out while queued for a worker: never runs
                try:
                    result = call()
                except BaseException as exc:
                    self._hand_on(key, turns, outer)
                    outer.set_exception(exc)
                else:
                    # The turn is handed on before the caller hears: a caller calling
                    # again at once must not find its own finished call still running.
                    self._hand_on(key, turns, outer)
                    outer.set_result(result)

            def finished(inner: concurrent.futures.Future[Any], outer: Any = outer) -> None:
                # The call returned, raised, was skipped, or the workers shut down.
                self._hand_on(key, turns, outer)
                if not inner.cancelled() and inner.exception() is not None and not outer.done():
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        outer.set_exception(inner.exception())

            try:
                if self._workers is None:
                    self._workers = _Workers(self._max_workers, self._name, self._idle_timeout)
                inner = self._workers.submit(run)
            except BaseException as exc:
                turns.running = None
                outer.set_exception(exc)
                continue
            inner.add_done_callback(finished)
            return
        if self._turns.get(key) is turns:
            del self._turns[key]

    def _hand_on(self, key: object, turns: _Turns, outer: concurrent.futures.Future[Any]) -> None:
        """``outer``'s call is over: start the next one waiting (once per call)."""
        with self._busy_lock:
            if turns.running is outer:
                turns.running = None
                self._start_next(key, turns)

    def close(self) -> None:
        """End the worker threads (busy ones after their current call); reusable after."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown()


class Lane:
    """Runs queued jobs one at a time, in order, in a task that exists only while there is work.

    The queue is bounded (``limit``): if a job is stuck, the oldest pending jobs
    are dropped with a warning, never memory. ``log`` receives a job's failure.
    """

    def __init__(self, label: str, limit: int = 256, log: logging.Logger | None = None) -> None:
        self._label = label
        self._log = log or logger
        self._pending: deque[Job] = deque(maxlen=limit)
        self._worker: asyncio.Task[None] | None = None
        self._dropped = 0

    @property
    def label(self) -> str:
        """The lane's name in logs and task names."""
        return self._label

    def push(self, job: Job) -> None:
        """Queue ``job``; start the worker if it is idle. Needs a running loop."""
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
            self._log.warning(
                "notification queue full, dropping the oldest job",
                extra={"xnai.lane": self._label, "xnai.dropped": self._dropped},
            )
        self._pending.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._drain(), name=f"xnai-lane-{self._label}"
            )

    def drop_pending(self) -> None:
        """Forget the jobs not yet started; the running one finishes."""
        self._pending.clear()

    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self._worker is not None and not self._worker.done()

    def runs_in(self, task: asyncio.Task[Any] | None) -> bool:
        """True if ``task`` is this lane's worker (a job of this lane is calling)."""
        return task is not None and task is self._worker

    async def _drain(self) -> None:
        me = asyncio.current_task()
        # A worker detached by aclose() (closed from inside its own job) stops
        # after that job: a later push() starts a fresh worker, never two at once.
        while self._pending and self._worker is me:
            job = self._pending.popleft()
            try:
                await job()
            except Exception as exc:
                self._log.error(
                    "notification failed\n%s",
                    describe_failure(exc),
                    extra={"xnai.lane": self._label},
                )

    async def idle(self) -> None:
        """Wait until every queued job has run.

        Called from one of this lane's own jobs, it returns at once: a job cannot
        wait for itself (nor for the jobs queued behind it).
        """
        current = asyncio.current_task()
        while self._worker is not None and not self._worker.done():
            worker = self._worker
            if worker is current:
                return
            try:
                await asyncio.shield(worker)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if worker.cancelled() and (current is None or not current.cancelling()):
                    return  # the lane was closed under us: nothing left to wait for
                raise

    async def aclose(self, spare: asyncio.Task[Any] | None = None) -> None:
        """Drop pending jobs and cancel the running one.

        A job never cancels or awaits itself: called from inside one of this
        lane's jobs (or when the worker is ``spare``), the running job is left to
        finish and nothing queued runs after it.
        """
        self._pending.clear()
        worker, self._worker = self._worker, None
        if worker is None or worker.done():
            return
        if worker is asyncio.current_task() or worker is spare:
            return
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
