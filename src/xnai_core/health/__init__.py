"""Health checkers and the monitor that schedules them.

The HTTP, Redis and PostgreSQL checkers are imported when first used, so
importing this package does not import httpx, redis or asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .alerts import Alert, AlertHandler, AlertThresholds, Severity
from .checker import HealthChecker
from .custom_checker import CustomHealthChecker
from .factories import (
    create_chainlit_ui_health_checker,
    create_database_health_checker,
    create_rag_api_health_checker,
    create_redis_health_checker,
)
from .health_json import HEALTH_JSON_MEDIA_TYPE, http_status_for
from .hooks import RecoveryCallback, RecoveryHook
from .monitor import HealthMonitor
from .report import HealthReport, HealthSummary, ServiceReport
from .result import HealthCheckError, HealthCheckResult, HealthStatus, SupportsHealthCheck
from .service import ServiceHealth

if TYPE_CHECKING:
    from .database_checker import DatabaseHealthChecker
    from .http_checker import HTTPHealthChecker
    from .redis_checker import RedisHealthChecker

_DRIVER_BOUND = {
    "DatabaseHealthChecker": ".database_checker",
    "HTTPHealthChecker": ".http_checker",
    "RedisHealthChecker": ".redis_checker",
}


__getattr__ = lazy_getattr(__name__, _DRIVER_BOUND, globals())


__all__ = [
    "HEALTH_JSON_MEDIA_TYPE",
    "Alert",
    "AlertHandler",
    "AlertThresholds",
    "CustomHealthChecker",
    "DatabaseHealthChecker",
    "HTTPHealthChecker",
    "HealthCheckError",
    "HealthCheckResult",
    "HealthChecker",
    "HealthMonitor",
    "HealthReport",
    "HealthStatus",
    "HealthSummary",
    "RecoveryCallback",
    "RecoveryHook",
    "RedisHealthChecker",
    "ServiceHealth",
    "ServiceReport",
    "Severity",
    "SupportsHealthCheck",
    "create_chainlit_ui_health_checker",
    "create_database_health_checker",
    "create_rag_api_health_checker",
    "create_redis_health_checker",
    "http_status_for",
]
