"""The wire format between the circuit scripts and Python: strict, never evaluated.

A script answers ``{admitted, permit, retry_after_us, now_us, snapshot, note, by}``
(see :mod:`.redis_scripts`); messages on a circuit's channel carry the snapshot and
``by``. ``by`` (the *origin*) is the request id of the script that made the last
transition of the state shown (``-``: unknown). Anything unexpected
is a :class:`ValueError`: the caller logs it and keeps its last known state. Nothing
Redis holds is ever unpickled or evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .machine import CircuitState, Snapshot

# Lua numbers are doubles: integers are exact below 2^53 (the scripts enforce it).
EXACT_LIMIT = 2**53

_STATES = {state.value: state for state in CircuitState}
# A request id, as RedisLink.request_id makes them (a message's origin).
_ORIGIN = re.compile(r"[0-9A-Za-z:._-]{1,100}")


def text(value: object) -> str:
    """A reply item as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "strict")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string from redis: {value!r}")


def natural(item: str) -> int:
    """A decimal integer in 0 .. 2^53-1, else ValueError."""
    if not item.isdigit() or len(item) > 16 or int(item) >= EXACT_LIMIT:
        raise ValueError(f"expected a decimal integer below 2^53: {item[:40]!r}")
    return int(item)


def us(seconds: float) -> int:
    """Seconds as whole microseconds, the scripts' unit."""
    return round(seconds * 1_000_000)


def decode_snapshot(payload: str) -> tuple[str, int, Snapshot]:
    """``(lineage, version, snapshot)`` from a script's encoded snapshot.

    Strict: anything unexpected is a ValueError (the caller logs and resyncs).
    Times come back in seconds on the scripts' clock.
    """
    parts = payload.split(" ")
    if len(parts) != 10:
        raise ValueError(f"a circuit snapshot has 10 fields: {payload[:120]!r}")
    gen, ver, epoch, state, failures, opened_at, successes, next_permit, forced, trials = parts
    if state not in _STATES:
        raise ValueError(f"unknown circuit state: {state!r}")
    if forced not in ("0", "1"):
        raise ValueError(f"'forced' must be 0 or 1: {forced!r}")
    leases: list[tuple[int, float]] = []
    if trials != "-":
        for item in trials.split(","):
            permit, _, expiry = item.partition(":")
            leases.append((natural(permit), natural(expiry) / 1_000_000))
    snap = Snapshot(
        state=_STATES[state],
        failure_count=natural(failures),
        opened_at=natural(opened_at) / 1_000_000,
        trials=tuple(leases),
        half_open_successes=natural(successes),
        epoch=natural(epoch),
        next_permit=natural(next_permit),
        forced=forced == "1",
    )
    natural(gen)
    return gen, natural(ver), snap


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's answer (or a message: ``admitted`` -1, ``now`` 0), decoded.

    ``origin``: the request id of the script that made the last transition of
    ``snap`` (``""``: unknown, e.g. made by a version that kept no origin)."""

    admitted: int
    permit: int
    retry_after: float | None
    now: float
    gen: str
    ver: int
    snap: Snapshot
    notes: tuple[str, ...]
    origin: str = ""


def decode_reply(raw: object) -> Reply:
    """A script's seven-item answer; ValueError if it is anything else."""
    if not isinstance(raw, list) or len(raw) != 7:
        raise ValueError(f"a circuit script answers with 7 items: {raw!r:.200}")
    try:
        admitted, permit, retry, now = (int(item) for item in raw[:4])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a circuit script answers with integers first: {raw!r:.200}") from exc
    gen, ver, snap = decode_snapshot(text(raw[4]))
    note = text(raw[5])
    return Reply(
        admitted=admitted,
        permit=permit,
        retry_after=None if retry < 0 else retry / 1_000_000,
        now=now / 1_000_000,
        gen=gen,
        ver=ver,
        snap=snap,
        notes=tuple(note.split(";")) if note else (),
        origin=origin(text(raw[6])),
    )


def message_reply(payload: str) -> Reply:
    """A message on a circuit's channel, as a reply that admitted nothing: the
    snapshot and its origin (ten fields, the snapshot alone: a message of a version
    that sent no origin, taken as unknown)."""
    snapshot, by = payload, "-"
    if payload.count(" ") == 10:
        snapshot, _, by = payload.rpartition(" ")
    gen, ver, snap = decode_snapshot(snapshot)
    return Reply(-1, 0, None, 0.0, gen, ver, snap, (), origin(by))


def origin(item: str) -> str:
    """A snapshot's origin: a request id, or ``""`` for ``-`` (unknown)."""
    if item == "-":
        return ""
    if not _ORIGIN.fullmatch(item):
        raise ValueError(f"an origin is a request id or '-': {item[:120]!r}")
    return item


def glob_escape(pattern_text: str) -> str:
    """``pattern_text`` with PSUBSCRIBE's glob characters escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in pattern_text)
