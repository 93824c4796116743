"""Errors a circuit breaker raises.

Exception tree::

    Exception
    └── CircuitOpenError    raised when an open (or full half-open) circuit rejects a call
                            and the breaker has no fallback
"""

from __future__ import annotations


class CircuitOpenError(Exception):
    """Raised when a circuit rejects a call and no fallback is configured.

    ``retry_after`` is the number of seconds until the circuit may admit a call
    again, or None when it cannot be known (forced open).
    """

    def __init__(self, name: str, retry_after: float | None) -> None:
        self.name = name
        self.retry_after = retry_after
        when = "until reset" if retry_after is None else f"retry after {retry_after:.3f}s"
        super().__init__(f"circuit '{name}' is open: {when}")

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float | None]]:
        return (type(self), (self.name, self.retry_after))
