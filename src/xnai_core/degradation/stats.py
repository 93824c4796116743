"""Per-service degradation statistics and episodes.

An episode starts at the first call whose primary did not answer (it failed,
timed out, or a circuit skipped it) and ends at the next call the primary
answers. A fresh cache hit says nothing about the primary, so it neither starts
nor ends one. The manager logs and announces the two edges of each episode,
never the calls in between.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from .reasons import describe_error

EventKind = Literal["degraded", "recovered"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DegradationEvent:
    """A service entered (``"degraded"``) or left (``"recovered"``) degraded mode.

    For ``degraded``: ``reason`` is the failure that started the episode and
    ``strategy`` the strategy that answered (None when every strategy failed).
    For ``recovered``: ``duration`` is the episode's length in seconds and
    ``degraded_calls`` how many calls the primary did not answer during it.
    """

    service_name: str
    kind: EventKind
    at: float
    reason: str | None = None
    strategy: str | None = None
    duration: float | None = None
    degraded_calls: int = 0

    def to_dict(self) -> dict[str, str | float | int | None]:
        """JSON-serialisable form."""
        return {
            "service_name": self.service_name,
            "kind": self.kind,
            "at": self.at,
            "reason": self.reason,
            "strategy": self.strategy,
            "duration": self.duration,
            "degraded_calls": self.degraded_calls,
        }


class ServiceStats:
    """The counters of one service; mutated by the manager, read via :meth:`to_dict`."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.calls = 0
        self.primary_successes = 0
        self.cache_hits = 0
        self.degraded_responses = 0
        self.failures = 0
        self.timeouts = 0
        self.passed_through = 0
        self.coalesced = 0
        self.episodes = 0
        self.degraded_by_strategy: Counter[str] = Counter()
        self.strategy_failures: Counter[str] = Counter()
        self.degraded_since: float | None = None
        self.episode_calls = 0
        self.last_degradation: dict[str, str | float | None] | None = None

    @property
    def degraded(self) -> bool:
        """True inside a degraded episode."""
        return self.degraded_since is not None

    def record_primary(self, now: float) -> DegradationEvent | None:
        """The primary answered; ends an episode (returning its event) if one was running."""
        self.primary_successes += 1
        if self.degraded_since is None:
            return None
        event = DegradationEvent(
            service_name=self.service_name,
            kind="recovered",
            at=now,
            duration=max(0.0, now - self.degraded_since),
            degraded_calls=self.episode_calls,
        )
        self.degraded_since = None
        self.episode_calls = 0
        return event

    def record_coalesced(self) -> None:
        """The call shared another caller's primary call (single flight); its outcome is
        counted once, by that caller, in ``primary_successes`` or ``timeouts``."""
        self.coalesced += 1

    def record_cache_hit(self) -> None:
        """A guard answered as well as the primary would have (a fresh cache hit)."""
        self.cache_hits += 1

    def record_primary_failure(self, error: Exception) -> None:
        """The primary failed with ``error``: before the strategies are tried, or inside a
        guard that answered in its place (a breaker's fallback), so every timeout counts."""
        if isinstance(error, TimeoutError):
            self.timeouts += 1

    def record_strategy_failure(self, strategy: str) -> None:
        """``strategy`` had no answer."""
        self.strategy_failures[strategy] += 1

    def record_degraded(self, strategy: str, reason: str, now: float) -> DegradationEvent | None:
        """``strategy`` answered in place of the primary; may start an episode."""
        self.degraded_responses += 1
        self.degraded_by_strategy[strategy] += 1
        return self._degraded_call(reason, strategy, now)

    def record_failed(self, error: Exception, now: float) -> DegradationEvent | None:
        """The primary and every strategy failed; may start an episode."""
        self.failures += 1
        return self._degraded_call(describe_error(error), None, now)

    def record_passed_through(self) -> None:
        """An exception outside the service's ``degrade_on`` went to the caller unchanged."""
        self.passed_through += 1

    def _degraded_call(
        self, reason: str, strategy: str | None, now: float
    ) -> DegradationEvent | None:
        self.last_degradation = {"time": now, "reason": reason, "strategy": strategy}
        self.episode_calls += 1
        if self.degraded_since is not None:
            return None
        self.degraded_since = now
        self.episodes += 1
        return DegradationEvent(
            service_name=self.service_name,
            kind="degraded",
            at=now,
            reason=reason,
            strategy=strategy,
            degraded_calls=1,
        )

    def to_dict(self) -> dict[str, object]:
        """The counters, JSON-serialisable."""
        return {
            "calls": self.calls,
            "primary_successes": self.primary_successes,
            "cache_hits": self.cache_hits,
            "degraded_responses": self.degraded_responses,
            "degraded_by_strategy": dict(self.degraded_by_strategy),
            "strategy_failures": dict(self.strategy_failures),
            "failures": self.failures,
            "timeouts": self.timeouts,
            "passed_through": self.passed_through,
            "coalesced": self.coalesced,
            "degraded": self.degraded,
            "degraded_since": self.degraded_since,
            "episodes": self.episodes,
            "last_degradation": dict(self.last_degradation) if self.last_degradation else None,
        }
