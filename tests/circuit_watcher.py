"""A process using a shared circuit, for the CLI tests: it prints each state it sees.

``python -m tests.circuit_watcher REDIS_URL PREFIX NAME``: prints ``ready`` once its
breaker has loaded the circuit, then ``state <state> <time.monotonic()>`` on each change
(its resync is a minute, so only the circuit's own messages bring a change quickly).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import redis.asyncio as aioredis

from xnai_core import CircuitOpenError, CircuitState, create_redis_circuit_breaker


async def main(url: str, prefix: str, name: str) -> None:
    client = aioredis.Redis.from_url(url)
    breaker = create_redis_circuit_breaker(
        name, client, key_prefix=prefix, resync_interval=60, recovery_timeout=60
    )

    def changed(_: str, old: CircuitState, new: CircuitState, reason: str) -> None:
        print(f"state {new.value} {time.monotonic():.6f}", flush=True)

    breaker.add_listener(changed)
    await breaker.call(lambda: None)
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(CircuitOpenError):
            await breaker.call(lambda: None)
        await asyncio.sleep(0.01)
    await breaker.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
