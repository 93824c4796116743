"""Helpers for the service and CLI tests: the command as a subprocess, loopback HTTP servers."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "xnai-core"


def command() -> list[str]:
    """The installed console script (falls back to ``python -m`` outside a venv)."""
    if _SCRIPT.exists():
        return [str(_SCRIPT)]
    return [sys.executable, "-m", "xnai_core.service"]


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> Ran:
    """Run ``xnai-core ARGS`` with no standard input; its exit code and output."""
    merged = {**os.environ, **(env or {})}
    done = subprocess.run(
        [*command(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=merged,
        cwd=REPO,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def demo_stack(*args: str, env: Mapping[str, str], check: bool = True) -> None:
    """``python -m examples.demo_stack ARGS`` (start, kill, restart a toy service)."""
    subprocess.run(
        [sys.executable, "-m", "examples.demo_stack", *args],
        cwd=REPO,
        env={**os.environ, **env},
        check=check,
        timeout=30,
        capture_output=True,
    )


def demo_stack_up(
    port: int, config: Path, env: Mapping[str, str], *, stdout: int, stderr: int
) -> subprocess.Popen[str]:
    """``python -m examples.demo_stack up`` on ``port`` with ``config``, in the background."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.demo_stack",
            "up",
            "--port",
            str(port),
            "--config",
            str(config),
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    server: ThreadingHTTPServer | None = None

    def kill(self) -> None:
        """Stop the server now: its port refuses connections from here on."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def http_service(behaviour: Behaviour | None = None) -> Iterator[tuple[str, Behaviour]]:
    """A real HTTP server on a loopback port answering ``behaviour``'s status after its
    delay; yields (base URL, behaviour), which the test may change while it runs."""
    state = behaviour or Behaviour()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if state.delay:
                time.sleep(state.delay)
            body = b'{"status": "ok"}'
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    with _serving(Handler) as server:
        state.server = server
        yield f"http://127.0.0.1:{server.server_address[1]}", state


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a free loopback port by a thread, shut down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def drop_shared_keys(key_prefix: str) -> None:
    """Delete every key of the shared Redis whose name starts with ``key_prefix``."""
    import redis

    from tests.conftest import SHARED_REDIS_URL

    client = redis.Redis.from_url(SHARED_REDIS_URL)
    for key in client.scan_iter(match=f"{key_prefix}*"):
        client.unlink(key)
    client.close()


class ServiceProcess:
    """``xnai-core serve`` in a subprocess on a free port; its log lines collected."""

    def __init__(
        self,
        config: Path,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        max_files: int | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.max_files = max_files  # RLIMIT_NOFILE (soft and hard) of the service
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.url = ""
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> ServiceProcess:
        self.url = ""
        self.process = subprocess.Popen(
            [*command(), "serve", "--config", str(self.config), "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=REPO,
            preexec_fn=None if self.max_files is None else self._limit_files,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not wait_for(
            lambda: bool(self.url) or self.process is None or self.process.poll() is not None,
            timeout,
        ):
            raise AssertionError(f"the service did not start: {self.log()}")
        if not self.url:
            raise AssertionError(f"the service exited: {self.log()}")
        return self

    def _limit_files(self) -> None:
        import resource

        assert self.max_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_files, self.max_files))

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "serving http://" in line and not self.url:
                self.url = line.split("serving ", 1)[1].split()[0].rstrip("/")

    def log(self) -> str:
        return "\n".join(self.lines)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def get(self, path: str) -> Any:
        import httpx

        return httpx.get(self.url + path, timeout=5)

    def state(self) -> Any:
        return self.get("/api/state").json()

    def service(self, name: str) -> Any:
        return next(s for s in self.state()["services"] if s["name"] == name)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@contextmanager
def receiver() -> Iterator[tuple[str, list[Received]]]:
    """A loopback HTTP receiver that records every POST and answers 200."""
    got: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            got.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    with _serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", got


@contextmanager
def not_redis(reply: bytes) -> Iterator[str]:
    """A loopback TCP server that answers ``reply`` to whatever it reads (an HTTP server
    on the port a Redis URL names, a proxy that knows no SCAN); yields its redis:// URL."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while self.request.recv(65536):
                self.request.sendall(reply)

    with _tcp_server(Handler) as url:
        yield url


@contextmanager
def half_redis(answers: Mapping[str, bytes]) -> Iterator[str]:
    """A loopback server speaking just enough RESP: the commands in ``answers`` get their
    reply, every other one none, ever (a Redis that answers ``EXISTS`` and then stalls on
    the circuit's scripts); yields its redis:// URL."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            buffer = b""
            while data := self.request.recv(65536):
                buffer += data
                commands, buffer = _resp_commands(buffer)
                for command in commands:
                    reply = answers.get(command)
                    if reply is None:
                        while self.request.recv(65536):  # silent from here on
                            pass
                        return
                    self.request.sendall(reply)

    with _tcp_server(Handler) as url:
        yield url


@contextmanager
def _tcp_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[str]:
    """A threaded loopback TCP server that serves each connection with ``handler``;
    yields its redis:// URL, and shuts it down after."""

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()


def _resp_commands(buffer: bytes) -> tuple[list[str], bytes]:
    """The names (upper case) of the complete RESP commands at the start of ``buffer``,
    and what is left of it."""
    names: list[str] = []
    while buffer.startswith(b"*"):
        try:
            end = buffer.index(b"\r\n")
            position, parts = end + 2, []
            for _ in range(int(buffer[1:end])):
                end = buffer.index(b"\r\n", position)
                length = int(buffer[position + 1 : end])
                parts.append(buffer[end + 2 : end + 2 + length])
                position = end + 2 + length + 2
                if position > len(buffer):
                    raise ValueError("incomplete")
        except ValueError:
            break
        names.append(parts[0].decode().upper())
        buffer = buffer[position:]
    return names, buffer
