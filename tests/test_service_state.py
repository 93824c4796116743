"""``/api/state`` under a flood of requests: one snapshot per variant and period, built off
the requests' backs, while the checks keep their cadence."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.ops_helpers import serving
from xnai_core.service import parse_config
from xnai_core.service import server as service_server
from xnai_core.service.server import build_app

TOKEN = "state-flood-token-0123456789"
SERVICES = 100


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port that accepts TCP connections and closes them (a tcp check's peer)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


async def test_a_flood_of_state_requests_builds_one_snapshot_per_variant_and_checks_go_on(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One period for the whole test: every request of a variant must share one build.
    monkeypatch.setattr(service_server, "STATE_MAX_AGE", 3600.0)
    text = 'control_token_env = "XNAI_TEST_FLOOD_TOKEN"\n[monitor]\ncheck_interval = 0.2\n'
    text += "".join(
        f'[[services]]\nname = "s{i}"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {listening}\n'
        for i in range(SERVICES)
    )
    import tomllib

    config = parse_config(tomllib.loads(text), env={"XNAI_TEST_FLOOD_TOKEN": TOKEN})
    app = build_app(config)
    runtime = app.state.runtime
    builds: list[tuple[bool, bool]] = []
    snapshot = runtime.snapshot

    def counted(**kw: Any) -> dict[str, object]:
        builds.append((kw.get("detail", False), kw.get("sensitive", False)))
        return snapshot(**kw)  # type: ignore[no-any-return]

    runtime.snapshot = counted
    async with serving(app, lifespan="on") as url:
        monitor = runtime.monitor
        for _ in range(200):  # the first round of checks (bounded: ~10 s)
            if all(monitor.get_service_health(f"s{i}").total_checks for i in range(SERVICES)):
                break
            await asyncio.sleep(0.05)
        before = monitor.get_service_health("s0").total_checks
        # One connection per request: none is reused as the server closes it.
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            requests = [client.get("/api/state?detail=1") for _ in range(150)]
            requests += [client.get("/api/state", headers=auth) for _ in range(150)]
            answers = await asyncio.gather(*requests)
        assert {answer.status_code for answer in answers} == {200}
        assert len({answer.content for answer in answers[:150]}) == 1
        # 300 requests, two variants: two snapshots, not one per request.
        assert sorted(set(builds)) == [(False, True), (True, False)]
        assert len(builds) == 2, len(builds)
        # The checks went on meanwhile (none waited for the flood to end).
        for _ in range(100):
            if monitor.get_service_health("s0").total_checks > before:
                break
            await asyncio.sleep(0.05)
        assert monitor.get_service_health("s0").total_checks > before
