"""Shared fixtures: real Redis (shared and private), real PostgreSQL, unique key prefixes."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import settings

from tests.fault_proxy import FaultProxy

# CI (`.ci/run`) runs the property tests on a fixed sequence of examples, so that a run's
# verdict is the code's, not the draw's; a developer's run draws new examples each time.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_REDIS_URL = os.environ.get("XNAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("XNAI_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _ports_to_pick() -> range:
    """Ports below the kernel's ephemeral range: no connect() on the machine takes one as
    its own port (which would keep a test's server from binding it later, or connect a
    client to itself at a "dead" port), and port 0 binds never hand one out."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, low) if low - 10000 >= 5000 else range(1024, 10000)


_PICK = _ports_to_pick()
_RANDOM = random.SystemRandom()  # other test runs on the machine pick too: never in step


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now (random, below the
    ephemeral range; still check that the server you start there is yours)."""
    for _ in range(200):
        port = _RANDOM.choice(_PICK)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PICK}")


def _redis_pid(port: int) -> int | None:
    """The process id of the redis-server answering on ``port`` (None: none answers yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
                if not reply.startswith(b"$"):  # LOADING, NOAUTH...: not ready, or not ours
                    return None
                size, found, body = reply.partition(b"\r\n")
                if found and len(body) >= int(size[1:]) + 2:
                    break
    except (OSError, ValueError):
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


def wait_for_own_redis(process: subprocess.Popen[bytes], port: int, bound: float = 20.0) -> bool:
    """Wait until ``process`` (a redis-server told to listen on ``port``) answers there.

    False when it exited first: another process holds the port (it was free when picked).
    """
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if _redis_pid(port) == process.pid:
            return True
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"redis-server on port {port} did not answer within {bound:g}s")


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port: safe to stop, hang or kill."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xnai-redis-")))
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _started: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it answers.

        Other tests (of this run or another) pick free ports too: when the port was taken
        between picking and binding, the first start moves to a new one, and a PONG from
        somebody else's server on the port is never taken for this one's."""
        for _ in range(5):
            self.process = subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    *self.extra_args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if wait_for_own_redis(self.process, self.port):
                self._started = True
                return
            if self._started:  # a restart must keep its port: clients know it
                break
            self.port = free_port()
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket open but never answers."""
        assert self.process is not None
        self.process.send_signal(19)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.process is not None
        self.process.send_signal(18)

    def kill(self) -> None:
        """Kill the server at once (no shutdown), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(18)  # a stopped process must run to die
            self.process.kill()
            self.process.wait(timeout=10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A started private redis-server, killed and removed after the test."""
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test uses, for keys in the shared Redis."""
    return f"xnai-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def shared_redis(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the machine's shared Redis; keys under ``key_prefix`` are removed after."""
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    try:
        yield client
    finally:
        async for key in client.scan_iter(match=f"*{key_prefix}*", count=500):
            await client.unlink(key)
        await client.aclose()


@pytest.fixture
def postgres_dsn() -> str:
    """The machine's PostgreSQL (trust auth)."""
    return POSTGRES_DSN


@pytest.fixture
async def fault_proxy(private_redis: PrivateRedis) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` in front of this test's ``private_redis``: clients connect to
    ``fault_proxy.port``; faults, rules and open connections end with the test."""
    proxy = FaultProxy(private_redis.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
