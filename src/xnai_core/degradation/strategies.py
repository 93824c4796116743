"""The simple strategies: a fallback function, a degraded-mode answer, a circuit breaker.

The cache-first strategy has its own module (``cache_first``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .._dispatch import describe_callback
from .._redact import redact_cut, redact_data
from ..circuit.errors import CallTimeoutError
from .call import ServiceCall, invoke
from .protocols import GuardAnswer, Proceed
from .reasons import describe_error

_MAX_SHOWN = 200  # characters of a canned answer a repr shows


class FallbackStrategy:
    """Answer a failed call with ``func``, called with the primary's own arguments.

    ``func`` may be sync or async. Its exception counts as this strategy's
    failure and the manager moves on to the next strategy.
    """

    def __init__(self, func: Callable[..., object], *, name: str = "FallbackStrategy") -> None:
        if not callable(func):
            raise TypeError(f"'func' must be callable: {func!r}")
        _check_name(name)
        self.func = func
        self.name = name

    def __repr__(self) -> str:
        # A partial's repr names what it holds (a secondary region's URL, its token).
        return f"FallbackStrategy({describe_callback(self.func)}, name={self.name!r})"

    async def execute(self, call: ServiceCall, error: Exception) -> object:
        """``func(*call.args, **call.kwargs)``."""
        return await invoke(self.func, call.args, call.kwargs)


class DegradedModeStrategy:
    """Answer a failed call with a simplified response: a value, or a factory of one.

    A callable ``response`` is a factory: it is called with no arguments (sync
    or async) for each degraded call. Any other value is deep-copied per call,
    so a caller that edits its answer cannot change the next caller's; a value
    that cannot be deep-copied is a TypeError here (pass a factory instead). To
    answer with a callable itself, wrap it: ``DegradedModeStrategy(lambda: fn)``.
    """

    def __init__(self, response: object, *, name: str = "DegradedModeStrategy") -> None:
        _check_name(name)
        self.name = name
        self._factory: Callable[[], object] | None = None
        self._value: object = None
        if callable(response):
            self._factory = response
        else:
            try:
                copy.deepcopy(response)
            except Exception as exc:
                raise TypeError(
                    f"'response' must be deep-copyable or a factory: {response!r} ({exc})"
                ) from exc
            self._value = response

    def __repr__(self) -> str:
        if self._factory is not None:
            shown = describe_callback(self._factory)
        else:  # a canned answer may hold a config, and be large: masked, and cut
            shown = redact_cut(repr(redact_data(self._value)), _MAX_SHOWN)
        return f"DegradedModeStrategy({shown}, name={self.name!r})"

    async def execute(self, call: ServiceCall, error: Exception) -> object:
        """A fresh copy of the value, or what the factory returns."""
        if self._factory is not None:
            return await invoke(self._factory, (), {})
        return copy.deepcopy(self._value)


class SupportsCall(Protocol):
    """What CircuitBreakerStrategy needs: a ``name`` and ``await call(fn, *args, **kwargs)``."""

    @property
    def name(self) -> str: ...

    async def call(
        self, fn: Callable[..., object], /, *args: object, **kwargs: object
    ) -> object: ...


class _NotCounted(BaseException):
    """Carries an outcome out of a breaker that must count it neither way: an inner
    guard's answer (a cache hit) or an outcome shared with another caller's primary call
    (single flight), which that caller's breaker call counts.

    A BaseException, not an Exception, because a breaker counts only ``Exception``
    subclasses (``expected_exception`` refuses anything else) and gives back the
    half-open permit of a call that ended in anything it does not count.
    """

    def __init__(self, value: object = None, error: BaseException | None = None) -> None:
        super().__init__()
        self.value = value
        self.error = error


@dataclass(slots=True)
class _Trial:
    """What happened to the primary inside one breaker call."""

    ran: bool = False
    succeeded: bool = False
    error: BaseException | None = field(default=None, repr=False)


class CircuitBreakerStrategy:
    """Route the primary call through ``circuit_breaker``.

    While the circuit is open the primary is not called at all: the breaker's
    ``CircuitOpenError`` goes straight to the service's fallback strategies.
    Failures and timeouts of the primary are counted by the breaker and then
    handled by the strategies like any failure. Placed above a cache (a higher
    priority), it counts only the primary's own outcomes: a cache hit, or an answer
    shared with another caller's primary call, counts neither as a success nor as a
    failure and gives back a half-open permit.

    A breaker with its own ``fallback_func`` answers open circuits, failures and
    timeouts itself. That answer is final: it is returned as a degraded answer
    from this strategy (``source`` is this strategy's name) and the manager's
    other strategies are not tried. Give the breaker no ``fallback_func`` to let
    them decide. The breaker's fallback receives the primary's arguments.

    This strategy only guards; it offers no fallback answer of its own.
    """

    def __init__(
        self, circuit_breaker: SupportsCall, *, name: str = "CircuitBreakerStrategy"
    ) -> None:
        if not callable(getattr(circuit_breaker, "call", None)):
            raise TypeError(
                "'circuit_breaker' must have an async call(fn, *args, **kwargs): "
                f"{circuit_breaker!r}"
            )
        _check_name(name)
        self.circuit_breaker = circuit_breaker
        self.name = name

    def __repr__(self) -> str:
        return f"CircuitBreakerStrategy({self.circuit_breaker!r}, name={self.name!r})"

    def get_stats(self) -> dict[str, object]:
        """The breaker's metrics, when it has ``get_metrics()``."""
        get_metrics = getattr(self.circuit_breaker, "get_metrics", None)
        return {"circuit": get_metrics()} if callable(get_metrics) else {}

    async def guard(self, call: ServiceCall, proceed: Proceed) -> object:
        """Run ``proceed`` inside the breaker; label the breaker's own fallback answer."""
        trial = _Trial()

        async def through(*_args: object, **_kwargs: object) -> object:
            # The breaker passes the call's arguments (for its fallback's sake);
            # ``proceed`` already has them.
            trial.ran = True
            try:
                value = await proceed()
            except BaseException as exc:
                if call.notes.coalesced and isinstance(exc, Exception):
                    raise _NotCounted(error=exc) from None
                trial.error = exc
                raise
            if type(value) is GuardAnswer or call.notes.coalesced:
                raise _NotCounted(value)
            trial.succeeded = True
            return value

        try:
            value = await self.circuit_breaker.call(through, *call.args, **call.kwargs)
        except _NotCounted as outcome:
            if outcome.error is not None:
                raise outcome.error from None
            return outcome.value
        if trial.succeeded:
            return value
        breaker = self.circuit_breaker.name
        error = trial.error if isinstance(trial.error, Exception) else None
        if not trial.ran:
            reason = f"circuit {breaker!r} is open; its fallback answered"
        elif isinstance(trial.error, asyncio.CancelledError):
            # The breaker's timeout cancelled the primary; what the caller sees (and the
            # manager counts as a timeout) is the timeout, not the cancellation.
            reason = f"call through circuit {breaker!r} timed out; its fallback answered"
            error = _breaker_timeout(self.circuit_breaker)
        else:
            failure = describe_error(trial.error) if trial.error is not None else "failed"
            reason = f"call through circuit {breaker!r} failed ({failure}); its fallback answered"
        return GuardAnswer(value, source=self.name, degraded=True, reason=reason, error=error)


def _breaker_timeout(circuit_breaker: SupportsCall) -> TimeoutError:
    """The timeout a breaker answered with its fallback, as it would have raised it."""
    timeout = getattr(getattr(circuit_breaker, "config", None), "timeout", None)
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return CallTimeoutError(circuit_breaker.name, timeout, circuit_breaker)
    return TimeoutError(f"call through circuit {circuit_breaker.name!r} timed out")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"'name' must be a non-empty string: {name!r}")
