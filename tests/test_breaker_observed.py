"""The breaker's own tests again, with a hook installed on every breaker.

A hook moves calls onto the observed path (timed, reported): it must take the same
decisions as the unobserved one, so every test of test_breaker.py runs here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_breaker import *  # noqa: F403
from xnai_core import events
from xnai_core.events import CallCompleted, Event


@pytest.fixture(autouse=True)
def every_breaker_observed() -> Iterator[list[Event]]:
    heard: list[Event] = []
    events.install_hooks(heard.append)
    yield heard
    events.install_hooks()
    assert all(event.duration >= 0 for event in heard if isinstance(event, CallCompleted))
