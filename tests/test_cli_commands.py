"""The xnai-core command through subprocesses: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis, free_port
from tests.service_helpers import REPO, Behaviour, drop_shared_keys, http_service, run_cli
from xnai_core import RecoveryCoordinator

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, services: str, head: str = "") -> Path:
    path = tmp_path / "stack.toml"
    path.write_text(textwrap.dedent(head) + "\n" + textwrap.dedent(services))
    return path


def http(name: str, url: str, extra: str = "") -> str:
    return f'[[services]]\nname = "{name}"\ntype = "http"\nurl = "{url}"\ntimeout = 2\n{extra}\n'


# -- help and usage ----------------------------------------------------------------------

COMMANDS = [
    [],
    ["serve"],
    ["check"],
    ["config"],
    ["config", "check"],
    ["circuits"],
    ["circuits", "list"],
    ["circuits", "show"],
    ["circuits", "open"],
    ["circuits", "close"],
    ["circuits", "reset"],
    ["recovery"],
    ["recovery", "status"],
    ["recovery", "reset"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) or "xnai-core" for c in COMMANDS])
def test_every_command_has_help(args: list[str]) -> None:
    ran = run_cli(*args, "--help")
    assert ran.code == 0, ran.err
    assert "Usage: xnai-core" in ran.out


def test_bad_usage_exits_2() -> None:
    ran = run_cli("circuits", "frobnicate")
    assert ran.code == 2
    assert "No such command" in ran.err


# -- config check ------------------------------------------------------------------------


def test_config_check_prints_the_effective_config_masked(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[[services]]\nname = "db"\ntype = "postgres"\n'
        'dsn = "postgresql://app:pgsecret123@127.0.0.1/app"\n',
        head='control_token_env = "XNAI_TEST_CLI_TOKEN"\n',
    )
    ran = run_cli(
        "config", "check", str(path), "--json", env={"XNAI_TEST_CLI_TOKEN": "s" * 8 + "tokenvalue"}
    )
    assert ran.code == 0, ran.err
    effective = ran.json()
    assert effective["services"][0]["target"] == "postgresql://app:***@127.0.0.1/app"
    assert "pgsecret123" not in ran.out
    assert "tokenvalue" not in ran.out
    plain = run_cli("config", "check", str(path))
    assert plain.code == 0
    assert plain.out.startswith(f"{path}: valid")
    assert "pgsecret123" not in plain.out


def test_config_check_refuses_a_bad_file_in_one_line_exit_3(tmp_path: Path) -> None:
    path = write_config(tmp_path, http("api", "http://127.0.0.1:1/", "timout = 3"))
    ran = run_cli("config", "check", str(path))
    assert ran.code == 3
    assert ran.out == ""
    assert ran.err == (
        f"xnai-core: {path}: services[0].timout: unknown key (did you mean 'timeout'?)\n"
    )


def _missing(folder: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported (as if not installed)."""
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(
            f"raise ImportError('No module named {module}')\n"
        )
    return {"PYTHONPATH": str(folder)}


REFUSED_BY_SERVE = {
    "pagerduty_key_too_short": (
        '[[alerts]]\ntype = "pagerduty"\nrouting_key_env = "XNAI_TEST_PD_KEY"\n',
        (),
        "alerts[0]: 'routing_key' must be a 32-character PagerDuty integration key",
    ),
    "email_without_aiosmtplib": (
        '[[alerts]]\ntype = "email"\nhost = "127.0.0.1"\nmail_from = "x@example.org"\n'
        'to = "ops@example.org"\n',
        ("aiosmtplib",),
        "alerts[0]: EmailSink needs aiosmtplib",
    ),
    "postgres_without_asyncpg": (
        '[[services]]\nname = "db"\ntype = "postgres"\ndsn = "postgresql://127.0.0.1/x"\n',
        ("asyncpg",),
        "services[0]: postgres checks need asyncpg",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_SERVE))
