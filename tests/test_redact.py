"""The package's one redaction module: URLs, free text, argument lists, known secrets."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from xnai_core import _redact
from xnai_core._redact import redact, redact_argv, redact_url, scrub, url_secrets
from xnai_core.degradation import reasons
from xnai_core.health import redact as health_redact
from xnai_core.recovery import actions
from xnai_core.recovery.rule import RecoveryRule


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # '@' (and '/', '?', '#', ':') inside a password: masked up to the last '@'.
        ("redis://:p@ss@h:1/0", "redis://:***@h:1/0"),
        ("postgresql://app:p@ss/w#rd?x@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("https://u:pa/ss@h/x", "https://u:***@h/x"),
        # ... but an '@' in a path or query behind a plain host is not user info.
        ("https://registry.example/@scope/pkg", "https://registry.example/@scope/pkg"),
        ("https://h/?email=a@b.example&x=1", "https://h/?email=a@b.example&x=1"),
        # a token as the lone user name
        ("https://ghp_abcdef123@github.example/x", "https://***@github.example/x"),
        # parameters by name, in the query and the fragment, whatever their case
        ("http://h/v1?api_token=t1&n=2", "http://h/v1?api_token=***&n=2"),
        ("http://h/?Access_Token=t2", "http://h/?Access_Token=***"),
        ("http://h/?client_secret=t3", "http://h/?client_secret=***"),
        (
            "http://h/?X-Amz-Signature=t4&X-Amz-Credential=t5",
            "http://h/?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("http://h/cb?code=t6&state=s", "http://h/cb?code=***&state=s"),
        ("http://h/#access_token=t7&state=s", "http://h/#access_token=***&state=s"),
        ("http://h/?sig=t8", "http://h/?sig=***"),
        # a '#' inside a secret query value does not cut it in two
        ("redis://h/0?password=p#ss?x&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis@6379.sock", "unix:///run/redis@6379.sock"),
        # read two ways (a port then a path, or a password with a '/'): both readings masked
        ("http://u:1234/x@h/x?token=t9", "http://u:***/***@h/x?token=***"),
        ("https://tok/en@api.example/v1", "https://***/***@api.example/v1"),
        ("redis://app/x@h:1/0", "redis://app/***@h:1/0"),
        # ... while '@' in a deeper path stays
        ("https://h/v1/users/a@b.example", "https://h/v1/users/a@b.example"),
        ("https://h/@user/post", "https://h/@user/post"),
        # a URL percent-encoded into a harmless parameter
        (
            "https://h/login?next=https%3A%2F%2Fa%2F%3Ftoken%3Dt10&lang=en",
            "https://h/login?next=***&lang=en",
        ),
        ("https://h/login?next=%2Fhome&lang=en", "https://h/login?next=%2Fhome&lang=en"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Credentials go, the endpoint stays readable."""
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET http://127.0.0.1:1/x?api_token=T0KEN failed",
            "GET http://127.0.0.1:1/x?api_token=*** failed",
        ),
        ("Authorization: Bearer eyJ.abc.def", "Authorization: Bearer ***"),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", "{'authorization': 'Basic ***'}"),
        ("sent bearer abc.DEF-123", "sent bearer ***"),
        ("X-Api-Key: sk-live-1, X-Trace: 7", "X-Api-Key: ***, X-Trace: 7"),
        (
            '{"client_secret": "cs-1", "max_tokens": 100}',
            '{"client_secret": ***, "max_tokens": 100}',
        ),
        ("run --password=hunter2 --token abc123 -p 5432", "run --password=*** --token *** -p 5432"),
        ("PGPASSWORD=s3cret AWS_SECRET_ACCESS_KEY=k3y", "PGPASSWORD=*** AWS_SECRET_ACCESS_KEY=***"),
        ("host=db user=app password='a b'", "host=db user=app password=***"),
        ("login failed: password: hunter2", "login failed: password: ***"),
        ("password=[a, b] next=1", "password=*** next=1"),
        ("(secret=(s1)) done", "(secret=***) done"),
        ("{'password': b'pw1'}", "{'password': ***}"),
        ("password:\n  pw2\nuser: app", "password:\n  ***\nuser: app"),
        ("form=user%3Dme%26password%3Dpw3 sent", "form=*** sent"),
        ("form=user%3Dme sent", "form=user%3Dme sent"),
        # once documented as limits: an env variable and its value after a space, a space
        # in a URL's password, user:password@host with no scheme, a token path segment
        ("PGPASSWORD s3cret psql -h db", "PGPASSWORD *** psql -h db"),
        ("AUTH s3cretpw called", "AUTH *** called"),
        ("connect redis://app:pa ss@db:6379/0 failed", "connect redis://app:***@db:6379/0 failed"),
        ("to app:s3cret@db.example:5432 failed", "to app:***@db.example:5432 failed"),
        (
            "POST https://api.telegram.org/bot123456:AAHdqTcvCH1vGWJxfSeo/send failed",
            "POST https://api.telegram.org/***/send failed",
        ),
        (
            "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/Gq9ZxTXbG8Vk2aE0eYdP3wLm",
            "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/***",
        ),
        ("POST /bot123456:AAHdqTcvCH1vGWJxfSeo/send failed", "POST /***/send failed"),
        # harmless look-alikes stay
        (
            "http://localhost:8080 failed; mail admin@example.com",
            "http://localhost:8080 failed; mail admin@example.com",
        ),
        (
            "https://h/items/3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "https://h/items/3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        ),
        ("at 12:30 the job ran", "at 12:30 the job ran"),
        ("KeyError: 'prompt'", "KeyError: 'prompt'"),
        ("AuthenticationError: invalid password", "AuthenticationError: invalid password"),
        ("max_tokens=100 keyspace=3", "max_tokens=100 keyspace=3"),
        ("Error 111 connecting to localhost:6379.", "Error 111 connecting to localhost:6379."),
    ],
)
def test_redact_free_text(text: str, expected: str) -> None:
    """Every credential shape in a message is masked; the message stays readable."""
    assert redact(text) == expected


