"""The actions against real processes and a real Redis: commands, signals, cache clears."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.secret_corpus import SHAPES
from xnai_core.recovery import actions
from xnai_core.recovery.actions import (
    OUTPUT_TAIL_BYTES,
    OutputCapture,
    call_recovery_func,
    clear_cache,
    redact,
    run_command,
    signal_process,
)
from xnai_core.recovery.rule import RecoveryRule

PY = sys.executable


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def test_command_exit_status_and_output_tail() -> None:
    """A clean exit is ok, with its status and the last 4 KB of output (stderr included)."""
    script = "import sys\nfor i in range(2000): print(f'line {i}')\nsys.stderr.write('the end\\n')"
    outcome = await run_command([PY, "-c", script], timeout=10)
    assert (outcome.ok, outcome.exit_code) == (True, 0)
    assert outcome.output_tail is not None
    assert outcome.output_tail.endswith("line 1999\nthe end\n")
    assert len(outcome.output_tail.encode()) <= actions.OUTPUT_TAIL_BYTES


async def test_command_failure_keeps_status_and_output() -> None:
    """A non-zero exit is a failure that says how it exited."""
    outcome = await run_command(
        [PY, "-c", "print('cannot start'); raise SystemExit(3)"], timeout=10
    )
    assert (outcome.ok, outcome.exit_code, outcome.error) == (False, 3, "exited with status 3")
    assert outcome.output_tail == "cannot start\n"
    assert outcome.retryable


async def test_command_output_hides_url_passwords() -> None:
    """Credentials printed by a command do not reach the record."""
    outcome = await run_command([PY, "-c", "print('redis://app:s3cret@cache:6379/0')"], timeout=10)
    assert outcome.output_tail == "redis://app:***@cache:6379/0\n"


async def test_missing_program_is_not_retryable() -> None:
    """A command that does not exist cannot be fixed by trying again."""
    outcome = await run_command(["/nonexistent/xnai-restart"], timeout=10)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error is not None
    assert "FileNotFoundError" in outcome.error


async def test_hanging_command_is_killed_at_its_timeout(tmp_path: Path) -> None:
    """A command that hangs is killed at its timeout, with the child it started."""
    pid_file = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([{PY!r}, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
        """
    )
    started = time.monotonic()
    outcome = await run_command([PY, "-c", script], timeout=0.5)
    elapsed = time.monotonic() - started
    assert (outcome.ok, outcome.timed_out) == (False, True)
    assert outcome.exit_code == -signal.SIGTERM
    assert outcome.output_tail == "started\n"
    assert elapsed < 30  # not the 60 s the command wanted
    grandchild = int(_wait_for_file(pid_file))
    await asyncio.to_thread(_wait_dead, grandchild)
    assert not _alive(grandchild)


async def test_hung_command_whose_grandchild_ignores_sigterm_dies_with_its_group(
    tmp_path: Path,
) -> None:
    """At the timeout the whole process group goes: the command (SIGTERM) and a grandchild
    that ignores SIGTERM (SIGKILL after the grace), not only the command."""
    pid_file = tmp_path / "stubborn.pid"
    stubborn = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(60)\n"
    )
    script = textwrap.dedent(
        f"""
        import os, subprocess, time
        subprocess.Popen([{PY!r}, "-c", {stubborn!r}, {str(pid_file)!r}])
        while not os.path.exists({str(pid_file)!r}):
            time.sleep(0.01)
        print("hung", flush=True)
        time.sleep(60)
        """
    )
    timeout = 1.0
    started = time.monotonic()
    outcome = await run_command([PY, "-c", script], timeout=timeout)
    elapsed = time.monotonic() - started
    assert (outcome.ok, outcome.timed_out) == (False, True)
    assert outcome.output_tail == "hung\n"
    grandchild = int(pid_file.read_text())
    # Killed at the timeout: SIGTERM, then SIGKILL for the group within the grace.
    assert timeout <= elapsed < timeout + actions.KILL_GRACE + 3
    await asyncio.to_thread(_wait_dead, grandchild, 2.0)
    assert not _alive(grandchild)


