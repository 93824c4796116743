"""Alert delivery: sinks that tell a human, fed by the health monitor and the recovery manager.

Each sink is an alert handler::

    monitor.add_alert_handler(SlackSink(os.environ["SLACK_WEBHOOK_URL"]))
    manager.add_alert_handler(PagerDutySink(os.environ["PAGERDUTY_ROUTING_KEY"]))

and delivers from its own task with a bounded queue, retries with backoff,
routing by severity and service, and counters in :meth:`AlertSink.stats`.
``import xnai_core`` does not import this package; ``EmailSink`` needs the
``xnai-core[email]`` extra. See ``docs/alerting.md``.
"""

from __future__ import annotations

from ._model import DeliveryError, Notification, SinkStats
from ._sink import AlertSink, DeliveryOptions, SinkOptions
from .alertmanager import AlertmanagerSink
from .pagerduty import PagerDutySink
from .slack import SlackSink
from .smtp import EmailSink
from .webhook import WebhookSink, verify_signature

__all__ = [
    "AlertSink",
    "AlertmanagerSink",
    "DeliveryError",
    "DeliveryOptions",
    "EmailSink",
    "Notification",
    "PagerDutySink",
    "SinkOptions",
    "SinkStats",
    "SlackSink",
    "WebhookSink",
    "verify_signature",
]
