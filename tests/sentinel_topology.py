"""A private Redis Sentinel topology on loopback: one master, one replica, three sentinels.

Every server is a ``redis-server`` of the test's own on a free port (the sentinels run as
``redis-server <conf> --sentinel``), without persistence, and is killed and removed by
:meth:`SentinelTopology.stop`. The replica follows the master through :class:`Relay`, a
loopback TCP relay the test can freeze: writes the master made while it was frozen never
reach the replica, which is how asynchronous replication loses the last writes when the
master dies. Failover settings are short (``down-after-milliseconds`` 1000,
``failover-timeout`` 3000), so a failover completes in a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from tests.conftest import PrivateRedis, free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Relay:
    """Forwards one port to another, both ways, on threads; :meth:`freeze` stops the
    upstream's bytes from reaching the client (they stay with the relay) without closing
    anything, :meth:`close` ends it all."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def freeze(self) -> None:
        self._frozen.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, frozen in (
                (client, upstream, None),
                (upstream, client, self._frozen),
            ):
                threading.Thread(
                    target=self._pump, args=(source, sink, frozen), daemon=True, name="relay"
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, frozen: Any) -> None:
        try:
            while not self._closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if frozen is not None and frozen.is_set():
                    continue  # held back: the replica never sees it
                sink.sendall(data)
        except OSError:
            pass
        if frozen is None or not frozen.is_set():
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@dataclass
class SentinelTopology:
    """One master, one replica (through a :class:`Relay`) and three sentinels."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xnai-sentinel-")))
    master: PrivateRedis = field(init=False)
    replica: PrivateRedis = field(init=False)
    relay: Relay = field(init=False)
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    made: list[Any] = field(default_factory=list)

    def start(self) -> None:
        self.master = PrivateRedis(
            extra_args=("--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0")
        )
        self.master.start()
        self.relay = Relay(self.master.port)
        self.replica = PrivateRedis(
            extra_args=(
                "--replicaof", "127.0.0.1", str(self.relay.port),
                "--enable-debug-command", "yes",
                "--repl-diskless-load", "swapdb",
            )
        )  # fmt: skip
        self.replica.start()
        self._wait(lambda: self.info(self.replica.port).get("master_link_status") == "up")
        server = shutil.which("redis-server") or "redis-server"
        self.sentinel_ports = [free_port() for _ in range(3)]
        ids = [os.urandom(20).hex() for _ in range(3)]
        for index, port in enumerate(self.sentinel_ports):
            # Each sentinel is told of the replica and of its peers up front (their ids
            # fixed here), so the topology is ready without waiting for hello messages.
            peers = "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[n]}\n"
                for n, other in enumerate(self.sentinel_ports)
                if n != index
            )
            conf = self.workdir / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.workdir}\n"
                f"sentinel myid {ids[index]}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}\n" + peers
            )
            self.sentinels.append(
                subprocess.Popen(
                    [server, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Ready: every sentinel knows the replica and the two other sentinels.
        self._wait(self._sentinels_agree, timeout=30)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = self.sentinel_master(port)
            if state is None:
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def sentinel_master(self, port: int) -> dict[str, str] | None:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                found: dict[str, str] = client.sentinel_master(SERVICE)
                return found
        except redis.RedisError:
            return None

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels say."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            if address:
                seen[int(address[1])] = seen.get(int(address[1]), 0) + 1
        for master, votes in seen.items():
            if votes >= 2:
                return master
        return None

    def wait_for_master(self, port: int, timeout: float = 30) -> None:
        """Wait until the sentinels name ``port`` the master and it says it is one."""
        self._wait(
            lambda: self.master_port() == port and self.info(port).get("role") == "master",
            timeout=timeout,
        )

    @staticmethod
    def info(port: int) -> dict[str, Any]:
        """``INFO replication`` of the server on ``port`` ({} if it does not answer)."""
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                found: dict[str, Any] = client.info("replication")
                return found
        except redis.RedisError:
            return {}

    @staticmethod
    def _wait(predicate: Any, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel topology did not reach the expected state")
            time.sleep(0.05)

    def sentinel(self, **kwargs: Any) -> Sentinel:
        """A Sentinel client over the three sentinels, as users build it (closed by
        :meth:`aclose_clients`)."""
        found = Sentinel([("127.0.0.1", port) for port in self.sentinel_ports], **kwargs)
        self.made.append(found)
        return found

    def master_client(self, **kwargs: Any) -> aioredis.Redis:
        """``Sentinel([...]).master_for("mymaster")``: what a user hands the library."""
        client: aioredis.Redis = self.sentinel().master_for(SERVICE, **kwargs)
        self.made.append(client)
        return client

    async def aclose_clients(self) -> None:
        """Close every client made here, and the Sentinel clients' own connections."""
        for made in self.made:
            if isinstance(made, Sentinel):
                for client in made.sentinels:
                    await client.aclose()
            else:
                await made.aclose()
        self.made.clear()

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.relay.close()
        self.replica.cleanup()
        self.master.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)
