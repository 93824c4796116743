"""HTTP health checks against a real server on loopback: healthy, slow, 500, hang, refused."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import free_port
from tests.test_health_support import LoopbackHTTPServer
from xnai_core.health.checkers import HealthStatus, HTTPHealthChecker
from xnai_core.health.factories import (
    create_chainlit_ui_health_checker,
    create_rag_api_health_checker,
)
from xnai_core.health.monitor import HealthMonitor

HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY


async def test_healthy_endpoint() -> None:
    """A 200 answer is healthy, with the status code and URL in details."""
    async with LoopbackHTTPServer() as server:
        checker = HTTPHealthChecker("api", server.url)
        result = await checker.check()
        await checker.aclose()
    assert result.status == HEALTHY
    assert result.error is None
    assert {"url": server.url, "method": "GET", "status_code": 200} == result.details
    assert 0 < result.response_time < 5


async def test_slow_answer_is_degraded() -> None:
    """A correct answer slower than degraded_threshold is degraded, with the reason."""
    async with LoopbackHTTPServer() as server:
        server.delay = 0.2
        checker = HTTPHealthChecker("api", server.url, degraded_threshold=0.05)
        result = await checker.check()
        await checker.aclose()
    assert result.status == DEGRADED
    assert str(result.details["degraded_reason"]).endswith("> 0.05s")


async def test_server_error_is_unhealthy() -> None:
    """A 500 is unhealthy; the status code is in details and the error."""
    async with LoopbackHTTPServer() as server:
        server.status = 500
        checker = HTTPHealthChecker("api", server.url)
        result = await checker.check()
        await checker.aclose()
    assert (
        result.status,
        result.error,
        result.details["status_code"],
    ) == (UNHEALTHY, "unexpected HTTP status 500", 500)


async def test_expected_status_codes_are_configurable() -> None:
    """expected_status narrows what counts as success (a 302 is not a 200)."""
    async with LoopbackHTTPServer() as server:
        server.status = 302
        default = HTTPHealthChecker("a", server.url)
        strict = HTTPHealthChecker("b", server.url, expected_status=[200])
        results = [await default.check(), await strict.check()]
        await default.aclose()
        await strict.aclose()
    assert [r.status for r in results] == [HEALTHY, UNHEALTHY]


async def test_hanging_server_times_out_in_the_checker() -> None:
    """A server that never answers is unhealthy after the checker's own timeout."""
    async with LoopbackHTTPServer() as server:
        server.hang = True
        checker = HTTPHealthChecker("api", server.url, timeout=0.2)
        result = await checker.check()
        await checker.aclose()
    assert (result.status, result.error) == (UNHEALTHY, "timed out after 0.2s")
    assert 0.2 <= result.response_time < 1.0


async def test_hanging_server_times_out_in_the_monitor() -> None:
    """The monitor's check_timeout bounds a check, whatever the checker's own timeout."""
    async with LoopbackHTTPServer() as server:
        server.hang = True
        monitor = HealthMonitor(check_interval=10.0, check_timeout=0.2)
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=5.0))
        result = await monitor.trigger_manual_check("api")
        await monitor.stop_monitoring()
    assert (result.status, result.error) == (UNHEALTHY, "timed out after 0.2s")
    assert server.url == result.details["url"]


async def test_refused_connection_is_unhealthy() -> None:
    """Nothing listening: unhealthy with the connection error."""
    checker = HTTPHealthChecker("api", f"http://127.0.0.1:{free_port()}/health")
    result = await checker.check()
    await checker.aclose()
    assert result.status == UNHEALTHY
    assert result.error is not None
    assert result.error.startswith("ConnectError")


async def test_connections_are_pooled() -> None:
    """Repeated checks reuse one kept-alive connection."""
    async with LoopbackHTTPServer() as server:
        checker = HTTPHealthChecker("api", server.url)
        for _ in range(5):
            assert (await checker.check()).status == HEALTHY
        await checker.aclose()
    assert server.requests == 5
    assert server.connections == 1


