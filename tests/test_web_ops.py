"""create_ops_app through httpx against uvicorn on loopback."""

from __future__ import annotations

import hmac
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from tests.conftest import free_port
from tests.ops_helpers import serving
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CustomHealthChecker,
    HealthMonitor,
    HTTPHealthChecker,
    events,
)
from xnai_core.web import create_ops_app, monitor_lifespan

TOKEN = "op-token-0123456789abcdef-never-shown"
PASSWORD = "pw-hunter2-secret"


@pytest.fixture(autouse=True)
def no_global_hooks() -> Iterator[None]:
    yield
    events.install_hooks()


@pytest.fixture
async def monitor() -> AsyncIterator[HealthMonitor]:
    """A monitor with a healthy service and one whose URL (with a password) refuses."""
    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    mon.add_checker(CustomHealthChecker("cache", lambda: True, in_thread=False))
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}/health"
    mon.add_checker(HTTPHealthChecker("vector_db", url, timeout=5))
    yield mon
    await mon.stop_monitoring()


@pytest.fixture
def registry() -> CircuitBreakerRegistry:
    breakers = CircuitBreakerRegistry()
    breakers.register(CircuitBreaker(CircuitBreakerConfig(name="llm")))
    return breakers


def app_for(
    monitor: HealthMonitor | None, breakers: CircuitBreakerRegistry | None, **kw: Any
) -> Starlette:
    kw.setdefault("metrics", CollectorRegistry())
    return create_ops_app(monitor, breakers=breakers, **kw)


async def test_health_report_json_and_503_when_a_service_fails(
    monitor: HealthMonitor, registry: CircuitBreakerRegistry
) -> None:
    async with (
        serving(app_for(monitor, registry)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await monitor.trigger_manual_check("cache")
        ok = await http.get("/health")
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "application/json"
        assert ok.json()["services"]["cache"]["status"] == "healthy"
        await monitor.trigger_manual_check("vector_db")
        failing = await http.get("/health")
        assert failing.status_code == 503
        assert failing.json()["services"]["vector_db"]["status"] == "unhealthy"
        assert failing.json()["summary"]["unhealthy"] == 1
        ietf = await http.get("/health", headers={"Accept": "application/health+json"})
        assert ietf.status_code == 503
        assert ietf.headers["content-type"] == "application/health+json"
        assert ietf.json()["status"] == "fail"
        assert ietf.json()["checks"]["vector_db:responseTime"][0]["status"] == "fail"


async def test_detail_only_with_the_token(monitor: HealthMonitor) -> None:
    app = app_for(monitor, None, control_token=TOKEN)
    await monitor.trigger_manual_check("vector_db")
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        public = await http.get("/health")
        public_json = await http.get("/health", headers={"Accept": "application/health+json"})
        auth = {"Authorization": f"Bearer {TOKEN}"}
        private = await http.get("/health", headers=auth)
        private_json = await http.get(
            "/health", headers={**auth, "Accept": "application/health+json"}
        )
    for response in (public, public_json):
        assert "127.0.0.1" not in response.text
        assert "ConnectError" not in response.text
    assert "details" not in public.json()["services"]["vector_db"]
    assert "output" not in public_json.json()["checks"]["vector_db:responseTime"][0]
    assert "127.0.0.1" in private.json()["services"]["vector_db"]["details"]["url"]
    assert private_json.json()["checks"]["vector_db:responseTime"][0]["output"]
    for response in (public, public_json, private, private_json):
        assert PASSWORD not in response.text
        assert TOKEN not in response.text


async def test_livez_and_readyz(monitor: HealthMonitor) -> None:
    await monitor.trigger_manual_check("cache")
    await monitor.trigger_manual_check("vector_db")
    every = app_for(monitor, None)
    only_cache = app_for(monitor, None, critical=["cache"])
    async with serving(every) as base, httpx.AsyncClient(base_url=base) as http:
        live = await http.get("/livez")
        assert (live.status_code, live.text) == (200, "ok")
        assert live.headers["content-type"].startswith("text/plain")
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert "vector_db" in ready.text
    async with serving(only_cache) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/readyz")).status_code == 200


async def test_metrics_with_content_negotiation(registry: CircuitBreakerRegistry) -> None:
    metrics = CollectorRegistry()
    app = app_for(None, registry, metrics=metrics)
    await registry.get("llm").call(lambda: 1)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        text = await http.get("/metrics")
        assert text.status_code == 200
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text.text)}
        assert "xnai_circuitbreaker_state" in families
        assert "xnai_circuitbreaker_calls_seconds" in families
        open_metrics = await http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.rstrip().endswith("# EOF")
    without = create_ops_app(None, metrics=False)
    async with serving(without) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_circuits_json(registry: CircuitBreakerRegistry) -> None:
    async with serving(app_for(None, registry)) as base, httpx.AsyncClient(base_url=base) as http:
        body = (await http.get("/circuits")).json()
    assert body["llm"]["state"] == "closed"
    assert body["llm"]["name"] == "llm"


