"""One circuit's side of the conversation with Redis: what goes out, what comes back,
and what a missing answer means.

A :class:`Wire` belongs to one :class:`~.redis_store.RedisStore` and sends its scripts
through the client's :class:`~.redis_link.RedisLink`:

- **out**: every script gets the calling convention of :mod:`.redis_scripts`: the
  clock (or ``""`` for Redis TIME), the channel, the circuit's config, a request id,
  and the request ids whose answers arrived since the last script (acknowledged, so
  the request log forgets them);
- **back**: an answer is read strictly (:mod:`.redis_codec`); one that cannot be used
  is None: Redis failed (the link is marked down), Redis failed elsewhere or this
  circuit fell out of step while it was in flight (older than the local decisions
  made since), or it does not decode (logged once, a problem of this circuit alone).
  Its notes are logged and counted;
- **no answer**: a script unanswered for ``op_timeout`` since it was sent is a *stall*
  of this circuit (the store decides locally until it catches up), and the link asks
  Redis whether it is there at all (:meth:`.RedisLink.suspect`); a script that never
  got a connection of the client's full pool is Redis being away for every circuit.

The wire never touches the mirror: the store reads the answers and decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from redis.exceptions import MaxConnectionsError

from .._redact import redact
from .._redis_errors import describe
from .config import CircuitBreakerConfig
from .redis_codec import Reply, decode_reply, us
from .redis_link import RedisLink, ScriptRun

logger = logging.getLogger("xnai_core.circuit.redis")

# Answers received, acknowledged in the next script (older ones simply expire).
_MAX_ACKS = 64


class Wire:
    """Scripts out and answers in for the circuit ``config`` names, stored at ``key``.

    ``on_stall()`` is called when a script of this circuit stays unanswered: the store
    falls out of step (True) or already was (False). ``clock`` replaces Redis TIME.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        key: str,
        *,
        op_timeout: float,
        clock: Callable[[], float] | None,
        on_stall: Callable[[], bool],
    ) -> None:
        self.name = config.name
        self.key = key
        self.op_timeout = op_timeout
        self.link: RedisLink | None = None
        # Times the circuit fell out of step with Redis; answers to scripts sent before
        # the last time are older than its local decisions (bumped by the store).
        self.detached = 0
        self.clock_clamps = 0
        self.replays = 0
        self.stalls = 0
        self._keys = (key, f"{key}:rq")
        self._config_args = (
            str(config.failure_threshold),
            str(us(config.recovery_timeout)),
            str(config.half_open_max_calls),
            str(us(config.lease_seconds)),
        )
        self._clock = clock
        self._on_stall = on_stall
        self._acks: list[str] = []
        self._unreadable_logged = False

    def now(self) -> float:
        """The scripts' clock as this process estimates it (seconds): ``clock``, or
        Redis TIME through the link's offset (this host's wall clock before that)."""
        if self._clock is not None:
            return self._clock()
        link = self.link
        return link.redis_now() if link is not None else time.time()

    def send(self, script: str, extra: Sequence[str], rid: str = "") -> ScriptRun:
        """Start ``script`` with ``extra`` arguments and request id ``rid`` ("": none)."""
        link = self.link
        assert link is not None
        now_arg = "" if self._clock is None else str(us(self._clock()))
        acks = ",".join(self._acks)
        self._acks.clear()
        args = [now_arg, self.key, *self._config_args, rid, acks, *extra]
        run = link.send(script, self._keys, args)
        run.detached = self.detached
        return run

    def read(self, run: ScriptRun, script: str, rid: str, *, ack: bool = True) -> Reply | None:
        """The answer of a script that has ended; None when there is none to act on.

        Redis failed (the link is now down and the store decides locally); Redis failed
        elsewhere, or this circuit fell out of step, while this script ran (the store
        has been deciding locally since, so this answer is older than its state); or
        the answer could not be read (a problem of this circuit alone: logged, and the
        next resync tries again). ``ack``: acknowledge the answer in the next script;
        never for a request that was sent more than once (a copy may still be on its
        way, and must find the answer in the request log).
        """
        link = self.link
        task = run.task
        if task.cancelled():
            return None
        exc = task.exception()
        if exc is not None:
            if link is not None and not link.closed:
                link.mark_down(exc)
            return None
        if link is None or link.errors != run.errors or run.detached != self.detached:
            return None
        try:
            reply = decode_reply(task.result())
        except ValueError as error:
            self._log_unreadable(script, error)
            return None
        self._unreadable_logged = False
        if rid and ack:
            self._acks.append(rid)
            if len(self._acks) > _MAX_ACKS:
                del self._acks[:-_MAX_ACKS]
        if self._clock is None:
            link.observe_time(reply.now, run.sent, run.received)
        self._log_notes(reply.notes)
        return reply

    def deadline_passed(self, run: ScriptRun) -> None:
        """A caller stopped waiting for ``run``. It is a stall when the script stays
        unanswered for ``op_timeout`` since it was sent, however long its caller had
        left: a call that spent its budget elsewhere is no stall."""
        link = self.link
        if link is None:
            return
        left = run.sent + self.op_timeout - time.monotonic()
        if left > 0:
            link.spawn(self._watch(link, run, left), name="xnai-redis-watch")
        else:
            self._unanswered(link, run)

    async def _watch(self, link: RedisLink, run: ScriptRun, left: float) -> None:
        if not await link.settle(run, left) and self.link is link:
            self._unanswered(link, run)

    def _unanswered(self, link: RedisLink, run: ScriptRun) -> None:
        if run.task.done():
            return
        if run.waiting_for_pool:
            run.task.cancel()  # nothing sent: nothing to learn
            link.mark_down(
                MaxConnectionsError(
                    f"no connection of the client's pool came free within {self.op_timeout}s"
                )
            )
            return
        exc = TimeoutError(f"no answer from redis within {self.op_timeout}s")

        def late(task: asyncio.Task[object]) -> None:
            if not task.cancelled() and task.exception() is None:
                link.note_late_reply()

        run.task.add_done_callback(late)
        # One reply late is no outage of every circuit on the client: this one decides
        # locally until it has caught up, and the link asks Redis whether it is there
        # at all (no answer either: every circuit goes local).
        if self._on_stall():
            self.stalls += 1
            logger.info(
                "circuit '%s': no answer from redis within %ss; deciding locally "
                "until it catches up",
                redact(self.name),
                self.op_timeout,
                extra={"breaker": redact(self.name), "key": redact(self.key)},
            )
        link.suspect(exc, self.op_timeout)

    def _log_unreadable(self, script: str, exc: ValueError) -> None:
        """An answer that does not decode: this circuit's problem, logged once until
        an answer decodes again; the mirror keeps its last known state."""
        if self._unreadable_logged:
            return
        self._unreadable_logged = True
        logger.warning(
            "circuit '%s': could not read redis's answer to %s (%s); keeping the last "
            "known state until an answer can be read",
            redact(self.name),
            script,
            describe(exc),
            extra={"breaker": redact(self.name), "key": redact(self.key)},
        )

    def _log_notes(self, notes: Sequence[str]) -> None:
        for item in notes:
            if item.startswith("malformed:"):
                logger.warning(
                    "circuit '%s': malformed state in redis key %r (field %r); reset to closed",
                    redact(self.name),
                    redact(self.key),
                    item.partition(":")[2],
                    extra={"breaker": redact(self.name), "key": redact(self.key)},
                )
            elif item == "pushed" and "lost" not in notes:  # a loss: the store says so
                logger.warning(
                    "circuit '%s': open here but not in redis (it opened while redis was "
                    "away, or redis lost it); written back to redis",
                    redact(self.name),
                    extra={"breaker": redact(self.name), "key": redact(self.key)},
                )
            elif item == "clamped":
                self.clock_clamps += 1
                logger.warning(
                    "circuit '%s': times stored in redis key %r were ahead of the clock "
                    "(it stepped back?); clamped to now",
                    redact(self.name),
                    redact(self.key),
                    extra={"breaker": redact(self.name), "key": redact(self.key)},
                )
            elif item == "replayed":
                self.replays += 1
