"""Helpers for the Redis-backed circuit tests: the shared set-up of the fault and store
tests (a failing dependency, a hand-moved clock, polling, what Redis holds, the
``direct`` and ``stores`` fixtures), command counting, a loopback cluster, workers.

Its fixtures are in :mod:`tests.redis_fixtures` (``pytest_plugins = ["tests.redis_fixtures"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from tests.conftest import free_port, wait_for_own_redis
from xnai_core import CircuitBreakerConfig, RedisStore

REPO = Path(__file__).resolve().parent.parent
REDIS_LOGGER = "xnai_core.circuit.redis"
KEY = "xnai:cb:{svc}"


# -- the shared set-up of the circuit tests ---------------------------------------------


class Boom(Exception):
    """The protected dependency failed."""


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise Boom


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, poll: float = 0.01
) -> float:
    """Wait until ``predicate()`` holds (polled every ``poll`` s, at most ``timeout`` s);
    how long it took."""
    start = time.monotonic()
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(poll)


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The circuit logger's WARNINGs (and worse) that contain ``text``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == REDIS_LOGGER
        and record.levelno >= logging.WARNING
        and text in record.getMessage()
    ]


def cfg(**kwargs: Any) -> CircuitBreakerConfig:
    """A config named "svc" unless told otherwise."""
    kwargs.setdefault("name", "svc")
    return CircuitBreakerConfig(**kwargs)


async def hash_of(direct: aioredis.Redis, key: str = KEY) -> dict[str, str]:
    """The circuit's hash as Redis holds it."""
    raw: dict[bytes, bytes] = await direct.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


async def stored(direct: aioredis.Redis, *fields: str) -> list[str | None]:
    """Some fields of the circuit's hash as Redis holds them."""
    values: list[bytes | None] = await direct.hmget(KEY, list(fields))  # type: ignore[assignment]
    return [None if v is None else v.decode() for v in values]


async def fail_once(store: RedisStore) -> None:
    """One admitted call of ``store`` that fails."""
    admission = await store.acquire()
    assert admission.ticket is not None
    await store.record_failure(admission.ticket)


Factory = Callable[..., RedisStore]
"""``stores(config, proxied=True, **options)``: the ``stores`` fixture's factory."""


async def trials_in_redis(direct: aioredis.Redis) -> list[str]:
    """The trial permits the circuit's hash holds."""
    return sorted(k for k in await hash_of(direct) if k.startswith("trial:"))


async def no_trials(direct: aioredis.Redis) -> bool:
    """Whether the circuit's hash holds no trial permit."""
    return await trials_in_redis(direct) == []


async def state_in_redis(direct: aioredis.Redis) -> str | None:
    """The circuit's state as Redis holds it (None: no hash, or no state field)."""
    return (await stored(direct, "state"))[0]


async def state_is(direct: aioredis.Redis, state: str) -> bool:
    """Whether Redis holds the circuit in ``state``."""
    return await state_in_redis(direct) == state


# Connection set-up and the counting itself are not calls of the breaker.
_NOT_CALLS = ("info", "client|setinfo", "client|maint_notifications", "hello", "select")