async def test_control_routes_absent_without_a_token(registry: CircuitBreakerRegistry) -> None:
    async with serving(app_for(None, registry)) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.post("/circuits/llm/open", headers={"Authorization": "Bearer x"})
    assert response.status_code in (404, 405)
    assert registry.get("llm").state == "closed"


async def test_control_routes_need_the_token(
    registry: CircuitBreakerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("xnai_core.web._auth.hmac.compare_digest", spy)
    breaker = registry.get("llm")
    app = app_for(None, registry, control_token=TOKEN)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            refused = await http.post("/circuits/llm/open", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in refused.text
        assert breaker.state == "closed"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        opened = await http.post("/circuits/llm/open", headers=auth)
        assert opened.status_code == 200
        assert opened.json()["state"] == "open"
        assert breaker.state == "open"
        assert breaker.get_metrics()["forced_open"]
        assert (await http.post("/circuits/llm/close", headers=auth)).json()["state"] == "closed"
        await breaker.force_open()
        assert (await http.post("/circuits/llm/reset", headers=auth)).json()["state"] == "closed"
        assert (await http.post("/circuits/nope/open", headers=auth)).status_code == 404
        assert (await http.post("/circuits/llm/explode", headers=auth)).status_code == 404
    assert (b"wrong", TOKEN.encode()) in compared  # the wrong token went through compare_digest


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'control_token' must be a string of at least 16"):
        create_ops_app(None, control_token="short", metrics=False)
    with pytest.raises(TypeError, match="'monitor' must be a HealthMonitor"):
        create_ops_app("monitor", metrics=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'metrics' must be a bool or"):
        create_ops_app(None, metrics="yes")


async def test_mounted_in_a_parent_app_with_the_lifespan_helper(monitor: HealthMonitor) -> None:
    from starlette.routing import Mount

    parent = Starlette(
        routes=[Mount("/ops", app_for(monitor, None))], lifespan=monitor_lifespan(monitor)
    )
    assert not monitor.monitoring_active
    async with serving(parent, lifespan="on") as base, httpx.AsyncClient(base_url=base) as http:
        assert monitor.monitoring_active
        assert (await http.get("/ops/livez")).status_code == 200
        assert (await http.get("/ops/health")).status_code in (200, 503)
    assert not monitor.monitoring_active


async def test_no_secret_of_the_corpus_in_any_response() -> None:
    """Every shape of tests/secret_corpus.py as a service's error, a breaker's name and a
    check's detail: no core shows in any route's answer, token or not."""
    from tests.secret_corpus import SHAPES, leaks
    from xnai_core import CircuitBreakerConfig

    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    for index, shape in enumerate(SHAPES):

        def failing(text: str = shape.text) -> dict[str, object]:
            return {"healthy": False, "error": f"upstream said: {text}", "endpoint": text}

        mon.add_checker(CustomHealthChecker(f"svc{index}", failing, in_thread=False))
    breakers = CircuitBreakerRegistry()
    for shape in SHAPES:
        breakers.register(CircuitBreaker(CircuitBreakerConfig(name=shape.text)))
    for index in range(len(SHAPES)):
        await mon.trigger_manual_check(f"svc{index}")
    app = app_for(mon, breakers, control_token=TOKEN)
    texts = []
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            for accept in ("application/json", "application/health+json"):
                response = await http.get("/health", headers={**headers, "Accept": accept})
                assert response.status_code == 503
                texts.append(response.text)
            for path in ("/circuits", "/metrics", "/readyz", "/livez"):
                texts.append((await http.get(path, headers=headers)).text)
    assert leaks(texts) == []
    assert all(TOKEN not in text for text in texts)
    await mon.stop_monitoring()


async def test_readyz_waits_for_the_first_check_of_each_critical_service() -> None:
    """A service not checked yet is not known to be healthy: not ready until it is."""
    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    mon.add_checker(CustomHealthChecker("cache", lambda: True, in_thread=False))
    mon.add_checker(CustomHealthChecker("vector_db", lambda: True, in_thread=False))
    async with serving(app_for(mon, None)) as base, httpx.AsyncClient(base_url=base) as http:
        before = await http.get("/readyz")
        assert before.status_code == 503
        assert before.text == "not ready: cache (unknown), vector_db (unknown)"
        await mon.trigger_manual_check("cache")
        half = await http.get("/readyz")
        assert (half.status_code, half.text) == (503, "not ready: vector_db (unknown)")
        await mon.trigger_manual_check("vector_db")
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.text) == (200, "ready")


async def test_readyz_ignores_a_non_critical_service_not_checked_yet() -> None:
    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    mon.add_checker(CustomHealthChecker("cache", lambda: True, in_thread=False))
    mon.add_checker(CustomHealthChecker("batch", lambda: True, in_thread=False))
    await mon.trigger_manual_check("cache")
    app = app_for(mon, None, critical=["cache"])
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/readyz")).status_code == 200


def test_a_critical_name_the_monitor_does_not_check_is_refused() -> None:
    mon = HealthMonitor(check_interval=3600)
    mon.add_checker(CustomHealthChecker("cache", lambda: True, in_thread=False))
    with pytest.raises(ValueError, match="not monitored: 'cahce'"):
        create_ops_app(mon, critical=["cache", "cahce"], metrics=False)
    with pytest.raises(ValueError, match="not monitored: 'cache'"):
        create_ops_app(None, critical=["cache"], metrics=False)
    with pytest.raises(TypeError, match="'critical' must be an iterable of service names"):
        create_ops_app(mon, critical="cache", metrics=False)
    create_ops_app(mon, critical=[], metrics=False)  # nothing critical: always ready


async def test_a_critical_service_removed_later_is_no_longer_waited_for() -> None:
    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    mon.add_checker(CustomHealthChecker("cache", lambda: True, in_thread=False))
    mon.add_checker(CustomHealthChecker("old", lambda: False, in_thread=False))
    await mon.trigger_manual_check("cache")
    await mon.trigger_manual_check("old")
    app = app_for(mon, None, critical=["cache", "old"])
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/readyz")).text == "not ready: old (unhealthy)"
        mon.remove_checker("old")
        assert (await http.get("/readyz")).status_code == 200
    await mon.stop_monitoring()


async def test_a_lone_surrogate_in_a_name_fails_no_answer() -> None:
    """A name decoded from a client's JSON may hold a lone surrogate ("\\ud800"): it
    cannot be encoded as UTF-8, and /circuits, /health and /readyz answered 500."""
    name = "tenant-\ud800-x"
    mon = HealthMonitor(check_interval=3600, failure_threshold=1, success_threshold=1)
    mon.add_checker(CustomHealthChecker(name, lambda: False, in_thread=False))
    await mon.trigger_manual_check(name)
    breakers = CircuitBreakerRegistry()
    breakers.register(CircuitBreaker(CircuitBreakerConfig(name=name)))
    app = app_for(mon, breakers, control_token=TOKEN)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert "tenant-?-x" in (await http.get("/circuits")).json()
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            health = await http.get("/health", headers=headers)
            assert health.status_code == 503
            assert "tenant-?-x" in health.json()["services"]
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.text) == (503, "not ready: tenant-?-x (unhealthy)")
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert 'name="tenant-?-x"' in metrics.text


async def test_metrics_are_collected_off_the_event_loop(registry: CircuitBreakerRegistry) -> None:
    """Collecting and encoding 500 breakers' series takes hundreds of milliseconds of
    CPU: done in the event loop, it held every request of the app for that long."""
    metrics = CollectorRegistry()
    threads: list[int] = []

    class ThreadOfCollection:
        def collect(self) -> list[Any]:
            threads.append(threading.get_ident())
            return []

    metrics.register(ThreadOfCollection())
    app = app_for(None, registry, metrics=metrics)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/metrics")).status_code == 200
    assert threads
    assert threading.get_ident() not in threads  # uvicorn serves in this test's loop


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "text/plain; version=0.0.4"),
        # Prometheus 2.x's own header: OpenMetrics 1.0.0 first.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "application/openmetrics-text",
        ),
        # A scraper that ranks the text format first (Prometheus' scrape_protocols).
        (
            "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4",
            "text/plain; version=0.0.4",
        ),
        ("application/openmetrics-text;q=0, text/plain", "text/plain; version=0.0.4"),
        ("application/openmetrics-text;version=0.0.1, */*;q=0.1", "text/plain; version=0.0.4"),
        ("Application/OpenMetrics-Text; version=1.0.0", "application/openmetrics-text"),
        ("application/json", "text/plain; version=0.0.4"),
    ],
)
async def test_metrics_negotiation_honours_q_values(
    registry: CircuitBreakerRegistry, accept: str, expected: str
) -> None:
    app = app_for(None, registry)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(expected)
    if expected.startswith("application/openmetrics-text"):
        assert response.text.rstrip().endswith("# EOF")
    else:
        assert "# EOF" not in response.text


