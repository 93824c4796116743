"""decide(): recovery's "what next", tested directly as the pure function it is."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from xnai_core.health import HealthStatus
from xnai_core.recovery import RecoveryActionType
from xnai_core.recovery.decide import (
    Act,
    Conclude,
    Escalate,
    Idle,
    SlotView,
    Verify,
    View,
    Wait,
    decide,
)

RESTART = RecoveryActionType.RESTART_SERVICE
CLEAR = RecoveryActionType.CLEAR_CACHE
MANUAL = RecoveryActionType.MANUAL_INTERVENTION


def slot(action: RecoveryActionType = RESTART, **kwargs: object) -> SlotView:
    settings: dict[str, object] = {"tries": 0, "max_attempts": 3, "failure_threshold": 3}
    settings.update(kwargs)
    return SlotView(action, **settings)  # type: ignore[arg-type]


def view(*slots: SlotView, **kwargs: object) -> View:
    settings: dict[str, object] = {"status": HealthStatus.UNHEALTHY, "poll": 1.0}
    settings.update(kwargs)
    settings["status"] = HealthStatus(str(settings["status"]))
    return View(slots=slots or (slot(),), **settings)  # type: ignore[arg-type]


def test_an_unhealthy_service_past_its_threshold_is_acted_on_cheapest_first() -> None:
    v = view(slot(CLEAR, tries=1, max_attempts=1), slot(RESTART), consecutive_failures=3)
    assert decide(v, 100.0) == Act(1)


def test_nothing_to_do_unless_unhealthy_and_unlatched() -> None:
    assert decide(view(status="healthy"), 0.0) == Idle("service is healthy")
    assert decide(view(status="degraded"), 0.0) == Idle("service is degraded")
    assert decide(view(escalated=True), 0.0) == Idle("escalated")
    assert decide(view(closed=True, verifying_until=5.0), 0.0) == Idle("closed")


def test_cooldown_then_backoff_then_threshold_are_waited_for() -> None:
    v = view(slot(retry_at=50.0), cooldown_until=30.0, consecutive_failures=1)
    assert decide(v, 10.0) == Wait(30.0, "cooldown")
    assert decide(v, 30.0) == Wait(50.0, "backoff")
    assert decide(v, 50.0) == Wait(51.0, "failure threshold")  # polled: only the monitor knows
    assert decide(view(slot(retry_at=50.0), consecutive_failures=3), 50.0) == Act(0)


def test_unknown_failure_count_or_a_threshold_of_one_is_met() -> None:
    assert decide(view(consecutive_failures=None), 0.0) == Act(0)
    assert decide(view(slot(failure_threshold=1), consecutive_failures=0), 0.0) == Act(0)


def test_a_page_ignores_cooldown_but_not_its_threshold() -> None:
    v = view(slot(MANUAL, failure_threshold=2), cooldown_until=99.0, consecutive_failures=1)
    assert decide(v, 0.0) == Wait(1.0, "failure threshold")
    v = view(slot(MANUAL, failure_threshold=2), cooldown_until=99.0, consecutive_failures=2)
    assert decide(v, 0.0) == Escalate(take_turn=True)


def test_no_rule_left_escalates_at_once() -> None:
    v = view(slot(tries=3, max_attempts=3), cooldown_until=99.0, consecutive_failures=0)
    assert decide(v, 0.0) == Escalate(take_turn=False)


def test_verification_concludes_on_health_or_at_the_deadline() -> None:
    assert decide(view(status="unhealthy", verifying_until=10.0), 5.0) == Verify(10.0, True)
    assert decide(view(status="degraded", verifying_until=10.0), 10.0) == Conclude(False)
    assert decide(view(status="healthy", verifying_until=10.0), 50.0) == Conclude(True)


def test_a_stopped_monitor_pauses_recovery_and_its_probes() -> None:
    """Finding 9: nothing is checked (nor acted on) while the attached monitor is stopped."""
    assert decide(view(monitor_running=False, verifying_until=10.0), 5.0) == Verify(10.0, False)
    assert decide(view(monitor_running=False), 5.0) == Wait(6.0, "monitor stopped")


def test_a_settling_peer_is_waited_for_with_fresh_looks() -> None:
    """Finding 10: a peer's recent fix may be newer than our view, so look afresh."""
    v = view(consecutive_failures=5, peer_until=20.0, peer_settling=True)
    assert decide(v, 10.0) == Wait(20.0, "peer", probe=True)
    v = view(consecutive_failures=5, peer_until=20.0)
    assert decide(v, 10.0) == Wait(20.0, "peer", probe=False)
    assert decide(v, 20.0) == Act(0)


statuses = st.sampled_from(["healthy", "degraded", "unhealthy", "unknown"])
times = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
slots = st.builds(
    SlotView,
    action=st.sampled_from(list(RecoveryActionType)),
    tries=st.integers(0, 5),
    max_attempts=st.integers(1, 5),
    failure_threshold=st.integers(1, 5),
    retry_at=st.none() | times,
)
views = st.builds(
    View,
    status=statuses,
    slots=st.lists(slots, min_size=1, max_size=4).map(tuple),
    poll=st.floats(min_value=1e-3, max_value=60.0),
    escalated=st.booleans(),
    closed=st.booleans(),
    monitor_running=st.booleans(),
    consecutive_failures=st.none() | st.integers(0, 10),
    cooldown_until=times | st.just(-math.inf),
    verifying_until=st.none() | times,
    peer_until=times | st.just(-math.inf),
    peer_settling=st.booleans(),
)


@given(v=views, now=times)
def test_no_action_unless_every_gate_is_open(v: View, now: float) -> None:
    """Act only when unhealthy, unlatched, open, watched, past cooldown, backoff, threshold
    and peer; a wait always ends in the future; nothing but Idle after closing."""
    step = decide(v, now)
    if v.closed:
        assert isinstance(step, Idle)
    if isinstance(step, Act):
        chosen = v.slots[step.slot]
        assert v.status == "unhealthy"
        assert not v.escalated
        assert v.monitor_running
        assert v.verifying_until is None
        assert chosen.action is not MANUAL
        assert now >= v.cooldown_until
        assert now >= v.peer_until
        assert chosen.retry_at is None or now >= chosen.retry_at
        assert chosen.tries < chosen.max_attempts
        assert all(
            s.tries >= s.max_attempts and s.action is not MANUAL for s in v.slots[: step.slot]
        )
        failures = v.consecutive_failures
        assert (
            failures is None
            or chosen.failure_threshold <= 1
            or failures >= chosen.failure_threshold
        )
    if isinstance(step, Wait | Verify):
        assert step.until > now
    if isinstance(step, Verify | Conclude):
        assert v.verifying_until is not None
    if isinstance(step, Verify) and step.probe:
        assert v.monitor_running
