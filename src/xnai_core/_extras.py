"""Optional dependencies: a clear error naming the extra when one is missing."""

from __future__ import annotations

import importlib


def require(module: str, extra: str, what: str) -> None:
    """Import ``module`` or raise ImportError saying which extra brings it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {module}, which is not installed: pip install 'xnai-core[{extra}]'"
        ) from exc