def test_config_check_refuses_what_serve_refuses_with_the_same_line(
    tmp_path: Path, case: str
) -> None:
    text, missing, expected = REFUSED_BY_SERVE[case]
    path = write_config(tmp_path, text)
    env = {"XNAI_TEST_PD_KEY": "short-key", **_missing(tmp_path / "shadow", *missing)}
    checked = run_cli("config", "check", str(path), env=env)
    served = run_cli("serve", "--config", str(path), "--port", "0", env=env)
    assert served.code == 3, served.err
    assert checked.code == 3, checked.out
    assert checked.out == ""
    assert checked.err == served.err
    assert checked.err.startswith(f"xnai-core: {path}: {expected}")
    assert checked.err.count("\n") == 1


def test_config_check_shows_the_timeout_the_monitor_applies(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        http("api", "http://127.0.0.1:1/").replace("timeout = 2", "timeout = 30")
        + http("slow", "http://127.0.0.1:1/", "interval = 60").replace(
            "timeout = 2", "timeout = 30"
        ),
        head="[monitor]\ncheck_interval = 10\n",
    )
    ran = run_cli("config", "check", str(path), "--json")
    assert ran.code == 0, ran.err
    api, slow = ran.json()["services"]
    assert (api["timeout"], api["interval"]) == (10, 10)
    assert api["timeout_note"] == "capped by the interval (30 s in the file)"
    assert (slow["timeout"], slow["interval"]) == (30, 60)
    assert "timeout_note" not in slow


def test_missing_config_is_exit_3(tmp_path: Path) -> None:
    ran = run_cli("check", "--config", str(tmp_path / "none.toml"))
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert "no such file" in ran.err
    bare = run_cli("check", env={"XNAI_CONFIG": ""})
    assert bare.code == 3
    assert "pass --config FILE or set $XNAI_CONFIG" in bare.err


# -- check -------------------------------------------------------------------------------


def test_check_exit_codes_against_healthy_slow_and_dead_services(tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/health"
    with http_service() as (fast_url, _), http_service(Behaviour(delay=0.5)) as (slow_url, _):
        healthy = write_config(tmp_path, http("api", fast_url))
        ran = run_cli("check", "--config", str(healthy))
        assert ran.code == 0, ran.out + ran.err
        assert "overall: healthy" in ran.out

        slow = write_config(
            tmp_path, http("api", fast_url) + http("ui", slow_url, "degraded_threshold = 0.2")
        )
        ran = run_cli("check", "--config", str(slow), "--json")
        assert ran.code == 1, ran.out + ran.err
        report = ran.json()
        assert report["status"] == "degraded"
        assert {s["name"]: s["status"] for s in report["services"]} == {
            "api": "healthy",
            "ui": "degraded",
        }

        dead = write_config(tmp_path, http("api", fast_url) + http("gone", dead_url))
        ran = run_cli("check", "--config", str(dead), "--json")
        assert ran.code == 2, ran.out + ran.err
        report = ran.json()
        assert report["status"] == "unhealthy"
        gone = next(s for s in report["services"] if s["name"] == "gone")
        assert gone["status"] == "unhealthy"
        assert gone["error"]

        # A dead service that is not critical degrades the stack, it does not fail it.
        optional = write_config(
            tmp_path, http("api", fast_url) + http("gone", dead_url, "critical = false")
        )
        assert run_cli("check", "--config", str(optional)).code == 1


def test_check_of_a_dead_tcp_port_and_a_failing_command(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[services]]\nname = "port"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        '[[services]]\nname = "script"\ntype = "command"\n'
        'command = ["sh", "-c", "echo password=cmdsecret77; exit 3"]\ncritical = false\n',
    )
    ran = run_cli("check", "--config", str(path), "--json")
    assert ran.code == 2
    errors = {s["name"]: s["error"] for s in ran.json()["services"]}
    assert "cannot connect to 127.0.0.1" in errors["port"]
    assert errors["script"].startswith("exit status 3")
    assert "cmdsecret77" not in ran.out


def test_check_with_a_bad_config_is_exit_3(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[[services]]\nname = "api"\ntype = "http"\nurl = "http://x/"\ntimeout = -1\n'
    )
    ran = run_cli("check", "--config", str(path))
    assert ran.code == 3
    assert "services[0].timeout: must be > 0 seconds: -1" in ran.err


# -- circuits ----------------------------------------------------------------------------


@pytest.fixture
def cb_prefix(key_prefix: str) -> Iterator[str]:
    prefix = f"{key_prefix}:cb:"
    yield prefix
    drop_shared_keys(key_prefix)


