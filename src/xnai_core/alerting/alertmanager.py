"""Alerts to Prometheus Alertmanager's API v2, where grouping, silences and routing happen."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import ClassVar, Unpack

from .._validation import check_seconds
from ._http import HttpSink, check_http_url
from ._mask import mask_text
from ._model import DeliveryError, Notification, iso_utc
from ._secret import Secret, url_pieces
from ._sink import DeliveryOptions

API_PATH = "/api/v2/alerts"

_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALERT_NAMES = {
    "status": "ServiceUnhealthy",
    "success_rate": "ServiceLowSuccessRate",
    "response_time": "ServiceSlowResponses",
    "consecutive_failures": "ServiceConsecutiveFailures",
    "manual_intervention": "RecoveryManualIntervention",
}
# Details that say which part of the service an alert is about; they become labels.
_DETAIL_LABELS = ("breaker", "rule", "action")
_MAX_DESCRIPTION = 4000


def alert_name(kind: str) -> str:
    """The ``alertname`` label for an alert kind: ``status`` -> ``ServiceUnhealthy``."""
    known = _ALERT_NAMES.get(kind)
    if known is not None:
        return known
    words = re.split(r"[^A-Za-z0-9]+", kind)
    return "Xnai" + "".join(word[:1].upper() + word[1:] for word in words if word)


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"'labels' must have Prometheus label names: {name!r}")
        if not isinstance(value, str):
            raise TypeError(f"'labels[{name!r}]' must be a str: {value!r}")
        checked[name] = value
    return checked


def _api_url(field: str, url: str) -> str:
    check_http_url(field, url)
    stripped = url.rstrip("/")
    return stripped if stripped.endswith(API_PATH) else stripped + API_PATH


class AlertmanagerSink(HttpSink):
    """Posts alerts to Alertmanager (``POST /api/v2/alerts``).

    ``urls`` is one base URL (``http://alertmanager:9093``) or several: give
    every member of an HA cluster, as Alertmanager asks of its clients; each
    notification goes to all of them at once and counts as delivered as soon as
    one accepted it; the others are not waited for (see :meth:`send`).

    Each alert carries the labels ``alertname`` (``ServiceUnhealthy``, ...),
    ``service``, ``severity`` (of the raise), ``kind``, ``source="xnai-core"``,
    ``breaker``/``rule``/``action`` when the alert's details name one, and your
    ``labels``; the annotations ``summary``, ``description`` and, when set,
    ``dashboard``; ``startsAt``, and ``endsAt`` on resolve. A firing alert is
    re-posted every ``resend_interval`` seconds (60), well inside Alertmanager's
    ``resolve_timeout`` (5 minutes by default), so it stays firing while it is
    active and resolves by itself if this process dies.
    """

    kind: ClassVar[str] = "alertmanager"
    # Its labels are the alert's identity there: a reloaded sink (new labels, say) posts
    # every active alert at once, rather than at the next re-post.
    restate_on_adopt: ClassVar[bool] = True

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        resend_interval: float = 60.0,
        labels: Mapping[str, str] | None = None,
        generator_url: str | None = None,
        dashboard_url: str | None = None,
        verify: ssl.SSLContext | bool = True,
        **options: Unpack[DeliveryOptions],
    ) -> None:
        # No repeat_interval: Alertmanager repeats notifications itself (its route's
        # repeat_interval); this sink re-posts so that Alertmanager keeps the alert.
        # Checked under its own name: the error must name the setting the caller gave.
        resend = check_seconds("resend_interval", resend_interval)
        super().__init__(verify=verify, repeat_interval=resend, **options)
        listed = [urls] if isinstance(urls, str) else list(urls)
        if not listed:
            raise ValueError("'urls' must name at least one Alertmanager: []")
        self._urls = [Secret(_api_url(f"urls[{i}]", url)) for i, url in enumerate(listed)]
        self._labels = _check_labels(labels)
        self._generator_url = generator_url
        self._dashboard_url = dashboard_url
        # Posts to members still under way after another member accepted: the latest by
        # member (a resolve waits for it), and all of them (cut at aclose()).
        self._behind: dict[int, asyncio.Task[DeliveryError | None]] = {}
        self._background: set[asyncio.Task[DeliveryError | None]] = set()

    def secrets(self) -> tuple[str, ...]:
        return tuple(piece for url in self._urls for piece in url_pieces(url.reveal()))

    def describe(self) -> str:
        return f"alertmanagers={len(self._urls)}"

    def payload(self, note: Notification) -> list[dict[str, object]]:
        """The JSON body: a one-alert list in API v2's ``postableAlerts`` shape."""
        raised = note.raised
        labels: dict[str, str] = {
            **self._labels,
            "alertname": alert_name(raised.kind),
            "service": raised.service,
            "severity": raised.severity,
            "kind": raised.kind,
            "source": "xnai-core",
        }
        for name in _DETAIL_LABELS:
            value = raised.details.get(name)
            if isinstance(value, str) and value:
                labels[name] = value
        last = raised.details.get("last_attempt")
        if "action" not in labels and isinstance(last, Mapping):
            action = last.get("action")
            if isinstance(action, str) and action:
                labels["action"] = action
        description = mask_text(raised.message, self.secrets())
        if note.event == "resolved":
            description += "\n" + mask_text(note.alert.message, self.secrets())
        annotations = {
            "summary": mask_text(raised.message, self.secrets())[:300],
            "description": description[:_MAX_DESCRIPTION],
        }
        if self._dashboard_url:
            annotations["dashboard"] = self._dashboard_url.replace("{service}", raised.service)
        alert: dict[str, object] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_utc(raised.timestamp),
        }
        if note.event == "resolved":
            # Alertmanager refuses an end before the start; clocks can tie.
            alert["endsAt"] = iso_utc(max(note.alert.timestamp, raised.timestamp + 0.001))
        if self._generator_url:
            alert["generatorURL"] = self._generator_url
        return [alert]

    async def send(self, note: Notification) -> None:
        """Post to every member at once; done as soon as one accepted.

        The others are not waited for: a member that hangs would otherwise hold every
        notification for ``timeout`` (and time the attempt out, so that one member's
        outage failed the whole pair). Their posts go on in the background, one at a
        time per member. A member still busy with an earlier notice (wedged, or slow)
        skips a firing notice (the next re-post reaches it) but gets a resolve after
        what it is busy with: a member left firing would notify the alert again.
        """
        body = json.dumps(self.payload(note)).encode()
        behind = [task for task in self._behind.values() if not task.done()]
        if len(behind) == len(self._urls):
            # Every member busy: this notice waits for them (within the attempt's bound).
            await asyncio.wait(behind)
        posts: dict[int, asyncio.Task[DeliveryError | None]] = {}
        for index, url in enumerate(self._urls):
            busy = self._behind.get(index)
            if busy is None or busy.done():
                posts[index] = asyncio.ensure_future(self._post_one(index, url, body))
            elif note.event == "resolved":
                self._leave(index, asyncio.ensure_future(self._post_after(busy, index, url, body)))
        failures: list[DeliveryError] = []
        waiting = set(posts.values())
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                results = [task.result() for task in done]
                failures += [result for result in results if result is not None]
                if any(result is None for result in results):
                    # One member has it; the cluster (and the re-post) does the rest.
                    for index, task in posts.items():
                        if not task.done():
                            self._leave(index, task)
                    waiting = set()
                    return
        finally:
            for task in waiting:  # cancelled (aclose, the attempt's deadline)
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        raise DeliveryError(
            "; ".join(failure.reason for failure in failures),
            retryable=any(failure.retryable for failure in failures),
            retry_after=max(
                (f.retry_after for f in failures if f.retry_after is not None), default=None
            ),
        )

    async def release(self) -> None:
        """Let the members' posts still under way end within aclose()'s deadline (a slow
        member's resolve among them), then cut them."""
        behind = list(self._background)
        if behind and self._close_deadline is not None:
            left = self._close_deadline - asyncio.get_running_loop().time()
            if left > 0:
                await asyncio.wait(behind, timeout=left)
        for task in behind:
            task.cancel()
        await asyncio.gather(*behind, return_exceptions=True)
        self._behind.clear()
        await super().release()

    def _leave(self, index: int, task: asyncio.Task[DeliveryError | None]) -> None:
        """Let ``task`` (a post to member ``index``) go on in the background."""
        task.add_done_callback(_consume)
        task.add_done_callback(self._background.discard)
        self._background.add(task)
        self._behind[index] = task

    async def _post_after(
        self, busy: asyncio.Future[DeliveryError | None], index: int, url: Secret, body: bytes
    ) -> DeliveryError | None:
        await asyncio.wait({busy})
        return await self._post_one(index, url, body)

    async def _post_one(self, index: int, url: Secret, body: bytes) -> DeliveryError | None:
        label = "alertmanager" if len(self._urls) == 1 else f"alertmanager #{index + 1}"
        try:
            await self.post_json(url.reveal(), None, label=label, body=body)
        except DeliveryError as error:
            return error
        return None


def _consume(task: asyncio.Task[DeliveryError | None]) -> None:
    """A member's post nobody awaits any more: its outcome is not needed (a failure is
    already a DeliveryError result; anything else is retrieved, not logged by asyncio)."""
    if not task.cancelled():
        task.exception()
