"""Keep credentials out of everything the package shows: logs, stats, events, alerts,
reprs, error messages and pages. The one home of redaction for the whole package.

What is masked (each value becomes ``***``):

- URLs and DSNs (:func:`redact_url`): the password of ``scheme://user:password@host``,
  where the user info ends at the *last* ``@`` of the authority, so an unencoded ``@``,
  ``/``, ``?``, ``#`` or ``:`` in a password leaks nothing; a lone user name except for
  database and broker schemes, where it is a role (``https://<token>@host`` hides the
  token, ``postgresql://app@db`` shows ``app``); query and fragment parameters whose name
  looks secret (:func:`is_secret_name`: ``token``, ``access_token``, ``api_key``,
  ``client_secret``, ``X-Amz-Signature``, ``sig``, ``code``, ...), and any parameter whose
  percent-encoded value hides one (``?next=https%3A%2F%2Fh%2F%3Ftoken%3D...``). Where a URL
  reads two ways (``http://u:1234/x@h``: a port and a path, or a password with a ``/``),
  both readings are masked (``http://u:***/***@h``). Path segments shaped like tokens.
- Free text (:func:`redact`): every URL in it as above; ``name=value``, ``name: value``
  (the value may be on the next line, YAML style), ``"name": "value"`` and ``b'...'``
  literals where the name is a secret field (:func:`is_secret_field`:
  ``password``, ``PGPASSWORD``, ``api_key``, ``auth_token``, ``X-Api-Key``, ...), a
  bracketed value taken whole (``password=[a, b]``), and any field whose percent-encoded
  value hides a secret (``form=user%3Dme%26password%3D...``);
  ``Authorization: Bearer ...``/``Basic ...`` and any ``Bearer <token>``; command-line
  flags ``--password=...`` and ``--password ...``; an all-capital secret variable and its
  value after a space (``PGPASSWORD x``, ``AUTH x``); a URL password holding a space
  (``redis://u:a b@h``); ``user:password@host`` without a scheme; a path segment shaped
  like a token (:func:`redact_url` does the same in URLs: 20+ token characters mixing
  capitals, small letters and digits, as a bot token or a webhook's secret; a UUID or a
  hex digest stays); plus exact secrets the caller knows.
- Argument lists (:func:`redact_argv`): the same per argument, the value after a secret
  flag (``--token abc``), and the few short flags that carry a password by convention
  (``mysql -pSECRET``, ``redis-cli -a SECRET``, ``curl -u user:SECRET``).

Masking a harmless value costs readability; showing a credential costs the credential.
What no pattern can know (a bare secret in an error message) is scrubbed only when the
caller passes it in ``secrets`` (checkers know their own URL's secrets: :func:`url_secrets`).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

__all__ = [
    "MASK",
    "SECRET_NAME_PARTS",
    "argv_secrets",
    "is_secret_field",
    "is_secret_name",
    "redact",
    "redact_argv",
    "redact_cut",
    "redact_data",
    "redact_tree",
    "redact_url",
    "scrub",
    "shown_as",
    "url_secrets",
]

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
"""A URL query parameter whose normalised name contains one of these is masked."""

_SECRET_PARAM_EXACT = frozenset({"code", "otp", "nonce"})
"""URL parameters secret by their whole name (an OAuth authorization code)."""

_SECRET_FIELD_ENDINGS: tuple[str, ...] = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "pass",
    "key",
    "keyid",
    "signature",
    "sig",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "cookie",
    "session",
    "sessionid",
    "jwt",
)
"""A field in free text (``name=value``, ``name: value``, ``--name value``) is secret when
its normalised name ends with one of these: ``max_tokens`` and ``KeyError`` are not."""

_NOT_ALNUM = re.compile(r"[^a-z0-9]")

# How many layers of percent-encoding the value being redacted sits under
# (``?next=...%253D...``): each is decoded and redacted once, up to this depth.
_MAX_DECODING = 8
_decoding: ContextVar[int] = ContextVar("xnai_core_redact_decoding", default=0)

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

_PARAM_END = re.compile(r"[&;]")
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.%a-z]+\])(?::\d*)?")
# A URL starts at the first letter of a run of scheme characters: ``pre`` holds what of
# the run comes before it (digits, ``+``, ``.``, ``-``). Every pattern here is tried only
# where its run starts (the lookbehind) and takes its run whole (possessive), so a long
# run ("a.a.a...", a base64 blob, a 1 MB error body) costs one pass, not one per
# character: redaction sits on every failure's path and must stay linear in its text.
_SCHEME_RUN = r"(?<![A-Za-z0-9+.-])(?P<pre>[0-9+.-]*+)"
_URL = re.compile(_SCHEME_RUN + r"""(?P<url>[A-Za-z][A-Za-z0-9+.-]*+://[^\s'"<>`]+)""")
# A value: quoted (also a bytes or raw literal: b'...'), or bare, where brackets are
# taken whole ("password=[x, y]", "secret=(x)"), so a secret inside them is masked,
# while an unmatched closing bracket ends it ("(password=x)").
_VALUE = (
    r"""(?:[bBrRuU]{0,2}"(?:[^"\\]|\\.)*"|[bBrRuU]{0,2}'(?:[^'\\]|\\.)*'"""
    r"""|(?:[^\s&;,'"<>()\[\]{}]|\[[^\]]*\]|\([^)]*\)|\{[^}]*\})+)"""
)
_VALUE_AT = re.compile(_VALUE)
# name=value (env style, libpq DSNs, --flag=value, key=value in messages). The name is a
# whole run of name characters (a harmless prefix does not matter: a field is secret by
# how its name ends); its value is read by _VALUE_AT only where it may be masked.
_ASSIGNMENT = re.compile(r"(?P<name>(?<![\w.-])[\w.-]++)\s*=\s*")
# name: value (headers, YAML, dict reprs); the name may be quoted. The value may start on
# the next line, also as a repr writes it ('password:\\n  s3cret').
_COLON_FIELD = re.compile(r"""(?P<name>(?<![\w.-])["']?[\w.-]++["']?)\s*:(?:\s|\\[nrt])*+(?!//)""")
_AUTHORIZATION = re.compile(
    r"(?i)(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?:bearer|basic|digest|token|negotiate|apikey|aws4-hmac-sha256)\s+)?)"
    r"(?P<value>[^\s\"',;]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)")
_FLAG_THEN_VALUE = re.compile(r"(?P<name>(?<!\S)--?[A-Za-z][\w-]*)[ \t]+(?=(?P<value>[^\s-]\S*))")
# NAME value: an environment variable's name and its value after a space, as in
# "PGPASSWORD s3cret" or "AUTH s3cret" (all capitals: prose is not read this way).
_ENV_THEN_VALUE = re.compile(
    r"(?P<name>(?<![\w-])[A-Z][A-Z0-9_]*)(?![\w-])[ \t]+(?=(?P<value>[^\s=:*][^\s,;]*))"
)
# A URL whose password holds a space, which ends the URL pattern's match early: the user
# info runs to an '@' before a host. Not a port followed by words ("h:8080 and a@b").
_URL_SPACED_PASSWORD = re.compile(
    r"""(?P<head>(?<![\w+.-])(?:\w*+[+.-]++)*+[A-Za-z][A-Za-z0-9+.-]*+://[^\s/@:'"<>]*:)"""
    r"""(?P<password>(?!\d+\s)[^\s@/'"<>][^@\n/'"<>]{0,256}?)@(?=[A-Za-z0-9\[])"""
)
# user:password@host without a scheme ("connecting to app:s3cret@db:5432").
_BARE_USER_INFO = re.compile(
    r"""(?<![\w/:@.%+~-])(?P<user>[A-Za-z0-9._~%+-]+):(?P<password>[^\s@/:'"<>]+)@"""
    r"""(?=[A-Za-z0-9\[])"""
)
# A path segment that looks like a token (a bot token, a webhook's secret): at least
# this long, of token characters, with capitals, small letters and digits all present.
# A UUID or a hex digest (no capitals) and a word stay.
_TOKEN_SEGMENT = re.compile(r"[A-Za-z0-9_.~+=:-]{20,}")
# ... and such a segment in free text, after a '/' (a path without its URL's scheme).
_PATH_SEGMENT = re.compile(r"(?<=/)[A-Za-z0-9_.~+=:%-]{20,}(?=[/?#\s\"'<>)\]},;]|$)")


def _normalised(name: str) -> str:
    return _NOT_ALNUM.sub("", unquote_plus(name).lower())


def is_secret_name(name: str) -> bool:
    """True if a URL query or fragment parameter called ``name`` (raw or percent-encoded)
    holds a secret: generous, since a URL carries little else worth reading."""
    normalised = _normalised(name)
    return normalised in _SECRET_PARAM_EXACT or any(
        part in normalised for part in SECRET_NAME_PARTS
    )


def is_secret_field(name: str) -> bool:
    """True if ``name`` (a field, variable, header or ``--flag`` in free text) holds a secret."""
    normalised = _normalised(name)
    return bool(normalised) and normalised.endswith(_SECRET_FIELD_ENDINGS)


# -- URLs ------------------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower().partition("+")[0]


def _hides_lone_user(url: str) -> bool:
    return _scheme(url) not in _ROLE_NAME_SCHEMES


def _split_userinfo(scheme: str, rest: str) -> tuple[str | None, str]:
    """``(user info or None, the rest)`` of what follows ``scheme://``.

    The user info ends at the last ``@`` of the authority. An ``@`` past the first
    ``/``, ``?`` or ``#`` is in the path or query (``/@scope/pkg``, ``?email=a@b``) only
    when what precedes that delimiter is a plain ``host[:port]``; otherwise the delimiter
    is part of a password, and everything up to the last ``@`` is masked.
    """
    if scheme == "unix":
        # The socket's path may hold an '@' (systemd instances): not the user info's end.
        if rest.startswith("/"):
            return None, rest
        at = rest.rfind("@/")
        if at < 0:
            at = rest.rfind("@")
        return (rest[:at], rest[at + 1 :]) if at >= 0 else (None, rest)
    at = rest.rfind("@")
    if at < 0:
        return None, rest
    head = rest[:at]
    delimiter = min((i for i in (head.find(c) for c in "/?#") if i >= 0), default=-1)
    if delimiter >= 0:
        authority = head[:delimiter]
        if "@" not in authority and _PLAIN_HOST.fullmatch(authority):
            return None, rest
    return head, rest[at + 1 :]


def _ambiguous_user_info(scheme: str, rest: str) -> tuple[str, str, str] | None:
    """``(authority, segment, after)`` when ``rest`` reads two ways, else None.

    In ``u:1234/x@h/`` (or ``tok/en@h/``) the text before the first ``/`` is a plain
    ``host[:port]``, so a URL parser reads ``/x@h/`` as a path; but it may as well be a
    user ``u`` whose password ``1234/x`` holds an unencoded ``/`` (or a token with a
    ``/``). Read as one path segment up to the last ``@`` (not ``/@scope`` nor a
    multi-segment path), both readings are masked: the port or lone user, and the segment.
    """
    if scheme == "unix":
        return None
    at = rest.rfind("@")
    slash = rest.find("/", 0, max(at, 0))
    if at < 0 or slash < 0:
        return None
    authority, segment = rest[:slash], rest[slash + 1 : at]
    if not segment or any(c in segment for c in "/?#") or not _PLAIN_HOST.fullmatch(authority):
        return None
    return authority, segment, rest[at + 1 :]


def _authority_secret(url: str, authority: str) -> str | None:
    """What of ``authority`` is secret if it is user info: the text after ``:``, or a
    lone user name where a lone user is a token."""
    user, has_password, password = authority.partition(":")
    if has_password:
        return password
    return user if user and _hides_lone_user(url) else None


def _secret_params(params: str) -> list[tuple[str, str, int, int]]:
    """``(name, value, value start, value end)`` of each secret parameter in ``params``
    (the query and fragment, after the first ``?`` or ``#``).

    Parameters end at ``&`` or ``;``; a ``#`` starts the fragment's parameters too,
    except inside a secret value, which runs on to the next ``&``/``;``: an unencoded
    ``#`` in a password must not cut it in two, one half shown.
    """
    found = []
    position = 0
    for match in re.finditer(r"[^&;#]+", params):
        if match.start() < position:
            continue
        name, has_value, value = match.group(0).partition("=")
        if not has_value:
            continue
        start = match.start() + len(name) + 1
        if is_secret_name(name):
            end = _PARAM_END.search(params, start)
            position = len(params) if end is None else end.start()
        elif _encodes_a_secret(value):
            position = match.end()
        else:
            continue
        found.append((name, params[start:position], start, position))
    return found


def _encodes_a_secret(value: str) -> bool:
    """True if a harmless-looking parameter's percent-encoded value hides a credential:
    a URL passed along (``?next=https%3A%2F%2Fh%2F%3Ftoken%3D...``, an OAuth
    ``redirect_uri``) or a form body (``payload=password%3D...``)."""
    if "%" not in value:
        return False
    decoded = unquote_plus(value)
    depth = _decoding.get()
    # A value that decodes to itself hides nothing the pass over it does not see; and
    # each layer of encoding is read at most _MAX_DECODING deep, so no text can make
    # the redaction recurse without end (before: "a=a=a=...%" raised RecursionError).
    if decoded == value or depth >= _MAX_DECODING:
        return False
    token = _decoding.set(depth + 1)
    try:
        return redact(decoded) != decoded
    finally:
        _decoding.reset(token)


def _mask_params(params: str) -> str:
    """``params`` with each secret parameter's value replaced; the rest kept verbatim."""
    pieces: list[str] = []
    done = 0
    for _, _, start, end in _secret_params(params):
        pieces += [params[done:start], MASK]
        done = end
    return "".join(pieces) + params[done:]


def _split_location(rest: str) -> tuple[str, str]:
    """``(host and path, the rest from the first "?" or "#")``."""
    match = re.search(r"[?#]", rest)
    return (rest, "") if match is None else (rest[: match.start()], rest[match.start() :])


def redact_url(url: str) -> str:
    """The URL with its credentials replaced by ``***``.

    Masked: a password in the user info; a user name without a password, except for
    database and broker schemes where it is a role name (``postgresql``, ``redis``,
    ...); the values of secret-looking query and fragment parameters. The host, port,
    path and harmless parameters stay, so the result still tells an operator which
    endpoint is meant. Text that is not a URL (a keyword/value DSN such as
    ``host=db password=x``) goes through :func:`redact`.
    """
    scheme_text, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme_text):
        return _redact_patterns(url)
    ambiguous = _ambiguous_user_info(_scheme(url), rest)
    if ambiguous is not None:
        authority, _, after = ambiguous
        secret = _authority_secret(url, authority)
        if secret is not None:
            authority = authority[: len(authority) - len(secret)] + MASK
        location, params = _split_location(after)
        return (
            f"{scheme_text}://{authority}/{MASK}@{location}{params[:1]}{_mask_params(params[1:])}"
        )
    userinfo, rest = _split_userinfo(_scheme(url), rest)
    shown_user = ""
    if userinfo is not None:
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            shown_user = f"{user}:{MASK}@"
        elif user and _hides_lone_user(url):
            shown_user = f"{MASK}@"
        else:
            shown_user = f"{user}@"
    location, params = _split_location(rest)
    location = _mask_path(location)
    return f"{scheme_text}://{shown_user}{location}{params[:1]}{_mask_params(params[1:])}"


