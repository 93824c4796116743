"""A loopback TCP proxy for the tests that throws network faults between a client and Redis.

Start it in front of a private redis-server and point the client at ``proxy.port``.
It forwards bytes both ways and reads the RESP framing on the side, so it knows which
command every reply answers. Faults are rules checked on every reply, first match wins:

- :meth:`FaultProxy.drop_replies`: the request reached Redis and Redis answered, but
  the client's connection is closed (FIN; RST with ``reset=True``) in place of the
  reply. Redis acted; the client never hears. Its retry policy decides what happens next.
- :meth:`FaultProxy.delay_replies`: the reply is held for a while (order is kept).
- :meth:`FaultProxy.black_hole_replies`: from that reply on, nothing more passes on the
  connection either way, and it stays open: no FIN, no RST (a dead host, a NAT flush).

and, at once, on the connections that match: :meth:`FaultProxy.black_hole` and
:meth:`FaultProxy.reset` (RST). :meth:`FaultProxy.set_latency` delays every packet both
ways (a high round trip, connection set-up included). :meth:`FaultProxy.heal` ends every
rule and the latency; connections already black-holed stay so.

Which replies a rule hits: ``when(connection, command)``, ``command`` being the name of
the request the reply answers (``"EVALSHA"``), or None for a message nobody asked for
(pub/sub), and ``count`` limits it to the next N matching replies. :func:`replies_to`
and :func:`on_connections_that_sent` build the usual predicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["drop", "reset", "delay", "black_hole"]

_PUSH_KINDS = frozenset({"MESSAGE", "PMESSAGE", "SMESSAGE", "INVALIDATE"})
# One reply per channel or pattern named.
_SUBSCRIBING = frozenset(
    {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"}
)
_AGGREGATES = (b"*", b">", b"~", b"%", b"|")
_BULKS = (b"$", b"=", b"!")


def frame_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Where the RESP2/RESP3 value starting at ``pos`` ends; None while it is incomplete."""
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind, head, end = bytes(buf[pos : pos + 1]), buf[pos + 1 : line_end], line_end + 2
    if kind in _BULKS:
        size = int(head)
        if size < 0:
            return end  # a RESP2 null
        return end + size + 2 if len(buf) >= end + size + 2 else None
    if kind in _AGGREGATES:
        items = int(head) * (2 if kind in (b"%", b"|") else 1)
        for _ in range(max(items, 0)):
            found = frame_end(buf, end)
            if found is None:
                return None
            end = found
        # An attribute (|) precedes the value it describes: both make one reply.
        return frame_end(buf, end) if kind == b"|" else end
    return end  # + - : _ , # ( : one line


def _request_end(buf: bytearray) -> int | None:
    if buf[:1] == b"*":
        return frame_end(buf)
    line_end = buf.find(b"\n")  # an inline command, as typed into telnet
    return None if line_end < 0 else line_end + 1


def first_word(frame: bytes) -> str:
    """The first string of a frame, upper-cased: a command's name, a push message's kind."""
    lines = frame.split(b"\r\n", 3)
    if frame[:1] in (b"*", b">"):
        word = lines[2] if len(lines) > 2 and lines[1][:1] == b"$" else b""
    else:
        word = lines[0].lstrip(b"+-").split(b" ", 1)[0]
    return word.decode("latin-1").strip().upper()


def second_word(frame: bytes) -> str:
    """A request's first argument (EVALSHA's script SHA), lower-cased; "" if none."""
    lines = frame.split(b"\r\n", 5)
    if frame[:1] == b"*" and len(lines) > 4 and lines[3][:1] == b"$":
        return lines[4].decode("latin-1").lower()
    return ""


