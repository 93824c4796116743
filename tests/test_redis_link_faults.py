"""Red team of the client's link (issue 10's promises, second round): the link's own
waits under a stalled event loop, its resync with many circuits, and its estimate of the
Redis clock. Each test failed before its fix; all run a private redis-server, most
behind the fault proxy, with clients built as users build them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.fault_proxy import FaultProxy, replies_to, replies_to_script
from tests.redis_helpers import REDIS_LOGGER, cfg, eventually, fail_once, warnings_of
from xnai_core import CircuitState, RedisStore
from xnai_core.circuit import redis_scripts
from xnai_core.circuit.machine import Ticket

pytest_plugins = ["tests.redis_fixtures"]

READ_SHA = hashlib.sha1(redis_scripts.READ.encode()).hexdigest()


async def test_a_stall_during_the_links_ping_is_not_an_outage(
    outside_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """One reply comes after op_timeout, so the link PINGs Redis to tell a late reply
    from an outage; the event loop then blocks 0.6 s (past op_timeout) right after the
    PING is sent, and the PONG arrives during the stall. It is read before the deadline
    is believed: no outage of every circuit, no WARNING. Before, the PING's timeout,
    firing late, threw the PONG away and marked Redis down."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    client = aioredis.Redis(host="127.0.0.1", port=outside_proxy.port)
    real_ping = client.ping
    pings = 0

    async def stalled_ping(**kwargs: Any) -> Any:
        nonlocal pings
        pings += 1
        asyncio.get_running_loop().call_later(0.03, time.sleep, 0.6)  # after it is sent
        return await real_ping(**kwargs)

    client.ping = stalled_ping  # type: ignore[method-assign]
    store = RedisStore(cfg(failure_threshold=5), client, op_timeout=0.25, resync_interval=3600)
    try:
        await store.start()
        outside_proxy.delay_replies(0.1, when=replies_to("PING"))
        outside_proxy.delay_replies(0.6, when=replies_to("EVALSHA"), count=1)
        await store.record_failure(Ticket(store.snapshot().epoch))
        await eventually(lambda: pings >= 1, timeout=5)
        await eventually(lambda: store.available, timeout=5)  # the late reply caught up
        assert store.backend_metrics()["redis_stalls"] == 1
        assert store.backend_metrics()["redis_outages"] == 0
        assert warnings_of(caplog, "unreachable") == []
    finally:
        await store.close()
        await client.aclose()


async def many_circuits(client: aioredis.Redis, count: int) -> list[RedisStore]:
    made = [
        RedisStore(cfg(name=f"c{n}", failure_threshold=1, recovery_timeout=60), client)
        for n in range(count)
    ]
    for store in made:
        await store.start()
    return made


async def test_a_trip_is_heard_while_the_link_resyncs_many_circuits(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """Forty circuits on one client, each resync's READ answered 0.1 s late (many
    circuits, or a Redis a few ms away: a resync of them all takes 4 s). Another process
    trips the last of them just as a resync begins: the message reaches this process at
    once, not after the resync. Before, the link read no message while it resynced."""
    here = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    there = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    mine: list[RedisStore] = []
    tripper = RedisStore(cfg(name="c39", failure_threshold=1, recovery_timeout=60), there)
    try:
        mine = await many_circuits(here, 40)
        for store in mine:
            store.resync_interval = 0.2
        await tripper.start()
        rule = fault_proxy.delay_replies(0.1, when=replies_to_script(READ_SHA))
        await eventually(lambda: rule.hits >= 2, timeout=10)  # a resync is under way
        started = time.monotonic()
        await fail_once(tripper)
        await eventually(lambda: mine[-1].snapshot().state is CircuitState.OPEN, timeout=10)
        assert time.monotonic() - started < 1.0
    finally:
        for store in [*mine, tripper]:
            await store.close()
        await here.aclose()
        await there.aclose()


async def test_a_silent_subscription_is_found_within_2_s_while_the_link_resyncs(
    fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The same slow resync of forty circuits; the subscription's connection goes
    silent (black-holed): it is still found within the documented 2 s (the heartbeat
    does not wait for the resync), and replaced."""
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    here = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    mine: list[RedisStore] = []
    try:
        mine = await many_circuits(here, 40)
        for store in mine:
            store.resync_interval = 0.2
        rule = fault_proxy.delay_replies(0.1, when=replies_to_script(READ_SHA))
        await eventually(lambda: rule.hits >= 2, timeout=10)
        assert fault_proxy.black_hole(lambda c: "PSUBSCRIBE" in c.sent) == 1
        started = time.monotonic()
        await eventually(
            lambda: mine[0].backend_metrics()["redis_subscription_silences"] == 1, timeout=10
        )
        assert time.monotonic() - started < 3.0
        assert len(warnings_of(caplog, "silent")) == 1
    finally:
        for store in mine:
            await store.close()
        await here.aclose()


async def test_a_slow_round_trip_does_not_move_the_estimate_of_the_redis_clock(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """One resync's READ is answered 3 s late (Redis ran it at once; the reply was
    held). Redis runs on this host, so its TIME is this host's wall clock: the mirror's
    estimate of it stays within a few ms, and a circuit another process opened is
    half-opened as soon as its recovery timeout has passed on the Redis clock. Before,
    the estimate took the middle of the round trip and fell 1.5 s behind: the open
    circuit went on rejecting locally 1.5 s past its recovery timeout."""
    here = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    there = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    config = cfg(failure_threshold=1, recovery_timeout=2.0)
    store = RedisStore(config, here, resync_interval=4.0)
    tripper = RedisStore(config, there)
    try:
        await store.start()
        await tripper.start()
        rule = fault_proxy.delay_replies(3.0, when=replies_to_script(READ_SHA), count=1)
        await eventually(lambda: rule.hits == 1, timeout=10)  # the slow READ is out
        await fail_once(tripper)
        opened = time.time()
        await eventually(lambda: store.snapshot().state is CircuitState.OPEN, timeout=5)
        worst = 0.0
        while time.time() < opened + 3.3:  # the slow answer is read at about 3 s
            worst = max(worst, abs(store.mirror.now() - time.time()))
            await asyncio.sleep(0.01)
        assert worst < 0.2, worst
        admission = await store.acquire()  # past the recovery timeout on Redis's clock
        assert admission.ticket is not None, admission
        assert admission.ticket.permit > 0
    finally:
        await store.close()
        await tripper.close()
        await here.aclose()
        await there.aclose()
