"""CircuitBreakerConfig: every knob of a breaker, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._validation import check_int, check_seconds

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


def _check_exception_types(value: object) -> tuple[type[BaseException], ...]:
    classes = value if isinstance(value, tuple) else (value,)
    if not classes:
        raise ValueError("'expected_exception' must name at least one exception class: ()")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(
                f"'expected_exception' must be an exception class or a tuple of them: {value!r}"
            )
        if not issubclass(cls, Exception):
            # CancelledError, KeyboardInterrupt, SystemExit: counting them would turn a
            # cancellation or a shutdown into a fallback answer.
            raise TypeError(
                f"'expected_exception' must be Exception subclasses; cancellation and "
                f"interpreter exits never count as failures: {cls!r}"
            )
    return classes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """How one circuit breaker decides.

    Durations are seconds (floats; fractions work). ``timeout=None`` disables the
    per-call timeout. ``expected_exception`` is a class or a tuple of classes: only
    those count as failures, anything else passes through uncounted.
    """

    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    half_open_max_calls: int = 3
    timeout: float | None = 30.0
    expected_exception: ExceptionTypes = Exception
    name: str = "default"
    # How long a half-open trial permit lives before it is reclaimed, so a process
    # that dies mid-trial cannot wedge the circuit. None: timeout + recovery_timeout
    # (30 + recovery_timeout with timeout=None: a trial running longer than its
    # lease is taken for lost, and its permit goes to another caller).
    half_open_lease: float | None = None
    # The normalised form of expected_exception, for `except` clauses.
    counted_exceptions: tuple[type[BaseException], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"'name' must be a non-empty string: {self.name!r}")
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("half_open_max_calls", self.half_open_max_calls, 1)
        recovery = check_seconds("recovery_timeout", self.recovery_timeout, allow_zero=True)
        object.__setattr__(self, "recovery_timeout", recovery)
        if self.timeout is not None:
            timeout = check_seconds("timeout", self.timeout, allow_zero=False)
            object.__setattr__(self, "timeout", timeout)
        if self.half_open_lease is not None:
            lease = check_seconds("half_open_lease", self.half_open_lease, allow_zero=False)
            if self.timeout is not None and lease < self.timeout:
                # A trial may run until its timeout; a shorter lease would free its
                # permit while it still runs and let more trials in than allowed.
                raise ValueError(
                    f"'half_open_lease' must be >= 'timeout' ({self.timeout:g}): {lease:g}"
                )
            object.__setattr__(self, "half_open_lease", lease)
        counted = _check_exception_types(self.expected_exception)
        object.__setattr__(self, "counted_exceptions", counted)

    @property
    def lease_seconds(self) -> float:
        """Lifetime of a half-open trial permit."""
        if self.half_open_lease is not None:
            return self.half_open_lease
        return (self.timeout or 30.0) + max(self.recovery_timeout, 1.0)