def test_known_secrets_are_scrubbed_first() -> None:
    """A secret the caller knows goes wherever it appears, even bare."""
    assert redact("bare zq9-secret here", ["zq9-secret"]) == "bare *** here"
    assert scrub("ab abc", ["ab", "abc"]) == "*** ***"  # longest first: "abc" whole


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["mysql", "-uroot", "-phunter2", "db"], ("mysql", "-uroot", "-p***", "db")),
        (["redis-cli", "-a", "pw1", "ping"], ("redis-cli", "-a", "***", "ping")),
        (["curl", "-u", "me:pw2", "https://h/"], ("curl", "-u", "me:***", "https://h/")),
        (["curl", "-H", "Authorization: Bearer t"], ("curl", "-H", "Authorization: Bearer ***")),
        (
            ["app", "--password", "pw3", "--api-key=k"],
            ("app", "--password", "***", "--api-key=***"),
        ),
        (["app", "--dsn=postgresql://a:pw4@h/d"], ("app", "--dsn=postgresql://a:***@h/d")),
        (["app", "TOKEN=t5"], ("app", "TOKEN=***")),
        (["docker", "run", "-p", "8080:80"], ("docker", "run", "-p", "8080:80")),
    ],
)
def test_redact_argv(argv: list[str], expected: tuple[str, ...]) -> None:
    """Command arguments: secret flags, their values, and conventional password flags."""
    assert redact_argv(argv) == expected


def test_url_secrets_reach_bare_mentions() -> None:
    """What a URL holds is scrubbed from text that echoes it without the URL around it."""
    secrets = url_secrets("https://u:p@ss/w@h/?api_token=tok_123456&x=1")
    assert "p@ss/w" in secrets
    assert "tok_123456" in secrets
    assert scrub("refused p@ss/w and tok_123456", secrets) == "refused *** and ***"


def test_one_module_behind_every_name() -> None:
    """The old maskers' names are the one module's functions, not copies."""
    assert reasons.redact is _redact.redact
    assert actions.redact is _redact.redact
    assert health_redact.redact_url is _redact.redact_url
    assert health_redact.url_secrets is _redact.url_secrets
    from xnai_core import redis_manager

    assert redis_manager.redact_url is _redact.redact_url


