"""The degradation manager and the recovery manager report to the hooks."""

from __future__ import annotations

from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.metrics_helpers import Recorder, no_global_hooks, parse  # noqa: F401
from tests.test_recovery_manager import FakeClock, action, go_unhealthy, make_manager, rule
from xnai_core import (
    AllStrategiesFailedError,
    FallbackStrategy,
    RecoveryManager,
    ServiceDegradationManager,
)
from xnai_core.events import DegradationCall, RecoveryAttempted, RecoveryEscalated
from xnai_core.metrics import enable_prometheus

E = TypeVar("E")


async def llm_down() -> str:
    raise ConnectionError("refused")


async def llm_up() -> str:
    return "live"


async def canned() -> str:
    return "canned"


async def test_degradation_calls_name_who_answered() -> None:
    hook = Recorder()
    manager = ServiceDegradationManager()
    manager.hooks.install(hook)
    manager.add_service_strategy("chat", FallbackStrategy(canned, name="canned"), priority=5)
    assert await manager.call_service("chat", llm_up) == "live"
    assert await manager.call_service("chat", llm_down) == "canned"
    bare = ServiceDegradationManager()
    bare.hooks.install(hook)
    with pytest.raises(AllStrategiesFailedError):
        await bare.call_service("search", llm_down)
    with pytest.raises(TypeError):
        await manager.call_service("chat", "not callable")  # type: ignore[arg-type]
    calls = hook.of(DegradationCall)
    assert [(c.service, c.source, c.degraded, c.ok) for c in calls] == [
        ("chat", "primary", False, True),
        ("chat", "canned", True, True),
        ("search", "none", True, False),
    ]
    assert all(c.duration >= 0 for c in calls)


async def test_recovery_attempts_and_escalation_reach_the_hooks() -> None:
    """Two failed restarts, an escalation, then a reset that lifts the latch."""
    hook = Recorder()
    clock = FakeClock()
    ref: list[RecoveryManager] = []
    func, _ = action(ref, clock, takes=1.5)
    async with make_manager(clock) as manager:
        manager.hooks.install(hook)
        ref.append(manager)
        manager.add_rule(rule(recovery_func=func, max_attempts=2))
        await go_unhealthy(manager)
        assert manager.is_escalated("api")
        await manager.reset("api")
        await manager.on_status_change("api", "unhealthy", "healthy", None)
        await manager.wait_idle()
    attempts = hook.of(RecoveryAttempted)
    assert [(a.service, a.action, a.result, a.attempt) for a in attempts[:3]] == [
        ("api", "restart_service", "failed", 1),
        ("api", "restart_service", "failed", 2),
        ("api", "manual_intervention", "escalated", 1),
    ]
    assert attempts[0].duration == 1.5
    escalations = hook.of(RecoveryEscalated)
    assert [(e.service, e.escalated) for e in escalations] == [("api", True), ("api", False)]
    assert "restart_service tried 2x" in escalations[0].reason


async def test_recovery_and_degradation_metrics() -> None:
    metrics = enable_prometheus(CollectorRegistry())
    try:
        degradation = ServiceDegradationManager()
        degradation.add_service_strategy("chat", FallbackStrategy(canned, name="canned"))
        await degradation.call_service("chat", llm_down)
        clock = FakeClock()
        ref: list[RecoveryManager] = []
        func, _ = action(ref, clock, heals=lambda n: True)
        async with make_manager(clock) as recovery:
            ref.append(recovery)
            recovery.add_rule(rule(recovery_func=func))
            await go_unhealthy(recovery)
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.disable()
    samples = parse(text)
    chat = (("service", "chat"), ("source", "canned"))
    assert samples["xnai_degradation_calls_total", chat] == 1
    assert samples["xnai_degradation_degraded", (("service", "chat"),)] == 1
    attempt = (("action", "restart_service"), ("result", "succeeded"), ("service", "api"))
    assert samples["xnai_recovery_attempts_total", attempt] == 1
