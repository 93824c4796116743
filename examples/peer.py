"""The demo's second process: a breaker of the same name, sharing its state through Redis.

``python -m examples.peer REDIS_URL NAME`` prints ``ready`` once it is listening, then
``saw open after <ms>`` when another process trips the circuit, then asks the
circuit (which now rejects locally, without calling anything) and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as redis

from xnai_core import CircuitOpenError, CircuitState, create_redis_circuit_breaker


async def main(url: str, name: str) -> None:
    client = redis.Redis.from_url(url)
    breaker = create_redis_circuit_breaker(name, client, failure_threshold=3, recovery_timeout=30)
    opened = asyncio.Event()
    seen_at: list[float] = []

    def on_change(_name: str, _old: CircuitState, new: CircuitState, _reason: str) -> None:
        if new is CircuitState.OPEN:
            seen_at.append(time.time())
            opened.set()

    breaker.add_listener(on_change)
    try:
        await breaker.store.start()  # type: ignore[attr-defined]  # RedisStore: subscribe now
        print("ready", flush=True)
        await asyncio.wait_for(opened.wait(), timeout=20)
        print(f"saw open at {seen_at[0]:.6f}", flush=True)
        called = False

        async def llm() -> str:
            nonlocal called
            called = True
            return "answer"

        try:
            await breaker.call(llm)
        except CircuitOpenError as exc:
            print(f"rejected locally: {exc}; LLM called: {called}", flush=True)
    finally:
        await breaker.close()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
