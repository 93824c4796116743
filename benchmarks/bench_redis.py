"""Redis-backed circuit breakers: per-call cost, Redis commands per call, trip propagation.

Run: ``.venv/bin/python -m benchmarks.bench_redis [--calls N] [--repeats R]``
(the peers come from the ``bench`` extra: pybreaker 1.4.1, purgatory 3.0.1,
aiobreaker-redis 0.1.0).

Everything runs in this one run, against a private redis-server started on a
free loopback port (so INFO commandstats counts only our calls):

- ns per successful call on a closed circuit: the median over R repeats of N
  calls, for a bare ``await af()``, the in-memory breaker, the Redis-backed
  breaker, a bare redis.asyncio PING, and the Redis backends of the peers;
- Redis commands per call, from INFO commandstats deltas over those calls;
- calls per second with 100 concurrent tasks;
- trip propagation: another OS process registers a listener and reports when its
  breaker sees the circuit open; we trip it here and take the difference;
- the same trip propagation, and the call latency (p50, p99, worst) of 100 concurrent
  callers of which 10% fail (closed calls, failure reports, trips, rejections, half-open
  trials), with every reply held 1 ms by the test suite's fault proxy
  (``tests/fault_proxy.py``) in front of the server; and how late the fallbacks of 400
  calls timing out at once answer under that delay (their failure reports go on behind).

Shared 2-core machines are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from tests.fault_proxy import FaultProxy

from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    create_redis_circuit_breaker,
)

Step = Callable[[], Awaitable[object]]
SETUP_COMMANDS = {"info", "client|setinfo", "client|maint_notifications", "hello", "select"}


async def af() -> int:
    return 1


def f() -> int:
    return 1


# -- a private server ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_server() -> Iterator[int]:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="xnai-bench-redis-")
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        yield port
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def command_total(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict) and name.removeprefix("cmdstat_") not in SETUP_COMMANDS
    )


# -- timing -------------------------------------------------------------------


@dataclass
class Row:
    name: str
    ns_per_call: float
    commands_per_call: float | None
    concurrent_calls_per_s: float | None


async def measure(
    name: str,
    step: Step,
    calls: int,
    repeats: int,
    counter: aioredis.Redis | None,
    concurrent: bool = True,
) -> Row:
    for _ in range(min(calls, 200)):  # warm up: connections, scripts, caches
        await step()
    before = await command_total(counter) if counter is not None else 0
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(calls):
            await step()
        samples.append((time.perf_counter_ns() - started) / calls)
    commands = None
    if counter is not None:
        commands = (await command_total(counter) - before) / (calls * repeats)
    rate = None
    if concurrent:
        per_task = max(calls // 100, 10)

        async def worker() -> None:
            for _ in range(per_task):
                await step()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(100)))
        rate = 100 * per_task / (time.perf_counter() - start)
    return Row(name, statistics.median(samples), commands, rate)


# -- trip propagation -------------------------------------------------------------


async def watch(port: int, names: list[str]) -> None:
    """Child process: report when each circuit is first seen open here."""
    client = aioredis.Redis(port=port)
    seen: dict[str, float] = {}
    breakers = []
    for name in names:
        breaker = create_redis_circuit_breaker(
            name, client, failure_threshold=1, resync_interval=60, key_prefix="bench:cb:"
        )

        def listener(who: str, old: CircuitState, new: CircuitState, why: str) -> None:
            if new is CircuitState.OPEN:
                seen.setdefault(who, time.time())

        breaker.add_listener(listener)
        await breaker.store.start()  # type: ignore[attr-defined]
        breakers.append(breaker)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    print(json.dumps(seen), flush=True)
    for breaker in breakers:
        await breaker.close()
    await client.aclose()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn_watcher(port: int, names: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_redis", "--watch", str(port), *names],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


async def propagation(port: int, rounds: int, tag: str = "prop") -> list[float]:
    """Milliseconds from the start of the failing call here to the listener there.

    An upper bound: it includes this process's own failure round trip.
    """
    names = [f"{tag}-{i}" for i in range(rounds)]
    child = spawn_watcher(port, names)
    assert child.stdout is not None
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, child.stdout.readline)
    assert line.strip() == "ready", line
    client = aioredis.Redis(port=port)
    tripped: dict[str, float] = {}

    async def boom() -> None:
        raise RuntimeError("down")

    for name in names:
        breaker = create_redis_circuit_breaker(
            name, client, failure_threshold=1, key_prefix="bench:cb:"
        )
        await breaker.store.start()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        tripped[name] = time.time()
        with contextlib.suppress(RuntimeError):
            await breaker.call(boom)
        await breaker.close()
    out = await loop.run_in_executor(None, child.stdout.read)
    child.wait()
    await client.aclose()
    seen = json.loads(out.strip().splitlines()[-1])
    return [(seen[name] - tripped[name]) * 1000 for name in names if name in seen]


# -- under the fault proxy's delay ---------------------------------------------------

PROXY_DELAY = 0.001


async def latencies(port: int, rounds: int) -> list[float]:
    """Milliseconds per call: ``rounds`` x 100 concurrent callers, 10% failing."""
    client = aioredis.Redis(port=port)
    breaker = create_redis_circuit_breaker(
        "bench-worst",
        client,
        failure_threshold=5,
        recovery_timeout=0.02,
        half_open_max_calls=3,
        key_prefix="bench:cb:",
    )
    await breaker.store.start()  # type: ignore[attr-defined]
    rng = random.Random(7)
    samples: list[float] = []

    async def boom() -> None:
        raise RuntimeError("down")

    async def one(fails: bool) -> None:
        started = time.perf_counter()
        with contextlib.suppress(RuntimeError, CircuitOpenError):
            await breaker.call(boom if fails else af)
        samples.append((time.perf_counter() - started) * 1000)

    for _ in range(rounds):
        await asyncio.gather(*(one(rng.random() < 0.1) for _ in range(100)))
    await breaker.close()
    await client.aclose()
    return samples


async def fallback_lateness(port: int, rounds: int) -> list[float]:
    """Milliseconds from each timeout to its fallback's answer: ``rounds`` x 400 calls
    with a fallback that time out at the same instant (the failure reports go on)."""
    client = aioredis.Redis(port=port)
    samples: list[float] = []

    async def hanging(ended: list[float]) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            ended.append(time.perf_counter())

    async def one(breaker: CircuitBreaker) -> None:
        ended: list[float] = []
        await breaker.call(hanging, ended)
        samples.append((time.perf_counter() - ended[0]) * 1000)

    for round_ in range(rounds):
        breaker = create_redis_circuit_breaker(
            f"bench-fallback-{round_}",
            client,
            failure_threshold=5,
            timeout=0.1,
            fallback_func=lambda ended: None,
            key_prefix="bench:cb:",
        )
        await breaker.store.start()  # type: ignore[attr-defined]
        await asyncio.gather(*(one(breaker) for _ in range(400)))
        await breaker.close()
    await client.aclose()
    return samples


async def under_delay(port: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Call latencies, trip propagation and fallback lateness with every reply held
    ``PROXY_DELAY``."""
    proxy = FaultProxy(port)
    await proxy.start()
    proxy.delay_replies(PROXY_DELAY)
    try:
        return (
            await latencies(proxy.port, rounds),
            await propagation(proxy.port, 10, "delayed"),
            await fallback_lateness(proxy.port, 5),
        )
    finally:
        await proxy.aclose()


