"""Alert sinks' delivery counters in the metrics: real sinks, real loopback receivers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from tests.alerting_helpers import Receiver, Reply, SleepRecorder, alert, refused_url
from tests.metrics_helpers import (  # noqa: F401 (otel_reader: a fixture)
    Samples,
    otel_reader,
    parse,
    points,
    series,
    value,
)
from tests.secret_corpus import SHAPES, leaks
from xnai_core import events
from xnai_core.alerting import SlackSink, WebhookSink
from xnai_core.metrics import enable_prometheus

ERROR_AT = 1_765_000_000.5  # the injected wall clock: when a failed attempt is recorded


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    gc.collect()  # sinks of earlier tests must not show here
    served = CollectorRegistry()
    enabled = enable_prometheus(served)
    yield served
    enabled.disable()
    events.install_hooks()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    """The text exposition and its samples."""
    text = generate_latest(registry).decode()
    return text, parse(text)


async def test_delivery_counters_are_scraped_from_real_sinks(
    registry: CollectorRegistry, receiver: Receiver
) -> None:
    """A 500 then a 200 (sent once, retried once), and a refused port (given up)."""
    receiver.script.append(Reply(500, body=b"oops"))
    webhook_url = f"{receiver.url}/hooks/T0Z9route?token=webhooktoken123"
    webhook = WebhookSink(
        webhook_url,
        secret="hmac-secret-value",
        name="ops-webhook",
        sleep=SleepRecorder(),
        wall_clock=lambda: ERROR_AT,
    )
    slack_url = f"{refused_url()}/services/T000/B000/slacksecret456"
    slack = SlackSink(slack_url, max_attempts=3, sleep=SleepRecorder())
    for sink in (webhook, slack):
        sink.submit(alert())
        await sink.drain()

    text, samples = scrape(registry)
    ops = {"sink": "ops-webhook", "kind": "webhook"}
    assert receiver.answers == [500, 200]
    assert value(samples, "xnai_alert_notifications_sent_total", **ops) == 1
    assert value(samples, "xnai_alert_notifications_retried_total", **ops) == 1
    for reason in ("queue_full", "rejected", "gave_up", "shutdown"):
        assert value(samples, "xnai_alert_notifications_dropped_total", **ops, reason=reason) == 0
    assert value(samples, "xnai_alert_queue_length", **ops) == 0
    assert value(samples, "xnai_alert_last_error_timestamp_seconds", **ops) == ERROR_AT

    refused = {"sink": "slack", "kind": "slack"}
    assert value(samples, "xnai_alert_notifications_sent_total", **refused) == 0
    assert value(samples, "xnai_alert_notifications_retried_total", **refused) == 2
    dropped = "xnai_alert_notifications_dropped_total"
    assert value(samples, dropped, **refused, reason="gave_up") == 1
    assert value(samples, dropped, **refused, reason="rejected") == 0
    assert value(samples, "xnai_alert_last_error_timestamp_seconds", **refused) > 0

    # Labels are the sink's name and kind: no URL, route, token or signing secret.
    for secret in (webhook_url, slack_url, "T0Z9route", "webhooktoken123", "slacksecret456"):
        assert secret not in text
    for secret in ("hmac-secret-value", "127.0.0.1", "/services/"):
        assert secret not in text
    await webhook.aclose()
    await slack.aclose()


async def test_a_queued_notification_shows_in_the_queue_length(
    registry: CollectorRegistry, receiver: Receiver
) -> None:
    """Filed, and the sink's task has not run yet (no await since): both are queued."""
    sink = WebhookSink(receiver.url, name="queued")
    sink.submit(alert("a"))
    sink.submit(alert("b"))
    _, samples = scrape(registry)
    assert value(samples, "xnai_alert_queue_length", sink="queued", kind="webhook") == 2
    await sink.drain()
    _, samples = scrape(registry)
    assert value(samples, "xnai_alert_queue_length", sink="queued", kind="webhook") == 0
    assert value(samples, "xnai_alert_notifications_sent_total", sink="queued", kind="webhook") == 2
    await sink.aclose()


async def test_sink_names_from_the_secret_corpus_leak_nothing(
    registry: CollectorRegistry, receiver: Receiver
) -> None:
    """A careless name (a URL with a password) and secrets in URLs never reach a label."""
    sinks = [
        WebhookSink(
            f"{receiver.url}/hook?token={shape.core}",
            secret=shape.secret,
            name=shape.text,
        )
        for shape in SHAPES
    ]
    text, samples = scrape(registry)
    names = {labels["sink"] for labels in series(samples, "xnai_alert_notifications_sent_total")}
    assert len(names) > len(SHAPES) // 2  # the names are there, redacted (some redact alike)
    assert leaks([text]) == []
    assert str(receiver.port) not in text
    for sink in sinks:
        await sink.aclose()


async def test_a_dropped_sink_takes_its_series_along(registry: CollectorRegistry) -> None:
    sink = WebhookSink(refused_url(), name="short-lived")
    _, samples = scrape(registry)
    assert series(samples, "xnai_alert_queue_length") == [
        {"sink": "short-lived", "kind": "webhook"}
    ]
    del sink
    gc.collect()
    _, samples = scrape(registry)
    assert series(samples, "xnai_alert_queue_length") == []


async def test_two_live_sinks_of_one_name_are_one_series(
    registry: CollectorRegistry, receiver: Receiver
) -> None:
    first = WebhookSink(receiver.url, name="twin")
    second = WebhookSink(receiver.url, name="twin")
    for sink in (first, second):
        sink.submit(alert())
        await sink.drain()
    _, samples = scrape(registry)  # scrape() fails on a duplicate series
    assert value(samples, "xnai_alert_notifications_sent_total", sink="twin", kind="webhook") == 2
    await first.aclose()
    await second.aclose()


async def test_opentelemetry_observes_the_same_counters(reader: InMemoryMetricReader) -> None:
    sink = SlackSink(f"{refused_url()}/hook", max_attempts=2, sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    found = {
        name: [(attributes, getattr(p, "value", None)) for attributes, p in pairs]
        for name, pairs in points(reader).items()
    }
    of_sink = {"sink": "slack", "kind": "slack"}
    assert found["xnai.alert.notifications.sent"] == [(of_sink, 0)]
    assert found["xnai.alert.notifications.retried"] == [(of_sink, 1)]
    assert ({**of_sink, "reason": "gave_up"}, 1) in found["xnai.alert.notifications.dropped"]
    assert found["xnai.alert.queue.length"] == [(of_sink, 0)]
    [(attributes, at)] = found["xnai.alert.last_error.timestamp"]
    assert attributes == of_sink
    assert isinstance(at, float)
    assert at > 0
    await sink.aclose()
