"""Back in step with Redis: the reconciliation rule, after an outage and after a loss.

docs/redis.md, "Reconciliation rule" and "State loss is detected, not adopted". When
Redis answers again (or on the first sync), each circuit runs one RECONCILE script,
which applies the rule atomically: an open circuit forced here is written back over
anything but a forced open one; one opened here is written back over a closed
circuit only when Redis still holds the state the local decisions started from, or
no longer has (or went back in) the hash this process knew; otherwise Redis wins.
The store decides locally until the answer is in, so a change made here meanwhile
drops the answer and the rule is applied again to the new state.

A hash that vanishes (or is rolled back) while this process holds it open is written
back by the same script and rule, with one WARNING naming the key and a count in
``redis_state_losses``; no transition is announced. So is a loss the reconciliation after
an outage finds (the script notes ``lost``: a new master that never had the opening).
"""

from __future__ import annotations

import logging

from .._redact import redact
from .config import CircuitBreakerConfig
from .machine import CircuitState, Snapshot
from .redis_codec import us
from .redis_link import RedisLink, setup_timeout
from .redis_view import CircuitMirror, Local
from .redis_wire import Wire

__all__ = ["Reconciler"]

logger = logging.getLogger("xnai_core.circuit.redis")

# A reconcile is run again when the circuit changes here during its round trip.
_TRIES = 3


class Reconciler:
    """Reconciles the circuit ``config`` names, stored at ``key``, with Redis."""

    def __init__(
        self,
        config: CircuitBreakerConfig,
        key: str,
        wire: Wire,
        mirror: CircuitMirror,
        op_timeout: float,
    ) -> None:
        self.config = config
        self.key = key
        self.op_timeout = op_timeout
        self.state_losses = 0
        self._wire = wire
        self._mirror = mirror
        self._writing_back = False

    async def reconcile(self, wait: float) -> bool:
        """Sync with Redis after a start or an outage, by the documented rule.

        Redis's answer was made for the state sent: if the circuit changed here during
        the round trip (a trip, a force_open) it is not mirrored, and the rule is
        applied again to the new state. False: still deciding locally (the link tries
        again later).
        """
        link = self._wire.link
        if link is None:
            return False
        mirror = self._mirror
        for _ in range(_TRIES):
            mode = mirror.mode
            snap = mirror.snap
            opened = isinstance(mode, Local) and mode.opened_here
            forced = isinstance(mode, Local) and mode.forced_here and snap.forced
            based_on = mode.based_on if isinstance(mode, Local) else snap.epoch
            rid = link.request_id()
            installs = mirror.installs
            args = self._args(snap, opened, forced, based_on)
            run = self._wire.send("reconcile", args, rid)
            if not await link.settle(run, wait):
                self._wire.deadline_passed(run)
                return False
            reply = self._wire.read(run, "reconcile", rid)
            if reply is None:
                return False
            if "lost" in reply.notes:
                # Redis lost the hash or the opening this process knew while it was away
                # (restarted empty, failed over to a replica that lagged): written back.
                self._count_loss("written back now that redis answers again")
            if mirror.synced:
                # Another reconcile of this circuit (start() and the link's) won.
                mirror.take(reply, None, installs, guard=False)
                return True
            if mirror.snap.epoch != snap.epoch:
                continue
            mirror.take(reply, None, installs, guard=False, authoritative=True)
            mirror.attach()
            return True
        return False

    def lost(self) -> None:
        """The hash vanished, or went back past the opening, while open here: warn
        once and write the open circuit back (one write-back at a time)."""
        link = self._wire.link
        if self._writing_back or link is None:
            return
        self._writing_back = True
        self._count_loss("writing it back")
        link.spawn(self._write_back(link), name="xnai-redis-write-back")

    def _count_loss(self, what: str) -> None:
        self.state_losses += 1
        logger.warning(
            "circuit '%s': redis key %r lost the open circuit (deleted, flushed, "
            "evicted, or rolled back by a failover or an older snapshot); %s",
            redact(self.config.name),
            redact(self.key),
            what,
            extra={"breaker": redact(self.config.name), "key": redact(self.key)},
        )

    async def _write_back(self, link: RedisLink) -> None:
        """Put the open circuit back by the outage rule (over a closed circuit only;
        an open or half-open one in Redis wins)."""
        mirror = self._mirror
        try:
            for _ in range(_TRIES):
                snap = mirror.snap
                if snap.state is not CircuitState.OPEN or not mirror.synced:
                    return  # moved on, or Redis went away: the outage rule takes over
                rid = link.request_id()
                installs = mirror.installs
                run = self._wire.send("reconcile", self._args(snap, False, False, snap.epoch), rid)
                if not await link.settle(run, setup_timeout(self.op_timeout)):
                    self._wire.deadline_passed(run)
                    return
                reply = self._wire.read(run, "reconcile", rid)
                if reply is None:
                    return
                if mirror.installs == installs:
                    mirror.take(reply, None, installs, guard=False, authoritative=True)
                    return
        finally:
            self._writing_back = False

    def _args(
        self, snap: Snapshot, opened_here: bool, forced_here: bool, based_on: int
    ) -> list[str]:
        """RECONCILE's arguments: the state held here and what the rule needs of it."""
        return [
            "1" if snap.state is CircuitState.OPEN else "0",
            self._mirror.gen,
            "1" if opened_here else "0",
            str(snap.failure_count),
            str(us(snap.opened_at)),
            "1" if snap.forced else "0",
            "1" if forced_here else "0",
            str(based_on),
        ]
