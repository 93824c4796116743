"""A real Prometheus server (Debian's package) on a free loopback port, for the tests."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "xnai-core.json"

# What Grafana puts in place of its variables, for Prometheus to evaluate the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$job": ".+"}


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard (panels and annotations), as Grafana
    would send it."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    resolved = []
    for expr in exprs:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        resolved.append(expr)
    return resolved


def require_prometheus() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus, "prometheus missing: run scripts/setup.sh"
    assert promtool, "promtool missing: run scripts/setup.sh"
    return prometheus, promtool


class PrometheusServer:
    def __init__(self, url: str) -> None:
        self.url = url

    async def api(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            response = await http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def wait_for(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns something; its result."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            result = await self.query(expr)
            if result:
                return result
            assert loop.time() < end, f"Prometheus never returned anything for {expr}"
            await asyncio.sleep(0.25)


@asynccontextmanager
async def prometheus_scraping(
    tmp: Path, target: str, metrics_path: str
) -> AsyncIterator[PrometheusServer]:
    """Prometheus scraping ``target`` every 500 ms, with our alert rules loaded."""
    prometheus, _ = require_prometheus()
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
                "rule_files": [str(ALERT_RULES)],
                "scrape_configs": [
                    {
                        "job_name": "rag",
                        "metrics_path": metrics_path,
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert process.returncode is None, "prometheus exited"
                try:
                    if (await http.get(f"{url}/-/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert loop.time() < end, "prometheus did not become ready"
                await asyncio.sleep(0.1)
        yield PrometheusServer(url)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=30)
