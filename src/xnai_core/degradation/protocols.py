"""What a degradation strategy is: the two hooks the manager knows.

A strategy implements one or both:

* :class:`DegradationStrategy` ``execute(call, error)``: asked for a substitute
  answer after the primary call failed. Return a value, or raise (for "nothing
  to offer", :class:`StrategyDeclinedError`); the manager then asks the next
  strategy.
* :class:`PrimaryGuard` ``guard(call, proceed)``: wraps the primary call itself.
  ``proceed()`` runs the rest of the chain (inner guards, then the primary). A
  guard may answer without calling ``proceed`` (a fresh cache hit), call it
  (and e.g. store what it returns), or raise to skip it (an open circuit).
  When its answer is not the primary's own, it returns a :class:`GuardAnswer`
  saying where the answer came from.

Guards nest by priority: the highest priority is outermost, so it sees the call
first. Fallbacks run in the same order, after the primary chain has failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .call import ServiceCall

Proceed = Callable[[], Awaitable[object]]
"""Runs the rest of the primary chain and returns its answer."""


@runtime_checkable
class DegradationStrategy(Protocol):
    """Produces a substitute answer for a failed primary call."""

    async def execute(self, call: ServiceCall, error: Exception) -> object:
        """A substitute for ``call``, whose primary failed with ``error``; raise if none."""
        ...


@runtime_checkable
class PrimaryGuard(Protocol):
    """Wraps the primary call of a service."""

    async def guard(self, call: ServiceCall, proceed: Proceed) -> object:
        """Answer ``call``, usually by awaiting ``proceed()``."""
        ...


@dataclass(frozen=True, slots=True)
class GuardAnswer:
    """A guard's answer that did not come from a fresh primary call.

    ``degraded`` says whether it stands in for a failed or skipped primary (a
    circuit breaker's own fallback) or is as good as one (a fresh cache hit).
    Guards pass a ``GuardAnswer`` from an inner guard through unchanged and
    never cache it.
    """

    value: object
    source: str
    degraded: bool
    reason: str | None = None
    error: Exception | None = field(default=None, repr=False, compare=False)


def strategy_name(strategy: object) -> str:
    """The name stats and results use: ``strategy.name`` if it is a string, else the class name."""
    name = getattr(strategy, "name", None)
    return name if isinstance(name, str) and name else type(strategy).__name__
