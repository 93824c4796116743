"""The Prometheus adapter: names, labels and values, parsed as Prometheus parses them."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import SHARED_REDIS_URL
from tests.metrics_helpers import OTHER_PARTS, OTHER_PARTS_SEEN, Boom, boom, parse, scrape, value
from tests.ops_helpers import serving
from tests.test_recovery_manager import FakeClock, go_unhealthy, make_manager, rule
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    RecoveryCoordinator,
    RecoveryManager,
    create_redis_circuit_breaker,
    events,
)
from xnai_core.events import (
    HealthChecked,
)
from xnai_core.metrics import enable_prometheus, refresh_shared_state
from xnai_core.metrics._sink import Labels
from xnai_core.metrics.prometheus import ClientSink, PrometheusMetrics
from xnai_core.web import create_ops_app


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    enabled = enable_prometheus(CollectorRegistry())
    yield enabled
    enabled.disable()
    events.install_hooks()


async def test_breaker_metrics_after_a_trip(metrics: PrometheusMetrics) -> None:
    b = CircuitBreaker(CircuitBreakerConfig(name="llm", failure_threshold=2, timeout=None))
    for _ in range(3):
        await b.call(asyncio.sleep, 0)
    for _ in range(2):
        with pytest.raises(Boom):
            await b.call(boom)
    with pytest.raises(CircuitOpenError):
        await b.call(asyncio.sleep, 0)
    s = scrape(metrics.registry)
    assert value(s, "xnai_circuitbreaker_state", name="llm", state="open") == 1
    assert value(s, "xnai_circuitbreaker_state", name="llm", state="closed") == 0
    assert value(s, "xnai_circuitbreaker_state", name="llm", state="half_open") == 0
    calls = "xnai_circuitbreaker_calls_seconds_count"
    assert value(s, calls, name="llm", kind="successful") == 3
    assert value(s, calls, name="llm", kind="failed") == 2
    assert value(s, calls, name="llm", kind="timeout") == 0  # every kind exists from the start
    assert (
        value(s, "xnai_circuitbreaker_calls_seconds_bucket", name="llm", kind="failed", le="+Inf")
        == 2
    )
    assert value(s, "xnai_circuitbreaker_not_permitted_calls_total", name="llm") == 1
    assert ("xnai_circuitbreaker_redis_available", (("name", "llm"),)) not in s  # memory store
    await b.force_close()
    s = scrape(metrics.registry)
    assert value(s, "xnai_circuitbreaker_state", name="llm", state="closed") == 1


async def test_fallback_calls_are_counted(metrics: PrometheusMetrics) -> None:
    b = CircuitBreaker(CircuitBreakerConfig(name="fb", failure_threshold=1), lambda: 0)
    await b.call(boom)
    await b.call(boom)
    s = scrape(metrics.registry)
    assert value(s, "xnai_circuitbreaker_fallback_calls_total", name="fb") == 2
    assert value(s, "xnai_circuitbreaker_not_permitted_calls_total", name="fb") == 1


async def test_a_breaker_shows_its_state_before_its_first_call(metrics: PrometheusMetrics) -> None:
    b = CircuitBreaker(CircuitBreakerConfig(name="idle"))
    s = scrape(metrics.registry)
    assert value(s, "xnai_circuitbreaker_state", name="idle", state="closed") == 1
    del b
    gc.collect()
    assert ("xnai_circuitbreaker_state", (("name", "idle"), ("state", "closed"))) not in scrape(
        metrics.registry
    )


def test_other_parts_metrics_from_their_events(metrics: PrometheusMetrics) -> None:
    for event in OTHER_PARTS:
        metrics.hook(event)
    s = scrape(metrics.registry)
    for metric, _, labels, expected in OTHER_PARTS_SEEN:
        assert value(s, metric, **labels) == expected, (metric, labels)
    assert value(s, "xnai_health_check_duration_seconds_count", service="rag_api") == 2
    assert value(s, "xnai_health_check_duration_seconds_bucket", service="rag_api", le="0.005") == 1


async def test_label_values_carry_no_secret(metrics: PrometheusMetrics) -> None:
    """A breaker named after a URL with a password shows the URL, masked."""
    b = CircuitBreaker(CircuitBreakerConfig(name="redis://:hunter2@cache:6379/0"))
    await b.call(asyncio.sleep, 0)
    metrics.hook(HealthChecked("postgresql://app:s3cret@db/app", "healthy", "healthy", 0.1))
    text = generate_latest(metrics.registry).decode()
    assert "hunter2" not in text
    assert "s3cret" not in text
    assert 'name="redis://:***@cache:6379/0"' in text


async def test_label_values_never_grow_without_bound() -> None:
    """Past max_names breaker names, the rest share one label value; no call is lost."""
    gc.collect()
    limited = enable_prometheus(CollectorRegistry(), max_names=3)
    try:
        breakers = [CircuitBreaker(CircuitBreakerConfig(name=f"b{i}")) for i in range(6)]
        for b in breakers:
            await b.call(asyncio.sleep, 0)
        s = scrape(limited.registry)
        counts = {
            dict(labels)["name"]: count
            for (metric, labels), count in s.items()
            if metric == "xnai_circuitbreaker_calls_seconds_count"
            and dict(labels)["kind"] == "successful"
        }
        assert "_other" in counts
        assert len(counts) == 3 + 1  # (other live breakers, if any, took some of the 3)
        assert sum(counts.values()) == 6
    finally:
        limited.disable()


def test_enable_is_idempotent_per_registry_and_checks_its_argument() -> None:
    registry = CollectorRegistry()
    first = enable_prometheus(registry)
    try:
        assert enable_prometheus(registry) is first
        assert events.get_hooks().count(first.hook) == 1
    finally:
        first.disable()
    assert first.hook not in events.get_hooks()
    with pytest.raises(TypeError, match="'registry' must be a prometheus_client CollectorRegistry"):
        enable_prometheus("nope")


def test_importing_the_core_imports_no_metrics_library() -> None:
    """(redis-py itself imports opentelemetry when it is installed: not checked here.)"""
    import subprocess
    import sys

    code = (
        "import sys, xnai_core, xnai_core.events, xnai_core.metrics;"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'starlette'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("blocked", "code", "message"),
    [
        (
            "prometheus_client",
            "from xnai_core.metrics import enable_prometheus; enable_prometheus()",
            "enable_prometheus() needs prometheus_client, which is not installed: "
            "pip install 'xnai-core[prometheus]'",
        ),
        (
            "opentelemetry",
            "from xnai_core.metrics import enable_opentelemetry; enable_opentelemetry()",
            "pip install 'xnai-core[otel]'",
        ),
        ("starlette", "import xnai_core.web", "pip install 'xnai-core[web]'"),
        (
            "prometheus_client",
            "from xnai_core.web import create_ops_app; create_ops_app()",
            "create_ops_app(metrics=...) needs prometheus_client",
        ),
    ],
)
def test_a_missing_extra_is_named(blocked: str, code: str, message: str) -> None:
    """Without the optional package, the error says which extra to install."""
    import subprocess
    import sys

    # A None entry in sys.modules makes every import of that package fail.
    prelude = (
        f"import sys; [sys.modules.__setitem__(m, None) for m in list(sys.modules) "
        f"if m == {blocked!r} or m.startswith({blocked + '.'!r})]; "
        f"sys.modules[{blocked!r}] = None; "
    )
    if blocked == "opentelemetry":
        prelude += "sys.modules['opentelemetry.metrics'] = None; "
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert message in done.stderr


async def _escalated_on_scrape(base: str) -> float | None:
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return parse(response.text).get(("xnai_recovery_escalated", (("service", "api"),)))


async def test_a_latch_set_by_a_peer_replica_shows_at_scrape_time(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """A peer escalates the shared service and goes away; this replica never acted on
    it, yet its /metrics says escalated (read from Redis), and not once it is reset."""
    gc.collect()
    clock = FakeClock()

    def replica() -> RecoveryManager:
        manager = make_manager(
            clock, coordinator=RecoveryCoordinator(shared_redis, key_prefix=key_prefix)
        )
        manager.add_rule(rule(max_attempts=1, recovery_func=lambda service: None))
        return manager

    peer = replica()
    peer.hooks.install()  # its events go to its own process's metrics, not ours
    await go_unhealthy(peer, "api")
    assert peer.is_escalated("api")
    await peer.aclose()
    del peer
    gc.collect()
    here = replica()
    registry = CollectorRegistry()
    enabled = enable_prometheus(registry)
    try:
        async with serving(create_ops_app(recovery=here, metrics=registry)) as base:
            assert await _escalated_on_scrape(base) == 1
            assert not here.is_escalated("api")  # this replica has not looked itself
            # An operator resets it on another replica.
            assert await RecoveryCoordinator(shared_redis, key_prefix=key_prefix).unlatch("api")
            assert await _escalated_on_scrape(base) == 0
    finally:
        enabled.disable()
        await here.aclose()


async def test_a_latch_held_here_but_reset_on_a_peer_is_lifted_at_scrape_time(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """This replica latched the service too (it saw the peer's latch when it went to
    act); an operator resets it on another replica: this replica still holds its latch
    until its next look, but its /metrics says what Redis says, not escalated."""
    gc.collect()
    clock = FakeClock()
    coordinator = RecoveryCoordinator(shared_redis, key_prefix=key_prefix)
    peer, here = (make_manager(clock, coordinator=coordinator) for _ in range(2))
    for manager in (peer, here):
        manager.add_rule(rule(max_attempts=1, recovery_func=lambda service: None))
    peer.hooks.install()
    await go_unhealthy(peer, "api")
    await go_unhealthy(here, "api")  # finds the latch: "escalated by another process"
    assert here.is_escalated("api")
    await peer.aclose()
    del peer
    gc.collect()
    registry = CollectorRegistry()
    enabled = enable_prometheus(registry)
    try:
        async with serving(create_ops_app(recovery=here, metrics=registry)) as base:
            assert await _escalated_on_scrape(base) == 1
            assert await coordinator.unlatch("api")  # the reset, on another replica
            assert await _escalated_on_scrape(base) == 0
            assert here.is_escalated("api")  # its own latch lifts at its next look
    finally:
        enabled.disable()
        await here.aclose()


async def test_names_minted_per_tenant_keep_no_memory_per_name() -> None:
    """Past max_names, a new breaker name costs the adapter nothing that lasts: every
    one shares the overflow label's recorder (and series)."""
    gc.collect()
    limited = enable_prometheus(CollectorRegistry(), max_names=5)
    try:
        for i in range(300):
            tenant = CircuitBreaker(CircuitBreakerConfig(name=f"tenant-{i}", timeout=None))
            await tenant.call(asyncio.sleep, 0)
        assert len(limited.hook._recorders) <= 5 + 1
        s = scrape(limited.registry)
        other = value(
            s, "xnai_circuitbreaker_calls_seconds_count", name="_other", kind="successful"
        )
        assert other >= 300 - 5
    finally:
        limited.disable()


