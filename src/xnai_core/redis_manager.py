"""RedisConnectionManager: a redis.asyncio client from a URL, watched and reconnected.

It never raises because a server is unreachable: :meth:`connect` answers False,
:meth:`get_health_status` says ``connected: False`` with the last error, and a
background task keeps checking, with backoff, until the server answers again.
A URL it cannot use is a ValueError at construction, never later.
Credentials (the URL's user info, its ``password=`` query parameter) never
appear in its repr, its status, its logs or the errors it reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.backoff import ExponentialBackoff

from ._redact import redact
from ._redact import redact_url as redact_url  # public here since before _redact
from ._validation import check_seconds, check_size

logger = logging.getLogger("xnai_core.redis_manager")

_BACKOFF_MIN = 0.5


def _split(url: str) -> tuple[str, str | None, str]:
    """``(scheme with "://", user info or None, the rest)`` of ``url``.

    The user info ends at the *last* ``@`` (for ``unix://``, the last ``@/``), so a
    password with an unencoded ``@``, ``/``, ``#``, ``?`` or ``:`` stays whole in it:
    nothing of it can leak into the host, port, path or query.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    else:
        scheme += sep
    at = rest.rfind("@")
    if scheme.lower() == "unix://":
        # The socket's path may hold an '@' (systemd instances): not the user info's end.
        if rest.startswith("/"):
            at = -1
        elif rest.rfind("@/") >= 0:
            at = rest.rfind("@/")
    if at < 0:
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1 :]


def _is_password(key: str) -> bool:
    return unquote(key).strip().lower() == "password"


@dataclass(frozen=True)
class _Url:
    """A Redis URL taken apart: credentials kept out of the URL given to redis-py."""

    plain: str  # the URL without user info or fragment
    credentials: dict[str, str]
    secrets: list[str]


def _parse(url: str) -> _Url:
    """Validate ``url`` the way redis-py will read it; ValueError never shows secrets."""
    scheme, userinfo, rest = _split(url)
    shown = redact_url(url)
    if scheme.lower() not in ("redis://", "rediss://", "unix://"):
        raise ValueError(f"'redis_url' must start with redis://, rediss:// or unix://: {shown!r}")
    rest, _, fragment = rest.partition("#")
    secrets = [fragment] if fragment else []
    credentials: dict[str, str] = {}
    if userinfo:
        secrets += [userinfo, unquote(userinfo)]
        username, colon, password = userinfo.partition(":")
        if username:
            credentials["username"] = unquote(username)
        if colon and password:
            credentials["password"] = unquote(password)
            secrets += [password, unquote(password)]
    location, _, query = rest.partition("?")
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if _is_password(key):
            secrets += [value, unquote_plus(value)]
    if scheme.lower() == "unix://":
        if not location.startswith("/") or location == "/":
            raise ValueError(f"'redis_url' needs the socket's absolute path: {shown!r}")
    else:
        try:
            parts = urlsplit(f"//{location}")
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(
                f"'redis_url' needs a valid host, and a port from 1 to 65535: {shown!r}"
            )
        db = parts.path.replace("/", "")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"'redis_url' database (its path) must be a number: {shown!r}")
    plain = f"{scheme.lower()}{rest}"
    secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    try:
        parse_url(plain)
    except ValueError as exc:
        text = redact(str(exc), secrets)
        raise ValueError(f"'redis_url' is not usable ({text}): {shown!r}") from None
    return _Url(plain, credentials, secrets)


