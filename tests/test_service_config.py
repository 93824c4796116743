"""The service's config file: good files load, each bad file is refused with a message that
names the file, the key path and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from xnai_core.recovery import RecoveryActionType
from xnai_core.service import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-the-dashboard-0123456789"

GOOD = """
redis_url = "redis://127.0.0.1:6379/0"
control_token_env = "XNAI_TEST_TOKEN"

[monitor]
check_interval = 2
[monitor.alert_thresholds]
success_rate = 90
consecutive_failures = 4

[[services]]
name = "api"
type = "http"
url = "http://127.0.0.1:1/health"
expected_status = [200, 204]

  [[services.recovery]]
  action = "restart_service"
  command = ["true"]
  backoff_base = 1
  backoff_max = 5

[[services]]
name = "port"
type = "tcp"
host = "127.0.0.1"
port = 5432

[[services]]
name = "db"
type = "postgres"
dsn = "postgresql://app:hunter2secret@db:5432/app"

[[services]]
name = "script"
type = "command"
command = ["true"]
"""

SERVICE = '[[services]]\nname = "api"\ntype = "http"\nurl = "http://127.0.0.1:1/"\n'

# (file text, the expected message after "<file>: ")
BAD: list[tuple[str, str]] = [
    ("redis_url = ", "not valid TOML: "),
    ("check_interval = 3", "check_interval: unknown key"),
    (
        "[monitor]\ncheck_intervall = 3",
        "monitor.check_intervall: unknown key (did you mean 'check_interval'?)",
    ),
    ("[monitor]\ncheck_interval = -1", "monitor.check_interval: must be > 0 seconds: -1"),
    (
        "[monitor]\ncheck_interval = 'soon'",
        "monitor.check_interval: must be a number of seconds: 'soon'",
    ),
    (
        "[monitor.alert_thresholds]\nsuccess_rate = 120",
        "monitor.alert_thresholds.success_rate: must be a percentage from 0 to 100, got 120",
    ),
    (
        "[monitor.alert_thresholds]\nresponse_tme = 1",
        "monitor.alert_thresholds.response_tme: unknown key (did you mean 'response_time'?)",
    ),
    (
        "[monitor]\nhistory_size = 5\nalert_window = 10",
        "monitor.alert_window: must be <= history_size (5), got 10",
    ),
    (
        'control_token = "abcdefabcdefabcdefabcdef"',
        "control_token: a token written in the file is refused",
    ),
    (
        'control_token_env = "XNAI_SHORT_TOKEN"',
        "control_token_env: $XNAI_SHORT_TOKEN must hold at least 16 characters (it holds 5)",
    ),
    (
        'control_token_env = "not a name"',
        "control_token_env: must be an environment variable name, got 'not a name'",
    ),
    (
        'redis_url = "http://localhost:6379"',
        "redis_url: must be a redis://, rediss://, unix:// or redis+sentinel:// URL",
    ),
    (
        "[monitor.alert_thresholds]\nsuccess_rate = nan",
        "monitor.alert_thresholds.success_rate: must be a finite number, got nan",
    ),
    (
        'redis_url = "redis://:hunter2secret@localhost:notaport/0"',
        "redis_url: has no valid port",
    ),
    (
        "[[services]]\nname = 'a'\ntype = 'http'\nurl = 'http://u:hunter2secret@h:99999/'",
        "services[0].url: has no valid port (a number from 0 to 65535; a '/', '#' or '?' in a "
        "password must be percent-encoded): 'http://u:***@h:99999/'",
    ),
    (
        "[[services]]\nname = 'a'\ntype = 'http'\nurl = 'http:///health'",
        "services[0].url: names no host: 'http:///health'",
    ),
    (
        "[[services]]\nname = 'r'\ntype = 'redis'\nurl = 'redis://:hunter2secret@h:70000/'",
        "services[0].url: has no valid port",
    ),
    (
        "[[services]]\nname = 'p'\ntype = 'postgres'\ndsn = 'postgresql://u:hunter2secret@h:x/d'",
        "services[0].dsn: has no valid port",
    ),
    # A '/' or '#' in a password cuts the address there: Python's error then quoted the
    # password's first part as the port ("as 'hunter2secret'").
    (
        "[[services]]\nname = 'p'\ntype = 'postgres'\n"
        "dsn = 'postgresql://app:hunter2secret/xyz@db:5432/app'",
        "services[0].dsn: has no valid port",
    ),
    ('redis_url = "redis://:hunter2secret#et@r:6379"', "redis_url: has no valid port"),
    (
        "[[services]]\nname = 'p'\ntype = 'postgres'\ndsn = 'host=db password=hunter2secret'",
        "services[0].dsn: must be a postgresql:// or postgres:// URL (key=value DSNs are not "
        "read), got a string of 30 characters",
    ),
    ("services = 3", "services: must be an array of tables ([[services]]), got an integer 3"),
    ("[[services]]\ntype = 'http'\nurl = 'http://x/'", "services[0].name: is required"),
    (
        "[[services]]\nname = 'a b'\ntype = 'http'\nurl = 'http://x/'",
        "services[0].name: must be 1-64 letters",
    ),
    (
        "[[services]]\nname = 'a'\ntype = 'htp'",
        "services[0].type: must be one of 'http', 'tcp', 'redis', 'postgres', 'command', "
        "got 'htp' (did you mean 'http'?)",
    ),
    ("[[services]]\nname = 'a'\ntype = 'http'", "services[0].url: is required"),
    (
        "[[services]]\nname = 'a'\ntype = 'http'\nurl = 'ftp://x/'",
        "services[0].url: must be an http:// or https:// URL",
    ),
    (SERVICE + "timeout = -1", "services[0].timeout: must be > 0 seconds: -1"),
    (SERVICE + "timeout = true", "services[0].timeout: must be a number of seconds: True"),
    (SERVICE + "timout = 3", "services[0].timout: unknown key (did you mean 'timeout'?)"),
    (
        SERVICE + "expected_status = [200, 700]",
        "services[0].expected_status[1]: must be an HTTP status code (100-599), got 700",
    ),
    (SERVICE + "host = 'x'", "services[0].host: does not apply to type 'http' (it is for 'tcp')"),
    (SERVICE + SERVICE, "services[1].name: 'api' is already the name of services[0]"),
    ("[[services]]\nname = 'p'\ntype = 'tcp'\nhost = 'h'", "services[0].port: is required"),
    (
        "[[services]]\nname = 'p'\ntype = 'tcp'\nhost = 'h'\nport = 70000",
        "services[0].port: must be <= 65535: 70000",
    ),
    (
        "[[services]]\nname = 'c'\ntype = 'command'\ncommand = 'systemctl restart x'",
        "services[0].command: must be an array of strings, not a string",
    ),
    (
        "[[services]]\nname = 'c'\ntype = 'command'\ncommand = ['ok', 3]",
        "services[0].command[1]: must be a non-empty string, got an integer 3",
    ),
    ("[[services]]\nname = 'd'\ntype = 'postgres'", "services[0].dsn: is required (or 'dsn_env')"),
    (
        "[[services]]\nname = 'd'\ntype = 'postgres'\ndsn_env = 'XNAI_UNSET_DSN_VAR'",
        "services[0].dsn_env: $XNAI_UNSET_DSN_VAR is not set",
    ),
    (
        SERVICE + "[[services.recovery]]\naction = 'reboot'",
        "services[0].recovery[0].action: must be one of",
    ),
    (
        SERVICE + "[[services.recovery]]\naction = 'restart_service'",
        "services[0].recovery[0]: action 'restart_service' needs one of recovery_func, command",
    ),
    (
        SERVICE
        + "[[services.recovery]]\naction = 'restart_service'\ncommand = 'systemctl restart api'",
        "services[0].recovery[0].command: must be an array of strings, not a string",
    ),
    (
        SERVICE
        + "[[services.recovery]]\naction = 'restart_service'\ncommand = ['x']\n"
        + "backoff_base = 10\nbackoff_max = 5",
        "services[0].recovery[0]: 'backoff_max' must be >= 'backoff_base' (10.0)",
    ),
    (
        SERVICE
        + "[[services.recovery]]\naction = 'restart_service'\ncommand = ['x']\nmax_attempts = 0",
        "services[0].recovery[0].max_attempts: must be >= 1: 0",
    ),
    (
        SERVICE + "[[services.recovery]]\naction = 'restart_service'\ncommand = ['x']\ncooldwn = 1",
        "services[0].recovery[0].cooldwn: unknown key (did you mean 'cooldown'?)",
    ),
    ("[circuits]\nkey_prefix = 'a{b}'", "circuits.key_prefix: must not contain braces"),
    ("[server]\nport = 'http'", "server.port: must be an int"),
    (
        "[[alerts]]\ntype = 'slak'",
        "alerts[0].type: must be one of 'alertmanager', 'slack', 'pagerduty', 'email', "
        "'webhook', got 'slak' (did you mean 'slack'?)",
    ),
    (
        "[[alerts]]\ntype = 'slack'\nwebhook_url = 'https://hooks.example/T0/B0/x'",
        "alerts[0].webhook_url: a secret written in the file is refused",
    ),
    ("[[alerts]]\ntype = 'slack'", "alerts[0].webhook_url_env: is required"),
    (
        "[[alerts]]\ntype = 'slack'\nwebhook_url_env = 'XNAI_UNSET_SLACK'",
        "alerts[0].webhook_url_env: $XNAI_UNSET_SLACK is not set",
    ),
    (
        "[[alerts]]\ntype = 'alertmanager'\nurls = ['http://am:9093']\nrepeat_interval = 5",
        "alerts[0].repeat_interval: does not apply to alertmanager",
    ),
    ("[[alerts]]\ntype = 'alertmanager'", "alerts[0].urls: is required"),
    (
        "[[alerts]]\ntype = 'webhook'\nurl = 'http://h/'\nmin_severity = 'loud'",
        "alerts[0].min_severity: must be one of 'info', 'warning', 'critical', got 'loud'",
    ),
    (
        "[[alerts]]\ntype = 'email'\nhost = 'mx'\nmail_from = 'a@b'\nto = []",
        "alerts[0].to: must be a string or a non-empty array of strings",
    ),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stack.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[expected for _, expected in BAD])
def test_bad_file_is_refused_naming_file_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    env = {"XNAI_SHORT_TOKEN": "short"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    message = str(caught.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message
    assert "hunter2secret" not in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml", env={})


def test_good_file_loads_every_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"XNAI_TEST_TOKEN": TOKEN})
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.control_token == TOKEN
    assert config.monitor.check_interval == 2.0
    assert dict(config.monitor.alert_thresholds) == {"success_rate": 90, "consecutive_failures": 4}
    assert [s.name for s in config.services] == ["api", "port", "db", "script"]
    api = config.service("api")
    assert api.expected_status == (200, 204)
    (rule,) = api.rules
    assert rule.action_type is RecoveryActionType.RESTART_SERVICE
    assert tuple(rule.command or ()) == ("true",)
    assert (rule.backoff_base, rule.backoff_max) == (1.0, 5.0)
    assert config.service("port").port == 5432
    assert config.warnings == ()


def test_effective_config_masks_every_secret(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent(
        """
        [[alerts]]
        type = "slack"
        webhook_url_env = "XNAI_TEST_SLACK"

        [[alerts]]
        type = "webhook"
        url = "https://user:webhookpass99@hooks.example/in?token=querytoken77"
        secret_env = "XNAI_TEST_HMAC"
        """
    )
    env = {
        "XNAI_TEST_TOKEN": TOKEN,
        "XNAI_TEST_SLACK": "https://hooks.slack.example/services/T0/B0/slacksecret55",
        "XNAI_TEST_HMAC": "hmacsecret4242",
    }
    config = load_config(write(tmp_path, text), env=env)
    shown = repr(config.effective()) + repr(config) + repr(config.services) + repr(config.alerts)
    for secret in (
        TOKEN,
        "hunter2secret",
        "slacksecret55",
        "hmacsecret4242",
        "webhookpass99",
        "querytoken77",
    ):
        assert secret not in shown
    assert "from $XNAI_TEST_SLACK" in shown
    assert config.alerts[1].secrets == {"secret": "hmacsecret4242"}


def test_unset_token_variable_disables_controls_with_a_warning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={})
    assert config.control_token is None
    assert config.warnings == (
        "$XNAI_TEST_TOKEN is not set: the dashboard's controls are disabled",
    )


def test_factory_variables_override_the_file(tmp_path: Path) -> None:
    text = """
    redis_url = "redis://127.0.0.1:6379/0"
    [[services]]
    name = "rag_api"
    type = "http"
    url = "http://localhost:8000/health"
    [[services]]
    name = "postgres"
    type = "postgres"
    dsn = "postgresql://postgres@localhost/postgres"
    [[services]]
    name = "other"
    type = "http"
    url = "http://localhost:9000/"
    """
    env = {
        "XNAI_RAG_API_HEALTH_URL": "http://127.0.0.1:18000/health",
        "XNAI_DATABASE_DSN": "postgresql://postgres@127.0.0.1:5432/test",
        "XNAI_REDIS_URL": "redis://127.0.0.1:6390/1",
    }
    config = load_config(write(tmp_path, text), env=env)
    assert config.service("rag_api").url == "http://127.0.0.1:18000/health"
    assert config.service("rag_api").overridden_by == "XNAI_RAG_API_HEALTH_URL"
    assert config.service("postgres").dsn == "postgresql://postgres@127.0.0.1:5432/test"
    assert config.service("other").url == "http://localhost:9000/"
    assert config.redis_url == "redis://127.0.0.1:6390/1"
    # Without redis_url in the file, the environment does not switch shared state on.
    bare = load_config(write(tmp_path, "[monitor]\ncheck_interval = 1\n"), env=env)
    assert bare.redis_url is None


def test_example_stack_file_is_valid() -> None:
    config = load_config(REPO / "examples" / "stack.toml", env={})
    assert [s.name for s in config.services] == ["rag_api", "chainlit_ui", "redis", "postgres"]
    assert config.service("rag_api").rules


MANIFEST = REPO / "deploy" / "kubernetes" / "xnai-core.yaml"


def config_map_file(folder: Path) -> Path:
    """The ConfigMap's stack.toml of the Kubernetes manifest, as a file."""
    manifest = MANIFEST.read_text().splitlines()
    start = manifest.index("  stack.toml: |") + 1
    block = []
    for line in manifest[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    path = folder / "stack.toml"
    path.write_text("\n".join(block))
    return path


def test_the_kubernetes_config_map_holds_a_valid_config(tmp_path: Path) -> None:
    env = {"XNAI_CONTROL_TOKEN": "k" * 24, "XNAI_DATABASE_DSN": "postgresql://db/app"}
    config = load_config(config_map_file(tmp_path), env=env)
    assert [s.name for s in config.services] == ["rag_api", "chainlit_ui", "redis", "postgres"]


def test_the_kubernetes_manifest_is_closed_by_default(tmp_path: Path) -> None:
    config = load_config(config_map_file(tmp_path), env={"XNAI_DATABASE_DSN": "postgresql://db/a"})
    # Loopback only, and no token unless an operator creates its secret.
    assert config.host == "127.0.0.1"
    assert config.allowed_hosts == ()
    assert config.control_token is None
    text = MANIFEST.read_text()
    assert '0.0.0.0"' not in text.replace('(host = "0.0.0.0")', "")
    assert "httpGet:" not in text  # the probes run inside the pod, against loopback
    assert "kind: Service\n" not in text
    assert "key: XNAI_CONTROL_TOKEN, optional: true" in text
    # The DSN the config needs is not optional: without it the pod would exit 3 in a loop.
    assert "key: dsn}" in text
    policy = text[text.index("kind: NetworkPolicy") :]
    assert "ingress: []" in policy.split("---")[0]


@pytest.mark.slow
def test_the_kubernetes_probe_command_answers_against_the_manifest_config(
    tmp_path: Path,
) -> None:
    import re
    import subprocess
    import sys

    from tests.conftest import free_port
    from tests.service_helpers import ServiceProcess

    port = free_port()
    proc = ServiceProcess(
        config_map_file(tmp_path),
        env={"XNAI_DATABASE_DSN": "postgresql://127.0.0.1:1/x"},
        port=port,
    )
    try:
        proc.start()
        probes = re.findall(r'command: \["python", "-c", "(.*)"\]', MANIFEST.read_text())
        assert len(probes) == 2
        for probe in probes:
            code = probe.replace("9108", str(port))
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
            )
            assert done.returncode == 0, done.stderr
    finally:
        proc.stop()


