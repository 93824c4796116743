"""One HTTP POST for the HTTP sinks, and what its outcome means for a retry.

Requests go to an httpx transport directly, not through ``httpx.AsyncClient``:
the client logs every request URL at INFO, and for a Slack or webhook sink the
URL is the credential. Redirects are not followed (a 3xx is a rejection: an
alert is never re-sent to a place the configuration did not name) and proxies
come only from the sink's own arguments, never from the environment.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Unpack
from urllib.parse import urlsplit

import httpx

from ._mask import mask_text
from ._model import DeliveryError
from ._sink import AlertSink, SinkOptions, mark_accepted

# Worth another attempt: the receiver's own "try later" answers. 408 is a request the
# server gave up reading (an idle or slow connection), not a judgement of its content.
RETRYABLE_STATUSES = frozenset({408, 429})

MAX_REPLY_BYTES = 4096
_REASON_EXCERPT = 120
USER_AGENT = "xnai-core-alerting"


@cache
def default_ssl_context() -> ssl.SSLContext:
    """One verified context (system CAs, hostname checked) for every sink.

    Loading the CA bundle takes ~0.1 s of CPU; done per transport it would stall the
    event loop at each sink's first request. Built once, when the first sink is.
    """
    return ssl.create_default_context()


def check_http_url(field: str, url: object) -> str:
    """``url`` if it is an http(s) URL with a host; the error never echoes the URL."""
    if not isinstance(url, str):
        raise TypeError(f"'{field}' must be a str URL: {type(url).__name__}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(
            f"'{field}' must be a valid http(s) URL (not shown: it may hold a secret)"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"'{field}' must be an http or https URL: scheme {parts.scheme!r}")
    if not host:
        raise ValueError(f"'{field}' must name a host (not shown: it may hold a secret)")
    return url


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date);
    None for anything else (a garbled header means the backoff, never a lost alert).

    Only ASCII digits count: ``"²".isdigit()`` is true, but no number.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
        return max(0.0, moment.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class HttpPoster:
    """POSTs bodies over one pooled transport; turns every outcome into success or DeliveryError."""

    def __init__(
        self,
        *,
        timeout: float,
        reply_timeout: float | None = None,
        verify: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        read = timeout if reply_timeout is None else reply_timeout
        self._timeouts = {"connect": timeout, "read": read, "write": timeout, "pool": timeout}
        self._verify = default_ssl_context() if verify is True else verify
        self._proxy = proxy
        self._transport = transport
        self._owns_transport = transport is None

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(
                verify=self._verify,
                proxy=self._proxy,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            )
        return self._transport

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        label: str,
        secrets: Iterable[str] = (),
        wall_clock: float | None = None,
    ) -> bytes:
        """POST ``body``; the reply's body (at most 4 KB) on 2xx, else DeliveryError.

        ``label`` names the destination in reasons ("slack", "alertmanager #2");
        it is the only thing about the destination that a reason shows.
        """
        target = httpx.URL(url)
        request = httpx.Request(
            "POST",
            target.copy_with(username=None, password=None),
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **_basic_auth(target),
                **headers,
            },
            extensions={"timeout": self._timeouts},
        )
        try:
            response = await self._get_transport().handle_async_request(request)
        except httpx.TimeoutException:
            raise DeliveryError(f"{label}: timed out", retryable=True) from None
        except httpx.UnsupportedProtocol:
            raise DeliveryError(f"{label}: unsupported URL scheme", retryable=False) from None
        except httpx.ConnectError as error:
            if _caused_by(error, ssl.SSLCertVerificationError):
                # Retrying cannot make a certificate trusted.
                raise DeliveryError(
                    f"{label}: TLS certificate not trusted", retryable=False
                ) from None
            raise DeliveryError(
                f"{label}: {type(error).__name__}{_os_reason(error)}", retryable=True
            ) from None
        except httpx.TransportError as error:
            # The message of a connect error is the OS's ("Connection refused"),
            # but the request (and its URL) hangs off the exception: never log it.
            raise DeliveryError(
                f"{label}: {type(error).__name__}{_os_reason(error)}", retryable=True
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            # The status line is the answer: a body that then stalls or trickles past the
            # attempt's deadline must not make it a failure, and a second post.
            mark_accepted()
        reply = await _read_reply(response)
        if 200 <= status < 300:
            return bytes(reply[:MAX_REPLY_BYTES])
        excerpt = mask_text(
            bytes(reply[:_REASON_EXCERPT]).decode("utf-8", "replace").strip(), secrets
        )
        reason = f"{label}: HTTP {status}" + (f" {excerpt!r}" if excerpt else "")
        if status in RETRYABLE_STATUSES or status >= 500:
            now = time.time() if wall_clock is None else wall_clock
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
            raise DeliveryError(reason, retryable=True, retry_after=retry_after)
        raise DeliveryError(reason, retryable=False)

    async def aclose(self) -> None:
        """Close the transport if this poster made it."""
        if self._owns_transport and self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()


class HttpSink(AlertSink):
    """A sink that POSTs JSON over one pooled :class:`HttpPoster` (closed by ``release()``).

    ``timeout`` bounds connecting and sending, ``reply_timeout`` the wait for the answer.
    """

    def __init__(
        self, *, verify: ssl.SSLContext | bool = True, **options: Unpack[SinkOptions]
    ) -> None:
        super().__init__(**options)
        self._poster = HttpPoster(
            timeout=self.timeout, reply_timeout=self.reply_timeout, verify=verify
        )

    async def post_json(
        self,
        url: str,
        payload: object,
        *,
        label: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """POST ``payload`` as JSON (or ``body`` as it is) to ``url``; DeliveryError if refused."""
        return await self._poster.post(
            url,
            json.dumps(payload).encode() if body is None else body,
            headers=headers or {},
            label=self.kind if label is None else label,
            secrets=self.secrets(),
            wall_clock=self._wall_clock(),
        )

    async def release(self) -> None:
        await self._poster.aclose()


def _basic_auth(url: httpx.URL) -> dict[str, str]:
    """``Authorization: Basic`` for a URL's ``user:password@`` (an Alertmanager behind basic
    auth): the transport, unlike ``httpx.AsyncClient``, does not send it by itself."""
    if not url.username and not url.password:
        return {}
    pair = f"{url.username}:{url.password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


async def _read_reply(response: httpx.Response) -> bytearray:
    """The reply's body, at most 4 KB; what came before a cut, if the connection broke.

    The status line is in by now, and it is the answer: a receiver that said 200 and
    then reset the connection (or stalled) mid-body has the notification. Counting that
    as a failure would post it again (a second Slack message).
    """
    reply = bytearray()
    try:
        async for chunk in response.aiter_raw():
            reply += chunk
            if len(reply) > MAX_REPLY_BYTES:
                break
    except httpx.TransportError:
        pass
    finally:
        with contextlib.suppress(httpx.TransportError):
            await response.aclose()
    return reply


def _os_reason(error: BaseException) -> str:
    """The OS error text under an httpx error ("Connection refused"), if there is one."""
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            return ""
        if isinstance(cause, OSError) and cause.strerror:
            return f" ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    return ""


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
