"""Multiprocess mode: two uvicorn workers write to PROMETHEUS_MULTIPROC_DIR, and
/metrics on either shows the sums, the circuit's state as it is in Redis, and every
worker's alert sink counters."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.alerting_helpers import Receiver
from tests.conftest import SHARED_REDIS_URL, PrivateRedis, free_port
from tests.metrics_helpers import Samples, parse
from xnai_core import create_redis_circuit_breaker

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

OPEN = ("xnai_circuitbreaker_state", (("name", "llm"), ("state", "open")))
CLOSED = ("xnai_circuitbreaker_state", (("name", "llm"), ("state", "closed")))


async def wait_for(url: str, server: asyncio.subprocess.Process, deadline: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    async with httpx.AsyncClient() as http:
        while True:
            assert server.returncode is None, f"the server exited: {server.returncode}"
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert loop.time() < end, f"{url} did not answer"
            await asyncio.sleep(0.1)


@asynccontextmanager
async def workers(app: str, tmp: Path, **env: str) -> AsyncIterator[str]:
    """``uvicorn app --workers 2`` sharing ``tmp`` as PROMETHEUS_MULTIPROC_DIR; its base URL."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", app, "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(tmp), **env},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(f"{base}/ops/livez", server)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=60)


async def scrapes(base: str, count: int = 4) -> list[tuple[str, Samples]]:
    """``count`` scrapes of /ops/metrics, each on a fresh connection (so either worker)."""
    found = []
    for _ in range(count):
        async with httpx.AsyncClient(base_url=base) as http:
            text = (await http.get("/ops/metrics")).text
        found.append((text, parse(text)))
    return found


async def until_every_scrape(
    base: str, agrees: Callable[[Samples], bool], tries: int = 300
) -> list[tuple[str, Samples]]:
    """Scrape until four scrapes in a row all agree; those scrapes (the last, if never)."""
    for _ in range(tries):
        scraped = await scrapes(base)
        if all(agrees(samples) for _, samples in scraped):
            break
        await asyncio.sleep(0.1)
    return scraped


async def on_both_workers(base: str, method: str, path: str) -> int:
    """Request ``path`` on fresh connections until both workers answered; how many times."""
    pids: set[int] = set()
    calls = 0
    while len(pids) < 2:
        assert calls < 400, "every request went to one worker"
        async with httpx.AsyncClient(base_url=base) as http:
            response = await http.request(method, path)
        assert response.status_code == 200
        pids.add(response.json()["pid"])
        calls += 1
    return calls


