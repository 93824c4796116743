"""CircuitBreaker: protect a call, fail fast while its dependency is sick, fall back.

The breaker owns the call path and the counters; its store owns the state. The
hot path (closed, no failure pending) reads one attribute of the store and never
awaits it; only failures, rejections and half-open trials go through the store.
No lock is held across the protected call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from types import AsyncGeneratorType, CodeType, CoroutineType, GeneratorType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from .._redact import redact
from ..deadlines import (
    DeadlineKeeper,
    current_tasks,
    keeper_and_task,
    thread_keeper,
    wait_within,
)
from ..events import (
    CallKind,
    CallRecorder,
    FallbackUsed,
    HookPoint,
    StateChanged,
)
from .config import CircuitBreakerConfig
from .errors import CallTimeoutError, CircuitOpenError
from .machine import Admission, CircuitState, Ticket
from .store import MemoryStore, QueuesFailures, StateStore

logger = logging.getLogger("xnai_core.circuit")

P = ParamSpec("P")
T = TypeVar("T")

StateListener = Callable[[str, CircuitState, CircuitState, str], object]
"""Called with (breaker name, old state, new state, reason); may be sync or async."""

Fallback = Callable[..., Any]


def fallback_return_none(*args: object, **kwargs: object) -> None:
    """A fallback that answers None, whatever the call's arguments were."""


# What a protected call may not return: its work happens after the breaker has
# counted it, where the breaker cannot see how it ends.
_ITERATIONS = (GeneratorType, AsyncGeneratorType)


class _ReturnedIteration(Exception):
    """Leaves the call's try block so that a refusal bypasses counting; never escapes."""


def _describe(fn: object) -> str:
    """A callable's or generator's name; never its repr, which may show arguments."""
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        return repr(name)
    if isinstance(fn, functools.partial):
        return f"a partial of {_describe(fn.func)}"
    return f"a {type(fn).__qualname__} object"


def _generator_function_kind(func: object) -> str | None:
    """Which kind of generator function ``func`` is, or None when it is not one.

    Looks through methods and partials like ``inspect.isgeneratorfunction``, but a
    generator-based coroutine (``@types.coroutine``) is awaitable, so it is no generator.
    """
    while True:
        if inspect.ismethod(func):
            func = func.__func__
        elif isinstance(func, functools.partial):
            func = func.func
        else:
            break
    code = getattr(func, "__code__", None)
    if not isinstance(code, CodeType):
        return None
    if code.co_flags & inspect.CO_ASYNC_GENERATOR:
        return "async generator function"
    if code.co_flags & inspect.CO_GENERATOR and not code.co_flags & inspect.CO_ITERABLE_COROUTINE:
        return "generator function"
    return None


def _iteration_refused(breaker: str, what: str) -> TypeError:
    return TypeError(
        f"circuit '{redact(breaker)}' cannot protect {what}: the breaker would count the call "
        f"a success before the first item and never see how the iteration ends; "
        f"protect a function that consumes it instead"
    )


