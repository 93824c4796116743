"""The actions themselves: run a command, clear a cache, signal a process, call a function.

Each returns an :class:`ActionOutcome` and never raises for an action's own failure;
cancellation still propagates (after a command's process group is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .._redact import redact as redact  # public here since before _redact
from .rule import MAX_PID, CacheClient, RecoveryFunc, RecoveryRule

OUTPUT_TAIL_BYTES = 4096
"""How much of a command's output is kept (Docker and Consul keep 4 KB)."""

KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL when a command outlives its timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionOutcome:
    """What one action did. ``ok`` means it ran cleanly, not that the service is healthy.

    ``retryable=False`` marks failures that repeating the same rule cannot fix (a
    command that does not exist, a pid with no process): the manager moves on.
    """

    ok: bool
    detail: str
    error: str | None = None
    retryable: bool = True
    exit_code: int | None = None
    output_tail: str | None = None
    timed_out: bool = False
    keys_deleted: int | None = None


async def perform(rule: RecoveryRule, service_name: str) -> ActionOutcome:
    """Run what ``rule`` says, bounded by ``rule.timeout``; never raises but to cancel.

    An exception the action did not expect (a bug, or an input the operating system
    refuses) is a failed attempt that is not retried: the manager records it and moves
    on to the next rule or escalates, instead of recovery ending silently.
    """
    try:
        return await _perform(rule, service_name)
    except Exception as exc:
        return ActionOutcome(
            ok=False,
            detail=f"{rule.describe()} raised unexpectedly",
            error=redact(f"{type(exc).__name__}: {exc}"),
            retryable=False,
        )


async def _perform(rule: RecoveryRule, service_name: str) -> ActionOutcome:
    if rule.command is not None:
        return await run_command(rule.command, timeout=rule.timeout)
    if rule.redis_client is not None and rule.cache_pattern is not None:
        return await clear_cache(
            rule.redis_client,
            rule.cache_pattern,
            batch_size=rule.cache_batch_size,
            timeout=rule.timeout,
        )
    if rule.pid is not None or rule.pid_file is not None:
        return signal_process(rule.pid, rule.pid_file, signal.Signals(rule.signal))
    if rule.recovery_func is not None:
        return await call_recovery_func(rule.recovery_func, service_name, timeout=rule.timeout)
    raise AssertionError(f"rule has nothing to run: {rule!r}")  # RecoveryRule forbids it


async def run_command(argv: Sequence[str], *, timeout: float) -> ActionOutcome:
    """Run ``argv`` (no shell) in its own process group; kill the group at ``timeout``.

    Output goes to an unnamed temporary file rather than a pipe: a restart script
    that leaves a daemon behind must not block us on a pipe the daemon still holds,
    nor have the daemon die of SIGPIPE when we stop reading.
    """
    name = os.path.basename(argv[0])
    with tempfile.TemporaryFile() as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: an argument the OS refuses
            reason = getattr(exc, "strerror", None) or exc
            return ActionOutcome(
                ok=False,
                detail=f"command {name!r} could not start",
                error=redact(f"{type(exc).__name__}: {reason}"),
                retryable=False,
            )
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            timed_out = True
            code = await _kill_group(proc)
        except asyncio.CancelledError:
            await asyncio.shield(_kill_group(proc))
            raise
        tail = _tail(out)
    if timed_out:
        return ActionOutcome(
            ok=False,
            detail=f"command {name!r} killed after its {timeout:g}s timeout",
            error=f"timed out after {timeout:g}s",
            exit_code=code,
            output_tail=tail,
            timed_out=True,
        )
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return ActionOutcome(
            ok=False,
            detail=f"command {name!r} {how}",
            error=how,
            exit_code=code,
            output_tail=tail,
        )
    return ActionOutcome(
        ok=True, detail=f"command {name!r} exited with status 0", exit_code=0, output_tail=tail
    )


