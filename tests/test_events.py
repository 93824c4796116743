"""events.py: every breaker outcome and transition reaches the hooks, cheaply and safely."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import textwrap
import threading
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis
from tests.metrics_helpers import Recorder, no_global_hooks  # noqa: F401 (an autouse fixture)
from tests.test_redis_outage import _acl_user
from xnai_core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    create_redis_circuit_breaker,
    events,
)
from xnai_core.events import (
    CallCompleted,
    Event,
    FallbackUsed,
    StateChanged,
    call_completed,
)

E = TypeVar("E")


class Boom(Exception):
    pass


class Uncounted(Exception):
    pass


async def boom() -> None:
    raise Boom("down")


async def uncounted() -> None:
    raise Uncounted("not ours to count")


def breaker(**config: object) -> CircuitBreaker:
    config.setdefault("name", "svc")
    config.setdefault("timeout", None)
    return CircuitBreaker(CircuitBreakerConfig(**config))  # type: ignore[arg-type]


async def test_every_call_outcome_reaches_the_hook_with_its_duration() -> None:
    """successful, failed, ignored, timeout and not permitted, each timed."""
    hook = Recorder()
    b = breaker(failure_threshold=3, expected_exception=Boom, timeout=0.02)
    b.hooks.install(hook)
    assert await b.call(asyncio.sleep, 0, "ok") == "ok"
    with pytest.raises(Boom):
        await b.call(boom)
    with pytest.raises(Uncounted):
        await b.call(uncounted)
    with pytest.raises(TimeoutError):
        await b.call(asyncio.sleep, 5)
    with pytest.raises(Boom):
        await b.call(boom)  # the third counted failure opens the circuit
    with pytest.raises(CircuitOpenError):
        await b.call(asyncio.sleep, 0)
    calls = hook.of(CallCompleted)
    kinds = [event.kind for event in calls]
    assert kinds == ["successful", "failed", "ignored", "timeout", "failed", "not_permitted"]
    assert all(event.breaker == "svc" for event in calls)
    durations = {event.kind: event.duration for event in calls}
    assert all(0 <= seconds < 5 for seconds in durations.values())
    assert durations["timeout"] >= 0.02  # measured up to the timeout, not the sleep


async def test_cancelled_call_is_reported_ignored() -> None:
    hook = Recorder()
    b = breaker()
    b.hooks.install(hook)
    task = asyncio.ensure_future(b.call(asyncio.sleep, 30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [event.kind for event in hook.of(CallCompleted)] == ["ignored"]
    assert b.get_metrics()["state"] == "closed"


async def test_fallback_use_is_reported_with_its_cause() -> None:
    hook = Recorder()
    b = CircuitBreaker(
        CircuitBreakerConfig(name="fb", failure_threshold=1, timeout=None),
        lambda: "fallback",
    )
    b.hooks.install(hook)
    assert await b.call(boom) == "fallback"  # type: ignore[func-returns-value]
    assert await b.call(boom) == "fallback"  # type: ignore[func-returns-value]
    fallbacks = hook.of(FallbackUsed)
    assert [event.cause for event in fallbacks] == ["failed", "not_permitted"]
    assert [event.kind for event in hook.of(CallCompleted)] == ["failed", "not_permitted"]
    assert b.get_metrics()["fallback_calls"] == 2


async def test_transitions_carry_reason_and_origin() -> None:
    hook = Recorder()
    b = breaker(failure_threshold=1)
    b.hooks.install(hook)
    with pytest.raises(Boom):
        await b.call(boom)
    await b.force_close()
    changes = hook.of(StateChanged)
    assert [(e.old, e.new, e.remote) for e in changes] == [
        ("closed", "open", False),
        ("open", "closed", False),
    ]
    assert "threshold" in changes[0].reason


@pytest.mark.slow
async def test_a_transition_made_by_another_process_is_reported_remote(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """A circuit forced open by another OS process reaches this process's hooks, remote."""
    hook = Recorder()
    here = create_redis_circuit_breaker(
        "shared", shared_redis, key_prefix=key_prefix, timeout=None, op_timeout=5
    )
    here.hooks.install(hook)
    await here.call(asyncio.sleep, 0)  # loads the hash and subscribes
    script = textwrap.dedent(f"""
        import asyncio, redis.asyncio as aioredis
        from xnai_core import create_redis_circuit_breaker
        async def main():
            client = aioredis.Redis.from_url({SHARED_REDIS_URL!r})
            b = create_redis_circuit_breaker("shared", client, key_prefix={key_prefix!r})
            await b.force_open()
            await b.close()
            await client.aclose()
        asyncio.run(main())
    """)
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0
    for _ in range(600):
        if here.state == "open":
            break
        await asyncio.sleep(0.01)
    opened = [e for e in hook.of(StateChanged) if e.new == "open"]
    assert len(opened) == 1
    assert opened[0].remote is True
    assert "another process" in opened[0].reason
    await here.close()