def test_circuits_commands_exit_codes_and_json(cb_prefix: str) -> None:
    base = ("--redis-url", SHARED_REDIS_URL, "--prefix", cb_prefix)
    listed = run_cli("circuits", "list", *base, "--json")
    assert listed.code == 0, listed.err
    assert listed.json() == []

    missing = run_cli("circuits", "show", "llm", *base)
    assert missing.code == 1
    assert missing.err == "xnai-core: no circuit 'llm' under this prefix\n"

    opened = run_cli("circuits", "open", "llm", *base, "--yes", "--create", "--json")
    assert opened.code == 0, opened.err
    assert opened.json()["state"] == "open"
    assert opened.json()["forced_open"] is True

    declined = run_cli("circuits", "close", "llm", *base)
    assert declined.code == 1
    assert declined.err == (
        "xnai-core: close 'llm': not confirmed (pass --yes to skip the question)\n"
    )
    assert run_cli("circuits", "show", "llm", *base, "--json").json()["state"] == "open"

    shown = run_cli("circuits", "show", "llm", *base, "--json")
    assert shown.code == 0
    assert shown.json()["state"] == "open"
    assert shown.json()["opened_at"] > 0

    table = run_cli("circuits", "list", *base)
    assert table.code == 0
    header, row = table.out.splitlines()
    assert header.split() == ["NAME", "STATE", "FAILURES", "OPENED", "AT", "RETRY", "AFTER"]
    assert row.split()[:3] == ["llm", "open", "(forced)"]

    closed = run_cli("circuits", "close", "llm", *base, "-y")
    assert closed.code == 0
    assert closed.out == "circuit 'llm' is now closed\n"
    reset = run_cli("circuits", "reset", "llm", *base, "-y", "--json")
    assert reset.code == 0
    assert reset.json()["state"] == "closed"
    assert [v["name"] for v in run_cli("circuits", "list", *base, "--json").json()] == ["llm"]


CONTROLS = ("\x1b", "\x07", "\u202e", "\r")


def test_a_table_shows_control_characters_escaped_one_row_per_line(
    cb_prefix: str, tmp_path: Path
) -> None:
    """A circuit name in Redis (any application writes them) and a check's output (a
    script's colours, its lines) went into the tables raw: an escape sequence cleared
    the operator's screen or retitled the terminal, a newline forged a row ("llm
    closed" under a circuit that is open), U+202E reversed the text after it."""
    base = ("--redis-url", SHARED_REDIS_URL, "--prefix", cb_prefix)
    hostile = "evil\x1b[2J\x1b]0;pwned\x07\nllm  closed\u202e"
    assert run_cli("circuits", "open", hostile, *base, "--yes", "--create").code == 0
    table = run_cli("circuits", "list", *base)
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert len(lines) == 2, table.out
    assert not any(char in table.out for char in CONTROLS), repr(table.out)
    assert lines[1].startswith("evil\\x1b[2J"), lines[1]
    assert "closed\\u202e  open (forced)  0  " in lines[1], lines[1]

    script = "printf '\\033[31mERROR\\033[0m first\\nsecond line\\n'; exit 2"
    command = json.dumps(["sh", "-c", script])  # a JSON string is a TOML basic string
    path = write_config(
        tmp_path, f'[[services]]\nname = "colours"\ntype = "command"\ncommand = {command}\n'
    )
    checked = run_cli("check", "--config", str(path))
    assert checked.code == 2, checked.err
    _, row, _ = checked.out.splitlines()
    assert row.startswith("colours"), row
    assert "ERROR" in row, row
    assert "second line" in row, row
    assert not any(char in checked.out for char in CONTROLS), repr(checked.out)


@pytest.mark.parametrize("action", ["open", "close", "reset"])
def test_changing_an_unknown_circuit_exits_1_and_creates_nothing(
    cb_prefix: str, action: str
) -> None:
    base = ("--redis-url", SHARED_REDIS_URL, "--prefix", cb_prefix)
    ran = run_cli("circuits", action, "llmm", *base, "--yes")
    assert ran.code == 1, ran.out
    assert ran.out == ""
    assert ran.err == (
        f"xnai-core: no circuit 'llmm' under this prefix (pass --create to {action} it anyway)\n"
    )
    assert run_cli("circuits", "show", "llmm", *base).code == 1
    assert run_cli("circuits", "list", *base, "--json").json() == []
    # Asked without --yes, the answer is the same: no question about a circuit that is not there.
    assert run_cli("circuits", action, "llmm", *base).err == ran.err


