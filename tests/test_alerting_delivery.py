"""What is retried, what a slow receiver costs, and who goes first, against loopback receivers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.alerting_helpers import (
    BlackHole,
    Receiver,
    Reply,
    SleepRecorder,
    alert,
    resolved,
    served,
    wait_for,
)
from xnai_core import CustomHealthChecker, HealthMonitor
from xnai_core.alerting import AlertSink, PagerDutySink, SinkStats, SlackSink, WebhookSink

ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from served(Receiver())


async def deliver_one(sink: AlertSink) -> SinkStats:
    """File one alert, wait until the sink is done with it, close the sink: its counts."""
    sink.submit(alert())
    await sink.drain()
    stats = sink.stats()
    await sink.aclose()
    return stats


async def test_http_408_is_retried_like_429_and_5xx(receiver: Receiver) -> None:
    """408 Request Timeout is the server giving up on reading, not a verdict: try again."""
    receiver.script.append(Reply(408, body=b"request timeout"))
    sleep = SleepRecorder()
    sink = WebhookSink(f"{receiver.url}/hook", sleep=sleep, random=lambda: 0.0)
    stats = await deliver_one(sink)
    assert receiver.answers == [408, 200]
    assert (stats.sent, stats.retried, stats.dropped) == (1, 1, 0)


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [
        ("\xb2", 1.0),  # "²": str.isdigit() says yes, float() says no
        ("-5", 1.0),
        ("1.5", 1.0),
        ("soon", 1.0),
        ("Mon, 32 Jan 2026 00:00:00 GMT", 1.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300.0),
        ("9" * 400, 300.0),
        ("7", 7.0),
    ],
)
async def test_a_garbled_retry_after_means_the_backoff_never_a_lost_alert(
    receiver: Receiver, retry_after: str, waited: float
) -> None:
    """A 429 whose ``Retry-After`` is no delay (not ASCII digits, negative, fractional, a
    date out of range) is retried after our own backoff; a huge one is capped."""
    receiver.script.append(Reply(429, {"Retry-After": retry_after}))
    sleep = SleepRecorder()
    sink = WebhookSink(f"{receiver.url}/hook", sleep=sleep, random=lambda: 0.0)
    stats = await deliver_one(sink)
    assert receiver.answers == [429, 200]
    assert (stats.sent, stats.retried, stats.dropped) == (1, 1, 0)
    assert sleep.delays == pytest.approx([waited], abs=0.05)


async def test_retry_after_zero_on_every_429_still_backs_off(receiver: Receiver) -> None:
    """A receiver (a rate limiter, a proxy) answering every request "429, Retry-After: 0":
    the waits are our backoff, the receiver's only a minimum (before: no wait at all, the
    attempts used up in a burst and the page given up within a second)."""
    receiver.validator = lambda request: Reply(429, {"Retry-After": "0"})
    sleep = SleepRecorder()
    sink = WebhookSink(receiver.url, max_attempts=4, sleep=sleep, random=lambda: 0.0)
    await deliver_one(sink)
    assert len(receiver.requests) == 4
    assert sleep.delays == pytest.approx([1.0, 2.0, 4.0], abs=0.05)


async def test_a_slow_slack_answer_is_waited_for_not_sent_twice(receiver: Receiver) -> None:
    """Slack cannot drop a retried copy: an answer slower than ``timeout`` (connecting and
    sending) is still waited for, so the channel gets one message, not two."""
    receiver.script.append(Reply(200, delay=1.0))
    sink = SlackSink(f"{receiver.url}/services/T/B/x", timeout=0.3, sleep=SleepRecorder())
    stats = await deliver_one(sink)
    assert len(receiver.requests) == 1
    assert (stats.sent, stats.retried) == (1, 0)


async def test_slacks_reply_timeout_comes_from_the_service_config(receiver: Receiver) -> None:
    """``reply_timeout`` in a slack ``[[alerts]]`` table reaches the sink: an answer slower
    than it is retried (the price of a shorter wait: a second message)."""
    from xnai_core.service import parse_config
    from xnai_core.service.sinks import build_sinks

    table = {"type": "slack", "webhook_url_env": "SLACK_URL", "timeout": 0.3}
    env = {"SLACK_URL": f"{receiver.url}/services/T/B/x"}
    parsed = parse_config({"alerts": [{**table, "reply_timeout": 0.3}]}, env=env)
    (sink,) = build_sinks(parsed.alerts)
    default = parse_config({"alerts": [table]}, env=env)
    assert build_sinks(default.alerts)[0].reply_timeout == 60.0
    receiver.script.append(Reply(200, delay=1.0))
    sink._sleep = SleepRecorder()
    stats = await deliver_one(sink)
    assert sink.reply_timeout == 0.3
    assert len(receiver.requests) == 2
    assert (stats.sent, stats.retried) == (1, 1)


@pytest.mark.parametrize(("status", "requests", "sent"), [(200, 1, 1), (503, 3, 0)])
async def test_a_reply_cut_short_is_judged_by_its_status(
    receiver: Receiver, status: int, requests: int, sent: int
) -> None:
    """The receiver sends its status line, then the connection breaks mid-body: a 200 is
    delivered (Slack posted the message; before, it was retried and posted again, and
    logged as given up), a 503 is retried as a 503."""
    receiver.validator = lambda request: Reply(status, body=b"partial", cut=True)
    sink = SlackSink(f"{receiver.url}/services/T/B/x", max_attempts=3, sleep=SleepRecorder())
    stats = await deliver_one(sink)
    assert len(receiver.requests) == requests
    assert (stats.sent, stats.retried) == (sent, requests - 1)
    if status == 503:
        assert stats.last_error == "slack: HTTP 503 'partial'"


@pytest.mark.parametrize(
    ("make", "reply"),
    [
        # The status line at once, then a body that stops: the per-read timeout of the
        # reply is the attempt's own bound, which ended the attempt first.
        (lambda url: WebhookSink(f"{url}/hook", timeout=0.5), Reply(200, stall=3.0, cut=True)),
        # A body that keeps coming, a byte at a time: no read ever times out.
        (
            lambda url: SlackSink(f"{url}/services/T/B/x", timeout=0.3, reply_timeout=0.5),
            Reply(200, trickle=0.1, cut=True),
        ),
    ],
    ids=["stalled-body", "trickled-body"],
)
async def test_a_2xx_whose_body_never_ends_is_delivered_once(
    receiver: Receiver, make: Any, reply: Reply
) -> None:
    """The receiver accepted (its status line said 200), then its body stalls or trickles
    past the attempt's deadline: the attempt timed out as a whole, and the notification
    was posted again (a second Slack message), though the docs judge a reply by its
    status line."""
    receiver.script.append(reply)
    sink = make(receiver.url)
    sink._sleep = SleepRecorder()
    stats = await deliver_one(sink)
    assert len(receiver.requests) == 1
    assert (stats.sent, stats.retried, stats.dropped) == (1, 0, 0)


async def test_a_slow_webhook_answer_is_retried_with_the_same_idempotency_key(
    receiver: Receiver,
) -> None:
    """The webhook's retry after a timed-out answer carries the first attempt's delivery id
    (``X-Xnai-Delivery`` and the common ``Idempotency-Key``): a receiver that keys on
    either processes the alert once, though it arrived twice."""
    receiver.script.append(Reply(200, delay=1.0))
    sink = WebhookSink(f"{receiver.url}/hook", timeout=0.3, sleep=SleepRecorder())
    await deliver_one(sink)
    await wait_for(lambda: len(receiver.requests) == 2)
    ids = [request.headers.get("idempotency-key") for request in receiver.requests]
    deliveries = [request.headers.get("x-xnai-delivery") for request in receiver.requests]
    assert ids[0] is not None
    assert len(set(ids)) == 1
    assert deliveries == ids
    assert len({body["id"] for body in receiver.bodies()}) == 1


async def test_a_slow_pagerduty_answer_retried_keeps_one_incident(receiver: Receiver) -> None:
    """PagerDuty's retry after a timeout is the same trigger (same dedup_key): one incident."""
    receiver.script.append(Reply(202, delay=1.0))
    sink = PagerDutySink(ROUTING_KEY, url=receiver.url, timeout=0.3, sleep=SleepRecorder())
    await deliver_one(sink)
    await wait_for(lambda: len(receiver.requests) == 2)
    events = receiver.bodies()
    assert {event["dedup_key"] for event in events} == {"rag_api:status"}
    assert [event["event_action"] for event in events] == ["trigger", "trigger"]


