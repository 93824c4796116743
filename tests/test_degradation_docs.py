"""Every ```python block of docs/degradation.md runs, in order, in one namespace."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "degradation.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_page_has_examples() -> None:
    """The page is not empty of examples (the regex still matches its fences)."""
    assert len(python_blocks()) >= 8


async def test_every_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Each example executes (top-level await allowed) and its asserts hold."""
    namespace: dict[str, object] = {"__name__": "docs_degradation"}
    for number, source in enumerate(python_blocks(), start=1):
        code = compile(
            source,
            f"{DOC.name}[block {number}]",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
        # Our own documentation, executed as a reader would paste it.
        outcome = eval(code, namespace)
        if outcome is not None:
            await outcome
    assert "primary down: connection refused" in capsys.readouterr().out
