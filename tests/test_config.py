"""CircuitBreakerConfig: the seed's defaults and clear errors for bad values."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from xnai_core import CircuitBreakerConfig


def test_seed_defaults() -> None:
    """The defaults are the seed's."""
    cfg = CircuitBreakerConfig(name="my_service")
    assert (cfg.failure_threshold, cfg.recovery_timeout, cfg.half_open_max_calls) == (5, 60.0, 3)
    assert cfg.timeout == 30.0
    assert cfg.expected_exception is Exception
    assert cfg.counted_exceptions == (Exception,)


def test_seed_example_builds() -> None:
    """The seed's configuration example runs as written."""
    config = CircuitBreakerConfig(
        failure_threshold=5,
        recovery_timeout=60,
        half_open_max_calls=3,
        timeout=30,
        expected_exception=Exception,
        name="my_service",
    )
    assert config.recovery_timeout == 60.0
    assert isinstance(config.recovery_timeout, float)


def test_frozen() -> None:
    """A config cannot change after construction."""
    cfg = CircuitBreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.failure_threshold = 3  # type: ignore[misc]


def test_keyword_only() -> None:
    """Positional arguments are refused: the field order is not API."""
    with pytest.raises(TypeError):
        CircuitBreakerConfig(5)  # type: ignore[call-arg]


def test_fractional_seconds_and_no_timeout() -> None:
    """Fractions of a second work, and timeout=None disables the timeout."""
    cfg = CircuitBreakerConfig(recovery_timeout=0.05, timeout=None)
    assert (cfg.recovery_timeout, cfg.timeout) == (0.05, None)


def test_tuple_of_exceptions() -> None:
    """expected_exception takes a tuple of classes."""
    cfg = CircuitBreakerConfig(expected_exception=(ValueError, OSError))
    assert cfg.counted_exceptions == (ValueError, OSError)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_threshold": 0}, ValueError, "'failure_threshold' must be >= 1: 0"),
        ({"failure_threshold": 2.5}, TypeError, "'failure_threshold' must be an int: 2.5"),
        ({"failure_threshold": True}, TypeError, "'failure_threshold' must be an int: True"),
        ({"half_open_max_calls": 0}, ValueError, "'half_open_max_calls' must be >= 1: 0"),
        ({"recovery_timeout": -1}, ValueError, "'recovery_timeout' must be >= 0 seconds: -1"),
        ({"recovery_timeout": "60"}, TypeError, "'recovery_timeout' must be a number of seconds"),
        ({"timeout": 0}, ValueError, "'timeout' must be > 0 seconds: 0"),
        ({"timeout": float("nan")}, ValueError, "'timeout' must be a finite number"),
        ({"timeout": float("inf")}, ValueError, "'timeout' must be a finite number"),
        ({"half_open_lease": -2.0}, ValueError, "'half_open_lease' must be > 0 seconds: -2.0"),
        ({"expected_exception": int}, TypeError, "'expected_exception' must be an exception class"),
        ({"expected_exception": ()}, ValueError, "'expected_exception' must name at least one"),
        ({"expected_exception": (ValueError, "x")}, TypeError, "'expected_exception' must be"),
        ({"name": ""}, ValueError, "'name' must be a non-empty string: ''"),
    ],
)
def test_invalid_values_name_field_rule_and_value(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each bad value fails at construction with a message naming field, rule and value."""
    with pytest.raises(error) as info:
        CircuitBreakerConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_lease_defaults_to_timeout_plus_recovery() -> None:
    """A half-open permit outlives a trial call that runs to its timeout."""
    assert CircuitBreakerConfig(timeout=2, recovery_timeout=5).lease_seconds == 7.0
    assert CircuitBreakerConfig(timeout=2, recovery_timeout=0.1).lease_seconds == 3.0
    assert CircuitBreakerConfig(half_open_lease=1.5, timeout=0.5).lease_seconds == 1.5


def test_lease_shorter_than_timeout_is_refused() -> None:
    """A lease that could end while its trial still runs would admit extra trials."""
    with pytest.raises(
        ValueError, match=r"'half_open_lease' must be >= 'timeout' \+ 1 s \(11\): 0.5"
    ):
        CircuitBreakerConfig(timeout=10, half_open_lease=0.5)


@pytest.mark.parametrize("cls", [BaseException, KeyboardInterrupt, asyncio.CancelledError])
def test_cancellation_and_exits_never_count(cls: type[BaseException]) -> None:
    """expected_exception refuses classes that are not Exceptions, naming the class."""
    with pytest.raises(TypeError, match="must be Exception subclasses") as info:
        CircuitBreakerConfig(expected_exception=(ValueError, cls))
    assert repr(cls) in str(info.value)
