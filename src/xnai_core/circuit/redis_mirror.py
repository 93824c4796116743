"""The mirror's ordering rules: which news of a circuit's hash a process takes in.

Each process keeps a copy of every circuit's hash (its *mirror*), fed by the
scripts' own answers, by messages on the circuit's channel and by resyncs. News
arrives out of order (a message may overtake the answer of the script that
published it; an answer may arrive after news of a later change), and hashes are
replaced (deleted, evicted, flushed, repaired): these rules decide, one piece of
news at a time, and are the ones docs/redis.md states ("Stale news is ignored",
"State loss").

- ``gen`` is the lineage of a hash: Redis TIME (us) when it was created. A hash
  that was deleted and created again has a new, normally larger, one: even when
  the hash was missing, odd when it replaced a malformed hash.
- ``ver`` is bumped by every write: it orders news within a lineage.
- An answer is *authoritative* when nothing newer reached the mirror while its
  script ran: it is the latest truth whatever its numbers say (a failover to a
  server whose clock is behind can make a new lineage look older).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .machine import CircuitState, Snapshot


class Verdict(enum.Enum):
    """What to do with one piece of news."""

    ADOPT = "adopt"
    """Newer news of the mirrored hash (or the first): mirror it."""
    STALE = "stale"
    """Older news of the mirrored hash: ignore it."""
    SUPERSEDED = "superseded"
    """News of a hash replaced since by the mirrored one: ignore it, and resync soon
    in case ours is the odd one (only Redis can tell)."""
    REPLACED = "replaced"
    """A new lineage, and this process held nothing it must keep: mirror it (the
    stored state was rebuilt: flushed, evicted, repaired, or restarted empty)."""
    LOST = "lost"
    """A new lineage, not a repair, while this process holds the old one open (or
    forced open): the open circuit was lost with its hash; or the same lineage went
    back past the opening (writes lost). Not mirrored: written back by the outage
    rule (reconcile), with a WARNING naming the key."""


@dataclass(frozen=True, slots=True)
class Mirrored:
    """What the mirror holds: lineage (``""`` before the first answer), version, state."""

    gen: str = ""
    ver: int = 0
    snap: Snapshot = field(default_factory=Snapshot)


def judge(
    held: Mirrored, gen: str, ver: int, snap: Snapshot, *, authoritative: bool, guard: bool
) -> Verdict:
    """The verdict on news ``(gen, ver, snap)`` given what the mirror ``held``.

    ``guard``: whether a lineage change may be a loss to write back. False for the
    answers to an operator's force or reset (their new state is the order) and to a
    reconcile (it applied the rule already).
    """
    if held.gen == "":
        return Verdict.ADOPT
    if gen == held.gen:
        if ver > held.ver:
            return Verdict.ADOPT
        if not authoritative:
            return Verdict.STALE
        if guard and ver < held.ver and is_rollback(held.snap, snap):
            return Verdict.LOST
        return Verdict.ADOPT
    if not authoritative and int(gen) < int(held.gen):
        return Verdict.SUPERSEDED
    if guard and held.snap.state is CircuitState.OPEN and not is_repair(gen):
        return Verdict.LOST
    return Verdict.REPLACED


def is_rollback(held: Snapshot, snap: Snapshot) -> bool:
    """Whether Redis went back past the opening ``held`` mirrors, in the same lineage.

    Only a loss of writes does that (the latest truth with an older version): a
    failover to a replica that lagged, a restart from an older snapshot.
    """
    return (
        held.state is CircuitState.OPEN
        and snap.state is CircuitState.CLOSED
        and snap.epoch < held.epoch
    )


def is_repair(gen: str) -> bool:
    """Whether lineage ``gen`` replaced a malformed hash (odd) rather than a missing
    one (even): a repair resets the circuit on purpose, a loss is written back."""
    return int(gen) % 2 == 1
