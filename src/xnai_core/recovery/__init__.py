"""Automated recovery: rules, real actions, backoff, cooldown, escalation and statistics.

Modules, one concept each:

- ``rule``: :class:`RecoveryActionType`, :class:`RecoveryRule` (validated), the backoff formula.
- ``actions``: the actions themselves (command, cache clear, signal, callable).
- ``stats``: attempt records and the seed's statistics.
- ``decide``: the next step for a service, a pure function of its state and the time.
- ``state``: what the manager knows about one service.
- ``seam``: the manager's side of the seam with ``HealthMonitor``.
- ``escalation``: the manual-intervention reason and alert.
- ``coordination``: :class:`RecoveryCoordinator`, one recovery per service across processes.
- ``episode``: carries out ``decide``'s steps during one outage of one service.
- ``manager``: :class:`RecoveryManager`, the public face: rules, monitor hook, reset, stats.
"""

from __future__ import annotations

from .actions import ActionOutcome
from .coordination import RecoveryCoordinator
from .manager import RecoveryManager
from .rule import RecoveryActionType, RecoveryRule, backoff_delay
from .state import RecoveryPhase
from .stats import AttemptOutcome, RecoveryAttempt

__all__ = [
    "ActionOutcome",
    "AttemptOutcome",
    "RecoveryActionType",
    "RecoveryAttempt",
    "RecoveryCoordinator",
    "RecoveryManager",
    "RecoveryPhase",
    "RecoveryRule",
    "backoff_delay",
]
