"""Multiprocess mode: two uvicorn workers write to PROMETHEUS_MULTIPROC_DIR, and
/metrics on either shows the sums, and a circuit state both workers agree on."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHARED_REDIS_URL, free_port

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


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


@pytest.mark.timeout(180)
async def test_two_workers_share_counts_and_state(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "XNAI_EXAMPLE_REDIS_URL": SHARED_REDIS_URL,
        "XNAI_EXAMPLE_KEY_PREFIX": key_prefix,
        "XNAI_EXAMPLE_CHECK_INTERVAL": "60",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "examples.ops_app:app", "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        cwd=REPO, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(f"{base}/ops/livez", server)
        pids: set[int] = set()
        calls = 0
        # The kernel spreads new connections over the workers; a fresh client each time.
        while len(pids) < 2:
            assert calls < 400, "every request went to one worker"
            async with httpx.AsyncClient(base_url=base) as http:
                response = await http.get("/demo/work")
            assert response.status_code == 200
            pids.add(response.json()["pid"])
            calls += 1
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(2):  # failure_threshold=2: the shared circuit opens
                assert (await http.post("/demo/fail")).status_code == 502
        # Every worker sees the change (through Redis) and records it.
        for _ in range(300):
            scraped = []
            for _ in range(4):
                async with httpx.AsyncClient(base_url=base) as http:
                    scraped.append(samples((await http.get("/ops/metrics")).text))
            states = {
                s.get(("xnai_circuitbreaker_state", (("name", "llm"), ("state", "open"))))
                for s in scraped
            }
            if states == {1.0}:
                break
            await asyncio.sleep(0.1)
        for found in scraped:  # whichever worker answered, the same totals
            count = found[
                "xnai_circuitbreaker_calls_seconds_count", (("kind", "successful"), ("name", "llm"))
            ]
            assert count == calls
            failed = found[
                "xnai_circuitbreaker_calls_seconds_count", (("kind", "failed"), ("name", "llm"))
            ]
            assert failed == 2
            assert found["xnai_circuitbreaker_state", (("name", "llm"), ("state", "open"))] == 1
            assert found["xnai_circuitbreaker_state", (("name", "llm"), ("state", "closed"))] == 0
            assert found["xnai_circuitbreaker_redis_available", (("name", "llm"),)] == 1
        files = {name.split("_")[0] for name in await asyncio.to_thread(os.listdir, tmp_path)}
        assert {"counter", "histogram", "gauge"} <= files
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=60)
