"""The control token's check, one for every route that asks for it (``create_ops_app``'s
and the service's dashboard API), so one token opens all of them or none.

The header's bytes are compared with the token's UTF-8 in constant time. Starlette
decodes header bytes as Latin-1, so encoding back to Latin-1 gives the bytes the client
sent: a token beyond ASCII matches when sent as its UTF-8 bytes (curl, httpx, and the
dashboard, which sends them so, since ``fetch`` refuses a header beyond Latin-1).
"""

from __future__ import annotations

import hmac

__all__ = ["bearer_matches"]


def bearer_matches(authorization: str, token: bytes | None) -> bool:
    """Whether an ``Authorization`` header value (``Bearer <token>``, the scheme in any
    case) bears ``token`` (its UTF-8 bytes; None: no token is configured, nothing does)."""
    if token is None:
        return False
    scheme, _, offered = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        sent = offered.strip().encode("latin-1")
    except UnicodeEncodeError:  # not from a header (a str made in-process): not the token
        return False
    return hmac.compare_digest(sent, token)
