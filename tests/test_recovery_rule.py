"""RecoveryRule validation and the backoff formula."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from xnai_core.recovery import RecoveryActionType, RecoveryRule, backoff_delay


async def _noop(service: str) -> None:
    return None


def test_action_values_are_the_issue_strings() -> None:
    """The five action types carry exactly the documented string values."""
    assert [a.value for a in RecoveryActionType] == [
        "clear_cache",
        "database_reconnect",
        "config_reload",
        "restart_service",
        "manual_intervention",
    ]
    assert RecoveryActionType("restart_service") == "restart_service"


def test_action_given_as_string_is_normalised() -> None:
    """A rule accepts the action's string and stores the enum."""
    rule = RecoveryRule("api", "restart_service", command=["true"])
    assert rule.action is RecoveryActionType.RESTART_SERVICE


def test_arguments_after_action_are_keyword_only() -> None:
    """failure_threshold and the rest cannot be passed positionally."""
    with pytest.raises(TypeError):
        RecoveryRule("api", "restart_service", 3)  # type: ignore[call-arg]


def test_defaults_follow_the_anchors() -> None:
    """Defaults: 3 failures, 3 attempts, 300 s backoff cap, 10 min stable period."""
    rule = RecoveryRule("api", RecoveryActionType.RESTART_SERVICE, recovery_func=_noop)
    assert (rule.failure_threshold, rule.max_attempts, rule.backoff_max) == (3, 3, 300.0)
    assert rule.stable_period == 600.0
    assert rule.grace_period is None  # derived from the attached monitor


def test_default_grace_period_is_the_monitors_detection_time() -> None:
    """success_threshold * (min(interval, verify_interval) + timeout), at least 1 s, where
    timeout bounds one check as the monitor bounds it; 30 s with no monitor; a rule's own
    grace_period always wins."""
    from xnai_core.health.checkers import HTTPHealthChecker
    from xnai_core.health.monitor import HealthMonitor
    from xnai_core.recovery.seam import grace_period

    rule = RecoveryRule("api", "restart_service", recovery_func=_noop)
    own = RecoveryRule("api", "restart_service", recovery_func=_noop, grace_period=45)
    default = HealthMonitor()
    default.add_checker(HTTPHealthChecker("api", "http://127.0.0.1:9/"))  # timeout 5 s
    default.add_checker(HTTPHealthChecker("slow", "http://127.0.0.1:9/"), interval=5.0)
    fast = HealthMonitor(check_interval=0.1, success_threshold=3)
    fast.add_checker(HTTPHealthChecker("api", "http://127.0.0.1:9/", timeout=0.1))
    assert grace_period(rule, default, "api", 1.0) == 2 * (1.0 + 5.0)
    assert grace_period(rule, default, "slow", 1.0) == 2 * (1.0 + 5.0)
    assert grace_period(rule, default, "not-monitored", 1.0) == 2 * (1.0 + 30.0)
    assert grace_period(rule, fast, "api", 0.05) == 1.0  # 3 * (0.05 + 0.1), floored
    assert grace_period(rule, None, "api", 1.0) == 30.0
    assert grace_period(own, fast, "api", 0.05) == 45.0


