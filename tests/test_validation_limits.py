"""Every numeric setting of the public API and of the service's config file refuses absurd
values (too large for a timer, Redis or Lua's doubles, negative, NaN, infinite, a bool for
an int) with an error that names the setting, through ``xnai_core._validation``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.service_helpers import run_cli
from xnai_core import (
    CacheFirstStrategy,
    CircuitBreakerConfig,
    DegradedModeStrategy,
    HealthMonitor,
    HTTPHealthChecker,
    MemoryCache,
    RecoveryCoordinator,
    RecoveryManager,
    RecoveryRule,
    RedisCache,
    RedisConnectionManager,
    ServiceDegradationManager,
    create_redis_circuit_breaker,
)
from xnai_core._validation import MAX_COUNT, MAX_HISTORY, MAX_ITEMS, MAX_SECONDS, MAX_THREADS

HUGE = 10**30  # beyond 2**53, and beyond every size
ENORMOUS = 10**5000  # more digits than Python prints
INTS: tuple[object, ...] = (HUGE, ENORMOUS, 1e20, 2.0, -1, True, math.nan, "3")
SECONDS: tuple[object, ...] = (1e300, HUGE, ENORMOUS, MAX_SECONDS * 2, -1, math.nan, math.inf, True)
FRACTION: tuple[object, ...] = (1e300, HUGE, -1, math.nan, math.inf, True)


def _client() -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=1)  # never connected: building touches no network


def _rule(**kw: object) -> RecoveryRule:
    return RecoveryRule("api", "restart_service", command=["true"], **kw)  # type: ignore[arg-type]


def _sink(**kw: object) -> object:
    from xnai_core.alerting import WebhookSink

    return WebhookSink("http://127.0.0.1:1/hook", **kw)  # type: ignore[arg-type]


def _alertmanager(**kw: object) -> object:
    from xnai_core.alerting import AlertmanagerSink

    return AlertmanagerSink("http://127.0.0.1:1/", **kw)  # type: ignore[arg-type]


async def _monitor_add_checker(value: object) -> None:
    monitor = HealthMonitor()
    monitor.add_checker(HTTPHealthChecker("api", "http://127.0.0.1:1/"), interval=value)  # type: ignore[arg-type]


# (setting, bad values, build with the value)
CASES: list[tuple[str, tuple[object, ...], Callable[[Any], Any]]] = [
    # circuit breakers
    ("failure_threshold", INTS, lambda v: CircuitBreakerConfig(failure_threshold=v)),
    ("half_open_max_calls", INTS, lambda v: CircuitBreakerConfig(half_open_max_calls=v)),
    ("recovery_timeout", SECONDS, lambda v: CircuitBreakerConfig(recovery_timeout=v)),
    ("timeout", SECONDS, lambda v: CircuitBreakerConfig(timeout=v)),
    ("half_open_lease", SECONDS, lambda v: CircuitBreakerConfig(half_open_lease=v)),
    (
        "failure_threshold",
        INTS,
        lambda v: create_redis_circuit_breaker("c", _client(), failure_threshold=v),
    ),
    ("op_timeout", SECONDS, lambda v: create_redis_circuit_breaker("c", _client(), op_timeout=v)),
    (
        "resync_interval",
        SECONDS,
        lambda v: create_redis_circuit_breaker("c", _client(), resync_interval=v),
    ),
    ("max_connections", INTS, lambda v: RedisConnectionManager(max_connections=v)),
    ("check_timeout", SECONDS, lambda v: RedisConnectionManager(check_timeout=v)),
    (
        "health_check_interval",
        SECONDS,
        lambda v: RedisConnectionManager(health_check_interval=v),
    ),
    # health monitoring
    ("check_interval", SECONDS, lambda v: HealthMonitor(check_interval=v)),
    ("check_timeout", SECONDS, lambda v: HealthMonitor(check_timeout=v)),
    ("failure_threshold", INTS, lambda v: HealthMonitor(failure_threshold=v)),
    ("success_threshold", INTS, lambda v: HealthMonitor(success_threshold=v)),
    ("history_size", INTS, lambda v: HealthMonitor(history_size=v)),
    ("alert_window", INTS, lambda v: HealthMonitor(alert_window=v)),
    ("alert_handler_timeout", SECONDS, lambda v: HealthMonitor(alert_handler_timeout=v)),
    ("callback_timeout", SECONDS, lambda v: HealthMonitor(callback_timeout=v)),
    ("callback_workers", INTS, lambda v: HealthMonitor(callback_workers=v)),
    (
        "alert_thresholds['response_time']",
        SECONDS,
        lambda v: HealthMonitor(alert_thresholds={"response_time": v}),
    ),
    (
        "alert_thresholds['consecutive_failures']",
        INTS,
        lambda v: HealthMonitor(alert_thresholds={"consecutive_failures": v}),
    ),
    ("timeout", SECONDS, lambda v: HTTPHealthChecker("api", "http://127.0.0.1:1/", timeout=v)),
    (
        "degraded_threshold",
        SECONDS,
        lambda v: HTTPHealthChecker("api", "http://127.0.0.1:1/", degraded_threshold=v),
    ),
    # recovery
    ("failure_threshold", INTS, lambda v: _rule(failure_threshold=v)),
    ("max_attempts", INTS, lambda v: _rule(max_attempts=v)),
    ("backoff_base", SECONDS, lambda v: _rule(backoff_base=v)),
    ("backoff_max", SECONDS, lambda v: _rule(backoff_max=v)),
    ("jitter", FRACTION, lambda v: _rule(jitter=v)),
    ("cooldown", SECONDS, lambda v: _rule(cooldown=v)),
    ("grace_period", SECONDS, lambda v: _rule(grace_period=v)),
    ("stable_period", SECONDS, lambda v: _rule(stable_period=v)),
    ("timeout", SECONDS, lambda v: _rule(timeout=v)),
    (
        "cache_batch_size",
        INTS,
        lambda v: RecoveryRule(
            "api", "clear_cache", redis_client=_client(), cache_pattern="x:*", cache_batch_size=v
        ),
    ),
    ("verify_interval", SECONDS, lambda v: RecoveryManager(verify_interval=v)),
    ("history_size", INTS, lambda v: RecoveryManager(history_size=v)),
    ("alert_timeout", SECONDS, lambda v: RecoveryManager(alert_timeout=v)),
    ("timeout", SECONDS, lambda v: RecoveryCoordinator(_client(), timeout=v)),
    # degradation
    ("timeout", SECONDS, lambda v: ServiceDegradationManager(timeout=v)),
    ("strategy_timeout", SECONDS, lambda v: ServiceDegradationManager(strategy_timeout=v)),
    (
        "timeout",
        SECONDS,
        lambda v: ServiceDegradationManager().configure_service("api", timeout=v),
    ),
    (
        "priority",
        (HUGE, -HUGE, 1e20, True, math.nan),
        lambda v: ServiceDegradationManager().add_service_strategy(
            "api",
            DegradedModeStrategy("x"),
            priority=v,
        ),
    ),
    ("max_entries", INTS, lambda v: MemoryCache(max_entries=v)),
    ("ttl", SECONDS, lambda v: CacheFirstStrategy(MemoryCache(), ttl=v)),
    ("stale_if_error", SECONDS, lambda v: CacheFirstStrategy(MemoryCache(), stale_if_error=v)),
    ("flight_deadline", SECONDS, lambda v: CacheFirstStrategy(MemoryCache(), flight_deadline=v)),
    ("op_timeout", SECONDS, lambda v: RedisCache(_client(), op_timeout=v)),
    ("probe_interval", SECONDS, lambda v: RedisCache(_client(), probe_interval=v)),
    ("probe_max_interval", SECONDS, lambda v: RedisCache(_client(), probe_max_interval=v)),
    ("max_lookups", INTS, lambda v: RedisCache(_client(), max_lookups=v)),
    ("max_writes", INTS, lambda v: RedisCache(_client(), max_writes=v)),
    # alert sinks
    ("queue_size", INTS, lambda v: _sink(queue_size=v)),
    ("max_attempts", INTS, lambda v: _sink(max_attempts=v)),
    ("backoff_base", SECONDS, lambda v: _sink(backoff_base=v)),
    ("backoff_max", SECONDS, lambda v: _sink(backoff_max=v)),
    ("max_retry_after", SECONDS, lambda v: _sink(max_retry_after=v)),
    ("timeout", SECONDS, lambda v: _sink(timeout=v)),
    ("reply_timeout", SECONDS, lambda v: _sink(reply_timeout=v)),
    ("repeat_interval", SECONDS, lambda v: _sink(repeat_interval=v)),
    ("resend_interval", SECONDS, lambda v: _alertmanager(resend_interval=v)),
]


def _params() -> list[Any]:
    found = []
    for setting, values, build in CASES:
        for value in values:
            shown = "10**5000" if value is ENORMOUS else repr(value)
            found.append(pytest.param(setting, value, build, id=f"{setting}={shown}"))
    return found


@pytest.mark.parametrize(("setting", "value", "build"), _params())
def test_an_absurd_value_is_refused_naming_the_setting(
    setting: str, value: object, build: Callable[[object], Any]
) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        build(value)
    message = str(caught.value)
    assert f"'{setting}'" in message, message
    assert len(message) < 300, message  # one line: a 5,000-digit number is not printed
    assert "\n" not in message


async def test_the_largest_allowed_values_are_accepted() -> None:
    # The caps are ceilings, not a ban on large values: each one itself is taken.
    CircuitBreakerConfig(failure_threshold=MAX_COUNT, recovery_timeout=MAX_SECONDS, timeout=None)
    HealthMonitor(history_size=MAX_HISTORY, callback_workers=MAX_THREADS)
    MemoryCache(max_entries=MAX_ITEMS)
    _rule(stable_period=MAX_SECONDS, max_attempts=MAX_COUNT)
    RecoveryManager(history_size=MAX_HISTORY, verify_interval=MAX_SECONDS)
    _sink(queue_size=MAX_ITEMS, repeat_interval=MAX_SECONDS)
    await _monitor_add_checker(MAX_SECONDS)


async def test_a_monitor_checkers_interval_is_bounded() -> None:
    for value in SECONDS:
        with pytest.raises((TypeError, ValueError), match="'interval'"):
            await _monitor_add_checker(value)


# -- the service's config file --------------------------------------------------------

CONFIG_CASES = [
    ("[monitor]", "check_interval", "1e300"),
    ("[monitor]", "check_interval", "nan"),
    ("[monitor]", "check_interval", "inf"),
    ("[monitor]", "failure_threshold", "1000000000000000000000000000000"),
    ("[monitor]", "failure_threshold", "true"),
    ("[monitor]", "history_size", "100000000"),
    ("[recovery]", "verify_interval", "1e300"),
    ("[recovery]", "verify_interval", "-1"),
    ("[circuits]", "recovery_timeout", "1e300"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("table", "key", "value"), CONFIG_CASES)
def test_config_check_refuses_an_absurd_value_in_one_line(
    tmp_path: Path, table: str, key: str, value: str
) -> None:
    config = tmp_path / "s.toml"
    config.write_text(
        f'{table}\n{key} = {value}\n\n[[services]]\nname = "api"\ntype = "http"\n'
        'url = "http://127.0.0.1:1/"\n'
    )
    ran = run_cli("config", "check", str(config))
    assert ran.code == 3, (ran.out, ran.err)
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.err
    assert key in lines[0], lines[0]
    assert "Traceback" not in ran.err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "value"),
    [("timeout", "1e300"), ("interval", "-1"), ("degraded_threshold", "nan")],
)
def test_config_check_refuses_an_absurd_service_setting(
    tmp_path: Path, key: str, value: str
) -> None:
    config = tmp_path / "s.toml"
    config.write_text(
        f'[[services]]\nname = "api"\ntype = "http"\nurl = "http://127.0.0.1:1/"\n{key} = {value}\n'
    )
    ran = run_cli("config", "check", str(config))
    assert ran.code == 3, ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert key in ran.err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_attempts", "1e20"),
        ("max_attempts", "1000000000000000000000000000000"),
        ("cooldown", "1e300"),
        ("backoff_base", "-1"),
        ("stable_period", "inf"),
    ],
)
def test_config_check_refuses_an_absurd_recovery_rule(tmp_path: Path, key: str, value: str) -> None:
    config = tmp_path / "s.toml"
    config.write_text(
        '[[services]]\nname = "api"\ntype = "http"\nurl = "http://127.0.0.1:1/"\n'
        f'[[services.recovery]]\naction = "restart_service"\ncommand = ["true"]\n{key} = {value}\n'
    )
    ran = run_cli("config", "check", str(config))
    assert ran.code == 3, ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert key in ran.err
