"""The seed's health examples, as written, with local servers standing in for the stack."""

from __future__ import annotations

import json
import logging

import pytest
import redis.asyncio as aioredis
from app.XNAi_rag_app.core import (
    HealthMonitor,
    create_chainlit_ui_health_checker,
    create_rag_api_health_checker,
    create_redis_health_checker,
)

from tests.test_health_support import LoopbackHTTPServer

logger = logging.getLogger("tests.seed")

REPORT_KEYS = ["timestamp", "monitoring_active", "services", "summary"]
SERVICE_KEYS = [
    "status",
    "last_check",
    "response_time",
    "consecutive_failures",
    "consecutive_successes",
    "total_checks",
    "details",
]
SUMMARY_KEYS = ["total", "healthy", "degraded", "unhealthy", "unknown"]


async def test_seed_health_monitoring_setup(
    monkeypatch: pytest.MonkeyPatch, shared_redis: aioredis.Redis
) -> None:
    """ "Health Monitoring Setup" runs as written and the report has exactly the seed's keys."""
    redis_client = shared_redis
    async with LoopbackHTTPServer() as rag_api:
        monkeypatch.setenv("XNAI_RAG_API_HEALTH_URL", rag_api.url)

        # --- the seed, verbatim ---
        # Create health monitor
        monitor = HealthMonitor(check_interval=30.0)

        # Add health checkers
        monitor.add_checker(create_rag_api_health_checker())
        monitor.add_checker(create_redis_health_checker(redis_client))

        # Start monitoring
        await monitor.start_monitoring()

        # Get health report
        report = monitor.get_health_report()
        # --- end of the seed ---

        assert list(report) == REPORT_KEYS
        assert report["monitoring_active"] is True
        assert list(report["services"]) == ["rag_api", "redis"]
        for entry in report["services"].values():
            assert list(entry) == SERVICE_KEYS
        assert list(report["summary"]) == SUMMARY_KEYS
        assert report["summary"]["total"] == 2

        # Troubleshooting: "Trigger manual health check".
        for name in ("rag_api", "redis"):
            result = await monitor.trigger_manual_check(name)
            assert f"Health check result: {result.status}" == "Health check result: healthy"

        report = monitor.get_health_report()
        json.dumps(report)  # JSON-ready as the seed shows it
        assert report["summary"] == {
            "total": 2,
            "healthy": 2,
            "degraded": 0,
            "unhealthy": 0,
            "unknown": 0,
        }
        rag = report["services"]["rag_api"]
        assert (rag["status"], rag["consecutive_successes"], rag["total_checks"]) == (
            "healthy",
            1,
            1,
        )
        assert rag["details"]["status_code"] == 200
        assert rag_api.paths == ["/health"]
        await monitor.stop_monitoring()
    assert monitor.get_health_report()["monitoring_active"] is False


async def test_seed_health_monitor_configuration() -> None:
    """ "Health Monitor Configuration": success_rate percent, response_time seconds."""
    monitor = HealthMonitor(
        check_interval=30.0,  # Seconds between checks
        alert_thresholds={
            "success_rate": 95,  # Alert if success rate drops below 95%
            "response_time": 5.0,  # Alert if response time exceeds 5s
        },
    )
    assert monitor.check_interval == 30.0
    assert monitor.alert_thresholds == {"success_rate": 95.0, "response_time": 5.0}


async def test_seed_rag_api_integration_recovery_callback() -> None:
    """ "RAG API Integration": the recovery callback runs once when the API comes back."""
    calls: list[str] = []
    async with LoopbackHTTPServer() as rag_api:
        monitor = HealthMonitor(check_interval=30.0, failure_threshold=1, success_threshold=1)
        monitor.add_checker(create_rag_api_health_checker(rag_api.url))

        # Add recovery callback
        async def rag_recovery_callback(service_name: str) -> None:
            logger.info("RAG API recovered, clearing cache")
            calls.append(service_name)

        monitor.add_recovery_callback("rag_api", rag_recovery_callback)

        rag_api.status = 503
        assert (await monitor.trigger_manual_check("rag_api")).status == "unhealthy"
        rag_api.status = 200
        assert (await monitor.trigger_manual_check("rag_api")).status == "healthy"
        await monitor.trigger_manual_check("rag_api")
        await monitor.drain_notifications()
        await monitor.stop_monitoring()
    assert calls == ["rag_api"]


async def test_seed_chainlit_ui_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Chainlit UI Integration": create_chainlit_ui_health_checker() checks the UI."""
    async with LoopbackHTTPServer() as ui:
        monkeypatch.setenv("XNAI_CHAINLIT_UI_HEALTH_URL", f"http://127.0.0.1:{ui.port}/")
        chainlit_checker = create_chainlit_ui_health_checker()
        result = await chainlit_checker.check()
        await chainlit_checker.aclose()
    assert (chainlit_checker.name, result.status, ui.paths) == ("chainlit_ui", "healthy", ["/"])
