"""Settle records within one process: a manager rebuilt by a reload leaves alone the
service that the manager it replaced has just acted on.

With a coordinator, a replica that acts writes a settle record to Redis and every peer,
a manager rebuilt in the same process included, honours it. Without one (no Redis, or
before it answers), a reload that changed a service's rules closed the manager in the
middle of a restart's grace period, and the new manager, attached to the same monitor,
took the service's status (still unhealthy: the service was starting) and restarted it
again: two restarts for one outage. So each manager also records, per monitor and
service, until when an action it took or a recovery it saw should settle; any other
manager attached to the same monitor, on the same clock, takes its turn only after that.

Records are kept per monitor object (weakly: they go with it) and read only by managers
on the same clock, so unrelated monitors and tests never hold each other off.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["settle", "settling"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Record:
    owner: object
    clock: Clock
    until: float


_RECORDS: weakref.WeakKeyDictionary[object, dict[str, _Record]] = weakref.WeakKeyDictionary()


def settle(
    monitor: object | None, service: str, owner: object, clock: Clock, window: float
) -> None:
    """``owner`` acted on (or saw the recovery of) ``service``: others leave it alone for
    ``window`` seconds of ``clock``."""
    if monitor is None:
        return
    try:
        records = _RECORDS.setdefault(monitor, {})
    except TypeError:  # a monitor that cannot be weakly referenced: nothing shared
        return
    records[service] = _Record(owner, clock, clock() + window)


def settling(monitor: object | None, service: str, owner: object, clock: Clock) -> float:
    """Seconds another manager's record for ``service`` still holds it, or 0."""
    if monitor is None:
        return 0.0
    try:
        record = _RECORDS.get(monitor, {}).get(service)
    except TypeError:
        return 0.0
    if record is None or record.owner is owner or record.clock is not clock:
        return 0.0
    return max(0.0, record.until - clock())