# -- the variants -------------------------------------------------------------------


@dataclass
class Results:
    rows: list[Row]
    hops: list[float]
    delayed_calls: list[float]
    delayed_hops: list[float]
    fallbacks: list[float]


async def run(calls: int, repeats: int, port: int) -> Results:
    import pybreaker
    from aiobreaker_redis.breaker import CircuitBreaker as AioRedisBreaker
    from purgatory import AsyncCircuitBreakerFactory
    from purgatory.service._async.unit_of_work import AsyncRedisUnitOfWork

    url = f"redis://127.0.0.1:{port}/0"
    counter = aioredis.Redis.from_url(url)
    rows: list[Row] = []
    memory_calls = calls * 10

    rows.append(await measure("bare await af()", af, memory_calls, repeats, None))

    memory = CircuitBreaker(CircuitBreakerConfig(name="bench-memory"))
    rows.append(
        await measure("xnai-core, in-memory", lambda: memory.call(af), memory_calls, repeats, None)
    )

    ours_client = aioredis.Redis.from_url(url)
    ours = create_redis_circuit_breaker("bench-redis", ours_client)
    rows.append(
        await measure(
            "xnai-core, Redis-backed", lambda: ours.call(af), memory_calls, repeats, counter
        )
    )

    ping_client = aioredis.Redis.from_url(url)
    rows.append(await measure("redis.asyncio PING", ping_client.ping, calls, repeats, counter))

    sync_client = redis.Redis.from_url(url)

    async def sync_ping() -> object:
        return sync_client.ping()

    rows.append(await measure("redis-py sync PING", sync_ping, calls, repeats, counter))

    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, sync_client, namespace="bench")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)

    async def pybreaker_call() -> object:
        return pyb.call(f)

    rows.append(
        await measure(
            "pybreaker 1.4.1, CircuitRedisStorage", pybreaker_call, calls, repeats, counter
        )
    )

    factory = AsyncCircuitBreakerFactory(
        default_threshold=5, default_ttl=60, uow=AsyncRedisUnitOfWork(url)
    )
    await factory.initialize()

    async def purgatory_bare() -> int:
        return 1

    purgatory_call: Step = factory("bench-purgatory")(purgatory_bare)

    rows.append(await measure("purgatory 3.0.1, Redis", purgatory_call, calls, repeats, counter))

    aio_client = aioredis.Redis.from_url(url)
    aio = AioRedisBreaker(
        "bench-aiobreaker", failure_threshold=5, recovery_timeout=60, redis_client=aio_client
    )
    rows.append(
        await measure("aiobreaker-redis 0.1.0", lambda: aio.call(af), calls, repeats, counter)
    )

    await ours.close()
    for client in (ours_client, ping_client, aio_client, counter):
        await client.aclose()
    sync_client.close()
    repository: Any = factory.uow.contexts
    with contextlib.suppress(Exception):
        await repository.redis.aclose()

    hops = await propagation(port, rounds=10)
    delayed_calls, delayed_hops, fallbacks = await under_delay(port, rounds=max(calls // 100, 10))
    return Results(rows, hops, delayed_calls, delayed_hops, fallbacks)


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def print_table(results: Results) -> None:
    rows, hops = results.rows, results.hops
    bare = rows[0].ns_per_call
    memory = next(r for r in rows if r.name == "xnai-core, in-memory").ns_per_call
    ping = next(r for r in rows if r.name == "redis.asyncio PING").ns_per_call
    print(
        "| variant | ns/call | overhead ns (minus bare await) | x in-memory breaker "
        "| x redis.asyncio PING | Redis commands/call | calls/s, 100 tasks |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        commands = "" if row.commands_per_call is None else f"{row.commands_per_call:.4f}"
        rate = "" if row.concurrent_calls_per_s is None else f"{row.concurrent_calls_per_s:,.0f}"
        print(
            f"| {row.name} | {row.ns_per_call:,.0f} | {row.ns_per_call - bare:,.0f} "
            f"| {row.ns_per_call / memory:.2f}x | {row.ns_per_call / ping:.3f}x "
            f"| {commands} | {rate} |"
        )
    if hops:
        print()
        print(
            f"Trip propagation to another process ({len(hops)} trips, from the start of "
            "the failing call here to the listener there): "
            f"median {statistics.median(hops):.2f} ms, max {max(hops):.2f} ms, "
            f"min {min(hops):.2f} ms"
        )
    calls, delayed = results.delayed_calls, results.delayed_hops
    if calls:
        print()
        print(
            f"Under the fault proxy, every reply {PROXY_DELAY * 1000:g} ms late: "
            f"{len(calls):,} calls (100 at a time, 10% failing): "
            f"p50 {_percentile(calls, 0.5):.2f} ms, p99 {_percentile(calls, 0.99):.2f} ms, "
            f"worst {max(calls):.2f} ms"
        )
    if delayed:
        print(
            f"Trip propagation under the same delay ({len(delayed)} trips): "
            f"median {statistics.median(delayed):.2f} ms, max {max(delayed):.2f} ms"
        )
    late = results.fallbacks
    if late:
        print(
            f"Fallbacks under the same delay ({len(late):,} calls with a fallback timing out "
            f"400 at once): late by p50 {_percentile(late, 0.5):.2f} ms, "
            f"p99 {_percentile(late, 0.99):.2f} ms, worst {max(late):.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat (Redis rows)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--watch", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Transitions are logged at WARNING; the table is what this run is for.
    logging.getLogger("xnai_core").setLevel(logging.ERROR)
    if args.watch:
        asyncio.run(watch(int(args.watch[0]), args.watch[1:]))
        return
    with private_server() as port:
        results = asyncio.run(run(args.calls, args.repeats, port))
    print(f"python {sys.version.split()[0]}, redis-py {redis.__version__}, {os.cpu_count()} cores")
    print(f"{args.calls} calls x {args.repeats} repeats (x10 for the bare and in-memory rows)\n")
    print_table(results)


if __name__ == "__main__":
    main()
