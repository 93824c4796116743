"""Alerts to a Slack channel through an incoming webhook, as Block Kit messages."""

from __future__ import annotations

import ssl
from typing import ClassVar, Unpack

from ._http import HttpSink, check_http_url
from ._mask import mask_text
from ._model import Notification
from ._secret import Secret, url_pieces
from ._sink import SinkOptions

# Slack's limits: a header's text, a section's text, a field's text.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000

_MARKS = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}


def escape_mrkdwn(text: str) -> str:
    """Text safe inside Slack mrkdwn: ``&``, ``<`` and ``>`` escaped, as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class SlackSink(HttpSink):
    """Posts to a Slack incoming webhook (``https://hooks.slack.com/services/...``).

    The webhook URL is the credential (anyone holding it can post to the
    channel): it is kept out of reprs, logs and stats. A message has a header
    (firing, still firing, resolved), the alert's message, the service,
    severity, alert kind and the time it started, and, with ``dashboard_url``
    (``{service}`` in it is replaced by the service name), a button to it.

    Slack cannot drop a retried copy of a message that did arrive, so an answer
    is awaited ``reply_timeout`` (60 s) before the attempt counts as failed;
    connecting and sending are still bounded by ``timeout``.
    """

    kind: ClassVar[str] = "slack"
    idempotent: ClassVar[bool] = False

    def __init__(
        self,
        webhook_url: str,
        *,
        dashboard_url: str | None = None,
        verify: ssl.SSLContext | bool = True,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(verify=verify, **options)
        self._url = Secret(check_http_url("webhook_url", webhook_url))
        if dashboard_url is not None:
            check_http_url("dashboard_url", dashboard_url)
        self._dashboard_url = dashboard_url

    def secrets(self) -> tuple[str, ...]:
        return url_pieces(self._url.reveal())

    def payload(self, note: Notification) -> dict[str, object]:
        """The JSON body: ``text`` (the notification's fallback) and ``blocks``."""
        raised = note.raised
        service = raised.service
        if note.event == "resolved":
            mark, state = ":white_check_mark:", "Resolved"
            message = note.alert.message
        else:
            mark = _MARKS[raised.severity]
            state = f"Still firing (reminder {note.repeat})" if note.repeat else "Firing"
            message = raised.message
        message = mask_text(message, self.secrets())
        title = f"{state}: {service} {raised.kind.replace('_', ' ')}"
        started = int(raised.timestamp)
        fields = [
            ("Service", escape_mrkdwn(service)),
            ("Severity", raised.severity),
            ("Alert", f"`{escape_mrkdwn(raised.key)}`"),
            ("Since", f"<!date^{started}^{{date_short_pretty}} {{time_secs}}|{started}>"),
        ]
        blocks: list[dict[str, object]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": _clip(f"{title}", _HEADER_MAX)},
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(f"{mark} {escape_mrkdwn(message)}", _SECTION_MAX),
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{name}*\n{value}", _FIELD_MAX)}
                    for name, value in fields
                ],
            },
        ]
        if self._dashboard_url:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Open dashboard"},
                            "url": self._dashboard_url.replace("{service}", service),
                        }
                    ],
                }
            )
        return {"text": _clip(f"{title}: {message}", _SECTION_MAX), "blocks": blocks}

    async def send(self, note: Notification) -> None:
        await self.post_json(self._url.reveal(), self.payload(note))
