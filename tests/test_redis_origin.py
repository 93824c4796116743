"""Who made a transition: a Redis-backed breaker reports its own changes as local
(``remote=False``, no "(in another process)" in the reason) exactly once, whichever
arrives first, the script's message or its answer, and another's as remote.

A script that changes the circuit PUBLISHes the new state with its request id (its
origin); the store knows its own requests, so a message that overtakes the answer is
taken as that answer would be. Private redis-server behind the fault proxy: the
proxy holds back the scripts' answers (the message comes first) or the messages (the
answer comes first).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.fault_proxy import Connection, FaultProxy, replies_to, replies_to_script
from tests.metrics_helpers import Recorder, no_global_hooks  # noqa: F401 (an autouse fixture)
from tests.redis_helpers import Boom, Clock, boom, eventually, ok, state_is
from xnai_core import CircuitBreaker, RedisStore, create_redis_circuit_breaker
from xnai_core.circuit.redis_codec import message_reply
from xnai_core.events import StateChanged

BREAKER_LOGGER = "xnai_core.circuit"
# Long enough that the other side's news is in long before it, short against op_timeout.
HELD = 0.4

# Every kind of transition one process makes: a trip, a half-open episode opened by
# its ADMIT and closed by its trial, force_open, reset, force_open, force_close.
OWN_STEPS = [
    ("closed", "open", "2 consecutive failures reached the threshold"),
    ("open", "half_open", "recovery timeout elapsed"),
    ("half_open", "closed", "trial calls succeeded"),
    ("closed", "open", "forced open"),
    ("open", "closed", "reset"),
    ("closed", "open", "forced open"),
    ("open", "closed", "forced closed"),
]


def messages_only(connection: Connection, command: str | None) -> bool:
    """Messages (pushed, answering no command) on the subscription's connection."""
    return command is None and "PSUBSCRIBE" in connection.sent


def store_of(breaker: CircuitBreaker) -> RedisStore:
    store = breaker.store
    assert isinstance(store, RedisStore)
    return store


class Timeline:
    """What one breaker heard, in order: ``("message", ver)`` and ``("event", ver, ...)``,
    ``ver`` the version of the hash the message carries, or the event installed."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.items: list[tuple[str, int, tuple[str, ...]]] = []
        self._store = store_of(breaker)
        heard = self._store.on_message

        def on_message(payload: str) -> None:
            self.items.append(("message", int(payload.split(" ")[1]), ()))  # its ver
            heard(payload)

        # The link calls it through the instance.
        self._store.on_message = on_message  # type: ignore[method-assign]
        breaker.hooks.install(self)

    def __call__(self, event: object) -> None:
        if isinstance(event, StateChanged):
            what = (event.old, event.new, event.reason, str(event.remote))
            self.items.append(("event", self._store.mirror.ver, what))

    @property
    def events(self) -> list[tuple[str, ...]]:
        return [what for kind, _, what in self.items if kind == "event"]

    def heard(self, kind: str) -> list[int]:
        return [ver for item_kind, ver, _ in self.items if item_kind == kind]


def transition_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == BREAKER_LOGGER and record.getMessage().startswith(f"circuit '{name}' ")
    ]


async def run_own_steps(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(boom)
    clock.now += 30
    assert await breaker.call(ok) == "ok"  # ADMIT half-opens; the one trial closes it
    await breaker.force_open()
    await breaker.reset()
    await breaker.force_open()
    await breaker.force_close()


@pytest.mark.parametrize("first", ["message", "answer", "either"])
async def test_own_transitions_are_reported_local_once(
    private_redis: PrivateRedis,
    fault_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    first: str,
) -> None:
    """Each transition this breaker makes is one event and one log line, local, with its
    own reason; the message of the script that made it arrives before its answer
    ("message": the answers are held), after it ("answer": the messages are held), or as
    it comes ("either")."""
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    clock = Clock()
    breaker = create_redis_circuit_breaker(
        "svc",
        client,
        failure_threshold=2,
        recovery_timeout=30,
        half_open_max_calls=1,
        timeout=None,
        op_timeout=3.0,
        resync_interval=3600,
        clock=clock,
    )
    timeline = Timeline(breaker)
    try:
        await store_of(breaker).start()
        if first == "message":
            fault_proxy.delay_replies(HELD, when=replies_to("EVALSHA"))
        elif first == "answer":
            fault_proxy.delay_replies(HELD, when=messages_only)
        await run_own_steps(breaker, clock)
        # Every transition's message is in (each was published: it changed the state).
        await eventually(lambda: set(timeline.heard("event")) <= set(timeline.heard("message")))
        await asyncio.sleep(0.1)  # a second report of any of them would show by now
        assert timeline.events == [(old, new, why, "False") for old, new, why in OWN_STEPS]
        assert transition_lines(caplog, "svc") == [
            f"circuit 'svc' {old} -> {new}: {why}" for old, new, why in OWN_STEPS
        ]
        if first != "either":
            # The order the test meant: each event after the message of its version
            # (installed from it), or before it (installed from the answer).
            for index, (kind, ver, _) in enumerate(timeline.items):
                if kind == "event":
                    before = ("message", ver, ()) in timeline.items[:index]
                    assert before is (first == "message"), timeline.items
        assert breaker.get_metrics()["redis_stalls"] == 0
    finally:
        await breaker.close()
        await client.aclose()


async def test_a_transition_made_by_another_breaker_object_is_remote(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two breakers of one name in this process, on one client (one link) and on
    another client: a trip one of them makes is local to it and remote to the others.
    "Another process" is any other breaker object: they share nothing but Redis."""
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    one = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    other = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    made = [
        create_redis_circuit_breaker("svc", client, failure_threshold=2, timeout=None)
        for client in (one, one, other)
    ]
    hooks = [Recorder() for _ in made]
    for breaker, hook in zip(made, hooks, strict=True):
        breaker.hooks.install(hook)
        await store_of(breaker).start()
    try:
        for _ in range(2):
            with pytest.raises(Boom):
                await made[0].call(boom)
        await eventually(lambda: all(hook.of(StateChanged) for hook in hooks))
        await asyncio.sleep(0.1)
        seen = [[(e.old, e.new, e.remote) for e in hook.of(StateChanged)] for hook in hooks]
        assert seen == [
            [("closed", "open", False)],
            [("closed", "open", True)],
            [("closed", "open", True)],
        ]
        reasons = [hook.of(StateChanged)[0].reason for hook in hooks]
        assert reasons[0] == "2 consecutive failures reached the threshold"
        assert reasons[1] == reasons[2] == f"{reasons[0]} (in another process)"
        assert len(transition_lines(caplog, "svc")) == 3
    finally:
        for breaker in made:
            await breaker.close()
        await one.aclose()
        await other.aclose()


