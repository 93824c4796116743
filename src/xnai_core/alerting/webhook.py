"""Alerts as signed JSON to any HTTP endpoint.

The body (``Content-Type: application/json``)::

    {
      "version": 1,
      "id": "<delivery id: the same on every retry of this notification>",
      "event": "firing" | "resolved",
      "repeat": 0,                      # n for the n-th reminder of an active alert
      "sent_at": "2026-12-07T16:30:57.123Z",
      "source": "xnai-core",
      "alert": {
        "key": "rag_api:status", "service": "rag_api", "kind": "status",
        "severity": "critical",         # of the raise, also on its resolve
        "message": "...", "starts_at": "...", "ends_at": null | "...",
        "details": {...}                # masked
      }
    }

Every request carries the delivery id in ``X-Xnai-Delivery`` and ``Idempotency-Key``:
the same on every retry (a retry may follow an answer that timed out after the request
arrived), so a receiver drops a copy it already took. With a ``secret``, two more headers
let the receiver check it came from us:

- ``X-Xnai-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Xnai-Signature``: ``v1=`` and the hex HMAC-SHA256, keyed with the secret,
  of ``"<timestamp>." + body`` (the raw bytes received).

Verify by recomputing the HMAC over the raw body, comparing in constant time
(``hmac.compare_digest``), and refusing a timestamp more than five minutes from
your clock, so a captured request cannot be replayed later:
:func:`verify_signature` does all three. Within that window, drop a repeated body ``id``
(signed; the two headers carry the same id but are not).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Mapping
from typing import ClassVar, Unpack

from ._http import HttpSink, check_http_url
from ._mask import mask_details, mask_text
from ._model import Notification, iso_utc
from ._secret import Secret, url_pieces
from ._sink import SinkOptions

SIGNATURE_HEADER = "X-Xnai-Signature"
TIMESTAMP_HEADER = "X-Xnai-Timestamp"
DELIVERY_HEADER = "X-Xnai-Delivery"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300.0
_MAX_TIMESTAMP_DIGITS = 20


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Xnai-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if ``signature`` is ours for ``body`` and ``timestamp`` is within ``tolerance``.

    ``timestamp`` and ``signature`` are the raw header values; ``body`` the raw
    bytes received (before any JSON parsing). Whatever a sender puts in the headers
    gives False, never an exception (a receiver answers 401, not 500).
    """
    if not timestamp or not signature or not _is_timestamp(timestamp):
        return False
    moment = int(timestamp)
    current = time.time() if now is None else now
    if not abs(current - moment) <= tolerance:  # also refuses a NaN tolerance
        return False
    expected = sign(secret, moment, body).encode()
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


def _is_timestamp(value: str) -> bool:
    # ASCII digits only ("²".isdigit() is true), and short: int() refuses 4,300 digits.
    return len(value) <= _MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit()


class WebhookSink(HttpSink):
    """POSTs the JSON body above to ``url``, signed when ``secret`` is given.

    ``headers`` are added to every request (e.g. an ``Authorization``); their
    values count as secrets too. The URL, the secret and the header values are
    kept out of reprs, logs and stats.
    """

    kind: ClassVar[str] = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(verify=verify, **options)
        self._url = Secret(check_http_url("url", url))
        if secret is not None and not isinstance(secret, str | bytes):
            raise TypeError(f"'secret' must be a str or bytes: {type(secret).__name__}")
        if secret is not None and not secret:
            raise ValueError("'secret' must not be empty (pass None for unsigned requests)")
        # Bytes round-trip through latin-1 unchanged; text is keyed as UTF-8.
        self._secret_encoding = "latin-1" if isinstance(secret, bytes) else "utf-8"
        raw = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        self._secret = None if raw is None else Secret(raw)
        self._headers = {str(k): Secret(str(v)) for k, v in (headers or {}).items()}

    def secrets(self) -> tuple[str, ...]:
        found = [*url_pieces(self._url.reveal()), *(v.reveal() for v in self._headers.values())]
        if self._secret is not None:
            found.append(self._secret.reveal())
        return tuple(found)

    def describe(self) -> str:
        return f"signed={self._secret is not None}"

    def payload(self, note: Notification, *, now: float | None = None) -> dict[str, object]:
        """The JSON body (see the module docstring)."""
        raised = note.raised
        resolved = note.event == "resolved"
        shown = note.alert if resolved else raised
        return {
            "version": 1,
            "id": note.delivery_id,
            "event": note.event,
            "repeat": note.repeat,
            "sent_at": iso_utc(self._wall_clock() if now is None else now),
            "source": "xnai-core",
            "alert": {
                "key": raised.key,
                "service": raised.service,
                "kind": raised.kind,
                "severity": raised.severity,
                "message": mask_text(shown.message, self.secrets()),
                "starts_at": iso_utc(raised.timestamp),
                "ends_at": iso_utc(note.alert.timestamp) if resolved else None,
                "details": mask_details(shown.details, self.secrets()),
            },
        }

    async def send(self, note: Notification) -> None:
        now = self._wall_clock()
        body = json.dumps(self.payload(note, now=now)).encode()
        headers = {name: value.reveal() for name, value in self._headers.items()}
        # The same on every retry of this notification (and from a sink rebuilt by a
        # reload): a receiver that took it once drops the copies.
        headers[DELIVERY_HEADER] = note.delivery_id
        headers[IDEMPOTENCY_HEADER] = note.delivery_id
        if self._secret is not None:
            timestamp = int(now)
            key = self._secret.reveal().encode(self._secret_encoding)
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(key, timestamp, body)
        await self.post_json(self._url.reveal(), None, headers=headers, body=body)
