"""Every checker and the result types, from one module (the original import path).

Importing this module imports httpx, redis and asyncpg; import from
:mod:`.result` (or a single checker's module) to avoid the drivers you do not use.
"""

from __future__ import annotations

from .checker import DEFAULT_TIMEOUT, USER_AGENT, HealthChecker
from .custom_checker import CheckFunction, CheckReturn, CustomHealthChecker
from .database_checker import DatabaseHealthChecker
from .http_checker import MAX_BODY_BYTES, HTTPHealthChecker
from .redis_checker import RedisClient, RedisHealthChecker
from .result import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    HealthCheckError,
    HealthCheckResult,
    HealthStatus,
    SupportsHealthCheck,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEGRADED",
    "HEALTHY",
    "MAX_BODY_BYTES",
    "UNHEALTHY",
    "UNKNOWN",
    "USER_AGENT",
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
