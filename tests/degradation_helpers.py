"""What the degradation tests share: a clock moved by hand and a primary whose health they
control."""

from __future__ import annotations

import pytest


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """The primary: whether it is healthy, and how often it was reached."""

    calls = 0
    healthy = True


@pytest.fixture(autouse=True)
def fresh_backend() -> None:
    """Every test starts with a healthy primary that was never called."""
    Backend.calls = 0
    Backend.healthy = True
