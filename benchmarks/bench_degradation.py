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
- ``redis hung``: the server was SIGSTOPped (connections accepted, nothing answered).

One warm-up call per scenario comes first (it is the call that finds Redis down), then
``--calls`` timed calls; the table gives the median and the 90th percentile in ms and the
median's difference to ``no cache``. Run it under an older checkout (``PYTHONPATH=src``
of that tree) to compare before and after; it uses only APIs both have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis.asyncio as aioredis

from xnai_core import CacheFirstStrategy, RedisCache, ServiceDegradationManager


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_server() -> Iterator[subprocess.Popen[bytes]]:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="xnai-bench-degradation-")
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    process.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def primary(prompt: str) -> dict[str, str]:
    return {"answer": prompt}


async def timed_calls(manager: ServiceDegradationManager, calls: int, tag: str) -> list[float]:
    await manager.call_service("llm", primary, f"{tag}-warm-up")
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await manager.call_service("llm", primary, f"{tag}-{i}")
        times.append(time.perf_counter() - started)
    return times


async def scenario(name: str, calls: int) -> list[float]:
    manager = ServiceDegradationManager()
    if name == "no cache":
        manager.configure_service("llm")
        return await timed_calls(manager, calls, name)
    with private_server() as server:
        client = aioredis.Redis(host="127.0.0.1", port=server.port)  # type: ignore[attr-defined]
        cache = RedisCache(client, prefix=f"bench-{os.getpid()}:")
        manager.add_service_strategy("llm", CacheFirstStrategy(cache, ttl=60), priority=10)
        await manager.call_service("llm", primary, "connect")  # a pooled connection exists
        if name == "redis refused":
            server.kill()
            server.wait()
        elif name == "redis hung":
            server.send_signal(signal.SIGSTOP)
        try:
            return await timed_calls(manager, calls, name.replace(" ", "-"))
        finally:
            if name == "redis hung":
                server.send_signal(signal.SIGCONT)
            aclose = getattr(cache, "aclose", None)
            if aclose is not None:
                await aclose()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 2)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = []
    baseline = None
    for name in ("no cache", "redis up", "redis refused", "redis hung"):
        times = await scenario(name, args.calls)
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else max(times)
        baseline = median if baseline is None else baseline
        rows.append((name, median, p90, median - baseline))
    header = f"{'scenario':<15} {'median ms':>10} {'p90 ms':>10} {'vs no cache':>12}"
    print(f"{header}  ({args.calls} calls)")
    for name, median, p90, delta in rows:
        print(f"{name:<15} {_ms(median):>10} {_ms(p90):>10} {_ms(delta):>12}")


if __name__ == "__main__":
    asyncio.run(main())
