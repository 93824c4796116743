"""Helpers for the Redis-backed circuit tests: command counting, a loopback cluster, workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent

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
        server = shutil.which("redis-server") or "redis-server"
        for index in range(self.nodes):
            port, bus = _free_port_pair()
            node_dir = self.workdir / str(index)
            node_dir.mkdir()
            self.ports.append(port)
            self.processes.append(
                subprocess.Popen(
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
                )
            )  # fmt: skip
        for port in self.ports:
            _wait_for_pong(port)
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(_cluster_ok(port) for port in self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("the loopback redis cluster did not reach cluster_state:ok")

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


def _wait_for_pong(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if _send(port, b"PING\r\n").startswith(b"+PONG"):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


def _cluster_ok(port: int) -> bool:
    try:
        return b"cluster_state:ok" in _send(port, b"CLUSTER INFO\r\n")
    except OSError:
        return False


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
    scripts: dict[str, Any] = store._link.scripts
    real = scripts[name]
    scripts[name] = _Intercepted(getattr(real, "_real", real), around)
