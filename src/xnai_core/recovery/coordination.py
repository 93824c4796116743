"""RecoveryCoordinator: one recovery per service across every process, through Redis.

With several replicas each running a monitor and a manager, every replica sees the
same outage. Without coordination each would run the restart command, and each
would page. The coordinator gives the service's episode to one process at a time
(a lease) and shares the manual-intervention latch, so the cluster restarts once,
backs off once and pages once.

Keys (hash-tagged so both live in one slot on Redis Cluster), plain strings only:

- ``<prefix>:{<service>}:lease``: the owner running the episode (the process's token and
  a suffix per manager, :meth:`RecoveryCoordinator.new_owner`),
  with a TTL the holder renews while it works; a holder that dies lets it expire.
- ``<prefix>:{<service>}:escalated``: the escalation reason while the service is
  latched; removed by ``reset()`` on any process.
- ``<prefix>:{<service>}:reset``: a random id written by every ``reset()``, in the
  same step that removes the latch. A latched process lifts its own latch only when
  this id differs from the one it saw when the latch was written: a latch that
  merely vanished (Redis restarted empty, failed over, evicted the key) is not a
  reset, and is written again.

The process that escalates writes the latch before it releases the lease, and a
process takes its turn (:meth:`RecoveryCoordinator.take_turn`) by checking the latch
and taking the lease in one script: so no process acts on a service once another
has escalated it and given the lease back.

Every call answers ``None`` (``unlatch``: ``False``) when Redis cannot be reached:
the manager then acts on its own (and says so in a warning), as the circuit breakers
degrade to local state. A client whose pool has no free connection (the application
holding them all) is not Redis away: each call waits for a connection within
``timeout``, and if none came, :meth:`RecoveryCoordinator.take_turn` answers
:attr:`Turn.BUSY` (the manager waits and looks again: Redis is up, so a peer may hold
the lease), the other calls what they answer when they cannot know. Nothing read from
Redis is ever evaluated or unpickled.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .._redis_errors import REDIS_DOWN, PoolBusy, forget_demoted, when_pool_free
from .._validation import check_seconds

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("xnai_core.recovery")

T = TypeVar("T")

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms. Returns 1 if the caller holds the lease
# now (taken, or already its own and extended), 0 if another process holds it.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease, KEYS[2] latch, KEYS[3] settle; ARGV[1] token, ARGV[2] ttl ms, ARGV[3] lag ms.
# ACQUIRE, after two checks: answers -1 and takes nothing while the service is latched, and
# {2, ms left} while another owner's last action or recovery of it (the settle record:
# "token|at ms|window ms", at in Redis's own time) is younger than its window plus the
# caller's lag; and {0, ms left} while another owner holds the lease (so the caller knows
# how long that lease runs should Redis go away). One step, so a peer that latches (or
# settles) and then releases its lease can never hand the lease to a process that looked
# before.
TAKE_TURN = (
    """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local record = redis.call('GET', KEYS[3])
if record then
  local owner, at, window = string.match(record, '^(.*)|(%d+)|(%d+)$')
  if owner and owner ~= ARGV[1] then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local since = tonumber(at)
    if since > now then
      -- Redis's clock stepped back: count the window from now, once, not until it catches up.
      redis.call('SET', KEYS[3], owner .. '|' .. now .. '|' .. window, 'KEEPTTL')
      since = now
    end
    local left = since + tonumber(window) + tonumber(ARGV[3]) - now
    if left > 0 then
      return {2, left}
    end
  end
end
local held_by = redis.call('GET', KEYS[1])
if held_by and held_by ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
"""
    + ACQUIRE
)

# KEYS[1] settle; ARGV[1] token, ARGV[2] window ms, ARGV[3] ttl ms. Records "this process
# acted on (or saw the recovery of) the service now, settling for window ms", stamped with
# Redis's clock, so processes on hosts with different clocks compare alike.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. now .. '|' .. ARGV[2], 'PX', ARGV[3])
return now
"""

# KEYS[1] lease; ARGV[1] token. Returns 1 if the caller's lease was deleted, else 0.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# KEYS[1] latch, KEYS[2] reset id; ARGV[1] reason. Writes the latch and answers the reset id
# current at that moment ('' if no reset was ever recorded), so the writer knows which
# reset would lift it.
LATCH = """
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[2]) or ''
"""

# KEYS[1] latch, KEYS[2] reset id. Whether the latch is set, and the last reset's id.
LATCH_STATE = """
return {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
"""

# KEYS[1] latch, KEYS[2] reset id; ARGV[1] a fresh reset id. An operator's reset: the
# latch goes and the new id marks it as a reset, in one step.
UNLATCH = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class LatchView:
    """The shared latch as Redis holds it.

    ``reset_id`` is the id the last ``reset()`` (on any process) wrote, or None if
    Redis holds none (never reset, or Redis lost it). Only a ``reset_id`` that is not
    None and differs from the one seen when a latch was written means "reset".
    """

    latched: bool
    reset_id: str | None