class Connection:
    """One client connection through the proxy, and the commands it has sent."""

    def __init__(
        self, number: int, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.sent: set[str] = set()  # every command name sent so far, upper-case
        self.black_holed = False
        self.closed = asyncio.Event()
        self._client = client
        self._server = server
        self.to_client = _Pipe(self, client)
        self.to_server = _Pipe(self, server)
        # (name, first argument) of the request each reply still to come answers.
        self._awaiting: deque[tuple[str, str]] = deque()
        self.argument = ""  # the first argument of the request the reply at hand answers
        self._closing = False  # a drop or reset is on its way: forward nothing more

    def __repr__(self) -> str:
        return f"<Connection #{self.number} sent={sorted(self.sent)}>"

    @property
    def passing(self) -> bool:
        return not (self.black_holed or self._closing or self.closed.is_set())

    def requested(self, frame: bytes) -> None:
        name = first_word(frame)
        self.sent.add(name)
        replies = 1
        if name in _SUBSCRIBING and frame[:1] == b"*":
            replies = max(1, int(frame[1 : frame.index(b"\r\n")]) - 1)
        self._awaiting.extend([(name, second_word(frame))] * replies)

    def answered(self, frame: bytes) -> str | None:
        """The command this reply answers; None for a message nobody asked for."""
        self.argument = ""
        if (frame[:1] in (b"*", b">") and first_word(frame) in _PUSH_KINDS) or not self._awaiting:
            return None
        name, self.argument = self._awaiting.popleft()
        return name

    def close(self, *, rst: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for writer in (self._client, self._server):
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        # Linger 0: close() sends RST, not FIN.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
            else:
                writer.close()

    def end_instead_of_reply(self, delay: float, *, rst: bool) -> None:
        self._closing = True
        self.to_client.send(None, delay, rst=rst)


class _Pipe:
    """Bytes for one side of a connection, written in order, each not before its time."""

    def __init__(self, connection: Connection, writer: asyncio.StreamWriter) -> None:
        self._connection = connection
        self._writer = writer
        self._queue: asyncio.Queue[tuple[float, bytes | None, bool]] = asyncio.Queue()
        self._last_due = 0.0

    def send(self, data: bytes | None, delay: float, *, rst: bool = False) -> None:
        """Queue ``data`` (None: close the connection) to go out ``delay`` seconds from now."""
        due = max(self._last_due, asyncio.get_running_loop().time() + delay)
        self._last_due = due
        self._queue.put_nowait((due, data, rst))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data, rst = await self._queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if data is None:
                self._connection.close(rst=rst)
                return
            if self._connection.black_holed:
                continue
            try:
                self._writer.write(data)
                await self._writer.drain()
            except OSError:
                self._connection.close()
                return


Which = Callable[[Connection, "str | None"], bool]
"""``when(connection, command)``: does a rule hit this reply (``command`` it answers)?"""


def everything(connection: Connection, command: str | None) -> bool:
    return True


def replies_to(*commands: str) -> Which:
    """Replies to these commands (``"EVALSHA"``), on any connection."""
    names = {name.upper() for name in commands}
    return lambda connection, command: command in names


def replies_to_script(sha: str) -> Which:
    """Replies to EVALSHA of one script (its SHA1, as ``redis-cli SCRIPT LOAD`` prints)."""
    sha = sha.lower()
    return lambda connection, command: command == "EVALSHA" and connection.argument == sha


def on_connections_that_sent(*commands: str) -> Which:
    """Anything on a connection that sent one of these (``"PSUBSCRIBE"``: a subscriber)."""
    names = {name.upper() for name in commands}
    return lambda connection, command: bool(connection.sent & names)


@dataclass
class Rule:
    """A fault for the replies that ``when`` picks; ``count`` None: every one of them."""

    action: Action
    when: Which
    count: int | None
    pause: tuple[float, float] = (0.0, 0.0)
    hits: int = 0
    active: bool = True

    def takes(self, connection: Connection, command: str | None) -> bool:
        if not self.active or (self.count is not None and self.hits >= self.count):
            return False
        if not self.when(connection, command):
            return False
        self.hits += 1
        return True


@dataclass
class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>``, faults included."""

    upstream_port: int
    rng: random.Random = field(default_factory=random.Random)
    port: int = 0
    connections: list[Connection] = field(default_factory=list)  # open ones
    accepted: int = 0
    rules: list[Rule] = field(default_factory=list)
    latency: tuple[float, float] = (0.0, 0.0)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close(rst=True)
        # Closed connections end their tasks; one still connecting upstream is cancelled.
        _, connecting = await asyncio.wait(self._tasks, timeout=5) if self._tasks else ((), ())
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults ----------------------------------------------------------------

    def drop_replies(
        self, when: Which = everything, count: int | None = 1, *, reset: bool = False
    ) -> Rule:
        """Close the connection in place of the next ``count`` replies ``when`` picks."""
        return self._add(Rule("reset" if reset else "drop", when, count))

    def delay_replies(
        self,
        low: float,
        high: float | None = None,
        when: Which = everything,
        count: int | None = None,
    ) -> Rule:
        """Hold the replies ``when`` picks ``low`` seconds (or uniformly up to ``high``)."""
        return self._add(Rule("delay", when, count, (low, low if high is None else high)))

    def black_hole_replies(self, when: Which = everything, count: int | None = 1) -> Rule:
        """Swallow the reply ``when`` picks and everything after it on that connection."""
        return self._add(Rule("black_hole", when, count))

    def black_hole(self, which: Callable[[Connection], bool] = lambda c: True) -> int:
        """Stop forwarding on the open connections ``which`` picks (kept open); how many."""
        picked = [c for c in self.connections if which(c)]
        for connection in picked:
            connection.black_holed = True
        return len(picked)

    def reset(self, which: Callable[[Connection], bool] = lambda c: True) -> int:
        """RST the open connections ``which`` picks, now; how many."""
        picked = [c for c in self.connections if which(c)]
        for connection in picked:
            connection.close(rst=True)
        return len(picked)

    def set_latency(self, low: float, high: float | None = None) -> None:
        """Delay every packet, both ways, by ``low`` seconds (or uniformly up to ``high``)."""
        self.latency = (low, low if high is None else high)

    def heal(self) -> None:
        """No more faults: every rule ends, the latency is gone."""
        for rule in self.rules:
            rule.active = False
        self.rules.clear()
        self.latency = (0.0, 0.0)

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    # -- forwarding --------------------------------------------------------------

    def _seconds(self, span: tuple[float, float]) -> float:
        low, high = span
        return low if high <= low else self.rng.uniform(low, high)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(client_in, client_out)
        except asyncio.CancelledError:
            # Only aclose() or the loop's shutdown cancel this; asyncio's stream callback
            # would log a cancelled client_connected_cb as an error, so end quietly.
            client_out.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_out.transport.abort()  # refused upstream: refused here too
            return
        self.accepted += 1
        connection = Connection(next(self._numbers), client_out, server_out)
        self.connections.append(connection)
        parts = [
            self._requests(connection, client_in),
            self._replies(connection, server_in),
            connection.to_client.run(),
            connection.to_server.run(),
        ]
        pumps = [asyncio.create_task(part) for part in parts]
        try:
            await connection.closed.wait()
        finally:
            connection.close(rst=True)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.connections.remove(connection)

    async def _requests(self, connection: Connection, reader: asyncio.StreamReader) -> None:
        pending = bytearray()
        try:
            while data := await reader.read(65536):
                if not connection.passing:
                    continue
                pending += data
                while (end := _request_end(pending)) is not None:
                    connection.requested(bytes(pending[:end]))
                    del pending[:end]
                connection.to_server.send(data, self._seconds(self.latency))
        except OSError:
            pass
        # The client closed (or reset): so does the proxy, even on a black hole.
        connection.close()

    async def _replies(self, connection: Connection, reader: asyncio.StreamReader) -> None:
        pending = bytearray()
        try:
            while data := await reader.read(65536):
                pending += data
                while (end := frame_end(pending)) is not None:
                    frame = bytes(pending[:end])
                    del pending[:end]
                    self._reply(connection, frame)
        except OSError:
            pass
        if not connection.black_holed:
            connection.close()  # a black hole hides the server's goodbye too

    def _reply(self, connection: Connection, frame: bytes) -> None:
        command = connection.answered(frame)
        if not connection.passing:
            return
        rule = next((r for r in self.rules if r.takes(connection, command)), None)
        delay = self._seconds(self.latency)
        if rule is None:
            connection.to_client.send(frame, delay)
        elif rule.action == "delay":
            connection.to_client.send(frame, delay + self._seconds(rule.pause))
        elif rule.action == "black_hole":
            connection.black_holed = True
        else:
            connection.end_instead_of_reply(delay, rst=rule.action == "reset")
