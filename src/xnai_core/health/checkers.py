"""Health check results and the checkers that produce them.

A checker answers one question, "how is this service right now?", with a
:class:`HealthCheckResult`. :class:`HealthChecker` is the base class: subclasses
implement :meth:`HealthChecker.probe` (return details on success, raise on
failure) and inherit timing, error capture, the slow-means-degraded rule and
credential scrubbing. Anything with a ``name`` and an async ``check()`` also
works with the monitor (:class:`SupportsHealthCheck`).

Checkers never raise from ``check()``: a failure is an unhealthy result that
carries the error text. ``check()`` bounds the probe by the checker's own
``timeout`` (a timeout is an unhealthy "timed out after Xs" result); the monitor
further caps it at its interval.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextvars
import enum
import inspect
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg  # ships no type information: ignored in pyproject.toml
import httpx
import redis.asyncio as aioredis

from ._validate import check_name, check_seconds
from .redact import redact_url, scrub, url_secrets

__all__ = [
    "CheckFunction",
    "CheckReturn",
    "CustomHealthChecker",
    "DatabaseHealthChecker",
    "HTTPHealthChecker",
    "HealthCheckError",
    "HealthCheckResult",
    "HealthChecker",
    "HealthStatus",
    "RedisClient",
    "RedisHealthChecker",
    "SupportsHealthCheck",
]

DEFAULT_TIMEOUT = 5.0
USER_AGENT = "xnai-core-health/0.1"


class HealthStatus(enum.StrEnum):
    """How a service is doing; the value is what reports and JSON show.

    Compares equal to its string: ``HealthStatus.HEALTHY == "healthy"``.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class HealthCheckResult:
    """The outcome of one check of one service.

    ``response_time`` is in seconds, ``timestamp`` is wall-clock (``time.time()``)
    at the start of the check. ``error`` is set when the check failed; it never
    contains credentials.
    """

    service: str
    status: HealthStatus
    response_time: float = 0.0
    timestamp: float = field(default_factory=time.time)
    details: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        # Accept "healthy" as well as HealthStatus.HEALTHY; reject anything else early.
        object.__setattr__(self, "status", HealthStatus(self.status))
        response_time = check_seconds("response_time", self.response_time, allow_zero=True)
        object.__setattr__(self, "response_time", response_time)
        if not isinstance(self.details, dict):
            object.__setattr__(self, "details", dict(self.details))

    @property
    def ok(self) -> bool:
        """True when the service answered correctly (healthy, or degraded but answering)."""
        return self.status in (HEALTHY, DEGRADED)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "service": self.service,
            "status": self.status.value,
            "response_time": self.response_time,
            "timestamp": self.timestamp,
            "details": dict(self.details),
            "error": self.error,
        }


class HealthCheckError(RuntimeError):
    """Raised by a probe to fail its check with a message and extra details."""

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, object] = dict(details or {})


@runtime_checkable
class SupportsHealthCheck(Protocol):
    """What the monitor needs from a checker: a name and an async check().

    Optional attributes it uses when present: ``timeout`` (seconds),
    ``component_type`` (for the health+json view), ``describe()`` (static details
    for results the monitor creates itself) and ``async aclose()``.
    """

    @property
    def name(self) -> str: ...

    async def check(self) -> HealthCheckResult: ...


