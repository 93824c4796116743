"""Pure parts of health monitoring: results, redaction, hysteresis, alerts, health+json."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnai_core.health.alerts import Alert, AlertThresholds, success_percent
from xnai_core.health.checkers import CustomHealthChecker, HealthCheckResult, HealthStatus
from xnai_core.health.fold import FoldConfig, evaluate_alerts
from xnai_core.health.health_json import (
    HEALTH_JSON_MEDIA_TYPE,
    http_status_for,
    overall_status,
    to_health_json,
)
from xnai_core.health.hysteresis import Counters, StatusPolicy, step
from xnai_core.health.monitor import HealthMonitor
from xnai_core.health.redact import redact_url, scrub, url_secrets
from xnai_core.health.service import ServiceHealth
from xnai_core.health.window import ResultWindow

HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN


# -- results ---------------------------------------------------------------------------


def test_status_compares_equal_to_its_string() -> None:
    """HealthStatus is a string enum: equal to its value, shown as its value."""
    assert HealthStatus.DEGRADED == "degraded"
    assert f"{HealthStatus.UNHEALTHY}" == "unhealthy"
    assert json.dumps({"s": HealthStatus.HEALTHY}) == '{"s": "healthy"}'


def test_result_accepts_status_strings() -> None:
    """A result built with "healthy" holds HealthStatus.HEALTHY."""
    result = HealthCheckResult("api", "healthy")  # type: ignore[arg-type]
    assert result.status is HEALTHY
    assert result.ok


def test_result_rejects_unknown_status_string() -> None:
    """A status outside the enum is a ValueError at construction."""
    with pytest.raises(ValueError, match="'sick'"):
        HealthCheckResult("api", "sick")  # type: ignore[arg-type]


def test_result_rejects_negative_response_time() -> None:
    """response_time is seconds and never negative."""
    with pytest.raises(ValueError, match="'response_time' must be >= 0"):
        HealthCheckResult("api", HEALTHY, response_time=-1.0)


def test_result_to_dict_is_json_ready() -> None:
    """to_dict gives every field with the status as its string."""
    result = HealthCheckResult("api", UNHEALTHY, 0.5, 10.0, {"code": 500}, "boom")
    assert result.to_dict() == {
        "service": "api",
        "status": "unhealthy",
        "response_time": 0.5,
        "timestamp": 10.0,
        "details": {"code": 500},
        "error": "boom",
    }


# -- redaction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://u:p4ss@h:80/x", "http://u:***@h:80/x"),
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("http://h/health?token=abc&x=1", "http://h/health?token=***&x=1"),
        ("http://h/plain", "http://h/plain"),
        ("host=db user=app password=s3cret", "host=db user=app password=***"),
        # Secret parameters are recognised by any name containing a secret word,
        # whatever its case and separators.
        ("http://h/?auth_token=t1", "http://h/?auth_token=***"),
        ("http://h/?client_secret=t2&a=1", "http://h/?client_secret=***&a=1"),
        ("http://h/?private_token=t3", "http://h/?private_token=***"),
        ("http://h/?api-key=t4", "http://h/?api-key=***"),
        ("http://h/?X-Amz-Signature=t5&X-Amz-Date=1", "http://h/?X-Amz-Signature=***&X-Amz-Date=1"),
        ("http://h/?X-Amz-Credential=AKIA%2F1", "http://h/?X-Amz-Credential=***"),
        ("http://h/?ACCESS_TOKEN=t6", "http://h/?ACCESS_TOKEN=***"),
        ("http://h/?SessionId=t7", "http://h/?SessionId=***"),
        ("http://h/?db_passwd=t8", "http://h/?db_passwd=***"),
        ("http://h/?api%5Fkey=t9", "http://h/?api%5Fkey=***"),
        ("http://h/?a=1;token=t10", "http://h/?a=1;token=***"),
        ("http://h/#access_token=t11&state=x", "http://h/#access_token=***&state=x"),
        # Harmless parameters keep their exact spelling.
        ("http://h/?q=a%20b+c&token=x", "http://h/?q=a%20b+c&token=***"),
        # A user name without a password is how tokens travel over HTTP: masked.
        ("http://ghp_tok@h/", "http://***@h/"),
        ("https://user@h:8443/x", "https://***@h:8443/x"),
        # ... but in database and cache DSNs it is a role name, shown.
        ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
        ("postgresql+asyncpg://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("redis://default@cache:6379/0", "redis://default@cache:6379/0"),
    ],
)
def test_redact_url_masks_secrets(url: str, expected: str) -> None:
    """Passwords, tokens and secret query values are masked; the rest stays readable."""
    assert expected == redact_url(url)


def test_url_secrets_cover_new_names_and_token_users() -> None:
    """Secret values of any secret-looking name, and a token user, are scrubbed from text."""
    url = "http://tok_user123@h/?auth_token=tok_BBB222&X-Amz-Signature=sig%2B456&n=visible1"
    secrets = url_secrets(url)
    text = "GET http://tok_user123@h/ failed: token tok_BBB222, signature sig+456 sig%2B456"
    assert scrub(text, secrets) == "GET http://***@h/ failed: token ***, signature *** ***"
    assert "visible1" not in secrets


def test_short_secret_values_are_scrubbed_only_with_their_name() -> None:
    """A 1-3 character secret value is masked as name=value, not everywhere in the text."""
    secrets = url_secrets("http://h/?session=1")
    assert scrub("status 101 for ?session=1", secrets) == "status 101 for ?***"


def test_url_secrets_include_decoded_forms() -> None:
    """A percent-encoded password is scrubbed in both spellings."""
    secrets = url_secrets("postgresql://app:p%40ss@db/app")
    assert "p%40ss" in secrets
    assert "p@ss" in secrets
    assert scrub("error near p%40ss and p@ss", secrets) == "error near *** and ***"


# -- hysteresis ------------------------------------------------------------------------


def run(outcomes: list[HealthStatus], policy: StatusPolicy) -> list[HealthStatus]:
    counters = Counters()
    seen = []
    for outcome in outcomes:
        counters = step(counters, outcome, policy)
        seen.append(counters.status)
    return seen


def test_failures_degrade_then_make_unhealthy() -> None:
    """Failures below the threshold degrade; at the threshold the service is unhealthy."""
    policy = StatusPolicy(failure_threshold=3, success_threshold=2)
    assert run([UNHEALTHY] * 3, policy) == [DEGRADED, DEGRADED, UNHEALTHY]


def test_recovery_needs_success_threshold_successes() -> None:
    """An unhealthy service needs success_threshold successes in a row."""
    policy = StatusPolicy(failure_threshold=1, success_threshold=3)
    seen = run([UNHEALTHY, HEALTHY, HEALTHY, UNHEALTHY, HEALTHY, HEALTHY, HEALTHY], policy)
    assert seen == [UNHEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, HEALTHY]


def test_first_success_is_taken_at_once() -> None:
    """unknown -> healthy (or degraded when slow) on the first result."""
    policy = StatusPolicy(success_threshold=5)
    assert run([HEALTHY], policy) == [HEALTHY]
    assert run([DEGRADED], policy) == [DEGRADED]


def test_unknown_results_change_nothing() -> None:
    """A result that could not decide keeps status and streaks."""
    policy = StatusPolicy(failure_threshold=2)
    counters = step(Counters(), UNHEALTHY, policy)
    assert counters == step(counters, UNKNOWN, policy)


@pytest.mark.parametrize("field", ["failure_threshold", "success_threshold"])
def test_policy_rejects_zero(field: str) -> None:
    """Thresholds are >= 1, and the message names the field."""
    with pytest.raises(ValueError, match=f"'{field}' must be >= 1: 0"):
        StatusPolicy(**{field: 0})


def runs(decided: list[bool]) -> list[tuple[bool, int, int]]:
    """(is_failure, start, end_exclusive) of each run of equal outcomes."""
    found: list[tuple[bool, int, int]] = []
    start = 0
    for index in range(1, len(decided) + 1):
        if index == len(decided) or decided[index] != decided[start]:
            found.append((decided[start], start, index))
            start = index
    return found


outcomes_strategy = st.lists(st.sampled_from([HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    outcomes=outcomes_strategy,
    failure_threshold=st.integers(1, 5),
    success_threshold=st.integers(1, 5),
)
def test_hysteresis_matches_its_definition(
    outcomes: list[HealthStatus], failure_threshold: int, success_threshold: int
) -> None:
    """unhealthy iff a run of >= N failures happened and no run of >= M successes since."""
    policy = StatusPolicy(failure_threshold=failure_threshold, success_threshold=success_threshold)
    final = run(outcomes, policy)[-1] if outcomes else UNKNOWN
    decided = [o for o in outcomes if o is not UNKNOWN]
    if not decided:
        assert final is UNKNOWN
        return
    failures = [o is UNHEALTHY for o in decided]
    model_unhealthy = False
    for is_failure, start, end in runs(failures):
        if is_failure and end - start >= failure_threshold:
            model_unhealthy = True
        elif not is_failure and end - start >= success_threshold:
            model_unhealthy = False
    assert model_unhealthy == (final is UNHEALTHY)
    trailing_is_failure, start, end = runs(failures)[-1]
    if trailing_is_failure:
        assert final is not HEALTHY
    elif end - start >= success_threshold:
        assert decided[-1] == final


# -- alerts ----------------------------------------------------------------------------


def results(*statuses: HealthStatus, response_time: float = 0.01) -> list[HealthCheckResult]:
    return [HealthCheckResult("api", s, response_time=response_time) for s in statuses]


def test_thresholds_parse_the_seed_form() -> None:
    """{"success_rate": 95, "response_time": 5.0} is percent and seconds."""
    thresholds = AlertThresholds.from_mapping({"success_rate": 95, "response_time": 5.0})
    assert thresholds.as_dict() == {"success_rate": 95.0, "response_time": 5.0}


def test_thresholds_reject_unknown_keys() -> None:
    """A typo in a threshold name is an error, not a silently ignored alert."""
    with pytest.raises(ValueError, match=r"unknown key.*'succes_rate'"):
        AlertThresholds.from_mapping({"succes_rate": 95})


def test_thresholds_reject_rate_above_100() -> None:
    """success_rate is a percentage."""
    with pytest.raises(ValueError, match=r"'alert_thresholds\['success_rate'\]' must be in"):
        AlertThresholds.from_mapping({"success_rate": 150})


def test_alert_key_defaults_to_service_and_kind() -> None:
    """Alerts carry a stable key, "<service>:<kind>"."""
    alert = Alert(service="api", kind="success_rate", severity="warning", message="m")
    assert alert.key == "api:success_rate"
    assert alert.to_dict()["key"] == "api:success_rate"


def test_alert_rejects_unknown_severity() -> None:
    """Severity is info, warning or critical."""
    with pytest.raises(ValueError, match="'severity' must be one of"):
        Alert(service="a", kind="k", severity="fatal", message="m")  # type: ignore[arg-type]


def test_success_percent_ignores_unknown_results() -> None:
    """Undecided results are neither successes nor failures."""
    assert success_percent(results(HEALTHY, UNHEALTHY, UNKNOWN)) == 50.0
    assert success_percent(results(UNKNOWN)) is None


def evaluate(
    service: str,
    *,
    status: HealthStatus,
    consecutive_failures: int,
    window: list[HealthCheckResult],
    thresholds: AlertThresholds,
    active: set[str],
    now: float,
    min_samples: int = 1,
    clear_after: int = 1,
) -> list[Alert]:
    """The alerts after one result, with no clear streak carried over."""
    config = FoldConfig(thresholds=thresholds, min_samples=min_samples, clear_after=clear_after)
    counters = Counters(status, consecutive_failures, 0 if consecutive_failures else 1)
    alerts, _ = evaluate_alerts(service, counters, ResultWindow.of(window), active, {}, config, now)
    return list(alerts)


def test_evaluate_raises_once_and_resolves_once() -> None:
    """A breached threshold alerts once while active, and resolves when it clears."""
    thresholds = AlertThresholds(success_rate=95.0)
    window = results(HEALTHY, UNHEALTHY)
    raised = evaluate(
        "api",
        status=DEGRADED,
        consecutive_failures=1,
        window=window,
        thresholds=thresholds,
        active=set(),
        now=1.0,
    )
    assert [(a.key, a.resolved, a.severity) for a in raised] == [
        ("api:success_rate", False, "warning")
    ]
    again = evaluate(
        "api",
        status=DEGRADED,
        consecutive_failures=1,
        window=window,
        thresholds=thresholds,
        active={"api:success_rate"},
        now=2.0,
    )
    assert again == []
    cleared = evaluate(
        "api",
        status=HEALTHY,
        consecutive_failures=0,
        window=results(HEALTHY, HEALTHY),
        thresholds=thresholds,
        active={"api:success_rate"},
        now=3.0,
    )
    assert [(a.key, a.resolved, a.severity) for a in cleared] == [
        ("api:success_rate", True, "info")
    ]


def test_evaluate_window_kinds_wait_for_min_samples() -> None:
    """success_rate and response_time stay quiet until the window holds min_samples."""
    thresholds = AlertThresholds(success_rate=95.0, response_time=1.0)
    for count in range(1, 5):
        window = results(*([HEALTHY] * (count - 1)), UNHEALTHY, response_time=2.0)
        quiet = evaluate(
            "api",
            status=DEGRADED,
            consecutive_failures=1,
            window=window,
            thresholds=thresholds,
            active=set(),
            now=1.0,
            min_samples=5,
        )
        assert quiet == []
    window = results(HEALTHY, HEALTHY, HEALTHY, HEALTHY, UNHEALTHY, response_time=2.0)
    raised = evaluate(
        "api",
        status=DEGRADED,
        consecutive_failures=1,
        window=window,
        thresholds=thresholds,
        active=set(),
        now=2.0,
        min_samples=5,
    )
    assert [a.key for a in raised] == ["api:success_rate", "api:response_time"]


def test_evaluate_status_alert_is_critical() -> None:
    """Becoming unhealthy raises a critical "<service>:status" alert with the error."""
    window = [HealthCheckResult("api", UNHEALTHY, error="connection refused")]
    alerts = evaluate(
        "api",
        status=UNHEALTHY,
        consecutive_failures=3,
        window=window,
        thresholds=AlertThresholds(),
        active=set(),
        now=1.0,
    )
    assert [a.key for a in alerts] == ["api:status"]
    assert alerts[0].severity == "critical"
    assert "connection refused" in alerts[0].message


def test_evaluate_response_time_uses_window_mean() -> None:
    """response_time alerts on the mean over the window, in seconds."""
    alerts = evaluate(
        "api",
        status=HEALTHY,
        consecutive_failures=0,
        window=results(HEALTHY, HEALTHY, response_time=6.0),
        thresholds=AlertThresholds(response_time=5.0),
        active=set(),
        now=1.0,
    )
    assert [a.key for a in alerts] == ["api:response_time"]
    assert alerts[0].details["value"] == 6.0


def test_default_clear_thresholds() -> None:
    """Clear thresholds default to halfway to 100% and to 80% of the response time."""
    thresholds = AlertThresholds.from_mapping({"success_rate": 95, "response_time": 5.0})
    assert thresholds.clear_dict() == {"success_rate": 97.5, "response_time": 4.0}


def test_clear_thresholds_are_validated() -> None:
    """A clear threshold on the wrong side of its threshold is refused, naming both."""
    with pytest.raises(ValueError, match=r"'alert_clear_thresholds\['success_rate'\]' must be in"):
        AlertThresholds.from_mapping({"success_rate": 95}, {"success_rate": 90})
    with pytest.raises(ValueError, match="needs 'alert_thresholds"):
        AlertThresholds.from_mapping({}, {"response_time": 1.0})


# -- health+json -----------------------------------------------------------------------


def snapshot(name: str, status: HealthStatus, **extra: object) -> ServiceHealth:
    return ServiceHealth(name=name, status=status, **extra)  # type: ignore[arg-type]


def test_overall_status_is_the_worst_known() -> None:
    """unhealthy > degraded > healthy; unknown only when nothing else is known."""
    assert overall_status([HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN]) == UNHEALTHY
    assert overall_status([HEALTHY, UNKNOWN]) == HEALTHY
    assert overall_status([UNKNOWN]) == UNKNOWN
    assert overall_status([]) == UNKNOWN


def test_health_json_shape() -> None:
    """pass/warn/fail, checks keyed "<service>:responseTime", one-element arrays, ms."""
    last = HealthCheckResult("db", UNHEALTHY, 0.25, 0.0, error="refused")
    document = to_health_json(
        [
            snapshot("api", HEALTHY, response_time=0.012, last_check=0.0),
            snapshot("db", UNHEALTHY, response_time=0.25, last_check=0.0, last_result=last),
            snapshot("cache", UNKNOWN),
        ],
        service_id="rag",
    )
    assert document["status"] == "fail"
    assert document["serviceId"] == "rag"
    checks = document["checks"]
    assert isinstance(checks, dict)
    assert list(checks) == ["api:responseTime", "db:responseTime", "cache:responseTime"]
    api = checks["api:responseTime"][0]
    assert (
        api["status"],
        api["observedValue"],
        api["observedUnit"],
        api["time"],
    ) == ("pass", 12.0, "ms", "1970-01-01T00:00:00Z")
    assert "output" not in api
    assert (
        checks["db:responseTime"][0]["status"],
        checks["db:responseTime"][0]["output"],
    ) == ("fail", "refused")
    assert (
        checks["cache:responseTime"][0]["status"],
        checks["cache:responseTime"][0]["output"],
    ) == ("warn", "no result yet")
    assert HEALTH_JSON_MEDIA_TYPE == "application/health+json"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (HEALTHY, 200),
        (DEGRADED, 200),
        (UNKNOWN, 200),
        (UNHEALTHY, 503),
        ("pass", 200),
        ("warn", 200),
        ("fail", 503),
        ({"status": "fail", "checks": {}}, 503),
        ({"summary": {"unhealthy": 1}}, 503),
        ({"summary": {"unhealthy": 0}}, 200),
    ],
)
def test_http_status_for(status: HealthStatus | str | dict[str, object], code: int) -> None:
    """Failing is 503; pass, warn (draft: MUST be 2xx-3xx) and unknown are 200."""
    assert code == http_status_for(status)


def test_http_status_for_rejects_nonsense() -> None:
    """An unrecognised status is a ValueError, not a silent 200."""
    with pytest.raises(ValueError, match="'status' must be"):
        http_status_for("sideways")


async def test_an_error_text_is_bounded_in_every_result() -> None:
    """A check failing with a megabyte message (a body quoted in its error): the whole text
    was kept in every result (100 of them in the history: 100 MB for one service), put in
    the report, health+json, logs and alerts, and redacted whole on the event loop at
    each check. Error texts are cut to MAX_ERROR_LENGTH characters, masked first."""
    from xnai_core.health.redact import MAX_ERROR_LENGTH

    body = "x" * 1_000_000

    def raising() -> bool:
        raise RuntimeError(f"password=hunter22 bad response: {body}")

    def reporting() -> dict[str, object]:
        return {"status": "unhealthy", "error": body, "body": body, "seen": [body]}

    class Own:
        name = "own"

        async def check(self) -> HealthCheckResult:
            return HealthCheckResult(service="own", status=HealthStatus.UNHEALTHY, error=body)

    monitor = HealthMonitor(check_interval=60)
    monitor.add_checker(CustomHealthChecker("raising", raising))
    monitor.add_checker(CustomHealthChecker("reporting", reporting))
    monitor.add_checker(Own())
    try:
        for name in ("raising", "reporting", "own"):
            result = await monitor.trigger_manual_check(name)
            assert result.error is not None
            assert len(result.error) <= MAX_ERROR_LENGTH
            assert result.error.endswith("...")
            assert "hunter22" not in result.error
            for value in (result.details.get("body"), *result.details.get("seen", ())):  # type: ignore[misc]
                assert value is None or len(str(value)) <= MAX_ERROR_LENGTH
    finally:
        await monitor.stop_monitoring()
