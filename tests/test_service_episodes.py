"""The dashboard's degradation episodes across a config reload."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from typing import Any

from xnai_core.service import parse_config
from xnai_core.service.runtime import ServiceRuntime


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()  # nothing listens there: a tcp check of it fails at once
    return port


def _config(services: list[str], port: int) -> Any:
    text = "[monitor]\ncheck_interval = 0.1\nfailure_threshold = 1\n" + "".join(
        f'[[services]]\nname = "{name}"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        for name in services
    )
    return parse_config(tomllib.loads(text), env={})


def _episodes(runtime: ServiceRuntime, service: str) -> list[dict[str, Any]]:
    episodes: list[dict[str, Any]] = runtime.snapshot()["episodes"]  # type: ignore[assignment]
    return [episode for episode in episodes if episode["service"] == service]


async def test_a_service_removed_by_a_reload_ends_its_ongoing_episode() -> None:
    port = _closed_port()
    runtime = ServiceRuntime(_config(["kept", "gone"], port))
    await runtime.start()
    try:
        for _ in range(400):  # bounded: the first failed checks come within a second
            if all(_episodes(runtime, name) for name in ("kept", "gone")):
                break
            await asyncio.sleep(0.05)
        (episode,) = _episodes(runtime, "gone")
        assert episode["ended"] is None  # ongoing

        changes = await runtime.reload(_config(["kept"], port))
        assert changes == ["removed gone"]

        # A removed service is never back to healthy: its episode must not stay
        # "ongoing" on the dashboard forever.
        (episode,) = _episodes(runtime, "gone")
        assert episode["ended"] is not None
        assert episode["status"] == "removed"
        (kept,) = _episodes(runtime, "kept")
        assert kept["ended"] is None  # still failing, still ongoing
    finally:
        await runtime.stop()
