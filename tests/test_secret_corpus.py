"""Every shape of secret in the corpus, through every surface we show: none comes out.

Surfaces: degradation reasons, CallInfo, stats, events and WARNINGs (and a real httpx 401
on ``?api_token=`` against a loopback server); health results, reports, history, alerts,
health+json and logs; recovery statistics, alerts, reprs and validation errors; the Redis
connection manager's repr, status and logs; a Redis-backed breaker's metrics, repr and logs.
Logs are captured at DEBUG from every ``xnai_core`` logger, tracebacks included.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

import httpx
import pytest

from tests.conftest import PrivateRedis, free_port
from tests.secret_corpus import ARGV_SHAPES, SHAPES, leaks, shapes
from tests.test_health_support import LoopbackHTTPServer
from xnai_core import (
    Alert,
    CacheEntry,
    CacheFirstStrategy,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStrategy,
    CustomHealthChecker,
    DatabaseHealthChecker,
    DegradationEvent,
    DegradedModeStrategy,
    FallbackStrategy,
    HealthCheckError,
    HealthCheckResult,
    HealthMonitor,
    HealthStatus,
    HTTPHealthChecker,
    RecoveryActionType,
    RecoveryManager,
    RecoveryRule,
    RedisCache,
    RedisConnectionManager,
    RedisHealthChecker,
    ServiceDegradationManager,
    create_redis_circuit_breaker,
    last_call_info,
)
from xnai_core._redact import redact

_FORMAT = logging.Formatter("%(levelname)s %(name)s %(message)s")


@pytest.fixture
def our_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record of ours, as a handler would write it (with its traceback)."""
    return [
        _FORMAT.format(record)
        for record in caplog.records
        if record.name == "xnai_core" or record.name.startswith("xnai_core.")
    ]


def test_the_corpus_covers_the_shapes_of_issue_11() -> None:
    """The shapes the issue names are in the corpus, each with a core of its own."""
    names = " ".join(shape.name for shape in SHAPES)
    for needed in ("access_token", "api_token", "client_secret", "X-Amz-Signature",
                   "lone user", "Bearer", "'@' in the password", "--password="):  # fmt: skip
        assert needed in names
    cores = [shape.core for shape in SHAPES] + [shape.core for shape in ARGV_SHAPES]
    assert len(set(cores)) == len(cores)
    assert leaks(shape.text for shape in SHAPES) == sorted(s.core for s in SHAPES)


# -- degradation ---------------------------------------------------------------------------


