"""In-process aggregation: counters and bucket arrays that a collector reads at scrape.

A call through an observed breaker adds one to an array slot under a short lock;
turning that into Prometheus samples (cumulative buckets, label sets) waits for
the scrape, so the hot path never pays for a metrics library.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator

from ..events import CallKind, CallRecorder

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds in seconds (and +Inf) of the call and check duration histograms;
the seed's default timeout is 30 s."""

HISTOGRAM_KINDS: tuple[CallKind, ...] = ("successful", "failed", "ignored", "timeout")
"""The call outcomes timed by ``xnai_circuitbreaker_calls_seconds`` (rejections are counted)."""


class BucketArray:
    """One histogram: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """Prometheus buckets (``le`` as text, cumulative counts) and the sum."""
        running = 0
        buckets = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets, self.total


class Aggregate:
    """Everything the in-process Prometheus sink has recorded, behind one lock.

    Implements :class:`~xnai_core.metrics._sink.Sink`.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, ...], BucketArray] = {}
        self.not_permitted_calls: defaultdict[str, int] = defaultdict(int)
        self.fallback_calls: defaultdict[str, int] = defaultdict(int)
        self.degradation_calls: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.degraded: dict[str, bool] = {}
        self.checks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.check_seconds: dict[tuple[str, ...], BucketArray] = {}
        self.statuses: dict[str, str] = {}
        self.alerts: dict[tuple[str, str], bool] = {}
        self.recoveries: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.escalations: dict[str, bool] = {}

    def call_recorder(self, breaker: str) -> CallRecorder:
        # Every kind's series exists from the start, so rate() sees the first call.
        arrays = {}
        with self.lock:
            for kind in HISTOGRAM_KINDS:
                arrays[kind] = self.calls.setdefault((breaker, kind), BucketArray())
            self.not_permitted_calls[breaker] += 0
            self.fallback_calls[breaker] += 0
        # acquire()/release() rather than `with`: half the cost on this path.
        acquire, release = self.lock.acquire, self.lock.release
        bounds, rejected = LATENCY_BUCKETS, self.not_permitted_calls

        def record(kind: CallKind, seconds: float) -> None:
            if kind == "not_permitted":
                with self.lock:
                    rejected[breaker] += 1
                return
            array = arrays[kind]
            slot = bisect_left(bounds, seconds)
            acquire()
            array.counts[slot] += 1
            array.total += seconds
            release()  # nothing above can raise: the lock cannot be left held

        return record

    def fallback(self, breaker: str) -> None:
        with self.lock:
            self.fallback_calls[breaker] += 1

    def state(self, breaker: str, state: str) -> None:
        """Nothing to keep: the collector reads states from the live breakers."""

    def redis_available(self, breaker: str, available: bool) -> None:
        """Nothing to keep: the collector reads the link from the live breakers."""

    def degradation(self, service: str, source: str, degraded: bool) -> None:
        with self.lock:
            self.degradation_calls[service, source] += 1
            self.degraded[service] = degraded

    def health(self, service: str, result: str, status: str, seconds: float) -> None:
        with self.lock:
            self.checks[service, result] += 1
            array = self.check_seconds.get((service,))
            if array is None:
                array = self.check_seconds[service,] = BucketArray()
            array.observe(seconds)
            self.statuses[service] = status

    def alert(self, service: str, alert: str, active: bool) -> None:
        self.alerts[service, alert] = active

    def recovery(self, service: str, action: str, result: str) -> None:
        with self.lock:
            self.recoveries[service, action, result] += 1

    def escalated(self, service: str, escalated: bool) -> None:
        self.escalations[service] = escalated

    def histograms(
        self, arrays: dict[tuple[str, ...], BucketArray]
    ) -> Iterator[tuple[tuple[str, ...], list[tuple[str, float]], float]]:
        """A consistent copy of ``arrays``: labels, cumulative buckets, sum."""
        with self.lock:
            copied = [(labels, array.cumulative()) for labels, array in arrays.items()]
        for labels, (buckets, total) in copied:
            yield labels, buckets, total
