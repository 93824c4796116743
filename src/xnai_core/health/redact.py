"""Keep credentials out of results, reports, reprs and logs.

Health checkers are handed URLs and DSNs that often carry a password
(``postgresql://app:s3cret@db/app``), a token in the query string
(``?auth_token=...``, ``?X-Amz-Signature=...``) or a token as the user name
(``https://ghp_xxx@host/``). Everything a checker shows to the outside goes
through these helpers first.

Query parameters are judged by name, generously: a name is secret when,
lower-cased and stripped of everything but letters and digits, it contains one
of :data:`SECRET_NAME_PARTS` (so ``auth_token``, ``client_secret``,
``private_token``, ``api-key``, ``X-Amz-Signature`` and ``sessionid`` are all
masked). Masking a harmless value (``?keyspace=3``) costs readability only;
showing a token costs the token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"

SECRET_NAME_PARTS: tuple[str, ...] = (
    "token",
    "secret",
    "key",
    "pass",
    "pwd",
    "sig",
    "auth",
    "cred",
    "session",
    "jwt",
    "bearer",
    "cookie",
)
"""A query parameter whose normalised name contains one of these is masked."""

_SECRET_NAME = re.compile("|".join(SECRET_NAME_PARTS))
_NOT_ALNUM = re.compile(r"[^a-z0-9]")

# URL schemes whose user name is a role or account name, sent beside a separate
# password: "postgresql://app@db/app" shows "app". For any other scheme (http,
# https, ...) a user name without a password is how tokens travel
# ("https://<token>@host/"), so it is masked.
_ROLE_NAME_SCHEMES = frozenset(
    {
        "amqp",
        "amqps",
        "mongodb",
        "mysql",
        "postgres",
        "postgresql",
        "redis",
        "rediss",
        "unix",
        "valkey",
        "valkeys",
    }
)

# A query value shorter than this is masked in URLs but scrubbed from free text
# only together with its name ("session=1"): scrubbing every "1" out of error
# messages would destroy them, and a 1-3 character value is no credential.
_MIN_FREE_TEXT_SECRET = 4

# libpq keyword/value DSNs: "host=db user=app password=s3cret".
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_SEPARATOR = re.compile(r"([&;])")


def is_secret_name(name: str) -> bool:
    """True if a query parameter called ``name`` (raw or percent-encoded) holds a secret."""
    normalised = _NOT_ALNUM.sub("", unquote_plus(name).lower())
    return _SECRET_NAME.search(normalised) is not None


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower().partition("+")[0]


def _hides_lone_user(url: str) -> bool:
    return _scheme(url) not in _ROLE_NAME_SCHEMES


def _query_pairs(query: str) -> list[tuple[str, str, str]]:
    """``(segment, name, value)`` for each ``&``/``;``-separated segment, raw spelling."""
    pairs = []
    for segment in _QUERY_SEPARATOR.split(query):
        if segment in ("&", ";") or "=" not in segment:
            continue
        name, _, value = segment.partition("=")
        pairs.append((segment, name, value))
    return pairs


def _mask_query(query: str) -> str:
    """``query`` with each secret parameter's value replaced; the rest kept verbatim."""
    if "=" not in query:
        return query
    pieces = []
    for piece in _QUERY_SEPARATOR.split(query):
        name, has_value, _ = piece.partition("=")
        pieces.append(f"{name}={MASK}" if has_value and is_secret_name(name) else piece)
    return "".join(pieces)


def redact_url(url: str) -> str:
    """The URL with its credentials replaced by ``***``.

    Masked: a password in the userinfo; a user name without a password, except
    for database and broker schemes where it is a role name (``postgresql``,
    ``redis``, ...); the values of secret-looking query (and fragment)
    parameters. The host, port, path and harmless parameters stay, so the result
    still tells an operator which endpoint is meant. Keyword/value DSNs
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
        if has_password:
            netloc = f"{user}:{MASK}@{hostport}"
        elif user and _hides_lone_user(url):
            netloc = f"{MASK}@{hostport}"
    query = _mask_query(parts.query)
    fragment = _mask_query(parts.fragment)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def url_secrets(url: str) -> tuple[str, ...]:
    """Every secret string in ``url``, raw and decoded, to scrub from error text."""
    found: list[str] = []
    short: list[str] = []
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
            user, has_password, password = userinfo.partition(":")
            if has_password:
                found.append(password)
            elif user and _hides_lone_user(url):
                if len(unquote(user)) >= _MIN_FREE_TEXT_SECRET:
                    found.append(user)
                else:
                    short.append(f"{user}@")
        for segment, name, value in _query_pairs(parts.query) + _query_pairs(parts.fragment):
            if not value or not is_secret_name(name):
                continue
            if len(unquote_plus(value)) >= _MIN_FREE_TEXT_SECRET:
                found.append(value)
                found.append(unquote_plus(value))
                found.append(quote(unquote_plus(value), safe=""))
            else:
                short.append(segment)
                short.append(f"{unquote_plus(name)}={unquote_plus(value)}")
    expanded: set[str] = set(short)
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