def _looks_like_token(segment: str) -> bool:
    """True for a path segment shaped like a credential (``bot123456:AAH...``, a webhook's
    secret): long, of token characters, mixing capitals, small letters and digits."""
    text = unquote(segment)
    return (
        _TOKEN_SEGMENT.fullmatch(text) is not None
        and any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() for c in text)
    )


def _token_segments(location: str) -> list[str]:
    """The path segments of ``location`` (host and path) that look like tokens."""
    _, _, path = location.partition("/")
    return [segment for segment in path.split("/") if _looks_like_token(segment)]


def _mask_path(location: str) -> str:
    """``location`` (host and path) with each token-like path segment masked."""
    host, slash, path = location.partition("/")
    if not slash:
        return location
    segments = [MASK if _looks_like_token(seg) else seg for seg in path.split("/")]
    return host + "/" + "/".join(segments)


def url_secrets(url: str) -> tuple[str, ...]:
    """Every secret string in ``url``, raw and decoded, to :func:`scrub` from error text.

    Longest first, so a secret that contains another is replaced whole.
    """
    found: list[str] = []
    short: list[str] = []
    _, sep, rest = url.partition("://")
    if not sep:
        for match in _ASSIGNMENT.finditer(url):
            read = _VALUE_AT.match(url, match.end())
            name = _field_name(match.group("name"), dashes=True)
            if read is not None and name is not None and is_secret_field(name):
                found.append(read.group(0).strip("'\""))
    else:
        ambiguous = _ambiguous_user_info(_scheme(url), rest)
        if ambiguous is not None:
            authority, segment, rest = ambiguous
            secret = _authority_secret(url, authority)
            whole = segment if secret is None else f"{secret}/{segment}"
            for part in (whole, segment, secret or ""):
                if len(unquote(part)) >= _MIN_FREE_TEXT_SECRET:
                    found.append(part)
        userinfo, rest = _split_userinfo(_scheme(url), rest) if ambiguous is None else (None, rest)
        if userinfo is not None:
            user, has_password, password = userinfo.partition(":")
            if has_password:
                found.append(password)
            elif user and _hides_lone_user(url):
                if len(unquote(user)) >= _MIN_FREE_TEXT_SECRET:
                    found.append(user)
                else:
                    short.append(f"{user}@")
        found.extend(_token_segments(_split_location(rest)[0]))
        for name, value, _, _ in _secret_params(_split_location(rest)[1][1:]):
            if not value:
                continue
            if len(unquote_plus(value)) >= _MIN_FREE_TEXT_SECRET:
                found.append(value)
                found.append(unquote_plus(value))
                found.append(quote(unquote_plus(value), safe=""))
            else:
                short.append(f"{name}={value}")
                short.append(f"{unquote_plus(name)}={unquote_plus(value)}")
    expanded: set[str] = set(short)
    for secret in found:
        if secret:
            expanded.add(secret)
            expanded.add(unquote(secret))
    return tuple(sorted(expanded, key=len, reverse=True))


