"""One call through the degradation manager: what went in and what came out.

A caller that needs to know whether an answer was degraded, without looking
inside the payload, has two ways (see docs/degradation.md):

* ``await manager.call_service_detailed(...)`` returns a :class:`ServiceResult`
  (the value plus a :class:`CallInfo`);
* after ``await manager.call_service(...)``, :func:`last_call_info` returns the
  :class:`CallInfo` of that call. It is a context variable: it is set in the
  task that awaited ``call_service``, and calls made in other tasks (``gather``,
  ``create_task``) do not overwrite it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Generic, TypeVar

T = TypeVar("T")

PRIMARY = "primary"
"""The ``source`` of an answer that the primary function itself produced."""


async def invoke(
    func: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    """``func(*args, **kwargs)``, awaited when it returns an awaitable (async or sync ``func``)."""
    result = func(*args, **kwargs)
    # The exact-type test is the cheap common case; isawaitable covers the rest.
    if type(result) is CoroutineType or inspect.isawaitable(result):
        result = await result
    return result


@dataclass(slots=True)
class CallNotes:
    """What guards noted about one call, for the manager's counts.

    ``coalesced``: the call shared another caller's primary call (single flight), so its
    outcome is that call's and is counted once, by the caller that made it.
    """

    coalesced: bool = False


@dataclass(frozen=True, slots=True)
class ServiceCall:
    """The call a strategy is asked to stand in for: service, function and arguments.

    ``timeout`` is the service's timeout for the primary call (None: no limit), which
    guards that share a call use as its deadline. ``notes`` is where guards say what
    they did with this call (see :class:`CallNotes`).
    """

    service_name: str
    func: Callable[..., object]
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    timeout: float | None = None
    notes: CallNotes = field(default_factory=CallNotes, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """How a call was answered.

    ``source`` is ``"primary"`` or the name of the strategy that answered.
    ``degraded`` is True when the answer stands in for a failed (or skipped)
    primary call; a fresh cache hit is not degraded. ``reason`` describes the
    primary's failure (credentials masked), ``error`` is the exception itself.
    """

    service_name: str
    source: str
    degraded: bool
    reason: str | None = None
    error: Exception | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, str | bool | None]:
        """The JSON-serialisable fields (everything but ``error``)."""
        return {
            "service_name": self.service_name,
            "source": self.source,
            "degraded": self.degraded,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ServiceResult(Generic[T]):
    """A call's value and how it was obtained."""

    value: T
    info: CallInfo

    @property
    def degraded(self) -> bool:
        """True when the value did not come from a fresh primary (or fresh cached) answer."""
        return self.info.degraded

    @property
    def source(self) -> str:
        """``"primary"`` or the name of the strategy that answered."""
        return self.info.source


_last_call: ContextVar[CallInfo | None] = ContextVar(
    "xnai_core_degradation_last_call", default=None
)


def last_call_info() -> CallInfo | None:
    """How the last ``call_service`` awaited in this task was answered.

    None before any call and after a call that raised.
    """
    return _last_call.get()


def set_last_call_info(info: CallInfo | None) -> None:
    """Record ``info`` for :func:`last_call_info` (the manager's job)."""
    _last_call.set(info)
