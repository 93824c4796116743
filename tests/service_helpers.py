"""Helpers for the service and CLI tests: the command as a subprocess, loopback HTTP servers."""

from __future__ import annotations

import json
import os
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


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0


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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
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