async def test_a_warnings_long_retry_after_does_not_hold_back_a_critical(
    receiver: Receiver,
) -> None:
    """A 429 with Retry-After: 300 on a warning: a critical filed after it is delivered at
    once (the warning keeps waiting for its turn), and the critical's resolve follows it."""
    receiver.script.append(Reply(429, {"Retry-After": "300"}, b"slow down"))
    sink = WebhookSink(f"{receiver.url}/hook", min_severity="info")
    warning = alert(service="search", kind="success_rate", severity="warning")
    sink.submit(warning)
    await wait_for(lambda: receiver.answers == [429])
    critical = alert(service="db")
    sink.submit(critical)
    sink.submit(resolved(critical))
    await wait_for(lambda: sink.stats().sent == 2, timeout=10)
    stats = sink.stats()
    await sink.aclose(timeout=0.1)
    bodies = receiver.bodies()
    assert [(b["alert"]["key"], b["event"]) for b in bodies] == [
        ("search:success_rate", "firing"),
        ("db:status", "firing"),
        ("db:status", "resolved"),
    ]
    assert stats.queued == 1  # the warning, still waiting out its Retry-After
    assert sink.stats().dropped_by_reason["shutdown"] == 1


async def test_a_retry_after_on_a_warning_holds_the_other_warnings_too(
    receiver: Receiver,
) -> None:
    """The receiver asked us to wait: other notices of that severity wait with it (no storm
    of one attempt per queued alert), and go in order once the wait is over."""
    receiver.script.append(Reply(429, {"Retry-After": "1"}, b"slow down"))
    sink = WebhookSink(f"{receiver.url}/hook")
    first = alert(service="a", severity="warning")
    second = alert(service="b", severity="warning")
    sink.submit(first)
    await wait_for(lambda: receiver.answers == [429])
    sink.submit(second)
    await asyncio.sleep(0.3)
    assert receiver.answers == [429]
    await sink.drain()
    await sink.aclose()
    assert [b["alert"]["service"] for b in receiver.bodies()] == ["a", "a", "b"]


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    yield from served(BlackHole())


