"""One replica in its own OS process, for the killed-holder test: a HealthMonitor checking a
web service every 0.05 s and a RecoveryManager that restarts it, sharing recovery through
Redis. Usage: ``python -m tests.recovery_worker '<json spec>'`` with ``url`` (Redis),
``prefix``, ``web_url``, ``command`` (the restart argv). It prints ``ready`` once it
watches, ``recovered`` once it has judged its restart a success, and runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis

from xnai_core.events import RecoveryAttempted
from xnai_core.health.checkers import HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule


async def main(spec: dict[str, object]) -> None:
    client = aioredis.Redis.from_url(str(spec["url"]))
    manager = RecoveryManager(
        verify_interval=0.05,
        coordinator=RecoveryCoordinator(client, key_prefix=str(spec["prefix"])),
    )
    manager.add_rule(
        RecoveryRule(
            "web",
            "restart_service",
            command=[str(arg) for arg in spec["command"]],  # type: ignore[attr-defined]
            failure_threshold=1,
            cooldown=0.0,
            grace_period=3.0,  # a restarted Python server may take a while on a busy host
            stable_period=10.0,
            timeout=5.0,
        )
    )
    monitor = HealthMonitor(
        check_interval=0.05,
        failure_threshold=2,
        recovery_manager=manager,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(HTTPHealthChecker("web", str(spec["web_url"]), timeout=0.25))
    recovered = asyncio.Event()

    def judged(event: object) -> None:
        if isinstance(event, RecoveryAttempted) and event.result == "succeeded":
            recovered.set()

    manager.hooks.install(judged)
    await monitor.start_monitoring()
    print("ready", flush=True)
    await recovered.wait()  # the moment this replica has judged its restart a success
    print("recovered", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