async def _kill_group(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the command's process group, SIGKILL it after KILL_GRACE; return the status."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE):
            await proc.wait()
    except TimeoutError:
        pass
    # Children the command started share its group and may outlive it: kill them too.
    _signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(out: IO[bytes]) -> str:
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return redact(out.read().decode("utf-8", errors="replace"))


async def clear_cache(
    client: CacheClient, pattern: str, *, batch_size: int, timeout: float
) -> ActionOutcome:
    """Delete the keys matching ``pattern``: SCAN pages, UNLINK in batches; never KEYS."""
    deleted = 0
    try:
        async with asyncio.timeout(timeout):
            batch: list[str | bytes] = []
            async for key in client.scan_iter(match=pattern, count=batch_size):
                batch.append(key)
                if len(batch) >= batch_size:
                    deleted += int(await client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(await client.unlink(*batch))
    except TimeoutError:
        return ActionOutcome(
            ok=False,
            detail=f"cache clear of {pattern!r} stopped at its {timeout:g}s timeout",
            error=f"timed out after {timeout:g}s ({deleted} keys deleted)",
            timed_out=True,
            keys_deleted=deleted,
        )
    except Exception as exc:  # a RedisError or a client's own: an action failure, recorded
        return ActionOutcome(
            ok=False,
            detail=f"cache clear of {pattern!r} failed",
            error=redact(f"{type(exc).__name__}: {exc}"),
            keys_deleted=deleted,
        )
    return ActionOutcome(
        ok=True, detail=f"deleted {deleted} keys matching {pattern!r}", keys_deleted=deleted
    )


def read_pid_file(path: Path) -> int:
    """The pid in ``path``; ValueError unless it is a plain process id in 2..MAX_PID."""
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not text.isdigit() or not 2 <= int(text) <= MAX_PID:
        raise ValueError(
            f"pid file {os.fspath(path)!r} must hold a process id > 1 and <= {MAX_PID}: "
            f"{text[:20]!r}"
        )
    return int(text)


def signal_process(
    pid: int | None, pid_file: str | os.PathLike[str] | None, sig: signal.Signals
) -> ActionOutcome:
    """Send ``sig`` to ``pid`` or to the pid written in ``pid_file``."""
    try:
        target = pid if pid is not None else read_pid_file(Path(pid_file or ""))
    except (OSError, ValueError) as exc:
        return ActionOutcome(
            ok=False, detail="no pid to signal", error=redact(f"{type(exc).__name__}: {exc}")
        )
    try:
        os.kill(target, sig)
    except ProcessLookupError:
        return ActionOutcome(
            ok=False,
            detail=f"{sig.name} not sent",
            error=f"no process with pid {target}",
            retryable=False,
        )
    except PermissionError:
        return ActionOutcome(
            ok=False,
            detail=f"{sig.name} not sent",
            error=f"not permitted to signal pid {target}",
            retryable=False,
        )
    except (OverflowError, ValueError) as exc:  # a pid the OS cannot even represent
        return ActionOutcome(
            ok=False,
            detail=f"{sig.name} not sent",
            error=f"{type(exc).__name__}: pid {target} is not a valid process id",
            retryable=False,
        )
    return ActionOutcome(ok=True, detail=f"sent {sig.name} to pid {target}")


async def call_recovery_func(
    func: RecoveryFunc, service_name: str, *, timeout: float
) -> ActionOutcome:
    """Call ``func(service_name)``; a sync function runs in a worker thread.

    A thread cannot be cancelled: on timeout we stop waiting for it, it runs on.
    """
    name = getattr(func, "__qualname__", type(func).__name__)
    try:
        async with asyncio.timeout(timeout):
            if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
                getattr(func, "__call__", None)  # noqa: B004 - an object with async __call__
            ):
                result = await func(service_name)  # type: ignore[misc]
            else:
                result = await asyncio.to_thread(func, service_name)
                if inspect.isawaitable(result):
                    result = await result
    except TimeoutError:
        return ActionOutcome(
            ok=False,
            detail=f"recovery_func {name} still running at its {timeout:g}s timeout",
            error=f"timed out after {timeout:g}s",
            timed_out=True,
        )
    except Exception as exc:  # the user's function failed: that is the attempt's result
        return ActionOutcome(
            ok=False,
            detail=f"recovery_func {name} raised",
            error=redact(f"{type(exc).__name__}: {exc}"),
        )
    if result is False:
        return ActionOutcome(
            ok=False, detail=f"recovery_func {name} returned False", error="returned False"
        )
    return ActionOutcome(ok=True, detail=f"recovery_func {name} returned")
