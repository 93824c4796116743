"""Argument checks shared by every module; messages name the field, the rule and the value."""

from __future__ import annotations

import math


def check_int(field: str, value: object, minimum: int, *, maximum: int | None = None) -> int:
    """An int (not a bool: ``retries=True`` is a bug, not a 1) from ``minimum`` to ``maximum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"'{field}' must be an int: {value!r}")
    if value < minimum:
        raise ValueError(f"'{field}' must be >= {minimum}: {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"'{field}' must be <= {maximum}: {value!r}")
    return value


def check_seconds(
    field: str, value: object, *, allow_zero: bool = False, maximum: float | None = None
) -> float:
    """A finite duration in seconds as a float, > 0 (or >= 0 with ``allow_zero``), and at
    most ``maximum`` when given."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"'{field}' must be a number of seconds: {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"'{field}' must be a finite number of seconds: {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"'{field}' must be {rule} seconds: {value!r}")
    if maximum is not None and seconds > maximum:
        raise ValueError(f"'{field}' must be <= {maximum:g} seconds: {value!r}")
    return seconds
