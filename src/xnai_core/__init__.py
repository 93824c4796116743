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

# --- health (issue 5) ---

# --- recovery (issue 6) ---

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "CircuitState",
    "MemoryStore",
    "StateStore",
    "fallback_return_none",
]
