"""The real Prometheus Alertmanager on loopback, fed by AlertmanagerSink, notifying a webhook."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.alerting_helpers import (
    BlackHole,
    Receiver,
    SleepRecorder,
    alert,
    all_text,
    refused_url,
    resolved,
    served,
    wait_for,
)
from tests.conftest import free_port
from xnai_core import CustomHealthChecker, HealthMonitor, HealthStatus
from xnai_core.alerting import AlertmanagerSink

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = pytest.mark.skipif(
    BINARY is None, reason="prometheus-alertmanager is not installed (scripts/setup.sh installs it)"
)

CONFIG = """\
route:
  receiver: hook
  group_by: [{group_by}]
  group_wait: 100ms
  group_interval: 300ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}/am
        send_resolved: true
"""


@dataclass
class Alertmanager:
    """A private Alertmanager: its own port, storage and config; no cluster."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def post(self, path: str, body: object) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read() or b"null")


def start_alertmanager(hook: str, group_by: str, web_config: str | None = None) -> Alertmanager:
    assert BINARY is not None
    workdir = Path(tempfile.mkdtemp(prefix="xnai-am-"))
    (workdir / "alertmanager.yml").write_text(CONFIG.format(hook=hook, group_by=group_by))
    extra = []
    if web_config is not None:
        (workdir / "web.yml").write_text(web_config)
        extra.append(f"--web.config.file={workdir / 'web.yml'}")
    port = free_port()
    with (workdir / "alertmanager.log").open("wb") as log:
        process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=debug",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    manager = Alertmanager(f"http://127.0.0.1:{port}", process, workdir)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{manager.url}/-/ready", timeout=1) as reply:
                if reply.status == 200:
                    return manager
        except urllib.error.HTTPError as error:
            if error.code == 401:  # up, behind basic auth
                return manager
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                "alertmanager did not start: " + (workdir / "alertmanager.log").read_text()[-2000:]
            )
        time.sleep(0.05)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    yield from served(Receiver())


def _stop(manager: Alertmanager) -> None:
    manager.process.terminate()
    try:
        manager.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        manager.process.kill()
        manager.process.wait(timeout=10)
    shutil.rmtree(manager.workdir, ignore_errors=True)


@pytest.fixture
def alertmanager(hook: Receiver) -> Iterator[Alertmanager]:
    manager = start_alertmanager(hook.url, "alertname, service")
    yield manager
    _stop(manager)


# bcrypt (cost 4) of BASIC_PASSWORD, as Alertmanager's web config wants it.
BASIC_PASSWORD = "am-basic-Pa55"
BASIC_HASH = "$2b$04$JML83liUle9ppL/5hDdBDuGlxXyYyaPkebwGIpxF6S0cchcnGjxly"


@pytest.fixture
def guarded_alertmanager(hook: Receiver) -> Iterator[Alertmanager]:
    """Basic auth required (user xnai): its web config, as Alertmanager documents it."""
    web = f'basic_auth_users:\n  xnai: "{BASIC_HASH}"\n'
    manager = start_alertmanager(hook.url, "alertname, service", web_config=web)
    yield manager
    _stop(manager)


@pytest.fixture
def grouping_alertmanager(hook: Receiver) -> Iterator[Alertmanager]:
    manager = start_alertmanager(hook.url, "alertname")
    yield manager
    _stop(manager)


def notifications(hook: Receiver) -> list[Any]:
    """Alertmanager's webhook bodies received so far."""
    return list(hook.bodies())


def seen(hook: Receiver, service: str, status: str) -> bool:
    return any(
        item["labels"].get("service") == service and item["status"] == status
        for body in notifications(hook)
        for item in body["alerts"]
    )


async def test_a_failing_service_fires_in_alertmanager_and_its_recovery_resolves(
    alertmanager: Alertmanager, hook: Receiver
) -> None:
    """Monitor -> sink -> Alertmanager -> webhook: firing, then resolved."""
    healthy = True
    checker = CustomHealthChecker("orders_api", lambda: healthy, in_thread=False)
    monitor = HealthMonitor(check_interval=0.05, failure_threshold=2, success_threshold=1)
    monitor.add_checker(checker)
    sink = AlertmanagerSink(alertmanager.url, labels={"env": "test"}, resend_interval=30)
    monitor.add_alert_handler(sink)
    await monitor.start_monitoring()
    try:
        await wait_for(lambda: monitor.get_status("orders_api") is HealthStatus.HEALTHY)
        healthy = False
        await wait_for(lambda: seen(hook, "orders_api", "firing"))
        (listed,) = [
            item
            for item in alertmanager.get("/api/v2/alerts")
            if item["labels"].get("service") == "orders_api"
        ]
        assert listed["labels"]["alertname"] == "ServiceUnhealthy"
        assert (
            listed["labels"]["severity"],
            listed["labels"]["env"],
            listed["status"]["state"],
        ) == ("critical", "test", "active")
        assert "orders_api is unhealthy" in listed["annotations"]["summary"]
        healthy = True
        await wait_for(lambda: seen(hook, "orders_api", "resolved"))
        assert [
            item
            for item in alertmanager.get("/api/v2/alerts?active=true&silenced=false")
            if item["labels"].get("service") == "orders_api" and item["status"]["state"] == "active"
        ] == []
        assert sink.stats().dropped == 0
    finally:
        await monitor.stop_monitoring()
        await sink.aclose()


