"""RedisConnectionManager against real servers: plain, password, ACL user, unix socket, TLS."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import SHARED_REDIS_URL, PrivateRedis, free_port
from xnai_core import RedisConnectionManager, create_redis_circuit_breaker
from xnai_core.redis_manager import redact_url

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def manager_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="xnai_core.redis_manager")
    return caplog


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def secured_redis(private_redis: PrivateRedis) -> PrivateRedis:
    """The private server, now wanting a password, with an ACL user "app" too."""
    admin = redis.Redis(host="127.0.0.1", port=private_redis.port)
    try:
        admin.acl_setuser(
            "app", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip
        admin.config_set("requirepass", SECRET)
    finally:
        admin.close()
    return private_redis


async def test_connects_and_reports_health() -> None:
    """The seed's calls: connect(), get_health_status()['connected'], close()."""
    manager = RedisConnectionManager(
        redis_url=SHARED_REDIS_URL, max_connections=50, health_check_interval=30
    )
    try:
        assert await manager.connect() is True
        status = await manager.get_health_status()
        assert status["connected"] is True
        assert isinstance(status["latency_ms"], float)
        assert status["server_version"] == (await manager.client.info("server"))["redis_version"]
        assert status["last_error"] is None
        assert status["max_connections"] == 50
    finally:
        await manager.close()


async def test_unreachable_server_never_raises(manager_log: pytest.LogCaptureFixture) -> None:
    """Nobody listening: connect() is False, the status says why, one warning."""
    manager = RedisConnectionManager(f"redis://127.0.0.1:{free_port()}/0", check_timeout=0.5)
    try:
        started = time.monotonic()
        assert await manager.connect() is False
        status = await manager.get_health_status()
        assert time.monotonic() - started < 3.0
        assert status["connected"] is False
        assert status["latency_ms"] is None
        assert "ConnectionError" in status["last_error"]
        assert status["consecutive_failures"] == 2
        assert manager_log.text.count("is unreachable") == 1
    finally:
        await manager.close()


async def test_hung_server_is_bounded_by_the_check_timeout(private_redis: PrivateRedis) -> None:
    """SIGSTOP: the check gives up after check_timeout."""
    private_redis.pause()
    manager = RedisConnectionManager(private_redis.url, check_timeout=0.3)
    try:
        started = time.monotonic()
        assert await manager.connect() is False
        assert time.monotonic() - started < 0.3 + 0.5
    finally:
        private_redis.resume()
        await manager.close()


async def test_password_never_shows(
    secured_redis: PrivateRedis, manager_log: pytest.LogCaptureFixture
) -> None:
    """Password in the URL works and is redacted from repr, status, errors and logs."""
    port = secured_redis.port
    good = RedisConnectionManager(f"redis://:{SECRET}@127.0.0.1:{port}/0")
    user = RedisConnectionManager(f"redis://app:{SECRET}@127.0.0.1:{port}/0")
    bad = RedisConnectionManager(f"redis://:wrong-{SECRET}@127.0.0.1:{port}/0")
    try:
        assert await good.connect() is True
        assert await user.connect() is True
        assert await bad.connect() is False
        texts = [repr(m) for m in (good, user, bad)]
        texts += [str(await m.get_health_status()) for m in (good, user, bad)]
        texts.append(manager_log.text)
        assert all(SECRET not in text for text in texts)
        assert "***" in repr(good)
        assert (await bad.get_health_status())["last_error"] is not None
    finally:
        for manager in (good, user, bad):
            await manager.close()


def test_redact_url() -> None:
    """The password (up to the last '@') and query passwords are replaced; the rest is kept."""
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert (
        redact_url("rediss://u:pw@h/2?ssl_cert_reqs=none")
        == "rediss://u:***@h/2?ssl_cert_reqs=none"
    )
    assert (
        redact_url("unix:///tmp/r.sock?db=1&password=pw") == "unix:///tmp/r.sock?db=1&password=***"
    )
    assert redact_url("unix://u:pw@/tmp/r@1.sock") == "unix://u:***@/tmp/r@1.sock"
    assert redact_url("unix:///run/redis@6379.sock") == "unix:///run/redis@6379.sock"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    # Unencoded '#', '/', '?', '@' or ':' in a password: still nothing of it shows.
    for password in ("s3cr#et", "s3cr/et", "s3cr?et", "s3cr@et", "s3:cr/#?@et"):
        for url in (f"redis://:{password}@h:1/0", f"redis://user:{password}@h:1/0"):
            shown = redact_url(url)
            assert shown.endswith("***@h:1/0"), shown
            assert "s3cr" not in shown
            assert "et" not in shown.replace("redis", "")