# -- free text -------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _field_name(run: str, *, dashes: bool) -> str | None:
    """The field name a run of name characters (``[\\w.-]+``, maybe quoted) holds: from
    its first letter or ``_`` that starts the run or follows a ``.`` (with ``dashes``, up
    to two ``-`` may lead, as in ``--password``), to its end; None if it holds none."""
    run = run.strip("'\"")
    start = 0
    while start < len(run):
        begin = start
        if dashes:
            while begin < start + 2 and begin < len(run) and run[begin] == "-":
                begin += 1
        if begin < len(run) and (
            (run[begin].isascii() and run[begin].isalpha()) or run[begin] == "_"
        ):
            return run[start:]
        dot = run.find(".", start)
        if dot < 0:
            return None
        start = dot + 1
    return None


def _mask_fields(pattern: re.Pattern[str], text: str) -> str:
    """Mask the value of each secret field ``pattern`` finds.

    A pattern matches a field's name and separator, and either reads the value in a
    lookahead (a ``value`` group) or leaves it to :data:`_VALUE_AT`; either way a
    harmless field does not swallow the next one: in ``failed: password: x``,
    ``failed``'s value is ``password``, and ``password`` is still seen as a field of its
    own. A harmless field's value is read only where it may hide an encoded secret (the
    text holds a ``%``), and a field inside a value already read is not read again, so
    ``a=a=a=...`` costs one pass.
    """
    pieces: list[str] = []
    done = 0
    read_to = 0  # the end of the last harmless value read: nothing in it encodes a secret
    may_encode = "%" in text
    has_value = "value" in pattern.groupindex
    for match in pattern.finditer(text):
        if has_value:
            name = match.group("name")
            start = match.start("value")
        else:
            name = _field_name(match.group("name"), dashes=pattern is _ASSIGNMENT)
            if name is None:
                continue
            start = match.end()
        # An Authorization header was masked already, keeping its scheme word ("Bearer").
        if start < done or _normalised(name).endswith("authorization"):
            continue
        secret = is_secret_field(name)
        if not secret and (not may_encode or start < read_to):
            continue
        if has_value:
            end = match.end("value")
        else:
            value = _VALUE_AT.match(text, start)
            if value is None:
                continue
            end = value.end()
        if not secret and not _encodes_a_secret(text[start:end]):
            read_to = end
            continue
        pieces.append(text[done:start])
        pieces.append(MASK)
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _redact_patterns(text: str) -> str:
    text = _URL_SPACED_PASSWORD.sub(_mask_spaced_password, text)
    text = _URL.sub(lambda m: m.group("pre") + redact_url(m.group("url")), text)
    text = _BARE_USER_INFO.sub(lambda m: f"{m.group('user')}:{MASK}@", text)
    text = _PATH_SEGMENT.sub(lambda m: MASK if _looks_like_token(m.group(0)) else m.group(0), text)
    text = _AUTHORIZATION.sub(lambda m: m.group("head") + MASK, text)
    text = _BEARER.sub(lambda m: m.group("head") + MASK, text)
    for pattern in (_ASSIGNMENT, _COLON_FIELD, _FLAG_THEN_VALUE, _ENV_THEN_VALUE):
        text = _mask_fields(pattern, text)
    return text