def test_circuits_without_redis_exit_4_and_change_nothing() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["list"], ["show", "x"], ["open", "x", "--yes"], ["reset", "x", "--yes"]):
        ran = run_cli("circuits", *args, "--redis-url", dead)
        assert ran.code == 4, (args, ran.err)
        assert ran.err.startswith("xnai-core: Redis did not answer")
        assert ran.err.count("\n") == 1


NOT_REDIS = {
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "no-scan": b"-ERR unknown command\r\n",
}


@pytest.mark.parametrize("reply", NOT_REDIS.values(), ids=NOT_REDIS.keys())
def test_a_redis_url_that_reaches_no_redis_is_exit_4_in_one_line(reply: bytes) -> None:
    """An HTTP server on the URL's port (redis-py: InvalidResponse) or a proxy without
    SCAN (ResponseError): a traceback and exit 1 before, not "Redis did not answer"."""
    from tests.service_helpers import not_redis

    with not_redis(reply) as url:
        for args in (
            ["circuits", "list"],
            ["circuits", "show", "x"],
            ["circuits", "open", "x", "--yes"],
            ["recovery", "status"],
            ["recovery", "reset", "x", "--yes"],
        ):
            ran = run_cli(*args, "--redis-url", url)
            assert ran.code == 4, (args, ran.code, ran.err[-400:])
            assert ran.err.startswith("xnai-core: Redis "), (args, ran.err[-400:])
            assert ran.err.count("\n") == 1, (args, ran.err[-400:])


def test_a_redis_that_stalls_after_answering_ends_a_command_within_its_timeout() -> None:
    """A Redis that answers ``EXISTS`` and then nothing (the circuit's scripts stall): the
    command waited the store's set-up deadline, made for long-lived breakers (20 s at a
    2 s op timeout), instead of the 2 s per request every other step keeps to."""
    from tests.service_helpers import half_redis

    answers = {"CLIENT": b"+OK\r\n", "HELLO": b"-ERR unknown command\r\n", "EXISTS": b":1\r\n"}
    with half_redis(answers) as url:
        for args in (["show", "x"], ["open", "x", "--yes"], ["reset", "x", "--yes"]):
            started = time.monotonic()
            ran = run_cli("circuits", *args, "--redis-url", url)
            took = time.monotonic() - started
            assert ran.code == 4, (args, ran.err)
            assert ran.err.startswith("xnai-core: Redis did not answer"), ran.err
            # 2 s per request, a few requests: far below the 20 s it took (a deadline
            # with room for a loaded machine, not a speed).
            assert took < 12, (args, took)


def test_circuits_open_is_seen_by_a_running_breaker_in_another_process(cb_prefix: str) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "tests.circuit_watcher", SHARED_REDIS_URL, cb_prefix, "llm"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        ran = run_cli(
            "circuits",
            "open",
            "llm",
            "--yes",
            "--redis-url",
            SHARED_REDIS_URL,
            "--prefix",
            cb_prefix,
        )
        done = time.monotonic()
        assert ran.code == 0, ran.err
        line = watcher.stdout.readline().split()
        assert line[:2] == ["state", "open"]
        # The watcher resyncs once a minute: only the circuit's own message brings the
        # change this fast (docs/redis.md measures a few milliseconds).
        assert float(line[2]) - done < 2.0
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
        if watcher.stdout is not None:
            watcher.stdout.close()


def test_circuits_take_redis_and_prefix_from_the_config(tmp_path: Path, cb_prefix: str) -> None:
    path = write_config(
        tmp_path,
        f'[circuits]\nkey_prefix = "{cb_prefix}"\nnames = ["planned"]\n',
        head=f'redis_url = "{SHARED_REDIS_URL}"\n',
    )
    ran = run_cli("circuits", "list", "--config", str(path), "--json")
    assert ran.code == 0, ran.err
    assert ran.json()[0]["name"] == "planned"
    assert ran.json()[0]["exists"] is False
    # A circuit the config names is known: changed without --create.
    opened = run_cli("circuits", "open", "planned", "--config", str(path), "--yes", "--json")
    assert opened.code == 0, opened.err
    assert opened.json()["state"] == "open"