UNENCODED = "s3:cr/#?@et-Pa55"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://:{UNENCODED}@h/0", "must start with"),
        (f"redis://:{UNENCODED}@127.0.0.1:notaport/0", "port from 1 to 65535"),
        (f"redis://:{UNENCODED}@127.0.0.1:0/0", "port from 1 to 65535"),
        (f"redis://:{UNENCODED}@127.0.0.1:70000/0", "port from 1 to 65535"),
        (f"redis://:{UNENCODED}@[::1/0", "port from 1 to 65535"),
        (f"redis://:{UNENCODED}@127.0.0.1:1/notadb", "must be a number"),
        (f"redis://:{UNENCODED}@127.0.0.1:1/0?db=zz", "Invalid value for 'db'"),
        (f"unix:///tmp/x.sock?db=zz&password={UNENCODED}", "Invalid value for 'db'"),
        (f"unix://:{UNENCODED}@tmp/x.sock", "absolute path"),
    ],
)
def test_bad_urls_are_value_errors_without_secrets(url: str, message: str) -> None:
    """A URL redis-py could not use fails at construction, and never shows the secret."""
    with pytest.raises(ValueError, match="'redis_url'") as caught:
        RedisConnectionManager(url)
    text = str(caught.value)
    assert message in text
    assert "s3" not in text
    assert "Pa55" not in text


def test_bad_options_are_value_errors() -> None:
    """Option checks name the option."""
    with pytest.raises(ValueError, match="'max_connections' must be >= 1"):
        RedisConnectionManager(max_connections=0)


async def test_unencoded_password_connects_and_never_shows(
    secured_redis: PrivateRedis, manager_log: pytest.LogCaptureFixture
) -> None:
    """A password with unencoded ':', '/', '#', '?', '@' works, and shows nowhere."""
    admin = redis.Redis(host="127.0.0.1", port=secured_redis.port, password=SECRET)
    try:
        admin.acl_setuser(
            "odd", enabled=True, passwords=[f"+{UNENCODED}"], keys=["*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip
    finally:
        admin.close()
    port = secured_redis.port
    good = RedisConnectionManager(f"redis://odd:{UNENCODED}@127.0.0.1:{port}/0")
    bad = RedisConnectionManager(f"redis://odd:x{UNENCODED}@127.0.0.1:{port}/0")
    unreachable = RedisConnectionManager(
        f"redis://odd:{UNENCODED}@127.0.0.1:{free_port()}/0", check_timeout=0.5
    )
    managers = (good, bad, unreachable)
    try:
        assert [await manager.connect() for manager in managers] == [True, False, False]
        texts = [repr(manager) for manager in managers]
        texts += [str(await manager.get_health_status()) for manager in managers]
        texts.append(manager_log.text)
        for text in texts:
            assert "s3" not in text
            assert "Pa55" not in text
        assert (await bad.get_health_status())["last_error"] is not None
    finally:
        for manager in managers:
            await manager.close()


async def test_unix_socket(tmp_path: Path) -> None:
    """unix:// URLs reach a server on a socket file."""
    sock = tmp_path / "redis.sock"
    server = PrivateRedis(extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    server.start()
    manager = RedisConnectionManager(f"unix://{sock}?db=0")
    try:
        assert await manager.connect() is True
        assert (await manager.get_health_status())["connected"] is True
    finally:
        await manager.close()
        server.cleanup()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls(tmp_path: Path) -> None:
    """rediss:// with the server's CA verifies and connects."""
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    server = PrivateRedis(
        extra_args=(
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no",
        )
    )  # fmt: skip
    server.start()
    manager = RedisConnectionManager(f"rediss://127.0.0.1:{tls_port}/0", ssl_ca_certs=str(cert))
    try:
        assert await manager.connect() is True
        assert (await manager.get_health_status())["server_version"]
    finally:
        await manager.close()
        server.cleanup()


async def test_reconnects_after_a_restart(
    private_redis: PrivateRedis, manager_log: pytest.LogCaptureFixture
) -> None:
    """The background check notices the outage and the return, once each."""
    async with RedisConnectionManager(private_redis.url, health_check_interval=0.2) as manager:
        assert manager.connected
        private_redis.kill()
        await until(lambda: not manager.connected)
        private_redis.start()
        await until(lambda: manager.connected)
        assert manager.connected
    assert manager_log.text.count("is unreachable") == 1
    assert manager_log.text.count("answers again") == 1


async def test_a_manager_feeds_the_circuit_factory(private_redis: PrivateRedis) -> None:
    """create_redis_circuit_breaker takes the manager (or its client) as redis_client."""
    async with RedisConnectionManager(private_redis.url) as manager:
        breaker = create_redis_circuit_breaker("svc", manager)

        async def ok() -> str:
            return "ok"

        try:
            assert await breaker.call(ok) == "ok"
            assert breaker.get_metrics()["redis_available"] is True
        finally:
            await breaker.close()
