"""HTTPHealthChecker: an expected status code from an HTTP endpoint (httpx)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterable, Mapping
from functools import cache
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from .checker import DEFAULT_TIMEOUT, USER_AGENT, HealthChecker
from .redact import redact_url, url_secrets
from .result import HealthCheckError

__all__ = ["MAX_BODY_BYTES", "HTTPHealthChecker"]


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # One verified context for every checker: building one per connection pool
    # costs milliseconds and memory, and hundreds of checkers would each pay it.
    return ssl.create_default_context()


MAX_BODY_BYTES = 64 * 1024
"""A health endpoint's body is read (so the connection can be reused) up to this size."""


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without userinfo, and a Basic ``Authorization`` value built from it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


class HTTPHealthChecker(HealthChecker):
    """Checks an HTTP endpoint: an expected status code within the timeout.

    Each checker keeps one pooled connection (an httpx transport; pass
    ``transport`` to supply your own, which then stays yours to close).
    Credentials in the URL become a Basic ``Authorization`` header. The request
    goes straight to the transport rather than through an ``httpx.AsyncClient``:
    the client logs every request URL at INFO, and a URL may carry a token. No
    proxies from the environment and no redirects: a health check must reach the
    service itself, and any status in ``expected_status`` (default 200-399)
    counts as an answer.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        expected_status: Iterable[int] = range(200, 400),
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"'url' must be an http:// or https:// URL: {redact_url(str(url))!r}")
        self._public_url = redact_url(url)
        self._secrets = url_secrets(url)
        plain_url, authorization = _split_credentials(url)
        self._url = httpx.URL(plain_url)  # parsed once, not per request
        self.method = method.upper()
        self.expected_status = frozenset(expected_status)
        if not self.expected_status:
            raise ValueError("'expected_status' must name at least one status code: ()")
        merged = {"User-Agent": USER_AGENT, "Accept": "*/*", **(headers or {})}
        if authorization is not None:
            merged.setdefault("Authorization", authorization)
        self._headers = httpx.Headers(merged)
        self._timeouts = httpx.Timeout(self.timeout).as_dict()
        self._verify = verify
        self._transport = transport
        self._owns_transport = transport is None

    @property
    def url(self) -> str:
        """The checked URL, credentials masked."""
        return self._public_url

    def describe(self) -> dict[str, object]:
        return {"url": self._public_url, "method": self.method}

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            verify = _default_ssl_context() if self._verify is True else self._verify
            self._transport = httpx.AsyncHTTPTransport(
                verify=verify,
                # Checks of one service never overlap: one kept-alive connection suffices.
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=1),
            )
        return self._transport

    async def probe(self) -> Mapping[str, object]:
        request = httpx.Request(
            self.method,
            self._url,
            headers=self._headers,
            extensions={"timeout": self._timeouts},
        )
        response = await self._get_transport().handle_async_request(request)
        try:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    break
        finally:
            await response.aclose()
        details: dict[str, object] = {"status_code": response.status_code}
        if response.status_code not in self.expected_status:
            raise HealthCheckError(
                f"unexpected HTTP status {response.status_code}", details=details
            )
        return details

    async def aclose(self) -> None:
        if self._owns_transport and self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()
