"""Red-team findings on the metrics adapters, each a test that failed before its fix."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from tests.conftest import PrivateRedis
from tests.metrics_helpers import no_global_hooks, otel_reader, parse, points, value
from tests.service_helpers import drop_shared_keys
from tests.test_metrics_multiprocess import CLOSED, OPEN, REPO, workers
from tests.test_recovery_manager import FakeClock, make_manager, rule
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CustomHealthChecker,
    HealthMonitor,
    events,
)
from xnai_core.metrics import enable_prometheus
from xnai_core.metrics._sink import EventsToSink, Labels
from xnai_core.metrics.prometheus import ClientSink, PrometheusMetrics

__all__ = ["no_global_hooks", "otel_reader"]


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    enabled = enable_prometheus(CollectorRegistry())
    yield enabled
    enabled.disable()


async def test_a_lone_surrogate_in_a_name_does_not_break_the_scrape(
    metrics: PrometheusMetrics,
) -> None:
    """A name from a client's JSON ("\\ud800" decodes to a lone surrogate) cannot be
    encoded as UTF-8: one such breaker or service made every scrape raise."""
    tenant = "tenant-\ud800-x"
    breaker = CircuitBreaker(CircuitBreakerConfig(name=tenant))
    await breaker.call(asyncio.sleep, 0)
    monitor = HealthMonitor(check_interval=3600)
    monitor.add_checker(CustomHealthChecker(f"svc-{tenant}", lambda: True, in_thread=False))
    await monitor.trigger_manual_check(f"svc-{tenant}")
    samples = parse(generate_latest(metrics.registry).decode())
    calls = "xnai_circuitbreaker_calls_seconds_count"
    assert value(samples, calls, name="tenant-?-x", kind="successful") == 1
    assert value(samples, "xnai_health_status", service="svc-tenant-?-x", status="healthy") == 1
    assert b"tenant-?-x" in openmetrics_latest(metrics.registry)  # type: ignore[no-untyped-call]


def test_a_scrape_in_another_thread_survives_services_coming_and_going(
    metrics: PrometheusMetrics,
) -> None:
    """prometheus_client's own HTTP server, OpenTelemetry's reader and the
    multiprocess publisher collect in a thread of their own while the monitor's
    loop adds and removes services: a service removed between listing the
    services and reading its status made the scrape raise KeyError."""
    monitor = HealthMonitor(check_interval=3600)
    for index in range(50):
        monitor.add_checker(CustomHealthChecker(f"kept{index}", lambda: True, in_thread=False))
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            try:
                generate_latest(metrics.registry)
            except Exception as exc:  # what a scrape answers with: a 500
                errors.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    scraper = threading.Thread(target=scrape_until_stopped)
    scraper.start()
    try:
        for index in range(200):
            monitor.add_checker(CustomHealthChecker(f"gone{index}", lambda: True))
            time.sleep(0.001)  # the scraper lists it meanwhile
            monitor.remove_checker(f"gone{index}")
            if errors:
                break
    finally:
        stop.set()
        scraper.join(timeout=30)
        sys.setswitchinterval(interval)
    assert errors == []


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_circuit_open_in_one_worker_during_a_redis_outage_shows_in_every_scrape(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Cut off from Redis, each worker decides the shared circuit alone. One worker's
    circuit opened; every scrape answered by the other wrote its own closed state over
    it (the most recent write wins), so the gauge flapped with the scraping worker and
    XnaiCircuitOpen's 5 minutes restarted at every closed sample, never to fire."""
    async with workers(
        "examples.ops_app:app", tmp_path,
        XNAI_EXAMPLE_REDIS_URL=private_redis.url,
        XNAI_EXAMPLE_KEY_PREFIX="outage",
        XNAI_EXAMPLE_CHECK_INTERVAL="60",
    ) as base:  # fmt: skip
        private_redis.kill()
        async with httpx.AsyncClient(base_url=base) as http:  # one connection: one worker
            answers = [(await http.post("/demo/fail")).json() for _ in range(3)]
        assert [answer["error"] for answer in answers][-1] == "CircuitOpenError"
        opened_in = answers[0]["pid"]
        seen: dict[int, list[tuple[float, float]]] = {}
        for _ in range(400):
            async with httpx.AsyncClient(base_url=base) as http:  # a fresh connection
                pid = (await http.get("/demo/work")).json()["pid"]
                samples = parse((await http.get("/ops/metrics")).text)
            seen.setdefault(pid, []).append((samples[OPEN], samples[CLOSED]))
            if len(seen) == 2 and all(len(found) >= 2 for found in seen.values()):
                break
        assert len(seen) == 2, "every request went to one worker"
        assert opened_in in seen
        for pid, found in seen.items():
            assert set(found) == {(1.0, 0.0)}, (pid, opened_in, found)
        # A worker (re)started during the outage wrote the closed state it assumed
        # at start, before it had read Redis, over the open one.
        started = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import examples.ops_app",
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                "XNAI_EXAMPLE_REDIS_URL": private_redis.url,
                "XNAI_EXAMPLE_KEY_PREFIX": "outage",
            },
        )  # fmt: skip
        assert await asyncio.wait_for(started.wait(), timeout=60) == 0
        for _ in range(4):
            async with httpx.AsyncClient(base_url=base) as http:
                samples = parse((await http.get("/ops/metrics")).text)
            assert (samples[OPEN], samples[CLOSED]) == (1.0, 0.0)


