"""Slack, PagerDuty, webhook and Alertmanager sinks against real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.alerting_helpers import (
    BlackHole,
    Receiver,
    Reply,
    Request,
    SleepRecorder,
    alert,
    refused_url,
    resolved,
    served,
    wait_for,
)
from xnai_core.alerting import (
    AlertmanagerSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
    verify_signature,
)

ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"


# --- what the real services accept ------------------------------------------------------

_BLOCK_TYPES = {"header", "section", "context", "actions", "divider"}


def slack_problems(body: Any) -> list[str]:
    """What Slack would refuse in an incoming-webhook body (Block Kit)."""
    problems = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        problems.append("text: a fallback text is required")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return [*problems, "blocks: 1..50 blocks"]
    for block in blocks:
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            problems.append(f"unknown block {kind!r}")
        if kind == "header":
            text = block["text"]
            if text["type"] != "plain_text" or not 0 < len(text["text"]) <= 150:
                problems.append("header: plain_text of 1..150")
        if kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append("section: text or fields")
            if "text" in block and not 0 < len(block["text"]["text"]) <= 3000:
                problems.append("section text: 1..3000")
            for item in block.get("fields", []):
                if item["type"] not in ("mrkdwn", "plain_text") or len(item["text"]) > 2000:
                    problems.append("field: mrkdwn or plain_text of <= 2000")
            if len(block.get("fields", [])) > 10:
                problems.append("section: at most 10 fields")
        if kind == "actions":
            for element in block["elements"]:
                if element["type"] != "button" or not element["url"].startswith("http"):
                    problems.append("actions: buttons with a URL")
    return problems


def slack_validator(request: Request) -> Reply:
    problems = slack_problems(request.json())
    if problems:
        return Reply(400, body=b"invalid_blocks: " + "; ".join(problems).encode())
    return Reply(200, body=b"ok")


def pagerduty_problems(event: Any) -> list[str]:
    """What the Events API v2 would refuse."""
    problems = []
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        problems.append("routing_key: 32 characters")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action")
    dedup = event.get("dedup_key")
    if action != "trigger" and not dedup:
        problems.append("dedup_key required for acknowledge/resolve")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        problems.append("dedup_key: <= 255 characters")
    if action == "trigger":
        payload = event.get("payload") or {}
        for name in ("summary", "source", "severity"):
            if not payload.get(name):
                problems.append(f"payload.{name} required")
        if len(payload.get("summary", "")) > 1024:
            problems.append("payload.summary: <= 1024")
        if payload.get("severity") not in ("critical", "error", "warning", "info"):
            problems.append("payload.severity")
    return problems


def pagerduty_validator(request: Request) -> Reply:
    event = request.json()
    problems = pagerduty_problems(event)
    if problems:
        body = {"status": "invalid event", "message": "Event object is invalid", "errors": problems}
        return Reply(400, {"Content-Type": "application/json"}, json.dumps(body).encode())
    body = {"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}
    return Reply(202, {"Content-Type": "application/json"}, json.dumps(body).encode())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from served(Receiver())


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    yield from served(BlackHole())


@pytest.fixture
def slack() -> Iterator[Receiver]:
    yield from served(Receiver(slack_validator))


@pytest.fixture
def pagerduty() -> Iterator[Receiver]:
    yield from served(Receiver(pagerduty_validator))


# --- Slack --------------------------------------------------------------------------------


async def test_slack_firing_and_resolved_are_valid_block_kit(slack: Receiver) -> None:
    """Both pass Slack's checks and carry service, severity, reason and the dashboard link."""
    sink = SlackSink(
        f"{slack.url}/services/T000/B000/XXXX",
        dashboard_url="https://grafana.example/d/x?var-service={service}",
    )
    raised = alert(message="rag_api is unhealthy: connection refused <&>")
    sink.submit(raised)
    sink.submit(resolved(raised))
    await sink.drain()
    await sink.aclose()
    assert slack.answers == [200, 200]
    firing, done = slack.bodies()
    assert slack.requests[0].path == "/services/T000/B000/XXXX"
    assert slack.requests[0].headers["content-type"] == "application/json"
    assert firing["blocks"][0]["text"]["text"].startswith("Firing: rag_api status")
    assert "connection refused &lt;&amp;&gt;" in firing["blocks"][1]["text"]["text"]
    fields = [item["text"] for item in firing["blocks"][2]["fields"]]
    assert "*Service*\nrag_api" in fields
    assert "*Severity*\ncritical" in fields
    button = firing["blocks"][-1]["elements"][0]
    assert button["url"] == "https://grafana.example/d/x?var-service=rag_api"
    assert done["blocks"][0]["text"]["text"].startswith("Resolved: rag_api status")


