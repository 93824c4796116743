"""The body and headers of a ``/metrics`` answer: content negotiation and gzip.

prometheus_client's ``choose_encoder`` takes the first OpenMetrics entry of the
``Accept`` header whatever its ``q`` (a scraper that ranks the classic text format
first, or refuses OpenMetrics with ``q=0``, still gets OpenMetrics), and its
``gzip_accepted`` ignores ``q=0`` likewise. Here the header's entries are ranked by
their ``q`` first (``xnai_core._accept``); prometheus_client still writes the chosen
format.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .._accept import gzip_accepted, ranked

_OPENMETRICS = "application/openmetrics-text"
_TEXT = "text/plain"


def negotiate(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """The encoder and content type for an ``Accept`` header: OpenMetrics when it is
    preferred (in a version prometheus_client writes), else the text format; the
    text format also when the header names neither."""
    for token, entry in ranked(accept):
        if token == _OPENMETRICS:
            encoder, content_type = choose_encoder(entry)
            if content_type.startswith(_OPENMETRICS):
                return encoder, content_type
            # A version prometheus_client does not write (0.0.1): the next entry.
        elif token in (_TEXT, "text/*", "*/*"):
            return choose_encoder(entry if token == _TEXT else "")
    return choose_encoder("")


def exposition(
    registry: CollectorRegistry, accept: str = "", accept_encoding: str = ""
) -> tuple[bytes, dict[str, str]]:
    """``registry`` collected and encoded for a request with these headers: the body
    and its ``Content-Type`` (and ``Content-Encoding``) headers.

    It collects, encodes and compresses: at 500 breakers, a few hundred milliseconds
    of CPU. Call it in a worker thread, not in the event loop your requests run in
    (``create_ops_app`` does).
    """
    encoder, content_type = negotiate(accept)
    body = encoder(registry)
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return body, headers