class RedisConnectionManager:
    """A Redis client built from ``redis_url``, with health status and reconnection.

    ``redis_url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
    for TLS (``?ssl_cert_reqs=none`` or ``ssl_ca_certs=`` as usual in redis-py),
    or ``unix:///path/to/redis.sock[?db=0]``; it is checked here (ValueError,
    credentials never shown). The user info ends at the last ``@``: a password with
    an unencoded ``@``, ``/``, ``#``, ``?`` or ``:`` still works, handed to redis-py
    apart from the URL. ``max_connections`` caps the pool;
    ``health_check_interval`` (seconds; 0 disables) is both redis-py's idle
    connection check and the period of this manager's background check.
    ``check_timeout`` bounds each check; other keyword arguments go to
    ``redis.asyncio.Redis.from_url``.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        max_connections: int = 50,
        health_check_interval: float = 30,
        *,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 2.0,
        check_timeout: float = 2.0,
        **client_kwargs: Any,
    ) -> None:
        if not isinstance(redis_url, str):
            raise TypeError(f"'redis_url' must be a string: {type(redis_url).__name__}")
        parsed = _parse(redis_url)
        check_size("max_connections", max_connections)
        check_seconds("health_check_interval", health_check_interval, allow_zero=True)
        check_seconds("check_timeout", check_timeout)
        # redis-py gets the URL without its user info, and the credentials apart: it
        # cannot misread a password with an unencoded '/' or '#' then, nor quote one.
        self._url = parsed.plain
        self._credentials = parsed.credentials
        self._secrets = parsed.secrets
        self.url = redact_url(redis_url)
        self.max_connections = max_connections
        self.health_check_interval = float(health_check_interval)
        self.check_timeout = float(check_timeout)
        self._client_kwargs: dict[str, Any] = {
            "max_connections": max_connections,
            "health_check_interval": float(health_check_interval),
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            **client_kwargs,
        }
        self._client: aioredis.Redis | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.connected = False
        self._latency_ms: float | None = None
        self._server_version: str | None = None
        self._redis_mode: str | None = None
        self._last_error: str | None = None
        self._last_check: float | None = None
        self._failures = 0
        self._down_logged = False

    def __repr__(self) -> str:
        return f"<RedisConnectionManager url={self.url!r} connected={self.connected}>"

    @property
    def client(self) -> aioredis.Redis:
        """The client (created on first use, without touching the network)."""
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, **{**self._client_kwargs, **self._credentials}
            )
        return self._client

    async def connect(self) -> bool:
        """Check the server now and start watching it; True if it answered. Never raises."""
        connected = await self._check()
        if self.health_check_interval > 0 and (self._monitor is None or self._monitor.done()):
            self._monitor = asyncio.get_running_loop().create_task(
                self._watch(), name=f"xnai-redis-manager:{self.url}"
            )
        return connected

    async def get_health_status(self) -> dict[str, Any]:
        """Check the server now and report; never raises.

        Keys: ``connected``, ``latency_ms``, ``server_version``, ``redis_mode``,
        ``last_error``, ``last_check`` (epoch seconds), ``consecutive_failures``,
        ``url`` (password redacted), ``max_connections``, ``health_check_interval``.
        """
        await self._check()
        return {
            "connected": self.connected,
            "latency_ms": self._latency_ms,
            "server_version": self._server_version,
            "redis_mode": self._redis_mode,
            "last_error": self._last_error,
            "last_check": self._last_check,
            "consecutive_failures": self._failures,
            "url": self.url,
            "max_connections": self.max_connections,
            "health_check_interval": self.health_check_interval,
        }

    async def close(self) -> None:
        """Stop watching and close the client's connections."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            try:
                await monitor
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self.connected = False

    async def __aenter__(self) -> RedisConnectionManager:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)

    async def _check(self) -> bool:
        started = time.perf_counter()
        try:
            client = self.client
            async with asyncio.timeout(self.check_timeout):
                await client.ping()
                latency = (time.perf_counter() - started) * 1000
                info = await client.info("server")
        except Exception as exc:
            # Masked before it is cut, so a cut never leaves half a secret unrecognised.
            text = self._clean(str(exc).strip())
            error = type(exc).__name__ + (f": {text[:300]}" if text else "")
            self._record(False, error)
            return False
        self._latency_ms = round(latency, 3)
        self._server_version = str(info.get("redis_version")) if info else None
        self._redis_mode = str(info.get("redis_mode")) if info else None
        self._record(True, None)
        return True

    def _record(self, connected: bool, error: str | None) -> None:
        self._last_check = time.time()
        if connected:
            if self._down_logged:
                logger.info("redis at %s answers again", self.url, extra={"redis_url": self.url})
            self._failures = 0
            self._down_logged = False
        else:
            self._last_error = self._clean(error or "unknown error")
            self._latency_ms = None
            self._failures += 1
            if not self._down_logged:
                self._down_logged = True
                logger.warning(
                    "redis at %s is unreachable (%s); retrying with backoff",
                    self.url,
                    self._last_error,
                    extra={"redis_url": self.url},
                )
        self.connected = connected

    async def _watch(self) -> None:
        # While down: 0.5 s doubling up to the check interval (redis-py's backoff).
        backoff = ExponentialBackoff(cap=self.health_check_interval, base=_BACKOFF_MIN)
        failures = 0
        while True:
            if self.connected:
                delay = self.health_check_interval
                failures = 0
            else:
                delay = backoff.compute(failures)
                failures += 1
            await asyncio.sleep(delay)
            await self._check()
