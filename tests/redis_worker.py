"""One OS process sharing a Redis-backed circuit: run by the multi-process tests.

Usage: ``python -m tests.redis_worker '<json spec>'``. The spec names the server
(``url``, or ``cluster`` as [[host, port], ...]), the key ``prefix``, the breaker
``name`` and ``config``, and a ``scenario``. Workers that must start together
push their ``id`` onto ``ready_key`` and wait for a token on ``go_key``. The
last line printed is the worker's result as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any, cast

import redis.asyncio as aioredis

from xnai_core import CircuitBreaker, CircuitOpenError, CircuitState, create_redis_circuit_breaker
from xnai_core.circuit.redis_store import RedisStore


class Boom(Exception):
    """The protected dependency failed."""


def make_client(spec: dict[str, Any]) -> aioredis.Redis | aioredis.RedisCluster:
    if "cluster" in spec:
        nodes = [aioredis.cluster.ClusterNode(host, port) for host, port in spec["cluster"]]
        return aioredis.RedisCluster(startup_nodes=nodes)
    return aioredis.Redis.from_url(spec["url"])


async def rendezvous(client: Any, spec: dict[str, Any], suffix: str = "") -> None:
    await client.rpush(spec["ready_key"] + suffix, spec["id"])
    await client.blpop([spec["go_key"] + suffix], timeout=30)


def breaker_client(breaker: CircuitBreaker) -> Any:
    return cast(RedisStore, breaker.store).client


async def fail(breaker: CircuitBreaker, spec: dict[str, Any]) -> dict[str, Any]:
    """``count`` concurrent calls that all fail; or, with ``rounds``, one batch per round."""

    async def boom() -> None:
        raise Boom

    async def one() -> str:
        try:
            await breaker.call(boom)
        except Boom:
            return "failed"
        except CircuitOpenError:
            return "rejected"
        return "ok"

    rounds = []
    for index, count in enumerate(spec.get("rounds", [spec.get("count", 1)])):
        if index:
            # Every process finished the last round before any starts this one.
            await rendezvous(breaker_client(breaker), spec, suffix=f":{index}")
        outcomes = await asyncio.gather(*(one() for _ in range(count)))
        rounds.append({"failed": outcomes.count("failed"), "rejected": outcomes.count("rejected")})
    return {**rounds[-1], "rounds": rounds}


async def half_open(breaker: CircuitBreaker, spec: dict[str, Any]) -> dict[str, Any]:
    """``count`` concurrent calls; each admitted trial holds for ``hold`` seconds."""
    ran = 0

    async def trial() -> None:
        nonlocal ran
        ran += 1
        await asyncio.sleep(spec["hold"])

    async def one() -> str:
        try:
            await breaker.call(trial)
        except CircuitOpenError:
            return "rejected"
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(spec["count"])))
    return {"trials": ran, "rejected": outcomes.count("rejected")}


async def hold_permit(breaker: CircuitBreaker, client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Take a trial permit, say so, and hang on to it until killed."""

    async def trial() -> None:
        await client.rpush(spec["holding_key"], spec["id"])
        await asyncio.sleep(3600)

    await breaker.call(trial)
    return {}


async def trip(breaker: CircuitBreaker, spec: dict[str, Any]) -> dict[str, Any]:
    """Fail until the circuit opens."""

    async def boom() -> None:
        raise Boom

    for _ in range(breaker.config.failure_threshold):
        with contextlib.suppress(Boom):
            await breaker.call(boom)
    return {"state": breaker.state.value}


async def probe(breaker: CircuitBreaker, spec: dict[str, Any]) -> dict[str, Any]:
    """Try one successful call and say what happened."""

    async def ok() -> str:
        return "ok"

    try:
        outcome = await breaker.call(ok)
    except CircuitOpenError as exc:
        return {"outcome": "rejected", "retry_after": exc.retry_after, "state": breaker.state}
    return {"outcome": outcome, "state": breaker.state.value}


async def watch(breaker: CircuitBreaker, spec: dict[str, Any]) -> dict[str, Any]:
    """Report the wall-clock time at which this process first sees the circuit open."""
    deadline = time.monotonic() + spec.get("timeout", 10)
    while breaker.state is not CircuitState.OPEN:
        if time.monotonic() > deadline:
            return {"seen_at": None}
        await asyncio.sleep(0.0005)
    return {"seen_at": time.time()}


async def started(store: RedisStore) -> bool:
    """Start ``store`` and wait (bounded) until it reaches Redis: a loaded machine may take
    longer than op_timeout to set up. Whether it did."""
    await store.start()
    for _ in range(200):
        if store.available:
            return True
        await asyncio.sleep(0.05)
    return False


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    client = make_client(spec)
    breaker = create_redis_circuit_breaker(
        spec["name"],
        client,
        key_prefix=spec["prefix"],
        resync_interval=spec.get("resync_interval", 5.0),
        op_timeout=spec.get("op_timeout", 1.0),
        **spec.get("config", {}),
    )
    store = cast(RedisStore, breaker.store)
    try:
        if not await started(store):
            raise RuntimeError("the worker could not reach redis")
        if "ready_key" in spec:
            await rendezvous(client, spec)
        scenario = spec["scenario"]
        if scenario == "fail":
            result = await fail(breaker, spec)
        elif scenario == "half_open":
            result = await half_open(breaker, spec)
        elif scenario == "hold_permit":
            result = await hold_permit(breaker, client, spec)
        elif scenario == "trip":
            result = await trip(breaker, spec)
        elif scenario == "probe":
            result = await probe(breaker, spec)
        elif scenario == "watch":
            result = await watch(breaker, spec)
        else:
            raise ValueError(f"unknown scenario: {scenario!r}")
        result["id"] = spec.get("id")
        return result
    finally:
        await breaker.close()
        await client.aclose()


if __name__ == "__main__":
    outcome = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(outcome, default=str), flush=True)
