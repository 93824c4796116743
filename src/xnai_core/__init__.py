"""xnai-core: circuit breakers shared through Redis, graceful degradation, health monitoring.

The public API of the Xoe-NovAi Foundation Stack's core module. Every name here is
importable from ``xnai_core`` and, for the stack's own code, from
``app.XNAi_rag_app.core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

# Names are imported when first used (PEP 562), so ``from xnai_core import HealthStatus``
# does not import redis, httpx or asyncpg; the block below is what type checkers read.
# A new public name goes in three places: this block, _EXPORTS and __all__
# (tests/test_health_imports.py checks that they agree).
if TYPE_CHECKING:
    # --- circuit (issue 2, 3, 7) ---
    from ._singleflight import FlightTimeoutError
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
    from .health.checker import HealthChecker
    from .health.custom_checker import CustomHealthChecker
    from .health.database_checker import DatabaseHealthChecker
    from .health.factories import (
        create_chainlit_ui_health_checker,
        create_database_health_checker,
        create_rag_api_health_checker,
        create_redis_health_checker,
    )
    from .health.health_json import HEALTH_JSON_MEDIA_TYPE, http_status_for
    from .health.hooks import RecoveryHook
    from .health.http_checker import HTTPHealthChecker
    from .health.monitor import HealthMonitor
    from .health.redis_checker import RedisHealthChecker
    from .health.report import HealthReport
    from .health.result import (
        HealthCheckError,
        HealthCheckResult,
        HealthStatus,
        SupportsHealthCheck,
    )
    from .health.service import ServiceHealth

    # --- recovery (issue 6) ---
    from .recovery import (
        RecoveryActionType,
        RecoveryCoordinator,
        RecoveryManager,
        RecoveryRule,
    )

_EXPORTS: dict[str, str] = {
    "CircuitBreaker": ".circuit.breaker",
    "fallback_return_none": ".circuit.breaker",
    "CircuitBreakerConfig": ".circuit.config",
    "CallTimeoutError": ".circuit.errors",
    "CircuitOpenError": ".circuit.errors",
    "RedisConnectionManager": ".circuit.factory",
    "create_redis_circuit_breaker": ".circuit.factory",
    "CircuitState": ".circuit.machine",
    "RedisStore": ".circuit.redis_store",
    "CircuitBreakerRegistry": ".circuit.registry",
    "MemoryStore": ".circuit.store",
    "StateStore": ".circuit.store",
    "CacheBackend": ".degradation.cache",
    "CacheEntry": ".degradation.cache",
    "MemoryCache": ".degradation.cache",
    "CacheFirstStrategy": ".degradation.cache_first",
    "CallInfo": ".degradation.call",
    "ServiceCall": ".degradation.call",
    "ServiceResult": ".degradation.call",
    "last_call_info": ".degradation.call",
    "AllStrategiesFailedError": ".degradation.errors",
    "CacheClearError": ".degradation.errors",
    "ServiceTimeoutError": ".degradation.errors",
    "FlightTimeoutError": "._singleflight",
    "StrategyDeclinedError": ".degradation.errors",
    "ServiceDegradationManager": ".degradation.manager",
    "ServiceSettings": ".degradation.manager",
    "DegradationStrategy": ".degradation.protocols",
    "GuardAnswer": ".degradation.protocols",
    "PrimaryGuard": ".degradation.protocols",
    "RedisCache": ".degradation.redis_cache",
    "DegradationEvent": ".degradation.stats",
    "CircuitBreakerStrategy": ".degradation.strategies",
    "DegradedModeStrategy": ".degradation.strategies",
    "FallbackStrategy": ".degradation.strategies",
    "Alert": ".health.alerts",
    "AlertHandler": ".health.alerts",
    "CustomHealthChecker": ".health.custom_checker",
    "DatabaseHealthChecker": ".health.database_checker",
    "HealthChecker": ".health.checker",
    "HealthCheckError": ".health.result",
    "HealthCheckResult": ".health.result",
    "HealthStatus": ".health.result",
    "HTTPHealthChecker": ".health.http_checker",
    "RedisHealthChecker": ".health.redis_checker",
    "SupportsHealthCheck": ".health.result",
    "create_chainlit_ui_health_checker": ".health.factories",
    "create_database_health_checker": ".health.factories",
    "create_rag_api_health_checker": ".health.factories",
    "create_redis_health_checker": ".health.factories",
    "HEALTH_JSON_MEDIA_TYPE": ".health.health_json",
    "http_status_for": ".health.health_json",
    "RecoveryHook": ".health.hooks",
    "HealthMonitor": ".health.monitor",
    "HealthReport": ".health.report",
    "ServiceHealth": ".health.service",
    "RecoveryActionType": ".recovery",
    "RecoveryCoordinator": ".recovery",
    "RecoveryManager": ".recovery",
    "RecoveryRule": ".recovery",
}
"""Each public name and the module that defines it."""


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
    "FlightTimeoutError",
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