def _mask_spaced_password(match: re.Match[str]) -> str:
    password = match.group("password")
    if not any(c.isspace() for c in password):
        return match.group(0)  # no space: the URL pattern reads it whole
    return f"{match.group('head')}{MASK}@"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential it shows masked (see the module's docstring).

    ``secrets``: exact strings the caller knows to be secret (a checker's password, its
    URL's token); they are scrubbed wherever they appear, before the patterns run.
    """
    if secrets:
        text = scrub(text, secrets)
    if not text:
        return text
    return _redact_patterns(text)


_MAX_DATA_DEPTH = 16
_MAX_TREE_DEPTH = 32


@dataclass(frozen=True)
class _Walk:
    """How :func:`_walk` shows nested data: the one set of masking rules for data.

    ``json``: build JSON-ready data (mappings become dicts, sequences and sets lists,
    other objects their redacted ``str``), or keep the data's shape (tuples stay tuples,
    sets sets, other objects as given, unchanged data returned as given).
    ``secret_keys``: mask the value under a secret-named key whole.
    ``finish``: a last step for every string shown (a key or a value).
    """

    secrets: tuple[str, ...] = ()
    limit: int | None = None
    finish: Callable[[str], str] | None = None
    secret_keys: bool = True
    json: bool = False
    max_depth: int = _MAX_DATA_DEPTH

    def text(self, text: str) -> str:
        if self.limit is None:
            text = redact(text, self.secrets)
        else:
            text = redact_cut(text, self.limit, self.secrets)
        return text if self.finish is None else self.finish(text)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float)


def _walk(value: object, how: _Walk, depth: int) -> object:
    """``value`` as ``how`` shows it. Every string (values, keys, items) is redacted;
    lists, tuples, sets and mappings are walked (copies), nested up to ``how.max_depth``
    (a deeper one is shown as ``***``); with ``how.secret_keys``, the value under a
    secret-named key (:func:`is_secret_field`: ``password``, ``api_key``, ...) is masked
    whole, whatever it is (a numeric PIN is a credential too)."""
    if isinstance(value, str):
        return how.text(value)
    if not isinstance(value, Mapping | list | tuple | set | frozenset):
        if how.json and not _is_scalar(value):
            return how.text(str(value))
        return value
    if depth >= how.max_depth:
        return MASK
    if isinstance(value, Mapping):
        masked: dict[object, object] = {}
        changed = type(value) is not dict
        for key, item in value.items():
            if _is_scalar(key):
                shown_key = key
            elif how.json and not isinstance(key, str):
                shown_key = how.text(str(key))  # a JSON key is a string
            else:
                shown_key = _walk(key, how, depth + 1)
            if how.secret_keys and is_secret_field(str(key)):
                shown: object = MASK
            else:
                shown = _walk(item, how, depth + 1)
            changed = changed or shown_key is not key or shown is not item
            masked[shown_key] = shown
        return masked if changed or how.json else value
    items = [_walk(item, how, depth + 1) for item in value]
    if how.json:
        return items
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value
    if isinstance(value, list):
        return items
    if isinstance(value, set | frozenset):
        return type(value)(items) if type(value) in (set, frozenset) else set(items)
    return tuple(items)


def redact_data(value: object, secrets: Iterable[str] = (), *, limit: int | None = None) -> object:
    """``value`` with every credential masked, for data user code hands over (a health
    check's details), keeping its shape (tuples stay tuples, sets sets, unchanged data is
    returned as given; :func:`redact_tree` makes JSON for what is shown): each string
    (keys too) through :func:`redact` (with ``limit``, :func:`redact_cut` to that many
    characters), the value under a secret-named key (:func:`is_secret_field`) masked
    whole, lists, tuples, sets and mappings walked (copies; nested up to 16 deep, deeper
    ones shown as ``***``), other values kept as they are.
    """
    return _walk(value, _Walk(tuple(secrets), limit), 0)


REDACT_LOOKAHEAD = 4096
"""Characters after a cut that :func:`redact_cut` still redacts, so that a secret the cut
separates from its name or its URL's end is still recognised."""


def redact_cut(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """:func:`redact` of ``text``, cut to ``limit`` characters (``...`` marks a cut).

    Only what can show, and :data:`REDACT_LOOKAHEAD` characters after it, is redacted, so a
    megabyte-long error message (a body quoted in it) costs what a short one does.
    """
    if len(text) > limit + REDACT_LOOKAHEAD:
        text = text[: limit + REDACT_LOOKAHEAD]
    text = redact(text, secrets)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


# -- argument lists --------------------------------------------------------------------

# Short flags that carry a password by a tool's convention: (tool name prefixes,
# flag, how the value travels: "attached" -pSECRET, "next" -a SECRET, "both").
_SHORT_SECRET_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("mysql", "mariadb"), "-p", "attached"),
    (("redis-cli", "valkey-cli", "keydb-cli"), "-a", "both"),
    (("sshpass",), "-p", "both"),
)
_USER_AND_PASSWORD_FLAGS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("curl", "wget"), ("-u", "--user", "--proxy-user")),
)