# -- recovery ----------------------------------------------------------------------------


async def test_recovery_status_and_reset_of_the_shared_latch(key_prefix: str) -> None:
    prefix = f"{key_prefix}:recovery"
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    try:
        coordinator = RecoveryCoordinator(client, key_prefix=prefix)
        await coordinator.latch(
            "rag_api", "manual intervention: restarts password=latchpw99 failed"
        )
        base = ("--redis-url", SHARED_REDIS_URL, "--prefix", prefix)

        status = run_cli("recovery", "status", "rag_api", *base, "--json")
        assert status.code == 0, status.err
        assert status.json()["latched"] is True
        assert "latchpw99" not in status.out
        every = run_cli("recovery", "status", *base, "--json")
        assert [row["service"] for row in every.json()] == ["rag_api"]

        reset = run_cli("recovery", "reset", "rag_api", *base, "--yes")
        assert reset.code == 0
        assert reset.out == "rag_api: latch lifted\n"
        view = await coordinator.latch_state("rag_api")
        assert view is not None
        assert view.latched is False
        assert view.reset_id is not None
        assert run_cli("recovery", "status", *base).out == "no service is latched\n"
    finally:
        async for key in client.scan_iter(match=f"{key_prefix}*"):
            await client.unlink(key)
        await client.aclose()


async def test_recovery_reset_asks_first_and_refuses_a_service_that_is_not_latched(
    key_prefix: str,
) -> None:
    prefix = f"{key_prefix}:recovery"
    client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    try:
        coordinator = RecoveryCoordinator(client, key_prefix=prefix)
        base = ("--redis-url", SHARED_REDIS_URL, "--prefix", prefix)
        unknown = run_cli("recovery", "reset", "nosuch", *base, "--yes")
        assert unknown.code == 1
        assert unknown.out == ""
        assert unknown.err == (
            "xnai-core: 'nosuch' is not latched: nothing to reset "
            "(pass --force to record a reset anyway)\n"
        )
        view = await coordinator.latch_state("nosuch")
        assert view is not None
        assert view.reset_id is None  # nothing was recorded

        await coordinator.latch("rag_api", "escalated")
        declined = run_cli("recovery", "reset", "rag_api", *base)
        assert declined.code == 1
        assert declined.err == (
            "xnai-core: reset 'rag_api': not confirmed (pass --yes to skip the question)\n"
        )
        assert await coordinator.latched("rag_api") is True

        forced = run_cli("recovery", "reset", "nosuch", *base, "--yes", "--force", "--json")
        assert forced.code == 0, forced.err
        assert forced.json() == {"service": "nosuch", "was_latched": False, "latched": False}
        view = await coordinator.latch_state("nosuch")
        assert view is not None
        assert view.reset_id is not None
    finally:
        async for key in client.scan_iter(match=f"{key_prefix}*"):
            await client.unlink(key)
        await client.aclose()


def test_recovery_without_redis_is_exit_4(private_redis: PrivateRedis) -> None:
    private_redis.kill()
    ran = run_cli("recovery", "reset", "x", "--yes", "--redis-url", private_redis.url)
    assert ran.code == 4
    assert ran.err.startswith("xnai-core: Redis did not answer")


def test_check_of_real_redis_and_postgres(tmp_path: Path, postgres_dsn: str) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    path = write_config(
        tmp_path,
        f'[[services]]\nname = "redis"\ntype = "redis"\nurl = "{SHARED_REDIS_URL}"\n'
        f'[[services]]\nname = "db"\ntype = "postgres"\ndsn = "{postgres_dsn}"\n'
        f'[[services]]\nname = "gone"\ntype = "redis"\nurl = "{dead_redis}"\ntimeout = 2\n'
        "critical = false\n",
    )
    ran = run_cli("check", "--config", str(path), "--json")
    statuses = {s["name"]: s["status"] for s in ran.json()["services"]}
    assert statuses == {"redis": "healthy", "db": "healthy", "gone": "unhealthy"}, ran.out
    assert ran.code == 1  # only a non-critical service is down: degraded
