"""Errors a circuit breaker raises.

Exception tree::

    Exception
    ├── CircuitOpenError    raised when an open (or full half-open) circuit rejects a call
    │                       and the breaker has no fallback
    └── TimeoutError
        └── CallTimeoutError  raised when a protected call outlives the breaker's timeout
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


class CallTimeoutError(TimeoutError):
    """Raised when a protected call runs past its breaker's timeout (no fallback)."""

    def __init__(self, breaker: str, timeout: float) -> None:
        self.breaker = breaker
        self.timeout = timeout
        super().__init__(f"call through circuit '{breaker}' timed out after {timeout:g}s")

    def __reduce__(self) -> tuple[type[CallTimeoutError], tuple[str, float]]:
        return (type(self), (self.breaker, self.timeout))
