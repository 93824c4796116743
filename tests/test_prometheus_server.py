"""A real Prometheus scrapes the example app (create_ops_app mounted at /ops).

The test trips a breaker, fails a health check and lets recovery heal it, then asks
Prometheus' HTTP API for each metric. Every query of the Grafana dashboard and every
alert rule is evaluated by the same Prometheus, and promtool runs the rules' tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.alerting_helpers import Receiver, Reply
from tests.conftest import SHARED_REDIS_URL, free_port
from tests.prometheus_helpers import (
    ALERT_RULES,
    ALERT_TESTS,
    DASHBOARD,
    GRAFANA_VARIABLES,
    REPO,
    PrometheusServer,
    dashboard_queries,
    prometheus_scraping,
    require_prometheus,
)
from xnai_core.metrics._help import HELP

pytestmark = pytest.mark.slow


@asynccontextmanager
async def one_process(app: str, **env: str) -> AsyncIterator[str]:
    """``uvicorn app`` (one process) on loopback; yields host:port."""
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        cwd=REPO, env=environ,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert server.returncode is None, f"{app} exited"
                try:
                    if (await http.get(f"http://{address}/ops/livez")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert loop.time() < end, f"{app} did not start"
                await asyncio.sleep(0.1)
        yield address
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=60)


@pytest.fixture
async def example_app(shared_redis: aioredis.Redis, key_prefix: str) -> AsyncIterator[str]:
    """examples/ops_app.py under uvicorn on loopback; yields host:port."""
    async with one_process(
        "examples.ops_app:app",
        XNAI_EXAMPLE_REDIS_URL=SHARED_REDIS_URL,
        XNAI_EXAMPLE_KEY_PREFIX=key_prefix,
        XNAI_EXAMPLE_CHECK_INTERVAL="0.5",
    ) as address:
        yield address


async def only_value(prometheus: PrometheusServer, expr: str) -> float:
    result = await prometheus.wait_for(expr)
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.mark.timeout(240)
async def test_prometheus_scrapes_breaker_health_and_recovery(
    example_app: str, tmp_path: Path
) -> None:
    async with prometheus_scraping(tmp_path, example_app, "/ops/metrics") as prometheus:
        base = f"http://{example_app}"
        # Scraping before anything happens, so short-lived states are seen.
        assert await only_value(prometheus, 'up{job="rag"} == 1') == 1
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/demo/work")).status_code == 200
            for _ in range(2):
                assert (await http.post("/demo/fail")).status_code == 502
            assert (await http.get("/demo/work")).status_code == 503  # not permitted
            assert (await http.get("/demo/chat")).json() == {"answer": "temporarily unavailable"}
            assert (await http.post("/demo/vector_db/down")).status_code == 200

        # The breaker: state, outcomes, rejections, Redis link.
        sel = 'name="llm",job="rag"'
        assert (
            await only_value(prometheus, f'xnai_circuitbreaker_state{{{sel},state="open"}} == 1')
            == 1
        )
        assert (
            await only_value(prometheus, f'xnai_circuitbreaker_state{{{sel},state="closed"}}') == 0
        )
        failed = f'xnai_circuitbreaker_calls_seconds_count{{{sel},kind="failed"}} == 2'
        assert await only_value(prometheus, failed) == 2
        ok = f'xnai_circuitbreaker_calls_seconds_count{{{sel},kind="successful"}} == 1'
        assert await only_value(prometheus, ok) == 1
        rejected = f"xnai_circuitbreaker_not_permitted_calls_total{{{sel}}} == 1"
        assert await only_value(prometheus, rejected) == 1
        assert await only_value(prometheus, f"xnai_circuitbreaker_redis_available{{{sel}}}") == 1
        # Health: the vector store seen failing and unhealthy, alerted, then healthy again.
        vdb = 'service="vector_db",job="rag"'
        failed_checks = f'xnai_health_checks_total{{{vdb},result="unhealthy"}} >= 1'
        assert await only_value(prometheus, failed_checks) >= 1
        unhealthy = f'max_over_time(xnai_health_status{{{vdb},status="unhealthy"}}[5m]) == 1'
        assert await only_value(prometheus, unhealthy) == 1
        alerted = f'max_over_time(xnai_alerts_active{{{vdb},alert="status"}}[5m]) == 1'
        assert await only_value(prometheus, alerted) == 1
        healthy = f'xnai_health_status{{{vdb},status="healthy"}} == 1'
        assert await only_value(prometheus, healthy) == 1
        timed = f"xnai_health_check_duration_seconds_count{{{vdb}}} > 3"
        assert await only_value(prometheus, timed) > 3
        # Degradation: the chat service answered by its canned fallback.
        chat = 'service="chat",job="rag"'
        by_canned = f'xnai_degradation_calls_total{{{chat},source="canned"}} == 1'
        assert await only_value(prometheus, by_canned) == 1
        assert await only_value(prometheus, f"xnai_degradation_degraded{{{chat}}} == 1") == 1
        # Recovery: the vector store restarted by its rule, seen healthy again.
        restarted = (
            f'xnai_recovery_attempts_total{{{vdb},action="restart_service",result="succeeded"}}'
        )
        assert await only_value(prometheus, f"{restarted} == 1") == 1
        # ... and seen by increase(), as the dashboard's panel asks: the series was
        # scraped at 0 before the attempt (one born at 1 shows no increase at all).
        assert await only_value(prometheus, f"increase({restarted}[10m]) > 0") > 0

        # Every dashboard query and alert rule evaluates without error.
        for expr in dashboard_queries():
            await prometheus.query(expr)  # raises on a PromQL error
        rules = await prometheus.api("rules")
        loaded = [rule for group in rules["groups"] for rule in group["rules"]]
        assert {rule["name"] for rule in loaded} >= {
            "XnaiCircuitOpen",
            "XnaiServiceUnhealthy",
            "XnaiRecoveryEscalated",
            "XnaiCircuitRedisUnavailable",
        }
        for _ in range(120):  # every rule evaluated at least once, without error
            rules = await prometheus.api("rules")
            loaded = [rule for group in rules["groups"] for rule in group["rules"]]
            if all(rule.get("lastEvaluation", "").startswith("20") for rule in loaded):
                break
            await asyncio.sleep(0.25)
        assert all(rule["health"] == "ok" for rule in loaded), loaded
        # The open circuit is pending (for: 5m), not yet firing.
        pending = {rule["name"]: rule["state"] for rule in loaded}
        assert pending["XnaiCircuitOpen"] == "pending"


async def test_promtool_checks_and_tests_the_alert_rules() -> None:
    _, promtool = require_prometheus()
    for args in (["check", "rules", str(ALERT_RULES)], ["test", "rules", str(ALERT_TESTS)]):
        process = await asyncio.create_subprocess_exec(
            promtool, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, out.decode()
        assert b"SUCCESS" in out


def test_every_metric_is_on_the_dashboard() -> None:
    """Each metric the adapter exports is queried by some dashboard panel."""
    queries = " ".join(dashboard_queries())
    missing = [name for name in HELP if name not in queries]
    assert not missing, f"no dashboard panel shows {missing}"


@pytest.mark.timeout(240)
async def test_prometheus_scrapes_alert_sink_counters_for_the_dashboard(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """A sink delivers after a failed attempt; the dashboard's alert-delivery queries,
    evaluated by Prometheus, return the sink's series (its name and kind only)."""
    receiver = Receiver()
    receiver.script.append(Reply(500, body=b"try again"))
    try:
        async with (
            one_process(
                "tests.metrics_worker_app:app",
                XNAI_TEST_REDIS_URL=SHARED_REDIS_URL,
                XNAI_TEST_KEY_PREFIX=key_prefix,
                XNAI_TEST_WEBHOOK_URL=f"{receiver.url}/hooks/T0Z9route?token=webhooktoken123",
            ) as address,
            prometheus_scraping(tmp_path, address, "/ops/metrics") as prometheus,
        ):
            assert await only_value(prometheus, 'up{job="rag"} == 1') == 1
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                for _ in range(2):
                    assert (await http.post("/demo/alert")).status_code == 200
            sink = 'sink="pager",kind="webhook",job="rag"'
            sent = f"xnai_alert_notifications_sent_total{{{sink}}} == 2"
            assert await only_value(prometheus, sent) == 2
            retried = f"xnai_alert_notifications_retried_total{{{sink}}} == 1"
            assert await only_value(prometheus, retried) == 1
            panels = [expr for expr in dashboard_queries() if "xnai_alert_" in expr]
            assert len(panels) == 5
            for expr in panels:
                for series in await prometheus.wait_for(expr):
                    labels = set(series["metric"]) - {"reason"}
                    assert labels == {"sink", "kind"}, series
                    assert (series["metric"]["sink"], series["metric"]["kind"]) == (
                        "pager",
                        "webhook",
                    )
    finally:
        receiver.close()


