"""One worker of a multiprocess-mode app, for the tests: a Redis-backed circuit ``llm``.

``python -m tests.metrics_shared_worker REDIS_URL PREFIX hold``: loads the circuit, forces
it open, prints ``ready`` and keeps it alive until its standard input closes.
``... drop``: loads the circuit, drops it (collected, as a breaker made per request is),
publishes this worker's metrics and exits. ``PROMETHEUS_MULTIPROC_DIR`` must be set.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import redis.asyncio as aioredis

from xnai_core import create_redis_circuit_breaker
from xnai_core.metrics import enable_prometheus


async def main(url: str, prefix: str, role: str) -> None:
    metrics = enable_prometheus(publish_interval=3600)  # published below, when told
    client = aioredis.Redis.from_url(url)
    breaker = create_redis_circuit_breaker("llm", client, key_prefix=prefix, op_timeout=2)
    await breaker.store.start()  # type: ignore[attr-defined]
    if role == "hold":
        await breaker.force_open()
        metrics.publish()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    else:
        metrics.publish()
        await breaker.close()
        del breaker
        gc.collect()
        metrics.publish()
        print("dropped", flush=True)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