class _BrokenCache:
    """A user's cache backend that fails with a message holding a secret."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def get(self, key: str) -> CacheEntry | None:
        raise ConnectionError(self.message)

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        raise ConnectionError(self.message)

    async def delete(self, key: str) -> None:
        raise ConnectionError(self.message)

    async def clear(self) -> int:
        return 0

    def get_stats(self) -> dict[str, str | int | float | bool | None]:
        return {}


async def test_degradation_reasons_stats_events_and_logs(
    our_logs: pytest.LogCaptureFixture,
) -> None:
    """A primary failing with each shape in its message: reasons, CallInfo, stats, events,
    WARNINGs, a breaker's fallback reason and a broken cache's log show none."""
    manager = ServiceDegradationManager()
    events: list[DegradationEvent] = []
    manager.add_listener(events.append)
    shown: list[str] = []
    for index, shape in enumerate(SHAPES):
        service = f"svc{index}"
        manager.add_service_strategy(service, DegradedModeStrategy("sorry"))
        manager.add_service_strategy(
            service,
            CacheFirstStrategy(_BrokenCache(f"cache said {shape.text}"), key_func=str),
            priority=10,
        )

        async def failing(prompt: str, text: str = shape.text) -> str:
            raise ConnectionError(f"upstream refused: {text}")

        result = await manager.call_service_detailed(service, failing, "q")
        info = last_call_info()
        assert info is not None
        shown += [str(result.info.reason), repr(result.info), json.dumps(info.to_dict())]

    breaker = CircuitBreaker(CircuitBreakerConfig(name="guarded"), lambda *a, **k: "fallback")
    manager.add_service_strategy("guarded", CircuitBreakerStrategy(breaker))
    for shape in SHAPES:

        async def failing_behind_breaker(text: str = shape.text) -> str:
            raise ConnectionError(f"upstream refused: {text}")

        result = await manager.call_service_detailed("guarded", failing_behind_breaker)
        assert result.source == "CircuitBreakerStrategy"
        shown.append(str(result.info.reason))
    shown.append(json.dumps(manager.get_degradation_stats()))
    await manager.drain_listeners()
    assert events
    shown += [json.dumps(event.to_dict()) for event in events]
    shown += [repr(breaker), json.dumps(breaker.get_metrics())]
    shown += logged(our_logs)
    assert leaks(shown) == []
    assert sum("degraded" in line for line in logged(our_logs)) >= len(SHAPES)


async def test_a_real_httpx_401_on_api_token(our_logs: pytest.LogCaptureFixture) -> None:
    """httpx puts the URL (with ?api_token=) in its error: the reason, the stats and the
    WARNING mask it."""
    core = shapes(tag="Http")[0].core
    manager = ServiceDegradationManager()
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    async with LoopbackHTTPServer() as server, httpx.AsyncClient() as client:
        server.status = 401

        async def ask_llm() -> object:
            response = await client.get(f"{server.url}?model=m&api_token={core}")
            response.raise_for_status()
            return response.json()

        result = await manager.call_service_detailed("llm", ask_llm)
    assert type(result.info.error) is httpx.HTTPStatusError
    assert core in str(result.info.error)  # the raw error has it: the test means something
    assert "api_token=***" in str(result.info.reason)
    shown = [str(result.info.reason), json.dumps(manager.get_degradation_stats())]
    shown += logged(our_logs)  # httpx's own INFO line of the request URL is httpx's
    assert leaks(shown) == []


async def test_redis_cache_and_redis_backed_breaker_with_a_password_url(
    private_redis: PrivateRedis, our_logs: pytest.LogCaptureFixture
) -> None:
    """Clients built from URLs holding passwords, against a server that is gone: the
    cache's and the breaker's reprs, stats, metrics and logs show no password."""
    url_shapes = [s for s in SHAPES if s.url and s.scheme == "redis" and "@" in s.text]
    shown: list[str] = []
    for shape in url_shapes:
        url = shape.text.replace("127.0.0.1:6379", f"127.0.0.1:{free_port()}")
        connection = RedisConnectionManager(url)
        try:
            assert await connection.connect() is False
            shown += [repr(connection), json.dumps(await connection.get_health_status())]
            cache = RedisCache(connection.client, prefix="corpus:", op_timeout=0.2)
            strategy = CacheFirstStrategy(cache, key_func=str)
            manager = ServiceDegradationManager()
            manager.add_service_strategy("llm", strategy)

            async def answer() -> str:
                return "ok"

            assert await manager.call_service("llm", answer) == "ok"
            await strategy.flush()
            shown += [repr(cache), json.dumps(cache.get_stats()), json.dumps(strategy.get_stats())]
            breaker = create_redis_circuit_breaker("corpus", connection, op_timeout=0.2)
            assert await breaker.call(answer) == "ok"
            shown += [repr(breaker), json.dumps(breaker.get_metrics(), default=str)]
            await breaker.close()
            await cache.aclose()
        finally:
            await connection.close()
    shown += logged(our_logs)
    assert any("unavailable" in line or "unreachable" in line for line in shown)
    assert leaks(shown) == []


# -- health --------------------------------------------------------------------------------


async def test_health_results_reports_history_alerts_json_and_logs(
    our_logs: pytest.LogCaptureFixture,
) -> None:
    """HTTP checkers on secret-bearing URLs (a server answering 401), custom checks failing
    with each shape, a database and a Redis checker with passwords in their DSNs: nothing
    of any secret in results, report, history, alerts, health+json or logs."""
    alerts: list[Alert] = []
    refused: list[str] = []  # what a checker said about a URL it cannot use
    async with LoopbackHTTPServer() as server:
        server.status = 401
        monitor = HealthMonitor(
            check_interval=60,
            alert_thresholds={"consecutive_failures": 1},
            failure_threshold=1,
        )
        monitor.add_alert_handler(alerts.append)
        names: list[str] = []
        for index, shape in enumerate(SHAPES):
            name = f"custom{index}"

            def failing(text: str = shape.text) -> bool:
                raise ConnectionError(f"probe failed: {text}")

            monitor.add_checker(CustomHealthChecker(name, failing, timeout=2))
            names.append(name)
            if shape.url and shape.scheme in ("http", "https"):
                target = shape.text.replace("api.example.com", f"127.0.0.1:{server.port}")
                target = target.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
                target = target.replace("https://", "http://")
                try:
                    monitor.add_checker(HTTPHealthChecker(f"http{index}", target, timeout=2))
                except (ValueError, TypeError, httpx.InvalidURL) as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
                    continue
                names.append(f"http{index}")
        dead = free_port()
        for index, shape in enumerate(s for s in SHAPES if s.url and s.scheme == "postgresql"):
            dsn = shape.text.replace("db:5432", f"127.0.0.1:{dead}")
            monitor.add_checker(DatabaseHealthChecker(f"db{index}", dsn, timeout=2))
            names.append(f"db{index}")
        for index, shape in enumerate(s for s in SHAPES if s.url and s.scheme == "redis"):
            url = shape.text.replace("127.0.0.1:6379", f"127.0.0.1:{dead}")
            monitor.add_checker(RedisHealthChecker(f"redis{index}", url=url, timeout=2))
            names.append(f"redis{index}")
        try:
            for name in names:
                await monitor.trigger_manual_check(name)
            await monitor.drain_notifications()
            shown = [
                json.dumps(monitor.get_health_report(), default=str),
                json.dumps(monitor.get_health_json(), default=str),
            ]
            for name in names:
                shown += [repr(r) for r in monitor.get_history(name)]
                shown.append(repr(monitor.get_service_health(name)))
            shown += [repr(alert) for alert in monitor.get_active_alerts()]
            shown += [repr(alert) for alert in alerts]
        finally:
            await monitor.stop_monitoring()
    shown += refused
    shown += logged(our_logs)
    assert server.requests >= 1  # the HTTP checks reached the server
    assert len(alerts) >= len(names)
    assert leaks(shown) == []


# -- recovery ------------------------------------------------------------------------------


def test_recovery_rule_reprs_and_validation_errors() -> None:
    """A rule's repr and every validation error about its command mask its arguments."""
    shown: list[str] = []
    for shape in ARGV_SHAPES:
        rule = RecoveryRule("svc", RecoveryActionType.RESTART_SERVICE, command=list(shape.argv))
        shown += [repr(rule), rule.describe()]
        for bad in (
            " ".join(shape.argv),
            [*shape.argv, 7],
            [*shape.argv[:-1], shape.argv[-1] + "\0"],
        ):
            with pytest.raises((TypeError, ValueError)) as caught:
                RecoveryRule("svc", RecoveryActionType.RESTART_SERVICE, command=bad)  # type: ignore[arg-type]
            shown.append(str(caught.value))
    assert leaks(shown) == []