_TOOLS: tuple[str, ...] = tuple(
    tool
    for tools in [t for t, _, _ in _SHORT_SECRET_FLAGS] + [t for t, _ in _USER_AND_PASSWORD_FLAGS]
    for tool in tools
)


def _short_flag_rule(program: str, arg: str) -> tuple[str, str] | None:
    for tools, flag, how in _SHORT_SECRET_FLAGS:
        if program.startswith(tools) and arg.startswith(flag):
            return flag, how
    return None


def redact_argv(argv: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """``argv`` for showing: each argument through :func:`redact`, the value after a secret
    flag (``--password x``, ``--token x``) masked, and the short password flags of common
    tools (``mysql -pX``, ``redis-cli -a X``, ``curl -u user:X``), also behind a wrapper
    (``sudo``, ``env``, ``docker exec c``, ``ssh host``: the last tool named so far rules)."""
    args = [os.fspath(arg) if not isinstance(arg, str) else arg for arg in argv]
    program = os.path.basename(args[0]) if args else ""
    shown: list[str] = []
    mask_next: str | None = None  # "all", or "password" (user:password)
    for index, arg in enumerate(args):
        if mask_next is not None:
            if mask_next == "password" and ":" in arg:
                shown.append(arg.partition(":")[0] + ":" + MASK)
            else:
                shown.append(MASK)
            mask_next = None
            continue
        if index == 0:
            shown.append(redact(arg))
            continue
        if os.path.basename(arg).startswith(_TOOLS):
            program = os.path.basename(arg)
            shown.append(arg)
            continue
        rule = _short_flag_rule(program, arg)
        if rule is not None:
            flag, how = rule
            if len(arg) > len(flag) and how in ("attached", "both"):
                shown.append(flag + MASK)
                continue
            if arg == flag and how in ("next", "both"):
                shown.append(arg)
                mask_next = "all"
                continue
        if any(
            program.startswith(tools) and arg in flags for tools, flags in _USER_AND_PASSWORD_FLAGS
        ):
            shown.append(arg)
            mask_next = "password"
            continue
        if arg.startswith("-") and "=" not in arg and is_secret_field(arg):
            shown.append(arg)
            mask_next = "all"
            continue
        shown.append(redact(arg))
    return tuple(shown)


def argv_secrets(argv: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The values :func:`redact_argv` masks in ``argv``, to :func:`scrub` from what the
    command printed or the errors it caused (a program may echo its own arguments)."""
    args = [os.fspath(arg) if not isinstance(arg, str) else arg for arg in argv]
    found: set[str] = set()
    for original, shown in zip(args, redact_argv(args), strict=True):
        if original == shown:
            continue
        # Each "***" in the shown form stands for the text between the kept parts.
        kept = shown.split(MASK)
        position = 0
        for before, after in itertools.pairwise(kept):
            found_at = original.find(before, position)
            start = found_at + len(before)
            end = original.find(after, start) if after else len(original)
            if found_at < 0 or end < start:
                found.add(original)  # could not line them up: the whole argument
                break
            found.add(original[start:end])
            position = end
    return tuple(
        sorted((s for s in found if len(s) >= _MIN_FREE_TEXT_SECRET), key=len, reverse=True)
    )


def shown_as(shown: str, names: Iterable[str]) -> str | None:
    """The name among ``names`` that is ``shown``, or that :func:`redact` shows as
    ``shown`` when only one does: a name holding a credential (a circuit named after a
    URL with its password) is shown masked, and an operator acts on what is shown."""
    found = None
    for name in names:
        if name == shown:
            return name
        if found is None and redact(name) == shown:
            found = name
        elif found is not None and redact(name) == shown:
            return None  # two names show the same: neither is meant for sure
    return found


def redact_tree(
    value: Any,
    finish: Callable[[str], str] | None = None,
    *,
    secrets: Iterable[str] = (),
    secret_keys: bool = False,
    max_depth: int = _MAX_TREE_DEPTH,
) -> Any:
    """A JSON-ready copy of ``value`` with every string in it redacted (keys, values,
    items; ``secrets`` scrubbed), each then passed to ``finish`` if given: the last line of
    defence of what is shown whole (an answer of the ops routes, the effective config, an
    alert's details), for what no part knew to mask (a name made of a URL with its
    password, a custom check's own details). Mappings become dicts, lists, tuples and
    sets lists, numbers, bools and None stay, any other object its redacted ``str``;
    nested deeper than ``max_depth``, ``***``. With ``secret_keys``, the value under a
    secret-named key is masked whole, as :func:`redact_data` does (off for what the
    package built itself and masked already, keeping a note such as "*** (from $TOKEN,
    set)"). The rules are :func:`redact_data`'s: one walker."""
    how = _Walk(tuple(secrets), None, finish, secret_keys, json=True, max_depth=max_depth)
    return _walk(value, how, 0)