async def test_command_ignoring_sigterm_gets_sigkill() -> None:
    """A command that ignores SIGTERM is SIGKILLed after the grace."""
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('x', flush=True)\n"
        "time.sleep(60)"
    )
    outcome = await run_command([PY, "-c", script], timeout=0.3)
    assert outcome.timed_out
    assert outcome.exit_code == -signal.SIGKILL


async def test_cancelled_command_is_killed(tmp_path: Path) -> None:
    """Cancelling the action (manager shutdown) kills the command, no orphan left."""
    pid_file = tmp_path / "cmd.pid"
    script = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    )
    task = asyncio.ensure_future(run_command([PY, "-c", script], timeout=30))
    pid = int(await asyncio.to_thread(_wait_for_file, pid_file))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)


async def test_daemon_left_by_a_command_does_not_block_it(tmp_path: Path) -> None:
    """A restart script that leaves a daemon holding its output still returns at its exit."""
    pid_file = tmp_path / "daemon.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        code = "import time; print('daemon up', flush=True); time.sleep(30)"
        d = subprocess.Popen([{PY!r}, "-c", code])
        open({str(pid_file)!r}, "w").write(str(d.pid))
        """
    )
    try:
        started = time.monotonic()
        outcome = await run_command([PY, "-c", script], timeout=20)
        assert outcome.ok
        assert time.monotonic() - started < 15
    finally:
        os.kill(int(_wait_for_file(pid_file)), signal.SIGKILL)


@pytest.fixture
def hup_counter(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A real process that counts SIGHUPs into a file; its pid in a pid file."""
    pid_file = tmp_path / "app.pid"
    count_file = tmp_path / "hups"
    script = textwrap.dedent(
        f"""
        import os, signal, time
        n = 0
        def on_hup(signum, frame):
            global n
            n += 1
            open({str(count_file)!r}, "w").write(str(n))
        signal.signal(signal.SIGHUP, on_hup)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.05)
        """
    )
    proc = subprocess.Popen([PY, "-c", script])
    try:
        _wait_for_file(pid_file)
        yield proc, pid_file, count_file
    finally:
        proc.kill()
        proc.wait()