class Turn(enum.Enum):
    """What :meth:`RecoveryCoordinator.take_turn` found."""

    ACT = "act"  # the caller holds the lease: it acts
    WAIT = "wait"  # another process holds the lease
    LATCHED = "latched"  # some process escalated the service; no lease was taken
    SETTLING = "settling"  # another process acted on it, or saw it recover, just now
    BUSY = "busy"  # no free connection in this process's pool: Redis was not asked


_TURNS = {1: Turn.ACT, 0: Turn.WAIT, -1: Turn.LATCHED, 2: Turn.SETTLING}

SETTLE_HORIZON = 3600.0
"""Seconds a settle record outlives its window: callers' lags up to this are honoured."""


class RecoveryCoordinator:
    """Share recovery episodes and the escalation latch between processes.

    ``RecoveryManager(coordinator=RecoveryCoordinator(redis_client))`` in every
    replica, with the same ``key_prefix``. ``timeout`` bounds each Redis call, so
    a hung Redis delays recovery by at most that much before the manager acts alone.
    """

    def __init__(
        self, redis_client: Redis, *, key_prefix: str = "xnai:recovery", timeout: float = 2.0
    ) -> None:
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"'key_prefix' must be a non-empty string: {key_prefix!r}")
        self.timeout = check_seconds("timeout", timeout)
        self._client = redis_client
        self.key_prefix = key_prefix
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._acquire = redis_client.register_script(ACQUIRE)
        self._take_turn = redis_client.register_script(TAKE_TURN)
        self._settle = redis_client.register_script(SETTLE)
        self._release = redis_client.register_script(RELEASE)
        self._latch = redis_client.register_script(LATCH)
        self._latch_state = redis_client.register_script(LATCH_STATE)
        self._unlatch = redis_client.register_script(UNLATCH)
        self._down = False
        self._busy_logged = False

    def __repr__(self) -> str:
        return f"RecoveryCoordinator(key_prefix={self.key_prefix!r}, token={self.token!r})"

    def lease_key(self, service_name: str) -> str:
        return f"{self.key_prefix}:{{{service_name}}}:lease"

    def latch_key(self, service_name: str) -> str:
        return f"{self.key_prefix}:{{{service_name}}}:escalated"

    def reset_key(self, service_name: str) -> str:
        return f"{self.key_prefix}:{{{service_name}}}:reset"

    def settle_key(self, service_name: str) -> str:
        return f"{self.key_prefix}:{{{service_name}}}:settle"

    def new_owner(self) -> str:
        """A name of its own for one party acting through this coordinator (each
        ``RecoveryManager`` takes one): this process's token and a random suffix.

        Leases and settle records belong to an owner, not to the coordinator: a manager
        rebuilt on the same coordinator (a service's reload) honours the lease and the
        settle record of the one it replaces, as any peer would.
        """
        return f"{self.token}/{uuid.uuid4().hex[:8]}"

    async def acquire(
        self, service_name: str, ttl: float, *, owner: str | None = None
    ) -> bool | None:
        """Take (or extend) the service's lease for ``ttl`` seconds; None if Redis is away.

        ``owner`` (every method that takes one): whose lease or record it is; this
        coordinator's ``token`` by default.
        """
        ms = max(1, int(ttl * 1000))
        try:
            held = await self._call(
                lambda: self._acquire(
                    keys=[self.lease_key(service_name)], args=[owner or self.token, ms]
                )
            )
        except PoolBusy:
            self._busy()
            return None
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return None
        self._reachable()
        return bool(held)

    async def take_turn(
        self, service_name: str, ttl: float, *, lag: float = 0.0, owner: str | None = None
    ) -> Turn | None:
        """Before acting: the latch check, the settle check and ``acquire`` in one atomic step;
        None if Redis is away.

        ``lag``: how far the caller's own view of the service may trail reality. A
        peer's action or recovery recorded (:meth:`settle`) less than its window plus
        ``lag`` ago answers :attr:`Turn.SETTLING`: the caller's "unhealthy" may predate
        the fix. Checking :meth:`latched` and then calling :meth:`acquire` would leave a
        gap in which the holder can latch and release: the lease would then be taken for
        a service already escalated, and restarted once more.
        """
        found = await self.take_turn_settling(service_name, ttl, lag=lag, owner=owner)
        return None if found is None else found[0]

    async def take_turn_settling(
        self, service_name: str, ttl: float, *, lag: float = 0.0, owner: str | None = None
    ) -> tuple[Turn, float] | None:
        """:meth:`take_turn`, with the seconds a :attr:`Turn.SETTLING` answer has left, or
        those the peer's lease has left for :attr:`Turn.WAIT` (0.0 for the others), so the
        caller can keep honouring a peer's settling action should Redis lose the record
        (flushed, restarted empty, evicted, its clock stepped), and a peer's lease while
        Redis is away (a failover)."""
        ms = max(1, int(ttl * 1000))
        keys = [
            self.lease_key(service_name),
            self.latch_key(service_name),
            self.settle_key(service_name),
        ]
        args: list[str | int] = [owner or self.token, ms, max(0, int(lag * 1000))]
        try:
            found = await self._call(lambda: self._take_turn(keys=keys, args=args))
        except PoolBusy:
            self._busy()
            return Turn.BUSY, 0.0
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return None
        self._reachable()
        if isinstance(found, list):
            return _TURNS[int(found[0])], max(0.0, int(found[1]) / 1000)
        return _TURNS[int(found)], 0.0

    async def settle(self, service_name: str, window: float, *, owner: str | None = None) -> bool:
        """Record that this process acts on the service now (``window``: until its grace
        period ends) or saw it recover (``window``: its cooldown). False if Redis is away.
        """
        window_ms = max(0, int(window * 1000))
        ttl_ms = window_ms + int(SETTLE_HORIZON * 1000)
        try:
            await self._call(
                lambda: self._settle(
                    keys=[self.settle_key(service_name)],
                    args=[owner or self.token, window_ms, ttl_ms],
                )
            )
        except PoolBusy:
            self._busy()
            return False
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return False
        self._reachable()
        return True

    async def release(self, service_name: str, *, owner: str | None = None) -> None:
        """Give the lease back, if it is still ours."""
        try:
            await self._call(
                lambda: self._release(
                    keys=[self.lease_key(service_name)], args=[owner or self.token]
                )
            )
        except PoolBusy:
            self._busy()
            return
        except REDIS_DOWN as exc:
            await self._unreachable(exc)

    async def latch(self, service_name: str, reason: str) -> LatchView | None:
        """Record the escalation for every process; None if Redis is away (nothing written).

        The answer holds the reset id current when the latch was written: only a later
        reset (a different id) lifts it.
        """
        keys = [self.latch_key(service_name), self.reset_key(service_name)]
        try:
            found = await self._call(lambda: self._latch(keys=keys, args=[reason.encode()[:4096]]))
        except PoolBusy:
            self._busy()
            return None
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return None
        self._reachable()
        return LatchView(latched=True, reset_id=_text(found))

    async def latch_state(self, service_name: str) -> LatchView | None:
        """The latch and the last reset's id, read in one step; None if Redis is away."""
        keys = [self.latch_key(service_name), self.reset_key(service_name)]
        try:
            exists, reset_id = await self._call(lambda: self._latch_state(keys=keys))
        except PoolBusy:
            self._busy()
            return None
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return None
        self._reachable()
        return LatchView(latched=bool(int(exists)), reset_id=_text(reset_id))

    async def latched(self, service_name: str) -> bool | None:
        """Whether some process escalated the service; None if Redis is away."""
        try:
            found = await self._call(lambda: self._client.exists(self.latch_key(service_name)))
        except PoolBusy:
            self._busy()
            return None
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return None
        self._reachable()
        return bool(found)

    async def unlatch(self, service_name: str) -> bool:
        """Lift the shared latch (an operator's reset on any process) and record the reset.

        False if Redis is away: the shared latch, if any, is still there.
        """
        keys = [self.latch_key(service_name), self.reset_key(service_name)]
        try:
            await self._call(lambda: self._unlatch(keys=keys, args=[uuid.uuid4().hex]))
        except PoolBusy:
            self._busy()
            return False
        except REDIS_DOWN as exc:
            await self._unreachable(exc)
            return False
        self._reachable()
        return True

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call within ``timeout``, a full pool waited out meanwhile (raises
        ``PoolBusy`` if no connection came: no outage, Redis was not asked)."""
        return await when_pool_free(self._client, call, self.timeout)

    def _busy(self) -> None:
        if not self._busy_logged:
            self._busy_logged = True
            logger.warning(
                "recovery coordination busy: no free connection in the Redis client's pool "
                "within %gs (the application holds them all); waiting, not acting alone",
                self.timeout,
            )

    async def _unreachable(self, exc: BaseException) -> None:
        # A connection that reached a demoted master is dropped, so the next call finds
        # the new one instead of meeting the replica again.
        await forget_demoted(self._client, exc)
        if not self._down:
            self._down = True
            logger.warning(
                "recovery coordination unavailable (%s); acting on this process's view only",
                type(exc).__name__,
            )

    def _reachable(self) -> None:
        self._busy_logged = False
        if self._down:
            self._down = False
            logger.warning("recovery coordination back; sharing recovery again")


def _text(value: object) -> str | None:
    """A reset id from a script's answer: '' (none recorded) is None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) and value else None