class CircuitBreaker:
    """A circuit breaker around async (or plain) callables.

    ``fallback_func``, when given, is called with the protected call's own
    arguments (sync or async) whenever the circuit rejects a call, a counted
    failure happens, or the call times out; its result is returned instead.
    Without it, a rejection raises :class:`CircuitOpenError`, a failure re-raises
    the caller's exception unchanged and a timeout raises ``TimeoutError``.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        fallback_func: Fallback | None = None,
        *,
        store: StateStore | None = None,
    ) -> None:
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"'config' must be a CircuitBreakerConfig: {config!r}")
        if fallback_func is not None and not callable(fallback_func):
            raise TypeError(f"'fallback_func' must be callable or None: {fallback_func!r}")
        if store is None:
            store = MemoryStore(config)
        elif store.config != config:
            raise ValueError(
                f"'store' was built for another config: {store.config!r} != {config!r}"
            )
        self.config = config
        self.name = config.name
        self.fallback_func = fallback_func
        self._store = store
        # A shared store's failure report takes a round trip: a caller with a fallback
        # queues it and falls back at once, instead of waiting for Redis's answer.
        self._queue_failure = (
            store.record_failure_nowait if isinstance(store, QueuesFailures) else None
        )
        self._timeout = config.timeout
        self._counted = config.counted_exceptions
        self._listeners: list[StateListener] = []
        self._listener_tasks: set[asyncio.Task[object]] = set()
        # Calls that ended neither in success nor failure nor rejection (cancelled,
        # uncounted exception); total_calls is derived, so the hot path counts once.
        self._other_outcomes = 0
        self._successes = 0
        self._failures = 0
        self._rejected = 0
        self._timeouts = 0
        self._fallback_calls = 0
        self._last_failure_time: float | None = None
        self._last_state_change: float | None = None
        self._record_call: CallRecorder | None = None  # kept current by self.hooks
        self.hooks = HookPoint(self, calls_of=self.name, recorder_attribute="_record_call")
        """Where this breaker's events go (:mod:`xnai_core.events`)."""
        store.add_transition_callback(self._on_transition)

    def __repr__(self) -> str:
        state = self._store.snapshot().state.value
        name = redact(self.name)  # a name may hold a credential (a URL's password)
        return f"<CircuitBreaker name={name!r} state={state} backend={self._store.backend}>"

    @property
    def store(self) -> StateStore:
        """Where this breaker's state lives."""
        return self._store

    @property
    def state(self) -> CircuitState:
        """The current state (for a shared store, as this process last saw it)."""
        return self._store.snapshot().state

    # -- the call path ---------------------------------------------------------

    @overload
    async def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under the breaker and return its result.

        ``fn`` may be an ``async def``, a plain function, or a lambda returning a
        coroutine. The timeout applies to what is awaited; a plain function's own
        run cannot be interrupted. For type checkers the result is ``fn``'s: a
        fallback's answer should have the same type. A ``fn`` that returns a
        generator or an async generator is refused with ``TypeError`` (counted
        neither way): its work would run after the breaker had counted the call.
        """
        # With a hook installed the call is timed; without, this check is all it costs.
        record = self._record_call
        started = time.perf_counter() if record is not None else None
        epoch = self._store.hot_epoch
        if epoch is None:
            admission = self._store.acquire_nowait()
            if admission is not None and admission.ticket is None and self.fallback_func is None:
                self._rejected += 1  # the open circuit's path: reject without a coroutine
                if started is not None:
                    self._report("not_permitted", started)
                raise CircuitOpenError(
                    self.name, admission.retry_after, self._store.snapshot().state.value
                )
            return await self._call_admitted(fn, args, kwargs, admission, started)
        try:
            result = fn(*args, **kwargs)
            if type(result) is CoroutineType:
                timeout = self._timeout
                if timeout is None:
                    result = await result
                else:
                    # _await_within and deadlines.file_deadline, inlined: with the seed's
                    # default timeout=30 this is the path of nearly every call.
                    try:
                        # None raises AttributeError on .loop below: the first call in this thread.
                        keeper: DeadlineKeeper = thread_keeper.keeper  # type: ignore[assignment]
                        task = current_tasks[keeper.loop]
                    except (AttributeError, KeyError):  # no keeper yet, or another loop
                        keeper, task = keeper_and_task()
                    try:
                        generation = keeper.open[timeout]
                    except KeyError:
                        generation = keeper.new_generation(timeout)
                    key = result
                    generation[key] = (task, task.cancelling())
                    try:
                        result = await result
                    except asyncio.CancelledError:
                        if generation.pop(key, None) is None and keeper.settle_fired(key):
                            raise CallTimeoutError(self.name, timeout, self) from None
                        raise
                    except BaseException:
                        if generation.pop(key, None) is None:
                            keeper.settle_fired(key)
                        raise
                    try:
                        del generation[key]
                    except KeyError:  # it fired, yet the call finished: keep the result
                        keeper.settle_fired(key)
            elif inspect.isawaitable(result):
                result = await self._await_within(result)
            elif type(result) in _ITERATIONS:
                raise _ReturnedIteration
        except _ReturnedIteration:
            raise await self._refuse(fn, result, Ticket(epoch), started) from None
        except BaseException as exc:
            return await self._settle_error(exc, Ticket(epoch), args, kwargs, started)
        if self._store.hot_epoch is None:
            # A failure landed while we ran; our success resets the count.
            await self._store.record_success(Ticket(epoch))
        self._successes += 1
        if record is not None and started is not None:
            try:
                record("successful", time.perf_counter() - started)
            except Exception:
                logger.exception("call recorder of circuit '%s' failed", redact(self.name))
        return result

    async def _call_admitted(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        admission: Admission | None,
        started: float | None,
    ) -> Any:
        """The slow path: ask the store first, and always report back to it.

        ``started`` (perf_counter seconds) is set while a hook listens: outcomes are
        then reported to it.
        """
        if admission is None:
            admission = await self._store.acquire()
        ticket = admission.ticket
        if ticket is None:
            self._rejected += 1
            if started is not None:
                self._report("not_permitted", started)
            if self.fallback_func is not None:
                return await self._run_fallback(args, kwargs, "not_permitted")
            state = self._store.snapshot().state.value
            raise CircuitOpenError(self.name, admission.retry_after, state)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await self._await_within(result)
            elif type(result) in _ITERATIONS:
                raise _ReturnedIteration
        except _ReturnedIteration:
            raise await self._refuse(fn, result, ticket, started) from None
        except BaseException as exc:
            return await self._settle_error(exc, ticket, args, kwargs, started)
        await self._store.record_success(ticket)
        self._successes += 1
        if started is not None:
            self._report("successful", started)
        return result

    def _report(self, kind: CallKind, started: float) -> None:
        record = self._record_call
        if record is not None:
            try:
                record(kind, time.perf_counter() - started)
            except Exception:
                logger.exception("call recorder of circuit '%s' failed", redact(self.name))

    async def _await_within(self, awaitable: Awaitable[T]) -> T:
        """Await under this breaker's timeout (the slow path's version of the inlined one)."""
        timeout = self._timeout
        if timeout is None:
            return await awaitable
        return await wait_within(
            awaitable, timeout, lambda: CallTimeoutError(self.name, timeout, self)
        )

    async def _settle_error(
        self,
        exc: BaseException,
        ticket: Ticket,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float | None = None,
    ) -> Any:
        """Report an exception to the store; fall back or re-raise.

        ``started`` (perf_counter seconds) is set while a hook listens: the outcome
        is then reported to it.
        """
        timed_out = isinstance(exc, CallTimeoutError) and exc.source is self
        if timed_out or self._counts(exc):
            self._failures += 1
            self._last_failure_time = time.time()
            if timed_out:
                self._timeouts += 1
            if started is not None:
                self._report("timeout" if timed_out else "failed", started)
            if self.fallback_func is not None:
                if self._queue_failure is None:
                    await self._store.record_failure(ticket)
                elif (report := self._queue_failure(ticket)) is not None:
                    await report
                return await self._run_fallback(args, kwargs, "timeout" if timed_out else "failed")
            await self._store.record_failure(ticket)
            raise exc
        # Cancelled, or not an expected exception: counts neither way.
        self._other_outcomes += 1
        if started is not None:
            self._report("ignored", started)
        if ticket.permit:
            await self._store.release(ticket)
        raise exc

    def _counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a counted failure (the README's rules, groups included).

        Cancellation never counts, whatever expected_exception says (config refuses
        BaseException-only classes, but a subclass of both could slip through). A
        group (a TaskGroup's, say) counts when it, or a member at any depth, is an
        expected exception, unless it also holds a cancellation. A group holding a
        BaseException is a BaseExceptionGroup, never an Exception, so never counts.
        """
        if isinstance(exc, asyncio.CancelledError):
            return False
        if isinstance(exc, ExceptionGroup):
            counted = self._counted
            cancelled, _ = exc.split(lambda e: isinstance(e, asyncio.CancelledError))
            expected, _ = exc.split(lambda e: isinstance(e, counted))  # the group is tried too
            return cancelled is None and expected is not None
        return isinstance(exc, self._counted)

    async def _refuse(
        self, fn: object, returned: object, ticket: Ticket, started: float | None
    ) -> TypeError:
        """Count a refused generator like an uncounted exception and say why."""
        self._other_outcomes += 1
        if started is not None:
            self._report("ignored", started)
        if ticket.permit:
            await self._store.release(ticket)
        kind = "async generator" if type(returned) is AsyncGeneratorType else "generator"
        what = f"{_describe(fn)}, which returned the {kind} {_describe(returned)}"
        return _iteration_refused(self.name, what)

    async def _run_fallback(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cause: Literal["failed", "timeout", "not_permitted"] = "failed",
    ) -> Any:
        self._fallback_calls += 1
        assert self.fallback_func is not None
        emit = self.hooks.emit
        started = time.perf_counter() if emit is not None else 0.0
        result = self.fallback_func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        if emit is not None:
            emit(FallbackUsed(self.name, cause, time.perf_counter() - started))
        return result

    @overload
    def __call__(self, func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(self, func: Callable[P, T]) -> Callable[P, Awaitable[T]]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
        """Decorate a function so every call goes through this breaker.

        Works on ``async def`` and on plain ``def`` functions; either way the
        decorated function is awaitable, because the breaker may need to await
        its store.
        """
        if not callable(func):
            raise TypeError(f"a circuit breaker decorates a callable: {func!r}")
        kind = _generator_function_kind(func)
        if kind is not None:
            raise _iteration_refused(self.name, f"the {kind} {_describe(func)}")

        @functools.wraps(func)
        async def protected(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await self.call(func, *args, **kwargs)

        return protected

    # -- manual control --------------------------------------------------------

    async def force_open(self) -> None:
        """Open the circuit and hold it open until :meth:`force_close` or :meth:`reset`."""
        await self._store.force(CircuitState.OPEN)

    async def force_close(self) -> None:
        """Close the circuit now, clearing its failure count."""
        await self._store.force(CircuitState.CLOSED)

    async def reset(self) -> None:
        """Back to a fresh closed circuit; this process's counters restart too."""
        await self._store.reset()
        self._other_outcomes = self._successes = self._failures = 0
        self._rejected = self._timeouts = self._fallback_calls = 0
        self._last_failure_time = None

    async def close(self) -> None:
        """Stop the store's background work (subscriptions, resyncs)."""
        await self._store.close()

    # -- listeners and metrics -------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(name, old, new, reason)`` after every state change.

        Sync listeners run at once; async ones run as tasks. A listener's
        exception is logged and never reaches a caller of :meth:`call`.
        """
        if not callable(listener):
            raise TypeError(f"a listener must be callable: {listener!r}")
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; a ValueError if it was never added."""
        self._listeners.remove(listener)

    def _on_transition(
        self, old: CircuitState, new: CircuitState, reason: str, remote: bool = False
    ) -> None:
        if old is new:
            return  # a reset or a forced move to the same state: nothing changed
        self._last_state_change = time.time()
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        logger.log(
            level,
            "circuit '%s' %s -> %s: %s",
            redact(self.name),  # a name may hold a credential (a URL's password)
            old.value,
            new.value,
            reason,
            extra={"breaker": redact(self.name), "old_state": old.value, "new_state": new.value},
        )
        emit = self.hooks.emit
        if emit is not None:
            emit(StateChanged(self.name, old.value, new.value, reason, remote))
        for listener in list(self._listeners):
            try:
                outcome = listener(self.name, old, new, reason)
            except Exception:
                logger.exception(
                    "state listener %r of circuit '%s' failed", listener, redact(self.name)
                )
                continue
            if inspect.isawaitable(outcome):
                self._spawn_listener(outcome, listener)

    def _spawn_listener(self, outcome: Awaitable[object], listener: StateListener) -> None:
        async def run() -> object:
            try:
                return await outcome
            except Exception:
                logger.exception(
                    "state listener %r of circuit '%s' failed", listener, redact(self.name)
                )
                return None

        try:
            task: asyncio.Task[object] = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop running: nothing can await it
            if inspect.iscoroutine(outcome):
                outcome.close()
            logger.error(
                "async listener of circuit '%s' dropped: no running loop", redact(self.name)
            )
            return
        self._listener_tasks.add(task)
        task.add_done_callback(self._listener_tasks.discard)

    def get_metrics(self) -> dict[str, Any]:
        """This breaker's state and counters, JSON-serialisable.

        Counters are this process's and count calls that have ended (``total_calls``
        includes rejected ones); ``state`` and ``failure_count`` are the circuit's
        (shared, for a Redis-backed breaker).
        """
        snap = self._store.snapshot()
        return {
            "name": self.name,
            "state": snap.state.value,
            "failure_count": snap.failure_count,
            "success_count": self._successes,
            "total_calls": self._successes + self._failures + self._rejected + self._other_outcomes,
            "total_failures": self._failures,
            "rejected_calls": self._rejected,
            "timeouts": self._timeouts,
            "fallback_calls": self._fallback_calls,
            "last_failure_time": self._last_failure_time,
            "last_state_change": self._last_state_change,
            "half_open_trials_in_flight": len(snap.trials),
            "epoch": snap.epoch,
            "forced_open": snap.forced,
            "backend": self._store.backend,
            "redis_available": self._store.available,
            **self._store.backend_metrics(),
            "config": {
                "failure_threshold": self.config.failure_threshold,
                "recovery_timeout": self.config.recovery_timeout,
                "half_open_max_calls": self.config.half_open_max_calls,
                "timeout": self.config.timeout,
            },
        }