def test_a_file_without_services_is_said_to_watch_nothing(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[monitor]\ncheck_interval = 5\n"), env={})
    assert config.services == ()
    assert config.warnings == ("no [[services]]: nothing is watched, and 'check' answers healthy",)


HOSTILE = [
    ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "not valid TOML: nested too deeply"),
    ("a = {" + " b = {" * 5_000 + "}" * 5_001 + "\n", "not valid TOML: nested too deeply"),
    ("[monitor]\ncheck_interval = 1" + "0" * 5_000 + "\n", "not valid TOML: an integer of"),
    ("# padding\n" * 200_000 + SERVICE, "larger than 1024 KiB"),
]


@pytest.mark.parametrize(
    ("text", "expected"), HOSTILE, ids=["deep-array", "deep-table", "huge-integer", "huge-file"]
)
def test_a_hostile_file_is_a_config_error_not_a_crash(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Deep nesting (RecursionError in tomllib) and a 5,000-digit integer (ValueError:
    Python's int-string limit) escaped as tracebacks: exit 1, which `check` means as
    "degraded" to its cron job or probe, instead of 3, the config error, in one line.
    A file of megabytes is no config file: it is refused before it is read whole (a
    path like /dev/zero was read until memory ran out)."""
    from tests.service_helpers import run_cli

    path = tmp_path / "stack.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)[:300]
    for args in (("config", "check", str(path)), ("check", "--config", str(path))):
        ran = run_cli(*args)
        assert ran.code == 3, (args, ran.code, ran.err[-500:])
        assert ran.err.startswith(f"xnai-core: {path}: {expected}"), ran.err[-500:]
        assert ran.err.count("\n") == 1
        assert "Traceback" not in ran.err


@pytest.mark.parametrize(
    "text",
    [
        '[[services]]\nname = "' + "a" * 1_000_000 + '"\ntype = "tcp"\nhost = "h"\nport = 1\n',
        "[monitor]\n" + "k" * 1_000_000 + " = 1\n",
        '[[services]]\nname = "a"\ntype = "' + "x" * 1_000_000 + '"\n',
    ],
    ids=["value", "key", "choice"],
)
def test_an_error_quotes_a_huge_value_or_key_in_part(tmp_path: Path, text: str) -> None:
    """A value or key of a megabyte was echoed whole: a one-line error of a megabyte
    (journald cuts lines at 48 KiB, a terminal scrolls for pages). It is quoted in part,
    the line still naming the file, the key and the rule."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert len(message) < 1_000, message[:2_000]
    assert message.startswith(f"{path}: "), message
    assert "characters" in message  # says how much was left out


def test_config_check_masks_a_credential_in_a_name(tmp_path: Path) -> None:
    """A circuit or sink named after a URL with its password: ``config check`` printed the
    names as written (every known secret field was masked, a name was not), and so did
    the config's repr."""
    from tests.service_helpers import run_cli

    text = (
        SERVICE
        + '[circuits]\nnames = ["redis://:circuitpw123@cache:6379"]\n'
        + '[[alerts]]\ntype = "webhook"\nname = "https://u:sinkpw456@hooks.example/x"\n'
        + 'url = "http://127.0.0.1:1/hook"\n'
    )
    path = write(tmp_path, text)
    for args in (("config", "check", str(path)), ("config", "check", str(path), "--json")):
        ran = run_cli(*args)
        assert ran.code == 0, ran.err
        assert "circuitpw123" not in ran.out
        assert "sinkpw456" not in ran.out
        assert "redis://:***@cache:6379" in ran.out
    config = load_config(path, env={})
    assert "circuitpw123" not in repr(config)
    assert "circuitpw123" not in repr(config.circuits)


@pytest.mark.parametrize("key", ["services", "exclude_services"])
def test_a_sink_routed_to_a_service_nobody_checks_is_refused(tmp_path: Path, key: str) -> None:
    """``services = ["rag-api"]`` for a service named ``rag_api``: the sink took no alert,
    ever (every page to it lost), and ``config check`` called the file valid. A name of
    the routing lists must be one of ``[[services]]``, with a did-you-mean."""
    text = (
        SERVICE.replace('name = "api"', 'name = "rag_api"')
        + f'[[alerts]]\ntype = "webhook"\nurl = "http://127.0.0.1:1/hook"\n{key} = ["rag-api"]\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == (
        f"{path}: alerts[0].{key}[0]: 'rag-api' is not a service of [[services]] "
        "(did you mean 'rag_api'?)"
    )
