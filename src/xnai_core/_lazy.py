"""Names a package exports but imports only when first used.

``import xnai_core`` (or ``xnai_core.health``) must not import httpx, redis or asyncpg
for a user who needs none of them: each such name is looked up in its module on first
access and then kept in the package's namespace, so later lookups cost nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``exports[name]`` (relative to ``package``)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__
