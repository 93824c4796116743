"""Argument checks of the health modules; the common ones come from ``xnai_core._validation``."""

from __future__ import annotations

from .._validation import check_int, check_seconds

__all__ = ["check_int", "check_name", "check_seconds"]


def check_name(value: object) -> str:
    """A service name: non-empty, and colon-free because report keys use ``<name>:<kind>``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"'name' must be a non-empty string: {value!r}")
    if ":" in value:
        raise ValueError(f"'name' must not contain ':': {value!r}")
    return value
