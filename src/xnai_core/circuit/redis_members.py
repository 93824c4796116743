"""The circuits a link serves, as the link sees them: a small Protocol, held weakly.

docs/redis.md, "Bookkeeping goes with the breakers": the link keeps one entry per channel
while some circuit of that name is alive, and none after: a circuit is held by a weak
reference, dropped when it unregisters or is garbage-collected, so creating and
dropping any number of distinctly named breakers leaves the link's bookkeeping flat.
The link knows a circuit only through :class:`LinkMember`: it tells it of outages and
messages and asks it to catch up; it never reaches into its state.
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol

from .._redact import redact

__all__ = ["LinkMember", "Members"]

logger = logging.getLogger("xnai_core.circuit.redis")


class LinkMember(Protocol):
    """What the link needs of a circuit (a :class:`~.redis_store.RedisStore`)."""

    @property
    def channel(self) -> str:
        """The circuit's channel (its key)."""

    @property
    def op_timeout(self) -> float:
        """The circuit's deadline for one operation."""

    @property
    def resync_interval(self) -> float:
        """How often the circuit wants to be re-read."""

    def on_outage(self) -> None:
        """Redis failed: decide locally until :meth:`catch_up` succeeds."""

    def on_message(self, payload: str) -> None:
        """A message on the circuit's channel."""

    async def catch_up(self) -> bool:
        """Reconcile (after an outage) or resync (messages may have been missed).

        False: this circuit could not be brought in step (the link tries again later).
        """


class Members:
    """Circuits by channel, weakly held."""

    def __init__(self) -> None:
        self._by_channel: dict[str, dict[int, weakref.ref[LinkMember]]] = {}

    def __len__(self) -> int:
        """How many channels (circuit names) are served: the bookkeeping's size."""
        return len(self._by_channel)

    def add(self, member: LinkMember) -> None:
        """Serve ``member`` until :meth:`remove` or until it is garbage-collected."""
        channel, key = member.channel, id(member)
        by_channel = self._by_channel

        def gone(ref: weakref.ref[LinkMember]) -> None:
            refs = by_channel.get(channel)
            if refs is not None and refs.get(key) is ref:
                del refs[key]
                if not refs:
                    del by_channel[channel]

        by_channel.setdefault(channel, {})[key] = weakref.ref(member, gone)

    def remove(self, member: LinkMember) -> None:
        refs = self._by_channel.get(member.channel)
        if refs is not None:
            refs.pop(id(member), None)
            if not refs:
                del self._by_channel[member.channel]

    def alive(self) -> list[LinkMember]:
        """The circuits served now (strong references: do not keep the list)."""
        found = []
        for ref in self.refs():
            member = ref()
            if member is not None:
                found.append(member)
        return found

    def refs(self) -> list[weakref.ref[LinkMember]]:
        """Weak references to every circuit served now (a copy: safe across awaits)."""
        return [ref for refs in list(self._by_channel.values()) for ref in list(refs.values())]

    def deliver(self, channel: str, payload: str) -> None:
        """Hand a message on ``channel`` to the circuits of that name."""
        refs = self._by_channel.get(channel)
        if refs:
            for ref in list(refs.values()):
                member = ref()
                if member is not None:
                    try:
                        member.on_message(payload)
                    except Exception:  # a bug of ours: said, and the others still hear
                        logger.exception(
                            "a circuit failed to take a message on %r", redact(channel)
                        )