async def test_alertmanager_groups_alerts_of_the_same_name(
    grouping_alertmanager: Alertmanager, hook: Receiver
) -> None:
    """Grouped by alertname: two failing services arrive in one notification (sent to an
    HA pair whose other member is down)."""

    # One member of the "pair" is down: the other one has every alert.
    sink = AlertmanagerSink([refused_url(), grouping_alertmanager.url])
    sink.submit(alert(service="alpha"))
    sink.submit(alert(service="beta"))
    await sink.drain()

    def grouped() -> bool:
        return any(
            {"alpha", "beta"} <= {item["labels"]["service"] for item in body["alerts"]}
            and body["groupLabels"] == {"alertname": "ServiceUnhealthy"}
            for body in notifications(hook)
        )

    await wait_for(grouped)
    assert (sink.stats().sent, sink.stats().retried) == (2, 0)
    await sink.aclose()


async def test_an_ha_pair_whose_other_member_hangs_delivers_each_notice_once_without_waiting(
    alertmanager: Alertmanager, hook: Receiver
) -> None:
    """One member of the pair accepts connections and never answers: every raise and
    resolve is delivered through the other at the first attempt (before: each attempt
    waited for the hung member, timed out, and was retried as if nobody had it)."""
    hole = BlackHole()
    sink = AlertmanagerSink(
        [alertmanager.url, hole.url], timeout=2.0, max_attempts=2, sleep=SleepRecorder()
    )
    raised = [alert(service=f"svc{index}") for index in range(5)]
    try:
        for item in raised:
            sink.submit(item)
        await sink.drain()
        listed = {item["labels"]["service"] for item in alertmanager.get("/api/v2/alerts")}
        assert listed >= {item.service for item in raised}
        services = [item.service for item in raised]
        # Notified by Alertmanager, so that it notifies the resolve too.
        await wait_for(lambda: all(seen(hook, name, "firing") for name in services))
        for item in raised:
            sink.submit(resolved(item))
        await sink.drain()
        stats = sink.stats()
        assert (stats.sent, stats.retried, stats.dropped) == (10, 0, 0)
        await wait_for(lambda: all(seen(hook, name, "resolved") for name in services))
    finally:
        await sink.aclose()
        hole.close()


async def test_user_and_password_in_the_url_authenticate_to_alertmanager(
    guarded_alertmanager: Alertmanager, hook: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """An Alertmanager behind basic auth: the URL's ``user:password@`` is sent as
    ``Authorization: Basic`` (before: not at all; every alert was refused with 401 and
    dropped). A wrong password is refused, and neither it nor its encoding shows."""
    host = guarded_alertmanager.url.removeprefix("http://")
    sink = AlertmanagerSink(f"http://xnai:{BASIC_PASSWORD}@{host}")
    wrong = AlertmanagerSink(f"http://xnai:not-the-Pa55@{host}", name="wrong")
    sink.submit(alert(service="guarded"))
    wrong.submit(alert(service="guarded"))
    await sink.aclose()
    await wrong.aclose()
    assert (sink.stats().sent, sink.stats().dropped) == (1, 0)
    assert wrong.stats().dropped_by_reason["rejected"] == 1
    await wait_for(lambda: seen(hook, "guarded", "firing"))
    shown = all_text(caplog.records) + repr(vars(wrong)) + str(wrong.stats())
    assert "not-the-Pa55" not in shown
    assert base64.b64encode(b"xnai:not-the-Pa55").decode() not in shown


async def test_a_silence_created_through_the_api_mutes_the_alert(
    grouping_alertmanager: Alertmanager, hook: Receiver
) -> None:
    """Silenced: listed as suppressed by the silence, never notified; the other one is."""
    alertmanager = grouping_alertmanager

    now = datetime.now(UTC)
    created = alertmanager.post(
        "/api/v2/silences",
        {
            "matchers": [{"name": "service", "value": "muted", "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "xnai-core tests",
            "comment": "maintenance",
        },
    )
    silence_id = created["silenceID"]
    sink = AlertmanagerSink(alertmanager.url)
    sink.submit(alert(service="muted"))
    sink.submit(alert(service="loud"))
    await sink.drain()
    await wait_for(lambda: seen(hook, "loud", "firing"))

    def suppressed() -> bool:
        listed = {
            item["labels"]["service"]: item["status"] for item in alertmanager.get("/api/v2/alerts")
        }
        muted = listed.get("muted")
        return muted is not None and muted["state"] == "suppressed"

    await wait_for(suppressed)
    (muted,) = [
        item for item in alertmanager.get("/api/v2/alerts") if item["labels"]["service"] == "muted"
    ]
    assert [silence_id] == muted["status"]["silencedBy"]
    # Both are in one group (grouped by alertname) and "muted" was posted first, so the
    # group's notification that carries "loud" was built with "muted" in the group.
    assert not seen(hook, "muted", "firing")
    await sink.aclose()