@pytest.mark.slow
async def test_a_change_made_elsewhere_during_an_outage_is_reported_remote(
    private_redis: PrivateRedis,
) -> None:
    """The flag is the store's word, not the reason's wording: a circuit forced open
    by another process while this one was cut off from Redis (ACL) arrives, once this
    one is back in step, as a remote transition."""
    await _acl_user(private_redis, enabled=True, password="secret-a")
    client_a = aioredis.Redis.from_url(private_redis.url, username="proc-a", password="secret-a")
    client_b = aioredis.Redis.from_url(private_redis.url)
    a = create_redis_circuit_breaker("svc", client_a, op_timeout=0.2, timeout=None)
    b = create_redis_circuit_breaker("svc", client_b, op_timeout=0.2, timeout=None)
    hook = Recorder()
    a.hooks.install(hook)
    try:
        await a.call(asyncio.sleep, 0)
        await b.call(asyncio.sleep, 0)
        await _acl_user(private_redis, enabled=False)
        with pytest.raises(Boom):
            await a.call(boom)  # its script fails: a decides locally now
        assert a.get_metrics()["redis_available"] is False
        await b.force_open()
        await _acl_user(private_redis, enabled=True)
        for _ in range(1000):
            if a.state == "open":
                break
            await asyncio.sleep(0.01)
        opened = [e for e in hook.of(StateChanged) if e.new == "open"]
        assert [(e.old, e.remote) for e in opened] == [("closed", True)]
    finally:
        for breaker_, client in ((a, client_a), (b, client_b)):
            await breaker_.close()
            await client.aclose()


async def test_global_hooks_reach_breakers_made_before_and_after() -> None:
    before = breaker(name="before")
    hook = Recorder()
    events.install_hooks(hook)
    after = breaker(name="after")
    await before.call(asyncio.sleep, 0)
    await after.call(asyncio.sleep, 0)
    assert [e.breaker for e in hook.of(CallCompleted)] == ["before", "after"]
    events.install_hooks()
    assert before.hooks.emit is None
    assert after.hooks.record_call is None


async def test_own_hooks_replace_the_global_ones_until_uninstalled() -> None:
    global_hook, own_hook = Recorder(), Recorder()
    events.install_hooks(global_hook)
    b = breaker()
    b.hooks.install(own_hook)
    await b.call(asyncio.sleep, 0)
    assert (len(global_hook.events), len(own_hook.events)) == (0, 1)
    b.hooks.install()  # silenced, even with global hooks installed
    await b.call(asyncio.sleep, 0)
    assert (len(global_hook.events), len(own_hook.events)) == (0, 1)
    b.hooks.uninstall()
    await b.call(asyncio.sleep, 0)
    assert (len(global_hook.events), len(own_hook.events)) == (1, 1)
    assert b.hooks.hooks == (global_hook,)


async def test_add_and_remove_hook() -> None:
    first, second = Recorder(), Recorder()
    events.add_hook(first)
    events.add_hook(second)
    events.add_hook(first)  # once only
    assert events.get_hooks() == (first, second)
    events.remove_hook(first)
    events.remove_hook(first)
    assert events.get_hooks() == (second,)


async def test_a_failing_hook_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    after = Recorder()
    events.install_hooks(broken, after)
    b = breaker(failure_threshold=1)
    with caplog.at_level(logging.ERROR, logger="xnai_core"):
        assert await b.call(asyncio.sleep, 0, 5) == 5
        with pytest.raises(Boom):
            await b.call(boom)
    assert len(after.of(CallCompleted)) == 2  # the next hook still hears everything
    assert len(after.of(StateChanged)) == 1
    assert "hook bug" in caplog.text


def test_hooks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="a hook must be callable: 3"):
        events.install_hooks(3)  # type: ignore[arg-type]


def test_no_hook_installed_builds_nothing() -> None:
    b = breaker()
    assert b.hooks.emit is None
    assert b.hooks.record_call is None


def test_payloads_are_frozen_slotted_and_the_fast_constructor_agrees() -> None:
    fast = call_completed("svc", "successful", 0.5)
    assert fast == CallCompleted("svc", "successful", 0.5)
    assert repr(fast) == "CallCompleted(breaker='svc', kind='successful', duration=0.5)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.kind = "failed"  # type: ignore[misc]
    for kind in (CallCompleted, FallbackUsed, StateChanged, events.DegradationCall,
                 events.HealthChecked, events.AlertChanged, events.RecoveryAttempted,
                 events.RecoveryEscalated):  # fmt: skip
        assert dataclasses.is_dataclass(kind)
        assert "__slots__" in vars(kind)
        assert getattr(kind, "__dataclass_params__").frozen  # noqa: B009


def test_live_sources_lists_breakers_until_they_are_gone() -> None:
    b = breaker(name="alive")
    assert b in list(events.live_sources())
    del b
    import gc

    gc.collect()
    assert all(getattr(s, "name", None) != "alive" for s in events.live_sources())


def test_live_sources_can_be_listed_while_another_thread_makes_breakers() -> None:
    """A scrape (or the multiprocess publisher) lists the live objects in its own thread
    while the application makes breakers in another: never 'Set changed size'."""
    done = threading.Event()
    errors: list[BaseException] = []

    def make() -> None:
        keep: list[CircuitBreaker] = []
        for i in range(10_000):
            keep.append(breaker(name=f"race-{i}"))
            if len(keep) > 50:
                keep.clear()
        done.set()

    def read() -> None:
        for _ in range(200_000):
            if done.is_set():
                return
            try:
                list(events.live_sources())
            except RuntimeError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=make), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
