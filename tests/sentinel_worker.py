"""One OS process using a shared circuit through Redis Sentinel, steered line by line.

``python -m tests.sentinel_worker '<json spec>'``: the spec gives the sentinels' ports
(``sentinels``), the ``service`` name, the breaker's ``name``, ``prefix`` and ``config``.
The client is built as users build it: ``Sentinel([...]).master_for(service)``. The
worker prints ``{"ready": true}`` once its breaker has loaded the circuit, then reads one
JSON order a line from stdin and answers each with one JSON line:

- ``{"do": "trip"}``: fail calls until the circuit opens;
- ``{"do": "call"}``: one call of a function that succeeds: ``ok``, ``rejected`` (the
  circuit is open), or ``raised <type>`` (anything else reached the caller);
- ``{"do": "force_close"}``;
- ``{"do": "state"}``: the breaker's state and its Redis metrics;
- ``{"do": "quit"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any, cast

from redis.asyncio.sentinel import Sentinel

from tests.redis_worker import started
from xnai_core import CircuitBreaker, CircuitOpenError, create_redis_circuit_breaker
from xnai_core.circuit.redis_store import RedisStore


class Boom(Exception):
    """The protected dependency failed."""


async def boom() -> None:
    raise Boom


async def ok() -> str:
    return "ok"


def describe(breaker: CircuitBreaker) -> dict[str, Any]:
    metrics = breaker.get_metrics()
    keys = ("state", "redis_available", "redis_outages", "redis_state_losses")
    return {key: metrics[key] for key in keys}


async def obey(breaker: CircuitBreaker, order: dict[str, Any]) -> dict[str, Any]:
    what = order["do"]
    if what == "trip":
        for _ in range(breaker.config.failure_threshold):
            with contextlib.suppress(Boom, CircuitOpenError):
                await breaker.call(boom)
    elif what == "call":
        try:
            return {"outcome": await breaker.call(ok)}
        except CircuitOpenError:
            return {"outcome": "rejected"}
        except Exception as exc:
            return {"outcome": f"raised {type(exc).__name__}"}
    elif what == "force_close":
        await breaker.force_close()
    elif what != "state":
        raise ValueError(f"unknown order: {what!r}")
    return describe(breaker)


async def main(spec: dict[str, Any]) -> None:
    sentinel = Sentinel([("127.0.0.1", port) for port in spec["sentinels"]])
    client = sentinel.master_for(spec["service"])
    breaker = create_redis_circuit_breaker(
        spec["name"], client, key_prefix=spec["prefix"], **spec.get("config", {})
    )
    store = cast(RedisStore, breaker.store)
    loop = asyncio.get_running_loop()
    try:
        print(json.dumps({"ready": await started(store)}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            order = json.loads(line)
            if order["do"] == "quit":
                return
            print(json.dumps(await obey(breaker, order)), flush=True)
    finally:
        await breaker.close()
        await client.aclose()
        for each in sentinel.sentinels:
            await each.aclose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
