"""Argument checks shared by every module; messages name the field, the rule and the value.

Every number a caller or a config file sets goes through here, and each has a ceiling,
so an absurd value is refused where it is set, not deep inside a timer or a Redis script:

- counts and thresholds: at most ``MAX_COUNT`` (2**53), what the Redis scripts' Lua
  doubles count exactly;
- durations: at most ``MAX_SECONDS`` (1e9 s, about 31.7 years), which every consumer holds
  (asyncio timers, ``threading`` waits, Redis ``PEXPIRE``/``SET PX`` in milliseconds);
- what is held in memory one item at a time (queues, caches, pending work): at most
  ``MAX_ITEMS``; results kept per service: at most ``MAX_HISTORY``;
- threads: at most ``MAX_THREADS`` per pool.
"""

from __future__ import annotations

import math

MAX_COUNT = 2**53
MAX_SECONDS = 1e9
MAX_ITEMS = 1_000_000
MAX_HISTORY = 100_000
MAX_THREADS = 1024


def _shown(value: int) -> str:
    return "2**53" if value == MAX_COUNT else str(value)


def value_text(value: object) -> str:
    """``repr(value)``, but an int too long to print (Python refuses more than 4,300 digits)
    or to read is shown by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2))
        return f"{'-' if value < 0 else ''}an int of about {digits} digits"
    return repr(value)


def check_int(field: str, value: object, minimum: int, *, maximum: int = MAX_COUNT) -> int:
    """An int (not a bool: ``retries=True`` is a bug, not a 1) from ``minimum`` to ``maximum``
    (``MAX_COUNT`` unless a smaller ceiling is given)."""
    allowed = f"(allowed: {minimum} to {_shown(maximum)})"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"'{field}' must be an int: {value_text(value)} {allowed}")
    if value < minimum:
        raise ValueError(f"'{field}' must be >= {minimum}: {value_text(value)} {allowed}")
    if value > maximum:
        raise ValueError(f"'{field}' must be <= {maximum}: {value_text(value)} {allowed}")
    return value


def check_size(field: str, value: object, minimum: int = 1) -> int:
    """How many items of something held in memory: at most ``MAX_ITEMS``."""
    return check_int(field, value, minimum, maximum=MAX_ITEMS)


def check_seconds(
    field: str, value: object, *, allow_zero: bool = False, maximum: float = MAX_SECONDS
) -> float:
    """A finite duration in seconds as a float, > 0 (or >= 0 with ``allow_zero``), and at
    most ``maximum`` (``MAX_SECONDS`` unless a smaller ceiling is given)."""
    return _seconds(field, value, allow_zero=allow_zero, maximum=maximum, none="")


def check_optional_seconds(
    field: str, value: object, *, allow_zero: bool = False, maximum: float = MAX_SECONDS
) -> float | None:
    """``None`` (no limit), or :func:`check_seconds`."""
    if value is None:
        return None
    return _seconds(field, value, allow_zero=allow_zero, maximum=maximum, none=" or None")


def _seconds(field: str, value: object, *, allow_zero: bool, maximum: float, none: str) -> float:
    rule = ">= 0" if allow_zero else "> 0"
    allowed = f"(allowed: {rule} to {maximum:g} seconds{none})"
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(
            f"'{field}' must be a number of seconds{none}: {value_text(value)} {allowed}"
        )
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        seconds = math.inf if value > 0 else -math.inf
    if math.isnan(seconds) or (math.isinf(seconds) and isinstance(value, float)):
        raise ValueError(f"'{field}' must be a finite number of seconds{none}: {value!r} {allowed}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"'{field}' must be {rule} seconds{none}: {value_text(value)} {allowed}")
    if seconds > maximum:
        raise ValueError(
            f"'{field}' must be <= {maximum:g} seconds{none}: {value_text(value)} {allowed}"
        )
    return seconds
