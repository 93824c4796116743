"""The hooks a monitor calls: recovery callbacks and a recovery manager.

Typed as protocols so the monitor never imports the recovery package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .result import HealthCheckResult, HealthStatus

__all__ = ["RecoveryCallback", "RecoveryHook"]

RecoveryCallback = Callable[[str], Awaitable[object] | object]
"""Called with the service name once per recovery (unhealthy -> healthy); sync or async."""


class RecoveryHook(Protocol):
    """What ``HealthMonitor(recovery_manager=...)`` needs.

    ``on_status_change`` is awaited (sync works too) after every status change of a
    service, in order per service, from a background task: the check loop never
    waits for it. If the object also has ``attach(monitor)``, the monitor calls it
    once from its ``__init__``.
    """

    def on_status_change(
        self,
        service_name: str,
        old_status: HealthStatus,
        new_status: HealthStatus,
        result: HealthCheckResult,
        /,
    ) -> Awaitable[None] | None: ...
