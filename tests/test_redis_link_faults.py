"""Red team of the client's link (issue 10's promises, second round): the link's own
waits under a stalled event loop, its resync with many circuits, and its estimate of the
Redis clock. Each test failed before its fix; all run a private redis-server, most
behind the fault proxy, with clients built as users build them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.fault_proxy import FaultProxy, replies_to
from tests.redis_helpers import REDIS_LOGGER, cfg, eventually, warnings_of
from xnai_core import RedisStore
from xnai_core.circuit.machine import Ticket

pytest_plugins = ["tests.redis_fixtures"]


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
