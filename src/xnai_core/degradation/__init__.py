"""Graceful degradation: call a service, fall back through strategies when it fails.

Modules, one concept each: ``manager`` (ServiceDegradationManager), ``protocols``
(what a strategy is), ``strategies`` (fallback, degraded mode, circuit breaker),
``cache_first`` with ``cache`` and ``cache_keys`` (its single flight is the package's
``_singleflight``), ``call`` (what a call returns and how to tell a degraded answer),
``stats`` (counters and episodes), ``errors``. The package's face is ``xnai_core``.
"""

from __future__ import annotations

from .._singleflight import FlightTimeoutError
from .cache import CacheBackend, CacheEntry, MemoryCache
from .cache_first import CacheFirstStrategy
from .call import CallInfo, ServiceCall, ServiceResult, last_call_info
from .errors import (
    AllStrategiesFailedError,
    CacheClearError,
    ServiceTimeoutError,
    StrategyDeclinedError,
)
from .manager import ServiceDegradationManager, ServiceSettings
from .protocols import DegradationStrategy, GuardAnswer, PrimaryGuard
from .redis_cache import RedisCache
from .stats import DegradationEvent
from .strategies import CircuitBreakerStrategy, DegradedModeStrategy, FallbackStrategy

__all__ = [
    "AllStrategiesFailedError",
    "CacheBackend",
    "CacheClearError",
    "CacheEntry",
    "CacheFirstStrategy",
    "CallInfo",
    "CircuitBreakerStrategy",
    "DegradationEvent",
    "DegradationStrategy",
    "DegradedModeStrategy",
    "FallbackStrategy",
    "FlightTimeoutError",
    "GuardAnswer",
    "MemoryCache",
    "PrimaryGuard",
    "RedisCache",
    "ServiceCall",
    "ServiceDegradationManager",
    "ServiceResult",
    "ServiceSettings",
    "ServiceTimeoutError",
    "StrategyDeclinedError",
    "last_call_info",
]
