"""Health checkers and the monitor that schedules them."""

from __future__ import annotations

from .alerts import Alert, AlertHandler, AlertThresholds, Severity
from .checkers import (
    CustomHealthChecker,
    DatabaseHealthChecker,
    HealthChecker,
    HealthCheckError,
    HealthCheckResult,
    HealthStatus,
    HTTPHealthChecker,
    RedisHealthChecker,
    SupportsHealthCheck,
)
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
from .service import ServiceHealth

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