async def test_recovery_stats_alerts_and_logs(our_logs: pytest.LogCaptureFixture) -> None:
    """Recovery that fails with every shape (a function raising them, commands printing
    their secret arguments) and then escalates: recent failures, the last attempt, the
    critical alerts and the logs mask them all."""
    alerts: list[Alert] = []
    manager = RecoveryManager()
    manager.add_alert_handler(alerts.append)

    def fast(service: str, action: str, **how: object) -> RecoveryRule:
        return RecoveryRule(
            service, action, max_attempts=1, backoff_base=0.01, backoff_max=0.02, cooldown=0,
            grace_period=0.3, failure_threshold=1, timeout=5, **how,  # type: ignore[arg-type]
        )  # fmt: skip

    every_shape = "\n".join(shape.text for shape in SHAPES)

    def heal(name: str) -> None:
        raise ConnectionError(f"restart failed:\n{every_shape}")

    services = ["texts"]
    manager.add_rule(fast("texts", "restart_service", recovery_func=heal))
    for index, argv_shape in enumerate(ARGV_SHAPES):
        service = f"cmd{index}"
        # /bin/echo prints the secret arguments; the restart after it fails, and escalates.
        manager.add_rule(fast(service, "clear_cache", command=["/bin/echo", *argv_shape.argv]))
        manager.add_rule(fast(service, "restart_service", command=["/bin/false", *argv_shape.argv]))
        services.append(service)
    monitor = HealthMonitor(check_interval=0.2, failure_threshold=1, recovery_manager=manager)

    async def sick() -> bool:
        return False

    for service in services:
        monitor.add_checker(CustomHealthChecker(service, sick, timeout=2))
    await monitor.start_monitoring()
    try:
        for _ in range(600):
            if all(manager.is_escalated(service) for service in services):
                break
            await asyncio.sleep(0.05)
        assert [s for s in services if not manager.is_escalated(s)] == []
        for _ in range(600):  # the manager's own handlers hear it in the background
            if len({a.service for a in alerts if a.kind == "manual_intervention"}) == len(services):
                break
            await asyncio.sleep(0.05)
        await monitor.drain_notifications()
        stats = json.dumps(manager.get_recovery_stats())
        assert "restart failed" in stats
        assert "--password" in stats  # the echoed arguments are there, their values not
        shown = [stats, *(repr(alert) for alert in alerts)]
        shown += [repr(alert) for alert in monitor.get_active_alerts()]
    finally:
        await monitor.stop_monitoring()
        await manager.aclose()
    shown += logged(our_logs)
    escalated = {a.service for a in alerts if a.kind == "manual_intervention"}
    assert escalated == set(services)
    assert all(a.severity == "critical" for a in alerts if a.kind == "manual_intervention")
    assert leaks(shown) == []


# -- what user code hands us: check details, listeners, key functions --------------------