def test_recovery_rule_repr_and_errors_mask_arguments() -> None:
    """A rule's repr and its validation errors never print a command's secrets."""
    rule = RecoveryRule(
        "db",
        "restart_service",
        command=["mysqladmin", "-uroot", "-pR00tPw", "--token", "tK-9", "--api-key=Ak-1"],
    )
    shown = repr(rule)
    for secret in ("R00tPw", "tK-9", "Ak-1"):
        assert secret not in shown
    assert "mysqladmin" in shown
    assert "'-p***'" in shown
    with pytest.raises(TypeError) as as_string:
        RecoveryRule("db", "restart_service", command="app --password=Pw-1")
    assert "Pw-1" not in str(as_string.value)
    with pytest.raises(TypeError) as not_str:
        RecoveryRule("db", "restart_service", command=["app", "--password=Pw-2", 3])  # type: ignore[list-item]
    assert "Pw-2" not in str(not_str.value)
    assert "index 2" in str(not_str.value)
    with pytest.raises(ValueError, match="NUL byte") as nul:
        RecoveryRule("db", "restart_service", command=["app", "--token=Tk-3\0"])
    assert "Tk-3" not in str(nul.value)


def test_shown_as_finds_the_one_name_shown_so() -> None:
    from xnai_core._redact import shown_as

    names = ["llm", "redis://:pw-one@cache:6379", "redis://:pw-two@other:6379"]
    assert shown_as("llm", names) == "llm"
    assert shown_as("redis://:***@cache:6379", names) == "redis://:pw-one@cache:6379"
    assert shown_as("redis://:pw-two@other:6379", names) == "redis://:pw-two@other:6379"
    assert shown_as("nope", names) is None
    assert shown_as("redis://:***@cache:6379", [*names, "redis://:pw-3@cache:6379"]) is None


# Shapes of large text that real errors carry (a base64 body, a dotted list of hosts, a
# form body, YAML-ish dumps), each built to make a backtracking pattern try every
# position; ``%`` makes the redaction read the values of harmless fields too.
_LARGE_SHAPES = {
    "letters": "a",
    "base64": "QUJD",
    "dotted": "a.",
    "colons": "a:",
    "assignments": "a=",
    "assignments with a %": "a=%",
    "user info": "ab:cd@",
    "spaced url passwords": "http://u:",
    "secret fields": "password=a[",
}


def _seconds_to_redact(text: str, repeat: int) -> float:
    """CPU seconds one redaction of ``text`` takes: the best of three rounds of ``repeat``.
    This thread's CPU time, not the wall clock: on a loaded host the wall clock also counts
    the time other processes had the core (a 29.8x ratio for linear work was seen)."""
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for _ in range(repeat):
            redact(text)
        best = min(best, (time.thread_time() - started) / repeat)
    return best


