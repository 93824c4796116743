"""PostgreSQL health checks against the machine's server (asyncpg) and an unreachable port."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import asyncpg
import pytest

from tests.conftest import free_port
from xnai_core.health import database_checker as checkers_module
from xnai_core.health.checkers import DatabaseHealthChecker, HealthStatus
from xnai_core.health.factories import create_database_health_checker
from xnai_core.health.monitor import HealthMonitor

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY


async def backends_settle(admin: asyncpg.Connection, tag: str, expected: int) -> int:
    """Backends named ``tag``, polled briefly: a closed backend leaves the view asynchronously."""
    count = -1
    for _ in range(100):
        count = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", tag
        )
        if count == expected:
            break
        await asyncio.sleep(0.02)
    return int(count)


async def test_postgres_is_healthy_with_server_facts(postgres_dsn: str) -> None:
    """SELECT 1 latency, server version and connection counts are in details."""
    checker = create_database_health_checker(postgres_dsn)
    result = await checker.check()
    await checker.aclose()
    assert result.status == HEALTHY
    details = result.details
    assert details["database"] == "test"
    assert str(details["server_version"])[:2].isdigit()
    assert isinstance(details["connections"], int)
    assert int(details["connections"]) >= 1
    assert isinstance(details["max_connections"], int)
    assert details["in_recovery"] is False
    assert 0 <= float(details["select1_latency"]) <= result.response_time  # type: ignore[arg-type]


async def test_unreachable_port_is_unhealthy() -> None:
    """Nothing on the port: unhealthy with the connection error, never an exception."""
    checker = DatabaseHealthChecker("db", f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    result = await checker.check()
    await checker.aclose()
    assert result.status == UNHEALTHY
    assert result.error is not None
    assert result.details == {"dsn": checker.dsn}


async def test_missing_database_is_unhealthy(postgres_dsn: str) -> None:
    """A server that refuses the database gives unhealthy with the server's reason."""
    dsn = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database_xnai"
    checker = DatabaseHealthChecker("db", dsn)
    result = await checker.check()
    await checker.aclose()
    assert result.status == UNHEALTHY
    assert result.error is not None
    assert result.error.startswith("InvalidCatalogNameError")


async def test_dead_connection_is_replaced(postgres_dsn: str) -> None:
    """A connection killed by the server is dropped and the next check reconnects."""
    tag = f"xnai-test-{uuid.uuid4().hex[:8]}"
    checker = DatabaseHealthChecker("db", postgres_dsn, application_name=tag)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        assert (await checker.check()).status == HEALTHY
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            tag,
        )
        assert killed == 1
        after = [(await checker.check()).status for _ in range(2)]
        backends = await backends_settle(admin, tag, 1)
    finally:
        await admin.close()
        await checker.aclose()
    assert after[-1] == HEALTHY
    assert backends == 1


async def backend_pids(admin: asyncpg.Connection, tag: str, expected: int) -> list[int]:
    """PIDs of the backends named ``tag``, once there are ``expected`` of them (or 5 s pass)."""
    await backends_settle(admin, tag, expected)
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", tag
    )
    return [int(row["pid"]) for row in rows]


async def test_terminated_connection_is_replaced_at_the_next_check(postgres_dsn: str) -> None:
    """pg_terminate_backend of the checker's connection: the very next check reconnects."""
    tag = f"xnai-test-{uuid.uuid4().hex[:8]}"
    checker = DatabaseHealthChecker("db", postgres_dsn, application_name=tag)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        assert (await checker.check()).status == HEALTHY
        [first] = await backend_pids(admin, tag, 1)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        await backends_settle(admin, tag, 0)
        await asyncio.sleep(0.05)  # the server's goodbye reaches the client
        after = await checker.check()
        [second] = await backend_pids(admin, tag, 1)
    finally:
        await admin.close()
        await checker.aclose()
    assert (after.status, after.error) == (HEALTHY, None)
    assert second != first


