"""One circuit as this process holds it: the mirror of its hash, and the store's mode.

docs/redis.md, "A local mirror" and "When Redis is away". The mirror is fed by the
scripts' answers, by messages and by resyncs; :mod:`.redis_mirror` decides which of
that news it takes in, and :meth:`CircuitMirror.take` applies the verdict. While the
store is :class:`Local` (before its first sync, while Redis is away, after a stall),
the machine runs on the mirror itself (:meth:`CircuitMirror.apply_locally`,
:meth:`CircuitMirror.admit_locally`): local transitions get negative epochs, so no
result of a call admitted meanwhile can count against a state Redis hands out, and
the mode records what the reconciliation rule needs on return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from .._redact import redact
from . import machine
from .config import CircuitBreakerConfig
from .machine import Admission, CircuitState, Snapshot, Step, Ticket
from .redis_codec import Reply
from .redis_mirror import Mirrored, Verdict, judge
from .store import TransitionCallback

__all__ = ["SYNCED", "CircuitMirror", "Local", "Mode", "Synced"]

logger = logging.getLogger("xnai_core.circuit.redis")

# This store's requests whose message may still come, at most (the oldest is
# forgotten first: only a request whose answer and message were both lost stays).
_OWN_CAP = 256


@dataclass(frozen=True, slots=True)
class Synced:
    """In step with Redis: the scripts decide, the mirror follows."""


@dataclass(frozen=True, slots=True)
class Local:
    """Deciding on the mirror alone with the machine: before the first sync
    (``cause`` "starting"), while Redis is away ("outage"), or after a reply of this
    circuit's came late while Redis answered others ("stall"). What the outage rule
    needs on return: whether the circuit opened here, or was forced open here, and
    the epoch of Redis's state the local decisions started from (``based_on``): a
    local opening is written back only over that very state, never over a newer one
    (its failures would then count twice)."""

    cause: str
    opened_here: bool = False
    forced_here: bool = False
    based_on: int = 0


SYNCED = Synced()

Mode = Synced | Local


class HotEpochHolder(Protocol):
    """Where the breaker reads ``hot_epoch`` on every call (the store)."""

    hot_epoch: int | None


class CircuitMirror:
    """This process's copy of one circuit's hash, and whether it is in step.

    ``holder.hot_epoch`` is kept current (the breaker's no-round-trip path);
    ``now()`` is the scripts' clock as this process estimates it; ``lost()`` is
    called when news shows the open circuit was lost (write it back), ``stale()``
    when news of an older hash than the mirrored one arrived (resync soon).
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        holder: HotEpochHolder,
        *,
        now: Callable[[], float],
        lost: Callable[[], None],
        stale: Callable[[], None],
    ) -> None:
        self.config = config
        self.snap = Snapshot()
        self.gen = ""  # lineage of the mirrored hash; "" until Redis answered once
        self.ver = 0
        self.installs = 0  # bumped on every change: detects races with replies
        self.mode: Mode = Local("starting")
        # A failure report on its way: the circuit is not hot until it is answered.
        self.failures_pending = False
        self.callbacks: list[TransitionCallback] = []
        # Called with (old, new, reason) on every change, announced or not (diagnostics).
        self.observer: Callable[[Snapshot, Snapshot, str | None], None] | None = None
        self.now = now
        self._holder = holder
        self._lost = lost
        self._stale = stale
        # Epochs of transitions made locally are negative, so no ticket of the
        # outage can ever match an epoch that Redis hands out.
        self._local_epoch = 0
        # This store's own requests still unanswered, by request id: the reason their
        # answer is taken with. News whose origin (who made its last transition) is one
        # of them is of this store's own change, whichever comes first: the message,
        # the answer, or a read.
        self._own: dict[str, str | None] = {}

    @property
    def synced(self) -> bool:
        return self.mode is SYNCED

    # -- news from Redis -----------------------------------------------------

    def expect(self, rid: str, reason: str | None = None) -> None:
        """This store is sending request ``rid``, whose transition (if it makes one) is
        called ``reason`` (None: by the machine's words)."""
        own = self._own
        own[rid] = reason
        if len(own) > _OWN_CAP:
            del own[next(iter(own))]

    def answered(self, rid: str) -> None:
        """The answer to request ``rid`` is in: news of its transition can only be
        stale now."""
        self._own.pop(rid, None)

    def hear(self, reply: Reply) -> Verdict:
        """A message on the circuit's channel (see :meth:`take`)."""
        return self.take(reply, None, -1)

    def take(
        self,
        reply: Reply,
        reason: str | None,
        installs: int,
        *,
        answers: str = "",
        guard: bool = True,
        authoritative: bool = False,
    ) -> Verdict:
        """Mirror what Redis said, by the rules of :mod:`.redis_mirror`.

        ``installs``: :attr:`installs` when the script was sent (-1 for a message);
        ``reason``: set when this answers an operator's order (a force, a reset): its
        new state is the order, never a loss; ``answers``: the request id this is the
        answer to (``""``: a message or a read).

        Who made the transition is the reply's origin, whatever brought it: one of this
        store's own requests (a change made here, called by its reason), or anything
        else (``remote``: another process, another breaker object of the same name in
        this one, a version that keeps no origin). So a transition is reported once and
        labelled alike whether its message, its answer or a read comes first.
        """
        try:
            return self._take(reply, reason, installs, guard, authoritative)
        finally:
            if answers:
                self._own.pop(answers, None)

    def _take(
        self,
        reply: Reply,
        reason: str | None,
        installs: int,
        guard: bool,
        authoritative: bool,
    ) -> Verdict:
        own = self._own
        mine = reply.origin != "" and reply.origin in own
        if mine and reason is None:
            reason = own[reply.origin]
        # Nothing newer arrived while we waited: this answer is the latest truth.
        authoritative = authoritative or installs == self.installs
        held = Mirrored(self.gen, self.ver, self.snap)
        verdict = judge(
            held,
            reply.gen,
            reply.ver,
            reply.snap,
            authoritative=authoritative,
            guard=guard and reason is None,
        )
        if verdict is Verdict.STALE:
            return verdict
        if verdict is Verdict.SUPERSEDED:
            self._stale()
            return verdict
        if verdict is Verdict.LOST:
            self._lost()
            return verdict
        if mine:
            del own[reply.origin]  # reported now: its other news is stale
        first = self.gen == ""
        same_lineage = reply.gen == self.gen
        self.gen, self.ver = reply.gen, reply.ver
        old, new = self.snap, reply.snap
        if not same_lineage and new.state is old.state:
            # A first load, or a hash rebuilt: epochs restart on another scale, but
            # nothing happened to the circuit.
            self.install(old, new, None, announce=False)
            return verdict
        # Mirrored rather than made here: a first load, or a change another made.
        label = reason if mine else None
        seen = label is None and (first or not mine)
        if label is None:
            if first:
                label = "loaded from redis"
            elif verdict is Verdict.REPLACED:
                label = "its state in redis was replaced (the key was lost or rebuilt)"
            elif not mine:
                label = f"{machine.transition_reason(old, new)} (in another process)"
        self.install(old, new, label, remote=seen)
        return verdict

    def install(
        self,
        old: Snapshot,
        new: Snapshot,
        reason: str | None,
        *,
        announce: bool = True,
        remote: bool = False,
    ) -> None:
        """Hold ``new``; announce the transition from ``old`` to the callbacks."""
        self.snap = new
        self.installs += 1
        self.refresh_hot()
        if self.observer is not None:
            self.observer(old, new, reason)
        if not announce or (new.epoch == old.epoch and new.state is old.state):
            return
        why = reason or machine.transition_reason(old, new)
        for callback in list(self.callbacks):
            try:
                callback(old.state, new.state, why, remote)
            except Exception:
                logger.exception(
                    "transition callback of circuit '%s' failed", redact(self.config.name)
                )

    def refresh_hot(self) -> None:
        snap = self.snap
        hot = machine.is_hot(snap) and not self.failures_pending
        self._holder.hot_epoch = snap.epoch if hot else None

    # -- the mode ------------------------------------------------------------

    def attach(self) -> None:
        """In step with Redis again (the reconciliation rule was applied)."""
        self.mode = SYNCED
        self.refresh_hot()

    def detach(self, cause: str) -> bool:
        """Fall out of step with Redis (False: already out of step)."""
        if self.mode is not SYNCED:
            return False
        self.mode = Local(cause, based_on=self.snap.epoch)
        return True

    # -- the machine, applied here -------------------------------------------

    def apply_locally(
        self, step: Step, reason: str | None = None, *, forced: bool | None = None
    ) -> None:
        """Apply ``step`` to the mirror (Redis is not asked). ``forced``: an operator's
        force_open (True) or close/reset (False) while out of step, for the outage rule."""
        if forced is not None and isinstance(self.mode, Local):
            self.mode = replace(self.mode, forced_here=forced)
        old = self.snap
        new = self._relabel(old, step(old, self.now()))
        if new is not old:
            self.install(old, new, reason)

    def admit_locally(self) -> Admission:
        old = self.snap
        admission, new = machine.admit(old, self.config, self.now())
        took = admission.ticket is not None and admission.ticket.permit != 0
        relabelled = self._relabel(old, new, episode=took)
        if relabelled is not old:
            # A local episode of a half-open circuit is no transition to announce.
            self.install(old, relabelled, None, announce=relabelled.state is not old.state)
        ticket = admission.ticket
        if ticket is not None and relabelled.epoch != new.epoch:
            admission = Admission(Ticket(relabelled.epoch, ticket.permit), admission.retry_after)
        return admission

    def _relabel(self, old: Snapshot, new: Snapshot, *, episode: bool = False) -> Snapshot:
        """Give a local transition a fresh negative epoch; note a local opening.

        ``episode``: a trial permit taken here in a half-open episode Redis handed out
        (positive epoch): the local trials are an episode of their own, or a local
        ticket would carry a permit id Redis hands to another process, and its report
        would count against that process's trial once Redis answers again.
        """
        if new.epoch == old.epoch and not (episode and new.epoch > 0):
            return new
        self._local_epoch -= 1
        mode = self.mode
        opened = new.state is CircuitState.OPEN and old.state is not CircuitState.OPEN
        if opened and isinstance(mode, Local):
            self.mode = replace(mode, opened_here=True)
        return replace(new, epoch=self._local_epoch)
