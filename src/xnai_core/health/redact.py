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
    redact_data,
    redact_url,
    url_secrets,
)
from .._redact import redact as scrub

__all__ = [
    "MASK",
    "SECRET_NAME_PARTS",
    "is_secret_field",
    "is_secret_name",
    "redact",
    "redact_data",
    "redact_url",
    "scrub",
    "url_secrets",
]
