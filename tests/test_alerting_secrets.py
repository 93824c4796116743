"""No URL, routing key, webhook secret or password in any log, stat, repr or error of a sink."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.alerting_helpers import (
    BlackHole,
    Receiver,
    Reply,
    Request,
    SleepRecorder,
    alert,
    all_text,
    refused_url,
    resolved,
    served,
)
from xnai_core.alerting import (
    AlertmanagerSink,
    AlertSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
)
from xnai_core.service import ConfigError

SLACK_TOKEN = "xoxSlackPathToken123"
QUERY_TOKEN = "WebhookQueryToken456"
HMAC_SECRET = "HmacSigningSecret789"
HEADER_TOKEN = "HeaderBearerToken000"
ROUTING_KEY = "R0ut1ngKeyS3cr3tR0ut1ngKeyS3cr3t"
AM_PASSWORD = "AmBasicAuthPass321"
SECRETS = (SLACK_TOKEN, QUERY_TOKEN, HMAC_SECRET, HEADER_TOKEN, ROUTING_KEY, AM_PASSWORD)


def echo(request: Request) -> Reply:
    """A receiver that refuses and echoes the whole request back, as some error pages do."""
    headers = "".join(f"{k}: {v}\n" for k, v in request.headers.items())
    return Reply(400, body=(request.path + "\n" + headers).encode() + request.body)


@pytest.fixture
def echoing() -> Iterator[Receiver]:
    yield from served(Receiver(echo))


@pytest.fixture
def receiver_all() -> Iterator[Receiver]:
    yield from served(Receiver())


def sinks_to(base: str, **options: object) -> list[AlertSink]:
    host = base.removeprefix("http://")
    return [
        SlackSink(f"{base}/services/T000/B000/{SLACK_TOKEN}", **options),  # type: ignore[arg-type]
        WebhookSink(
            f"{base}/hook?token={QUERY_TOKEN}",
            HMAC_SECRET,
            headers={"Authorization": f"Bearer {HEADER_TOKEN}"},
            **options,  # type: ignore[arg-type]
        ),
        PagerDutySink(ROUTING_KEY, url=f"{base}/v2/enqueue", **options),  # type: ignore[arg-type]
        AlertmanagerSink(f"http://admin:{AM_PASSWORD}@{host}", **options),  # type: ignore[arg-type]
    ]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


async def exercise(sinks: list[AlertSink]) -> str:
    """Send a raise and a resolve through each sink; everything they show, as one text."""
    shown = []
    for sink in sinks:
        raised = alert(details={"note": f"see {sink!r}"})
        sink.submit(raised)
        sink.submit(resolved(raised))
        await sink.aclose(timeout=2.0)
        stats = sink.stats()
        shown += [repr(sink), str(sink), str(stats), repr(stats.as_dict()), repr(vars(sink))]
    return "\n".join(shown)


async def test_a_rejecting_receiver_that_echoes_the_request(
    echoing: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """4xx replies that quote the URL, headers and body back: masked in last_error and logs."""
    caplog.set_level(logging.DEBUG)
    sinks = sinks_to(echoing.url, min_severity="info")
    shown = await exercise(sinks)
    # A raise and its resolve through each sink, each rejected once and never retried.
    assert len(echoing.requests) == 8
    assert all(sink.stats().last_error for sink in sinks)
    assert_no_secret(shown + all_text(caplog.records))


async def test_refused_and_hung_destinations(caplog: pytest.LogCaptureFixture) -> None:
    """Connection errors and timeouts: the reasons name the kind of sink, never where it points."""
    caplog.set_level(logging.DEBUG)
    hole = BlackHole()
    try:
        options = {"sleep": SleepRecorder(), "max_attempts": 2, "timeout": 0.2}
        sinks = sinks_to(refused_url(), **options) + sinks_to(hole.url, **options)
        shown = await exercise(sinks)
    finally:
        hole.close()
    assert any("ConnectError" in (sink.stats().last_error or "") for sink in sinks)
    assert any("timed out" in (sink.stats().last_error or "") for sink in sinks)
    assert_no_secret(shown + all_text(caplog.records))


@pytest.mark.parametrize(
    "build",
    [
        lambda: SlackSink(f"ftp://h/services/{SLACK_TOKEN}"),
        lambda: SlackSink(f"http:///{SLACK_TOKEN}"),
        lambda: WebhookSink(f"gopher://{QUERY_TOKEN}@host/"),
        lambda: PagerDutySink(ROUTING_KEY[:-1]),
        lambda: PagerDutySink(ROUTING_KEY, url=f"file:///{ROUTING_KEY}"),
        lambda: AlertmanagerSink(f"mailto:{AM_PASSWORD}"),
    ],
)
def test_construction_errors_do_not_echo_the_secret(build: object) -> None:
    """A bad URL or key is refused with a reason, never with the value."""
    with pytest.raises(ValueError, match="must") as caught:
        build()  # type: ignore[operator]
    assert_no_secret(str(caught.value))


def test_importing_xnai_core_does_not_import_the_alerting_drivers() -> None:
    """``import xnai_core`` leaves the alerting package and aiosmtplib alone."""
    code = (
        "import sys, xnai_core, app.XNAi_rag_app.core\n"
        "names = ('xnai_core.alerting', 'aiosmtplib')\n"
        "print(sorted(m for m in sys.modules if m.startswith(names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_alerting_package_does_not_import_the_smtp_driver() -> None:
    """aiosmtplib is loaded only when an EmailSink is built."""
    code = (
        "import sys, xnai_core.alerting\n"
        "print('aiosmtplib' in sys.modules)\n"
        "xnai_core.alerting.EmailSink('h', security='none', mail_from='a@b.c', to='d@e.f')\n"
        "print('aiosmtplib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_the_readme_names_only_what_the_alerting_package_exports() -> None:
    """The README's alerting table lists names of ``xnai_core.alerting.__all__``."""
    import re
    from pathlib import Path

    import xnai_core.alerting

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| alert sinks")]
    names = [n for n in re.findall(r"`([^`]+)`", row.split("|")[2]) if "[" not in n]
    assert names
    for name in names:
        assert name in xnai_core.alerting.__all__, name


