"""CircuitBreakerConfig: every knob of a breaker, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._validation import check_int, check_seconds

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]

# Every trial permit is a field of a shared circuit's hash that each script reads and
# writes: a half-open probe of more than a hundred calls is no probe, and the cap keeps
# every script's work small.
MAX_HALF_OPEN_CALLS = 100
# The longest duration (about 31.7 years; a timeout of None disables it). The Redis scripts
# count microseconds in Lua doubles, exact below 2^53 us (285 years), now included.
MAX_SECONDS = 1e9
# A trial's permit is taken when the store runs the admission and given back when it runs
# the report. The lease must outlast the call's timeout by both of those round trips and a
# busy event loop; a permit reclaimed while its trial still runs lets one more trial in.
LEASE_MARGIN = 1.0


def lease_margin(op_timeout: float) -> float:
    """How much longer than ``timeout`` a lease must be, for a store whose admission and
    report may each wait up to ``op_timeout`` seconds for a reply."""
    return max(LEASE_MARGIN, 2 * op_timeout)


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
    # that dies mid-trial cannot wedge the circuit. At least timeout + LEASE_MARGIN.
    # None: timeout + max(recovery_timeout, LEASE_MARGIN) (30 + that with timeout=None:
    # a trial running longer than its lease is taken for lost, and its permit goes to
    # another caller).
    half_open_lease: float | None = None
    # The normalised form of expected_exception, for `except` clauses.
    counted_exceptions: tuple[type[BaseException], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"'name' must be a non-empty string: {self.name!r}")
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("half_open_max_calls", self.half_open_max_calls, 1, maximum=MAX_HALF_OPEN_CALLS)
        recovery = check_seconds(
            "recovery_timeout", self.recovery_timeout, allow_zero=True, maximum=MAX_SECONDS
        )
        object.__setattr__(self, "recovery_timeout", recovery)
        if self.timeout is not None:
            timeout = check_seconds("timeout", self.timeout, maximum=MAX_SECONDS)
            object.__setattr__(self, "timeout", timeout)
        if self.half_open_lease is not None:
            lease = check_seconds("half_open_lease", self.half_open_lease, maximum=MAX_SECONDS)
            if self.timeout is not None and lease < self.timeout + LEASE_MARGIN:
                # A trial may run until its timeout, then report: a lease ending
                # before would free its permit while it still runs.
                raise ValueError(
                    f"'half_open_lease' must be >= 'timeout' + {LEASE_MARGIN:g} s "
                    f"({self.timeout + LEASE_MARGIN:g}): {lease:g}"
                )
            object.__setattr__(self, "half_open_lease", lease)
        counted = _check_exception_types(self.expected_exception)
        object.__setattr__(self, "counted_exceptions", counted)

    @property
    def lease_seconds(self) -> float:
        """Lifetime of a half-open trial permit."""
        if self.half_open_lease is not None:
            return self.half_open_lease
        return (self.timeout or 30.0) + max(self.recovery_timeout, LEASE_MARGIN)