@pytest.mark.parametrize(
    ("query", "error"),
    [
        # The server rejects the query; the connection itself would still work.
        ("SELECT 1/0", "DivisionByZeroError: division by zero"),
        # The query outlives the timeout and is cancelled mid-flight.
        ("SELECT pg_sleep(2)", "timed out after 0.3s"),
    ],
)
async def test_failed_or_cancelled_query_replaces_the_connection(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, query: str, error: str
) -> None:
    """After a failed or cancelled query the checker never reuses that connection."""
    tag = f"xnai-test-{uuid.uuid4().hex[:8]}"
    checker = DatabaseHealthChecker("db", postgres_dsn, application_name=tag, timeout=0.3)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        assert (await checker.check()).status == HEALTHY
        [first] = await backend_pids(admin, tag, 1)
        with monkeypatch.context() as patch:
            patch.setattr(checkers_module, "_FACTS_QUERY", query)
            failed = await checker.check()
        # The old backend is gone (for pg_sleep: once the server notices the cancel).
        gone = first not in await backend_pids(admin, tag, 0)
        after = await checker.check()
        [second] = await backend_pids(admin, tag, 1)
    finally:
        await admin.close()
        await checker.aclose()
    assert (failed.status, failed.error) == (UNHEALTHY, error)
    assert gone
    assert (after.status, second != first) == (HEALTHY, True)


async def test_dsn_password_never_appears(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in the DSN is masked in results, reports, reprs and logs."""
    password = "pg-s3cret-xyz"
    with_password = postgres_dsn.replace("postgres@", f"postgres:{password}@", 1)
    unreachable = f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/test"
    monitor = HealthMonitor(check_interval=5.0, failure_threshold=1)
    monitor.add_checker(DatabaseHealthChecker("db", with_password))
    monitor.add_checker(DatabaseHealthChecker("down", unreachable))
    with caplog.at_level(logging.DEBUG):
        ok = await monitor.trigger_manual_check("db")  # trust auth ignores the password
        down = await monitor.trigger_manual_check("down")
        await monitor.drain_notifications()
    await monitor.stop_monitoring()
    assert (ok.status, down.status) == (HEALTHY, UNHEALTHY)
    seen = json.dumps(
        [ok.to_dict(), down.to_dict(), monitor.get_health_report(), monitor.get_health_json()]
    )
    seen += caplog.text + repr(DatabaseHealthChecker("db", with_password))
    assert password not in seen
    assert ok.details["dsn"] == f"postgresql://postgres:***@{postgres_dsn.split('@', 1)[1]}"


async def test_factory_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """XNAI_DATABASE_DSN overrides the default DSN; the default name is postgres."""
    monkeypatch.setenv("XNAI_DATABASE_DSN", postgres_dsn)
    checker = create_database_health_checker()
    result = await checker.check()
    await checker.aclose()
    assert (checker.name, checker.dsn, result.status) == ("postgres", postgres_dsn, HEALTHY)


def test_factory_default_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable the DSN is the local server's postgres database."""
    monkeypatch.delenv("XNAI_DATABASE_DSN", raising=False)
    checker = create_database_health_checker()
    assert checker.dsn == "postgresql://postgres@localhost:5432/postgres"


async def test_monitor_stop_closes_the_connection(postgres_dsn: str) -> None:
    """After stop_monitoring, the checker's server connection is gone."""
    tag = f"xnai-test-{uuid.uuid4().hex[:8]}"
    monitor = HealthMonitor(check_interval=5.0)
    monitor.add_checker(DatabaseHealthChecker("db", postgres_dsn, application_name=tag))
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await monitor.trigger_manual_check("db")
        before = await backends_settle(admin, tag, 1)
        await monitor.stop_monitoring()
        after = await backends_settle(admin, tag, 0)
    finally:
        await admin.close()
    assert (before, after) == (1, 0)
