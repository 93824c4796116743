"""Alerts to PagerDuty through the Events API v2: trigger, and resolve with the same key."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from collections.abc import Mapping
from typing import ClassVar, Literal, Unpack

from ..health.alerts import Severity
from ._http import HttpSink, check_http_url
from ._mask import mask_details, mask_text
from ._model import Notification, iso_utc
from ._secret import Secret, url_pieces
from ._sink import SinkOptions

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"

PagerDutySeverity = Literal["critical", "error", "warning", "info"]

DEFAULT_SEVERITY_MAP: Mapping[str, PagerDutySeverity] = {
    "critical": "critical",
    "warning": "warning",
    "info": "info",
}

_ROUTING_KEY = re.compile(r"[A-Za-z0-9]{32}")
_SUMMARY_MAX = 1024
_DEDUP_KEY_MAX = 255


def dedup_key(alert_key: str) -> str:
    """PagerDuty's ``dedup_key`` for an alert: its key, hashed only if over 255 characters.

    The same for the trigger, every reminder and the resolve, and across
    restarts: PagerDuty keeps one incident per alert.
    """
    if len(alert_key) <= _DEDUP_KEY_MAX:
        return alert_key
    return "xnai-core:sha256:" + hashlib.sha256(alert_key.encode()).hexdigest()


class PagerDutySink(HttpSink):
    """Sends PagerDuty Events API v2 events (``trigger`` / ``resolve``).

    ``routing_key`` is the integration key of a PagerDuty service (32
    characters); it is kept out of reprs, logs and stats. ``min_severity``
    defaults to ``critical``: a page wakes someone. Severities map as
    ``severity_map`` says (ours to PagerDuty's ``critical``/``error``/
    ``warning``/``info``). ``custom_details`` hold the alert's key, service,
    kind, message and its details, masked. ``source`` defaults to this host's
    name; ``url`` is the Events API endpoint (EU accounts use
    ``https://events.eu.pagerduty.com/v2/enqueue``).
    """

    kind: ClassVar[str] = "pagerduty"
    default_min_severity: ClassVar[Severity] = "critical"

    def __init__(
        self,
        routing_key: str,
        *,
        url: str = EVENTS_URL,
        source: str | None = None,
        component: str | None = None,
        group: str | None = None,
        dashboard_url: str | None = None,
        severity_map: Mapping[str, PagerDutySeverity] | None = None,
        verify: ssl.SSLContext | bool = True,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(verify=verify, **options)
        if not isinstance(routing_key, str) or not _ROUTING_KEY.fullmatch(routing_key):
            # The value is not shown: a near-miss of a real key is still most of one.
            raise ValueError("'routing_key' must be a 32-character PagerDuty integration key")
        self._routing_key = Secret(routing_key)
        self._url = Secret(check_http_url("url", url))
        self._source = source or socket.gethostname()
        self._component = component
        self._group = group
        self._dashboard_url = dashboard_url
        mapping = dict(DEFAULT_SEVERITY_MAP)
        if severity_map is not None:
            allowed = ("critical", "error", "warning", "info")
            for ours, theirs in severity_map.items():
                if ours not in DEFAULT_SEVERITY_MAP:
                    raise ValueError(f"'severity_map' keys must be our severities: {ours!r}")
                if theirs not in allowed:
                    raise ValueError(
                        f"'severity_map[{ours!r}]' must be one of {allowed}: {theirs!r}"
                    )
            mapping.update(severity_map)
        self._severity_map = mapping

    def secrets(self) -> tuple[str, ...]:
        return (self._routing_key.reveal(), *url_pieces(self._url.reveal()))

    def describe(self) -> str:
        return f"source={self._source!r}"

    def payload(self, note: Notification) -> dict[str, object]:
        """The JSON body of the event (the routing key included: this goes to PagerDuty only)."""
        raised = note.raised
        event: dict[str, object] = {
            "routing_key": self._routing_key.reveal(),
            "dedup_key": dedup_key(raised.key),
        }
        if note.event == "resolved":
            event["event_action"] = "resolve"
            return event
        event["event_action"] = "trigger"
        summary = mask_text(raised.message, self.secrets()) or raised.key
        payload: dict[str, object] = {
            "summary": summary[:_SUMMARY_MAX],
            "source": self._source,
            "severity": self._severity_map[raised.severity],
            "timestamp": iso_utc(raised.timestamp),
            "component": self._component or raised.service,
            "class": raised.kind,
            "custom_details": {
                "alert_key": raised.key,
                "service": raised.service,
                "kind": raised.kind,
                "severity": raised.severity,
                "message": summary,
                "reminder": note.repeat,
                "details": mask_details(raised.details, self.secrets()),
            },
        }
        if self._group:
            payload["group"] = self._group
        event["payload"] = payload
        event["client"] = "xnai-core"
        if self._dashboard_url:
            link = self._dashboard_url.replace("{service}", raised.service)
            event["client_url"] = link
            event["links"] = [{"href": link, "text": "xnai-core dashboard"}]
        return event

    async def send(self, note: Notification) -> None:
        # A retried trigger or resolve carries the same dedup_key: PagerDuty drops the copy.
        await self.post_json(self._url.reveal(), self.payload(note))
