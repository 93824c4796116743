"""Redaction for health checks: the package's one redaction module, under health's names.

Everything lives in :mod:`xnai_core._redact`. ``scrub(text, secrets)`` here masks the
exact ``secrets`` a checker knows (its URL's password and tokens) *and* every credential
pattern (URLs, ``password=``, ``Authorization: Bearer``, ...), so an error message that
echoes something the checker never saw is masked too.
"""

from __future__ import annotations

from .._redact import (
    MASK,
    SECRET_NAME_PARTS,
    is_secret_field,
    is_secret_name,
    redact,
    redact_cut,
    redact_data,
    redact_url,
    url_secrets,
)
from .._redact import redact as scrub

__all__ = [
    "MASK",
    "MAX_ERROR_LENGTH",
    "SECRET_NAME_PARTS",
    "is_secret_field",
    "is_secret_name",
    "redact",
    "redact_cut",
    "redact_data",
    "redact_url",
    "scrub",
    "shown_error",
    "url_secrets",
]

MAX_ERROR_LENGTH = 1000
"""Characters of an error text a result keeps, and of each string in the details a check
of one's own reports (masked, then cut: ``...`` marks a cut)."""


def shown_error(text: str, secrets: tuple[str, ...] = ()) -> str:
    """An error text as a result keeps it: masked, then cut to :data:`MAX_ERROR_LENGTH`
    (a check failing with a megabyte message must not keep it in every result)."""
    return redact_cut(text, MAX_ERROR_LENGTH, secrets)