@pytest.mark.slow
async def test_a_trip_in_another_process_is_remote(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Another OS process trips the circuit by its failures and then forces it closed:
    here, two remote transitions; there, the same two, local (its own log lines)."""
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    here = create_redis_circuit_breaker("svc", client, failure_threshold=2, timeout=None)
    hook = Recorder()
    here.hooks.install(hook)
    await store_of(here).start()
    script = textwrap.dedent(f"""
        import asyncio, logging, redis.asyncio as aioredis
        from xnai_core import create_redis_circuit_breaker
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
        async def boom():
            raise RuntimeError("down")
        async def main():
            client = aioredis.Redis(host="127.0.0.1", port={private_redis.port})
            b = create_redis_circuit_breaker("svc", client, failure_threshold=2, timeout=None)
            for _ in range(2):
                try:
                    await b.call(boom)
                except RuntimeError:
                    pass
            await b.force_close()
            await b.close()
            await client.aclose()
        asyncio.run(main())
    """)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    try:
        await eventually(lambda: len(hook.of(StateChanged)) == 2)
        await asyncio.sleep(0.1)
        assert [(e.old, e.new, e.remote, e.reason) for e in hook.of(StateChanged)] == [
            (
                "closed",
                "open",
                True,
                "2 consecutive failures reached the threshold (in another process)",
            ),
            ("open", "closed", True, "forced (in another process)"),
        ]
        theirs = [line for line in err.decode().splitlines() if line.startswith("LOG circuit")]
        assert theirs == [
            "LOG circuit 'svc' closed -> open: 2 consecutive failures reached the threshold",
            "LOG circuit 'svc' open -> closed: forced closed",
        ]
        assert here.state == "closed"
    finally:
        await here.close()
        await client.aclose()


def test_a_message_names_its_origin() -> None:
    """Eleven fields: the snapshot and who made its last transition ("-": unknown);
    ten: a message of a version that sent no origin (unknown: another's)."""
    snapshot = "1764347000123456 3 7 open 2 1764347012345678 0 1 0 -"
    reply = message_reply(f"{snapshot} 0a1b2c3d4e5f:17")
    assert (reply.ver, reply.snap.state.value, reply.origin) == (3, "open", "0a1b2c3d4e5f:17")
    assert message_reply(f"{snapshot} -").origin == ""
    assert message_reply(snapshot).origin == ""
    for bad in (f"{snapshot} a\x1bb", f"{snapshot} {'x' * 101}", f"{snapshot} 1 2"):
        with pytest.raises(ValueError, match=r"origin|10 fields"):
            message_reply(bad)


async def test_an_own_transition_a_read_finds_first_is_local(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """The trip's message and answer are both held; a resync's READ, meanwhile, finds
    the circuit open: the hash says which request made the transition (``by``), this
    breaker's own, so it is reported local, once (the message and answer, later, are
    stale)."""
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    breaker = create_redis_circuit_breaker(
        "svc", client, failure_threshold=1, timeout=None, op_timeout=3.0, resync_interval=3600
    )
    timeline = Timeline(breaker)
    store = store_of(breaker)
    direct = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    try:
        await store.start()
        assert store.link is not None
        fault_proxy.delay_replies(1.5 * HELD, when=messages_only)
        fault_proxy.delay_replies(2.0, when=replies_to_script(store.link.scripts["failure"].sha))
        failing = asyncio.create_task(breaker.call(boom))
        await eventually(lambda: state_is(direct, "open"))
        assert await store.sync()  # READ, not held: the first news of the trip
        assert timeline.events == [
            ("closed", "open", "1 consecutive failures reached the threshold", "False")
        ]
        assert not failing.done()  # its answer is still held
        with pytest.raises(Boom):
            await failing
        await eventually(lambda: set(timeline.heard("event")) <= set(timeline.heard("message")))
        await asyncio.sleep(0.1)
        assert len(timeline.events) == 1
        # It was the READ's news: before the message of its version too.
        (trip,) = [ver for kind, ver, _ in timeline.items if kind == "event"]
        assert [kind for kind, ver, _ in timeline.items if ver == trip] == ["event", "message"]
    finally:
        await breaker.close()
        await client.aclose()
        await direct.aclose()


async def test_a_trip_another_made_is_remote_though_own_answer_told_it(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """Another breaker trips the circuit; this one, not told yet (its messages are
    held), reports a failure of the same epoch: its FAILURE changes nothing, and its
    answer shows the circuit open. That trip is the other's: remote, once."""
    here_client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    there_client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    here, there = (
        create_redis_circuit_breaker(
            "svc", client, failure_threshold=2, timeout=None, op_timeout=3.0
        )
        for client in (here_client, there_client)
    )
    timeline = Timeline(here)
    try:
        await store_of(here).start()
        await store_of(there).start()
        fault_proxy.delay_replies(HELD, when=messages_only)
        for _ in range(2):
            with pytest.raises(Boom):
                await there.call(boom)
        with pytest.raises(Boom):
            await here.call(boom)  # admitted on the closed mirror; fenced in Redis
        reason = "2 consecutive failures reached the threshold (in another process)"
        assert timeline.events == [("closed", "open", reason, "True")]
        await eventually(lambda: len(timeline.heard("message")) >= 2)
        await asyncio.sleep(0.1)
        assert len(timeline.events) == 1
    finally:
        for breaker, client in ((here, here_client), (there, there_client)):
            await breaker.close()
            await client.aclose()


async def test_a_half_opening_another_made_is_remote_though_own_admit_told_it(
    private_redis: PrivateRedis, fault_proxy: FaultProxy
) -> None:
    """Past the recovery timeout another breaker's ADMIT half-opens the circuit and
    takes a permit; this one's ADMIT, not told yet, takes the second: the half-opening
    is the other's (remote), and so is the closing by the other's trial."""
    clock = Clock()
    here_client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    there_client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    here, there = (
        create_redis_circuit_breaker(
            "svc",
            client,
            failure_threshold=1,
            recovery_timeout=30,
            half_open_max_calls=2,
            timeout=None,
            op_timeout=3.0,
            clock=clock,
        )
        for client in (here_client, there_client)
    )
    timeline = Timeline(here)
    go_on = asyncio.Event()

    async def trial() -> str:
        await go_on.wait()
        return "ok"

    try:
        await store_of(here).start()
        await store_of(there).start()
        with pytest.raises(Boom):
            await there.call(boom)
        await eventually(lambda: here.state == "open")
        fault_proxy.delay_replies(HELD, when=messages_only)
        clock.now += 30
        theirs = asyncio.create_task(there.call(trial))
        await eventually(lambda: there.state == "half_open")
        assert await here.call(ok) == "ok"
        go_on.set()
        assert await theirs == "ok"
        await eventually(lambda: here.state == "closed")
        await asyncio.sleep(0.1)
        assert timeline.events == [
            (
                "closed",
                "open",
                "1 consecutive failures reached the threshold (in another process)",
                "True",
            ),
            ("open", "half_open", "recovery timeout elapsed (in another process)", "True"),
            ("half_open", "closed", "trial calls succeeded (in another process)", "True"),
        ]
    finally:
        go_on.set()
        for breaker, client in ((here, here_client), (there, there_client)):
            await breaker.close()
            await client.aclose()
