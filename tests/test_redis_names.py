"""Circuit names and client encodings the wire must carry (red team of issue 10): a name
the client cannot encode is refused at construction (it took every circuit of the client
down), and a client with another encoding than UTF-8 still hears trips at once."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.redis_helpers import Boom, boom, eventually, ok
from xnai_core import CircuitState, create_redis_circuit_breaker

pytest_plugins = ["tests.redis_fixtures"]


@pytest.mark.parametrize("where", ["name", "key_prefix"])
async def test_a_name_the_client_cannot_encode_is_refused_and_harms_no_other_circuit(
    private_redis: PrivateRedis, where: str
) -> None:
    """A lone surrogate cannot be sent as UTF-8: every script of that circuit failed in
    redis-py's encoder, which the link took for Redis being down for every circuit."""
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    good = create_redis_circuit_breaker("svc", client, failure_threshold=2)
    try:
        await good.call(ok)
        prefix = "xnai:\ud800:" if where == "key_prefix" else "xnai:cb:"
        name = "bad\ud800" if where == "name" else "bad"
        try:
            bad = create_redis_circuit_breaker(name, client, key_prefix=prefix)
        except ValueError as exc:
            refused = str(exc)
        else:  # before the fix: accepted, and its first call took the link down
            refused = ""
            try:
                await bad.call(ok)
            finally:
                await bad.close()
        await good.call(ok)
        assert good.store.available
        assert f"'{where}'" in refused
    finally:
        await good.close()
        await client.aclose()


@pytest.mark.parametrize("decode", [False, True])
async def test_a_client_encoding_other_than_utf8_hears_trips_by_message(
    private_redis: PrivateRedis, decode: bool
) -> None:
    """A client built with ``encoding="latin-1"`` sends the name in Latin-1; the
    subscription must read the channel back the same way, not as UTF-8 (the trip then
    came only with the resync, here an hour away)."""
    clients = [
        aioredis.Redis(
            host="127.0.0.1", port=private_redis.port, encoding="latin-1", decode_responses=decode
        )
        for _ in range(2)
    ]
    a, b = (
        create_redis_circuit_breaker(
            "café", c, failure_threshold=2, recovery_timeout=60, resync_interval=3600
        )
        for c in clients
    )
    try:
        await a.call(ok)
        await b.call(ok)
        for _ in range(2):
            with pytest.raises(Boom):
                await a.call(boom)
        await eventually(lambda: b.state is CircuitState.OPEN, timeout=5)
    finally:
        for breaker in (a, b):
            await breaker.close()
        for client in clients:
            await client.aclose()
    await asyncio.sleep(0)