async def test_two_workers_share_counts_and_state(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    async with workers(
        "examples.ops_app:app", tmp_path,
        XNAI_EXAMPLE_REDIS_URL=SHARED_REDIS_URL,
        XNAI_EXAMPLE_KEY_PREFIX=key_prefix,
        XNAI_EXAMPLE_CHECK_INTERVAL="60",
    ) as base:  # fmt: skip
        calls = await on_both_workers(base, "GET", "/demo/work")
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(2):  # failure_threshold=2: the shared circuit opens
                assert (await http.post("/demo/fail")).status_code == 502
        # Every worker sees the change (through Redis) and records it.
        scraped = await until_every_scrape(base, lambda s: s.get(OPEN) == 1)
        for _, found in scraped:  # whichever worker answered, the same totals
            count = found[
                "xnai_circuitbreaker_calls_seconds_count", (("kind", "successful"), ("name", "llm"))
            ]
            assert count == calls
            failed = found[
                "xnai_circuitbreaker_calls_seconds_count", (("kind", "failed"), ("name", "llm"))
            ]
            assert failed == 2
            assert found[OPEN] == 1
            assert found[CLOSED] == 0
            assert found["xnai_circuitbreaker_redis_available", (("name", "llm"),)] == 1
        # What Prometheus asks for: OpenMetrics, valid as such, the same state.
        async with httpx.AsyncClient(base_url=base) as http:
            answer = await http.get("/ops/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        families = {f.name: f for f in openmetrics_families(answer.text)}  # type: ignore[no-untyped-call]
        states = {
            s.labels["state"]: s.value
            for s in families["xnai_circuitbreaker_state"].samples
            if s.labels["name"] == "llm"
        }
        assert states == {"closed": 0, "half_open": 0, "open": 1}
        files = {name.split("_")[0] for name in await asyncio.to_thread(os.listdir, tmp_path)}
        assert {"counter", "histogram", "gauge"} <= files


async def test_a_circuit_no_worker_has_used_shows_its_state_in_redis(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Opened by another process before the workers started, and never called through
    them: every scrape says open (not the closed each worker assumed at start); closed
    by that process later, every scrape says closed."""
    elsewhere = create_redis_circuit_breaker(
        "llm", shared_redis, key_prefix=f"{key_prefix}:circuit:", op_timeout=2
    )
    await elsewhere.force_open()
    try:
        async with workers(
            "tests.metrics_worker_app:app", tmp_path,
            XNAI_TEST_REDIS_URL=SHARED_REDIS_URL,
            XNAI_TEST_KEY_PREFIX=key_prefix,
            XNAI_TEST_WEBHOOK_URL="http://127.0.0.1:9/unused",
        ) as base:  # fmt: skip
            for _, found in await scrapes(base):
                assert (found[OPEN], found[CLOSED]) == (1, 0)
            await elsewhere.force_close()
            for _, found in await until_every_scrape(base, lambda s: s.get(CLOSED) == 1):
                assert (found[OPEN], found[CLOSED]) == (0, 1)
    finally:
        await elsewhere.close()


async def test_every_workers_alert_sink_counters_are_served(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Each worker's sink delivers some alerts; a scrape on either worker shows the sum,
    and no destination or secret."""
    receiver = Receiver()
    try:
        async with workers(
            "tests.metrics_worker_app:app", tmp_path,
            XNAI_TEST_REDIS_URL=SHARED_REDIS_URL,
            XNAI_TEST_KEY_PREFIX=key_prefix,
            XNAI_TEST_WEBHOOK_URL=f"{receiver.url}/hooks/T0Z9route?token=webhooktoken123",
        ) as base:  # fmt: skip
            sent = await on_both_workers(base, "POST", "/demo/alert")
            assert len(receiver.requests) == sent
            metric = (
                "xnai_alert_notifications_sent_total",
                (("kind", "webhook"), ("sink", "pager")),
            )
            scraped = await until_every_scrape(base, lambda s: s.get(metric) == sent)
            for text, found in scraped:
                assert found[metric] == sent
                queue = found["xnai_alert_queue_length", (("kind", "webhook"), ("sink", "pager"))]
                assert queue == 0
                for secret in ("T0Z9route", "webhooktoken123", "hmac-secret-value", "127.0.0.1"):
                    assert secret not in text
    finally:
        receiver.close()


async def test_a_redis_outage_that_changes_no_state_shows_in_every_scrape(
    tmp_path: Path, private_redis: PrivateRedis, key_prefix: str
) -> None:
    """Redis dies while the circuit stays closed: no transition, yet within a publish
    interval every scrape says the circuit is not in step with Redis."""
    link = ("xnai_circuitbreaker_redis_available", (("name", "llm"),))
    async with workers(
        "tests.metrics_worker_app:app", tmp_path,
        XNAI_TEST_REDIS_URL=private_redis.url,
        XNAI_TEST_KEY_PREFIX=key_prefix,
        XNAI_TEST_WEBHOOK_URL="http://127.0.0.1:9/unused",
    ) as base:  # fmt: skip
        for _, found in await until_every_scrape(base, lambda s: s.get(link) == 1):
            assert (found[link], found[CLOSED]) == (1, 1)
        private_redis.kill()
        for _, found in await until_every_scrape(base, lambda s: s.get(link) == 0):
            assert (found[link], found[CLOSED]) == (0, 1)
