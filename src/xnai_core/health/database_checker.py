"""DatabaseHealthChecker: PostgreSQL through asyncpg, one kept connection."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import asyncpg  # ships no type information: ignored in pyproject.toml

from .checker import DEFAULT_TIMEOUT, HealthChecker
from .redact import redact_url, url_secrets

__all__ = ["DatabaseHealthChecker"]


class _PgConnection(Protocol):
    """The slice of ``asyncpg.Connection`` this module uses."""

    async def fetchval(self, query: str) -> object: ...

    async def fetchrow(self, query: str) -> Mapping[str, object] | None: ...

    async def close(self, *, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def is_closed(self) -> bool: ...


_FACTS_QUERY = """
SELECT current_setting('server_version') AS server_version,
       current_database() AS database,
       (SELECT count(*) FROM pg_stat_activity) AS connections,
       current_setting('max_connections')::int AS max_connections,
       pg_is_in_recovery() AS in_recovery
"""


class DatabaseHealthChecker(HealthChecker):
    """Checks PostgreSQL through asyncpg: ``SELECT 1`` latency, version, connections.

    Keeps one connection open between checks and replaces it after any error,
    so a check measures the server, not a connection handshake, while a dead
    connection never lingers. The connection shows in ``pg_stat_activity`` under
    ``application_name``.
    """

    component_type = "datastore"

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
        application_name: str = "xnai-core-health",
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        self.application_name = application_name
        if not isinstance(dsn, str) or not dsn:
            raise ValueError(f"'dsn' must be a non-empty string: {redact_url(str(dsn))!r}")
        self._dsn = dsn
        self._public_dsn = redact_url(dsn)
        self._secrets = url_secrets(dsn)
        self._conn: _PgConnection | None = None

    @property
    def dsn(self) -> str:
        """The DSN, password masked."""
        return self._public_dsn

    def describe(self) -> dict[str, object]:
        return {"dsn": self._public_dsn}

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    async def probe(self) -> Mapping[str, object]:
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self.timeout,
                    # Lets a DBA see in pg_stat_activity which connection is the health check.
                    server_settings={"application_name": self.application_name},
                )
                self._conn = conn
            started = time.perf_counter()
            await conn.fetchval("SELECT 1")
            select_latency = time.perf_counter() - started
            row = await conn.fetchrow(_FACTS_QUERY)
        except BaseException:
            # Any failure (or a cancel mid-query) leaves the connection in doubt.
            self._drop_connection()
            raise
        details: dict[str, object] = {"select1_latency": select_latency}
        if row is not None:
            for key in ("server_version", "database", "connections", "max_connections"):
                details[key] = row[key]
            details["in_recovery"] = row["in_recovery"]
        return details

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=self.timeout)
        except Exception:
            conn.terminate()
