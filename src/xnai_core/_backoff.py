"""Exponential backoff with jitter: how long to wait before the n-th retry. Pure.

``delay(n, base=..., cap=..., rand=...)`` is ``min(cap, base * 2**(n-1))``, shortened by
up to ``jitter`` of itself: ``rand * jitter`` of it is taken off, ``rand`` being a draw
from [0, 1) that the caller makes (so tests pass a fixed one). ``jitter=1.0`` (the
default) is "full jitter": a uniform draw over (0, capped delay], which spreads a fleet
of retrying clients best (AWS Architecture Blog, "Exponential Backoff And Jitter");
``jitter=0.5`` is "equal jitter": at least half the delay is always waited. The delay
never exceeds ``cap``.
"""

from __future__ import annotations

# Past 2**60 the product only overflows: every sane cap has long been reached.
_MAX_DOUBLINGS = 60


def capped(retry: int, *, base: float, cap: float) -> float:
    """``min(cap, base * 2**(retry-1))`` seconds for ``retry`` >= 1; 0.0 before any retry."""
    if retry < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(retry - 1, _MAX_DOUBLINGS))


def delay(retry: int, *, base: float, cap: float, rand: float, jitter: float = 1.0) -> float:
    """Seconds to wait before the ``retry``-th retry (1-based), jittered by ``rand``.

    ``rand`` is clamped to [0, 1] and ``jitter`` to [0, 1], so a bad draw can never
    make the delay negative or longer than the capped exponential.
    """
    draw = min(max(rand, 0.0), 1.0)
    spread = min(max(jitter, 0.0), 1.0)
    return capped(retry, base=base, cap=cap) * (1.0 - spread * draw)
