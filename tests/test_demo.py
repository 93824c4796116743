"""The README's main job, the live demonstration, runs to the end and shows each step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_and_shows_every_step() -> None:
    """Each pillar's story is printed: trip, short-circuit, half-open, degrade, restart."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for expected in (
        "closed -> open",
        "short-circuited, LLM not called",
        "open -> half_open",
        "half_open -> closed",
        "the other process saw it open",
        "LLM called: False",
        "source=CacheFirstStrategy, degraded=True",
        "source=DegradedModeStrategy, degraded=True",
        "LLM calls during that request: 0",
        "the monitor sees rag_api unhealthy",
        "rag_api is healthy again",
        "'restart_service': 1",
    ):
        assert expected in out, expected