class _OwnChecker:
    """A checker of the user's own (no HealthChecker base): its result as it makes it."""

    def __init__(self, name: str, details: dict[str, object]) -> None:
        self.name = name
        self._details = details

    async def check(self) -> HealthCheckResult:
        return HealthCheckResult(
            service=self.name, status=HealthStatus.HEALTHY, details=dict(self._details)
        )


async def test_health_details_a_check_of_ours_or_yours_returns() -> None:
    """A custom check that reports its endpoint (`{"dsn": settings.DATABASE_URL}`) or a
    config it read, succeeding or failing with HealthCheckError details, and a checker of
    the user's own: the details reach the report, history, health+json and the service's
    snapshot, and showed every secret in them (only the error text was masked)."""
    monitor = HealthMonitor(check_interval=60)
    names: list[str] = []
    for index, shape in enumerate(SHAPES):
        details: dict[str, object] = {
            "endpoint": shape.text,
            "seen": [shape.text, {"nested": shape.text}],
            "password": shape.core,  # a value under a secret key, whatever it looks like
        }

        def reporting(details: dict[str, object] = details) -> dict[str, object]:
            return details

        def failing(details: dict[str, object] = details) -> bool:
            raise HealthCheckError("probe failed", details=details)

        monitor.add_checker(CustomHealthChecker(f"ok{index}", reporting, timeout=2))
        monitor.add_checker(CustomHealthChecker(f"bad{index}", failing, timeout=2))
        monitor.add_checker(_OwnChecker(f"own{index}", details))
        names += [f"ok{index}", f"bad{index}", f"own{index}"]
    try:
        results = [await monitor.trigger_manual_check(name) for name in names]
        shown = [repr(result) for result in results]
        shown.append(json.dumps(monitor.get_health_report(), default=str))
        shown.append(json.dumps(monitor.get_health_json(), default=str))
        for name in names:
            shown += [repr(r) for r in monitor.get_history(name)]
            shown.append(repr(monitor.get_service_health(name)))
    finally:
        await monitor.stop_monitoring()
    masked = redact(SHAPES[0].text)
    assert results[0].details["seen"] == [masked, {"nested": masked}]
    assert results[0].details["password"] == "***"
    assert leaks(shown) == []


async def test_degradation_listener_and_key_function_failures(
    our_logs: pytest.LogCaptureFixture,
) -> None:
    """A listener posting to a webhook whose URL holds its token (a functools.partial), which
    fails naming that URL, sync or async; a key function whose error quotes its input: the
    ERRORs showed the partial's repr, the exception and its traceback unmasked."""
    manager = ServiceDegradationManager()

    def post(url: str, event: DegradationEvent) -> None:
        raise ConnectionError(f"POST {url} refused")

    async def post_later(url: str, event: DegradationEvent) -> None:
        raise ConnectionError(f"POST {url} refused")

    async def down() -> str:
        raise ConnectionError("primary down")

    async def up(prompt: str) -> str:
        return "fine"

    for index, shape in enumerate(SHAPES):
        manager.add_listener(functools.partial(post, shape.text))
        manager.add_listener(functools.partial(post_later, shape.text))

        def key_of(prompt: str, text: str = shape.text) -> str:
            raise ValueError(f"cannot key {text}")

        manager.add_service_strategy(f"k{index}", CacheFirstStrategy(key_func=key_of))
        await manager.call_service(f"k{index}", up, "hi")
    manager.add_service_strategy("llm", DegradedModeStrategy("sorry"))
    await manager.call_service("llm", down)
    await manager.drain_listeners()
    shown = logged(our_logs)
    assert any("listener" in line for line in shown)
    assert any("key_func raised ValueError" in line for line in shown)
    assert leaks(shown) == []


def test_degradation_strategy_reprs_and_errors() -> None:
    """A fallback that calls a secondary region through a functools.partial holding its URL,
    a canned answer holding a config, a strategy of one's own whose repr names its URL: the
    reprs, and the errors that quote them, showed each secret."""

    def secondary(url: str, prompt: str) -> str:
        return prompt

    class Region:
        def __init__(self, url: str) -> None:
            self.url = url

        def __repr__(self) -> str:
            return f"Region({self.url!r})"

    manager = ServiceDegradationManager()
    shown: list[str] = []
    for shape in SHAPES:
        fallback = FallbackStrategy(functools.partial(secondary, shape.text), name="secondary")
        canned = DegradedModeStrategy({"note": shape.text, "password": shape.core})
        shown += [repr(fallback), repr(canned)]
        with pytest.raises(TypeError) as not_a_strategy:
            manager.add_service_strategy("llm", Region(shape.text))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="is not added") as not_added:
            manager.remove_service_strategy("llm", fallback)
        shown += [str(not_a_strategy.value), str(not_added.value)]
    assert all(
        "secondary" in line or "DegradedModeStrategy" in line or "Region" in line for line in shown
    )
    assert leaks(shown) == []
