"""Reading ``Accept``-style headers (``Accept``, ``Accept-Encoding``): the entries ranked
by their ``q``, refused ones (``q=0``) left out. One reading for every route that
negotiates: ``/metrics`` (its format, gzip) and ``/health`` (health+json or JSON).
"""

from __future__ import annotations

import math

__all__ = ["gzip_accepted", "ranked"]


def ranked(header: str) -> list[tuple[str, str]]:
    """The entries of an ``Accept``-style header, most preferred first (ties in the
    header's order), without those refused (``q=0``): (lower-case token, entry
    without its ``q``). Media types and codings are case-insensitive."""
    ranking: list[tuple[float, int, str, str]] = []
    for index, entry in enumerate(header.split(",")):
        token, *params = (part.strip() for part in entry.split(";"))
        if not token:
            continue
        quality, kept = 1.0, []
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() != "q":
                kept.append(param)
                continue
            try:
                quality = float(raw)
            except ValueError:
                quality = 1.0  # not a number: as if absent
            if math.isnan(quality):
                quality = 0.0
        if quality > 0:
            token = token.lower()
            ranking.append((-min(quality, 1.0), index, token, ";".join([token, *kept])))
    return [(token, entry) for _, _, token, entry in sorted(ranking)]


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (not refused with ``q=0``)."""
    return any(token in ("gzip", "x-gzip") for token, _ in ranked(accept_encoding))
