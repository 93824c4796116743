"""RecoveryActionType and RecoveryRule: what to do for a sick service, validated once."""

from __future__ import annotations

import enum
import os
import signal as _signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .. import _backoff
from .._redact import redact, redact_argv
from .._validation import check_int, check_seconds


class RecoveryActionType(enum.StrEnum):
    """The kinds of recovery action, cheapest first (the order a ladder climbs)."""

    CLEAR_CACHE = "clear_cache"
    DATABASE_RECONNECT = "database_reconnect"
    CONFIG_RELOAD = "config_reload"
    RESTART_SERVICE = "restart_service"
    MANUAL_INTERVENTION = "manual_intervention"

    @property
    def cost(self) -> int:
        """Rank on the escalation ladder: rules for one service run in this order."""
        return _COST[self]


_COST = {action: rank for rank, action in enumerate(RecoveryActionType)}


class CacheClient(Protocol):
    """What ``clear_cache`` needs of a client: ``redis.asyncio.Redis`` (or RedisCluster)."""

    def scan_iter(
        self, match: str | None = None, count: int | None = None, _type: str | None = None
    ) -> AsyncIterator[Any]: ...

    def unlink(self, *names: str | bytes) -> Any: ...


RecoveryFunc = Callable[[str], Awaitable[object] | object]
"""Called with the service name; sync or async. Raising or returning False is a failure."""


def _normalise_action(value: object) -> RecoveryActionType:
    if isinstance(value, RecoveryActionType):
        return value
    if isinstance(value, str):
        try:
            return RecoveryActionType(value)
        except ValueError:
            pass
    valid = ", ".join(repr(a.value) for a in RecoveryActionType)
    raise ValueError(f"'action' must be one of {valid}: {value!r}")


MAX_PID = 2**31 - 1
"""The largest process id an operating system can hand out (pid_t is 32 bits)."""


