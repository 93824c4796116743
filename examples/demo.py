"""A live demonstration of xnai-core, printed as it happens.

Run: ``bash scripts/demo.sh`` (sets up .venv first) or ``.venv/bin/python -m examples.demo``.

Part 1: a circuit breaker around a flaky "LLM" dependency: calls fail, the circuit
opens, calls are short-circuited to the fallback, the circuit half-opens after its
recovery timeout and closes again once trial calls succeed.

Part 2: the same circuit shared by two processes through Redis: this process trips
it, and a second process (examples/peer.py) sees it open within milliseconds and
rejects locally, without calling anything and without a Redis round trip.

Part 3: graceful degradation: a cache-first strategy, a circuit breaker strategy and
a degraded-mode answer keep a chat user answered while the LLM is down, and the
manager records when and why the service degraded.

Part 4: health monitoring with automated recovery: a real HTTP service in a child
process is killed; the monitor sees it unhealthy, the recovery manager runs its
restart command, the monitor sees it healthy again, and the statistics record it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as redis

from xnai_core import (
    CacheFirstStrategy,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStrategy,
    CircuitState,
    DegradationEvent,
    DegradedModeStrategy,
    HealthMonitor,
    HealthStatus,
    RecoveryManager,
    RecoveryRule,
    ServiceDegradationManager,
    create_rag_api_health_checker,
    create_redis_circuit_breaker,
    last_call_info,
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


async def part_shared_through_redis() -> None:
    say("== Part 2: one circuit, two processes, shared through Redis ==")
    url = os.environ.get("XNAI_DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as exc:
        say(f"   no Redis at {url} ({type(exc).__name__}): part 2 skipped")
        await client.aclose()
        return
    name = f"demo-llm-{uuid.uuid4().hex[:8]}"
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.peer", url, name,
        stdout=asyncio.subprocess.PIPE, cwd=str(_WEBSERVICE.parent.parent),
    )  # fmt: skip
    assert peer.stdout is not None
    breaker = create_redis_circuit_breaker(name, client, failure_threshold=3, recovery_timeout=30)
    try:
        await peer.stdout.readline()  # "ready": the peer is subscribed
        say(f"a second process (pid {peer.pid}) holds a breaker named {name!r}")
        llm = FlakyLLM()
        llm.healthy = False
        tripped_at = 0.0
        for n in range(3):
            tripped_at = time.time()
            with contextlib.suppress(ConnectionError):
                await breaker.call(llm.generate, f"q{n}")
        say(f"   this process: 3 failures, circuit {breaker.state.value}")
        seen = (await peer.stdout.readline()).decode().split()
        lag_ms = (float(seen[-1]) - tripped_at) * 1000
        say(f"   the other process saw it open {lag_ms:.1f} ms after the last failure began")
        say("   the other process: " + (await peer.stdout.readline()).decode().strip())
        await peer.wait()
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
        await breaker.close()
        await client.delete(f"xnai:cb:{{{name}}}")
        await client.aclose()


async def part_degradation() -> None:
    say("== Part 3: graceful degradation of the LLM service ==")
    llm = FlakyLLM()
    manager = ServiceDegradationManager(timeout=2.0)
    breaker = CircuitBreaker(
        CircuitBreakerConfig(name="llm_degraded", failure_threshold=2, recovery_timeout=30)
    )
    manager.add_service_strategy(
        "llm_service",
        CacheFirstStrategy(ttl=0.2, stale_if_error=600, key_func=lambda prompt: prompt),
        priority=20,
    )
    manager.add_service_strategy("llm_service", CircuitBreakerStrategy(breaker), priority=10)
    manager.add_service_strategy(
        "llm_service",
        DegradedModeStrategy({"response": "Service temporarily unavailable", "degraded": True}),
        priority=0,
    )

    def on_episode(event: DegradationEvent) -> None:
        say(f"   degradation event: {event}")

    manager.add_listener(on_episode)

    async def ask(prompt: str) -> None:
        answer = await manager.call_service("llm_service", llm.generate, prompt)
        info = last_call_info()
        assert info is not None
        say(f"   {prompt!r} -> {answer}  [source={info.source}, degraded={info.degraded}]")

    say("LLM healthy: answers come from the LLM and are cached")
    await ask("what is RAG?")
    await asyncio.sleep(0.25)  # past the cache's ttl: the next call asks the LLM again
    say("LLM goes down: stale cached answers where there is one, else the degraded answer")
    llm.healthy = False
    await ask("what is RAG?")
    await ask("what is a vector store?")
    await ask("what is a vector store?")
    say("the breaker opened: the LLM is not called at all now")
    calls = llm.calls
    await ask("what is RAG?")
    say(f"   LLM calls during that request: {llm.calls - calls}")
    say("LLM comes back; the operator closes the breaker")
    llm.healthy = True
    await breaker.force_close()
    await ask("what is a vector store?")
    stats = manager.get_degradation_stats()["services"]["llm_service"]
    shown = (
        "calls",
        "primary_successes",
        "degraded_responses",
        "degraded_by_strategy",
        "failures",
        "episodes",
        "last_degradation",
    )
    say("stats: " + ", ".join(f"{key}={stats[key]}" for key in shown))


async def part_health_and_recovery() -> None:
    say("== Part 4: health monitoring and automated recovery of a real service ==")
    with tempfile.TemporaryDirectory(prefix="xnai-demo-") as workdir:
        port = _free_port()
        pid_file = os.path.join(workdir, "web.pid")
        restart = [sys.executable, str(_WEBSERVICE), "start", str(port), pid_file]
        await (await asyncio.create_subprocess_exec(*restart)).wait()
        await _wait_for(lambda: os.path.exists(pid_file))

        recovery = RecoveryManager()
        recovery.add_rule(
            RecoveryRule(
                "rag_api",
                "restart_service",
                command=restart,
                timeout=10,
                grace_period=5,
                backoff_base=0.2,
                backoff_max=1,
                cooldown=0.5,
                stable_period=2,
            )
        )
        monitor = HealthMonitor(check_interval=0.25, failure_threshold=2, recovery_manager=recovery)
        monitor.add_checker(create_rag_api_health_checker(url=f"http://127.0.0.1:{port}/health"))

        async def recovered(service: str) -> None:
            say(f"   recovery callback: {service} is healthy again")

        monitor.add_recovery_callback("rag_api", recovered)
        await monitor.start_monitoring()
        try:
            await monitor.wait_for_status("rag_api", HealthStatus.HEALTHY, timeout=10)
            say(f"rag_api is {monitor.get_status('rag_api').value}; killing its process")
            _kill(pid_file)
            await monitor.wait_for_status("rag_api", HealthStatus.UNHEALTHY, timeout=10)
            say("   the monitor sees rag_api unhealthy; the recovery manager restarts it")
            await monitor.wait_for_status("rag_api", HealthStatus.HEALTHY, timeout=20)
            say(f"rag_api is {monitor.get_status('rag_api').value} again")
            await monitor.drain_notifications()
            report = monitor.get_health_report()
            service = report["services"]["rag_api"]
            say(
                f"report: summary={report['summary']}, total_checks={service['total_checks']}, "
                f"consecutive_successes={service['consecutive_successes']}"
            )
            # The attempt is recorded once its grace-period verification has ended.
            await _wait_for(lambda: recovery.get_recovery_stats()["total_attempts"] == 1)
            stats = recovery.get_recovery_stats()
            shown = ("total_attempts", "success_rate", "average_recovery_time", "actions_by_type")
            say("recovery stats: " + ", ".join(f"{key}={stats[key]}" for key in shown))
        finally:
            await monitor.stop_monitoring()
            await recovery.aclose()
            with contextlib.suppress(OSError, ValueError):
                _kill(pid_file)


_WEBSERVICE = Path(__file__).resolve().parent / "webservice.py"


def _kill(pid_file: str) -> None:
    """Kill the web service as a crash would (SIGKILL) and forget its pid file."""
    path = Path(pid_file)
    os.kill(int(path.read_text()), signal.SIGKILL)
    path.unlink()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the demo waited too long for its web service")
        await asyncio.sleep(0.02)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xnai-core live demonstration")
    parser.parse_args(argv)
    # The library logs transitions under "xnai_core"; an application decides where they go.
    logging.basicConfig(
        level=logging.WARNING, format="           log %(levelname)s %(name)s: %(message)s"
    )
    await part_circuit_breaker()
    await part_shared_through_redis()
    await part_degradation()
    await part_health_and_recovery()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