def _error_text(exc: BaseException) -> str:
    message = str(exc)
    if isinstance(exc, HealthCheckError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class HealthChecker(abc.ABC):
    """Base class for checkers: implement :meth:`probe`, get the rest.

    ``timeout`` bounds one check: :meth:`check` cancels a probe that outlives it
    and returns an unhealthy "timed out after Xs" result (the monitor further
    caps it at its interval).
    ``degraded_threshold``: a correct answer slower than this many seconds is
    ``degraded`` rather than ``healthy``; ``None`` disables the rule.
    """

    # health+json componentType: "component", or "datastore" for databases and caches.
    component_type: str = "component"

    def __init__(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
    ) -> None:
        self._name = check_name(name)
        self.timeout = check_seconds("timeout", timeout)
        self.degraded_threshold = (
            None
            if degraded_threshold is None
            else check_seconds("degraded_threshold", degraded_threshold)
        )

    @property
    def name(self) -> str:
        """The service this checker watches; unique within a monitor."""
        return self._name

    @abc.abstractmethod
    async def probe(self) -> Mapping[str, object] | HealthCheckResult:
        """Look at the service once.

        Return details (a mapping) when it is fine, or a full
        :class:`HealthCheckResult` to choose the status yourself. Raise to fail:
        :class:`HealthCheckError` carries a message and details; any other
        exception becomes ``"<ExceptionType>: <message>"``.
        """

    def describe(self) -> dict[str, object]:
        """Static, credential-free facts put into every result's details."""
        return {}

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a result (passwords, tokens)."""
        return ()

    async def aclose(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Release pooled connections; the checker reopens them when used again."""

    async def check(self) -> HealthCheckResult:
        """Run :meth:`probe`, timed and bounded by ``timeout``; never raises.

        (Except on cancellation, which propagates.)
        """
        timestamp = time.time()
        started = time.perf_counter()
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                outcome = await self.probe()
        except Exception as exc:
            extra = exc.details if isinstance(exc, HealthCheckError) else {}
            if isinstance(exc, TimeoutError) and deadline.expired():
                failure = f"timed out after {self.timeout:g}s"
            else:
                failure = scrub(_error_text(exc), self.secrets())
            return HealthCheckResult(
                service=self._name,
                status=UNHEALTHY,
                response_time=time.perf_counter() - started,
                timestamp=timestamp,
                details={**self.describe(), **extra},
                error=failure,
            )
        elapsed = time.perf_counter() - started
        if isinstance(outcome, HealthCheckResult):
            response_time = outcome.response_time if outcome.response_time > 0 else elapsed
            status = outcome.status
            details = {**self.describe(), **outcome.details}
            error = None if outcome.error is None else scrub(outcome.error, self.secrets())
        else:
            response_time, status, details, error = elapsed, HEALTHY, dict(outcome), None
            details = {**self.describe(), **details}
        if status is HEALTHY and self._is_slow(response_time):
            status = DEGRADED
            details["degraded_reason"] = (
                f"response time {response_time:.3f}s > {self.degraded_threshold:g}s"
            )
        return HealthCheckResult(
            service=self._name,
            status=status,
            response_time=response_time,
            timestamp=timestamp,
            details=details,
            error=error,
        )

    def _is_slow(self, response_time: float) -> bool:
        return self.degraded_threshold is not None and response_time > self.degraded_threshold

    def __repr__(self) -> str:
        facts = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"{type(self).__name__}(name={self._name!r}{', ' if facts else ''}{facts})"


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # One verified context for every checker: building one per connection pool
    # costs milliseconds and memory, and hundreds of checkers would each pay it.
    return ssl.create_default_context()


MAX_BODY_BYTES = 64 * 1024
"""A health endpoint's body is read (so the connection can be reused) up to this size."""


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without userinfo, and a Basic ``Authorization`` value built from it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


class HTTPHealthChecker(HealthChecker):
    """Checks an HTTP endpoint: an expected status code within the timeout.

    Each checker keeps one pooled connection (an httpx transport; pass
    ``transport`` to supply your own, which then stays yours to close).
    Credentials in the URL become a Basic ``Authorization`` header. The request
    goes straight to the transport rather than through an ``httpx.AsyncClient``:
    the client logs every request URL at INFO, and a URL may carry a token. No
    proxies from the environment and no redirects: a health check must reach the
    service itself, and any status in ``expected_status`` (default 200-399)
    counts as an answer.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        expected_status: Iterable[int] = range(200, 400),
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"'url' must be an http:// or https:// URL: {redact_url(str(url))!r}")
        self._public_url = redact_url(url)
        self._secrets = url_secrets(url)
        plain_url, authorization = _split_credentials(url)
        self._url = httpx.URL(plain_url)  # parsed once, not per request
        self.method = method.upper()
        self.expected_status = frozenset(expected_status)
        if not self.expected_status:
            raise ValueError("'expected_status' must name at least one status code: ()")
        merged = {"User-Agent": USER_AGENT, "Accept": "*/*", **(headers or {})}
        if authorization is not None:
            merged.setdefault("Authorization", authorization)
        self._headers = httpx.Headers(merged)
        self._timeouts = httpx.Timeout(self.timeout).as_dict()
        self._verify = verify
        self._transport = transport
        self._owns_transport = transport is None

    @property
    def url(self) -> str:
        """The checked URL, credentials masked."""
        return self._public_url

    def describe(self) -> dict[str, object]:
        return {"url": self._public_url, "method": self.method}

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            verify = _default_ssl_context() if self._verify is True else self._verify
            self._transport = httpx.AsyncHTTPTransport(
                verify=verify,
                # Checks of one service never overlap: one kept-alive connection suffices.
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=1),
            )
        return self._transport

    async def probe(self) -> Mapping[str, object]:
        request = httpx.Request(
            self.method,
            self._url,
            headers=self._headers,
            extensions={"timeout": self._timeouts},
        )
        response = await self._get_transport().handle_async_request(request)
        try:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    break
        finally:
            await response.aclose()
        details: dict[str, object] = {"status_code": response.status_code}
        if response.status_code not in self.expected_status:
            raise HealthCheckError(
                f"unexpected HTTP status {response.status_code}", details=details
            )
        return details

    async def aclose(self) -> None:
        if self._owns_transport and self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()


RedisClient = aioredis.Redis | aioredis.RedisCluster
"""The clients :class:`RedisHealthChecker` accepts."""


def _connection_kwargs(client: RedisClient) -> Mapping[str, object]:
    """The client's connection settings, read defensively.

    A ``Redis`` keeps them on its connection pool; a ``RedisCluster`` has no pool
    and keeps them on itself (and its nodes manager).
    """
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", None)
    else:
        kwargs = getattr(client, "connection_kwargs", None)
        if not isinstance(kwargs, Mapping):
            manager = getattr(client, "nodes_manager", None)
            kwargs = getattr(manager, "connection_kwargs", None)
    return kwargs if isinstance(kwargs, Mapping) else {}


def _cluster_node_names(client: RedisClient) -> list[str]:
    """``host:port`` of the cluster's known nodes (startup nodes before discovery)."""
    manager = getattr(client, "nodes_manager", None)
    names: set[str] = set()
    for attribute in ("nodes_cache", "startup_nodes"):
        nodes = getattr(manager, attribute, None)
        if isinstance(nodes, Mapping) and nodes:
            for node in list(nodes.values()):
                host, port = getattr(node, "host", None), getattr(node, "port", None)
                if host is not None and port is not None:
                    names.add(f"{host}:{port}")
            if names:
                break
    return sorted(names)


def _flat_info(info: object) -> Mapping[str, object]:
    """INFO as one node's mapping, whether the client answered for one node or several."""
    if not isinstance(info, Mapping):
        return {}
    if "redis_version" in info or not info:
        return info
    per_node = [value for value in info.values() if isinstance(value, Mapping)]
    return per_node[0] if per_node and len(per_node) == len(info) else info


class RedisHealthChecker(HealthChecker):
    """Checks Redis: PING latency plus INFO facts (role, memory, clients, version).

    Uses the ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client you
    pass (never closed here), or a ``Redis`` built from ``url`` and owned by the
    checker. On a cluster, PING goes to every primary (all must answer) and INFO
    comes from the client's default node.
    """

    component_type = "datastore"

    def __init__(
        self,
        name: str = "redis",
        redis_client: RedisClient | None = None,
        *,
        url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if redis_client is None and url is None:
            raise ValueError("'redis_client' or 'url' must be given: None")
        self._client = redis_client
        self._url = url
        self._owns_client = redis_client is None
        self._secrets: tuple[str, ...] = url_secrets(url) if url else ()
        if redis_client is not None:
            password = _connection_kwargs(redis_client).get("password")
            if isinstance(password, str) and password:
                self._secrets = (password,)

    def describe(self) -> dict[str, object]:
        if self._url is not None:
            return {"url": redact_url(self._url)}
        assert self._client is not None
        if isinstance(self._client, aioredis.RedisCluster):
            return {"cluster_nodes": _cluster_node_names(self._client)}
        kwargs = _connection_kwargs(self._client)
        if "path" in kwargs:
            return {"address": f"unix:{kwargs['path']}", "db": kwargs.get("db", 0)}
        return {
            "address": f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}",
            "db": kwargs.get("db", 0),
        }

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def _get_client(self) -> RedisClient:
        if self._client is None:
            assert self._url is not None
            self._client = aioredis.Redis.from_url(self._url)
        return self._client

    async def probe(self) -> Mapping[str, object]:
        client = self._get_client()
        started = time.perf_counter()
        if isinstance(client, aioredis.RedisCluster):
            # Every primary must answer: a cluster missing one cannot serve its slots.
            await client.ping(target_nodes=aioredis.RedisCluster.PRIMARIES)
        else:
            await client.ping()
        ping_latency = time.perf_counter() - started
        info = _flat_info(await client.info())
        details: dict[str, object] = {"ping_latency": ping_latency}
        for key in (
            "role",
            "redis_version",
            "used_memory",
            "used_memory_human",
            "connected_clients",
        ):
            value = info.get(key)
            details[key] = value.decode() if isinstance(value, bytes) else value
        return details

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


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


CheckReturn = bool | Mapping[str, object] | HealthCheckResult | None
CheckFunction = Callable[[], CheckReturn | Awaitable[CheckReturn]]


class CustomHealthChecker(HealthChecker):
    """Runs your function as a health check.

    ``check_func`` takes no arguments, is sync or async, and returns:

    - ``True`` or ``None``: healthy; ``False``: unhealthy;
    - a dict: its items become details; an optional ``"status"`` (a
      :class:`HealthStatus` or its string) or ``"healthy"`` (bool) key sets the
      status, an optional ``"error"`` key the error text;
    - a :class:`HealthCheckResult`: taken as the verdict.

    An exception is an unhealthy result carrying the error. Sync functions run in
    the loop's default executor (``in_thread=False`` runs them on the event loop,
    for quick ones); a sync call that outlives its timeout is not started again
    until it returns, so a stuck function never piles up threads. A call that
    timed out while still queued in the executor (every worker busy) never runs,
    and does not block the next check.
    """

    def __init__(
        self,
        name: str,
        check_func: CheckFunction,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
        in_thread: bool = True,
        component_type: str = "component",
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if not callable(check_func):
            raise TypeError(f"'check_func' must be callable: {check_func!r}")
        self._func = check_func
        self._is_async = inspect.iscoroutinefunction(check_func) or inspect.iscoroutinefunction(
            getattr(check_func, "__call__", None)  # noqa: B004  (async callable objects)
        )
        self._in_thread = in_thread
        self._busy = threading.Event()
        self.component_type = component_type

    async def _call(self) -> CheckReturn:
        if self._is_async or not self._in_thread:
            value = self._func()
        else:
            value = await self._call_in_thread()
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _call_in_thread(self) -> CheckReturn | Awaitable[CheckReturn]:
        """Run the function in the default executor; ``_busy`` while it may still run.

        ``_busy`` is cleared when the job ends, whatever the outcome: by the worker
        thread when the function returns or raises, here when the job never
        started (cancelled while queued) or could not be submitted at all.
        """
        if self._busy.is_set():
            raise HealthCheckError("previous call of the check function is still running")
        self._busy.set()
        busy = self._busy
        func = self._func
        context = contextvars.copy_context()
        lock = threading.Lock()
        started = abandoned = False

        def job() -> CheckReturn | Awaitable[CheckReturn]:
            nonlocal started
            with lock:
                if abandoned:
                    return None  # given up on while queued: its caller is gone
                started = True
            try:
                return context.run(func)
            finally:
                busy.clear()

        def settle(_: asyncio.Future[CheckReturn | Awaitable[CheckReturn]]) -> None:
            nonlocal abandoned
            with lock:
                if not started:
                    # Cancelled (timed out) before a worker picked it up: it never
                    # runs now, so nothing is running.
                    abandoned = True
                    busy.clear()

        try:
            future = asyncio.get_running_loop().run_in_executor(None, job)
        except BaseException:
            busy.clear()  # never submitted (executor shut down, ...)
            raise
        future.add_done_callback(settle)
        return await future

    async def probe(self) -> Mapping[str, object] | HealthCheckResult:
        value = await self._call()
        if value is None or value is True:
            return {}
        if value is False:
            raise HealthCheckError("check function returned False")
        if isinstance(value, HealthCheckResult):
            return value
        if isinstance(value, Mapping):
            details = dict(value)
            status = details.pop("status", None)
            error = details.pop("error", None)
            if status is None:
                healthy = details.get("healthy", True)
                status = HEALTHY if healthy is not False else UNHEALTHY
            result_status = HealthStatus(str(status))
            if result_status is UNHEALTHY and error is None:
                error = "check function reported unhealthy"
            return HealthCheckResult(
                service=self.name,
                status=result_status,
                details=details,
                error=None if error is None else str(error),
            )
        raise TypeError(
            "check function must return bool, dict, HealthCheckResult or None: "
            f"{type(value).__name__}"
        )
