"""The monitor's notifier: alerts, recovery callbacks and status changes, off the checks' path.

Each consumer (an alert handler, a recovery callback, the recovery hook) has one
lane per service (:class:`~xnai_core._dispatch.Lane`): what it receives about a
service arrives in order, and a slow or hung consumer holds back only its own
lane, never a check nor another consumer. Every call goes through the monitor's
:class:`~xnai_core._dispatch.Dispatcher`: async consumers run in their lane's
task, sync ones on its bounded worker threads, each bounded by its timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._dispatch import Dispatcher, Lane
from .alerts import Alert, AlertHandler
from .hooks import RecoveryCallback, RecoveryHook
from .result import HealthCheckResult, HealthStatus

__all__ = ["Notifier"]

_HOOK = "recovery_hook"


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # no running loop


class Notifier:
    """Per-service, per-consumer lanes of notifications, delivered through one dispatcher.

    ``handlers`` is read when an alert is announced (the monitor's live list), and
    again when it is delivered: a handler removed meanwhile gets nothing.
    """

    def __init__(
        self,
        *,
        handlers: Sequence[AlertHandler],
        dispatcher: Dispatcher,
        alert_timeout: float | None,
        callback_timeout: float | None,
        log: logging.Logger,
    ) -> None:
        self._handlers = handlers
        self._dispatcher = dispatcher
        self._alert_timeout = alert_timeout
        self._callback_timeout = callback_timeout
        self._log = log
        # service -> (label, consumer) -> lane; consumers are handlers, callbacks or _HOOK.
        self._lanes: dict[str, dict[tuple[str, object], Lane]] = {}

    def _lane(self, service: str, consumer: object, label: str) -> Lane:
        lanes = self._lanes.setdefault(service, {})
        lane = lanes.get((label, consumer))
        if lane is None:
            lane = lanes[label, consumer] = Lane(f"{service}:{label}", log=self._log)
        return lane

    # -- announcing (needs a running loop) ------------------------------------------

    def alert(self, service: str, alert: Alert) -> None:
        """Queue ``alert`` for every alert handler, one lane per handler."""
        for handler in self._handlers:
            self._lane(service, handler, "alerts").push(self._deliver(handler, alert))

    def recovered(self, service: str, callbacks: Sequence[RecoveryCallback]) -> None:
        """Queue ``callback(service)`` for each recovery callback."""
        for callback in callbacks:
            self._lane(service, callback, "recovery_callbacks").push(
                self._call(callback, (service,), self._callback_timeout, "recovery callback")
            )

    def status_changed(
        self,
        hook: RecoveryHook,
        service: str,
        old: HealthStatus,
        new: HealthStatus,
        result: HealthCheckResult,
    ) -> None:
        """Queue ``hook.on_status_change(service, old, new, result)``."""
        self._lane(service, _HOOK, _HOOK).push(
            self._call(
                hook.on_status_change,
                (service, old, new, result),
                self._callback_timeout,
                "recovery hook",
            )
        )

    def _deliver(self, handler: AlertHandler, alert: Alert) -> Callable[[], Any]:
        async def job() -> None:
            if handler in self._handlers:
                await self._dispatcher.notify(
                    handler, alert, timeout=self._alert_timeout, what="alert handler"
                )

        return job

    def _call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
        what: str,
    ) -> Callable[[], Any]:
        async def job() -> None:
            await self._dispatcher.notify(func, *args, timeout=timeout, what=what)

        return job

    # -- lifecycle --------------------------------------------------------------------

    def forget_handler(self, handler: AlertHandler) -> None:
        """Drop a removed handler's pending alerts (one being delivered finishes)."""
        for lanes in self._lanes.values():
            lane = lanes.pop(("alerts", handler), None)
            if lane is not None:
                lane.drop_pending()

    def runs_in(self, service: str, task: asyncio.Task[Any] | None) -> bool:
        """True if ``task`` is one of ``service``'s lanes (a callback of it is calling)."""
        return any(lane.runs_in(task) for lane in self._lanes.get(service, {}).values())

    async def idle(self, service: str, *, alerts_only: bool = False) -> None:
        """Wait until ``service``'s queued notifications have run (not the caller's own lane).

        ``alerts_only``: wait for the alert handlers' lanes only.
        """
        for (label, _), lane in list(self._lanes.get(service, {}).items()):
            if not alerts_only or label == "alerts":
                await lane.idle()

    async def close(self, service: str, spare: asyncio.Task[Any] | None = None) -> None:
        """Drop ``service``'s pending notifications and cancel running ones (never ``spare``)."""
        for lane in list(self._lanes.pop(service, {}).values()):
            await lane.aclose(spare=spare)

    def services(self) -> list[str]:
        """Services with lanes."""
        return list(self._lanes)

    async def close_all(self) -> None:
        """:meth:`close` every service's lanes (the caller's own lane is spared)."""
        caller = _task()
        for service in self.services():
            await self.close(service, spare=caller)