async def test_credentials_never_leave_the_checker(caplog: pytest.LogCaptureFixture) -> None:
    """Passwords and tokens in the URL appear in no result, report, view, repr or log."""
    secrets = ("hunter2pw", "tok3n-abc")
    port = free_port()
    url = f"http://ops:{secrets[0]}@127.0.0.1:{port}/health?token={secrets[1]}"
    monitor = HealthMonitor(failure_threshold=1, alert_thresholds={"success_rate": 99})
    checker = create_rag_api_health_checker(url)
    monitor.add_checker(checker)
    with caplog.at_level(logging.DEBUG):
        refused = await monitor.trigger_manual_check("rag_api")
        async with LoopbackHTTPServer(port) as server:
            server.status = 503
            failed = await monitor.trigger_manual_check("rag_api")
            server.status = 200
            await monitor.trigger_manual_check("rag_api")
            ok = await monitor.trigger_manual_check("rag_api")
        await monitor.drain_notifications()
        await monitor.stop_monitoring()
    seen = json.dumps(
        [
            refused.to_dict(),
            failed.to_dict(),
            ok.to_dict(),
            monitor.get_health_report(),
            monitor.get_health_json(),
            [a.to_dict() for a in monitor.get_active_alerts()],
        ]
    )
    seen += repr(checker) + checker.url + caplog.text
    for secret in secrets:
        assert secret not in seen
    assert f"http://ops:***@127.0.0.1:{port}/health?token=***" == checker.url
    assert ok.status == HEALTHY


async def test_tokens_in_any_secret_parameter_or_user_name_never_appear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """auth_token, client_secret, api-key, X-Amz-Signature, a token user...: all masked."""
    secrets = {
        "tokuser": "tok_AAA111",
        "authtoken": "tok_BBB222",
        "clientsecret": "tok_CCC333",
        "privtoken": "tok_DDD444",
        "apikeydash": "tok_EEE555",
        "xamz": "tok_GGG777",
        "session": "tok_HHH888",
    }
    async with LoopbackHTTPServer() as server:
        host, path = f"127.0.0.1:{server.port}", "/health"
        urls = {
            "tokuser": f"http://{secrets['tokuser']}@{host}{path}",
            "authtoken": f"http://{host}{path}?auth_token={secrets['authtoken']}",
            "clientsecret": f"http://{host}{path}?client_secret={secrets['clientsecret']}&v=2",
            "privtoken": f"http://{host}{path}?PRIVATE-TOKEN={secrets['privtoken']}",
            "apikeydash": f"http://{host}{path}?api-key={secrets['apikeydash']}",
            "xamz": f"http://{host}{path}?X-Amz-Signature={secrets['xamz']}",
            "session": f"http://{host}{path}?sessionId={secrets['session']}",
        }
        monitor = HealthMonitor(failure_threshold=1, alert_thresholds={"success_rate": 99})
        checkers = {name: HTTPHealthChecker(name, url) for name, url in urls.items()}
        for checker in checkers.values():
            monitor.add_checker(checker)
        with caplog.at_level(logging.DEBUG):
            ok = [await monitor.trigger_manual_check(name) for name in checkers]
            server.status = 500
            failed = [await monitor.trigger_manual_check(name) for name in checkers]
            await monitor.drain_notifications()
            await monitor.stop_monitoring()
    seen = json.dumps(
        [
            [r.to_dict() for r in ok + failed],
            monitor.get_health_report(),
            monitor.get_health_json(),
            [a.to_dict() for a in monitor.get_active_alerts()],
        ]
    )
    seen += "".join(repr(c) + c.url + str(c.describe()) for c in checkers.values())
    seen += caplog.text
    for secret in secrets.values():
        assert secret not in seen
    assert [r.status for r in ok] == [HEALTHY] * len(checkers)
    assert checkers["tokuser"].url == f"http://***@{host}{path}"
    assert checkers["clientsecret"].url == f"http://{host}{path}?client_secret=***&v=2"
    assert checkers["xamz"].url == f"http://{host}{path}?X-Amz-Signature=***"
    assert ok[0].details["url"] == checkers["tokuser"].url
    # The token user still authenticates: it is sent as Basic "<token>:".
    assert server.authorizations[0] == "Basic dG9rX0FBQTExMTo="
    # The real query string still reaches the server.
    assert f"{path}?auth_token={secrets['authtoken']}" in server.paths


