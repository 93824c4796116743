"""A shared circuit named after a URL with its password (the docs' example of a careless
name): what the Redis store logs about it (a lost key written back, a malformed hash,
times ahead of the clock, a failing transition callback) shows the name masked, as the
breaker's own lines do. Those lines printed the name and its key as written."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.redis_helpers import eventually
from xnai_core import CircuitState, create_redis_circuit_breaker

pytest_plugins = ["tests.redis_fixtures"]

SECRET = "pw-in-a-shared-name-41"
NAME = f"redis://:{SECRET}@cache:6379"
KEY = f"xnai:cb:{{{NAME}}}"


async def stored_state(direct: aioredis.Redis) -> bool:
    return await direct.hget(KEY, "state") == b"open"


class Boom(Exception):
    pass


async def boom() -> None:
    raise Boom


async def test_what_the_redis_store_logs_of_a_name_holding_a_credential_is_masked(
    private_redis: PrivateRedis, direct: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="xnai_core")
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    breaker = create_redis_circuit_breaker(
        NAME, client, failure_threshold=1, recovery_timeout=60, resync_interval=0.2
    )

    def failing_listener(*_: object) -> None:
        raise RuntimeError("a listener of the user's that fails")

    breaker.add_listener(failing_listener)
    try:
        with pytest.raises(Boom):
            await breaker.call(boom)
        assert breaker.state is CircuitState.OPEN
        await direct.delete(KEY)  # lost while open here: written back, with a WARNING
        await eventually(lambda: "lost the open circuit" in caplog.text, timeout=5)
        await eventually(lambda: stored_state(direct), timeout=5)
        await direct.hset(KEY, "opened_at", "not a number")  # malformed: said, reset
        await eventually(lambda: "malformed" in caplog.text, timeout=5)
    finally:
        await breaker.close()
        await client.aclose()
    assert "lost the open circuit" in caplog.text
    assert "malformed" in caplog.text
    texts = [caplog.text, repr(breaker.store), *(repr(vars(record)) for record in caplog.records)]
    for text in texts:
        assert SECRET not in text, text
    assert "redis://:***@cache:6379" in caplog.text
