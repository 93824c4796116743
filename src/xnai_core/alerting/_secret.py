"""A credential that never shows itself: not in reprs, logs, stats or tracebacks' locals."""

from __future__ import annotations

import base64
from typing import Final
from urllib.parse import unquote, urlsplit

from .._redact import url_secrets

MASK: Final = "***"


class Secret:
    """Holds a URL, key, token or password; only :meth:`reveal` gives it back.

    Sinks keep every credential (a Slack webhook URL is one: its path is the
    token) in a ``Secret`` so that ``repr(sink)``, ``vars(sink)`` dumped by a
    debugger or a log formatter, and ``str()`` of any of them show ``***``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one place that sends it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would write the credential wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")


# A path segment this long may be a token (Slack's is 24 characters); shorter ones
# ("services", "v2", "hook") are names, masked only inside the whole path.
_MIN_TOKEN_SEGMENT = 8


def url_pieces(url: str) -> tuple[str, ...]:
    """Every piece of a URL that may be its credential, to scrub from text.

    For a Slack or webhook URL the path itself is the secret, and an error page
    may quote only the path, or only its last segment, so the URL is not enough:
    also its path and query, the path, long path segments, and what
    :func:`xnai_core._redact.url_secrets` finds (passwords, secret parameters).
    """
    pieces = {url, *url_secrets(url)}
    try:
        parts = urlsplit(url)
    except ValueError:
        return tuple(pieces)
    if parts.path not in ("", "/"):
        pieces.add(parts.path)
        pieces.add(unquote(parts.path))
        if parts.query:
            pieces.add(f"{parts.path}?{parts.query}")
    for segment in parts.path.split("/"):
        if len(segment) >= _MIN_TOKEN_SEGMENT:
            pieces.update({segment, unquote(segment)})
    if parts.username is not None or parts.password is not None:
        # Sent as "Authorization: Basic <this>": a reply that echoes it shows the password.
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        pieces.add(base64.b64encode(pair.encode()).decode())
    # Longest first, so a piece that contains another is replaced whole.
    return tuple(sorted(pieces, key=len, reverse=True))