def _panel_query(title: str) -> str:
    """The first query of the dashboard panel ``title``, as Grafana would send it."""
    board = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in board["panels"] if p.get("title") == title]
    expr: str = panel["targets"][0]["expr"]
    for variable, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, replacement)
    return expr


def _one_hot(metric: str, key: str, name: str, by_replica: dict[str, str]) -> list[Any]:
    """Input series of a one-hot state gauge in each replica (``instance``)."""
    label, values = (
        ("state", ("closed", "open", "half_open"))
        if metric == "xnai_circuitbreaker_state"
        else ("status", ("healthy", "degraded", "unhealthy", "unknown"))
    )
    return [
        {
            "series": f'{metric}{{job="rag",instance="{instance}",{key}="{name}",'
            f'{label}="{value}"}}',
            "values": "1x3" if value == current else "0x3",
        }
        for instance, current in by_replica.items()
        for value in values
    ]


async def test_the_state_panels_show_the_worst_state_across_replicas(tmp_path: Path) -> None:
    """The panels map 0..2 (3: unknown) to a state. Summing each state's maximum over
    the replicas, one replica open and one half-open read 3 (no such state), and one
    degraded and one unhealthy read 3, "unknown" in grey, not unhealthy in red."""
    _, promtool = require_prometheus()
    circuits = {
        "open+half": ({"a": "open", "b": "half_open"}, 2),
        "closed+half": ({"a": "closed", "b": "half_open"}, 1),
        "closed": ({"a": "closed", "b": "closed"}, 0),
    }
    services = {
        "degraded+unhealthy": ({"a": "degraded", "b": "unhealthy"}, 2),
        "unknown": ({"a": "unknown", "b": "unknown"}, 3),
        "unknown+healthy": ({"a": "unknown", "b": "healthy"}, 0),
        "healthy+degraded": ({"a": "healthy", "b": "degraded"}, 1),
    }
    series = [
        *(
            s
            for name, (replicas, _) in circuits.items()
            for s in _one_hot("xnai_circuitbreaker_state", "name", name, replicas)
        ),
        *(
            s
            for name, (replicas, _) in services.items()
            for s in _one_hot("xnai_health_status", "service", name, replicas)
        ),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": _panel_query("Circuit state"),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{{name="{name}"}}', "value": expected}
                            for name, (_, expected) in circuits.items()
                        ],
                    },
                    {
                        "expr": _panel_query("Health status"),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{{service="{name}"}}', "value": expected}
                            for name, (_, expected) in services.items()
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "panels_test.yml"
    path.write_text(json.dumps(tests))  # JSON is YAML
    process = await asyncio.create_subprocess_exec(
        promtool, "test", "rules", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, out.decode()