async def command_counts(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What ran between two :func:`command_counts`, without set-up and counting."""
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: n for name, n in delta.items() if n and name not in _NOT_CALLS}


def _free_port_pair() -> tuple[int, int]:
    return free_port(), free_port()


@dataclass
class LoopbackCluster:
    """Three redis-server nodes with --cluster-enabled, formed by redis-cli --cluster create."""

    nodes: int = 3
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xnai-cluster-")))
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    def start(self) -> None:
        for index in range(self.nodes):
            node_dir = self.workdir / str(index)
            node_dir.mkdir()
            self._start_node(node_dir)
        created = subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(_cluster_ok(port) for port in self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("the loopback redis cluster did not reach cluster_state:ok")

    def _start_node(self, node_dir: Path) -> None:
        """Start one node and wait until it answers; ports taken by somebody else between
        picking and binding (other tests pick free ports too) are picked again."""
        server = shutil.which("redis-server") or "redis-server"
        for _ in range(5):
            port, bus = _free_port_pair()
            process = subprocess.Popen(
                [
                    server,
                    "--port", str(port),
                    "--cluster-port", str(bus),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node_dir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.processes.append(process)
            if wait_for_own_redis(process, port):
                self.ports.append(port)
                return
        raise RuntimeError("no free ports for a redis cluster node")

    def client(self, **kwargs: Any) -> aioredis.RedisCluster:
        nodes = [aioredis.cluster.ClusterNode(host, port) for host, port in self.startup_nodes]
        return aioredis.RedisCluster(startup_nodes=nodes, **kwargs)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _send(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(command)
        return sock.recv(4096)


def _cluster_ok(port: int) -> bool:
    try:
        return b"cluster_state:ok" in _send(port, b"CLUSTER INFO\r\n")
    except OSError:
        return False


# -- clients that stand for processes ---------------------------------------------


C = TypeVar("C", aioredis.Redis, aioredis.RedisCluster)


@contextlib.asynccontextmanager
async def client_maker(build: Callable[..., C]) -> AsyncIterator[Callable[..., C]]:
    """``make(**options)`` builds a new client with ``build`` (one per simulated
    process); every client made is closed on the way out."""
    made: list[C] = []

    def make(**kwargs: Any) -> C:
        client = build(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# -- worker processes ---------------------------------------------------------


def spawn_worker(spec: dict[str, Any], module: str = "tests.redis_worker") -> subprocess.Popen[str]:
    """Start ``module`` (``tests/redis_worker.py``) in a new OS process with ``spec`` as
    its orders."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", module, json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def worker_result(process: subprocess.Popen[str], timeout: float = 30) -> dict[str, Any]:
    """The JSON a worker printed last; fails with its stderr if it crashed."""
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise AssertionError(f"worker exited {process.returncode}: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"worker printed no result: {out[-500:]} {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def wait_until_ready(client: Any, key: str, count: int, timeout: float = 30) -> None:
    """Wait until ``count`` workers have pushed themselves onto the list ``key``."""
    deadline = time.monotonic() + timeout
    while await client.llen(key) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {await client.llen(key)} of {count} workers got ready")
        await asyncio.sleep(0.02)


async def release_workers(client: Any, key: str, count: int) -> None:
    """Let ``count`` workers waiting on ``key`` go at once."""
    await client.rpush(key, *(["go"] * count))


async def collect(
    workers: list[subprocess.Popen[str]], timeout: float = 60
) -> list[dict[str, Any]]:
    """Every worker's result, read in threads so that the event loop keeps serving."""
    loop = asyncio.get_running_loop()
    return list(
        await asyncio.gather(
            *(loop.run_in_executor(None, worker_result, w, timeout) for w in workers)
        )
    )


def kill_leftovers(workers: list[subprocess.Popen[str]]) -> None:
    """Kill the workers still running (a test failed before they finished)."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


async def run_together(
    admin: Any, specs: list[dict[str, Any]], timeout: float = 60
) -> list[dict[str, Any]]:
    """Start one worker per spec (``id`` its index), let them all go at once through
    ``admin`` (a client of their server), and collect their results."""
    tag = uuid.uuid4().hex[:8]
    ready, go = f"test:{tag}:ready", f"test:{tag}:go"
    workers = [
        spawn_worker({**item, "id": index, "ready_key": ready, "go_key": go})
        for index, item in enumerate(specs)
    ]
    try:
        await wait_until_ready(admin, ready, len(workers), timeout=timeout)
        await release_workers(admin, go, len(workers))
        return await collect(workers, timeout)
    finally:
        kill_leftovers(workers)


# -- intercepting a store's scripts ---------------------------------------------

Around = Callable[[Callable[..., Awaitable[Any]], dict[str, Any]], Awaitable[Any]]


class _Intercepted:
    """Stands in for one script of a store's link: ``around(real, kwargs)`` runs it.

    Keeps the real script's text and SHA, so the link can still (re)load it.
    """

    def __init__(self, real: Any, around: Around) -> None:
        self._real = real
        self._around = around

    @property
    def script(self) -> Any:
        return self._real.script

    @property
    def sha(self) -> Any:
        return self._real.sha

    @sha.setter
    def sha(self, value: Any) -> None:
        self._real.sha = value

    async def __call__(self, **kwargs: Any) -> Any:
        return await self._around(self._real, kwargs)


def intercept_script(store: Any, name: str, around: Around) -> None:
    """Run ``around`` instead of the script ``name`` for every store of ``store``'s link.

    ``around(real, kwargs)`` may await ``real(**kwargs)`` (the script in Redis) and do
    things before or after it: the network delivering an answer late, say.
    """
    scripts: dict[str, Any] = store.link.scripts
    real = scripts[name]
    scripts[name] = _Intercepted(getattr(real, "_real", real), around)