def _shown_command(value: object) -> str:
    """``value`` for an error message: an argument list with its secrets masked, each
    argument judged among its neighbours (``--password`` masks the one after it)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return repr(redact(" ".join(redact_argv(value.split()))))
    if not isinstance(value, Sequence):
        return f"<{type(value).__name__}>"
    texts = [
        os.fspath(a) if isinstance(a, os.PathLike) else a if isinstance(a, str) else None
        for a in value
    ]
    masked = iter(redact_argv([t for t in texts if isinstance(t, str)]))
    return repr(
        [
            next(masked) if t is not None else f"<{type(a).__name__}>"
            for t, a in zip(texts, value, strict=True)
        ]
    )


def _normalise_command(value: object, where: str) -> tuple[str, ...]:
    # A plain string would have to go through a shell to be split: refuse it, so no
    # rule ever runs `sh -c` on text that may have come from configuration.
    if isinstance(value, str | bytes):
        raise TypeError(
            f"'command' must be an argument list such as ['systemctl', 'restart', 'x'], "
            f"not a string (no shell is used): {_shown_command(value)}"
        )
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"'command' must be a non-empty argument list: {_shown_command(value)}")
    args = tuple(value)
    for index, arg in enumerate(args):
        if not isinstance(arg, str | os.PathLike):
            raise TypeError(
                f"'command' arguments must be strings: {type(arg).__name__} at index "
                f"{index} of {_shown_command(value)}"
            )
    argv = tuple(os.fspath(arg) if not isinstance(arg, str) else arg for arg in args)
    for index, arg in enumerate(argv):
        # No program can receive a NUL byte in an argument: exec would refuse it at
        # every attempt, so refuse the rule now.
        if "\0" in arg if isinstance(arg, str) else b"\0" in arg:
            raise ValueError(
                f"'command' arguments must not contain a NUL byte, {where}: argument "
                f"{index} of {_shown_command(value)}"
            )
    return argv


@dataclass(frozen=True, slots=True, repr=False)
class RecoveryRule:
    """One way to heal one service, and the limits that keep it from thrashing.

    ``RecoveryRule(service_name, action, *, ...)``; everything after ``action`` is
    keyword-only and durations are seconds. What the action runs is exactly one of:

    - ``recovery_func``: called with the service name, sync or async (any action but
      ``manual_intervention``). Raising, or returning ``False``, is a failed attempt.
    - ``command``: an argument list run without a shell, killed at ``timeout``; its
      exit status and the tail of its output are recorded (any action but
      ``manual_intervention``).
    - ``redis_client`` and ``cache_pattern`` (``clear_cache`` only): keys matching the
      pattern are deleted with SCAN and UNLINK in batches of ``cache_batch_size``.
    - ``pid`` or ``pid_file`` (``config_reload`` only): ``signal`` (SIGHUP) is sent.
    - nothing, for ``manual_intervention``: a critical alert, then a latch until
      ``RecoveryManager.reset(service_name)``.

    The limits:

    - ``failure_threshold``: act only once the service has failed this many health
      checks in a row (the monitor's count) *and* is unhealthy.
    - ``max_attempts``: attempts of this rule that did not bring lasting health, after
      which the manager moves to the next rule (cheapest first) and, when none is
      left, escalates to manual intervention and latches.
    - ``backoff_base``/``backoff_max``/``jitter``: the delay before retry *n* is
      ``min(backoff_max, backoff_base * 2**(n-1))``, shortened by up to ``jitter``
      of itself at random (0.5 is "equal jitter"), so it never exceeds the cap.
    - ``cooldown``: the quiet time after an episode ends before this service is acted
      on again. A failure inside it waits for its end; it is never dropped.
    - ``grace_period``: an attempt succeeds only if the service is seen healthy within
      this time after the action; a command that exits 0 is not enough. ``None`` (the
      default): the time the attached monitor needs to see it healthy (see
      :func:`~xnai_core.recovery.seam.grace_period`).
    - ``stable_period``: attempt counters and backoff reset only after the service has
      stayed healthy this long (Kubernetes uses 10 minutes). A service that keeps
      coming back for less than this is crash-looping, and escalates.
    - ``timeout``: how long the action itself may run (command, callable or cache scan).
    """

    service_name: str
    action: RecoveryActionType | str
    _: KW_ONLY
    failure_threshold: int = 3
    max_attempts: int = 3
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    jitter: float = 0.5
    cooldown: float = 60.0
    grace_period: float | None = None
    stable_period: float = 600.0
    timeout: float = 30.0
    recovery_func: RecoveryFunc | None = None
    command: Sequence[str] | None = None
    redis_client: CacheClient | None = field(default=None, repr=False, compare=False)
    cache_pattern: str | None = None
    cache_batch_size: int = 500
    pid: int | None = None
    pid_file: str | os.PathLike[str] | None = None
    signal: _signal.Signals | int = _signal.SIGHUP

    def __post_init__(self) -> None:
        if not isinstance(self.service_name, str) or not self.service_name:
            raise ValueError(f"'service_name' must be a non-empty string: {self.service_name!r}")
        action = _normalise_action(self.action)
        object.__setattr__(self, "action", action)
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("max_attempts", self.max_attempts, 1)
        check_int("cache_batch_size", self.cache_batch_size, 1)
        for name, allow_zero in (
            ("backoff_base", False),
            ("backoff_max", False),
            ("cooldown", True),
            ("stable_period", False),
            ("timeout", False),
        ):
            object.__setattr__(
                self, name, check_seconds(name, getattr(self, name), allow_zero=allow_zero)
            )
        if self.grace_period is not None:
            object.__setattr__(
                self, "grace_period", check_seconds("grace_period", self.grace_period)
            )
        if self.backoff_max < self.backoff_base:
            raise ValueError(
                f"'backoff_max' must be >= 'backoff_base' ({self.backoff_base!r}), "
                f"or the backoff can never grow: {self.backoff_max!r}"
            )
        if not isinstance(self.jitter, int | float) or isinstance(self.jitter, bool):
            raise TypeError(f"'jitter' must be a number: {self.jitter!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"'jitter' must be between 0 and 1: {self.jitter!r}")
        object.__setattr__(self, "jitter", float(self.jitter))
        try:
            object.__setattr__(self, "signal", _signal.Signals(self.signal))
        except ValueError:
            raise ValueError(f"'signal' must be a signal number: {self.signal!r}") from None
        self._check_how(action)

    def _check_how(self, action: RecoveryActionType) -> None:
        """Exactly one way to act, and one that suits the action."""
        if self.recovery_func is not None and not callable(self.recovery_func):
            raise TypeError(f"'recovery_func' must be callable: {self.recovery_func!r}")
        where = f"in the {action.value!r} rule for {self.service_name!r}"
        if self.command is not None:
            object.__setattr__(self, "command", _normalise_command(self.command, where))
        if self.pid is not None:
            check_int("pid", self.pid, 2)  # 0, 1 and -1 would signal a group, init, or all
            if self.pid > MAX_PID:
                raise ValueError(f"'pid' must be <= {MAX_PID}: {self.pid!r}")
        if self.pid_file is not None:
            object.__setattr__(self, "pid_file", Path(os.fspath(self.pid_file)))
            if "\0" in os.fspath(self.pid_file):
                raise ValueError(
                    f"'pid_file' must not contain a NUL byte, {where}: {self.pid_file!r}"
                )
        if (self.redis_client is None) != (self.cache_pattern is None):
            raise ValueError(
                "'redis_client' and 'cache_pattern' go together: "
                f"cache_pattern={self.cache_pattern!r}, redis_client "
                f"{'given' if self.redis_client is not None else 'missing'}"
            )
        if self.cache_pattern is not None and (
            not isinstance(self.cache_pattern, str) or not self.cache_pattern.strip("*?")
        ):
            raise ValueError(
                "'cache_pattern' must contain literal characters, so it cannot match "
                f"every key of a shared Redis: {self.cache_pattern!r}"
            )
        if self.pid is not None and self.pid_file is not None:
            raise ValueError(f"give 'pid' or 'pid_file', not both: {self.pid!r}, {self.pid_file!r}")

        ways = {
            "recovery_func": self.recovery_func is not None,
            "command": self.command is not None,
            "redis_client/cache_pattern": self.cache_pattern is not None,
            "pid/pid_file": self.pid is not None or self.pid_file is not None,
        }
        given = [name for name, present in ways.items() if present]
        allowed = {
            RecoveryActionType.MANUAL_INTERVENTION: (),
            RecoveryActionType.RESTART_SERVICE: ("recovery_func", "command"),
            RecoveryActionType.DATABASE_RECONNECT: ("recovery_func", "command"),
            RecoveryActionType.CLEAR_CACHE: (
                "recovery_func",
                "command",
                "redis_client/cache_pattern",
            ),
            RecoveryActionType.CONFIG_RELOAD: ("recovery_func", "command", "pid/pid_file"),
        }[action]
        wrong = [name for name in given if name not in allowed]
        if wrong:
            raise ValueError(
                f"'{wrong[0]}' does not apply to action {action.value!r} "
                f"(it takes: {', '.join(allowed) or 'nothing'}): {self.service_name!r}"
            )
        if len(given) > 1:
            raise ValueError(
                f"a rule runs one thing; got {' and '.join(given)} for {self.service_name!r}"
            )
        if allowed and not given:
            raise ValueError(
                f"action {action.value!r} needs one of {', '.join(allowed)}, "
                f"or it can never act: {self.service_name!r}"
            )

    def __repr__(self) -> str:
        # The dataclass repr would print command arguments (--password=...) verbatim.
        shown: list[str] = []
        for item in fields(self):
            if not item.repr:
                continue
            value = getattr(self, item.name)
            if item.name == "command" and value is not None:
                text = repr(redact_argv(value))
            elif item.name == "action":
                text = repr(RecoveryActionType(value).value)
            else:
                text = redact(repr(value))
            shown.append(f"{item.name}={text}")
        return f"RecoveryRule({', '.join(shown)})"

    @property
    def action_type(self) -> RecoveryActionType:
        """``action`` as the enum (it is always normalised to one)."""
        return RecoveryActionType(self.action)

    def describe(self) -> str:
        """What this rule runs, for logs and records (no secrets: argv[0] and counts)."""
        if self.command is not None:
            return f"command {os.path.basename(self.command[0])!r} ({len(self.command)} args)"
        if self.cache_pattern is not None:
            return f"SCAN+UNLINK {self.cache_pattern!r}"
        if self.pid is not None:
            return f"{_signal.Signals(self.signal).name} to pid {self.pid}"
        if self.pid_file is not None:
            return f"{_signal.Signals(self.signal).name} to pid in {os.fspath(self.pid_file)}"
        if self.recovery_func is not None:
            return f"recovery_func {getattr(self.recovery_func, '__qualname__', 'callable')}"
        return "critical alert and latch"


def backoff_delay(rule: RecoveryRule, retry: int, rand: float) -> float:
    """Seconds to wait before the ``retry``-th retry (1-based) of ``rule``.

    ``rand`` is a draw from [0, 1); the delay is the capped exponential shortened by
    ``rule.jitter * rand`` of itself, so replicas spread out but never exceed the cap.
    """
    return _backoff.delay(
        retry, base=rule.backoff_base, cap=rule.backoff_max, rand=rand, jitter=rule.jitter
    )