def test_default_grace_period_bounds_a_check_as_the_monitor_does() -> None:
    """The check interval is not the timeout: a 2 s checker on a 30 s interval is 2 s per
    check; one longer than its interval is cut at the interval; so is a monitor's
    check_timeout taken."""
    from xnai_core.health.checkers import HTTPHealthChecker
    from xnai_core.health.monitor import HealthMonitor
    from xnai_core.recovery.seam import grace_period

    rule = RecoveryRule("api", "restart_service", recovery_func=_noop)
    monitor = HealthMonitor(check_interval=30.0)
    monitor.add_checker(HTTPHealthChecker("quick", "http://127.0.0.1:9/", timeout=2.0))
    monitor.add_checker(HTTPHealthChecker("long", "http://127.0.0.1:9/", timeout=60.0))
    capped = HealthMonitor(check_interval=30.0, check_timeout=3.0)
    capped.add_checker(HTTPHealthChecker("quick", "http://127.0.0.1:9/", timeout=10.0))
    assert grace_period(rule, monitor, "quick", 1.0) == 2 * (1.0 + 2.0)
    assert grace_period(rule, monitor, "long", 1.0) == 2 * (1.0 + 30.0)
    assert grace_period(rule, capped, "quick", 1.0) == 2 * (1.0 + 3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "'failure_threshold' must be >= 1: 0"),
        ({"max_attempts": 0}, "'max_attempts' must be >= 1: 0"),
        ({"backoff_base": 0}, "'backoff_base' must be > 0 seconds: 0"),
        ({"backoff_base": 10, "backoff_max": 5}, "'backoff_max' must be >= 'backoff_base'"),
        ({"cooldown": -1}, "'cooldown' must be >= 0 seconds: -1"),
        ({"grace_period": 0}, "'grace_period' must be > 0 seconds: 0"),
        ({"stable_period": float("inf")}, "'stable_period' must be a finite number"),
        ({"timeout": float("nan")}, "'timeout' must be a finite number"),
        ({"jitter": 1.5}, "'jitter' must be between 0 and 1: 1.5"),
    ],
)
def test_limits_are_validated(kwargs: dict[str, object], message: str) -> None:
    """Limits that make no sense are refused with the field, the rule and the value."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        RecoveryRule("api", "restart_service", recovery_func=_noop, **kwargs)  # type: ignore[arg-type]


def test_bool_is_not_an_int() -> None:
    """max_attempts=True is a bug, not 1."""
    with pytest.raises(TypeError, match="'max_attempts' must be an int: True"):
        RecoveryRule("api", "restart_service", recovery_func=_noop, max_attempts=True)


def test_unknown_action_lists_the_valid_ones() -> None:
    """A misspelt action names every valid one."""
    with pytest.raises(
        ValueError, match=r"'action' must be one of .*'restart_service'.*: 'reboot'"
    ):
        RecoveryRule("api", "reboot")


def test_empty_service_name_is_refused() -> None:
    """A rule must name its service."""
    with pytest.raises(ValueError, match="'service_name' must be a non-empty string: ''"):
        RecoveryRule("", "manual_intervention")


def test_action_without_anything_to_run_is_refused() -> None:
    """A restart rule with neither command nor function could never act."""
    with pytest.raises(
        ValueError, match="needs one of recovery_func, command, or it can never act"
    ):
        RecoveryRule("api", "restart_service")


def test_command_string_is_refused() -> None:
    """A command is an argument list; a string would need a shell."""
    with pytest.raises(TypeError, match="must be an argument list"):
        RecoveryRule("api", "restart_service", command="systemctl restart api")


def test_empty_command_is_refused() -> None:
    """An empty argument list runs nothing."""
    with pytest.raises(ValueError, match="'command' must be a non-empty argument list: \\[\\]"):
        RecoveryRule("api", "restart_service", command=[])


def test_command_is_stored_as_a_tuple() -> None:
    """The argument list is copied into a tuple: the rule stays immutable."""
    argv = ["echo", "hi"]
    rule = RecoveryRule("api", "restart_service", command=argv)
    argv.append("mutated")
    assert rule.command == ("echo", "hi")


def test_two_ways_to_act_are_refused() -> None:
    """A rule runs one thing, not a command and a function."""
    with pytest.raises(ValueError, match="a rule runs one thing; got recovery_func and command"):
        RecoveryRule("api", "restart_service", command=["true"], recovery_func=_noop)


def test_signal_only_reloads_config() -> None:
    """A pid target belongs to config_reload, not restart_service."""
    with pytest.raises(
        ValueError, match="'pid/pid_file' does not apply to action 'restart_service'"
    ):
        RecoveryRule("api", "restart_service", pid=1234)


def test_pid_must_not_address_a_group_or_init() -> None:
    """pid 0, 1 or negative would signal a process group, init or everyone."""
    with pytest.raises(ValueError, match="'pid' must be >= 2: 1"):
        RecoveryRule("api", "config_reload", pid=1)


def test_pid_and_pid_file_together_are_refused() -> None:
    """One target only."""
    with pytest.raises(ValueError, match="give 'pid' or 'pid_file', not both"):
        RecoveryRule("api", "config_reload", pid=1234, pid_file="/run/api.pid")


def test_config_reload_by_pid_file_defaults_to_sighup(tmp_path: object) -> None:
    """config_reload to a pid file sends SIGHUP unless told otherwise."""
    rule = RecoveryRule("api", "config_reload", pid_file="/run/api.pid")
    assert rule.signal is signal.SIGHUP
    assert "SIGHUP" in rule.describe()


def test_cache_pattern_needs_a_client() -> None:
    """A pattern without a Redis client cannot clear anything."""
    with pytest.raises(ValueError, match="'redis_client' and 'cache_pattern' go together"):
        RecoveryRule("api", "clear_cache", cache_pattern="rag:cache:*")


async def test_cache_pattern_matching_everything_is_refused() -> None:
    """A bare '*' would wipe every key of a shared Redis."""
    client = aioredis.Redis()
    try:
        with pytest.raises(ValueError, match="'cache_pattern' must contain literal characters"):
            RecoveryRule("api", "clear_cache", redis_client=client, cache_pattern="**")
    finally:
        await client.aclose()


def test_cache_clear_only_for_clear_cache() -> None:
    """A Redis pattern does not restart a service."""
    with pytest.raises(ValueError, match="'redis_client/cache_pattern' does not apply"):
        RecoveryRule("api", "restart_service", redis_client=object(), cache_pattern="x:*")  # type: ignore[arg-type]


def test_manual_intervention_takes_nothing_to_run() -> None:
    """Manual intervention is an alert and a latch, not a command."""
    with pytest.raises(
        ValueError, match="'command' does not apply to action 'manual_intervention'"
    ):
        RecoveryRule("api", "manual_intervention", command=["true"])
    assert RecoveryRule("api", "manual_intervention").describe() == "critical alert and latch"


def test_describe_shows_no_arguments() -> None:
    """describe() names the program, not its arguments (they may hold secrets)."""
    rule = RecoveryRule(
        "api", "restart_service", command=["/usr/bin/redis-cli", "-a", "s3cret", "shutdown"]
    )
    assert rule.describe() == "command 'redis-cli' (4 args)"
    assert "s3cret" not in rule.describe()


def test_backoff_doubles_and_is_capped() -> None:
    """Without jitter: base, 2*base, 4*base ... never above backoff_max."""
    rule = RecoveryRule(
        "api", "restart_service", recovery_func=_noop, backoff_base=10, backoff_max=25, jitter=0
    )
    assert [backoff_delay(rule, n, 0.9) for n in range(1, 6)] == [10.0, 20.0, 25.0, 25.0, 25.0]


def test_backoff_jitter_shortens_within_bounds() -> None:
    """Jitter 0.5 gives a delay in (raw/2, raw]: spread out, never past the cap."""
    rule = RecoveryRule("api", "restart_service", recovery_func=_noop, backoff_base=10, jitter=0.5)
    assert backoff_delay(rule, 2, 0.0) == 20.0
    assert backoff_delay(rule, 2, 0.5) == 15.0
    assert 10.0 < backoff_delay(rule, 2, 0.999999) < 10.001


def test_backoff_survives_huge_retry_numbers() -> None:
    """Retry 10,000 does not overflow: it is simply the cap."""
    rule = RecoveryRule("api", "restart_service", recovery_func=_noop, jitter=0)
    assert backoff_delay(rule, 10_000, 0.0) == 300.0


@pytest.mark.parametrize("arg", ["a\0b", Path("/srv/x\0")])
def test_command_with_a_nul_byte_is_refused(arg: str | Path) -> None:
    """exec can never pass a NUL byte: such a rule could never act, so it is refused now."""
    with pytest.raises(ValueError, match="must not contain a NUL byte") as caught:
        RecoveryRule("api", "restart_service", command=["/bin/echo", arg])  # type: ignore[list-item]
    message = str(caught.value)
    assert "'command'" in message  # the field
    assert "'restart_service' rule for 'api'" in message  # the rule
    assert repr(os.fspath(arg)) in message  # the value


def test_pid_file_with_a_nul_byte_is_refused() -> None:
    """A pid file path no system call accepts is refused at construction."""
    with pytest.raises(ValueError, match=r"'pid_file' must not contain a NUL byte, in the "):
        RecoveryRule("api", "config_reload", pid_file="/run/a\0.pid")


def test_pid_beyond_any_process_id_is_refused() -> None:
    """A pid no operating system can hand out would overflow os.kill at every attempt."""
    with pytest.raises(ValueError, match=r"'pid' must be <= 2147483647: 99999999999999"):
        RecoveryRule("api", "config_reload", pid=99999999999999)
