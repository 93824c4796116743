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
    again, or None when it cannot be known (forced open, or half-open with every
    trial permit taken). ``state`` is the circuit's state: ``"open"`` or ``"half_open"``.
    """

    def __init__(self, name: str, retry_after: float | None, state: str = "open") -> None:
        # Rejections are the open circuit's hot path: the message is built only when read.
        super().__init__(name, retry_after, state)
        self.name = name
        self.retry_after = retry_after
        self.state = state

    def __str__(self) -> str:
        if self.state == "half_open":
            return f"circuit '{self.name}' is half-open and its trial calls are in flight"
        if self.retry_after is None:
            return f"circuit '{self.name}' is forced open: until reset"
        return f"circuit '{self.name}' is open: retry after {self.retry_after:.3f}s"

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float | None, str]]:
        return (type(self), (self.name, self.retry_after, self.state))


class CallTimeoutError(TimeoutError):
    """Raised when a protected call runs past its breaker's timeout (no fallback).

    ``source`` is the breaker whose timeout fired (not pickled): nested breakers,
    even of the same name, tell their own timeout from an inner one's by identity.
    """

    def __init__(self, breaker: str, timeout: float, source: object = None) -> None:
        super().__init__(f"call through circuit '{breaker}' timed out after {timeout:g}s")
        self.breaker = breaker
        self.timeout = timeout
        self.source = source

    def __reduce__(self) -> tuple[type[CallTimeoutError], tuple[str, float]]:
        return (type(self), (self.breaker, self.timeout))
