"""ServiceDegradationManager: call a service, and degrade gracefully when it fails.

For each call: the primary function runs inside the service's guards (highest
priority outermost) and its timeout. If that raises one of the service's
``degrade_on`` exceptions, a timeout, or ``CircuitOpenError``, the strategies
are asked for an answer in priority order, highest first; the first answer
wins. If none answers, :class:`AllStrategiesFailedError` carries every error.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, cast

from .._dispatch import Dispatcher, describe_callback, describe_failure, is_async_callable
from .._redact import redact_cut
from .._validation import MAX_COUNT, check_int, check_optional_seconds, check_seconds
from ..circuit.errors import CircuitOpenError
from ..deadlines import wait_within
from ..events import DegradationCall, HookPoint
from .call import PRIMARY, CallInfo, ServiceCall, ServiceResult, invoke, set_last_call_info
from .errors import AllStrategiesFailedError, ServiceTimeoutError
from .protocols import DegradationStrategy, GuardAnswer, PrimaryGuard, Proceed, strategy_name
from .reasons import describe_error
from .stats import DegradationEvent, ServiceStats

logger = logging.getLogger("xnai_core.degradation")

P = ParamSpec("P")

DegradationListener = Callable[[DegradationEvent], object]
"""Called with each :class:`DegradationEvent`; may be sync or async."""

ExceptionTypes = type[Exception] | tuple[type[Exception], ...]

# Always degrade on these, whatever ``degrade_on`` says: a timeout is a failure
# of the service, and an open circuit exists precisely to skip to the strategies.
_ALWAYS_DEGRADE: tuple[type[Exception], ...] = (TimeoutError, CircuitOpenError)

_MAX_SHOWN = 300  # characters of a strategy's repr an error message quotes

_LISTENER_THREADS = 2  # worker threads for sync listeners, per manager

MAX_LISTENER_TASKS = 256
"""Listener calls (sync and async) running at once at most; an event past this bound is
not heard by listeners (logged once per burst), so a hung listener cannot pile up tasks."""


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """How the manager calls one service.

    ``timeout``: seconds the primary call may take (None: no limit); a timeout
    triggers the strategies. ``strategy_timeout``: the same for each strategy's
    answer (a timed-out strategy counts as failed). ``degrade_on``: the
    exceptions that trigger the strategies; others reach the caller unchanged.
    """

    timeout: float | None = None
    strategy_timeout: float | None = None
    degrade_on: tuple[type[Exception], ...] = (Exception,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", _check_timeout("timeout", self.timeout))
        object.__setattr__(
            self, "strategy_timeout", _check_timeout("strategy_timeout", self.strategy_timeout)
        )
        object.__setattr__(self, "degrade_on", _check_exceptions(self.degrade_on))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "timeout": self.timeout,
            "strategy_timeout": self.strategy_timeout,
            "degrade_on": [cls.__qualname__ for cls in self.degrade_on],
        }


@dataclass(frozen=True, slots=True)
class _Registered:
    strategy: object
    name: str
    priority: int
    order: int

    @property
    def guards(self) -> bool:
        return callable(getattr(self.strategy, "guard", None))

    @property
    def falls_back(self) -> bool:
        return callable(getattr(self.strategy, "execute", None))


class _Service:
    """One service's settings, strategies (highest priority first) and stats."""

    __slots__ = (
        "fallbacks",
        "guards_inner_first",
        "name",
        "primary_info",
        "settings",
        "stats",
        "strategies",
        "triggers",
    )

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.stats = ServiceStats(name)
        self.strategies: list[_Registered] = []
        self.fallbacks: tuple[_Registered, ...] = ()
        self.guards_inner_first: tuple[_Registered, ...] = ()
        self.primary_info = CallInfo(service_name=name, source=PRIMARY, degraded=False)
        self.settings = settings
        self.triggers = settings.degrade_on + _ALWAYS_DEGRADE

    def configure(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.triggers = settings.degrade_on + _ALWAYS_DEGRADE

    def reorder(self) -> None:
        # Highest priority first; equal priorities in the order they were added.
        self.strategies.sort(key=lambda reg: (-reg.priority, reg.order))
        self.fallbacks = tuple(reg for reg in self.strategies if reg.falls_back)
        self.guards_inner_first = tuple(reversed([reg for reg in self.strategies if reg.guards]))


class ServiceDegradationManager:
    """Calls services through their degradation strategies and keeps score.

    ``timeout``, ``strategy_timeout`` and ``degrade_on`` are the defaults for
    every service (see :class:`ServiceSettings`); :meth:`configure_service`
    overrides them per service. ``clock`` returns wall-clock seconds for
    stats and events; inject one in tests. ``listener_timeout``: seconds each
    listener call may take (an async one is then cancelled, a sync one no longer waited
    for).
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        strategy_timeout: float | None = None,
        degrade_on: ExceptionTypes = Exception,
        clock: Callable[[], float] = time.time,
        listener_timeout: float = 10.0,
    ) -> None:
        if not callable(clock):
            raise TypeError(f"'clock' must be callable: {clock!r}")
        self._listener_timeout = check_seconds("listener_timeout", listener_timeout)
        self._listeners_dropping = False
        self._listener_threads: Dispatcher | None = None  # started at the first sync listener
        self._defaults = ServiceSettings(
            timeout=timeout,
            strategy_timeout=strategy_timeout,
            degrade_on=_as_tuple(degrade_on),
        )
        self._clock = clock
        self._services: dict[str, _Service] = {}
        self._listeners: list[DegradationListener] = []
        self._listener_tasks: set[asyncio.Task[object]] = set()
        self._order = 0
        self.hooks = HookPoint(self)
        """Where this manager's events go (:mod:`xnai_core.events`)."""

    def __repr__(self) -> str:
        return f"<ServiceDegradationManager services={sorted(self._services)}>"

    # -- configuration ---------------------------------------------------------

    def add_service_strategy(
        self,
        service_name: str,
        strategy: DegradationStrategy | PrimaryGuard,
        priority: int = 0,
    ) -> None:
        """Add ``strategy`` to ``service_name``; a HIGHER ``priority`` is tried FIRST.

        Strategies of equal priority are tried in the order they were added.
        Guards (cache, circuit breaker) wrap the primary call in the same
        order, highest priority outermost. A wrong type is a TypeError here.
        """
        _check_service_name(service_name)
        if isinstance(strategy, type):
            raise TypeError(
                f"'strategy' must be a strategy instance, not a class: {strategy.__qualname__}"
            )
        registered = _Registered(strategy, strategy_name(strategy), priority, self._order)
        if not (registered.guards or registered.falls_back):
            hint = " (wrap a function in FallbackStrategy(func))" if callable(strategy) else ""
            raise TypeError(
                "'strategy' must have execute(call, error) and/or guard(call, proceed)"
                f"{hint}: {_shown(strategy)}"
            )
        check_int("priority", priority, -MAX_COUNT)
        service = self._service(service_name)
        if any(reg.strategy is strategy for reg in service.strategies):
            raise ValueError(f"strategy {registered.name!r} is already added to {service_name!r}")
        self._order += 1
        service.strategies.append(registered)
        service.reorder()

    def remove_service_strategy(self, service_name: str, strategy: object) -> None:
        """Remove ``strategy`` from ``service_name``; a ValueError if it was not added."""
        service = self._services.get(service_name)
        kept = (
            [reg for reg in service.strategies if reg.strategy is not strategy] if service else []
        )
        if service is None or len(kept) == len(service.strategies):
            raise ValueError(f"strategy {_shown(strategy)} is not added to {service_name!r}")
        service.strategies = kept
        service.reorder()

    def configure_service(
        self,
        service_name: str,
        *,
        timeout: float | _Unset | None = UNSET,
        strategy_timeout: float | _Unset | None = UNSET,
        degrade_on: ExceptionTypes | _Unset = UNSET,
    ) -> ServiceSettings:
        """Override the manager's defaults for ``service_name``; returns its new settings.

        Arguments left out keep their current value; ``timeout=None`` removes
        the limit.
        """
        _check_service_name(service_name)
        service = self._service(service_name)
        current = service.settings
        settings = ServiceSettings(
            timeout=current.timeout if timeout is UNSET else timeout,
            strategy_timeout=(
                current.strategy_timeout if strategy_timeout is UNSET else strategy_timeout
            ),
            degrade_on=current.degrade_on if degrade_on is UNSET else _as_tuple(degrade_on),
        )
        service.configure(settings)
        return settings

    def add_listener(self, listener: DegradationListener) -> None:
        """Call ``listener(event)`` when a service enters or leaves degraded mode.

        Listeners run in the background, so a slow one never delays a call: sync ones on
        worker threads of the manager's own (one call of a listener at a time, in order),
        async ones as tasks; each call bounded by ``listener_timeout``. A listener's
        exception is logged, never raised. :meth:`drain_listeners` waits for them.
        """
        if not callable(listener):
            raise TypeError(f"a listener must be callable: {listener!r}")
        self._listeners.append(listener)

    def remove_listener(self, listener: DegradationListener) -> None:
        """Stop calling ``listener``; a ValueError if it was never added."""
        self._listeners.remove(listener)

    # -- calls -----------------------------------------------------------------

    async def call_service(
        self,
        service_name: str,
        func: Callable[P, object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Any:
        """``func(*args, **kwargs)`` (sync or async), or a strategy's answer when it fails.

        Returns the plain value. To learn whether it was degraded, call
        :func:`last_call_info` right after, or use :meth:`call_service_detailed`.
        Raises :class:`AllStrategiesFailedError` when the primary and every
        strategy failed, and any exception outside ``degrade_on`` unchanged.
        """
        value, _ = await self._call_reported(service_name, func, args, kwargs)
        return value

    async def call_service_detailed(
        self,
        service_name: str,
        func: Callable[P, object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> ServiceResult[Any]:
        """Like :meth:`call_service`, but returns the value with how it was obtained."""
        value, info = await self._call_reported(service_name, func, args, kwargs)
        return ServiceResult(value, info)

    async def _call_reported(
        self,
        service_name: str,
        func: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> tuple[Any, CallInfo]:
        """:meth:`_call`, and a :class:`DegradationCall` event when a hook listens.

        Calls that end in an answer or in :class:`AllStrategiesFailedError` are
        reported; an exception outside ``degrade_on`` passes through unreported.
        """
        emit = self.hooks.emit
        if emit is None:
            return await self._call(service_name, func, args, kwargs)
        started = time.perf_counter()
        try:
            value, info = await self._call(service_name, func, args, kwargs)
        except AllStrategiesFailedError:
            seconds = time.perf_counter() - started
            emit(DegradationCall(service_name, "none", True, False, seconds))
            raise
        seconds = time.perf_counter() - started
        degraded = self.is_degraded(service_name)
        emit(DegradationCall(service_name, info.source, degraded, True, seconds))
        return value, info

    async def _call(
        self,
        service_name: str,
        func: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> tuple[Any, CallInfo]:
        if not callable(func):
            if inspect.iscoroutine(func):
                func.close()  # never awaited: close it so it does not warn later
                raise TypeError(
                    f"'func' must be the function, not a coroutine it returned: {func!r}"
                )
            raise TypeError(f"'func' must be callable: {func!r}")
        service = self._services.get(service_name)
        if service is None:
            _check_service_name(service_name)
            service = self._service(service_name)
        set_last_call_info(None)
        service.stats.calls += 1
        call = ServiceCall(service_name, func, args, kwargs, service.settings.timeout)
        try:
            if service.guards_inner_first:
                proceed: Proceed = functools.partial(self._primary, call, service.settings.timeout)
                for reg in service.guards_inner_first:
                    guard = cast(PrimaryGuard, reg.strategy)
                    proceed = functools.partial(_run_guard, guard, call, proceed)
                answer = await proceed()
            else:
                answer = await self._primary(call, service.settings.timeout)
        except service.triggers as exc:
            primary_error = exc
        except Exception:
            service.stats.record_passed_through()
            raise
        else:
            return self._answered(service, call, answer)
        return await self._degrade(service, call, primary_error)

    @staticmethod
    async def _primary(call: ServiceCall, timeout: float | None) -> object:
        if timeout is None:
            return await invoke(call.func, call.args, call.kwargs)
        return await wait_within(
            invoke(call.func, call.args, call.kwargs),
            timeout,
            lambda: ServiceTimeoutError(call.service_name, timeout),
        )

    def _answered(
        self, service: _Service, call: ServiceCall, answer: object
    ) -> tuple[Any, CallInfo]:
        stats = service.stats
        coalesced = call.notes.coalesced
        if coalesced:
            # Another caller's primary call answered this one: that caller counts it.
            stats.record_coalesced()
        if type(answer) is not GuardAnswer:
            if coalesced:
                pass
            elif stats.degraded:
                self._emit(stats.record_primary(self._clock()))
            else:
                stats.primary_successes += 1
            set_last_call_info(service.primary_info)
            return answer, service.primary_info
        if answer.degraded:
            reason = answer.reason or f"answered by {answer.source}"
            if answer.error is not None and not coalesced:  # a guard answered for a failure
                stats.record_primary_failure(answer.error)
            self._emit(stats.record_degraded(answer.source, reason, self._clock()))
        else:
            reason = None
            stats.record_cache_hit()
        info = CallInfo(
            service_name=service.name,
            source=answer.source,
            degraded=answer.degraded,
            reason=reason,
            error=answer.error,
        )
        set_last_call_info(info)
        return answer.value, info

    async def _degrade(
        self, service: _Service, call: ServiceCall, primary_error: Exception
    ) -> tuple[Any, CallInfo]:
        stats = service.stats
        if call.notes.coalesced:
            stats.record_coalesced()  # the caller whose primary call failed counts it
        else:
            stats.record_primary_failure(primary_error)
        reason = describe_error(primary_error)
        failures: list[tuple[str, Exception]] = []
        limit = service.settings.strategy_timeout
        for reg in service.fallbacks:
            strategy = cast(DegradationStrategy, reg.strategy)
            try:
                value = await _run_execute(strategy, call, primary_error, limit, reg.name)
            except Exception as exc:
                failures.append((reg.name, exc))
                stats.record_strategy_failure(reg.name)
                continue
            self._emit(stats.record_degraded(reg.name, reason, self._clock()))
            info = CallInfo(
                service_name=service.name,
                source=reg.name,
                degraded=True,
                reason=reason,
                error=primary_error,
            )
            set_last_call_info(info)
            return value, info
        self._emit(stats.record_failed(primary_error, self._clock()))
        raise AllStrategiesFailedError(service.name, primary_error, failures)

    # -- observing -------------------------------------------------------------

    def is_degraded(self, service_name: str) -> bool:
        """True while ``service_name`` is in a degraded episode."""
        service = self._services.get(service_name)
        return service is not None and service.stats.degraded

    def get_service_settings(self, service_name: str) -> ServiceSettings:
        """The settings ``service_name`` is called with."""
        service = self._services.get(service_name)
        return service.settings if service is not None else self._defaults

    def get_degradation_stats(self) -> dict[str, Any]:
        """Every service's counters and episode state, JSON-serialisable.

        ``{"timestamp", "services": {name: {...}}, "summary": {"total", "degraded"}}``;
        see docs/degradation.md for each field.
        """
        services: dict[str, Any] = {}
        for name, service in self._services.items():
            entry = service.stats.to_dict()
            entry["settings"] = service.settings.to_dict()
            entry["strategies"] = [_describe(reg) for reg in service.strategies]
            services[name] = entry
        degraded = sum(1 for service in self._services.values() if service.stats.degraded)
        return {
            "timestamp": self._clock(),
            "services": services,
            "summary": {"total": len(services), "degraded": degraded},
        }

    # -- internals -------------------------------------------------------------

    def _service(self, service_name: str) -> _Service:
        service = self._services.get(service_name)
        if service is None:
            service = _Service(service_name, self._defaults)
            self._services[service_name] = service
        return service

    def _emit(self, event: DegradationEvent | None) -> None:
        if event is None:
            return
        extra = {"service": event.service_name, "event": event.kind}
        if event.kind == "degraded":
            logger.warning(
                "service %r degraded: %s; answered by %s",
                event.service_name,
                event.reason,
                event.strategy or "no strategy (all failed)",
                extra=extra,
            )
        else:
            logger.info(
                "service %r recovered after %.3fs; %d calls degraded",
                event.service_name,
                event.duration or 0.0,
                event.degraded_calls,
                extra=extra,
            )
        for listener in list(self._listeners):
            if not is_async_callable(listener):
                # Off the loop, on a worker thread of the manager's own, in order: a sync
                # listener that blocks (a requests.post) must not hold up every call.
                self._spawn_listener(self._notify_sync(listener, event), listener)
                continue
            try:
                outcome = listener(event)
            except Exception as exc:
                _listener_failed(listener, exc)
                continue
            if inspect.isawaitable(outcome):
                self._spawn_listener(outcome, listener)

    async def _notify_sync(self, listener: DegradationListener, event: DegradationEvent) -> None:
        if self._listener_threads is None:
            self._listener_threads = Dispatcher(
                max_workers=_LISTENER_THREADS, name="xnai-degradation-listener", log=logger
            )
        await self._listener_threads.notify(
            listener, event, timeout=self._listener_timeout, what="degradation listener"
        )

    async def drain_listeners(self) -> None:
        """Wait until the listener calls made so far have ended (tests, shutdown)."""
        while self._listener_tasks:
            await asyncio.wait(list(self._listener_tasks))

    def _spawn_listener(self, outcome: Awaitable[object], listener: DegradationListener) -> None:
        if len(self._listener_tasks) >= MAX_LISTENER_TASKS:
            if inspect.iscoroutine(outcome):
                outcome.close()  # never awaited: closed, so it does not warn later
            if not self._listeners_dropping:
                self._listeners_dropping = True
                logger.error(
                    "%d async degradation listener calls still running (hung?): "
                    "listener calls dropped until some finish",
                    len(self._listener_tasks),
                )
            return
        timeout = self._listener_timeout

        async def run() -> object:
            try:
                async with asyncio.timeout(timeout):
                    return await outcome
            except TimeoutError:
                logger.error(
                    "degradation listener %s did not finish within %gs",
                    describe_callback(listener),
                    timeout,
                    extra={"xnai.callback": describe_callback(listener)},
                )
            except Exception as exc:
                _listener_failed(listener, exc)
            return None

        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(run())
        self._listener_tasks.add(task)
        task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Task[object]) -> None:
        self._listener_tasks.discard(task)
        if not self._listener_tasks:
            self._listeners_dropping = False


def _shown(strategy: object) -> str:
    """A strategy's repr for an error message: a user's own may name its URL and token."""
    return redact_cut(repr(strategy), _MAX_SHOWN)


def _listener_failed(listener: DegradationListener, exc: Exception) -> None:
    # Masked as every callback's failure is: a webhook listener names its URL, token and
    # all, in its repr (a functools.partial), its error and its traceback.
    logger.error(
        "degradation listener %s failed\n%s",
        describe_callback(listener),
        describe_failure(exc),
        extra={"xnai.callback": describe_callback(listener)},
    )


async def _run_guard(guard: PrimaryGuard, call: ServiceCall, proceed: Proceed) -> object:
    answer: object = guard.guard(call, proceed)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


async def _run_execute(
    strategy: DegradationStrategy,
    call: ServiceCall,
    error: Exception,
    limit: float | None,
    name: str,
) -> object:
    if limit is None:
        return await invoke(strategy.execute, (call, error), {})
    return await wait_within(
        invoke(strategy.execute, (call, error), {}),
        limit,
        lambda: TimeoutError(f"strategy {name!r} timed out after {limit:g}s"),
    )


def _describe(reg: _Registered) -> dict[str, Any]:
    roles = [role for role, has in (("guard", reg.guards), ("fallback", reg.falls_back)) if has]
    entry: dict[str, Any] = {"name": reg.name, "priority": reg.priority, "roles": roles}
    get_stats = getattr(reg.strategy, "get_stats", None)
    if callable(get_stats):
        entry["stats"] = get_stats()
    return entry


def _check_service_name(service_name: object) -> None:
    if not isinstance(service_name, str):
        raise TypeError(f"'service_name' must be a str: {service_name!r}")
    if not service_name:
        raise ValueError("'service_name' must be a non-empty string: ''")


def _check_timeout(name: str, value: object) -> float | None:
    return check_optional_seconds(name, value)


def _as_tuple(value: ExceptionTypes) -> tuple[type[Exception], ...]:
    return value if isinstance(value, tuple) else (value,)


def _check_exceptions(classes: object) -> tuple[type[Exception], ...]:
    if not isinstance(classes, tuple) or not classes:
        raise ValueError(f"'degrade_on' must name at least one exception class: {classes!r}")
    for cls in classes:
        # Exception, not BaseException: cancellation and KeyboardInterrupt must
        # never be turned into a degraded answer.
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(
                f"'degrade_on' must be Exception subclasses or a tuple of them: {classes!r}"
            )
    return classes