async def test_slack_honours_429_retry_after(slack: Receiver) -> None:
    """A 429 with Retry-After: 2 waits 2 s (the injected sleep), then delivers."""
    slack.script.append(Reply(429, {"Retry-After": "2"}, b"rate_limited"))
    sleep = SleepRecorder()
    sink = SlackSink(f"{slack.url}/hook", sleep=sleep)
    sink.submit(alert())
    await sink.drain()
    assert slack.answers == [429, 200]
    assert sleep.delays == pytest.approx([2.0], abs=0.05)
    assert (sink.stats().sent, sink.stats().retried, sink.stats().dropped) == (1, 1, 0)
    await sink.aclose()


async def test_slack_retries_500s_then_succeeds(slack: Receiver) -> None:
    """Three 500s, then 200: delivered once, three retries, the last error kept."""
    slack.script.extend(Reply(500, body=b"oops") for _ in range(3))
    sink = SlackSink(f"{slack.url}/hook", sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    stats = sink.stats()
    assert slack.answers == [500, 500, 500, 200]
    assert (stats.sent, stats.retried, stats.dropped) == (1, 3, 0)
    assert stats.last_error == "slack: HTTP 500 'oops'"
    # The same message each time: a retry is the same notification.
    assert len({request.body for request in slack.requests}) == 1
    await sink.aclose()


async def test_slack_4xx_is_not_retried(slack: Receiver) -> None:
    """404 no_service (a deleted webhook) is dropped at once as rejected."""
    slack.script.append(Reply(404, body=b"no_service"))
    sink = SlackSink(f"{slack.url}/hook", sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    assert slack.answers == [404]
    assert sink.stats().dropped_by_reason["rejected"] == 1
    assert sink.stats().last_error == "slack: HTTP 404 'no_service'"
    await sink.aclose()


# --- PagerDuty ---------------------------------------------------------------------------


async def test_pagerduty_trigger_and_resolve_share_a_stable_dedup_key(pagerduty: Receiver) -> None:
    """Events v2: a valid trigger, then a resolve with the same dedup_key."""
    sink = PagerDutySink(ROUTING_KEY, url=f"{pagerduty.url}/v2/enqueue", source="host-1")
    raised = alert()
    sink.submit(raised)
    sink.submit(resolved(raised))
    await sink.drain()
    await sink.aclose()
    assert pagerduty.answers == [202, 202]
    trigger, resolve = pagerduty.bodies()
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert "rag_api:status" == trigger["dedup_key"] == resolve["dedup_key"]
    assert pagerduty.requests[0].path == "/v2/enqueue"
    payload = trigger["payload"]
    assert (
        payload["severity"],
        payload["source"],
        payload["component"],
        payload["class"],
    ) == ("critical", "host-1", "rag_api", "status")


async def test_pagerduty_dedup_key_survives_a_restart(pagerduty: Receiver) -> None:
    """A new sink (a restarted process) resolves the incident the old one opened."""
    first = PagerDutySink(ROUTING_KEY, url=pagerduty.url)
    raised = alert()
    first.submit(raised)
    await first.aclose()
    second = PagerDutySink(ROUTING_KEY, url=pagerduty.url)
    second.submit(raised)  # the monitor raises it again after the restart...
    second.submit(resolved(raised))  # ...and resolves it
    await second.aclose()
    keys = {body["dedup_key"] for body in pagerduty.bodies()}
    assert {"rag_api:status"} == keys


async def test_pagerduty_maps_severities(pagerduty: Receiver) -> None:
    """Ours map to PagerDuty's; severity_map changes the mapping."""
    sink = PagerDutySink(
        ROUTING_KEY, url=pagerduty.url, min_severity="warning", severity_map={"warning": "error"}
    )
    sink.submit(alert(kind="status"))
    sink.submit(alert(kind="success_rate", severity="warning"))
    await sink.aclose()
    assert [body["payload"]["severity"] for body in pagerduty.bodies()] == ["critical", "error"]


async def test_pagerduty_takes_only_critical_by_default(pagerduty: Receiver) -> None:
    """A page wakes someone: warnings stay out unless asked for."""
    sink = PagerDutySink(ROUTING_KEY, url=pagerduty.url)
    sink.submit(alert(kind="success_rate", severity="warning"))
    await sink.aclose()
    assert pagerduty.requests == []


async def test_pagerduty_custom_details_are_masked(pagerduty: Receiver) -> None:
    """Secret-named details and credentials in URLs never reach PagerDuty."""
    sink = PagerDutySink(ROUTING_KEY, url=pagerduty.url)
    sink.submit(
        alert(
            details={
                "url": "https://app:hunter2pass@db.internal/x?api_key=abcdef123",
                "password": "s3cr3t-value",
                "nested": {"auth_token": "tok-123456", "value": 3},
            }
        )
    )
    await sink.aclose()
    assert pagerduty.answers == [202]
    details = pagerduty.bodies()[0]["payload"]["custom_details"]["details"]
    assert details["url"] == "https://app:***@db.internal/x?api_key=***"
    assert details["password"] == "***"
    assert details["nested"] == {"auth_token": "***", "value": 3}


async def test_pagerduty_429_and_500_then_success(pagerduty: Receiver) -> None:
    """Rate limited (no Retry-After: backoff), then a 500, then accepted."""
    pagerduty.script.append(Reply(429, body=b'{"status":"throttled"}'))
    pagerduty.script.append(Reply(500, body=b""))
    sleep = SleepRecorder()
    sink = PagerDutySink(ROUTING_KEY, url=pagerduty.url, sleep=sleep, random=lambda: 0.0)
    sink.submit(alert())
    await sink.drain()
    assert pagerduty.answers == [429, 500, 202]
    assert sleep.delays == pytest.approx([1.0, 2.0], abs=0.05)
    await sink.aclose()


async def test_pagerduty_rejects_a_malformed_routing_key_without_showing_it() -> None:
    """The error says what is wrong, never the near-miss key."""
    with pytest.raises(ValueError, match="32-character") as caught:
        PagerDutySink("short-key-12345")
    assert "short-key-12345" not in str(caught.value)


# --- webhook ------------------------------------------------------------------------------


def receiver_verifies(secret: bytes, request: Request, now: float) -> bool:
    """What a receiver does, written from the docs (not with our helper)."""
    timestamp = request.headers.get("x-xnai-timestamp", "")
    signature = request.headers.get("x-xnai-signature", "")
    expected = hmac.new(secret, timestamp.encode() + b"." + request.body, hashlib.sha256)
    fresh = timestamp.isdigit() and abs(now - int(timestamp)) <= 300
    return fresh and hmac.compare_digest("v1=" + expected.hexdigest(), signature)


async def test_webhook_signature_verifies_and_a_wrong_secret_fails(receiver: Receiver) -> None:
    """The receiver recomputes the HMAC: our secret matches, another does not."""
    sink = WebhookSink(f"{receiver.url}/alerts", secret="correct horse battery staple")
    raised = alert()
    sink.submit(raised)
    sink.submit(resolved(raised))
    await sink.aclose()
    now = time.time()
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert receiver_verifies(b"correct horse battery staple", request, now)
        assert not receiver_verifies(b"wrong secret", request, now)
        headers = request.headers
        assert verify_signature(
            "correct horse battery staple",
            request.body,
            headers["x-xnai-timestamp"],
            headers["x-xnai-signature"],
        )
        assert not verify_signature(
            "wrong secret", request.body, headers["x-xnai-timestamp"], headers["x-xnai-signature"]
        )
        tampered = request.body.replace(b"rag_api", b"rag_apX")
        assert not verify_signature(
            "correct horse battery staple",
            tampered,
            headers["x-xnai-timestamp"],
            headers["x-xnai-signature"],
        )


async def test_webhook_signature_refuses_a_replay(receiver: Receiver) -> None:
    """A captured request presented ten minutes later fails verification."""
    sink = WebhookSink(receiver.url, secret=b"\x00\xffkey")
    sink.submit(alert())
    await sink.aclose()
    request = receiver.requests[0]
    stamp, signature = request.headers["x-xnai-timestamp"], request.headers["x-xnai-signature"]
    assert verify_signature(b"\x00\xffkey", request.body, stamp, signature)
    later = int(stamp) + 600
    assert not verify_signature(b"\x00\xffkey", request.body, stamp, signature, now=later)
    assert not receiver_verifies(b"\x00\xffkey", request, later)


@pytest.mark.parametrize(
    ("stamp", "signature"),
    [
        ("\xb2", None),  # "²": str.isdigit() is true, int() refuses it
        ("9" * 5000, None),  # int() refuses 4,300 digits
        (None, "v1=\xe9"),  # compare_digest() refuses non-ASCII str
        ("-1", None),
        ("", ""),
    ],
)
async def test_webhook_signature_check_refuses_hostile_headers_without_raising(
    receiver: Receiver, stamp: str | None, signature: str | None
) -> None:
    """Whatever a sender puts in the two headers, ``verify_signature`` answers False (the
    receiver's 401), never an exception (its 500)."""
    sink = WebhookSink(receiver.url, secret="s3cret-key")
    sink.submit(alert())
    await sink.aclose()
    request = receiver.requests[0]
    real_stamp = request.headers["x-xnai-timestamp"]
    real_signature = request.headers["x-xnai-signature"]
    assert verify_signature("s3cret-key", request.body, real_stamp, real_signature)
    assert not verify_signature(
        "s3cret-key",
        request.body,
        real_stamp if stamp is None else stamp,
        real_signature if signature is None else signature,
    )
    assert not verify_signature(
        "s3cret-key", request.body, real_stamp, real_signature, tolerance=float("nan")
    )


async def test_the_delivery_id_a_receiver_drops_copies_by_is_signed(receiver: Receiver) -> None:
    """The ``X-Xnai-Delivery`` header is not signed (a replayer can change it); the body's
    ``id`` is, and it is the same value: that is the one to remember."""
    sink = WebhookSink(receiver.url, secret="s3cret-key")
    sink.submit(alert())
    await sink.aclose()
    request = receiver.requests[0]
    assert request.json()["id"] == request.headers["x-xnai-delivery"]
    assert request.json()["id"] == request.headers["idempotency-key"]


async def test_webhook_body_is_the_documented_json(receiver: Receiver) -> None:
    """The body has the documented fields; resolve keeps the raise's severity and start."""
    sink = WebhookSink(receiver.url)
    raised = alert(timestamp=1_700_000_000.0)
    sink.submit(raised)
    sink.submit(resolved(raised, timestamp=1_700_000_060.0))
    await sink.aclose()
    firing, done = receiver.bodies()
    assert {"version", "id", "event", "repeat", "sent_at", "source", "alert"} == set(firing)
    assert (firing["event"], done["event"]) == ("firing", "resolved")
    assert done["alert"] == {
        "key": "rag_api:status",
        "service": "rag_api",
        "kind": "status",
        "severity": "critical",
        "message": "resolved: rag_api status is back",
        "starts_at": "2023-11-14T22:13:20.000Z",
        "ends_at": "2023-11-14T22:14:20.000Z",
        "details": {},
    }
    assert "x-xnai-signature" not in receiver.requests[0].headers  # no secret, no signature
    assert firing["id"] == receiver.requests[0].headers["x-xnai-delivery"]


async def test_webhook_delivery_id_is_the_same_on_every_retry(receiver: Receiver) -> None:
    """A receiver that processed a request whose reply was lost can drop the retried copy."""
    receiver.script.extend([Reply(503), Reply(502)])
    sink = WebhookSink(receiver.url, secret="s", sleep=SleepRecorder())
    sink.submit(alert())
    await sink.aclose()
    ids = {request.headers["x-xnai-delivery"] for request in receiver.requests}
    assert (len(receiver.requests), len(ids)) == (3, 1)


async def test_a_lost_reply_is_retried_with_the_same_delivery_id(receiver: Receiver) -> None:
    """The receiver took the request but the reply never came: the retry can be deduplicated."""
    receiver.script.append(Reply(drop=True))
    sink = WebhookSink(receiver.url, secret="s", sleep=SleepRecorder())
    sink.submit(alert())
    await sink.aclose()
    first, second = receiver.requests
    assert first.headers["x-xnai-delivery"] == second.headers["x-xnai-delivery"]
    # The same notification; only the attempt's own time differs.
    assert {**first.json(), "sent_at": None} == {**second.json(), "sent_at": None}
    stats = sink.stats()
    assert (stats.sent, stats.retried) == (1, 1)
    assert stats.last_error is not None
    assert stats.last_error.startswith("webhook: RemoteProtocolError")


async def test_aclose_cancelled_leaves_no_task_behind(black_hole: BlackHole) -> None:
    """Cancelling aclose() itself cancels the sink's task too."""
    sink = WebhookSink(black_hole.url, timeout=30.0)
    sink.submit(alert())
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(sink.aclose(timeout=30.0))
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    worker = sink._worker
    assert worker is not None
    assert worker.done()


# --- Alertmanager (payload; the real server is in test_alerting_alertmanager.py) ----------


async def test_alertmanager_posts_to_every_member_and_one_suffices(receiver: Receiver) -> None:
    """An HA pair with one member down: delivered through the other, no retry."""
    sink = AlertmanagerSink([refused_url(), receiver.url], sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    stats = sink.stats()
    assert (stats.sent, stats.retried) == (1, 0)
    assert [request.path for request in receiver.requests] == ["/api/v2/alerts"]
    await sink.aclose()


async def test_alertmanager_a_slow_member_gets_the_resolve_after_the_raise(
    receiver: Receiver,
) -> None:
    """The pair's other member answers slowly: the sink does not wait for it, but it still
    gets the raise, then the resolve, in that order (a member left firing would notify
    the alert again), and a hung member costs nothing once the sink is closed."""
    slow = Receiver(lambda request: Reply(200, delay=0.5))
    hole = BlackHole()
    try:
        sink = AlertmanagerSink([receiver.url, slow.url, hole.url], timeout=5.0)
        raised = alert()
        sink.submit(raised)
        sink.submit(resolved(raised))
        await sink.drain()
        assert len(receiver.requests) == 2
        await sink.aclose(timeout=3.0)  # the slow member's resolve is let through
        assert len(slow.requests) == 2
        assert ["endsAt" in body[0] for body in slow.bodies()] == [False, True]
        assert not sink._behind
        assert (sink.stats().sent, sink.stats().retried) == (2, 0)
    finally:
        slow.close()
        hole.close()


async def test_alertmanager_aclose_leaves_no_post_to_a_hung_member_behind(
    receiver: Receiver, black_hole: BlackHole
) -> None:
    """Resolves wait in line for a hung member: aclose() cuts every one of them, not only
    the last in line."""
    sink = AlertmanagerSink([receiver.url, black_hole.url], timeout=30.0)
    raised = [alert(service=f"svc{index}") for index in range(3)]
    for item in raised:
        sink.submit(item)
    for item in raised:
        sink.submit(resolved(item))
    await sink.drain()
    await sink.aclose(timeout=0.2)
    assert len(receiver.requests) == 6
    await asyncio.sleep(0)
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []


async def test_alertmanager_retries_when_no_member_accepts(receiver: Receiver) -> None:
    """Both members failing: retried until one accepts."""
    receiver.script.append(Reply(503))
    sink = AlertmanagerSink([refused_url(), receiver.url], sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    stats = sink.stats()
    assert (stats.sent, stats.retried) == (1, 1)
    assert stats.last_error is not None
    assert "alertmanager #1: ConnectError" in stats.last_error
    assert "alertmanager #2: HTTP 503" in stats.last_error
    await sink.aclose()


async def test_alertmanager_resolve_keeps_the_labels_and_sets_ends_at(receiver: Receiver) -> None:
    """The resolve carries the raise's labels (severity included) so Alertmanager matches it."""
    sink = AlertmanagerSink(receiver.url, labels={"env": "test"})
    raised = alert(
        kind="manual_intervention", details={"last_attempt": {"action": "restart_service"}}
    )
    sink.submit(raised)
    sink.submit(resolved(raised))
    await sink.aclose()
    (firing,), (done,) = receiver.bodies()
    assert firing["labels"] == done["labels"]
    assert firing["labels"] == {
        "alertname": "RecoveryManualIntervention",
        "service": "rag_api",
        "severity": "critical",
        "kind": "manual_intervention",
        "source": "xnai-core",
        "action": "restart_service",
        "env": "test",
    }
    assert "endsAt" not in firing
    assert done["endsAt"] > done["startsAt"] == firing["startsAt"]
    assert {"summary", "description"} == set(firing["annotations"])


async def test_alertmanager_reposts_firing_alerts(receiver: Receiver) -> None:
    """A firing alert is posted again every resend_interval until it resolves."""
    sink = AlertmanagerSink(receiver.url, resend_interval=0.05)
    raised = alert()
    sink.submit(raised)
    await wait_for(lambda: len(receiver.requests) >= 3)
    sink.submit(resolved(raised))
    await sink.drain()
    count = len(receiver.requests)
    bodies = receiver.bodies()
    assert "endsAt" in bodies[-1][0]
    assert all("endsAt" not in body[0] for body in bodies[:-1])
    await sink.aclose()
    assert count == len(receiver.requests)


def test_sinks_share_one_verified_tls_context() -> None:
    """The CA bundle is loaded once (~0.1 s of CPU), not at each sink's first request on the
    event loop; a context of your own is used as given."""
    import ssl

    slack = SlackSink("https://hooks.example/services/T/B/x")
    webhook = WebhookSink("https://hooks.example/in")
    mine = ssl.create_default_context()
    own = WebhookSink("https://hooks.example/in", verify=mine)
    shared = slack._poster._verify
    assert isinstance(shared, ssl.SSLContext)
    assert shared is webhook._poster._verify
    assert shared.verify_mode is ssl.CERT_REQUIRED
    assert shared.check_hostname
    assert own._poster._verify is mine


async def test_retry_after_as_an_http_date_is_read_against_the_sinks_clock(
    receiver: Receiver,
) -> None:
    """``Retry-After: <HTTP date>`` waits until that date by the (injected) wall clock."""
    from email.utils import formatdate

    now = 1_800_000_000.0
    receiver.script.append(Reply(503, {"Retry-After": formatdate(now + 120, usegmt=True)}))
    sleep = SleepRecorder()
    sink = WebhookSink(receiver.url, sleep=sleep, wall_clock=lambda: now)
    sink.submit(alert())
    await sink.drain()
    assert sleep.delays == pytest.approx([120.0], abs=0.05)
    assert receiver.answers == [503, 200]
    await sink.aclose()