async def test_a_cancelled_aclose_still_counts_and_names_what_was_not_delivered(
    black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's shutdown is cancelled while a sink waits on a hung receiver: the
    notice is still counted as dropped (shutdown) and logged with its key, and a second
    aclose() releases the connection pool instead of returning early."""
    caplog.set_level(logging.ERROR)
    sink = WebhookSink(black_hole.url, timeout=30.0)
    sink.submit(alert())
    await asyncio.sleep(0.2)  # the attempt hangs on the receiver
    closing = asyncio.ensure_future(sink.aclose(timeout=10.0))
    await asyncio.sleep(0.1)
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    stats = sink.stats()
    assert (stats.queued, stats.dropped_by_reason["shutdown"]) == (0, 1)
    assert any(
        getattr(record, "xnai.alert_key", None) == "rag_api:status" for record in caplog.records
    )
    released: list[bool] = []
    original = sink.release

    async def release() -> None:
        released.append(True)
        await original()

    sink.release = release  # type: ignore[method-assign]
    await sink.aclose()
    assert released == [True]


async def test_the_monitor_stopped_mid_delivery_loses_and_doubles_nothing(
    receiver: Receiver,
) -> None:
    """A service goes down, the monitor is stopped (its tasks cancelled) while the sink's
    POST waits on a slow receiver: the alert still arrives exactly once, and aclose()
    delivers the rest within its deadline."""
    receiver.script.append(Reply(200, delay=0.5))
    monitor = HealthMonitor(check_interval=0.05, failure_threshold=1, success_threshold=1)
    monitor.add_checker(CustomHealthChecker("db", lambda: False, in_thread=False))
    sink = WebhookSink(receiver.url)
    monitor.add_alert_handler(sink)
    await monitor.start_monitoring()
    try:
        await wait_for(lambda: len(receiver.requests) == 1)
    finally:
        await monitor.stop_monitoring()
    sink.submit(alert(service="late"))  # filed as the process winds down
    await sink.aclose(timeout=5.0)
    stats = sink.stats()
    assert [b["alert"]["key"] for b in receiver.bodies()] == ["db:status", "late:status"]
    assert (stats.sent, stats.retried, stats.dropped) == (2, 0, 0)
