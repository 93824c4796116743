"""A config reload that changes the alert sinks, through the real ServiceRuntime: an outage
under way keeps its resolve, new sinks hear of it, unchanged sinks keep their state."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerting_helpers import BlackHole, Receiver, Reply, alert, wait_for
from tests.conftest import free_port
from tests.service_helpers import Behaviour, ServiceProcess, http_service
from tests.service_helpers import wait_for as blocking_wait
from xnai_core.service import parse_config
from xnai_core.service.runtime import ServiceRuntime


@pytest.fixture
def hooks() -> Iterator[dict[str, Receiver]]:
    servers = {name: Receiver() for name in ("a", "b", "c")}
    yield servers
    for server in servers.values():
        server.close()


def config(
    port: int,
    sinks: list[dict[str, Any]],
    *,
    interval: float = 0.1,
    gone: int | None = None,
    escalate: bool = False,
    env: dict[str, str] | None = None,
) -> Any:
    db: dict[str, Any] = {"name": "db", "type": "tcp", "host": "127.0.0.1", "port": port}
    if escalate:
        db["recovery"] = [{"action": "manual_intervention", "failure_threshold": 1}]
    services = [db]
    if gone is not None:
        services.append({"name": "gone", "type": "tcp", "host": "127.0.0.1", "port": gone})
    return parse_config(
        {
            "monitor": {
                "check_interval": interval,
                "failure_threshold": 1,
                "success_threshold": 1,
            },
            "services": services,
            "alerts": sinks,
        },
        env=env or {},
    )


def hook(name: str, receiver: Receiver, **options: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": name, "url": f"{receiver.url}/{name}", **options}


def events(receiver: Receiver) -> list[tuple[str, str]]:
    return [(body["alert"]["key"], body["event"]) for body in receiver.bodies()]


def resolved_at(receiver: Receiver) -> Callable[[], bool]:
    return lambda: ("db:status", "resolved") in events(receiver)


def listen(port: int) -> socket.socket:
    """The checked service comes up: something listens on its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


async def test_a_reload_keeps_unchanged_sinks_and_hands_the_outage_to_new_ones(
    hooks: dict[str, Receiver],
) -> None:
    """Down with sinks a and b; reload with a unchanged, b changed (same destination) and c
    new; the service comes back: a and b each got one firing and one resolve, c was told of
    the outage at the reload and got its resolve."""
    port = free_port()
    first = config(port, [hook("a", hooks["a"]), hook("b", hooks["b"])])
    second = config(
        port,
        [hook("a", hooks["a"]), hook("b", hooks["b"], timeout=7), hook("c", hooks["c"])],
    )
    runtime = ServiceRuntime(first)
    await runtime.start()
    up = None
    try:
        await wait_for(lambda: events(hooks["a"]) == [("db:status", "firing")])
        await wait_for(lambda: events(hooks["b"]) == [("db:status", "firing")])
        kept = runtime.sinks[0]
        changes = await runtime.reload(second)
        assert runtime.sinks[0] is kept
        assert changes == ["alert sink 'b' added or changed", "alert sink 'c' added or changed"]
        await wait_for(lambda: events(hooks["c"]) == [("db:status", "firing")])
        up = listen(port)
        for receiver in hooks.values():
            await wait_for(resolved_at(receiver))
    finally:
        await runtime.stop()
        if up is not None:
            up.close()
    for name in "abc":
        assert events(hooks[name]) == [("db:status", "firing"), ("db:status", "resolved")], name


async def test_a_kept_sink_keeps_its_queue_and_retries_through_a_reload(
    hooks: dict[str, Receiver],
) -> None:
    """Sink a is mid-retry (its receiver answered 503) when another sink is added: a keeps
    its pending notice and its attempt count, and delivers it; nothing is dropped."""
    port = free_port()
    hooks["a"].script.extend([Reply(503), Reply(503)])
    first = config(port, [hook("a", hooks["a"])])
    second = config(port, [hook("a", hooks["a"]), hook("c", hooks["c"])])
    runtime = ServiceRuntime(first)
    await runtime.start()
    try:
        await wait_for(lambda: hooks["a"].answers[:1] == [503])
        kept = runtime.sinks[0]
        await runtime.reload(second)
        assert runtime.sinks[0] is kept
        await wait_for(lambda: kept.stats().sent == 1)
        await wait_for(lambda: events(hooks["c"]) == [("db:status", "firing")])
        assert kept.stats().dropped == 0
    finally:
        await runtime.stop()
    assert hooks["a"].answers == [503, 503, 200]


async def test_a_sink_moved_to_a_new_destination_announces_the_outage_there(
    hooks: dict[str, Receiver],
) -> None:
    """Sink b now points at receiver c: c hears of the outage under way and of its end;
    the old destination keeps the page it had (not resolved, named in a WARNING)."""
    port = free_port()
    first = config(port, [hook("b", hooks["b"])])
    second = config(port, [hook("b", hooks["c"])])
    runtime = ServiceRuntime(first)
    await runtime.start()
    up = None
    try:
        await wait_for(lambda: events(hooks["b"]) == [("db:status", "firing")])
        await runtime.reload(second)
        await wait_for(lambda: events(hooks["c"]) == [("db:status", "firing")])
        up = listen(port)
        await wait_for(resolved_at(hooks["c"]))
    finally:
        await runtime.stop()
        if up is not None:
            up.close()
    assert events(hooks["b"]) == [("db:status", "firing")]
    assert events(hooks["c"]) == [("db:status", "firing"), ("db:status", "resolved")]


