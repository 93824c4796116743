"""Keep credentials out of results, reports, reprs and logs.

Health checkers are handed URLs and DSNs that often carry a password
(``postgresql://app:s3cret@db/app``) or a token in the query string. Everything a
checker shows to the outside goes through these helpers first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameters whose values are secrets often enough to always hide them.
_SECRET_PARAMS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "key",
        "pass",
        "password",
        "passwd",
        "pwd",
        "secret",
        "sig",
        "signature",
        "sslpassword",
        "token",
    }
)
# libpq keyword/value DSNs: "host=db user=app password=s3cret".
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _is_secret_param(name: str) -> bool:
    return name.lower() in _SECRET_PARAMS


def redact_url(url: str) -> str:
    """The URL with its password and secret query values replaced by ``***``.

    The user name, host, port, path and harmless query parameters stay, so the
    result still tells an operator which endpoint is meant. Keyword/value DSNs
    (``host=db password=x``) have their password masked too.
    """
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable: show nothing that could be a secret.
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_param(name) for name, _ in pairs):
            query = urlencode(
                [(name, MASK if _is_secret_param(name) else value) for name, value in pairs],
                safe="*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> tuple[str, ...]:
    """Every secret string in ``url``, raw and percent-decoded, to scrub from error text."""
    found: list[str] = []
    if "://" not in url:
        for match in _KEYWORD_PASSWORD.finditer(url):
            found.append(match.group(2).strip("'"))
    else:
        try:
            parts = urlsplit(url)
        except ValueError:
            return ()
        if "@" in parts.netloc:
            userinfo = parts.netloc.rpartition("@")[0]
            _, has_password, password = userinfo.partition(":")
            if has_password:
                found.append(password)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if _is_secret_param(name):
                found.append(value)
                found.append(quote(value, safe=""))
    expanded: set[str] = set()
    for secret in found:
        if secret:
            expanded.add(secret)
            expanded.add(unquote(secret))
    # Longest first, so a secret that contains another is replaced whole.
    return tuple(sorted(expanded, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
