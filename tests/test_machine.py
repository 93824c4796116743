"""The pure state machine, against a small reference model written separately."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from xnai_core.circuit import machine
from xnai_core.circuit.config import CircuitBreakerConfig
from xnai_core.circuit.machine import CLOSED, HALF_OPEN, OPEN, Snapshot, Ticket


@dataclass
class Model:
    """The rules of the issue, written as plainly as possible, mutable."""

    threshold: int
    recovery: float
    trials_max: int
    lease: float
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    held: dict[int, float] = field(default_factory=dict)  # permit -> lease expiry
    successes: int = 0
    epoch: int = 0
    next_permit: int = 1
    forced: bool = False

    def _enter(self, state: str, now: float) -> None:
        self.state = state
        self.epoch += 1
        self.held = {}
        self.successes = 0
        if state == "open":
            self.opened_at = now
        if state == "closed":
            self.failures = 0
            self.forced = False

    def admit(self, now: float) -> tuple[int, int] | None:
        if self.state == "open":
            if self.forced or now < self.opened_at + self.recovery:
                return None
            self._enter("half_open", now)
        if self.state == "closed":
            return (self.epoch, 0)
        self.held = {p: exp for p, exp in self.held.items() if exp > now}
        if len(self.held) + self.successes >= self.trials_max:
            return None
        permit = self.next_permit
        self.next_permit += 1
        self.held[permit] = now + self.lease
        return (self.epoch, permit)

    def success(self, ticket: tuple[int, int], now: float) -> None:
        epoch, permit = ticket
        if epoch != self.epoch:
            return
        if self.state == "closed":
            self.failures = 0
        elif self.state == "half_open" and permit in self.held:
            del self.held[permit]
            self.successes += 1
            if self.successes == self.trials_max:
                self._enter("closed", now)

    def failure(self, ticket: tuple[int, int], now: float) -> None:
        epoch, _ = ticket
        if epoch != self.epoch:
            return
        if self.state == "closed":
            self.failures += 1
            if self.failures == self.threshold:
                self._enter("open", now)
        elif self.state == "half_open":
            self.failures += 1
            self._enter("open", now)

    def release(self, ticket: tuple[int, int]) -> None:
        epoch, permit = ticket
        if epoch == self.epoch and self.state == "half_open":
            self.held.pop(permit, None)

    def force(self, state: str, now: float) -> None:
        self._enter(state, now)
        self.forced = state == "open"


steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit")),
        st.tuples(st.just("admit")),
        st.tuples(st.just("success"), st.integers(0, 3)),
        st.tuples(st.just("failure"), st.integers(0, 3)),
        st.tuples(st.just("release"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.4, 1.0, 2.5, 10.0])),
        st.tuples(st.just("force"), st.sampled_from(["open", "closed", "half_open"])),
    ),
    max_size=200,
)


@settings(max_examples=400, deadline=None)
@given(
    threshold=st.integers(1, 4),
    recovery=st.sampled_from([0.0, 1.0, 3.0]),
    trials_max=st.integers(1, 3),
    lease=st.sampled_from([0.5, 2.0, 100.0]),
    script=steps,
)
@example(  # a finished trial still uses up its episode's permit
    threshold=1,
    recovery=0.0,
    trials_max=2,
    lease=100.0,
    script=[("admit",), ("failure", 0), ("admit",), ("success", 0), ("admit",), ("admit",)],
)
def test_machine_matches_reference_model(
    threshold: int, recovery: float, trials_max: int, lease: float, script: list[tuple[object, ...]]
) -> None:
    """Over long random runs of events and clock moves, machine and model agree at every step."""
    cfg = CircuitBreakerConfig(
        failure_threshold=threshold,
        recovery_timeout=recovery,
        half_open_max_calls=trials_max,
        half_open_lease=lease,
        timeout=None,
    )
    model = Model(threshold, recovery, trials_max, lease)
    snap = Snapshot()
    now = 0.0
    tickets: list[Ticket] = []
    states = {"closed": CLOSED, "open": OPEN, "half_open": HALF_OPEN}
    for step in script:
        kind = step[0]
        if kind == "admit":
            admission, snap = machine.admit(snap, cfg, now)
            expected = model.admit(now)
            got = None if admission.ticket is None else admission.ticket
            assert (got.epoch, got.permit) == expected if got else expected is None
            if got is not None:
                tickets.append(got)
            else:
                assert admission.retry_after is None or admission.retry_after >= 0
        elif kind in ("success", "failure", "release") and tickets:
            # Mostly the newest tickets: old ones are stale and change nothing.
            ticket = tickets.pop(-1 - int(step[1]) % len(tickets))  # type: ignore[call-overload]
            pair = (ticket.epoch, ticket.permit)
            if kind == "success":
                snap = machine.on_success(snap, cfg, now, ticket)
                model.success(pair, now)
            elif kind == "failure":
                snap = machine.on_failure(snap, cfg, now, ticket)
                model.failure(pair, now)
            else:
                snap = machine.on_release(snap, ticket)
                model.release(pair)
        elif kind == "advance":
            now += float(step[1])  # type: ignore[arg-type]
        elif kind == "force":
            snap = machine.force(snap, states[str(step[1])], now)
            model.force(str(step[1]), now)
        assert snap.state == states[model.state]
        assert snap.epoch == model.epoch
        assert snap.forced == model.forced
        if snap.state is CLOSED:
            assert snap.failure_count == model.failures
        if snap.state is HALF_OPEN:
            live = {p for p, exp in snap.trials if exp > now}
            assert live == {p for p, exp in model.held.items() if exp > now}
            assert snap.half_open_successes == model.successes


def test_threshold_opens_exactly() -> None:
    """failure_threshold consecutive failures open the circuit, one fewer does not."""
    cfg = CircuitBreakerConfig(failure_threshold=3)
    snap = Snapshot()
    for _ in range(2):
        snap = machine.on_failure(snap, cfg, 0.0, Ticket(snap.epoch))
    assert snap.state is CLOSED
    snap = machine.on_success(snap, cfg, 0.0, Ticket(snap.epoch))
    assert snap.failure_count == 0
    for _ in range(3):
        snap = machine.on_failure(snap, cfg, 0.0, Ticket(snap.epoch))
    assert snap.state is OPEN


def test_stale_epoch_result_changes_nothing() -> None:
    """A success admitted before the circuit opened cannot close it."""
    cfg = CircuitBreakerConfig(failure_threshold=1)
    old = Ticket(0)
    snap = machine.on_failure(Snapshot(), cfg, 0.0, Ticket(0))
    assert snap.state is OPEN
    assert machine.on_success(snap, cfg, 0.0, old) is snap


def test_expired_lease_is_reclaimed() -> None:
    """A trial whose lease ran out frees its permit for another caller."""
    cfg = CircuitBreakerConfig(
        failure_threshold=1, recovery_timeout=1, half_open_max_calls=1, half_open_lease=5, timeout=4
    )
    snap = machine.on_failure(Snapshot(), cfg, 0.0, Ticket(0))
    first, snap = machine.admit(snap, cfg, 1.0)
    assert first.ticket is not None
    assert first.ticket.permit
    second, snap = machine.admit(snap, cfg, 2.0)
    assert second.ticket is None
    assert second.retry_after is None
    third, snap = machine.admit(snap, cfg, 6.0)
    assert third.ticket is not None


def test_forced_open_never_half_opens() -> None:
    """Forced open holds past recovery_timeout, until forced closed."""
    cfg = CircuitBreakerConfig(recovery_timeout=1)
    snap = machine.force(Snapshot(), OPEN, 0.0)
    admission, snap = machine.admit(snap, cfg, 1e9)
    assert admission.ticket is None
    assert admission.retry_after is None
    snap = machine.force(snap, CLOSED, 1e9)
    assert machine.admit(snap, cfg, 1e9)[0].ticket is not None
