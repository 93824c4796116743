"""Signals that reach ``xnai-core serve`` (and the demo stack) while it is starting.

SIGHUP's default action ends a process; the command takes it over at the first line of
its entry, before the library, the config or uvicorn load. What comes earlier is the
interpreter's own start-up, which no Python code can shorten (docs/service.md says so).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.service_helpers import REPO, ServiceProcess, command, demo_stack_up, wait_for

pytestmark = pytest.mark.slow

# Moments after the entry's first line, which cover the rest of the start-up: loading the
# config and the library, importing uvicorn, starting the runtime, handing SIGHUP to the
# event loop, serving.
DELAYS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


def test_the_entry_takes_the_signals_over_before_loading_anything_of_the_library() -> None:
    # Everything imported before the entry's first line runs is a window in which SIGHUP
    # would end the process: it must be the entry's own (lazy) packages, nothing more.
    probe = textwrap.dedent(
        """
        import json, signal, sys
        sys.argv = ["xnai-core", "serve"]
        import xnai_core.service.entry as entry
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("xnai_core", "redis", "click", "uvicorn", "starlette", "httpx"))
        print(json.dumps(loaded))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = json.loads(done.stdout)
    assert loaded == [
        "xnai_core",
        "xnai_core._lazy",
        "xnai_core.service",
        "xnai_core.service.entry",
    ]


def _signal_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _spawn_and_wait_for_the_entry(config: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*command(), "serve", "--config", str(config), "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    hup = 1 << (signal.SIGHUP - 1)
    deadline = time.monotonic() + 30
    while True:  # a tight poll: the entry's first line is what we wait for
        try:
            if _signal_mask(process.pid, "SigCgt") & hup:
                return process
        except (OSError, AssertionError):
            pass
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the entry never took SIGHUP over"
        time.sleep(0.0005)


def _config(tmp_path: Path, pid_file: Path) -> Path:
    # A command check that records its pid and sleeps: a process the service starts as
    # soon as it runs, which a stop must leave nothing of.
    config = tmp_path / "s.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [monitor]
            check_interval = 0.2
            [[services]]
            name = "sleeper"
            type = "command"
            command = ["sh", "-c", "echo $$ >> '{pid_file}'; exec sleep 30"]
            timeout = 30
            """
        )
    )
    return config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped yet) is not running.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _pids(pid_file: Path) -> list[int]:
    if not pid_file.exists():
        return []
    return [int(word) for word in pid_file.read_text().split()]


def _kill_survivors(pid_file: Path) -> None:
    for pid in _pids(pid_file):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _end(process: subprocess.Popen[str], pid_file: Path) -> None:
    """Kill ``process`` if it still runs, and whatever it started that still runs."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    _kill_survivors(pid_file)
    if process.stderr is not None:
        process.stderr.close()


@pytest.mark.parametrize("delay", DELAYS)
def test_a_sighup_at_any_moment_of_the_start_up_does_not_end_the_service(
    tmp_path: Path, delay: float
) -> None:
    from tests.conftest import free_port

    pid_file = tmp_path / "pids"
    port = free_port()
    process = _spawn_and_wait_for_the_entry(_config(tmp_path, pid_file), port)
    try:
        time.sleep(delay)
        process.send_signal(signal.SIGHUP)

        def live() -> bool:
            assert process.poll() is None, f"ended by the SIGHUP sent {delay} s in"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ops/livez", timeout=2).is_success
            except httpx.HTTPError:
                return False

        assert wait_for(live, 30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert wait_for(lambda: not any(_alive(pid) for pid in _pids(pid_file)), 5)
    finally:
        _end(process, pid_file)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", DELAYS)
def test_a_stop_at_any_moment_of_the_start_up_leaves_nothing_running(
    tmp_path: Path, delay: float, stop: signal.Signals
) -> None:
    from tests.conftest import free_port

    pid_file = tmp_path / "pids"
    process = _spawn_and_wait_for_the_entry(_config(tmp_path, pid_file), free_port())
    try:
        time.sleep(delay)
        process.send_signal(stop)
        status = process.wait(timeout=5)
        assert process.stderr is not None
        errors = process.stderr.read()
        assert status == 0, errors  # what the service said names why it failed
        assert "Traceback" not in errors
        assert wait_for(lambda: not any(_alive(pid) for pid in _pids(pid_file)), 5)
    finally:
        _end(process, pid_file)


def test_a_stop_once_the_check_runs_leaves_nothing_running(tmp_path: Path) -> None:
    from tests.conftest import free_port

    pid_file = tmp_path / "pids"
    process = ServiceProcess(_config(tmp_path, pid_file), port=free_port()).start()
    try:
        assert wait_for(lambda: bool(_pids(pid_file)), 15)
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0, process.log()
        assert wait_for(lambda: not any(_alive(pid) for pid in _pids(pid_file)), 5)
    finally:
        process.stop()
        _kill_survivors(pid_file)


# -- the demo stack (scripts/serve.sh) ----------------------------------------------------


def _processes_of(stack_dir: Path) -> list[int]:
    """Every process running with this stack directory in its environment: the toy
    services, the service, whatever they started."""
    mark = f"XNAI_DEMO_STACK_DIR={stack_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


# Moments of its start-up: a toy service about to start (its port recorded just before
# it is spawned), then some time after.
MOMENTS = [
    ("rag_api.port", 0.0),
    ("rag_api.port", 0.05),
    ("chainlit_ui.port", 0.0),
    ("chainlit_ui.port", 0.1),
    ("chainlit_ui.port", 0.5),
    ("chainlit_ui.port", 1.5),
]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize(("after", "delay"), MOMENTS)
def test_the_demo_stack_stopped_while_it_starts_leaves_nothing_running(
    tmp_path: Path, after: str, delay: float, stop: signal.Signals
) -> None:
    from tests.conftest import free_port

    stack_dir = tmp_path / "stack"
    config = tmp_path / "stack.toml"
    config.write_text(
        '[monitor]\ncheck_interval = 1\n[[services]]\nname = "api"\n'
        'type = "tcp"\nhost = "127.0.0.1"\nport = 1\n'
    )
    env = {**os.environ, "XNAI_DEMO_STACK_DIR": str(stack_dir), "XNAI_CONTROL_TOKEN": "x" * 24}
    up = demo_stack_up(
        free_port(), config, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = stack_dir / after
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():  # a tight poll: the moment is what the test is about
            assert up.poll() is None
            assert time.monotonic() < deadline, f"{after} never written"
            time.sleep(0.0005)
        time.sleep(delay)
        up.send_signal(stop)
        assert up.wait(timeout=20) == 0
        assert wait_for(lambda: not _processes_of(stack_dir), 10), _processes_of(stack_dir)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        for pid in _processes_of(stack_dir):
            os.kill(pid, signal.SIGKILL)