ZERO_BEFORE_FIRST = [
    ("xnai_circuitbreaker_fallback_calls_total", {"name": "fb"}),
    *(
        ("xnai_health_checks_total", {"service": "api", "result": result})
        for result in ("healthy", "degraded", "unhealthy", "unknown")
    ),
    *(
        ("xnai_recovery_attempts_total", {"service": "api", "action": action, "result": result})
        for action, result in (
            ("restart_service", "succeeded"),
            ("restart_service", "failed"),
            ("manual_intervention", "escalated"),
        )
    ),
]


async def _parts_before_anything_happened() -> tuple[object, ...]:
    """A breaker with a fallback, a monitored service and its recovery rules, none of
    which has done anything yet."""
    breaker = CircuitBreaker(CircuitBreakerConfig(name="fb"), lambda: 0)
    monitor = HealthMonitor(check_interval=3600)
    monitor.add_checker(CustomHealthChecker("api", lambda: True, in_thread=False))
    manager = make_manager(FakeClock())
    manager.add_rule(rule(recovery_func=lambda service: None))
    manager.add_rule(rule("manual_intervention"))
    return breaker, monitor, manager


async def test_counters_exist_at_zero_before_their_first_increment(
    metrics: PrometheusMetrics,
) -> None:
    """rate() and increase() need a sample before the first increment: a series born
    at 1 shows no increase. A recovery service's one restart never reached the
    dashboard's "Recovery attempts" panel, nor a first fallback or failed check theirs."""
    parts = await _parts_before_anything_happened()
    samples = parse(generate_latest(metrics.registry).decode())
    for metric, labels in ZERO_BEFORE_FIRST:
        assert value(samples, metric, **labels) == 0, (metric, labels)
    await parts[2].aclose()  # type: ignore[attr-defined]


async def test_counters_exist_at_zero_in_multiprocess_mode() -> None:
    """The same through prometheus_client's own metrics (here over an in-memory
    registry): each worker writes its known series at 0 when it publishes."""
    gc.collect()
    registry = CollectorRegistry()
    sink = ClientSink(registry)
    hook = EventsToSink(sink, Labels())
    parts = await _parts_before_anything_happened()
    breaker = parts[0]
    assert isinstance(breaker, CircuitBreaker)
    hook.call_recorder(breaker.name)  # what the breaker's hook point asks for
    sink.publish_own(hook.labels)
    samples = parse(generate_latest(registry).decode())
    for metric, labels in ZERO_BEFORE_FIRST:
        assert value(samples, metric, **labels) == 0, (metric, labels)
    sink.unregister()
    await parts[2].aclose()  # type: ignore[attr-defined]


