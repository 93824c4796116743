"""The fault proxy does what it says, against a real redis-server and real redis-py clients.

Clients are built as users build them (``redis.asyncio.Redis(host=..., port=...)``): the
default retry policy is on, so a dropped reply makes redis-py send the command again,
which is exactly the fault the circuit store must survive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import PrivateRedis
from tests.fault_proxy import (
    FaultProxy,
    first_word,
    frame_end,
    on_connections_that_sent,
    replies_to,
    replies_to_script,
)

INCR_SCRIPT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def direct(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the private server that bypasses the proxy: what Redis really did."""
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    yield client
    await client.aclose()


@pytest.fixture
async def client(fault_proxy: FaultProxy) -> AsyncIterator[aioredis.Redis]:
    """A client through the proxy, built as users build them (default retry on)."""
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    yield client
    await client.aclose()


async def raw_connection(
    proxy: FaultProxy,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"PING\r\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"+PONG\r\n"
    return reader, writer


async def test_a_dropped_reply_was_acted_on_and_the_default_retry_runs_it_again(
    fault_proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    rule = fault_proxy.drop_replies(replies_to("INCRBY"))  # redis-py sends INCR as INCRBY
    assert await client.incr("n") == 2  # Redis ran it, the reply was lost, redis-py resent it
    assert rule.hits == 1
    assert await direct.get("n") == b"2"
    assert fault_proxy.accepted == 2  # the retry came on a new connection


async def test_without_retries_the_client_sees_the_drop(
    fault_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    once = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port, retry=Retry(NoBackoff(), 0))
    fault_proxy.drop_replies(replies_to("INCRBY"))
    try:
        with pytest.raises(RedisConnectionError):
            await once.incr("n")
    finally:
        await once.aclose()
    assert await direct.get("n") == b"1"  # Redis acted all the same


async def test_the_next_n_replies(
    fault_proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    fault_proxy.drop_replies(replies_to("INCRBY"), count=2)
    assert await client.incr("n") == 3
    assert await client.incr("n") == 4  # the rule is spent


async def test_only_replies_to_evalsha(
    fault_proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    sha = await direct.script_load(INCR_SCRIPT)
    rule = fault_proxy.drop_replies(replies_to("EVALSHA"))
    await client.set("other", "x")
    assert await client.get("other") == b"x"
    assert rule.hits == 0  # SET and GET passed untouched
    assert await client.evalsha(sha, 1, "n") == 2
    assert rule.hits == 1
    assert await direct.get("n") == b"2"


async def test_only_replies_to_one_script(
    fault_proxy: FaultProxy, client: aioredis.Redis, direct: aioredis.Redis
) -> None:
    incr = await direct.script_load(INCR_SCRIPT)
    other = await direct.script_load("return redis.call('INCR', KEYS[1] .. ':other')")
    rule = fault_proxy.drop_replies(replies_to_script(incr))
    assert await client.evalsha(other, 1, "n") == 1
    assert rule.hits == 0
    assert await client.evalsha(incr, 1, "n") == 2
    assert rule.hits == 1


async def test_delayed_replies_come_late_and_in_order(
    fault_proxy: FaultProxy, client: aioredis.Redis
) -> None:
    await client.ping()  # connected before the delay starts
    fault_proxy.delay_replies(0.3, when=replies_to("INCRBY", "GET"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.incr("n")
        pipe.get("n")
        pipe.incr("n")
        assert await pipe.execute() == [1, b"1", 2]
    assert loop.time() - started >= 0.3
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.get("n"), 0.1)


async def test_latency_delays_every_packet_connection_set_up_included(
    fault_proxy: FaultProxy,
) -> None:
    fault_proxy.set_latency(0.1, 0.15)
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await client.ping()
        first = loop.time() - started
        started = loop.time()
        await client.ping()
        second = loop.time() - started
    finally:
        await client.aclose()
    assert "CLIENT" in fault_proxy.connections[0].sent  # redis-py's set-up round trip
    assert second >= 0.2  # one round trip: two packets
    assert first >= 0.4  # set-up, then the command


async def test_a_black_hole_keeps_the_connection_open_and_silent(
    fault_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    reader, writer = await raw_connection(fault_proxy)
    try:
        assert fault_proxy.black_hole() == 1
        writer.write(b"SET hole 1\r\n")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)  # no reply, no FIN, no RST
        assert not reader.at_eof()
        assert await direct.get("hole") is None  # the request went nowhere
        assert len(fault_proxy.connections) == 1
    finally:
        writer.close()


async def test_black_hole_the_subscriber_only(
    fault_proxy: FaultProxy, client: aioredis.Redis
) -> None:
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe("news:*")
        message = await pubsub.get_message(timeout=10)
        assert message is not None
        assert message["type"] == "psubscribe"
        assert fault_proxy.black_hole(lambda c: "PSUBSCRIBE" in c.sent) == 1
        assert await client.publish("news:1", "hello") == 1  # Redis delivered it...
        assert await pubsub.get_message(timeout=0.3) is None  # ...into the hole
        assert await client.ping()  # the other connection is untouched
    finally:
        await pubsub.aclose()


async def test_a_rule_picks_messages_on_subscriber_connections(
    fault_proxy: FaultProxy, client: aioredis.Redis
) -> None:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("a", "b")  # two replies to one command
        for _ in range(2):
            assert await pubsub.get_message(timeout=10) is not None
        rule = fault_proxy.black_hole_replies(on_connections_that_sent("SUBSCRIBE"))
        assert await client.publish("a", "x") == 1
        assert await pubsub.get_message(timeout=0.3) is None
        assert rule.hits == 1
    finally:
        await pubsub.aclose()


async def test_a_black_holed_reply_times_out_and_the_retry_goes_around_it(
    fault_proxy: FaultProxy, direct: aioredis.Redis
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port, socket_timeout=0.3)
    rule = fault_proxy.black_hole_replies(replies_to("INCRBY"))
    try:
        assert await client.incr("n") == 2  # timed out, retried on a new connection
    finally:
        await client.aclose()
    assert rule.hits == 1


async def test_reset_sends_rst(fault_proxy: FaultProxy, client: aioredis.Redis) -> None:
    reader, writer = await raw_connection(fault_proxy)
    await client.ping()
    try:
        assert fault_proxy.reset() == 2
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 10)
    finally:
        writer.close()
    assert await client.ping()  # redis-py reconnects by itself


async def test_a_drop_can_be_a_reset(fault_proxy: FaultProxy) -> None:
    reader, writer = await raw_connection(fault_proxy)
    try:
        fault_proxy.drop_replies(reset=True)
        writer.write(b"PING\r\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 10)
    finally:
        writer.close()


async def test_heal_ends_every_fault(fault_proxy: FaultProxy, client: aioredis.Redis) -> None:
    fault_proxy.drop_replies(count=None)
    fault_proxy.set_latency(5)
    fault_proxy.heal()
    assert await asyncio.wait_for(client.incr("n"), 10) == 1


async def test_an_upstream_that_refuses_is_refused(
    fault_proxy: FaultProxy, private_redis: PrivateRedis
) -> None:
    private_redis.kill()
    once = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(RedisConnectionError):
            await once.ping()
    finally:
        await once.aclose()


@pytest.mark.parametrize(
    "frame",
    [
        b"+OK\r\n",
        b"$-1\r\n",
        b"$3\r\nabc\r\n",
        b"*2\r\n:1\r\n$1\r\nx\r\n",
        b"%1\r\n+k\r\n*1\r\n_\r\n",
        b"|1\r\n+a\r\n+b\r\n:7\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nd\r\n",
    ],
)
def test_frames_are_delimited(frame: bytes) -> None:
    assert frame_end(frame) == len(frame)
    assert frame_end(frame + b"+next\r\n") == len(frame)
    for cut in range(len(frame)):
        assert frame_end(frame[:cut]) is None


def test_first_word() -> None:
    assert first_word(b"*2\r\n$7\r\nevalsha\r\n$2\r\nab\r\n") == "EVALSHA"
    assert first_word(b"PING\r\n") == "PING"
    assert first_word(b">3\r\n$8\r\npmessage\r\n") == "PMESSAGE"
