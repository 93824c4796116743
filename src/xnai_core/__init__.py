"""xnai-core: circuit breakers shared through Redis, graceful degradation, health monitoring.

The public API of the Xoe-NovAi Foundation Stack's core module. Every name here is
importable from ``xnai_core`` and, for the stack's own code, from
``app.XNAi_rag_app.core``.
"""

from __future__ import annotations

# --- circuit (issue 2, 3, 7) ---
from .circuit.breaker import CircuitBreaker, fallback_return_none
from .circuit.config import CircuitBreakerConfig
from .circuit.errors import CallTimeoutError, CircuitOpenError
from .circuit.factory import RedisConnectionManager, create_redis_circuit_breaker
from .circuit.machine import CircuitState
from .circuit.redis_store import RedisStore
from .circuit.registry import CircuitBreakerRegistry
from .circuit.store import MemoryStore, StateStore

# --- degradation (issue 4) ---
from .degradation.cache import CacheBackend, CacheEntry, MemoryCache
from .degradation.cache_first import CacheFirstStrategy
from .degradation.call import CallInfo, ServiceCall, ServiceResult, last_call_info
from .degradation.errors import (
    AllStrategiesFailedError,
    CacheClearError,
    ServiceTimeoutError,
    StrategyDeclinedError,
)
from .degradation.manager import ServiceDegradationManager, ServiceSettings
from .degradation.protocols import DegradationStrategy, GuardAnswer, PrimaryGuard
from .degradation.redis_cache import RedisCache
from .degradation.stats import DegradationEvent
from .degradation.strategies import (
    CircuitBreakerStrategy,
    DegradedModeStrategy,
    FallbackStrategy,
)

# --- health (issue 5) ---
from .health.alerts import Alert, AlertHandler
from .health.checkers import (
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
from .health.factories import (
    create_chainlit_ui_health_checker,
    create_database_health_checker,
    create_rag_api_health_checker,
    create_redis_health_checker,
)
from .health.health_json import HEALTH_JSON_MEDIA_TYPE, http_status_for
from .health.hooks import RecoveryHook
from .health.monitor import HealthMonitor
from .health.report import HealthReport
from .health.service import ServiceHealth

# --- recovery (issue 6) ---
from .recovery import (
    RecoveryActionType,
    RecoveryCoordinator,
    RecoveryManager,
    RecoveryRule,
)

__all__ = [
    "HEALTH_JSON_MEDIA_TYPE",
    "Alert",
    "AlertHandler",
    "AllStrategiesFailedError",
    "CacheBackend",
    "CacheClearError",
    "CacheEntry",
    "CacheFirstStrategy",
    "CallInfo",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitBreakerStrategy",
    "CircuitOpenError",
    "CircuitState",
    "CustomHealthChecker",
    "DatabaseHealthChecker",
    "DegradationEvent",
    "DegradationStrategy",
    "DegradedModeStrategy",
    "FallbackStrategy",
    "GuardAnswer",
    "HTTPHealthChecker",
    "HealthCheckError",
    "HealthCheckResult",
    "HealthChecker",
    "HealthMonitor",
    "HealthReport",
    "HealthStatus",
    "MemoryCache",
    "MemoryStore",
    "PrimaryGuard",
    "RecoveryActionType",
    "RecoveryCoordinator",
    "RecoveryHook",
    "RecoveryManager",
    "RecoveryRule",
    "RedisCache",
    "RedisConnectionManager",
    "RedisHealthChecker",
    "RedisStore",
    "ServiceCall",
    "ServiceDegradationManager",
    "ServiceHealth",
    "ServiceResult",
    "ServiceSettings",
    "ServiceTimeoutError",
    "StateStore",
    "StrategyDeclinedError",
    "SupportsHealthCheck",
    "create_chainlit_ui_health_checker",
    "create_database_health_checker",
    "create_rag_api_health_checker",
    "create_redis_circuit_breaker",
    "create_redis_health_checker",
    "fallback_return_none",
    "http_status_for",
    "last_call_info",
]