@pytest.mark.parametrize("unit", list(_LARGE_SHAPES.values()), ids=list(_LARGE_SHAPES))
def test_redaction_cost_grows_linearly_with_the_text(unit: str) -> None:
    """Redaction is on every failure's path (a degraded call's reason, a check's error, a
    handler's traceback), on the event loop. Its patterns used to try each position of a
    run again ("a.a.a..." cost 2 s at 16 KB: the loop froze for every failing call whose
    error quoted a large body). This checks the growth, not the speed: 8 times the text
    must cost far less than the 64 times a quadratic pattern takes (best of a few runs)."""
    small = unit * (4_000 // len(unit))
    large = unit * (32_000 // len(unit))
    redact(small)  # warm up
    ratio = _seconds_to_redact(large, 1) / _seconds_to_redact(small, 8)
    assert ratio < 24, f"{ratio:.1f}x the time for 8x the text"


def test_a_value_that_decodes_to_itself_does_not_recurse() -> None:
    """'a=a=...%': each harmless field's value holds a '%', so it was decoded and redacted
    again, one level per field, until RecursionError (from every surface that redacts)."""
    assert redact("a=" * 2_000 + "%") == "a=" * 2_000 + "%"
    assert redact("x=%25" * 3_000).startswith("x=%25")
    # a URL passed along, and a form passed along inside it, are still read
    assert "s3cr3t" not in redact("next=" + quote("https://h/?token=s3cr3t", safe=""))
    inner = quote("next=" + quote("https://h/?token=s3cr3t", safe=""), safe="")
    assert "s3cr3t" not in redact(f"u={inner}")


async def test_a_primary_error_quoting_such_text_still_degrades() -> None:
    """The degradation manager describes the primary's error through the redaction: a
    RecursionError there escaped from call_service instead of the fallback's answer."""
    from xnai_core.degradation import DegradedModeStrategy, ServiceDegradationManager

    async def primary() -> str:
        raise ValueError("bad form: " + "a=" * 2_000 + "%")

    manager = ServiceDegradationManager()
    manager.add_service_strategy("forms", DegradedModeStrategy("later"))
    result = await manager.call_service_detailed("forms", primary)
    assert (result.value, result.degraded) == ("later", True)
    assert result.info.reason is not None
    assert result.info.reason.startswith("ValueError: bad")


def test_describing_an_error_costs_the_same_for_a_megabyte_message() -> None:
    """A failure's reason shows 300 characters, but the whole message was redacted first: an
    error quoting a 1 MB body (a 502 page, a base64 payload) cost 0.3 to 2 s of the event
    loop per failing call, linear redaction or not. Only what can show, and 4 KB after it,
    is redacted now: 100 times the message costs about the same (not 100 times as much)."""
    small = ValueError("bad gateway: " + "a=b " * 2_500)
    large = ValueError("bad gateway: " + "a=b " * 250_000)
    reasons.describe_error(small)  # warm up
    times = {}
    for name, error in (("small", small), ("large", large)):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            reasons.describe_error(error)
            best = min(best, time.perf_counter() - started)
        times[name] = best
    assert times["large"] / times["small"] < 10, times
    reason = reasons.describe_error(ValueError("x" * 10_000 + " password=hunter22"))
    assert len(reason) == reasons.MAX_REASON_LENGTH
    assert reason.endswith("...")


def test_a_cut_text_is_redacted_with_what_follows_the_cut_in_view() -> None:
    """The cut keeps 4 KB after the limit in view: a secret whose name or value starts
    before the cut is still recognised."""
    text = "x" * 290 + " password=" + "s" * 3_000 + " tail"
    cut = _redact.redact_cut(text, 300)
    assert "s" * 5 not in cut
    assert len(cut) <= 300
    assert _redact.redact_cut("short password=abc", 300) == "short password=***"


# -- nested data: one walker for health details, pages and alert details -------------------

_DSN = "postgresql://app:hunter2-pw@db:5432/app"


def _shows_no_secret(shown: object) -> None:
    text = repr(shown)
    assert "hunter2" not in text, text
    assert "4242" not in text, text


@pytest.mark.parametrize(
    "value",
    [
        {_DSN: "up"},  # a credential in a key
        {"password": 424242},  # a numeric password (a PIN)
        {"pin_code": 1, "dsn": {_DSN}},  # a set
        {"dsn": frozenset({_DSN})},
        {"cfg": __import__("types").MappingProxyType({"url": _DSN})},  # a Mapping, not a dict
        {("db", _DSN): 1},  # a tuple key
    ],
)
def test_every_walker_masks_nested_credentials(value: object) -> None:
    from xnai_core.alerting._mask import mask_value

    _shows_no_secret(_redact.redact_data(value))
    _shows_no_secret(_redact.redact_tree(value, secret_keys=True))
    _shows_no_secret(mask_value(value))


def test_page_data_walker_masks_strings_everywhere_but_keeps_the_packages_notes() -> None:
    shown = _redact.redact_tree({"control_token": "*** (from $T, set)", "url": _DSN, "n": 3})
    assert shown == {
        "control_token": "*** (from $T, set)",
        "url": "postgresql://app:***@db:5432/app",
        "n": 3,
    }


def test_data_walker_keeps_shape_and_identity() -> None:
    data = {"a": (1, "x"), "b": [2], "c": {"d"}}
    assert _redact.redact_data(data) is data
    shown = _redact.redact_data({"a": (1, _DSN), "s": {_DSN}})
    assert isinstance(shown, dict)
    assert isinstance(shown["a"], tuple)
    assert isinstance(shown["s"], set)


def test_deeply_nested_page_data_is_cut_not_a_recursion_error() -> None:
    deep: object = _DSN
    for _ in range(5000):
        deep = [deep]
    shown = _redact.redact_tree({"x": deep})
    _shows_no_secret(shown)
    assert "***" in repr(shown)


def test_alert_details_are_json_ready() -> None:
    from xnai_core.alerting._mask import mask_details

    class Thing:
        def __str__(self) -> str:
            return f"thing at {_DSN}"

    shown = mask_details({"t": Thing(), "s": (1, 2), "api_key": None, "n": 3})
    assert shown == {
        "t": "thing at postgresql://app:***@db:5432/app",
        "s": [1, 2],
        "api_key": "***",
        "n": 3,
    }