async def test_metrics_are_gzipped_when_the_scraper_accepts_it(
    registry: CircuitBreakerRegistry,
) -> None:
    """Prometheus sends ``Accept-Encoding: gzip``; 500 breakers' series are ~3 MB of
    text and ~0.1 MB gzipped."""
    await registry.get("llm").call(lambda: 1)
    app = app_for(None, registry)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        zipped = await http.get("/metrics", headers={"Accept-Encoding": "gzip"})
        refused = await http.get("/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
        plain = await http.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in refused.headers
    assert "content-encoding" not in plain.headers
    for response in (zipped, refused, plain):
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert "xnai_circuitbreaker_calls_seconds" in names


async def test_a_non_ascii_token_is_accepted_and_a_non_ascii_header_refused(
    registry: CircuitBreakerRegistry,
) -> None:
    """The header's bytes were decoded as latin-1 and compared re-encoded as UTF-8: a
    token with a non-ASCII character never matched, even when sent exactly."""
    token = "pässwörd-0123456789abcdef"
    app = app_for(None, registry, control_token=token)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        refused = [
            (await http.post("/circuits/llm/open", headers={b"Authorization": raw})).status_code
            for raw in (b"Bearer \xff\xfe", b"Bearer p\xe4ssw\xf6rd-0123456789abcdef", b"Bearer")
        ]
        assert refused == [401, 401, 401]
        assert registry.get("llm").state == "closed"
        sent = b"Bearer " + token.encode()
        opened = await http.post("/circuits/llm/open", headers={b"Authorization": sent})
        assert opened.status_code == 200
    assert registry.get("llm").state == "open"


async def test_a_circuit_whose_name_holds_a_slash_can_be_controlled() -> None:
    """``openai/gpt-4``: the route's ``{name}`` stopped at the first slash, so the
    operator's fix for a circuit stuck open answered 404 for it, encoded or not."""
    breakers = CircuitBreakerRegistry()
    breakers.register(CircuitBreaker(CircuitBreakerConfig(name="openai/gpt-4")))
    app = app_for(None, breakers, control_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        opened = await http.post("/circuits/openai/gpt-4/open", headers=auth)
        assert opened.status_code == 200
        assert opened.json()["name"] == "openai/gpt-4"
        assert breakers.get("openai/gpt-4").state == "open"
        closed = await http.post("/circuits/openai%2Fgpt-4/close", headers=auth)
        assert closed.status_code == 200
        assert breakers.get("openai/gpt-4").state == "closed"
        unknown = await http.post("/circuits/openai/gpt-4/explode", headers=auth)
        assert unknown.status_code == 404
        assert (await http.post("/circuits/openai/gpt-4/open")).status_code == 401


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/health+json", "application/health+json"),
        ("Application/Health+JSON", "application/health+json"),  # media types ignore case
        ("text/html, application/health+json;q=0.9", "application/health+json"),
        ("application/health+json;q=0, application/json", "application/json"),  # refused
        ("application/json, application/health+json;q=0.5", "application/json"),
        ("application/health+json;q=0.8, application/json;q=0.5", "application/health+json"),
        ("*/*", "application/json"),
        ("", "application/json"),
    ],
)
async def test_health_negotiates_health_json_by_q_and_in_any_case(
    monitor: HealthMonitor, accept: str, expected: str
) -> None:
    """``/health`` served health+json whenever the header named it, even refused
    (``q=0``) or ranked below plain JSON, and never when written in capitals; ranked by
    ``q`` now, as ``/metrics`` ranks its formats."""
    async with (
        serving(app_for(monitor, None)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await monitor.trigger_manual_check("cache")
        answer = await http.get("/health", headers={"Accept": accept})
        assert answer.headers["content-type"] == expected


async def test_a_circuit_listed_masked_is_controlled_by_its_masked_name() -> None:
    """``/circuits`` lists a breaker named after a URL with its password masked; the
    control answered 404 to that name, so such a circuit could be seen but not forced.
    Two names that mask alike are refused rather than guessed between."""
    breakers = CircuitBreakerRegistry()
    breakers.register(CircuitBreaker(CircuitBreakerConfig(name="redis://:pw-one@cache:6379")))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving(app_for(None, breakers, control_token=TOKEN)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        listed = (await http.get("/circuits")).json()
        assert list(listed) == ["redis://:***@cache:6379"]
        shown = "redis%3A%2F%2F%3A%2A%2A%2A%40cache%3A6379"
        opened = await http.post(f"/circuits/{shown}/open", headers=auth)
        assert opened.status_code == 200, opened.text
        assert "pw-one" not in opened.text
        assert breakers.get("redis://:pw-one@cache:6379").state == "open"
        breakers.register(CircuitBreaker(CircuitBreakerConfig(name="redis://:pw-two@cache:6379")))
        assert (await http.post(f"/circuits/{shown}/close", headers=auth)).status_code == 404
