"""aclose() of a manager at every await of an attempt, on a real Redis and a real command.

The manager's Redis steps are counted (a coordinator that closes the manager just before
or just after its k-th step), and the command itself is one more place to close at. After
each: no lease is left behind, the command's process is gone, and a peer that then finds
the service down does not restart it again while the closed manager's restart settles.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule
from xnai_core.recovery.coordination import Turn

pytestmark = pytest.mark.slow

H, U = "healthy", "unhealthy"

# A restart: records its pid, runs a while (a place to be closed at), then records it ran.
COMMAND = textwrap.dedent(
    """
    import os, sys, time
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)
    with open(sys.argv[2], "a") as f:
        f.write("done\\n")
    """
)

STEPS = ("take_turn_settling", "settle", "acquire", "release")


class ClosingCoordinator(RecoveryCoordinator):
    """Counts the manager's Redis steps; at step ``at`` it closes ``manager`` (``when``:
    just before the step reaches Redis, or just after Redis answered)."""

    def __init__(self, client: aioredis.Redis, prefix: str, at: int, when: str) -> None:
        super().__init__(client, key_prefix=prefix)
        self.at, self.when = at, when
        self.steps: list[str] = []
        self.manager: RecoveryManager | None = None
        self.closing: asyncio.Task[None] | None = None

    async def _close(self) -> None:
        assert self.manager is not None
        self.closing = asyncio.get_running_loop().create_task(self.manager.aclose())
        await asyncio.sleep(0)  # the close cancels us here, at this await
        await asyncio.sleep(0)

    async def _step(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        self.steps.append(name)
        here = len(self.steps) == self.at
        if here and self.when == "before":
            await self._close()
        answer = await call()
        if here and self.when == "after":
            await self._close()
        return answer

    async def take_turn_settling(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().take_turn_settling
        return await self._step("take_turn_settling", lambda: parent(*args, **kwargs))

    async def settle(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().settle
        return await self._step("settle", lambda: parent(*args, **kwargs))

    async def acquire(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().acquire
        return await self._step("acquire", lambda: parent(*args, **kwargs))

    async def release(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().release
        return await self._step("release", lambda: parent(*args, **kwargs))


def _rule(tmp: Path) -> RecoveryRule:
    script = tmp / "restart.py"
    script.write_text(COMMAND)
    return RecoveryRule(
        "web",
        "restart_service",
        command=[sys.executable, str(script), str(tmp / "pids"), str(tmp / "done")],
        failure_threshold=1,
        max_attempts=1,
        cooldown=0.0,
        grace_period=0.5,
        stable_period=10.0,
        timeout=5.0,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _attempt(
    tmp: Path, client: aioredis.Redis, prefix: str, at: int, when: str
) -> tuple[ClosingCoordinator, RecoveryManager]:
    """One outage: the service is reported down; healthy once the command has run."""
    coordinator = ClosingCoordinator(client, prefix, at, when)
    manager = RecoveryManager(verify_interval=0.05, coordinator=coordinator)
    coordinator.manager = manager
    manager.add_rule(_rule(tmp))
    done = tmp / "done"

    async def heal() -> None:
        await _until(done.exists)
        await manager.on_status_change("web", U, H)

    healer = asyncio.get_running_loop().create_task(heal())
    try:
        await manager.on_status_change("web", H, U)
        await _until(lambda: coordinator.closing is not None or not _busy(manager))
        await manager.wait_idle()
        if coordinator.closing is not None:
            await coordinator.closing
    finally:
        healer.cancel()
        await asyncio.gather(healer, return_exceptions=True)
        await manager.aclose()
    return coordinator, manager


def _busy(manager: RecoveryManager) -> bool:
    state: object = manager.get_recovery_stats()["services"]["web"]["state"]  # type: ignore[index]
    return state != "idle"


async def test_a_manager_closed_at_any_step_of_an_attempt_leaves_nothing_behind(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """At every Redis step of a whole attempt (before and after Redis answers), and while
    the command runs: no lease left, no command process left, at most one restart, and a
    peer finding the service down then leaves a restart that ran to settle."""
    (tmp_path / "full").mkdir()
    full, _ = await _attempt(tmp_path / "full", shared_redis, f"{key_prefix}:full", 0, "never")
    assert set(full.steps) == set(STEPS), full.steps
    points = [(at, when) for at in range(1, len(full.steps) + 1) for when in ("before", "after")]
    for at, when in points:
        tmp = tmp_path / f"{at}-{when}"
        tmp.mkdir()
        prefix = f"{key_prefix}:{at}:{when}"
        coordinator, manager = await _attempt(tmp, shared_redis, prefix, at, when)
        where = f"closed {when} step {at} ({coordinator.steps[at - 1 : at]})"
        assert await shared_redis.exists(coordinator.lease_key("web")) == 0, where
        pids = (
            [int(pid) for pid in (tmp / "pids").read_text().split()]
            if (tmp / "pids").exists()
            else []
        )
        assert len(pids) <= 1, where
        assert not any(_alive(pid) for pid in pids), where
        if (tmp / "done").exists():
            # The restart ran: a peer that still sees the service down waits for it.
            peer = RecoveryCoordinator(shared_redis, key_prefix=prefix)
            assert await peer.take_turn("web", 5.0, lag=1.0) is Turn.SETTLING, where
        assert manager.get_recovery_stats()["total_attempts"] in (0, 1), where


async def test_a_manager_closed_while_its_command_runs_kills_it(
    tmp_path: Path, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Closed mid-command: the command's process is gone, the lease released, and the
    restart's settle record still holds a peer off (it may have done its work)."""
    coordinator = RecoveryCoordinator(shared_redis, key_prefix=key_prefix)
    manager = RecoveryManager(verify_interval=0.05, coordinator=coordinator)
    manager.add_rule(_rule(tmp_path))
    pids = tmp_path / "pids"
    await manager.on_status_change("web", H, U)
    await _until(lambda: pids.exists() and pids.read_text().strip() != "")  # it runs
    pid = int(pids.read_text().split()[0])
    await manager.aclose()
    assert not _alive(pid)
    assert not (tmp_path / "done").exists()
    assert await shared_redis.exists(coordinator.lease_key("web")) == 0
    peer = RecoveryCoordinator(shared_redis, key_prefix=key_prefix)
    assert await peer.take_turn("web", 5.0, lag=1.0) is Turn.SETTLING
    await manager.wait_idle()
    assert manager.get_recovery_stats()["total_attempts"] == 1
