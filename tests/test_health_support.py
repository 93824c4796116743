"""Support for the health tests: a real HTTP server on loopback whose behaviour tests steer.

(No tests here; the module is named for the health test files it serves.)
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from tests.conftest import free_port


class LoopbackHTTPServer:
    """An HTTP/1.1 server (keep-alive) on 127.0.0.1 in the test's own event loop.

    Set ``status``, ``delay`` (seconds before answering) or ``hang`` (never answer)
    between requests. ``stop()`` closes every connection, as a crash would, and
    ``start()`` again serves on the same port.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.delay = 0.0
        self.hang = False
        self.requests = 0
        self.connections = 0
        self.paths: list[str] = []
        self.authorizations: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and drop every connection at once (no graceful close)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._closing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.paths.append(request_line.split(" ")[1] if " " in request_line else "")
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "authorization":
                        self.authorizations.append(value.strip())
                self.requests += 1
                if self.hang:
                    await self._closing.wait()
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                body = b'{"status": "ok"}' if self.status < 400 else b'{"status": "error"}'
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
