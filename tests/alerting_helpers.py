"""Loopback receivers for the alert sinks: real HTTP servers that record and answer as told."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from tests.conftest import free_port
from tests.helpers import run_virtual
from xnai_core import Alert
from xnai_core.alerting import AlertSink, DeliveryError, Notification


@dataclass(frozen=True)
class Request:
    """One request a receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """An answer a receiver gives: status, headers, body."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    drop: bool = False  # read the request, then close without answering (a lost reply)
    delay: float = 0.0  # seconds before answering (a slow but successful receiver)
    cut: bool = False  # announce a longer body than is sent, then close (a reply cut short)
    # With ``cut``: seconds to stay silent before closing (a body that stalls), or to
    # send the missing bytes one at a time, each this long after the last (a trickle).
    stall: float = 0.0
    trickle: float = 0.0


# A validator returns the reply for a request it accepts or refuses (a 400 with why).
Validator = Callable[[Request], Reply]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing its kept-alive connection is no test failure


class Receiver:
    """A real HTTP/1.1 server on loopback, in a thread.

    Replies come from ``script`` (first in, first out) while it has any, then
    from ``validator`` (which checks the payload's shape, as the real service
    would) or a plain 200.
    """

    def __init__(self, validator: Validator | None = None) -> None:
        self.requests: list[Request] = []
        self.script: deque[Reply] = deque()
        self.validator = validator
        self.answers: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender left mid-request (a sink closed at its deadline): an
                    # HTTP request cut short was not delivered, so it is not recorded.
                    self.close_connection = True
                    return
                request = Request(
                    "POST",
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                )
                reply = receiver._answer(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body) + 100 * reply.cut))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                if reply.cut:
                    time.sleep(reply.stall)
                    for _ in range(100 if reply.trickle else 0):
                        time.sleep(reply.trickle)
                        try:
                            self.wfile.write(b".")
                            self.wfile.flush()
                        except OSError:  # the client gave up: so do we
                            break
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.script:
                reply = self.script.popleft()
            elif self.validator is not None:
                reply = self.validator(request)
            else:
                reply = Reply()
            self.answers.append(reply.status)
            return reply

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self) -> list[Any]:
        with self._lock:
            return [request.json() for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BlackHole:
    """A port that accepts TCP connections and never answers (a stopped or wedged server)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)  # never accept()ed: the kernel completes handshakes, nobody reads
        self.port = int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


class _Closable(Protocol):
    def close(self) -> None: ...


Served = TypeVar("Served", bound=_Closable)


def served(item: Served) -> Iterator[Served]:
    """For a fixture: ``yield from served(Receiver())`` hands the receiver to the test and
    closes it afterwards."""
    try:
        yield item
    finally:
        item.close()


def refused_url() -> str:
    """An http URL on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds (generous: CI is shared)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def alert(service: str = "rag_api", kind: str = "status", **fields: Any) -> Alert:
    """A raised alert (critical unless told)."""
    fields.setdefault("severity", "critical")
    fields.setdefault("message", f"{service} is unhealthy")
    return Alert(service=service, kind=kind, **fields)


def resolved(raised: Alert, **fields: Any) -> Alert:
    """The resolved notice of ``raised``, as the monitor sends it."""
    fields.setdefault("message", f"resolved: {raised.service} {raised.kind} is back")
    return Alert(
        service=raised.service,
        kind=raised.kind,
        severity="info",
        resolved=True,
        key=raised.key,
        **fields,
    )


class RecordingSink(AlertSink):
    """A sink whose destination is a list; ``outcomes`` scripts failures (our own extension API)."""

    kind = "recording"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.delivered: list[Notification] = []
        self.attempts: list[Notification] = []
        self.outcomes: deque[DeliveryError | None] = deque()
        self.hang: asyncio.Event | None = None
        self.takes = 0.0  # seconds each attempt takes (virtual time in run_virtual tests)

    async def send(self, note: Notification) -> None:
        self.attempts.append(note)
        if self.takes:
            await asyncio.sleep(self.takes)
        if self.hang is not None:
            await self.hang.wait()
        if self.outcomes:
            outcome = self.outcomes.popleft()
            if outcome is not None:
                raise outcome
        self.delivered.append(note)


class SleepRecorder:
    """An injected ``sleep`` that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def all_text(records: list[Any]) -> str:
    """Everything a log record carries (message, args, extras, exception text)."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(value) for value in vars(record).values())
    return "\n".join(parts)


@dataclass
class Receivers:
    """Several receivers closed together."""

    items: list[Receiver | BlackHole] = field(default_factory=list)

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def close(self) -> None:
        for item in self.items:
            item.close()


def iter_notes(sink: RecordingSink) -> Iterator[tuple[str, str, int]]:
    for note in sink.delivered:
        yield note.key, note.event, note.repeat


def delivered_in_virtual_time(sink: RecordingSink, *alerts: Alert) -> list[tuple[str, str, int]]:
    """File ``alerts`` with ``sink`` on a virtual-time loop, drain it: what it delivered."""

    async def scenario() -> list[tuple[str, str, int]]:
        for item in alerts:
            sink.submit(item)
        await sink.drain()
        return list(iter_notes(sink))

    return run_virtual(scenario())
