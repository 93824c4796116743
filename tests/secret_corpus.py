"""A corpus of secret shapes, for tests that look for leaks in logs, stats, pages and reprs.

Every shape carries one secret whose *core* is a token found nowhere else (``Zq07Kx...``):
a test feeds the shapes through a surface and then asserts that no core shows anywhere in
what the surface produced (:func:`leaks`). A core is checked, not the whole secret, so
half of a secret (the part after an ``@`` in a password) counts as a leak too.

Reuse: ``from tests.secret_corpus import SHAPES, ARGV_SHAPES, leaks``; pass ``tag=`` to
:func:`shapes` for cores of your own when two corpora meet in one test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Query and fragment parameters that carry credentials, in the spellings they travel in.
SECRET_PARAMETERS = (
    "token",
    "access_token",
    "api_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Goog-Signature",
    "sig",
    "signature",
    "auth",
    "code",
    "private_token",
    "sessionid",
    "ACCESS_TOKEN",
)


@dataclass(frozen=True)
class Shape:
    """One way a secret travels: ``text`` carries ``secret``, whose ``core`` is unique.

    ``url`` is True when ``text`` is a URL on its own (usable as a checker's or a client's
    URL); ``scheme`` is its scheme then.
    """

    name: str
    text: str
    secret: str
    core: str
    url: bool = False

    @property
    def scheme(self) -> str:
        return self.text.partition("://")[0] if self.url else ""


@dataclass(frozen=True)
class ArgvShape:
    """A command line whose arguments carry ``core``."""

    name: str
    argv: tuple[str, ...]
    core: str


def _core(tag: str, index: int) -> str:
    return f"Zq{index:02d}{tag}Kx7Secr"


def shapes(tag: str = "") -> tuple[Shape, ...]:
    """The corpus, with cores ``Zq<nn><tag>Kx7Secr``."""
    made: list[Shape] = []

    def add(name: str, template: str, secret_template: str = "{c}", *, url: bool = False) -> None:
        core = _core(tag, len(made))
        made.append(
            Shape(
                name,
                template.format(c=core),
                secret_template.format(c=core),
                core,
                url,
            )
        )

    add("url password", "redis://app:{c}@127.0.0.1:6379/0", url=True)
    add("url password, no user", "redis://:{c}@127.0.0.1:6379/0", url=True)
    add(
        "'@' in the password, core after it",
        "postgresql://app:p@{c}@db:5432/app",
        "p@{c}",
        url=True,
    )
    add(
        "'@' in the password, core before it",
        "https://u:{c}@x@api.example.com/v1",
        "{c}@x",
        url=True,
    )
    add("'/' in the password", "postgresql://app:a/{c}@db:5432/app", "a/{c}", url=True)
    add("'#' in the password", "redis://:p#{c}@127.0.0.1:6379/0", "p#{c}", url=True)
    add("'?' in the password", "http://svc:p?{c}@127.0.0.1:8080/x", "p?{c}", url=True)
    add("token as the lone user", "https://{c}@api.example.com/v1/chat", url=True)
    add("token as the lone http user", "http://{c}@127.0.0.1:8080/health", url=True)
    for parameter in SECRET_PARAMETERS:
        add(
            f"?{parameter}=", f"https://api.example.com/v1/chat?model=m&{parameter}={{c}}", url=True
        )
    add("second parameter", "http://127.0.0.1:8080/health?a=1&access_token={c}&b=2", url=True)
    add("';' separator", "http://127.0.0.1:8080/health?a=1;token={c}", url=True)
    add("fragment token", "https://app.example.com/cb#access_token={c}&state=1", url=True)
    add("'#' inside a query secret", "redis://127.0.0.1:6379/0?password=p#{c}", "p#{c}", url=True)
    add("Bearer header", "Authorization: Bearer {c}")
    add("Basic header", "Authorization: Basic {c}")
    add("header dict", "headers={{'Authorization': 'Bearer {c}'}}")
    add("bearer in prose", "the proxy rejected bearer {c} as expired")
    add("X-Api-Key header", "X-Api-Key: {c}")
    add("--password=", "ran app --password={c} --verbose")
    add("--token value", "ran app --token {c} --verbose")
    add("env PASSWORD=", "PASSWORD={c} ./start.sh")
    add("env DB_PASSWORD=", "DB_PASSWORD={c}")
    add("env AWS_SECRET_ACCESS_KEY=", "AWS_SECRET_ACCESS_KEY={c}")
    add("json field", '{{"client_secret": "{c}", "scope": "read"}}')
    add("dict repr", "{{'api_key': '{c}', 'model': 'm'}}")
    add("yaml field", "password: {c}")
    add("libpq keyword DSN", "host=db user=app password={c} dbname=app")
    add("quoted libpq password", "host=db password='a {c}' dbname=app", "a {c}")
    # Shapes a red team found leaking after issue 11 (as text: their hosts do not resolve).
    add("'/' in a password after digits", "GET http://u:1234/{c}@127.0.0.1:8080/x failed")
    add("'/' in a lone-user token", "GET https://tok/{c}@api.example.com/v1 failed")
    add("bracketed value", "settings: password=[{c}] retries=3")
    add("parenthesised value", "config(secret=({c}))")
    add("bytes literal", "{{'password': b'{c}', 'db': 0}}")
    add("YAML value on the next line", "password:\n  {c}\nuser: app")
    add(
        "URL percent-encoded in a parameter",
        "redirect to https://app.example.com/login?next=https%3A%2F%2Fh%2Fcb%3Fapi_token%3D{c}",
    )
    add("percent-encoded form body", "POST form=user%3Dme%26password%3D{c} rejected")
    # The limits the redaction module once documented, closed.
    add(
        "token as a URL path segment",
        "POST https://api.telegram.org/bot123456:{c}AAHdq/send failed",
    )
    add(
        "webhook secret as the last segment",
        "https://hooks.slack.com/services/T0A/B0B/{c}Gq9ZxTXbG8",
    )
    add("env variable then a space", "PGPASSWORD {c} psql -h db")
    add("space in a URL password", "connect redis://app:a {c}@127.0.0.1:6379/0 failed", "a {c}")
    add("user:password@host without a scheme", "connecting to app:{c}@db.example.com:5432 failed")
    return tuple(made)


def argv_shapes(tag: str = "") -> tuple[ArgvShape, ...]:
    """Command lines with secrets in their arguments."""
    base = 90

    def core(offset: int) -> str:
        return _core(tag, base + offset)

    return (
        ArgvShape("mysql -p", ("mysql", "-uroot", f"-p{core(0)}", "app"), core(0)),
        ArgvShape("redis-cli -a", ("redis-cli", "-a", core(1), "ping"), core(1)),
        ArgvShape("curl -u", ("curl", "-u", f"me:{core(2)}", "https://h/"), core(2)),
        ArgvShape("--password value", ("app", "--password", core(3)), core(3)),
        ArgvShape("--api-key=", ("app", f"--api-key={core(4)}"), core(4)),
        ArgvShape("DSN argument", ("app", f"--dsn=postgresql://a:{core(5)}@h/d"), core(5)),
        ArgvShape("env argument", ("env", f"TOKEN={core(6)}", "app"), core(6)),
        ArgvShape("bearer header", ("curl", "-H", f"Authorization: Bearer {core(7)}"), core(7)),
    )


SHAPES = shapes()
ARGV_SHAPES = argv_shapes()

_CORE = re.compile(r"Zq\d\d\w*?Kx7Secr")


def leaks(texts: Iterable[str]) -> list[str]:
    """Every corpus core (any tag) that shows in ``texts``: empty when nothing leaked."""
    found: set[str] = set()
    for text in texts:
        found.update(_CORE.findall(text))
    return sorted(found)
