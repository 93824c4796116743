"""Importing the health types does not import the drivers of checkers you do not use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import xnai_core
import xnai_core.health

DRIVERS = ("asyncpg", "httpx", "redis")


def drivers_imported_by(statement: str) -> list[str]:
    """The drivers in sys.modules after running ``statement`` in a fresh interpreter."""
    probe = f"import sys\n{statement}\nprint(sorted(d for d in {DRIVERS!r} if d in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return list(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "statement",
    [
        "from xnai_core import HealthStatus, HealthCheckResult, HealthMonitor, Alert",
        "from xnai_core.health import HealthStatus, HealthMonitor, CustomHealthChecker",
        "from xnai_core.health.result import HealthStatus",
        "import xnai_core.health.factories",
    ],
)
def test_health_types_import_no_driver(statement: str) -> None:
    """HealthStatus, results, the monitor, custom checks and factories come without drivers."""
    assert drivers_imported_by(statement) == []


@pytest.mark.parametrize(
    ("name", "driver"),
    [
        ("HTTPHealthChecker", "httpx"),
        ("RedisHealthChecker", "redis"),
        ("DatabaseHealthChecker", "asyncpg"),
    ],
)
def test_each_checker_imports_only_its_own_driver(name: str, driver: str) -> None:
    """A checker class brings its driver, and only its driver."""
    assert drivers_imported_by(f"from xnai_core.health import {name}") == [driver]


def test_lazy_names_are_the_same_objects_on_every_path() -> None:
    """xnai_core, xnai_core.health and the checkers module hand out the very same classes."""
    from xnai_core.health import checkers

    for name in (
        "HTTPHealthChecker",
        "RedisHealthChecker",
        "DatabaseHealthChecker",
        "HealthStatus",
    ):
        assert (
            getattr(xnai_core, name) is getattr(xnai_core.health, name) is getattr(checkers, name)
        )


def test_export_table_type_block_and_all_agree() -> None:
    """Every name in __all__ is in the lazy table and in the TYPE_CHECKING imports, and back."""
    source = Path(xnai_core.__file__).read_text()
    tree = ast.parse(source)
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom):
                    typed.update(alias.name for alias in inner.names)
    table = xnai_core._EXPORTS
    assert set(xnai_core.__all__) == set(table) == typed
    assert not [name for name in xnai_core.__all__ if name not in dir(xnai_core)]