async def test_a_removed_sink_flushes_what_it_owes_before_closing(
    hooks: dict[str, Receiver],
) -> None:
    """Sink b is removed while its notice waits out its first retry (at most 1 s): it is
    delivered within the 2 s flush deadline, not dropped."""
    port = free_port()
    hooks["b"].script.append(Reply(503))
    first = config(port, [hook("a", hooks["a"]), hook("b", hooks["b"])])
    second = config(port, [hook("a", hooks["a"])])
    runtime = ServiceRuntime(first)
    await runtime.start()
    try:
        await wait_for(lambda: hooks["b"].answers == [503])
        removed = runtime.sinks[1]
        changes = await runtime.reload(second)
        assert changes == ["alert sink 'b' removed"]
        assert removed.stats().sent == 1
        assert removed.stats().dropped == 0
    finally:
        await runtime.stop()
    assert events(hooks["b"]) == [("db:status", "firing"), ("db:status", "firing")]


@pytest.mark.slow
def test_sighup_to_the_service_adds_a_sink_that_hears_of_the_outage_and_its_end(
    hooks: dict[str, Receiver], tmp_path: Path
) -> None:
    """The real ``xnai-core serve``: down, SIGHUP with a second webhook; the service comes
    back: both receivers get the firing and the resolve, each once."""
    with http_service(Behaviour(status=503)) as (base, behaviour):

        def text(*names: str) -> str:
            tables = "".join(
                f'[[alerts]]\ntype = "webhook"\nname = "{n}"\nurl = "{hooks[n].url}/{n}"\n'
                for n in names
            )
            return (
                "[monitor]\ncheck_interval = 0.2\nfailure_threshold = 1\n"
                "success_threshold = 1\n\n"
                f'[[services]]\nname = "api"\ntype = "http"\nurl = "{base}/health"\n\n' + tables
            )

        path = tmp_path / "service.toml"
        path.write_text(text("a"))
        service = ServiceProcess(path).start()
        try:
            assert blocking_wait(lambda: events(hooks["a"]) == [("api:status", "firing")], 30)
            path.write_text(text("a", "b"))
            service.signal(signal.SIGHUP)
            assert blocking_wait(lambda: events(hooks["b"]) == [("api:status", "firing")], 30), (
                service.log()
            )
            behaviour.status = 200
            assert blocking_wait(lambda: all(len(events(hooks[n])) == 2 for n in "ab"), 30), (
                service.log()
            )
        finally:
            service.stop()
    for name in "ab":
        assert events(hooks[name]) == [("api:status", "firing"), ("api:status", "resolved")]


async def test_a_full_rebuild_carries_the_outage_and_keeps_unchanged_sinks(
    hooks: dict[str, Receiver],
) -> None:
    """A [monitor] change rebuilds the runtime; the new config checks db where it is up (the
    old monitor never saw it recover) and drops service "gone": sink a (kept) gets no second
    firing, and both resolves; sink c (new) hears of db's outage and of its end."""
    down, up_port, gone = free_port(), free_port(), free_port()
    first = config(down, [hook("a", hooks["a"])], gone=gone)
    second = config(up_port, [hook("a", hooks["a"]), hook("c", hooks["c"])], interval=0.15)
    runtime = ServiceRuntime(first)
    await runtime.start()
    up = listen(up_port)
    try:
        await wait_for(lambda: len(events(hooks["a"])) == 2)
        kept = runtime.sinks[0]
        changes = await runtime.reload(second)
        assert changes == ["monitor, redis_url or [recovery] changed: rebuilt all"]
        assert runtime.sinks[0] is kept
        await wait_for(lambda: len(events(hooks["a"])) == 4)
        await wait_for(resolved_at(hooks["c"]))
    finally:
        await runtime.stop()
        up.close()
    assert sorted(events(hooks["a"])) == [
        ("db:status", "firing"),
        ("db:status", "resolved"),
        ("gone:status", "firing"),
        ("gone:status", "resolved"),
    ]
    assert events(hooks["c"]) == [("db:status", "firing"), ("db:status", "resolved")]


