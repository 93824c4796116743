"""The values a sink passes around: one notification, a failed attempt, the counters."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ..health.alerts import Alert, Severity

Event = Literal["firing", "resolved"]


def iso_utc(timestamp: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-12-07T16:30:57.123Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One message a sink owes its destination.

    ``raised`` is the alert as it was raised: a resolved notice carries severity
    ``info``, so a sink reads the severity, labels and start time from here.
    ``alert`` is what just happened (the raise itself, or the resolved notice).
    ``repeat`` is 0 for the first notice and n for the n-th reminder of an alert
    that stays active. ``delivery_id`` stays the same across retries, so a
    receiver can drop a retried copy it already processed.
    """

    alert: Alert
    raised: Alert
    event: Event
    repeat: int = 0
    delivery_id: str = ""

    def __post_init__(self) -> None:
        if not self.delivery_id:
            object.__setattr__(self, "delivery_id", _delivery_id(self))

    @property
    def key(self) -> str:
        """The alert's stable key, ``"<service>:<kind>"`` by default."""
        return self.raised.key

    @property
    def severity(self) -> Severity:
        """The severity the alert was raised with (also on its resolve)."""
        return self.raised.severity

    @property
    def episode_id(self) -> str:
        """Stable for one raise and everything that follows it (repeats, resolve)."""
        seed = f"{self.raised.key}\0{self.raised.timestamp!r}"
        return hashlib.sha256(seed.encode()).hexdigest()[:32]

    def identity(self) -> str:
        """How logs name this notification: the alert's key and what happened to it."""
        what = "repeat" if self.repeat else self.event
        return f"alert {self.key!r} ({what})"


def _delivery_id(note: Notification) -> str:
    seed = f"{note.episode_id}\0{note.event}\0{note.repeat}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


class DeliveryError(Exception):
    """An attempt to deliver a notification failed.

    ``reason`` is safe to log and to show in stats: it never holds a URL, key or
    password. ``retryable`` says whether another attempt may succeed (a refused
    connection, a timeout, HTTP 5xx, 429 or 408) or cannot (another 4xx, a bad password).
    ``retry_after`` is the receiver's own wait in seconds (``Retry-After``).
    """

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkStats:
    """A sink's counters, JSON-ready through :meth:`as_dict`; never a destination or secret.

    ``dropped`` counts notifications that were never delivered, for every reason
    in ``dropped_by_reason``: ``queue_full``, ``rejected`` (a 4xx or another
    answer that retrying cannot fix), ``gave_up`` (``max_attempts`` used up),
    ``shutdown`` (still queued when ``aclose()``'s deadline came).
    """

    name: str
    kind: str
    sent: int
    retried: int
    dropped: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    active_alerts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "name": self.name,
            "kind": self.kind,
            "sent": self.sent,
            "retried": self.retried,
            "dropped": self.dropped,
            "dropped_by_reason": dict(self.dropped_by_reason),
            "queued": self.queued,
            "active_alerts": self.active_alerts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_sent_at": self.last_sent_at,
        }
