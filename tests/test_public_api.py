"""The public API: every name the seed uses, from both import paths, and nothing missing."""

from __future__ import annotations

import builtins
import fnmatch
import importlib
import itertools
import re
from pathlib import Path

import pytest

import xnai_core
from xnai_core.circuit.errors import CallTimeoutError

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


README = Path(__file__).resolve().parents[1] / "README.md"


def test_call_timeout_error_is_exported_from_both_paths() -> None:
    """The README's timeout outcome, CallTimeoutError, is public API on both import paths."""
    core = importlib.import_module("app.XNAi_rag_app.core")
    assert "CallTimeoutError" in xnai_core.__all__
    assert core.CallTimeoutError is xnai_core.CallTimeoutError is CallTimeoutError
    assert issubclass(xnai_core.CallTimeoutError, TimeoutError)


def test_readme_api_table_names_only_exported_names() -> None:
    """Every name in the README's "what | names" table is exported (globs match one or more)."""
    lines = README.read_text().splitlines()
    start = lines.index("| what | names | read more |")
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]))
    names = [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[2])]
    assert "CallTimeoutError" in names
    for name in names:
        assert fnmatch.filter(xnai_core.__all__, name), f"README names {name!r}, not exported"


def test_every_exception_the_readme_names_is_exported() -> None:
    """An exception class the README names is a builtin or exported from xnai_core."""
    # Unqualified names only: `asyncio.CancelledError` is asyncio's, not ours.
    named = set(re.findall(r"`([A-Z]\w*(?:Error|Exception))`", README.read_text()))
    ours = {name for name in named if not hasattr(builtins, name)}
    assert "CallTimeoutError" in ours
    missing = sorted(ours - set(xnai_core.__all__))
    assert missing == []


def test_every_exception_the_degradation_page_names_is_exported() -> None:
    """docs/degradation.md tells callers to catch FlightTimeoutError, CacheClearError...:
    each exception it names is a builtin or exported from xnai_core (and so from the
    stack's path)."""
    page = README.parent / "docs" / "degradation.md"
    named = set(re.findall(r"`([A-Z]\w*(?:Error|Exception))`", page.read_text()))
    ours = {name for name in named if not hasattr(builtins, name)}
    assert "FlightTimeoutError" in ours
    assert sorted(ours - set(xnai_core.__all__)) == []
    core = importlib.import_module("app.XNAi_rag_app.core")
    assert all(getattr(core, name) is getattr(xnai_core, name) for name in ours)
