"""What a Redis cache that is down costs a call: median call time, no cache vs Redis cache.

Run: ``.venv/bin/python -m benchmarks.bench_degradation [--calls N]``

A ``ServiceDegradationManager`` with ``CacheFirstStrategy(RedisCache(client))`` in front
of a trivial primary, the client built as the docs build it (``redis.asyncio.Redis(host=,
port=)``: redis-py's default retry on), ``op_timeout`` at its default 0.5 s. Every call
asks a new prompt (a miss: lookup, primary, write). Scenarios, each against a private
redis-server on a free loopback port:

- ``no cache``: the same manager without the cache strategy;
- ``redis up``: the server answers;
- ``redis refused``: the server was killed (connections refused);
- ``redis hung``: the server was SIGSTOPped (connections accepted, nothing answered);
- ``redis drops``: a loopback proxy (``tests/fault_proxy.py``) closes each connection in
  place of its reply: Redis acts, the client never hears, and redis-py retries;
- ``down, cached``: killed, and every call asks a prompt cached before (out of reach now:
  the primary answers);
- ``down, fails``: killed, and the primary fails: the stale lookup is skipped too, and the
  fallback answers. Compared with ``no cache, fails``: the same failing primary and
  fallback with no cache at all.

One warm-up call per scenario comes first (it is the call that finds Redis down), then
``--calls`` timed calls; the table gives the median and the 90th percentile in ms and the
median's difference to its no-cache scenario. Run it under an older checkout (``PYTHONPATH=src``
of that tree) to compare before and after; it uses only APIs both have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import time

import redis.asyncio as aioredis
from tests.conftest import PrivateRedis
from tests.fault_proxy import FaultProxy

from xnai_core import (
    CacheFirstStrategy,
    DegradedModeStrategy,
    RedisCache,
    ServiceDegradationManager,
)

# (name, the no-cache scenario it is compared with)
SCENARIOS = (
    ("no cache", "no cache"),
    ("no cache, fails", "no cache, fails"),
    ("redis up", "no cache"),
    ("redis refused", "no cache"),
    ("redis hung", "no cache"),
    ("redis drops", "no cache"),
    ("down, cached", "no cache"),
    ("down, fails", "no cache, fails"),
)


async def primary(prompt: str) -> dict[str, str]:
    return {"answer": prompt}


async def failing(prompt: str) -> dict[str, str]:
    raise ConnectionError("primary down")


async def timed_calls(manager: ServiceDegradationManager, calls: int, name: str) -> list[float]:
    fn = failing if name.endswith("fails") else primary
    same = name.startswith("down,")  # a prompt cached before the outage
    await manager.call_service("llm", fn, "cached" if same else f"{name}-warm-up")
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await manager.call_service("llm", fn, "cached" if same else f"{name}-{i}")
        times.append(time.perf_counter() - started)
    return times


async def scenario(name: str, calls: int) -> list[float]:
    manager = ServiceDegradationManager()
    fallback = DegradedModeStrategy({"answer": "sorry"})
    manager.add_service_strategy("llm", fallback)
    if name.startswith("no cache"):
        return await timed_calls(manager, calls, name)
    server = PrivateRedis()  # a redis-server of its own on a free port: safe to kill
    server.start()
    try:
        return await _timed_with_cache(manager, server, name, calls)
    finally:
        server.cleanup()


async def _timed_with_cache(
    manager: ServiceDegradationManager, server: PrivateRedis, name: str, calls: int
) -> list[float]:
    port = server.port
    proxy = None
    if name == "redis drops":
        proxy = FaultProxy(port)
        await proxy.start()
        port = proxy.port
    client = aioredis.Redis(host="127.0.0.1", port=port)  # default retry on
    cache = RedisCache(client, prefix=f"bench-{os.getpid()}:")
    strategy = CacheFirstStrategy(cache, ttl=60, stale_if_error=600)
    manager.add_service_strategy("llm", strategy, priority=10)
    await manager.call_service("llm", primary, "cached")  # a pooled connection exists
    await strategy.flush()
    if name == "redis hung":
        server.pause()
    elif proxy is not None:
        proxy.drop_replies(count=None)
    elif name != "redis up":
        server.kill()
    try:
        return await timed_calls(manager, calls, name)
    finally:
        if name == "redis hung":
            server.resume()
        await cache.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 2)
        if proxy is not None:
            await proxy.aclose()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = []
    medians: dict[str, float] = {}
    for name, versus in SCENARIOS:
        times = await scenario(name, args.calls)
        median = medians[name] = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else max(times)
        rows.append((name, median, p90, median - medians[versus], versus))
    header = f"{'scenario':<16} {'median ms':>10} {'p90 ms':>10} {'delta ms':>9}  vs"
    print(f"{header}  ({args.calls} calls)")
    for name, median, p90, delta, versus in rows:
        print(f"{name:<16} {_ms(median):>10} {_ms(p90):>10} {_ms(delta):>9}  {versus}")


if __name__ == "__main__":
    asyncio.run(main())
