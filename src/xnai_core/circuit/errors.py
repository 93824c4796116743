"""Errors a circuit breaker raises.

Exception tree::

    Exception
    ├── CircuitOpenError    raised when an open (or full half-open) circuit rejects a call
    │                       and the breaker has no fallback
    └── TimeoutError
        └── CallTimeoutError  raised when a protected call outlives the breaker's timeout
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from .._redact import redact


class CircuitOpenError(Exception):
    """Raised when a circuit rejects a call and no fallback is configured.

    ``CircuitOpenError(name, retry_after, state="open")``. ``retry_after`` is the
    number of seconds until the circuit may admit a call again, or None when it
    cannot be known (forced open, or half-open with every trial permit taken).
    ``state`` is the circuit's state: ``"open"`` or ``"half_open"``.
    """

    # Rejections are an open circuit's hot path: the attributes are read from
    # ``args`` and the message is built only when asked for, so raising costs about
    # what a bare Exception costs (a Python __init__ would cost four times more).
    if TYPE_CHECKING:

        def __init__(self, name: str, retry_after: float | None, state: str = "open") -> None:
            pass

    @property
    def name(self) -> str:
        """The circuit's name."""
        return cast(str, self.args[0])

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call may be admitted; None when unknown."""
        return cast("float | None", self.args[1])

    @property
    def state(self) -> str:
        """``"open"`` or ``"half_open"``."""
        return cast(str, self.args[2]) if len(self.args) > 2 else "open"

    def __str__(self) -> str:
        name = redact(self.name)  # a name may hold a credential (a URL's password)
        if self.state == "half_open":
            return f"circuit '{name}' is half-open and its trial calls are in flight"
        if self.retry_after is None:
            return f"circuit '{name}' is forced open: until reset"
        return f"circuit '{name}' is open: retry after {self.retry_after:.3f}s"


class CallTimeoutError(TimeoutError):
    """Raised when a protected call runs past its breaker's timeout (no fallback).

    ``source`` is the breaker whose timeout fired (not pickled): nested breakers,
    even of the same name, tell their own timeout from an inner one's by identity.
    """

    def __init__(self, breaker: str, timeout: float, source: object = None) -> None:
        super().__init__(f"call through circuit '{redact(breaker)}' timed out after {timeout:g}s")
        self.breaker = breaker
        self.timeout = timeout
        self.source = source

    def __reduce__(self) -> tuple[type[CallTimeoutError], tuple[str, float]]:
        return (type(self), (self.breaker, self.timeout))
