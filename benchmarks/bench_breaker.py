"""Per-call overhead of an in-memory circuit breaker, beside the strongest Python peers.

Run: ``.venv/bin/python -m benchmarks.bench_breaker [--calls N] [--repeats R]``

Every row is measured in this one run: the median over R repeats of N calls of
the time per call, minus the bare call of the same kind (``await af()`` for async
rows, ``f()`` for sync rows). The rows take turns within each repeat, so a burst
of noise from a neighbour hits them alike. Shared machines are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from xnai_core import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError


async def af() -> int:
    return 1


def f() -> int:
    return 1


AsyncStep = Callable[[], Awaitable[object]]


async def time_async_rows(
    rows: list[tuple[str, AsyncStep]], calls: int, repeats: int
) -> list[tuple[str, float]]:
    """Median ns per call of each row; rows take turns, so noise hits them alike."""
    samples: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(repeats):
        for label, step in rows:
            start = time.perf_counter_ns()
            for _ in range(calls):
                await step()
            samples[label].append((time.perf_counter_ns() - start) / calls)
    return [(label, statistics.median(samples[label])) for label, _ in rows]


def time_sync_rows(
    rows: list[tuple[str, Callable[[], object]]], calls: int, repeats: int
) -> list[tuple[str, float]]:
    """Median ns per call of each sync row, taking turns like the async rows."""
    samples: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(repeats):
        for label, step in rows:
            start = time.perf_counter_ns()
            for _ in range(calls):
                step()
            samples[label].append((time.perf_counter_ns() - start) / calls)
    return [(label, statistics.median(samples[label])) for label, _ in rows]


def ours(timeout: float | None) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(name=f"bench-{timeout}", timeout=timeout))


def observed(timeout: float | None) -> CircuitBreaker:
    """Ours with the Prometheus hook installed on this breaker only (its own registry)."""
    from prometheus_client import CollectorRegistry

    from xnai_core import events
    from xnai_core.metrics import enable_prometheus

    metrics = enable_prometheus(CollectorRegistry())
    events.remove_hook(metrics.hook)  # not global: the other rows stay unobserved
    breaker = CircuitBreaker(CircuitBreakerConfig(name=f"observed-{timeout}", timeout=timeout))
    breaker.hooks.install(metrics.hook)
    return breaker


async def rejecting(step: AsyncStep) -> None:
    with contextlib.suppress(Exception):  # every peer raises its own "open" error
        await step()


async def async_rows(calls: int, repeats: int) -> list[tuple[str, float]]:
    import aiobreaker
    import circuitbreaker
    import purgatory

    no_timeout = ours(None)
    default = ours(30.0)
    prom_none = observed(None)
    prom_default = observed(30.0)
    cb_peer = circuitbreaker.CircuitBreaker(name="peer")
    cb_peer_af = cb_peer(af)
    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))
    purg_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    purg_af = purg_factory("peer")(af)
    decorated = no_timeout(af)

    async def plain_timeout() -> int:
        async with asyncio.timeout(30):
            return await af()

    rows: list[tuple[str, AsyncStep]] = [
        ("bare await af()", af),
        ("asyncio.timeout(30) around af()", plain_timeout),
        ("xnai-core, timeout=None", lambda: no_timeout.call(af)),
        ("xnai-core, timeout=30 (default)", lambda: default.call(af)),
        ("xnai-core decorator, timeout=None", decorated),
        ("xnai-core + Prometheus hook, timeout=None", lambda: prom_none.call(af)),
        ("xnai-core + Prometheus hook, timeout=30", lambda: prom_default.call(af)),
        ("circuitbreaker 2.1.3", cb_peer_af),
        ("aiobreaker 1.2.0", lambda: aio.call_async(af)),
        ("purgatory 3.0.1 (memory)", purg_af),
    ]
    measured = await time_async_rows(rows, calls, repeats)

    # The cost of a rejected call while open.
    async def boom() -> None:
        raise RuntimeError("down")

    await no_timeout.force_open()
    for _ in range(6):
        await rejecting(lambda: aio.call_async(boom))
    purg_boom = purg_factory("peer-open", threshold=1)(boom)
    await rejecting(purg_boom)
    cb_open = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=600)
    cb_boom = cb_open(boom)
    await rejecting(cb_boom)
    open_rows: list[tuple[str, AsyncStep]] = [
        ("open: xnai-core rejects", lambda: rejecting(lambda: no_timeout.call(af))),
        ("open: circuitbreaker 2.1.3 rejects", lambda: rejecting(cb_boom)),
        ("open: aiobreaker 1.2.0 rejects", lambda: rejecting(lambda: aio.call_async(boom))),
        ("open: purgatory 3.0.1 rejects", lambda: rejecting(purg_boom)),
    ]
    measured += await time_async_rows(open_rows, calls // 4, repeats)
    try:
        await no_timeout.call(af)
    except CircuitOpenError:
        pass
    else:
        raise AssertionError("forced-open breaker admitted a call")
    return measured


def sync_rows(calls: int, repeats: int) -> list[tuple[str, float]]:
    import pybreaker

    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("sync bare f()", f),
        ("pybreaker 1.4.1 (sync, memory)", lambda: pyb.call(f)),
    ]
    return time_sync_rows(rows, calls, repeats)


async def _instruction_probe(kind: str, calls: int) -> None:
    """The loop that ``--instructions`` runs under callgrind: one kind of call, N times."""
    if kind.startswith("prometheus"):
        breaker = observed(None if kind.endswith("timeout=None") else 30.0)
    else:
        breaker = ours(None if kind == "timeout=None" else 30.0)
    if kind == "bare":
        for _ in range(calls):
            await af()
    else:
        for _ in range(calls):
            await breaker.call(af)


def instruction_rows(calls: int) -> list[tuple[str, float]]:
    """Instructions per call (valgrind callgrind): a count that noise cannot move.

    Each kind runs twice, with 0 and ``calls`` calls; the difference over ``calls`` is
    the cost of one call, start-up excluded.
    """
    rows = []
    seeded = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
    kinds = ("bare", "timeout=None", "timeout=30", "prometheus, timeout=None")
    for kind in kinds:
        totals = []
        for n in (0, calls):
            done = subprocess.run(
                [
                    "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                    sys.executable, "-m", "benchmarks.bench_breaker", "--probe", kind, str(n),
                ],
                capture_output=True, text=True, check=True, env=seeded,
            )  # fmt: skip
            match = re.search(r"Collected : (\d+)", done.stderr)
            assert match is not None, done.stderr[-500:]
            totals.append(int(match.group(1)))
        rows.append((kind, (totals[1] - totals[0]) / calls))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per call under valgrind (bare, ours with/without timeout)",
    )
    parser.add_argument("--probe", nargs=2, metavar=("KIND", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        asyncio.run(_instruction_probe(args.probe[0], int(args.probe[1])))
        return 0
    rows = asyncio.run(async_rows(args.calls, args.repeats))
    bare = rows[0][1]
    no_timeout = dict(rows)["xnai-core, timeout=None"]
    print(f"{'variant':42} {'ns/call':>9} {'overhead ns':>12} {'x bare':>7} {'x ours(None)':>12}")
    for label, ns in rows:
        over = ns - bare
        extra = f"{(ns - bare) / (no_timeout - bare):12.2f}" if label != rows[0][0] else ""
        print(f"{label:42} {ns:9.0f} {over:12.0f} {ns / bare:7.2f} {extra}")
    srows = sync_rows(args.calls, args.repeats)
    sbare = srows[0][1]
    for label, ns in srows:
        print(f"{label:42} {ns:9.0f} {ns - sbare:12.0f} {ns / sbare:7.2f}")
    if args.instructions:
        irows = instruction_rows(100_000)
        ibare = irows[0][1]
        inone = irows[1][1] - ibare
        title = "instructions per call (callgrind)"
        print(f"\n{title:42} {'instr':>9} {'overhead':>12} {'x ours(None)':>12}")
        for label, count in irows:
            over = count - ibare
            ratio = f"{over / inone:12.2f}" if label != "bare" else ""
            print(f"{label:42} {count:9.0f} {over:12.0f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
