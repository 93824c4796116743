"""The actions themselves: run a command, clear a cache, signal a process, call a function.

Each returns an :class:`ActionOutcome` and never raises for an action's own failure;
cancellation still propagates (after a command's process group is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._dispatch import CallbackBusyError, Dispatcher, callback_key, is_async_callable
from .._redact import argv_secrets
from .._redact import redact as redact  # public here since before _redact
from .rule import MAX_PID, CacheClient, RecoveryFunc, RecoveryRule

OUTPUT_TAIL_BYTES = 4096
"""How much of a command's output is kept (Docker and Consul keep 4 KB)."""

_DRAINER = "exec 3<&0; cat <&3 >/dev/null 2>&1 3<&- &"
"""Reads a daemon's leftover output into /dev/null, in the background (stdin is the pipe:
an explicit redirection, since a background job's stdin is otherwise /dev/null)."""

_TAIL_CONTEXT = 1024
"""Bytes of output kept ahead of the tail, so the redaction sees the name of a secret the
tail's cut would split from its value."""

KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL when a command outlives its timeout."""

_SUPERVISOR = str(Path(__file__).with_name("_supervisor.py"))
"""The script that runs each command and ends it at its timeout even if we are gone."""


def longest_run(rule: RecoveryRule) -> float:
    """How long after its start a rule's action may still be running, whatever happens to
    the process that started it: a command's supervisor kills its group by its timeout
    and the kill grace; anything else ends with its process or at its timeout."""
    return rule.timeout + (KILL_GRACE if rule.command is not None else 0.0)


def _check_runnable(program: str) -> None:
    """Raise what ``exec`` would for a program that cannot start (missing, not
    executable), before the supervisor is started to run it."""
    if os.sep in program:
        if not os.path.exists(program):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    elif shutil.which(program) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _supervised(argv: Sequence[str], timeout: float) -> list[str]:
    """``argv`` run by its supervisor (``_supervisor.py``, which leads the process group),
    or as it is where there is no interpreter to run one (an embedded Python)."""
    _check_runnable(argv[0])
    if not sys.executable:
        return list(argv)
    return [
        sys.executable,
        "-I",
        "-S",
        _SUPERVISOR,
        repr(float(timeout)),
        repr(KILL_GRACE),
        "--",
        *argv,
    ]


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


@dataclass(slots=True, eq=False)
class ActionContext:
    """What actions share across attempts: the manager's dispatcher and the pipes of
    daemons that commands left behind."""

    dispatcher: Dispatcher = field(default_factory=lambda: Dispatcher(name="xnai-recovery"))
    drains: set[OutputCapture] = field(default_factory=set)

    def close(self) -> None:
        """Stop draining leftover daemons' output and end the dispatcher's idle threads."""
        for capture in list(self.drains):
            capture.close()
        self.drains.clear()
        self.dispatcher.close()


class _SyncCall:
    """One call of a sync ``recovery_func`` handed to a thread, in the process-wide record
    of such calls not yet returned (:data:`_RUNNING`, by service and function).

    The record belongs to the process, not to a manager: a manager closed while the call
    hangs (a reload rebuilds it) leaves the call running in its thread, and the manager
    that replaces it must not start the function beside it.
    """

    __slots__ = ("abandoned", "key", "started", "started_at")

    def __init__(self, key: tuple[str, object], now: float) -> None:
        self.key = key
        self.started_at = now
        self.started = False  # its thread has begun the call
        self.abandoned = False  # given up before its thread began it: it never runs

    def run(self, call: functools.partial[Any]) -> Any:
        with _RUNNING_LOCK:
            if self.abandoned:
                return None
            self.started = True
        try:
            return call()
        finally:
            self._forget()

    def give_up(self) -> None:
        """The caller stopped waiting: forget the call now if its thread never began it."""
        with _RUNNING_LOCK:
            if not self.started:
                self.abandoned = True
        if self.abandoned:
            self._forget()

    def _forget(self) -> None:
        with _RUNNING_LOCK:
            if _RUNNING.get(self.key) is self:
                del _RUNNING[self.key]


_RUNNING_LOCK = threading.Lock()
_RUNNING: dict[tuple[str, object], _SyncCall] = {}


async def perform(
    rule: RecoveryRule, service_name: str, context: ActionContext | None = None
) -> ActionOutcome:
    """Run what ``rule`` says, bounded by ``rule.timeout``; never raises but to cancel.

    An exception the action did not expect (a bug, or an input the operating system
    refuses) is a failed attempt that is not retried: the manager records it and moves
    on to the next rule or escalates, instead of recovery ending silently.
    """
    try:
        return await _perform(rule, service_name, context or ActionContext())
    except Exception as exc:
        return ActionOutcome(
            ok=False,
            detail=f"{rule.describe()} raised unexpectedly",
            error=redact(f"{type(exc).__name__}: {exc}"),
            retryable=False,
        )


async def _perform(rule: RecoveryRule, service_name: str, context: ActionContext) -> ActionOutcome:
    if rule.command is not None:
        return await run_command(rule.command, timeout=rule.timeout, drains=context.drains)
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
        return await call_recovery_func(
            rule.recovery_func, service_name, timeout=rule.timeout, dispatcher=context.dispatcher
        )
    raise AssertionError(f"rule has nothing to run: {rule!r}")  # RecoveryRule forbids it


class OutputCapture:
    """A command's stdout and stderr through a pipe, never more than ``limit`` bytes kept.

    While the command runs, the last ``limit`` bytes are kept. Once it has exited,
    :meth:`tail` reads what is left; a daemon the command left behind may still hold
    the pipe. Its read end then goes to a drainer process of its own (``cat`` into
    ``/dev/null``, detached, ending when the daemon closes the pipe or exits): what the
    daemon writes is dropped (never stored, so nothing grows), and it neither blocks on
    a full pipe nor dies of SIGPIPE, whether the manager is closed or this process
    exits. Should no drainer start, the pipe is read and dropped on the loop instead,
    until the daemon lets go of it or :meth:`close` (the manager's ``aclose()``).
    """

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self._limit = limit
        self._kept = bytearray()
        self._cut = False  # output was dropped ahead of what is kept
        self._keeping = True
        self._drains: set[OutputCapture] | None = None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.read_fd, self._read)
        self.closed = False

    def started(self) -> None:
        """The command has its copy of the write end: drop ours, so EOF can come."""
        os.close(self.write_fd)
        self.write_fd = -1

    def _read(self) -> None:
        # At most 1 MB per wake-up: a daemon writing flat out must not stall the loop.
        for _ in range(16):
            if self.closed:
                return
            try:
                data = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # every writer is gone
                self.close()
                return
            if self._keeping:
                self._kept += data
                if len(self._kept) > self._limit + _TAIL_CONTEXT:
                    del self._kept[: -(self._limit + _TAIL_CONTEXT)]
                    self._cut = True

    def tail(self, drains: set[OutputCapture] | None, *, hand_off: bool = True) -> str:
        """The last output, read up to now; then drop whatever comes (see the class).

        ``hand_off=False``: no drainer is started (the caller has killed what was left
        holding the pipe, and closes the capture)."""
        self._read()
        self._keeping = False
        kept, self._kept = bytes(self._kept), bytearray()
        if self._cut:  # its first line lost its start: not shown, not even as context
            kept = kept.partition(b"\n")[2]
        text = redact(kept.decode("utf-8", errors="replace"))
        if len(text.encode()) > self._limit:
            text = _last_whole_lines(text, self._limit)
        if not hand_off:
            return text
        if not self.closed and not self._hand_off() and drains is not None:
            self._drains = drains
            drains.add(self)
        return text

    def _hand_off(self) -> bool:
        """Give the read end to a detached ``cat > /dev/null`` (see the class); True if one
        took it. ``sh`` starts it in the background and exits at once, so the drainer is
        not our child: nothing of ours waits for it, and it outlives us."""
        # The flag belongs to the pipe, not to our descriptor: cat must get a blocking one.
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(self.read_fd)
        os.set_blocking(self.read_fd, True)
        ok = False
        try:
            shell = subprocess.Popen(
                ["/bin/sh", "-c", _DRAINER],
                stdin=self.read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            pass
        else:
            try:
                ok = shell.wait(timeout=5) == 0
            except subprocess.TimeoutExpired:
                shell.kill()
                shell.wait()
        if not ok:
            os.set_blocking(self.read_fd, False)
            self._loop.add_reader(self.read_fd, self._read)
            return False
        self.close()
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(self.read_fd)
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        if self._drains is not None:
            self._drains.discard(self)


async def run_command(
    argv: Sequence[str], *, timeout: float, drains: set[OutputCapture] | None = None
) -> ActionOutcome:
    """Run ``argv`` (no shell) in its own process group; kill the group at ``timeout``.

    The group is led by the command's supervisor (``_supervisor.py``), which kills it at
    ``timeout`` too, so the command ends by then even if this process dies meanwhile.

    Output (stdout and stderr) goes to a pipe of ours, of which the last
    :data:`OUTPUT_TAIL_BYTES` are kept. The command's exit is its end: a daemon it left
    behind holding the pipe neither keeps us waiting nor fills a file; what it writes
    later is dropped (:class:`OutputCapture`) while ``drains`` (the manager's) holds it.
    """
    name = os.path.basename(argv[0])
    capture = OutputCapture()
    try:
        proc = await asyncio.create_subprocess_exec(
            *_supervised(argv, timeout),
            stdin=subprocess.DEVNULL,
            stdout=capture.write_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: an argument the OS refuses
        capture.close()
        reason = getattr(exc, "strerror", None) or exc
        return ActionOutcome(
            ok=False,
            detail=f"command {name!r} could not start",
            error=redact(f"{type(exc).__name__}: {reason}", argv_secrets(argv)),
            retryable=False,
        )
    except BaseException:
        capture.close()
        raise
    capture.started()
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        timed_out = True
        code = await _kill_group(proc)
    except BaseException:  # cancelled: kill the group, drop the pipe, pass it on
        await asyncio.shield(_kill_group(proc))
        capture.close()
        raise
    # A program may print its own arguments: the ones that are secrets go too.
    tail = redact(capture.tail(drains), argv_secrets(argv))
    if timed_out:
        detail = f"command {name!r} killed after its {timeout:g}s timeout"
        return _timed_out(detail, timeout, exit_code=code, output_tail=tail)
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


def _last_whole_lines(text: str, limit: int) -> str:
    """The end of ``text`` within ``limit`` bytes, from a line's start (else a word's): a
    secret whose name the cut would drop is not shown in part."""
    end = text.encode()[-limit:].decode("utf-8", errors="ignore")
    for sep in ("\n", " "):
        _, found, rest = end.partition(sep)
        if found:
            return rest
    return ""


def _timed_out(
    detail: str,
    timeout: float,
    note: str = "",
    *,
    exit_code: int | None = None,
    output_tail: str | None = None,
    keys_deleted: int | None = None,
) -> ActionOutcome:
    """An action cut off at its ``timeout``; ``note`` adds to the error what it got done."""
    return ActionOutcome(
        ok=False,
        detail=detail,
        error=f"timed out after {timeout:g}s{note}",
        exit_code=exit_code,
        output_tail=output_tail,
        timed_out=True,
        keys_deleted=keys_deleted,
    )


async def _kill_group(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the command's process group, SIGKILL it after KILL_GRACE; return the status."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE):
            await proc.wait()
    except TimeoutError:
        pass
    # Children the command started share its group and may outlive it: kill them too.
    signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``, if it is still there and ours to signal."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
        detail = f"cache clear of {pattern!r} stopped at its {timeout:g}s timeout"
        return _timed_out(detail, timeout, f" ({deleted} keys deleted)", keys_deleted=deleted)
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
        why = f"no process with pid {target}"
    except PermissionError:
        why = f"not permitted to signal pid {target}"
    except (OverflowError, ValueError) as exc:  # a pid the OS cannot even represent
        why = f"{type(exc).__name__}: pid {target} is not a valid process id"
    else:
        return ActionOutcome(ok=True, detail=f"sent {sig.name} to pid {target}")
    # Sending it again cannot help: no retry.
    return ActionOutcome(ok=False, detail=f"{sig.name} not sent", error=why, retryable=False)


_DEFAULT_DISPATCHER: Dispatcher | None = None


async def call_recovery_func(
    func: RecoveryFunc,
    service_name: str,
    *,
    timeout: float,
    dispatcher: Dispatcher | None = None,
) -> ActionOutcome:
    """Call ``func(service_name)``: awaited if async, on a dispatcher thread if sync.

    A thread cannot be cancelled: at ``timeout`` we stop waiting and it runs on. Until
    it returns, the same function is not started again for the same service, by any
    manager of this process: the attempt fails at once, and says since when the earlier
    call has been stuck.
    """
    global _DEFAULT_DISPATCHER
    if dispatcher is None:
        if _DEFAULT_DISPATCHER is None:
            _DEFAULT_DISPATCHER = Dispatcher(name="xnai-recovery")
        dispatcher = _DEFAULT_DISPATCHER
    name = getattr(func, "__qualname__", type(func).__name__)
    bound = functools.partial(func, service_name)
    sync: _SyncCall | None = None
    if not is_async_callable(func):
        key = (service_name, callback_key(func))
        now = time.monotonic()
        with _RUNNING_LOCK:
            earlier = _RUNNING.get(key)
            if earlier is None:
                sync = _RUNNING[key] = _SyncCall(key, now)
        if earlier is not None:
            return _still_running(name, now - earlier.started_at)
    try:
        if sync is None:
            result = await dispatcher.call(bound, timeout=timeout)
        else:
            result = await dispatcher.call(sync.run, bound, timeout=timeout)
    except CallbackBusyError:  # the dispatcher's own guard (same function object)
        return _still_running(name, 0.0)
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
    finally:
        if sync is not None:
            sync.give_up()
    if result is False:
        return ActionOutcome(
            ok=False, detail=f"recovery_func {name} returned False", error="returned False"
        )
    return ActionOutcome(ok=True, detail=f"recovery_func {name} returned")


def _still_running(name: str, stuck_for: float) -> ActionOutcome:
    return ActionOutcome(
        ok=False,
        detail=f"recovery_func {name} not started: its earlier call is still running",
        error=f"earlier call still running after {stuck_for:.1f}s (stuck; not run twice)",
    )