async def _gone_after_it_was_unhealthy() -> None:
    """A service seen unhealthy, then removed from its monitor; a breaker opened, then
    collected (a breaker per request, a reload that drops a circuit)."""
    monitor = HealthMonitor(check_interval=3600, failure_threshold=1)
    monitor.add_checker(CustomHealthChecker("old", lambda: False, in_thread=False))
    await monitor.trigger_manual_check("old")
    breaker = CircuitBreaker(CircuitBreakerConfig(name="per-request"))
    await breaker.force_open()
    monitor.remove_checker("old")
    await monitor.stop_monitoring()
    del breaker
    gc.collect()


async def test_a_removed_service_is_not_unhealthy_for_ever(metrics: PrometheusMetrics) -> None:
    """Statuses are read from the live monitors, but the last event's status was kept
    for a service no live monitor shows any more: removed by a reload while
    unhealthy, it stayed unhealthy in every scrape, XnaiServiceUnhealthy for ever."""
    await _gone_after_it_was_unhealthy()
    samples = parse(generate_latest(metrics.registry).decode())
    shown = [dict(labels) for name, labels in samples if name == "xnai_health_status"]
    assert [labels for labels in shown if labels["service"] == "old"] == []


async def test_opentelemetry_forgets_what_no_live_object_shows(
    reader: InMemoryMetricReader,
) -> None:
    """The same in the OpenTelemetry adapter, and for a collected breaker's state."""
    await _gone_after_it_was_unhealthy()
    found = points(reader)
    statuses = found.get("xnai.health.status", [])
    assert [a for a, p in statuses if p.value and a["service"] == "old"] == []
    states = found.get("xnai.circuitbreaker.state", [])
    assert [a for a, p in states if p.value and a["name"] == "per-request"] == []


async def test_multiprocess_zeroes_what_no_live_object_shows() -> None:
    """A worker's file keeps a gauge's last value: once the service is removed (or the
    breaker collected), the worker writes 0 for each of its states when it publishes."""
    gc.collect()
    registry = CollectorRegistry()
    sink = ClientSink(registry)
    hook = EventsToSink(sink, Labels())
    events.install_hooks(hook)
    try:
        await _gone_after_it_was_unhealthy()
    finally:
        events.install_hooks()
    sink.publish_own(hook.labels)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "xnai_health_status", service="old", status="unhealthy") == 0
    assert value(samples, "xnai_circuitbreaker_state", name="per-request", state="open") == 0
    sink.unregister()


def test_a_worker_dropping_its_breaker_does_not_hide_a_peers_open_circuit(
    tmp_path: Path, key_prefix: str
) -> None:
    """Two workers of one app share the circuit ``llm`` through Redis; it is open. One
    worker drops its breaker (made per request, or rebuilt by a reload): at its next
    publish it wrote 0 for each state, the most recent write, so every scrape showed the
    circuit in no state (and XnaiCircuitOpen resolved) while the other worker's breaker
    was open. A retracted state now loses to any live worker's, and shows nothing alone."""
    import subprocess

    from prometheus_client import multiprocess

    from tests.conftest import SHARED_REDIS_URL

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    prefix = f"{key_prefix}:cb:"
    args = [sys.executable, "-m", "tests.metrics_shared_worker", SHARED_REDIS_URL, prefix]

    def states() -> dict[str, float]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(tmp_path))  # type: ignore[no-untyped-call]
        samples = parse(generate_latest(registry).decode())
        found = {}
        for name, labels in samples:
            tags = dict(labels)
            if name == "xnai_circuitbreaker_state" and tags["name"] == "llm":
                found[tags["state"]] = samples[(name, labels)]
        return found

    holder = subprocess.Popen(
        [*args, "hold"], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        assert states() == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
        dropper = subprocess.run(
            [*args, "drop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert dropper.stdout.strip() == "dropped", dropper.stderr
        assert states() == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
        drop_shared_keys(key_prefix)