async def test_service_that_dies_and_returns_fires_recovery_once() -> None:
    """Server down -> unhealthy; back on the same port -> healthy; one callback."""
    calls: list[str] = []
    async with LoopbackHTTPServer() as server:
        monitor = HealthMonitor(
            check_interval=0.05, failure_threshold=2, success_threshold=2, jitter=lambda i: 0.0
        )
        monitor.add_checker(create_rag_api_health_checker(server.url, timeout=1.0))
        monitor.add_recovery_callback("rag_api", calls.append)
        await monitor.start_monitoring()
        assert await monitor.wait_for_status("rag_api", HEALTHY, timeout=10)
        await server.stop()
        assert await monitor.wait_for_status("rag_api", UNHEALTHY, timeout=10)
        await server.start()
        assert await monitor.wait_for_status("rag_api", HEALTHY, timeout=10)
        before = monitor.get_service_health("rag_api").total_checks
        while monitor.get_service_health("rag_api").total_checks < before + 5:
            await monitor.wait_for_status("rag_api", UNHEALTHY, timeout=0.05)
        await monitor.drain_notifications()
        await monitor.stop_monitoring()
    assert calls == ["rag_api"]


async def test_factories_read_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """XNAI_RAG_API_HEALTH_URL / XNAI_CHAINLIT_UI_HEALTH_URL replace the default URLs."""
    monkeypatch.setenv("XNAI_RAG_API_HEALTH_URL", "http://rag.internal:9000/healthz")
    monkeypatch.setenv("XNAI_CHAINLIT_UI_HEALTH_URL", "http://ui.internal:9001/")
    assert create_rag_api_health_checker().url == "http://rag.internal:9000/healthz"
    assert create_chainlit_ui_health_checker().url == "http://ui.internal:9001/"
    assert create_rag_api_health_checker("http://explicit/h").url == "http://explicit/h"


def test_factory_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without overrides the factories use the seed's stack defaults and names."""
    monkeypatch.delenv("XNAI_RAG_API_HEALTH_URL", raising=False)
    monkeypatch.delenv("XNAI_CHAINLIT_UI_HEALTH_URL", raising=False)
    rag, ui = create_rag_api_health_checker(), create_chainlit_ui_health_checker()
    assert (rag.name, rag.url) == ("rag_api", "http://localhost:8000/health")
    assert (ui.name, ui.url) == ("chainlit_ui", "http://localhost:8001/")


def test_http_checker_validates_url() -> None:
    """Only http(s) URLs; the message never shows the password."""
    with pytest.raises(ValueError, match=r"'url' must be an http:// or https:// URL") as info:
        HTTPHealthChecker("api", "ftp://u:topsecret@host/")
    assert "topsecret" not in str(info.value)


async def test_supplied_transport_stays_open() -> None:
    """A transport passed in is used and left open by aclose(); ours is closed."""
    import httpx

    async with LoopbackHTTPServer() as server:
        transport = httpx.AsyncHTTPTransport()
        checker = HTTPHealthChecker("api", server.url, transport=transport)
        first = await checker.check()
        await checker.aclose()
        second = await checker.check()  # still the same, still open
        await transport.aclose()
    assert (first.status, second.status) == (HEALTHY, HEALTHY)
    assert server.connections == 1


async def test_basic_auth_from_url_userinfo() -> None:
    """user:password in the URL is sent as a Basic Authorization header, not in the path."""
    async with LoopbackHTTPServer() as server:
        url = server.url.replace("http://", "http://ops:pa%40ss@")
        checker = HTTPHealthChecker("api", url)
        result = await checker.check()
        await checker.aclose()
    assert result.status == HEALTHY
    assert server.paths == ["/health"]
    assert server.authorizations == ["Basic b3BzOnBhQHNz"]  # base64("ops:pa@ss")


def test_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """XNAI_RAG_API_HEALTH_URL="" falls back to the built-in default."""
    monkeypatch.setenv("XNAI_RAG_API_HEALTH_URL", "  ")
    assert create_rag_api_health_checker().url == "http://localhost:8000/health"
