"""The dashboard's circuit mirrors when Redis goes away and comes back: said in the log,
once per outage."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from xnai_core.service.circuit_watch import CircuitWatch


async def test_redis_away_is_logged_once_and_its_return_too(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=1, socket_timeout=1)
    watch = CircuitWatch(client, key_prefix="rtops:cb:", names=("llm",), recovery_timeout=30)
    caplog.set_level(logging.WARNING, logger="xnai_core.service")
    try:
        await watch.discover()
        assert not [r for r in caplog.records if r.name == "xnai_core.service"]

        private_redis.kill()
        for _ in range(3):
            await watch.discover()
        away = [r.getMessage() for r in caplog.records if r.name == "xnai_core.service"]
        assert len(away) == 1, away
        assert away[0].startswith("circuits: Redis did not answer")

        private_redis.start()
        caplog.clear()
        for _ in range(2):
            await watch.discover()
        back = [r.getMessage() for r in caplog.records if r.name == "xnai_core.service"]
        assert back == ["circuits: Redis answers again"]
    finally:
        await watch.aclose()
        await client.aclose()