# --- the package's secret corpus (tests/secret_corpus.py) ----------------------------------


async def test_no_corpus_secret_leaves_in_a_notification(receiver_all: Receiver) -> None:
    """Messages and details carrying every secret shape reach the destinations masked."""
    from tests.secret_corpus import SHAPES, leaks

    sinks: list[AlertSink] = [
        SlackSink(f"{receiver_all.url}/slack", min_severity="info"),
        WebhookSink(f"{receiver_all.url}/hook", min_severity="info"),
        PagerDutySink(ROUTING_KEY, url=f"{receiver_all.url}/pd", min_severity="info"),
        AlertmanagerSink(receiver_all.url, min_severity="info"),
    ]
    for index, shape in enumerate(SHAPES):
        raised = alert(
            service=f"svc{index}",
            message=f"svc{index} is unhealthy: {shape.text}",
            details={"error": shape.text, "nested": {"cause": shape.text}},
        )
        for sink in sinks:
            sink.submit(raised)
            sink.submit(resolved(raised, message=f"resolved after {shape.text}"))
    for sink in sinks:
        await sink.aclose(timeout=30)
        assert sink.stats().sent == 2 * len(SHAPES)
    assert leaks(request.body.decode() for request in receiver_all.requests) == []


async def test_no_corpus_secret_in_a_destination_url_shows(
    echoing: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Every URL shape as a sink's destination (moved to a loopback receiver that echoes the
    request back in a 400): nothing of it in logs, stats, reprs or errors."""
    from tests.secret_corpus import SHAPES, leaks

    caplog.set_level(logging.DEBUG)
    host = echoing.url.removeprefix("http://")
    urls = [
        shape.text.replace("127.0.0.1:8080", host)
        .replace("api.example.com", host)
        .replace("app.example.com", host)
        for shape in SHAPES
        if shape.url and shape.scheme in ("http", "https")
    ]
    assert len(urls) > 20
    sinks: list[AlertSink] = []
    for url in urls:
        sinks += [
            SlackSink(url, max_attempts=1),
            WebhookSink(url, max_attempts=1),
            AlertmanagerSink(url, max_attempts=1),
        ]
    for sink in sinks:
        sink.submit(alert())
    await asyncio.gather(*(sink.aclose(timeout=10) for sink in sinks))
    shown: list[str] = []
    for sink in sinks:
        stats = sink.stats()
        assert stats.dropped == 1
        shown += [repr(sink), str(stats), repr(vars(sink))]
    assert leaks([*shown, all_text(caplog.records)]) == []


async def test_a_sink_named_after_a_url_with_its_password_shows_it_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``name`` is how logs and stats call the sink, and the metrics' label masks it; a
    name made of a URL with its password was shown as written in the repr, ``stats()``
    and every delivery log line, and by the service's reload lines and config errors."""
    from xnai_core.service import parse_config
    from xnai_core.service.sink_reload import SinkHandover

    caplog.set_level(logging.INFO, logger="xnai_core")
    secret = "sinkname-pw-42"
    name = f"https://u:{secret}@hooks.example/x"
    sink = WebhookSink(refused_url(), name=name, max_attempts=2, sleep=SleepRecorder())
    sink.submit(alert())
    await sink.drain()
    shown = [repr(sink), repr(sink.stats().as_dict()), caplog.text]
    await sink.aclose()

    table = {"type": "webhook", "url": "http://127.0.0.1:1/hook", "name": name}
    before = parse_config({"alerts": [table]}, env={})
    after = parse_config({"alerts": [{**table, "timeout": 3}]}, env={})
    plan = SinkHandover.plan(before.alerts, [sink], after.alerts)
    assert plan is not None
    shown += plan.changes
    with pytest.raises(ConfigError) as doubled:
        parse_config({"alerts": [table, table]}, env={})
    shown.append(str(doubled.value))
    for text in shown:
        assert secret not in text, text
    assert "https://u:***@hooks.example/x" in caplog.text
    for made, _ in plan.fresh:
        await made.aclose()
