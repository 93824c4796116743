"""xnai-core: circuit breakers shared through Redis, graceful degradation, health monitoring.

The public API of the Xoe-NovAi Foundation Stack's core module. Every name here is
importable from ``xnai_core`` and, for the stack's own code, from
``app.XNAi_rag_app.core``.
"""

from __future__ import annotations

# --- circuit (issue 2, 3, 7) ---
from .circuit.breaker import CircuitBreaker, fallback_return_none
from .circuit.config import CircuitBreakerConfig
from .circuit.errors import CircuitOpenError
from .circuit.machine import CircuitState
from .circuit.registry import CircuitBreakerRegistry
from .circuit.store import MemoryStore, StateStore

# --- degradation (issue 4) ---
from .degradation.cache import CacheBackend, CacheEntry, MemoryCache, RedisCache
from .degradation.cache_first import CacheFirstStrategy
from .degradation.call import CallInfo, ServiceCall, ServiceResult, last_call_info
from .degradation.errors import (
    AllStrategiesFailedError,
    ServiceTimeoutError,
    StrategyDeclinedError,
)
from .degradation.manager import ServiceDegradationManager, ServiceSettings
from .degradation.protocols import DegradationStrategy, GuardAnswer, PrimaryGuard
from .degradation.stats import DegradationEvent
from .degradation.strategies import (
    CircuitBreakerStrategy,
    DegradedModeStrategy,
    FallbackStrategy,
)

# --- health (issue 5) ---

# --- recovery (issue 6) ---

__all__ = [
    "AllStrategiesFailedError",
    "CacheBackend",
    "CacheEntry",
    "CacheFirstStrategy",
    "CallInfo",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitBreakerStrategy",
    "CircuitOpenError",
    "CircuitState",
    "DegradationEvent",
    "DegradationStrategy",
    "DegradedModeStrategy",
    "FallbackStrategy",
    "GuardAnswer",
    "MemoryCache",
    "MemoryStore",
    "PrimaryGuard",
    "RedisCache",
    "ServiceCall",
    "ServiceDegradationManager",
    "ServiceResult",
    "ServiceSettings",
    "ServiceTimeoutError",
    "StateStore",
    "StrategyDeclinedError",
    "fallback_return_none",
    "last_call_info",
]