def test_multiprocess_mode_can_be_disabled_and_enabled_again(tmp_path: Path) -> None:
    """disable() takes prometheus_client's metrics out of the registry too, so enabling
    again for that registry works (it failed with 'Duplicated timeseries')."""
    code = (
        "from prometheus_client import CollectorRegistry, generate_latest\n"
        "from xnai_core.metrics import enable_prometheus\n"
        "registry = CollectorRegistry()\n"
        "first = enable_prometheus(registry)\n"
        "assert first.multiprocess\n"
        "first.disable()\n"
        "again = enable_prometheus(registry)\n"
        "assert again is not first\n"
        "assert b'xnai_circuitbreaker_state' in generate_latest(registry)\n"
        "again.disable()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


async def test_a_shared_circuit_never_called_here_shows_its_state_in_redis(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """One process: a Redis-backed breaker this process has not called yet is loaded by
    the scrape, so /metrics says open, not the closed it assumed at start."""
    elsewhere_client = aioredis.Redis.from_url(SHARED_REDIS_URL)  # another process's
    elsewhere = create_redis_circuit_breaker("shared", elsewhere_client, key_prefix=key_prefix)
    await elsewhere.force_open()
    await elsewhere.close()
    await elsewhere_client.aclose()
    del elsewhere
    gc.collect()  # gone: only this process's breaker is live
    here = create_redis_circuit_breaker("shared", shared_redis, key_prefix=key_prefix)
    registry = CollectorRegistry()
    enabled = enable_prometheus(registry)
    try:
        app = create_ops_app(breakers=[here], metrics=registry)
        async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
            found = parse((await http.get("/metrics")).text)
        assert value(found, "xnai_circuitbreaker_state", name="shared", state="open") == 1
        assert value(found, "xnai_circuitbreaker_redis_available", name="shared") == 1
    finally:
        enabled.disable()
        await here.close()


async def test_a_scrape_leaves_a_closed_shared_circuit_closed(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """A Redis-backed breaker its owner closed (a reload replaced it, a test ended) and
    not yet collected: a scrape loaded it again, opening a subscription and connections
    through its client that nobody would close (their ResourceWarnings then failed
    whatever ran at the next collection)."""
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    closed = create_redis_circuit_breaker("closed-by-owner", client, key_prefix=key_prefix)
    try:
        await closed.force_open()
        assert closed.store.available
        await closed.close()
        assert not closed.store.available
        await refresh_shared_state()
        assert not closed.store.available  # not started again by the scrape
        assert closed.store.closed
    finally:
        await closed.close()
        await client.aclose()


async def test_a_scrape_writes_only_what_every_worker_shares() -> None:
    """Multiprocess mode's scrape-time write (ClientSink.publish_current, here over an
    in-memory registry): an in-memory breaker and a manager without a coordinator are
    this worker's own, so another worker's open circuit or escalation, written by its
    events, is not overwritten by this worker's closed circuit or lifted latch."""
    gc.collect()
    registry = CollectorRegistry()
    sink = ClientSink(registry)
    labels = Labels()
    mine = CircuitBreaker(CircuitBreakerConfig(name="per-worker"))  # closed here
    manager = make_manager(FakeClock())
    manager.add_rule(rule(recovery_func=lambda service: None))  # "api", not escalated here
    sink.state("per-worker", "open")  # another worker's events
    sink.escalated("api", True)
    sink.publish_current(labels)
    s = scrape(registry)
    assert value(s, "xnai_circuitbreaker_state", name="per-worker", state="open") == 1
    assert value(s, "xnai_recovery_escalated", service="api") == 1
    await manager.aclose()
    del mine


async def test_a_circuit_not_used_here_yet_says_nothing_of_redis(
    metrics: PrometheusMetrics, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Before this process has tried Redis for a circuit, its link is unknown, not down
    (a worker that never used it would page 'Redis unavailable'); once loaded, up."""
    idle = create_redis_circuit_breaker("idle-shared", shared_redis, key_prefix=key_prefix)
    try:
        link = ("xnai_circuitbreaker_redis_available", (("name", "idle-shared"),))
        assert link not in scrape(metrics.registry)
        await refresh_shared_state()  # what /metrics does first
        assert scrape(metrics.registry)[link] == 1
    finally:
        await idle.close()


def test_a_closed_recovery_manager_of_an_ended_loop_is_not_read_by_a_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A manager closed in an event loop that has ended (a reload replaced it; an earlier
    asyncio.run) but not yet collected: the next scrape's refresh does not read its latches
    through its Redis client, bound to the dead loop (before: each read failed with 'got
    Future attached to a different loop', was logged as an error, and left sockets to
    Redis unclosed, whose ResourceWarnings surfaced in whatever ran at the next GC)."""
    from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule

    async def build() -> tuple[RecoveryManager, aioredis.Redis]:
        client = aioredis.Redis.from_url(SHARED_REDIS_URL)
        manager = RecoveryManager(coordinator=RecoveryCoordinator(client, key_prefix="x-ended"))
        manager.add_rule(RecoveryRule("api", "clear_cache", recovery_func=lambda s: None))
        assert await manager.shared_escalations() == {"api": False}  # its client connected
        await manager.aclose()
        await client.aclose()
        return manager, client

    manager, client = asyncio.run(build())
    caplog.set_level(logging.ERROR, logger="xnai_core")
    asyncio.run(refresh_shared_state())
    assert [r.getMessage() for r in caplog.records] == []
    del manager, client
