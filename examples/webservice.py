"""A real HTTP service in a child process for the demo: started detached, killed for real.

``python examples/webservice.py serve PORT PID_FILE`` serves ``/health``;
``python examples/webservice.py start PORT PID_FILE`` starts that server in its own
session and exits at once, as a supervisor's start script would: it is the demo's
restart command.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "pass"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(port: int, pid_file: str) -> None:
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    server.serve_forever()


def start(port: int, pid_file: str) -> None:
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve", str(port), pid_file],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    command, port_text, pid_path = sys.argv[1:4]
    (serve if command == "serve" else start)(int(port_text), pid_path)
