"""Label values that never carry a secret and never grow without bound.

Service and breaker names are the only free labels. A name is the user's, and a
careless one may be a URL with a password in it (``redis://:s3cret@cache``): it is
redacted before it becomes a label. Past ``limit`` distinct names, new ones are
folded into :data:`OVERFLOW`, so a program that mints names per request cannot
blow up the time series database.
"""

from __future__ import annotations

import logging
import threading

from .._redact import redact

logger = logging.getLogger("xnai_core.metrics")

OVERFLOW = "_other"
"""The label value every name past the limit shares."""

MAX_LABEL_LENGTH = 120


def valid_text(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (``"\\ud800"``, which ``json.loads``
    accepts from any client) becomes ``?``. Encoding one raises, and one such name
    would make every scrape (or JSON answer) that shows it fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def safe_label(raw: str) -> str:
    """``raw`` with credentials masked, as valid UTF-8, and its length capped."""
    value = valid_text(redact(str(raw)))
    if len(value) > MAX_LABEL_LENGTH:
        value = value[: MAX_LABEL_LENGTH - 3] + "..."
    return value


class LabelGuard:
    """Maps raw names to safe label values, at most ``limit`` distinct ones."""

    def __init__(self, kind: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"'limit' must be >= 1: {limit!r}")
        self.kind = kind
        self.limit = limit
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, raw: str) -> str:
        try:
            return self._values[raw]
        except KeyError:
            pass
        with self._lock:
            if raw in self._values:
                return self._values[raw]
            if len(self._values) >= self.limit:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "more than %d %s names: the others are labelled %r",
                        self.limit,
                        self.kind,
                        OVERFLOW,
                    )
                return OVERFLOW
            value = safe_label(raw)
            self._values[raw] = value
            return value
