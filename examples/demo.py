"""A live demonstration of xnai-core, printed as it happens.

Run: ``bash scripts/demo.sh`` (sets up .venv first) or ``.venv/bin/python -m examples.demo``.

Part 1: a circuit breaker around a flaky "LLM" dependency: calls fail, the circuit
opens, calls are short-circuited to the fallback, the circuit half-opens after its
recovery timeout and closes again once trial calls succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
)

_START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.2f}s] {message}", flush=True)


class FlakyLLM:
    """A stand-in dependency whose health the demo switches."""

    def __init__(self) -> None:
        self.healthy = True
        self.calls = 0

    async def generate(self, prompt: str) -> str:
        self.calls += 1
        await asyncio.sleep(0.01)
        if not self.healthy:
            raise ConnectionError("LLM server refused the connection")
        return f"answer to {prompt!r}"


async def part_circuit_breaker() -> None:
    say("== Part 1: a circuit breaker around a flaky LLM ==")
    llm = FlakyLLM()

    async def cached_answer(prompt: str) -> str:
        return f"(cached) answer to {prompt!r}"

    breaker = CircuitBreaker(
        CircuitBreakerConfig(
            name="llm_service",
            failure_threshold=3,
            recovery_timeout=1.0,
            half_open_max_calls=2,
            timeout=0.5,
        ),
        fallback_func=cached_answer,
    )

    def on_change(name: str, old: CircuitState, new: CircuitState, reason: str) -> None:
        say(f"   circuit '{name}': {old.value} -> {new.value} ({reason})")

    breaker.add_listener(on_change)

    async def ask(prompt: str) -> None:
        before = llm.calls
        answer = await breaker.call(llm.generate, prompt)
        reached = "reached the LLM" if llm.calls > before else "short-circuited, LLM not called"
        say(f"   {prompt!r} -> {answer}  [{breaker.state.value}; {reached}]")

    say("LLM healthy:")
    await ask("q1")
    say("LLM goes down: each failure is counted, the fallback answers")
    llm.healthy = False
    for n in range(2, 5):
        await ask(f"q{n}")
    say("circuit open: calls are short-circuited to the fallback")
    for n in range(5, 7):
        await ask(f"q{n}")
    say("LLM comes back; waiting out the 1 s recovery timeout")
    llm.healthy = True
    await asyncio.sleep(1.05)
    for n in range(7, 10):
        await ask(f"q{n}")
    metrics = breaker.get_metrics()
    say(
        "metrics: "
        + ", ".join(
            f"{key}={metrics[key]}"
            for key in (
                "state",
                "total_calls",
                "success_count",
                "total_failures",
                "rejected_calls",
                "fallback_calls",
            )
        )
    )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xnai-core live demonstration")
    parser.parse_args(argv)
    # The library logs transitions under "xnai_core"; an application decides where they go.
    logging.basicConfig(
        level=logging.WARNING, format="           log %(levelname)s %(name)s: %(message)s"
    )
    await part_circuit_breaker()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
