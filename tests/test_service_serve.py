"""``xnai-core serve`` as a subprocess: serving, SIGHUP reloads, SIGTERM, two replicas."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PrivateRedis, free_port
from tests.service_helpers import (
    ServiceProcess,
    demo_stack,
    drop_shared_keys,
    http_service,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.slow

TOKEN = "serve-test-token-0123456789"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def http(name: str, url: str, extra: str = "") -> str:
    return f'\n[[services]]\nname = "{name}"\ntype = "http"\nurl = "{url}"\ntimeout = 1\n{extra}\n'


MONITOR = """
control_token_env = "XNAI_TEST_SERVE_TOKEN"
[monitor]
check_interval = 0.3
failure_threshold = 1
success_threshold = 1
"""


def circuits_config(path: Path, prefix: str, name: str) -> Path:
    """A config of the shared Redis's circuit ``name`` (keys under ``prefix``) and MONITOR."""
    from tests.conftest import SHARED_REDIS_URL

    return write(
        path,
        f'redis_url = "{SHARED_REDIS_URL}"\n'
        + MONITOR
        + f'[circuits]\nkey_prefix = "{prefix}"\nnames = ["{name}"]\n',
    )


@pytest.fixture
def service() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def launch(
    started: list[ServiceProcess], config: Path, env: dict[str, str] | None = None
) -> ServiceProcess:
    process = ServiceProcess(config, env={"XNAI_TEST_SERVE_TOKEN": TOKEN, **(env or {})})
    started.append(process)
    return process.start()


def test_serve_serves_the_dashboard_state_and_probes_and_logs_one_url(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    with http_service() as (url, _):
        config = write(tmp_path / "s.toml", MONITOR + http("api", url))
        proc = launch(service, config)
        assert sum("serving http://" in line for line in proc.lines) == 1
        page = proc.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert proc.get("/dashboard.js").status_code == 200
        assert proc.get("/dashboard.css").status_code == 200
        assert wait_for(lambda: proc.service("api")["status"] == "healthy", 15)
        state = proc.state()
        assert state["controls"] is False  # no redis_url: no shared circuits to steer
        assert state["circuits"] is None
        assert proc.get("/ops/livez").status_code == 200
        assert proc.get("/ops/readyz").status_code == 200
        assert proc.get("/ops/health").json()["services"]["api"]["status"] == "healthy"
        metrics = proc.get("/ops/metrics")
        assert metrics.status_code == 200
        assert "# TYPE xnai_health_status gauge" in metrics.text
        assert proc.get("/api/state").headers["cache-control"] == "no-store"


def test_sighup_keeps_unchanged_services_and_refuses_a_bad_config(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    with http_service() as (url, _):
        config = tmp_path / "s.toml"
        kept = http("kept", url) + http(
            "down",
            dead,
            '[[services.recovery]]\naction = "manual_intervention"\nfailure_threshold = 1\n',
        )
        write(config, MONITOR + kept + http("dropped", url))
        proc = launch(service, config)
        assert wait_for(lambda: proc.service("kept")["total_checks"] >= 3, 15)
        assert wait_for(lambda: bool(proc.service("down")["recovery"]["escalated"]), 15)
        assert wait_for(lambda: any(a["service"] == "down" for a in proc.state()["alerts"]), 15)
        checks_before = proc.service("kept")["total_checks"]

        write(config, MONITOR + kept + http("added", url))
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: proc.logged("config reloaded"), 15), proc.log()
        state = proc.state()
        names = [s["name"] for s in state["services"]]
        assert names == ["kept", "down", "added"]
        # Unchanged services kept their history, their active alert and their latch.
        assert proc.service("kept")["total_checks"] >= checks_before
        assert proc.service("down")["recovery"]["escalated"] is True
        assert any(a["service"] == "down" for a in state["alerts"])
        assert state["reloads"] == 1

        write(config, MONITOR + kept + http("added", url, "timout = 3"))
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: proc.logged("config reload refused"), 15), proc.log()
        assert proc.logged("services[2].timout: unknown key (did you mean 'timeout'?)")
        state = proc.state()
        assert [s["name"] for s in state["services"]] == ["kept", "down", "added"]
        assert state["reloads"] == 1
        checks = proc.service("kept")["total_checks"]
        assert wait_for(lambda: proc.service("kept")["total_checks"] > checks, 15)


