"""The test fixtures themselves work against the real servers."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.conftest import PrivateRedis


async def test_private_redis_answers_and_dies(private_redis: PrivateRedis) -> None:
    """A private server answers PING, and is gone after kill()."""
    client = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=0.5)
    assert await client.ping() is True
    private_redis.kill()
    try:
        await client.ping()
    except (ConnectionError, OSError, aioredis.ConnectionError):
        pass
    else:
        raise AssertionError("PING succeeded against a killed server")
    finally:
        await client.aclose()


async def test_shared_redis_cleans_its_prefix(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Keys under the test's prefix can be written to the shared server."""
    await shared_redis.set(f"{key_prefix}:k", "v")
    assert await shared_redis.get(f"{key_prefix}:k") == b"v"
