"""The pattern subscription of one link: subscribed, heard, checked for life.

docs/redis.md, "The subscription is checked, not trusted". A connection can die
without a sound (no FIN, no RST), so a subscription quiet for ``HEARTBEAT_IDLE`` is
PINGed, and one that leaves the PING unanswered for ``HEARTBEAT_DEADLINE`` is
dropped (counted in ``silences``, one WARNING) to be replaced: a silent subscription
is found within 2 s. A ``psubscribe`` confirmation heard after the first one means
redis-py renewed a broken subscription by itself: messages sent meanwhile were lost,
so the link re-reads every circuit.

Messages are decoded here (the channel in the client's encoding, as its key was
sent) and handed on as ``(channel, payload)``; the subscription knows no circuit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from .._redis_errors import describe
from .redis_codec import glob_escape, text

logger = logging.getLogger("xnai_core.circuit.redis")

# How long the link waits for a message before it looks at its other chores.
POLL = 0.2
# After this long without hearing anything on it, PING it; a PING unanswered this long
# means the connection is dead (black-holed): so a silent subscription is found within
# HEARTBEAT_IDLE + HEARTBEAT_DEADLINE + POLL.
HEARTBEAT_IDLE = 0.4
HEARTBEAT_DEADLINE = 1.0


class Subscription:
    """``PSUBSCRIBE <prefix>*`` on ``client``, one connection at a time."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.pattern = glob_escape(prefix) + "*"
        self.silences = 0
        self.closed = False
        self._encoder = client.get_encoder()
        self._pubsub: PubSub | None = None
        self._last_heard = 0.0
        self._ping_sent: float | None = None

    @property
    def open(self) -> bool:
        """Whether a subscription is in place (it may still be found dead)."""
        return self._pubsub is not None

    async def subscribe(self) -> None:
        """Subscribe on a new connection; returns once Redis confirmed it."""
        await self.drop()
        client = self.client
        if isinstance(client, aioredis.RedisCluster):
            # Classic pub/sub is broadcast to every node: any node will do.
            await client.initialize()
            pubsub: PubSub = client.pubsub(node=client.get_random_node())
        else:
            pubsub = client.pubsub()
        self._pubsub = pubsub
        await pubsub.psubscribe(self.pattern)
        while True:
            message = await pubsub.get_message(timeout=POLL)
            if message is not None and message.get("type") == "psubscribe":
                return

    def heard(self) -> None:
        """Count the subscription as alive now (it was just set up and caught up)."""
        self._last_heard, self._ping_sent = time.monotonic(), None

    async def listen(
        self,
        deadline: float,
        deliver: Callable[[str, str], None],
        renewed: Callable[[], None],
    ) -> bool:
        """Read one message (or wait a poll); False if the subscription is gone.

        A message on a circuit's channel goes to ``deliver(channel, payload)``; a
        renewed subscription calls ``renewed()``. ``deadline``: how long Redis may
        take to answer the heartbeat's PING being sent.
        """
        pubsub = self._pubsub
        assert pubsub is not None
        message: dict[str, Any] | None = None
        polled = time.monotonic()
        try:
            async with asyncio.timeout(POLL + deadline):
                message = await pubsub.get_message(timeout=POLL)
                now = time.monotonic()
                if message is None and (
                    self._ping_sent is None and now - self._last_heard >= HEARTBEAT_IDLE
                ):
                    await pubsub.ping()
                    # Timed from when it is out: a stall while it was sent is not its wait.
                    self._ping_sent = time.monotonic()
                    return True
        except Exception as exc:
            if not self.closed:
                logger.info(
                    "redis subscription for circuit breakers under %r broke (%s); "
                    "subscribing again",
                    self.prefix,
                    describe(exc),
                    extra={"key_prefix": self.prefix},
                )
                await self.drop()
            return False
        if message is not None:
            # Handed on outside the subscription's own try: a circuit's bug is not the
            # subscription breaking.
            self._last_heard, self._ping_sent = now, None
            if message.get("type") == "psubscribe":
                logger.info(
                    "redis subscription for circuit breakers under %r was re-established "
                    "by the client; re-reading every circuit",
                    self.prefix,
                    extra={"key_prefix": self.prefix},
                )
                renewed()
            self._dispatch(message, deliver)
            return True
        if self._ping_sent is not None and self._unanswered(polled):
            self.silences += 1
            logger.warning(
                "redis subscription for circuit breakers under %r silent for %.1fs "
                "(no answer to PING); subscribing again and re-reading every circuit",
                self.prefix,
                time.monotonic() - self._last_heard,
                extra={"key_prefix": self.prefix},
            )
            await self.drop()
            return False
        return True

    def _unanswered(self, polled: float) -> bool:
        """Whether the PING is past its deadline, by a poll (begun at ``polled``) that came
        back empty and can be believed: one that had its time, or began past the deadline.
        A poll held up by a stall (a blocking callback) may have left the PONG unread in
        the socket (the stall's end fires its timeout first); the next poll reads it."""
        assert self._ping_sent is not None
        now = time.monotonic()
        if now - self._ping_sent <= HEARTBEAT_DEADLINE:
            return False
        return now - polled <= 2 * POLL or polled - self._ping_sent > HEARTBEAT_DEADLINE

    def _dispatch(self, message: dict[str, Any], deliver: Callable[[str, str], None]) -> None:
        if message.get("type") != "pmessage":
            return
        try:
            # The channel comes back in the client's encoding (its key was sent in it).
            raw = message["channel"]
            channel = self._encoder.decode(raw, force=True) if isinstance(raw, bytes) else text(raw)
            payload = text(message["data"])
        except (KeyError, ValueError):
            logger.warning("ignored an unreadable circuit message under %r", self.prefix)
            return
        deliver(channel, payload)

    async def close(self) -> None:
        """For good: the link is closing."""
        self.closed = True
        await self.drop()

    async def drop(self) -> None:
        """Close the subscription's connection, if any (quietly: it may be dead)."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                async with asyncio.timeout(1.0):
                    await pubsub.aclose()
            except Exception:  # a dead connection may fail to say goodbye
                logger.debug("closing a redis subscription failed", exc_info=True)