def test_a_reload_that_adds_a_critical_service_makes_readyz_wait_for_it(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    """The ops app follows the critical list of the config in force, not the first one."""
    dead = f"http://127.0.0.1:{free_port()}/"
    with http_service() as (url, _):
        config = write(tmp_path / "s.toml", MONITOR + http("api", url))
        proc = launch(service, config)
        assert wait_for(lambda: proc.get("/ops/readyz").status_code == 200, 15)
        write(config, MONITOR + http("api", url) + http("db", dead))
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: proc.logged("config reloaded"), 15), proc.log()
        assert wait_for(lambda: proc.service("db")["status"] == "unhealthy", 15)
        ready = proc.get("/ops/readyz")
        assert ready.status_code == 503
        assert "db" in ready.text


def test_sigterm_stops_within_5_s_and_leaves_nothing_running(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    pid_file = tmp_path / "restart.pid"
    config = write(
        tmp_path / "s.toml",
        MONITOR
        + http(
            "down",
            f"http://127.0.0.1:{free_port()}/",
            '[[services.recovery]]\naction = "restart_service"\nfailure_threshold = 1\n'
            f'command = ["sh", "-c", "echo $$ > {pid_file}; exec sleep 60"]\ntimeout = 120\n'
            "grace_period = 120\n",
        ),
    )
    # Unclosed sockets and transports would print a ResourceWarning: make them show.
    proc = launch(service, config, {"PYTHONWARNINGS": "always::ResourceWarning"})
    # A restart command is running when the service is told to stop.
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 20)
    restart_pid = int(pid_file.read_text())
    os.kill(restart_pid, 0)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    took = time.monotonic() - started
    assert code == 0, proc.log()
    assert took < 5.0, took
    assert proc.logged("stopped")
    for bad in ("Traceback", "Task was destroyed", "Unclosed", "unclosed", "never awaited"):
        assert not proc.logged(bad), proc.log()

    def gone() -> bool:
        try:
            os.kill(restart_pid, 0)
        except ProcessLookupError:
            return True
        return False

    # The restart command's process group was signalled (SIGTERM, then SIGKILL).
    assert wait_for(gone, 5)


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback port that accepts connections and never answers a byte (a hung peer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_sigterm_with_everything_hung_stops_within_5_s(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    """Hung checks (HTTP, command), a hung alert sink with an alert in flight, four restart
    commands that ignore SIGTERM, a Redis that never answers and a dashboard request in
    progress, all at once.

    (A check's timeout is capped by its interval, and its first run waits up to one
    interval: 5 s each, so both checks have started, and hang, when the signal comes.)"""
    pids = [tmp_path / f"restart-{index}.pid" for index in range(4)]
    check_pid = tmp_path / "check.pid"

    def stubborn(pid_file: Path) -> str:
        # Ignores SIGTERM: only the SIGKILL that follows it ends this restart command.
        return f'command = ["sh", "-c", "trap \'\' TERM; echo $$ > {pid_file}; sleep 60"]\n'

    with silent_server() as (hung_port, accepted):
        down = [
            http(
                f"down{index}",
                f"http://127.0.0.1:{free_port()}/",
                '[[services.recovery]]\naction = "restart_service"\nfailure_threshold = 1\n'
                + stubborn(pid)
                + "timeout = 120\ngrace_period = 120\n",
            )
            for index, pid in enumerate(pids)
        ]
        hung = http("hung_http", f"http://127.0.0.1:{hung_port}/").replace(
            "timeout = 1", "timeout = 5\ninterval = 5"
        )
        hung += (
            '\n[[services]]\nname = "hung_command"\ntype = "command"\ntimeout = 5\n'
            f'interval = 5\ncommand = ["sh", "-c", "echo $$ > {check_pid}; exec sleep 60"]\n'
        )
        sink = (
            '\n[[alerts]]\ntype = "webhook"\n'
            f'url = "http://127.0.0.1:{hung_port}/hook"\ntimeout = 60\n'
        )
        config = write(
            tmp_path / "s.toml",
            f'redis_url = "redis://127.0.0.1:{hung_port}/0"\n'
            + MONITOR
            + '[circuits]\nnames = ["llm"]\n'
            + "[monitor.alert_thresholds]\nconsecutive_failures = 1\n"
            + "".join(down)
            + hung
            + sink,
        )
        proc = launch(service, config, {"PYTHONWARNINGS": "always::ResourceWarning"})
        assert wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pids), 20)
        assert wait_for(lambda: check_pid.exists() and check_pid.read_text().strip() != "", 20)
        # The hung HTTP check and the sink's POST both hold a connection to the silent port.
        assert wait_for(lambda: len(accepted) >= 2, 20), proc.log()
        restart_pids = [int(p.read_text()) for p in pids]
        # A dashboard control in progress: it waits on the Redis that never answers.
        host, port = proc.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(
            b"POST /api/circuits/llm/open HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        time.sleep(0.2)
        try:
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
            took = time.monotonic() - started
        finally:
            client.close()
        assert code == 0, proc.log()
        assert took < 5.0, (took, proc.log())
        for bad in ("Traceback", "Task was destroyed", "never awaited"):
            assert not proc.logged(bad), proc.log()

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        for pid in [*restart_pids, int(check_pid.read_text())]:
            assert wait_for(lambda pid=pid: gone(pid), 5), pid  # type: ignore[misc]


def test_serve_refuses_a_config_the_library_rejects_with_exit_3(tmp_path: Path) -> None:
    config = write(
        tmp_path / "s.toml",
        MONITOR
        + http(
            "api",
            "http://127.0.0.1:1/",
            '[[services.recovery]]\naction = "restart_service"\ncommand = ["true"]\n'
            "stable_period = 0.01\n",
        ),
    )
    done = run_cli("serve", "--config", str(config), "--port", "0")
    assert done.code == 3, done.err
    assert f"{config}: services[0]" in done.err
    assert "stable_period" in done.err


def test_two_replicas_sharing_redis_restart_a_killed_service_once(
    tmp_path: Path, service: list[ServiceProcess], private_redis: PrivateRedis
) -> None:
    stack = {"XNAI_DEMO_STACK_DIR": str(tmp_path / "stack")}
    port = free_port()
    python = sys.executable

    def demo(*args: str) -> None:
        demo_stack(*args, env=stack)

    demo("start", "rag_api", str(port))
    try:
        config = write(
            tmp_path / "s.toml",
            f'redis_url = "{private_redis.url}"\n'
            + MONITOR.replace("failure_threshold = 1", "failure_threshold = 2")
            + http(
                "rag_api",
                f"http://127.0.0.1:{port}/health",
                '[[services.recovery]]\naction = "restart_service"\nfailure_threshold = 2\n'
                f'command = ["{python}", "-m", "examples.demo_stack", "restart", "rag_api"]\n'
                "backoff_base = 1\nbackoff_max = 5\ncooldown = 5\ngrace_period = 15\n"
                "timeout = 20\n",
            ),
        )
        replicas = [launch(service, config, stack), launch(service, config, stack)]

        def healthy(replica: ServiceProcess) -> bool:
            return bool(replica.service("rag_api")["status"] == "healthy")

        def checks(replica: ServiceProcess) -> int:
            return int(replica.service("rag_api")["total_checks"])

        for replica in replicas:
            assert wait_for(functools.partial(healthy, replica), 20)
        demo("kill", "rag_api")
        restarts = tmp_path / "stack" / "rag_api.restarts"
        assert wait_for(restarts.exists, 30), "\n".join(r.log() for r in replicas)
        for replica in replicas:
            assert wait_for(functools.partial(healthy, replica), 30), replica.log()
        # Several more rounds of checks on both replicas: still one restart.
        marks = [checks(r) for r in replicas]
        for replica, mark in zip(replicas, marks, strict=True):
            assert wait_for(lambda r=replica, m=mark: checks(r) >= m + 6, 20)  # type: ignore[misc]
        assert len(restarts.read_text().splitlines()) == 1
        attempts = [r.service("rag_api")["recovery"]["attempts"] for r in replicas]
        assert sorted(attempts) == [0, 1], attempts
    finally:
        demo("kill", "rag_api")


def test_dashboard_controls_need_the_token_and_change_the_shared_state(
    tmp_path: Path, service: list[ServiceProcess], key_prefix: str
) -> None:
    import httpx

    from tests.conftest import SHARED_REDIS_URL

    prefix = f"{key_prefix}:cb:"
    config = circuits_config(tmp_path / "s.toml", prefix, "llm")
    try:
        proc = launch(service, config)
        state = proc.state()
        assert state["controls"] is True
        assert [c["name"] for c in state["circuits"]] == ["llm"]
        target = proc.url + "/api/circuits/llm/open"
        assert httpx.post(target, timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
        assert httpx.post(target, headers=wrong, timeout=5).status_code == 401
        assert proc.state()["circuits"][0]["state"] == "closed"
        right = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(target, headers=right, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["state"] == "open"
        # The same circuit through the ops endpoints of xnai_core.web.
        listed = httpx.get(proc.url + "/ops/circuits", timeout=5).json()
        assert "llm" in json.dumps(listed)
        ops_close = proc.url + "/ops/circuits/llm/close"
        assert httpx.post(ops_close, timeout=5).status_code == 401
        assert httpx.post(ops_close, headers=right, timeout=5).status_code == 200
        assert wait_for(lambda: proc.state()["circuits"][0]["state"] == "closed", 10)
        assert httpx.post(target, headers=right, timeout=5).status_code == 200
        shown = run_cli(
            "circuits", "show", "llm", "--redis-url", SHARED_REDIS_URL, "--prefix", prefix, "--json"
        )
        assert shown.json()["state"] == "open"
        assert TOKEN not in proc.log()
        proc.stop()

        # Without the token's variable set, the control routes do not exist.
        bare = ServiceProcess(config, env={"XNAI_TEST_SERVE_TOKEN": ""}).start()
        service.append(bare)
        assert bare.state()["controls"] is False
        assert (
            httpx.post(bare.url + "/api/circuits/llm/close", headers=right, timeout=5).status_code
            == 404
        )
    finally:
        drop_shared_keys(key_prefix)


def test_a_dashboard_control_reaches_a_circuit_whose_name_holds_a_slash(
    tmp_path: Path, service: list[ServiceProcess], key_prefix: str
) -> None:
    """``openai/gpt-4``: the page posts ``/api/circuits/openai%2Fgpt-4/open``
    (``encodeURIComponent``), which the server sees decoded; its route's ``{name}`` stopped
    at the slash, so every button of such a circuit answered 404 (``/ops`` had been fixed)."""
    import httpx

    prefix = f"{key_prefix}:cb:"
    config = circuits_config(tmp_path / "s.toml", prefix, "openai/gpt-4")
    right = {"Authorization": f"Bearer {TOKEN}"}
    try:
        proc = launch(service, config)
        assert [c["name"] for c in proc.state()["circuits"]] == ["openai/gpt-4"]
        encoded = proc.url + "/api/circuits/openai%2Fgpt-4/open"
        assert httpx.post(encoded, timeout=5).status_code == 401
        opened = httpx.post(encoded, headers=right, timeout=5)
        assert opened.status_code == 200, opened.text
        assert opened.json()["name"] == "openai/gpt-4"
        assert opened.json()["state"] == "open"
        closed = httpx.post(proc.url + "/api/circuits/openai/gpt-4/close", headers=right, timeout=5)
        assert closed.status_code == 200, closed.text
        assert wait_for(lambda: proc.state()["circuits"][0]["state"] == "closed", 10)
        missing = httpx.post(
            proc.url + "/api/circuits/openai/gpt-5/close", headers=right, timeout=5
        )
        assert missing.status_code == 404
    finally:
        drop_shared_keys(key_prefix)


def test_a_redis_url_that_reaches_no_redis_does_not_stop_the_service_starting(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    """``redis_url`` naming an HTTP server's port (redis-py: InvalidResponse): the circuit
    listing let it out of the lifespan, and the service exited at start ("Application
    startup failed") instead of running with its shared state away, as it does when
    Redis refuses the connection."""
    import httpx

    from tests.service_helpers import not_redis

    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    with not_redis(reply) as url:
        text = f'redis_url = "{url}"\n' + MONITOR + '[circuits]\nnames = ["llm"]\n'
        config = write(tmp_path / "s.toml", text)
        proc = launch(service, config)
        assert httpx.get(proc.url + "/ops/livez", timeout=5).status_code == 200
        assert proc.logged("circuits: Redis did not answer as Redis (SCAN): InvalidResponse")
        assert [c["name"] for c in proc.state()["circuits"]] == ["llm"]


def test_a_non_ascii_token_opens_the_dashboards_api_and_the_ops_routes_alike(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    """One token, two surfaces of one service, two compares: ``/ops`` matched the bytes
    sent against the token's UTF-8 and ``/api`` re-encoded the header as UTF-8, so a
    token sent as UTF-8 (curl, httpx) opened ``/ops`` only, one sent as Latin-1 (a
    browser, for an "ö") ``/api`` only. Now both compare the bytes sent to its UTF-8."""
    import httpx

    token = "Kontroll-ö-€-0123456789"
    config = write(tmp_path / "s.toml", MONITOR + http("api", "http://127.0.0.1:1/"))
    proc = launch(service, config, env={"XNAI_TEST_SERVE_TOKEN": token})
    assert wait_for(lambda: proc.service("api")["status"] == "unhealthy", 20)
    right = {b"Authorization": b"Bearer " + token.encode()}
    wrong = {b"Authorization": b"Bearer " + token.encode()[:-1] + b"!"}
    for headers, granted in ((right, True), (wrong, False)):
        state = httpx.get(proc.url + "/api/state", headers=headers, timeout=5).json()
        assert state["sensitive"] is granted
        health = httpx.get(proc.url + "/ops/health", headers=headers, timeout=5).json()
        assert ("details" in health["services"]["api"]) is granted


def test_gzip_refused_with_q_0_is_not_sent(tmp_path: Path, service: list[ServiceProcess]) -> None:
    """``Accept-Encoding: gzip;q=0, identity``: the service's compression (Starlette's
    GZipMiddleware, which looks for "gzip" anywhere in the header) sent gzip anyway, to a
    client that said it cannot read it, though ``/ops/metrics`` itself honoured the q."""
    import httpx

    config = write(tmp_path / "s.toml", MONITOR + http("api", "http://127.0.0.1:1/"))
    proc = launch(service, config)
    refused = {"Accept-Encoding": "gzip;q=0, identity"}
    for path in ("/ops/metrics", "/dashboard.js"):  # both over the 1 KiB compressed
        answer = httpx.get(proc.url + path, headers=refused, timeout=5)
        assert answer.status_code == 200
        assert "content-encoding" not in answer.headers, (path, answer.headers)
        wanted = httpx.get(proc.url + path, headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert wanted.headers.get("content-encoding") == "gzip", path


def test_idle_connections_cannot_take_the_descriptors_the_checks_need(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    """Connections that never send a request are held for ever (uvicorn): 300 of them took
    every descriptor of a service limited to 256, its checks failed with "Too many open
    files" (a healthy service reported unhealthy, an alert raised) and asyncio logged
    each refused accept, tens of MB of log in seconds. The service now closes client
    connections past a quarter of its descriptors (at most 256), so its checks keep theirs."""
    import httpx

    with http_service() as (url, _):
        config = write(tmp_path / "s.toml", MONITOR + http("api", url))
        proc = ServiceProcess(config, env={"XNAI_TEST_SERVE_TOKEN": TOKEN}, max_files=256)
        service.append(proc)
        proc.start()
        assert wait_for(lambda: proc.service("api")["status"] == "healthy", 20)
        host, port = proc.url.removeprefix("http://").split(":")
        held = []
        try:
            # All 300 queued at once while the service is stopped, then let go: the worst
            # case, every one waiting to be accepted in the same turn of its loop.
            proc.signal(signal.SIGSTOP)
            try:
                for _ in range(300):
                    connection = socket.socket()
                    connection.setblocking(False)
                    connection.connect_ex((host, int(port)))
                    held.append(connection)
            finally:
                proc.signal(signal.SIGCONT)
            # Checks go on (every 0.3 s) with the connections held: 20 rounds of them.
            assert wait_for(lambda: proc.logged("Too many open files"), 6) is False, proc.log()[
                -2000:
            ]
        finally:
            for connection in held:
                connection.close()
        assert httpx.get(proc.url + "/ops/livez", timeout=5).status_code == 200
        assert proc.service("api")["status"] == "healthy"
        assert not proc.logged("is unhealthy")


def test_a_circuit_named_after_a_url_with_a_password_is_masked_on_the_dashboard(
    tmp_path: Path, service: list[ServiceProcess], key_prefix: str
) -> None:
    """A circuit named ``redis://:<password>@cache:6379`` (the docs' own example of a
    careless name): ``/ops/circuits`` and the metrics masked it, ``/api/state`` showed the
    password to anyone, token or not. It is masked there too, and the page's controls
    act on the masked name."""
    import httpx

    from tests.conftest import SHARED_REDIS_URL

    secret = "hunter2circuitpw"
    name = f"redis://:{secret}@cache:6379"
    prefix = f"{key_prefix}:cb:"
    config = circuits_config(tmp_path / "s.toml", prefix, name)
    right = {"Authorization": f"Bearer {TOKEN}"}
    try:
        proc = launch(service, config)
        for headers in ({}, right):
            answer = httpx.get(proc.url + "/api/state", headers=headers, timeout=5)
            assert secret not in answer.text
            assert [c["name"] for c in answer.json()["circuits"]] == ["redis://:***@cache:6379"]
        shown = "redis%3A%2F%2F%3A%2A%2A%2A%40cache%3A6379"  # encodeURIComponent
        opened = httpx.post(f"{proc.url}/api/circuits/{shown}/open", headers=right, timeout=5)
        assert opened.status_code == 200, opened.text
        assert secret not in opened.text
        assert opened.json()["state"] == "open"
        listed = run_cli(
            "circuits", "show", name, "--redis-url", SHARED_REDIS_URL, "--prefix", prefix, "--json"
        )
        assert listed.json()["state"] == "open"
    finally:
        drop_shared_keys(key_prefix)


def test_api_state_hides_what_ops_health_hides_without_the_token(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    import httpx

    dead = f"http://127.0.0.1:{free_port()}/health"
    config = write(
        tmp_path / "s.toml",
        MONITOR
        + "[monitor.alert_thresholds]\nconsecutive_failures = 1\n"
        + http("down", dead)
        + '\n[[services]]\nname = "script"\ntype = "command"\ncritical = false\n'
        'command = ["sh", "-c", "echo argv-detail-7781; exit 3"]\n'
        '\n  [[services.recovery]]\n  action = "restart_service"\n'
        "  failure_threshold = 1\n  max_attempts = 1\n  backoff_base = 0.1\n"
        '  command = ["sh", "-c", "echo restart-output-5512; exit 1"]\n',
    )
    proc = launch(service, config)
    assert wait_for(lambda: proc.service("script")["recovery"]["escalated"] is True, 20)
    assert wait_for(lambda: len(proc.state()["episodes"]) >= 2, 20)
    public = proc.get("/api/state")
    assert public.status_code == 200
    state = public.json()
    assert state["sensitive"] is False
    text = public.text
    for hidden in ("argv-detail-7781", "restart-output-5512", "127.0.0.1", "sh -c", "exit status"):
        assert hidden not in text, hidden
    down = next(s for s in state["services"] if s["name"] == "down")
    assert down["target"] is None
    assert down["last_error"]["error"] is None
    assert down["last_error"]["at"] > 0  # that it failed, and when, is public
    assert all(alert["message"] is None for alert in state["alerts"])
    assert state["alerts"]
    assert all(episode["reason"] is None for episode in state["episodes"])
    script = next(s for s in state["services"] if s["name"] == "script")
    assert script["recovery"]["escalated"] is True
    assert script["recovery"]["escalation_reason"] is None
    # /ops/health and /ops/recovery hide the same detail from the same requests.
    assert "argv-detail-7781" not in proc.get("/ops/health").text
    assert dead not in proc.get("/ops/health").text
    recovery = proc.get("/ops/recovery")
    assert recovery.status_code == 200
    assert recovery.json()["services"]["script"]["escalated"] is True
    assert "argv-detail-7781" not in recovery.text
    assert "restart-output-5512" not in recovery.text
    # A wrong token is a request without one.
    wrong = httpx.get(
        proc.url + "/api/state", headers={"Authorization": "Bearer " + "x" * 30}, timeout=5
    )
    assert "argv-detail-7781" not in wrong.text
    # With the token: everything, masked as before.
    right = {"Authorization": f"Bearer {TOKEN}"}
    full = httpx.get(proc.url + "/api/state", headers=right, timeout=5).json()
    assert full["sensitive"] is True
    shown = {s["name"]: s for s in full["services"]}
    assert shown["down"]["target"] == dead
    assert shown["down"]["last_error"]["error"]
    assert "argv-detail-7781" in shown["script"]["target"]
    assert shown["script"]["recovery"]["escalation_reason"]
    assert all(alert["message"] for alert in full["alerts"])
    assert "restart-output-5512" in httpx.get(proc.url + "/ops/recovery", headers=right).text
    detailed = httpx.get(proc.url + "/api/state?detail=1", timeout=5).json()
    assert next(s for s in detailed["services"] if s["name"] == "down")["target"] is None


def test_a_forged_host_header_is_refused(tmp_path: Path, service: list[ServiceProcess]) -> None:
    import httpx

    config = write(
        tmp_path / "s.toml",
        MONITOR + '[server]\nallowed_hosts = ["xnai.internal.example"]\n',
    )
    proc = launch(service, config)
    port = proc.url.rsplit(":", 1)[1]
    right = {"Authorization": f"Bearer {TOKEN}"}

    def ask(method: str, path: str, host: str) -> int:
        headers = {"Host": host, **right}
        return httpx.request(method, proc.url + path, headers=headers, timeout=5).status_code

    routes = [("GET", "/"), ("GET", "/api/state"), ("GET", "/ops/health"), ("GET", "/ops/livez")]
    # DNS rebinding: a name the attacker controls, now resolving to 127.0.0.1.
    for forged in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        for method, path in [*routes, ("POST", "/api/circuits/llm/open")]:
            assert ask(method, path, forged) == 400, (forged, path)
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        for method, path in routes:
            assert ask(method, path, good) == 200, (good, path)
    assert ask("GET", "/api/state", f"xnai.internal.example:{port}") == 200
    assert ask("GET", "/api/state", "[::1]:bad") == 400
    # A reload cannot widen (or narrow) the names: it says they wait for a restart.
    write(config, MONITOR + '[server]\nallowed_hosts = ["evil.example"]\n')
    proc.signal(signal.SIGHUP)
    assert wait_for(lambda: proc.logged("config reloaded"), 15), proc.log()
    assert proc.logged("allowed_hosts take effect at the next start")
    assert ask("GET", "/api/state", "evil.example") == 400


def test_a_sighup_while_the_service_starts_is_applied_once_it_runs(
    tmp_path: Path, service: list[ServiceProcess]
) -> None:
    # The config is a FIFO: the service blocks reading it until the test writes, so the
    # signal surely comes while it starts (SIGHUP's default action would end it).
    config = tmp_path / "s.toml"
    os.mkfifo(config)
    text = MONITOR.encode()

    def feed() -> None:
        with open(config, "wb") as fifo:
            fifo.write(text)

    proc = ServiceProcess(config, env={"XNAI_TEST_SERVE_TOKEN": TOKEN})
    service.append(proc)
    starting = threading.Thread(target=proc.start, daemon=True)
    starting.start()
    assert wait_for(lambda: proc.process is not None, 10)
    time.sleep(1.0)  # well into its start: blocked on the config FIFO
    proc.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert proc.process is not None
    assert proc.process.poll() is None, proc.log()
    feed()  # the startup's read
    starting.join(timeout=40)
    assert proc.url, proc.log()
    # Once up, the service reloads (reading the FIFO again): the early SIGHUP, applied.
    reload_feed = threading.Thread(target=feed, daemon=True)
    reload_feed.start()
    assert wait_for(lambda: proc.logged("config reloaded"), 15), proc.log()
    reload_feed.join(timeout=10)
    assert not reload_feed.is_alive()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, proc.log()


def test_a_reload_that_changes_circuits_keeps_every_service_as_it_was(
    tmp_path: Path, service: list[ServiceProcess], key_prefix: str
) -> None:
    import httpx

    from tests.conftest import SHARED_REDIS_URL

    dead = f"http://127.0.0.1:{free_port()}/"
    head = f'redis_url = "{SHARED_REDIS_URL}"\n' + MONITOR
    recovery = f'\n[recovery]\nkey_prefix = "{key_prefix}:recovery"\n'
    with http_service() as (url, _):
        services = http("kept", url) + http(
            "down",
            dead,
            '[[services.recovery]]\naction = "manual_intervention"\nfailure_threshold = 1\n',
        )

        def circuits(*names: str) -> str:
            listed = ", ".join(f'"{name}"' for name in names)
            return f'\n[circuits]\nkey_prefix = "{key_prefix}:cb:"\nnames = [{listed}]\n'

        config = tmp_path / "s.toml"
        write(config, head + circuits("llm") + recovery + services)
        try:
            proc = launch(service, config)
            assert wait_for(lambda: proc.service("kept")["total_checks"] >= 5, 15)
            assert wait_for(lambda: bool(proc.service("down")["recovery"]["escalated"]), 15)
            checks_before = proc.service("kept")["total_checks"]

            write(config, head + circuits("llm", "vectors") + recovery + services)
            proc.signal(signal.SIGHUP)
            assert wait_for(lambda: proc.logged("config reloaded"), 15), proc.log()
            assert proc.logged("the circuits' mirrors replaced")
            state = proc.state()
            assert [c["name"] for c in state["circuits"]] == ["llm", "vectors"]
            listed = httpx.get(proc.url + "/ops/circuits", timeout=5).json()
            assert sorted(listed) == ["llm", "vectors"]
            # The services went on as they were: history, latch, alert.
            assert proc.service("kept")["total_checks"] >= checks_before
            assert proc.service("down")["recovery"]["escalated"] is True
            assert any(a["service"] == "down" for a in state["alerts"])
        finally:
            drop_shared_keys(key_prefix)
