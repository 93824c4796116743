"""Health checkers built from the config's services, and the two kinds the library lacks.

``http``, ``redis`` and ``postgres`` are the library's own checkers; ``tcp`` (a connect)
and ``command`` (an argument list, exit 0 is healthy) are defined here on
:class:`~xnai_core.HealthChecker`, so they get its timing, timeout and masking.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping

from .. import (
    HealthChecker,
    HealthCheckError,
    HTTPHealthChecker,
    RedisHealthChecker,
)
from .._redact import argv_secrets, redact, redact_argv
from ..recovery.actions import OutputCapture, signal_group
from .config import ServiceSpec

__all__ = ["CommandHealthChecker", "TCPHealthChecker", "build_checker"]

_OUTPUT_TAIL = 300


class TCPHealthChecker(HealthChecker):
    """Healthy when a TCP connection to ``host:port`` opens within the timeout."""

    def __init__(
        self, name: str, host: str, port: int, *, timeout: float = 5.0, **kw: float | None
    ):
        super().__init__(name, timeout=timeout, **kw)
        self.host = host
        self.port = port

    def describe(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port}

    async def probe(self) -> Mapping[str, object]:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HealthCheckError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return {}


class CommandHealthChecker(HealthChecker):
    """Runs an argument list (no shell); exit status 0 is healthy.

    The command runs in its own process group, killed whole when the check times out
    or is cancelled, so no check leaves a process behind. Its exit is its answer: what
    it started and left running (a daemon holding its output) is killed then, not
    waited for. The tail of its output (at most 300 bytes are kept, however much it
    prints) is the error text of a failed check, masked.
    """

    def __init__(
        self, name: str, command: tuple[str, ...], *, timeout: float = 5.0, **kw: float | None
    ):
        super().__init__(name, timeout=timeout, **kw)
        self.command = command

    def describe(self) -> dict[str, object]:
        return {"command": " ".join(redact_argv(self.command))}

    async def probe(self) -> Mapping[str, object]:
        capture = OutputCapture(limit=_OUTPUT_TAIL)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=capture.write_fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            capture.close()
            raise HealthCheckError(f"cannot run {self.command[0]!r}: {exc.strerror}") from None
        except BaseException:
            capture.close()
            raise
        capture.started()
        try:
            code = await process.wait()
        except BaseException:
            signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(process.wait())
            capture.close()
            raise
        signal_group(process.pid, signal.SIGKILL)  # what it left behind, holding the pipe or not
        try:
            # A program may print its own arguments: the ones that are secrets go too.
            tail = redact(capture.tail(None, hand_off=False), argv_secrets(self.command)).strip()
        finally:
            capture.close()
        if code != 0:
            raise HealthCheckError(f"exit status {code}" + (f": {tail}" if tail else ""))
        return {"exit_status": 0}


def build_checker(spec: ServiceSpec) -> HealthChecker:
    """The checker for one configured service."""
    common: dict[str, float | None] = {"degraded_threshold": spec.degraded_threshold}
    if spec.type == "http":
        assert spec.url is not None
        return HTTPHealthChecker(
            spec.name,
            spec.url,
            method=spec.method,
            expected_status=spec.expected_status or range(200, 400),
            timeout=spec.timeout,
            verify=spec.verify,
            degraded_threshold=spec.degraded_threshold,
        )
    if spec.type == "tcp":
        assert spec.host is not None
        assert spec.port is not None
        return TCPHealthChecker(spec.name, spec.host, spec.port, timeout=spec.timeout, **common)
    if spec.type == "redis":
        return RedisHealthChecker(
            spec.name,
            url=spec.url,
            timeout=spec.timeout,
            degraded_threshold=spec.degraded_threshold,
        )
    if spec.type == "postgres":
        assert spec.dsn is not None
        # Imported here: without asyncpg only a config with a postgres service is refused
        # (an ImportError naming the driver), not every command.
        try:
            from .. import DatabaseHealthChecker
        except ImportError as exc:
            raise ImportError(
                f"postgres checks need asyncpg, which cannot be loaded: {exc}"
            ) from None

        return DatabaseHealthChecker(
            spec.name, spec.dsn, timeout=spec.timeout, degraded_threshold=spec.degraded_threshold
        )
    assert spec.command is not None
    return CommandHealthChecker(spec.name, spec.command, timeout=spec.timeout, **common)