def test_sighup_reaches_the_process_in_the_pid_file(
    hup_counter: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    """config_reload by pid file delivers SIGHUP to that process."""
    proc, pid_file, count_file = hup_counter
    outcome = signal_process(None, pid_file, signal.SIGHUP)
    assert outcome.ok
    assert outcome.detail == f"sent SIGHUP to pid {proc.pid}"
    assert _wait_for_file(count_file) == "1"


def test_signal_to_a_dead_pid_is_not_retryable(tmp_path: Path) -> None:
    """A pid file naming a dead process: reloading cannot help, a restart might."""
    proc = subprocess.Popen([PY, "-c", "pass"])
    proc.wait()
    outcome = signal_process(proc.pid, None, signal.SIGHUP)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == f"no process with pid {proc.pid}"


@pytest.mark.parametrize("content", ["", "garbage", "1", "-5"])
def test_bad_pid_file_is_a_failure(tmp_path: Path, content: str) -> None:
    """A pid file that does not hold a process id > 1 is never signalled."""
    pid_file = tmp_path / "bad.pid"
    pid_file.write_text(content)
    outcome = signal_process(None, pid_file, signal.SIGHUP)
    assert not outcome.ok
    assert outcome.error is not None
    assert "must hold a process id > 1" in outcome.error


def test_pid_file_with_a_huge_number_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    """A pid too large for the OS (OverflowError in os.kill) is a recorded failure."""
    pid_file = tmp_path / "big.pid"
    pid_file.write_text("99999999999999")
    outcome = signal_process(None, pid_file, signal.SIGHUP)
    assert not outcome.ok
    assert outcome.error is not None
    assert "must hold a process id > 1 and <= 2147483647" in outcome.error


@pytest.mark.parametrize("pid", [2**31, 99999999999999])
def test_signal_to_an_impossible_pid_is_a_failure_not_a_crash(pid: int) -> None:
    """os.kill's OverflowError is an action failure that retrying cannot fix."""
    outcome = signal_process(pid, None, signal.SIGHUP)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == f"OverflowError: pid {pid} is not a valid process id"


async def test_unexpected_exception_in_an_action_is_a_failed_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """perform() turns anything an action raises into a failed, non-retryable outcome."""

    async def explodes(*args: object, **kwargs: object) -> actions.ActionOutcome:
        raise RuntimeError("bug at redis://app:s3cret@cache:6379")

    monkeypatch.setattr(actions, "run_command", explodes)
    rule = RecoveryRule("api", "restart_service", command=["/bin/true"])
    outcome = await actions.perform(rule, "api")
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == "RuntimeError: bug at redis://app:***@cache:6379"
    assert outcome.detail == "command 'true' (1 args) raised unexpectedly"


async def test_command_argument_the_os_refuses_is_a_failure_not_a_crash() -> None:
    """A NUL byte that got past validation (ValueError from exec) cannot start: no retry."""
    outcome = await run_command(["/bin/echo", "a\0b"], timeout=5)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == "ValueError: embedded null byte"


def test_missing_pid_file_is_a_failure(tmp_path: Path) -> None:
    """No pid file, no signal."""
    outcome = signal_process(None, tmp_path / "none.pid", signal.SIGHUP)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("FileNotFoundError")


async def test_clear_cache_on_shared_redis_leaves_other_keys(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Thousands of cache keys go; keys that merely look alike stay."""
    cache = [f"{key_prefix}:cache:{i}" for i in range(5000)]
    keep = [f"{key_prefix}:sessions:{i}" for i in range(200)]
    keep += [f"{key_prefix}:cachex:1", f"{key_prefix}-cache:1", f"x{key_prefix}:cache:1"]
    async with shared_redis.pipeline(transaction=False) as pipe:
        for key in cache + keep:
            pipe.set(key, "v")
        await pipe.execute()
    outcome = await clear_cache(shared_redis, f"{key_prefix}:cache:*", batch_size=500, timeout=30)
    assert (outcome.ok, outcome.keys_deleted) == (True, 5000)
    assert await shared_redis.exists(*cache[:1000]) == 0
    assert await shared_redis.exists(*keep) == len(keep)
    await shared_redis.delete(f"x{key_prefix}:cache:1")  # outside the fixture's cleanup match


async def test_clear_cache_uses_scan_and_batched_unlink_never_keys() -> None:
    """On a server where KEYS does not exist, the clear works: SCAN pages, UNLINK batches."""
    server = PrivateRedis(extra_args=("--rename-command", "KEYS", ""))
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(3000):
                pipe.set(f"c:{i}", "v")
            pipe.set("other", "v")
            await pipe.execute()
        await client.config_resetstat()
        outcome = await clear_cache(client, "c:*", batch_size=400, timeout=30)
        stats = await client.info("commandstats")
        assert outcome.keys_deleted == 3000
        assert await client.dbsize() == 1
        assert "cmdstat_keys" not in stats
        assert stats["cmdstat_unlink"]["calls"] == 8  # ceil(3000 / 400)
        assert stats["cmdstat_scan"]["calls"] >= 8
    finally:
        await client.aclose()
        server.cleanup()


async def test_clear_cache_with_redis_down_is_a_failure(private_redis: PrivateRedis) -> None:
    """A dead Redis makes a failed attempt with the error, not an exception."""
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        private_redis.kill()
        outcome = await clear_cache(client, "c:*", batch_size=100, timeout=5)
        assert (outcome.ok, outcome.keys_deleted) == (False, 0)
        assert outcome.error is not None
        assert "ConnectionError" in outcome.error
    finally:
        await client.aclose()


async def test_clear_cache_stops_at_its_timeout(private_redis: PrivateRedis) -> None:
    """A Redis that stops answering mid-clear ends the action at its timeout."""
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.set("c:1", "v")
        private_redis.pause()
        outcome = await clear_cache(client, "c:*", batch_size=100, timeout=0.3)
        assert (outcome.ok, outcome.timed_out) == (False, True)
    finally:
        private_redis.resume()
        await client.aclose()


async def test_recovery_func_async_sync_false_and_raise() -> None:
    """Async and sync functions run; False and exceptions are failures with a reason."""
    seen: list[str] = []

    async def good(service: str) -> None:
        seen.append(service)

    def sync_good(service: str) -> None:
        seen.append(f"sync {service}")

    def refuses(service: str) -> bool:
        return False

    async def broken(service: str) -> None:
        raise ConnectionError("postgresql://app:s3cret@db/app unreachable")

    assert (await call_recovery_func(good, "db", timeout=5)).ok
    assert (await call_recovery_func(sync_good, "db", timeout=5)).ok
    assert seen == ["db", "sync db"]
    refused = await call_recovery_func(refuses, "db", timeout=5)
    assert (refused.ok, refused.error) == (False, "returned False")
    failed = await call_recovery_func(broken, "db", timeout=5)
    assert failed.error == "ConnectionError: postgresql://app:***@db/app unreachable"


async def test_recovery_func_timeout() -> None:
    """A function still running at its timeout is a failed, timed-out attempt."""

    async def slow(service: str) -> None:
        await asyncio.sleep(30)

    outcome = await call_recovery_func(slow, "db", timeout=0.05)
    assert (outcome.ok, outcome.timed_out) == (False, True)


async def test_database_reconnect_reopens_a_real_pool(postgres_dsn: str) -> None:
    """A reconnect function that closes and reopens an asyncpg pool works as an action."""
    import asyncpg

    pools: list[asyncpg.Pool] = [await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)]

    async def reconnect(service: str) -> None:
        old = pools[-1]
        pools.append(await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2))
        await old.close()

    try:
        outcome = await call_recovery_func(reconnect, "postgres", timeout=10)
        assert outcome.ok
        assert await pools[-1].fetchval("SELECT 1") == 1
        assert pools[0].is_closing()
    finally:
        await pools[-1].close()


def test_redact_keeps_user_and_host() -> None:
    """Only the password goes."""
    assert redact("x postgresql://app:pw@db:5432/app y") == "x postgresql://app:***@db:5432/app y"
    assert redact("no secrets here") == "no secrets here"


async def test_output_tail_cut_inside_a_secret_shows_none_of_it() -> None:
    """The kept tail of a command's output starts wherever the last 4 KB start: inside a
    secret, its name cut off. None of a secret shows (before: the tail began with the
    secret's rest, unmasked, its name lost to the cut)."""
    shown: list[str] = []
    for shape in SHAPES:
        text = shape.text + " done\nnext line\n"
        begin = text.index(shape.secret)
        for cut in sorted({begin, text.index(shape.core), text.index(shape.core) + 2}):
            after = text[cut:]
            payload = ("x" * 70 + "\n") * 80 + text + "y" * (OUTPUT_TAIL_BYTES - len(after))
            assert payload.endswith(after + "y" * (OUTPUT_TAIL_BYTES - len(after)))
            capture = OutputCapture()
            try:
                os.write(capture.write_fd, payload.encode())
                capture.started()
                tail = capture.tail(None)
            finally:
                capture.close()
            assert len(tail.encode()) <= OUTPUT_TAIL_BYTES
            shown.append(f"{shape.name}: {tail}")
    assert [text[:120] for text in shown if "Kx7Secr" in text] == []
