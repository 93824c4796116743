"""A small stack on loopback for the xnai-core service to watch: a toy RAG API and a toy UI.

Standard library only, so the service's restart command can run it with any Python 3.

- ``python -m examples.demo_stack up``: the README's main job. Starts the toy RAG API
  (port 8000, or a free one if taken) and the toy UI (8001, or a free one), then
  ``xnai-core serve --config examples/stack.toml`` watching them (its health URLs set
  through ``XNAI_RAG_API_HEALTH_URL`` and ``XNAI_CHAINLIT_UI_HEALTH_URL``), and prints
  the dashboard's URL. Ctrl-C stops everything it started.
- ``python -m examples.demo_stack restart NAME``: the restart command of
  ``examples/stack.toml``: (re)starts NAME on its recorded port, detached, and returns
  once it answers.
- ``python -m examples.demo_stack kill NAME``: kills NAME (SIGKILL), to watch the
  service see it fall and bring it back.

State (ports, pids, a restart log) lives in ``$XNAI_DEMO_STACK_DIR``
(default: a ``xnai-demo-stack`` folder in the temp directory).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICES = {"rag_api": 8000, "chainlit_ui": 8001}
SERVICE_PORT = 9108


def state_dir() -> Path:
    folder = Path(
        os.environ.get("XNAI_DEMO_STACK_DIR") or Path(tempfile.gettempdir()) / "xnai-demo-stack"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the toy services ---------------------------------------------------------------------

_ANSWERS = {
    "circuit": "A circuit breaker stops calling a failing dependency and fails fast instead.",
    "redis": "Redis holds the shared circuit state, so every worker sees a trip at once.",
}


class _RagApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/health":
            self._json(200, {"status": "ok", "service": "rag_api"})
        elif url.path == "/query":
            question = urllib.parse.parse_qs(url.query).get("q", [""])[0]
            answer = next(
                (text for word, text in _ANSWERS.items() if word in question.lower()),
                "I am a toy RAG API; ask me about circuits or redis.",
            )
            self._json(200, {"question": question, "answer": answer})
        else:
            self._json(404, {"error": "not found"})

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


class _Ui(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = b"<!doctype html><title>toy chat UI</title><h1>Toy chat UI</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve_one(name: str, port: int) -> None:
    handler = _RagApi if name == "rag_api" else _Ui
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    (state_dir() / f"{name}.pid").write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


# -- managing them ------------------------------------------------------------------------


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _free(port: int) -> int:
    """``port`` if nothing listens there, else a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid(name: str) -> int | None:
    try:
        return int((state_dir() / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def start(name: str, port: int, stopping: list[int] | None = None) -> None:
    """Start NAME on ``port`` in its own session (it outlives whoever started it); returns
    once it answers, or as soon as ``stopping`` holds a signal."""
    folder = state_dir()
    (folder / f"{name}.port").write_text(str(port))
    log = open(folder / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
    with log:
        child = subprocess.Popen(
            [sys.executable, "-m", "examples.demo_stack", "serve-one", name, str(port)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    # Recorded at once (the child writes it again once it serves), so a stop that comes
    # while it starts finds it to kill.
    (folder / f"{name}.pid").write_text(str(child.pid))
    deadline = time.monotonic() + 10
    while not _answers(port) and not stopping:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start on port {port}")
        time.sleep(0.05)


def kill(name: str) -> None:
    pid = _pid(name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def restart(name: str) -> None:
    port = int((state_dir() / f"{name}.port").read_text())
    kill(name)
    deadline = time.monotonic() + 5
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(state_dir() / f"{name}.restarts", "a") as restarts:
        restarts.write(f"{time.time():.3f} {os.getpid()}\n")
    start(name, port)
    print(f"{name} restarted on port {port}")


def up(service_port: int, config: Path) -> int:
    """Start the stack and the service; stop everything on Ctrl-C (or SIGTERM), also
    one that comes while they start."""
    stopping: list[int] = []
    service: list[subprocess.Popen[bytes]] = []
    started: list[str] = []

    def on_stop(signum: int, frame: object) -> None:
        # Noted, never raised: a stop between starting a child and recording its pid
        # must not lose the child. The steps below look at it.
        stopping.append(signum)
        for process in service:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    try:
        ports = {name: _free(port) for name, port in SERVICES.items()}
        for name, port in ports.items():
            if stopping:
                return 0
            started.append(name)  # before: a pid file from an earlier run is not ours
            start(name, port, stopping)
        if stopping:
            return 0
        env = dict(os.environ)
        env["XNAI_RAG_API_HEALTH_URL"] = f"http://127.0.0.1:{ports['rag_api']}/health"
        env["XNAI_CHAINLIT_UI_HEALTH_URL"] = f"http://127.0.0.1:{ports['chainlit_ui']}/"
        env.setdefault("XNAI_DEMO_STACK_DIR", str(state_dir()))
        if not env.get("XNAI_CONTROL_TOKEN"):
            env["XNAI_CONTROL_TOKEN"] = secrets.token_urlsafe(18)
            print(
                f"control token for the dashboard's buttons (this run only): "
                f"{env['XNAI_CONTROL_TOKEN']}"
            )
        port = _free(service_port)
        print(
            f"demo stack: toy RAG API on http://127.0.0.1:{ports['rag_api']}/ , "
            f"toy UI on http://127.0.0.1:{ports['chainlit_ui']}/",
            flush=True,
        )
        print(
            "try: python3 -m examples.demo_stack kill rag_api   (the service restarts it)",
            flush=True,
        )
        command = [
            str(Path(sys.executable).parent / "xnai-core"),
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ]
        print(f"dashboard: http://127.0.0.1:{port}/   (Ctrl-C stops everything)", flush=True)
        service.append(subprocess.Popen(command, cwd=REPO, env=env))
        if stopping:  # came while it was being started: on_stop did not see it yet
            service[0].send_signal(signal.SIGTERM)
        return service[0].wait()
    finally:
        for name in started:  # by its pid file: a restart by the service rewrote it
            kill(name)
        print("demo stack stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.demo_stack")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("up", help="start the stack and xnai-core serve")
    run.add_argument("--port", type=int, default=SERVICE_PORT, help="the dashboard's port")
    run.add_argument(
        "--config", type=Path, default=REPO / "examples" / "stack.toml", help="the config file"
    )
    one = commands.add_parser("serve-one")
    one.add_argument("name", choices=sorted(SERVICES))
    one.add_argument("port", type=int)
    for verb in ("restart", "kill", "start"):
        sub = commands.add_parser(verb)
        sub.add_argument("name", choices=sorted(SERVICES))
        if verb == "start":
            sub.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "up":
        sys.exit(up(args.port, args.config))
    elif args.command == "serve-one":
        serve_one(args.name, args.port)
    elif args.command == "restart":
        restart(args.name)
    elif args.command == "kill":
        kill(args.name)
    else:
        start(args.name, args.port)


if __name__ == "__main__":
    main()