async def test_a_removed_sink_ignores_what_the_recovery_managers_still_send_it(
    hooks: dict[str, Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """The recovery managers cannot forget a handler: after sink b is removed, db's
    escalation still reaches it. It is ignored, not counted as a dropped page (which would
    set off the page-path alert on the drop counter) nor logged as an ERROR."""
    caplog.set_level(logging.WARNING)
    port = free_port()
    up = listen(port)
    first = config(port, [hook("a", hooks["a"]), hook("b", hooks["b"])], escalate=True)
    second = config(port, [hook("a", hooks["a"])], escalate=True)
    runtime = ServiceRuntime(first)
    await runtime.start()
    try:
        removed = runtime.sinks[1]
        await runtime.reload(second)
        up.close()
        await wait_for(lambda: ("db:manual_intervention", "firing") in events(hooks["a"]))
    finally:
        await runtime.stop()
        up.close()
    assert events(hooks["b"]) == []
    assert removed.stats().dropped == 0
    alerting = [r for r in caplog.records if r.name.startswith("xnai_core.alerting")]
    assert [r.getMessage() for r in alerting if r.levelno >= logging.ERROR] == []


async def test_a_raise_waiting_for_its_retry_moves_to_the_changed_sink_once(
    hooks: dict[str, Receiver],
) -> None:
    """Sink b's raise got a 503 and waits for its retry when b's settings change: the new b
    sends it (once), the old one does not retry it too, and nothing counts as dropped."""
    port = free_port()
    hooks["b"].script.append(Reply(503))
    first = config(port, [hook("b", hooks["b"])])
    second = config(port, [hook("b", hooks["b"], timeout=7)])
    runtime = ServiceRuntime(first)
    await runtime.start()
    try:
        await wait_for(lambda: hooks["b"].answers == [503])
        old = runtime.sinks[0]
        await runtime.reload(second)
        new = runtime.sinks[0]
        await wait_for(lambda: new.stats().sent == 1)
    finally:
        await runtime.stop()
    assert hooks["b"].answers == [503, 200]
    assert (old.stats().sent, old.stats().dropped) == (0, 0)


@pytest.mark.parametrize("answer", [200, 503])
async def test_a_slack_raise_in_flight_during_a_reload_is_posted_once(
    hooks: dict[str, Receiver], answer: int
) -> None:
    """The raise is on its way to Slack (a slow answer) when a reload changes the sink's
    settings, not its URL: Slack gets one message. Accepted, the new sink knows it was
    told; refused (503), only the new sink retries it (before: the old sink delivered it
    or retried it, and the new one announced it too: two messages)."""
    port = free_port()
    slack = hooks["a"]
    slack.script.append(Reply(answer, delay=1.0))
    env = {"SLACK_URL": f"{slack.url}/services/T0000/B0000/abcdefghijklmnop"}

    def chat(timeout: float) -> dict[str, Any]:
        return {"type": "slack", "name": "chat", "webhook_url_env": "SLACK_URL", "timeout": timeout}

    runtime = ServiceRuntime(config(port, [chat(5)], env=env))
    await runtime.start()
    try:
        await wait_for(lambda: len(slack.requests) == 1)  # the raise is on its way
        old = runtime.sinks[0]
        await runtime.reload(config(port, [chat(6)], env=env))
        new = runtime.sinks[0]
        assert new is not old
        await wait_for(lambda: 200 in slack.answers)
        await new.drain()
        assert new.told_active() == ["db:status"]
    finally:
        await runtime.stop()
    assert slack.answers == ([200] if answer == 200 else [503, 200])
    assert old.stats().dropped == new.stats().dropped == 0


async def test_a_full_rebuild_cancelled_mid_way_leaves_nothing_running(
    hooks: dict[str, Receiver],
) -> None:
    """The reload is cancelled (the service is stopping) while the removed sink flushes to a
    hung receiver: stop() then closes the new runtime, the kept sink included."""
    hole = BlackHole()
    port = free_port()
    stuck = {"type": "webhook", "name": "stuck", "url": f"{hole.url}/x", "timeout": 30}
    first = config(port, [hook("a", hooks["a"]), stuck])
    second = config(port, [hook("a", hooks["a"])], interval=0.15)
    runtime = ServiceRuntime(first)
    await runtime.start()
    try:
        await wait_for(lambda: events(hooks["a"]) == [("db:status", "firing")])
        kept = runtime.sinks[0]
        reloading = asyncio.ensure_future(runtime.reload(second))
        await asyncio.sleep(0.5)  # the removed sink's flush waits on the hung receiver
        reloading.cancel()
        await asyncio.gather(reloading, return_exceptions=True)
    finally:
        await runtime.stop()
        hole.close()
    kept.submit(alert(service="late"))
    assert kept.stats().dropped_by_reason["shutdown"] == 1


async def test_a_reloaded_alertmanager_sink_posts_the_alert_with_its_new_labels_at_once(
    hooks: dict[str, Receiver],
) -> None:
    """Alertmanager knows an alert by its labels: when a reload changes them, the alert under
    way is posted with the new ones at once, not a resend_interval (60 s) later."""
    port = free_port()

    def manager(env: str) -> dict[str, Any]:
        return {"type": "alertmanager", "urls": [hooks["a"].url], "labels": {"env": env}}

    runtime = ServiceRuntime(config(port, [manager("blue")]))
    await runtime.start()
    try:
        await wait_for(lambda: len(hooks["a"].requests) == 1)
        await runtime.reload(config(port, [manager("green")]))
        await wait_for(lambda: len(hooks["a"].requests) == 2, timeout=10)
    finally:
        await runtime.stop()
    envs = [body[0]["labels"]["env"] for body in hooks["a"].bodies()]
    assert envs == ["blue", "green"]
