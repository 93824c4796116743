"""One RecoveryManager per service, behind the one hook a HealthMonitor takes.

A manager cannot drop a rule, so a reload that changes one service's rules replaces that
service's manager alone: every other service keeps its counters, backoff and latch. The
router also records the stack's status episodes (a service leaving healthy until it is
back), which the dashboard shows.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import Any

from .._redact import redact
from ..recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule

__all__ = ["RecoveryRouter"]

EPISODES_KEPT = 50


class RecoveryRouter:
    """The monitor's recovery hook: routes each status change to its service's manager."""

    def __init__(
        self,
        *,
        coordinator: RecoveryCoordinator | None,
        dry_run: bool = False,
        verify_interval: float = 1.0,
        clock: Any = time.time,
    ) -> None:
        self._coordinator = coordinator
        self._dry_run = dry_run
        self._verify_interval = verify_interval
        self._clock = clock
        self._managers: dict[str, RecoveryManager] = {}
        self._rules: dict[str, tuple[RecoveryRule, ...]] = {}
        self._monitor: Any = None
        self._handlers: list[Any] = []
        self._open: dict[str, dict[str, object]] = {}
        self.episodes: collections.deque[dict[str, object]] = collections.deque(
            maxlen=EPISODES_KEPT
        )

    # -- the RecoveryHook protocol ----------------------------------------------------

    def attach(self, monitor: Any) -> None:
        self._monitor = monitor
        for manager in self._managers.values():
            manager.attach(monitor)

    async def on_status_change(
        self, service_name: str, old_status: object, new_status: object, result: object = None, /
    ) -> None:
        self._note_episode(service_name, str(getattr(new_status, "value", new_status)), result)
        manager = self._managers.get(service_name)
        if manager is not None:
            await manager.on_status_change(service_name, old_status, new_status, result)

    # -- configuration ------------------------------------------------------------------

    def add_alert_handler(self, handler: Any) -> None:
        self._handlers.append(handler)
        for manager in self._managers.values():
            manager.add_alert_handler(handler)

    def remove_alert_handler(self, handler: Any) -> None:
        self._handlers.remove(handler)
        # A manager has no remove: a handler removed from the service is one being closed;
        # the sink itself drops what reaches it after its close.

    def rules(self, service_name: str) -> tuple[RecoveryRule, ...]:
        return self._rules.get(service_name, ())

    async def set_rules(self, service_name: str, rules: Iterable[RecoveryRule]) -> bool:
        """Give the service these rules; True if its manager was replaced (or removed)."""
        wanted = tuple(rules)
        if self._rules.get(service_name, ()) == wanted:
            return False
        old = self._managers.pop(service_name, None)
        self._rules.pop(service_name, None)
        if old is not None:
            await old.aclose()
        if wanted:
            manager = RecoveryManager(
                wanted,
                dry_run=self._dry_run,
                verify_interval=self._verify_interval,
                coordinator=self._coordinator,
            )
            for handler in self._handlers:
                manager.add_alert_handler(handler)
            if self._monitor is not None:
                manager.attach(self._monitor)
            self._managers[service_name] = manager
            self._rules[service_name] = wanted
        return True

    def end_episode(self, service_name: str, status: str) -> None:
        """End ``service_name``'s ongoing episode as ``status`` (a service removed from the
        config is never back to healthy: its episode would stay ongoing forever)."""
        current = self._open.pop(service_name, None)
        if current is not None:
            current["ended"] = self._clock()
            current["status"] = status

    async def reset(self, service_name: str) -> bool:
        manager = self._managers.get(service_name)
        return False if manager is None else await manager.reset(service_name)

    async def aclose(self) -> None:
        """Cancel recovery in flight everywhere (running commands are killed).

        All at once: a command that ignores SIGTERM costs its manager the kill grace
        (SIGTERM, then SIGKILL a second later), and N of them must not cost N seconds.
        """
        await asyncio.gather(
            *(manager.aclose() for manager in self._managers.values()), return_exceptions=True
        )

    # -- reading ------------------------------------------------------------------------

    def get_recovery_stats(self) -> dict[str, object]:
        """The seed's totals summed over the services, and ``services``: per-service detail."""
        total = 0
        services: dict[str, object] = {}
        actions: collections.Counter[str] = collections.Counter()
        recent: list[object] = []
        for manager in self._managers.values():
            stats: dict[str, Any] = manager.get_recovery_stats()
            total += int(stats.get("total_attempts", 0))
            actions.update(stats.get("actions_by_type", {}))
            recent.extend(stats.get("recent_failures", []))
            services.update(stats.get("services", {}))
        return {
            "total_attempts": total,
            "actions_by_type": dict(actions),
            "recent_failures": recent,
            "services": services,
        }

    def is_escalated(self, service_name: str) -> bool:
        manager = self._managers.get(service_name)
        return manager is not None and manager.is_escalated(service_name)

    def _note_episode(self, service: str, status: str, result: object) -> None:
        now = self._clock()
        current = self._open.get(service)
        if status == "healthy":
            if current is not None:
                current["ended"] = now
                del self._open[service]
            return
        if status == "unknown":
            return
        error = getattr(result, "error", None)
        if current is None:
            current = {"service": service, "started": now, "ended": None, "worst": status}
            self._open[service] = current
            self.episodes.append(current)
        elif status == "unhealthy":
            current["worst"] = "unhealthy"
        current["status"] = status
        current["reason"] = None if error is None else redact(str(error))[:300]
