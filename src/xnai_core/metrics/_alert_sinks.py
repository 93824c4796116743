"""Alert sinks' delivery counters, read from the live sinks when metrics are collected.

A sink counts as it delivers (:meth:`AlertSink.stats`); the adapters read those
counts at scrape time, so delivery pays nothing for metrics and a sink dropped by
its owner takes its series with it. Labels are the sink's name and kind only, made
safe and bounded like every other label: never a URL, routing key or error text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._sink import Labels

if TYPE_CHECKING:
    from ..alerting._model import SinkStats
    from ..alerting._sink import AlertSink

# Read through sys.modules, not imported: the alerting package needs httpx, which a
# metrics user may not have, and while it was never imported no sink can exist.
_SINK_MODULE = "xnai_core.alerting._sink"


@dataclass(slots=True)
class SinkCounts:
    """The counts of the live sinks sharing one (sink, kind) label pair, summed."""

    sent: int = 0
    retried: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    last_error_at: float | None = None


def _live_sinks() -> list[AlertSink]:
    module = sys.modules.get(_SINK_MODULE)
    if module is None:
        return []
    sinks: list[AlertSink] = module.live_sinks()
    return sinks


def each_sink(labels: Labels) -> list[tuple[AlertSink, tuple[str, str], SinkStats]]:
    """Every live sink, its (sink, kind) label values and its counts now."""
    found = []
    for sink in _live_sinks():
        stats = sink.stats()
        found.append((sink, (labels.sink(stats.name), labels.sink(stats.kind)), stats))
    return found


def sink_counts(labels: Labels) -> dict[tuple[str, str], SinkCounts]:
    """Each live sink's counts by (sink, kind) label values."""
    counts: dict[tuple[str, str], SinkCounts] = {}
    for _, key, stats in each_sink(labels):
        # Two live sinks of one name and kind are one series: their sum (never two
        # samples of one series, which Prometheus would refuse).
        total = counts.setdefault(key, SinkCounts())
        total.sent += stats.sent
        total.retried += stats.retried
        for reason, dropped in stats.dropped_by_reason.items():
            total.dropped[reason] = total.dropped.get(reason, 0) + dropped
        total.queued += stats.queued
        if stats.last_error_at is not None:
            total.last_error_at = max(total.last_error_at or 0.0, stats.last_error_at)
    return dict(sorted(counts.items()))
