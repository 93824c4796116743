"""Small test helpers: a controllable clock and an event loop whose time is virtual."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from xnai_core import CircuitBreaker, CircuitBreakerConfig, MemoryStore

T = TypeVar("T")


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker_with_clock(clock: FakeClock, fallback: Any = None, **config: Any) -> CircuitBreaker:
    """An in-memory breaker whose store reads ``clock``."""
    config.setdefault("name", "test")
    cfg = CircuitBreakerConfig(**config)
    return CircuitBreaker(cfg, fallback, store=MemoryStore(cfg, clock=clock))


class _InstantSelector(selectors.DefaultSelector):
    """Never waits: a wait for a timer moves the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0 and self.loop is not None:
            self.loop.virtual_now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps straight to the next timer: sleeps take no time."""

    def __init__(self) -> None:
        selector = _InstantSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
