"""The public API: every name the seed uses, from both import paths, and nothing missing."""

from __future__ import annotations

import importlib

import pytest

import xnai_core

SEED_NAMES = [
    "CircuitBreakerConfig",
    "FallbackStrategy",
    "HealthMonitor",
    "RedisConnectionManager",
    "ServiceDegradationManager",
    "create_chainlit_ui_health_checker",
    "create_rag_api_health_checker",
    "create_redis_circuit_breaker",
    "create_redis_health_checker",
    "fallback_return_none",
]


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_names_import_from_the_stack_path(name: str) -> None:
    """Each name the seed imports comes from app.XNAi_rag_app.core, and is xnai_core's."""
    core = importlib.import_module("app.XNAi_rag_app.core")
    assert getattr(core, name) is getattr(xnai_core, name)


def test_all_lists_only_real_names_and_both_paths_agree() -> None:
    """__all__ names exist, and the stack path exports exactly the same set."""
    core = importlib.import_module("app.XNAi_rag_app.core")
    for name in xnai_core.__all__:
        assert hasattr(xnai_core, name), name
    assert sorted(core.__all__) == sorted(xnai_core.__all__)
    assert set(SEED_NAMES) <= set(xnai_core.__all__)
