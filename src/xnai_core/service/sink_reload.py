"""Alert sinks across a config reload: keep what did not change, hand what is under way on.

- a sink whose ``[[alerts]]`` table did not change is kept (its queue, retries in progress,
  active alerts and reminders);
- a new or changed sink is told of every active alert it takes (``AlertSink.adopt``), so
  that its resolve comes later; a changed sink still pointing where its predecessor did
  takes over silently what that one had delivered. It delivers only once the sinks it
  replaces have flushed, so an alert's notices never overtake each other;
- a removed sink (or the predecessor of a changed one) flushes what it owes and resolves
  nothing (the outage is not over); the alerts it announced that stay open are named.

When the whole runtime is rebuilt (a new monitor), the alerts active in the old monitor
are carried into the new one (``emit_alert``: kept sinks already hold them), so that the
new monitor resolves them when their service is back; what a kept sink still holds that
the new monitor does not (a removed service, an escalation whose recovery state was
rebuilt) is resolved there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._redact import redact
from ..health.alerts import Alert
from ..recovery import RecoveryActionType
from .config import SinkSpec
from .sinks import build_sinks

__all__ = ["SinkHandover", "sink_identity"]

logger = logging.getLogger("xnai_core.service")

# The recovery manager's escalation: its latch lives in the recovery state, not the monitor.
_ESCALATION = RecoveryActionType.MANUAL_INTERVENTION.value


def sink_identity(spec: SinkSpec) -> tuple[object, ...]:
    """What makes a sink the same across a reload (compared in memory, never shown)."""
    return (
        spec.type,
        spec.name,
        tuple(sorted((k, repr(v)) for k, v in spec.options.items())),
        tuple(sorted(spec.secrets.items())),
    )


@dataclass
class SinkHandover:
    """One reload's plan for the sinks; see the module docstring."""

    sinks: list[Any]  # in the new config's order
    kept: list[Any]
    gone: list[tuple[SinkSpec, Any]]
    fresh: list[tuple[Any, Any]]  # (new sink, the sink of that type and name it replaces)
    spare: list[Any] = field(default_factory=list)  # built, then not needed (kept instead)
    changes: list[str] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        old_specs: Sequence[SinkSpec],
        old_sinks: Sequence[Any],
        new_specs: Sequence[SinkSpec],
        *,
        built: Sequence[Any] | None = None,
    ) -> SinkHandover | None:
        """The plan, or None when nothing changed; ``built``: sinks already made for
        ``new_specs`` (a full rebuild), else the new and changed ones are built here."""
        pool: dict[tuple[object, ...], list[tuple[SinkSpec, Any]]] = {}
        for spec, sink in zip(old_specs, old_sinks, strict=True):
            pool.setdefault(sink_identity(spec), []).append((spec, sink))
        same = []
        for spec in new_specs:
            matches = pool.get(sink_identity(spec))
            same.append(matches.pop(0)[1] if matches else None)
        gone = [pair for matches in pool.values() for pair in matches]
        wanted = [spec for spec, sink in zip(new_specs, same, strict=True) if sink is None]
        if built is None and not gone and not wanted:
            return None
        made = iter(build_sinks(wanted) if built is None else ())
        by_name = {(spec.type, spec.name): sink for spec, sink in gone}
        handover = cls(sinks=[], kept=[], gone=gone, fresh=[])
        for index, (spec, sink) in enumerate(zip(new_specs, same, strict=True)):
            if sink is not None:
                handover.kept.append(sink)
                if built is not None:
                    handover.spare.append(built[index])
            else:
                sink = next(made) if built is None else built[index]
                handover.fresh.append((sink, by_name.get((spec.type, spec.name))))
                handover.changes.append(f"alert sink {redact(spec.name)!r} added or changed")
            handover.sinks.append(sink)
        names = {(spec.type, spec.name) for spec in new_specs}
        handover.changes[:0] = [
            f"alert sink {redact(spec.name)!r} removed"
            for spec, _ in gone
            if (spec.type, spec.name) not in names
        ]
        return handover

    def attach(self, monitor: Any, router: Any, active: Iterable[Alert]) -> None:
        """The same monitor keeps running: the gone sinks stop taking alerts, the fresh ones
        start, told of ``active``. No await here: no alert slips between the two."""
        active = list(active)
        for _, sink in self.gone:
            monitor.remove_alert_handler(sink)
            router.remove_alert_handler(sink)
            sink.retire()  # the router's managers keep calling it
        for sink, predecessor in self.fresh:
            sink.pause()
            sink.adopt(active, predecessor=predecessor)
            monitor.add_alert_handler(sink)
            router.add_alert_handler(sink)

    def move(
        self,
        old: tuple[Any, Any],
        new: tuple[Any, Any],
        active: Iterable[Alert],
        services: Collection[str],
    ) -> list[Alert]:
        """A full rebuild: kept sinks move from the ``old`` (monitor, router) to the ``new``
        one (whose fresh sinks are already added), in place of their spare twins; fresh
        sinks are told of what the new monitor carries on (returned): the ``active``
        alerts of the ``services`` it watches, escalations aside (their latch was in the
        recovery state, rebuilt)."""
        old_monitor, old_router = old
        new_monitor, new_router = new
        carried = [
            alert for alert in active if alert.kind != _ESCALATION and alert.service in services
        ]
        for spare, sink in zip(self.spare, self.kept, strict=True):
            new_monitor.remove_alert_handler(spare)
            new_router.remove_alert_handler(spare)
            old_monitor.remove_alert_handler(sink)
            old_router.remove_alert_handler(sink)
            new_monitor.add_alert_handler(sink)
            new_router.add_alert_handler(sink)
        for _, sink in self.gone:
            sink.retire()
        for sink, predecessor in self.fresh:
            sink.pause()
            sink.adopt(carried, predecessor=predecessor)
        return carried

    async def carry(self, monitor: Any, carried: Sequence[Alert]) -> None:
        """Hand ``carried`` to the new ``monitor`` (kept and fresh sinks already hold them:
        no second message), then resolve at the kept sinks what it does not carry."""
        for alert in carried:
            await monitor.emit_alert(alert)
        keys = {alert.key for alert in carried}
        for sink in self.kept:
            sink.resolve_all_but(keys, "resolved: no longer tracked after a reload")

    def name_open(self) -> None:
        """A WARNING per gone sink naming the alerts it announced that stay open there."""
        moved = {
            id(p) for s, p in self.fresh if p is not None and p.destination() == s.destination()
        }
        for spec, sink in self.gone:
            open_keys = [] if id(sink) in moved else sink.told_active()
            if open_keys:
                logger.warning(
                    "alert sink %r removed: %d alert(s) it announced stay open there "
                    "(not resolved: the outage is not over): %s",
                    redact(spec.name),
                    len(open_keys),
                    ", ".join(open_keys),
                )

    async def finish(self, deadline: float, *, flush: bool = True) -> None:
        """Name what stays open at the gone sinks and flush them (unless the caller's
        teardown does both), close the spares; then let the fresh sinks deliver."""
        try:
            closing = [sink.aclose(0.0) for sink in self.spare]
            if flush:
                self.name_open()
                closing += [sink.aclose(deadline) for _, sink in self.gone]
            await asyncio.gather(*closing, return_exceptions=True)
        finally:
            for sink, _ in self.fresh:
                sink.resume()
