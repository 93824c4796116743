"""The service's one config file (TOML): what to watch, how to heal it, whom to tell.

``load_config(path)`` reads and validates the file and returns a :class:`ServiceConfig`;
every problem is a :class:`ConfigError` ``<file>: <key path>: <problem>``, unknown keys
included (with a did-you-mean). Environment variables override the file the way the
health checker factories read them (see :data:`ENV_OVERRIDES`). Credentials never sit in
the file itself where the service can avoid it: the control token and the alert sinks'
secrets are named by environment variable (``control_token_env = "XNAI_CONTROL_TOKEN"``);
a token written in the file is refused. See docs/service.md for the whole format.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._redact import MASK, redact, redact_argv, redact_tree, redact_url
from .._redis_url import is_sentinel_url, parse_sentinel_url
from .._validation import MAX_HISTORY
from ..health.factories import (
    CHAINLIT_UI_URL_ENV,
    DATABASE_DSN_ENV,
    RAG_API_URL_ENV,
    REDIS_URL_ENV,
)
from ..recovery import RecoveryActionType, RecoveryRule
from ._schema import ConfigError, Table, suggestion

__all__ = [
    "ENV_OVERRIDES",
    "SERVICE_TYPES",
    "SINK_TYPES",
    "CircuitsSpec",
    "ConfigError",
    "MonitorSpec",
    "RecoverySpec",
    "ServiceConfig",
    "ServiceSpec",
    "SinkSpec",
    "load_config",
    "parse_config",
]

SERVICE_TYPES = ("http", "tcp", "redis", "postgres", "command")
SINK_TYPES = ("alertmanager", "slack", "pagerduty", "email", "webhook")
SEVERITIES = ("info", "warning", "critical")

ENV_OVERRIDES: dict[tuple[str, str], str] = {
    ("http", "rag_api"): RAG_API_URL_ENV,
    ("http", "chainlit_ui"): CHAINLIT_UI_URL_ENV,
    ("redis", "redis"): REDIS_URL_ENV,
    ("postgres", "postgres"): DATABASE_DSN_ENV,
}
"""(service type, service name) -> the factories' variable that overrides its url/dsn.

``redis_url`` at the top is overridden by ``XNAI_REDIS_URL`` too, when the file sets it
(a file without ``redis_url`` keeps the service's state in-process, whatever the
environment says)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_NAME = re.compile(r"[a-z0-9_.-]+|\[[0-9a-f:.]+\]")
MIN_TOKEN_LENGTH = 16
DEFAULT_PORT = 9108


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    """The seed's monitor settings."""

    check_interval: float = 30.0
    alert_thresholds: Mapping[str, float] = field(default_factory=dict)
    failure_threshold: int = 3
    success_threshold: int = 2
    history_size: int = 100
    alert_window: int = 20


@dataclass(frozen=True, slots=True, repr=False)
class ServiceSpec:
    """One watched service: how to check it and the rules that heal it."""

    name: str
    type: str
    timeout: float = 5.0
    interval: float | None = None
    degraded_threshold: float | None = None
    critical: bool = True
    url: str | None = None
    host: str | None = None
    port: int | None = None
    dsn: str | None = None
    command: tuple[str, ...] | None = None
    method: str = "GET"
    expected_status: tuple[int, ...] | None = None
    verify: bool = True
    rules: tuple[RecoveryRule, ...] = ()
    overridden_by: str | None = None

    def effective_timeout(self, check_interval: float) -> float:
        """The timeout the monitor applies: never more than the service's interval (a
        check still running when the next is due would overlap it)."""
        return min(self.timeout, self.interval if self.interval is not None else check_interval)

    def target(self) -> str:
        """Where the check goes, credentials masked."""
        if self.url is not None:
            return redact_url(self.url)
        if self.dsn is not None:
            return redact_url(self.dsn)
        if self.command is not None:
            return " ".join(redact_argv(self.command))
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"ServiceSpec(name={self.name!r}, type={self.type!r}, target={self.target()!r})"


@dataclass(frozen=True, slots=True, repr=False)
class CircuitsSpec:
    """Where the application's shared circuits live in Redis, for the dashboard and CLI."""

    key_prefix: str = "xnai:cb:"
    names: tuple[str, ...] = ()
    recovery_timeout: float = 60.0

    def __repr__(self) -> str:
        names = [redact(name) for name in self.names]
        return f"CircuitsSpec(key_prefix={self.key_prefix!r}, names={names!r})"


@dataclass(frozen=True, slots=True)
class RecoverySpec:
    key_prefix: str = "xnai:recovery"
    dry_run: bool = False
    verify_interval: float = 1.0


@dataclass(frozen=True, slots=True, repr=False)
class SinkSpec:
    """One alert sink: its type, constructor options, and secrets read from the environment."""

    type: str
    name: str
    options: Mapping[str, Any]
    secrets: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SinkSpec(type={self.type!r}, name={self.name!r})"

    def shown(self) -> dict[str, object]:
        """The options for display: URLs masked, secrets as the variable that holds them."""
        shown: dict[str, object] = {"type": self.type, "name": self.name}
        for key, value in self.options.items():
            if key in ("urls", "url", "dashboard_url") and isinstance(value, str):
                shown[key] = redact_url(value)
            elif key == "urls" and isinstance(value, list | tuple):
                shown[key] = [redact_url(str(item)) for item in value]
            else:
                shown[key] = value
        for key, variable in self.secret_env.items():
            shown[key] = f"{MASK} (from ${variable})"
        return shown


@dataclass(frozen=True, slots=True, repr=False)
class ServiceConfig:
    """A validated config file."""

    path: str
    redis_url: str | None = None
    control_token: str | None = field(default=None, compare=False)
    control_token_env: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] = ()
    monitor: MonitorSpec = field(default_factory=MonitorSpec)
    services: tuple[ServiceSpec, ...] = ()
    circuits: CircuitsSpec = field(default_factory=CircuitsSpec)
    recovery: RecoverySpec = field(default_factory=RecoverySpec)
    alerts: tuple[SinkSpec, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return f"ServiceConfig(path={self.path!r}, services={[s.name for s in self.services]})"

    def service(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def effective(self) -> dict[str, object]:
        """The config as the service uses it, JSON-ready, every secret masked (and, as a
        last line, every string redacted: a circuit or sink named after a URL with its
        password was printed as written)."""
        shown: dict[str, object] = redact_tree(self._effective())
        return shown

    def _effective(self) -> dict[str, object]:
        token = None
        if self.control_token_env is not None:
            state = "set" if self.control_token else "NOT SET: dashboard controls disabled"
            token = f"{MASK} (from ${self.control_token_env}, {state})"
        return {
            "file": self.path,
            "redis_url": None if self.redis_url is None else redact_url(self.redis_url),
            "control_token": token,
            "server": {
                "host": self.host,
                "port": self.port,
                "allowed_hosts": list(self.allowed_hosts),
            },
            "monitor": {
                "check_interval": self.monitor.check_interval,
                "alert_thresholds": dict(self.monitor.alert_thresholds),
                "failure_threshold": self.monitor.failure_threshold,
                "success_threshold": self.monitor.success_threshold,
                "history_size": self.monitor.history_size,
                "alert_window": self.monitor.alert_window,
            },
            "services": [
                _shown_service(spec, self.monitor.check_interval) for spec in self.services
            ],
            "circuits": {
                "key_prefix": self.circuits.key_prefix,
                "names": list(self.circuits.names),
                "recovery_timeout": self.circuits.recovery_timeout,
            },
            "recovery": {
                "key_prefix": self.recovery.key_prefix,
                "dry_run": self.recovery.dry_run,
                "verify_interval": self.recovery.verify_interval,
                "coordinated": self.redis_url is not None,
            },
            "alerts": [sink.shown() for sink in self.alerts],
            "warnings": list(self.warnings),
        }


def _shown_service(spec: ServiceSpec, check_interval: float) -> dict[str, object]:
    timeout = spec.effective_timeout(check_interval)
    shown: dict[str, object] = {
        "name": spec.name,
        "type": spec.type,
        "target": spec.target(),
        "timeout": timeout,
    }
    if timeout != spec.timeout:
        shown["timeout_note"] = f"capped by the interval ({spec.timeout:g} s in the file)"
    shown |= {
        "interval": spec.interval if spec.interval is not None else check_interval,
        "degraded_threshold": spec.degraded_threshold,
        "critical": spec.critical,
    }
    if spec.overridden_by is not None:
        shown["target_from"] = f"${spec.overridden_by}"
    if spec.type == "http":
        shown["method"] = spec.method
        shown["expected_status"] = list(spec.expected_status or ())
    shown["recovery"] = [
        {
            "action": RecoveryActionType(rule.action).value,
            "does": redact(rule.describe()),
            "command": None if rule.command is None else list(redact_argv(rule.command)),
            "failure_threshold": rule.failure_threshold,
            "max_attempts": rule.max_attempts,
            "backoff_base": rule.backoff_base,
            "backoff_max": rule.backoff_max,
            "cooldown": rule.cooldown,
            "grace_period": rule.grace_period,
            "stable_period": rule.stable_period,
            "timeout": rule.timeout,
        }
        for rule in spec.rules
    ]
    return shown


# -- loading --------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Read and validate the TOML file at ``path``; ``env`` defaults to ``os.environ``."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            # Read no more than a config file can hold: a path like /dev/zero, or a log
            # named by mistake, would otherwise be read until memory runs out.
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("", "no such file", file=name) from None
    except OSError as exc:
        raise ConfigError("", f"cannot be read: {exc.strerror or exc}", file=name) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "", f"larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file", file=name
        )
    return parse_config(_parse_toml(raw, name), file=name, env=env)


MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (a file watching 500 services is about 50 KiB)."""


def _parse_toml(raw: bytes, name: str) -> dict[str, Any]:
    """``raw`` as TOML; every way it can fail is a ConfigError naming ``name``.

    Besides TOMLDecodeError, tomllib lets out a RecursionError for deep nesting and
    Python's ValueError for an integer of thousands of digits: a traceback, and exit 1
    (which ``check`` means as "degraded"), for what is a file that cannot be used.
    """
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", "not valid TOML: not UTF-8 text", file=name) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", file=name) from None
    except RecursionError:
        raise ConfigError("", "not valid TOML: nested too deeply", file=name) from None
    except ValueError:
        # int('1' * 5000): the interpreter's limit on integer digits.
        raise ConfigError(
            "",
            f"not valid TOML: an integer of more than {sys.get_int_max_str_digits()} digits",
            file=name,
        ) from None


def parse_config(
    data: Mapping[str, Any], *, file: str = "<config>", env: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Validate an already parsed TOML document (see :func:`load_config`)."""
    environ = os.environ if env is None else env
    try:
        return _parse(Table(data, ""), file, environ)
    except ConfigError as exc:
        raise exc.in_file(file) from None


def _from_env(environ: Mapping[str, str], variable: str) -> str | None:
    value = environ.get(variable, "").strip()
    return value or None


def _env_name(table: Table, key: str) -> str | None:
    variable = table.text(key)
    if variable is not None and not _ENV_NAME.fullmatch(variable):
        raise table.error(key, f"must be an environment variable name, got {variable!r}")
    return variable


def _check_redis_url(table: Table, key: str, url: str) -> None:
    """A Redis URL: redis-py's schemes, or redis+sentinel:// (xnai_core._redis_url)."""
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise table.error(key, str(exc).removeprefix("'redis_url' ")) from None
    elif not url.startswith(("redis://", "rediss://", "unix://")):
        raise table.error(
            key,
            f"must be a redis://, rediss://, unix:// or redis+sentinel:// URL: {redact_url(url)!r}",
        )
    else:
        _check_address(table, key, url)


def _check_address(table: Table, key: str, url: str, *, need_host: bool = False) -> None:
    """Refuse a URL whose port is not a number from 0 to 65535 (or, ``need_host``, that
    names no host): its client would refuse it only at the first connection, or crash."""
    if url.startswith("unix://"):
        return
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        # Not Python's own text: it quotes what it took for the port, which is part of
        # the password when the password holds an unencoded '/', '#' or '?'.
        raise table.error(
            key,
            "has no valid port (a number from 0 to 65535; a '/', '#' or '?' in a password "
            f"must be percent-encoded): {redact_url(url)!r}",
        ) from None
    if need_host and not parts.hostname:
        raise table.error(key, f"names no host: {redact_url(url)!r}")


def _parse(root: Table, file: str, environ: Mapping[str, str]) -> ServiceConfig:
    warnings: list[str] = []
    if root.has("control_token"):
        raise root.error(
            "control_token",
            "a token written in the file is refused (files get copied, committed and "
            "printed); name the environment variable that holds it: "
            'control_token_env = "XNAI_CONTROL_TOKEN"',
        )
    redis_url = root.text("redis_url")
    if redis_url is not None:
        redis_url = _from_env(environ, REDIS_URL_ENV) or redis_url
        _check_redis_url(root, "redis_url", redis_url)
    token_env = _env_name(root, "control_token_env")
    token = None
    if token_env is not None:
        token = _from_env(environ, token_env)
        if token is None:
            warnings.append(f"${token_env} is not set: the dashboard's controls are disabled")
        elif len(token) < MIN_TOKEN_LENGTH:
            raise root.error(
                "control_token_env",
                f"${token_env} must hold at least {MIN_TOKEN_LENGTH} characters "
                f"(it holds {len(token)})",
            )

    server = root.table("server")
    host = server.text("host", "127.0.0.1")
    port = server.integer("port", DEFAULT_PORT, minimum=0, maximum=65535)
    allowed_hosts = tuple(name.lower() for name in server.strings("allowed_hosts") or ())
    for index, name in enumerate(allowed_hosts):
        if name != "*" and not _HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"{server.key('allowed_hosts')}[{index}]",
                "must be a host name or IP address without a port ('[::1]' for IPv6), "
                f"or '*', got {name!r}",
            )
    server.done()

    monitor = _monitor(root.table("monitor"))
    services = [_service(table, environ) for table in root.tables("services")]
    if not services:
        warnings.append("no [[services]]: nothing is watched, and 'check' answers healthy")
    seen: dict[str, int] = {}
    for index, spec in enumerate(services):
        if spec.name in seen:
            raise ConfigError(
                f"services[{index}].name",
                f"{spec.name!r} is already the name of services[{seen[spec.name]}]",
            )
        seen[spec.name] = index

    circuits_table = root.table("circuits")
    prefix = circuits_table.text("key_prefix", "xnai:cb:")
    assert prefix is not None
    if "{" in prefix or "}" in prefix:
        raise circuits_table.error("key_prefix", f"must not contain braces: {prefix!r}")
    circuits = CircuitsSpec(
        key_prefix=prefix,
        names=circuits_table.strings("names") or (),
        recovery_timeout=circuits_table.seconds("recovery_timeout", 60.0) or 60.0,
    )
    circuits_table.done()

    recovery_table = root.table("recovery")
    recovery = RecoverySpec(
        key_prefix=recovery_table.text("key_prefix", "xnai:recovery") or "xnai:recovery",
        dry_run=recovery_table.boolean("dry_run", False),
        verify_interval=recovery_table.seconds("verify_interval", 1.0) or 1.0,
    )
    recovery_table.done()

    alerts = [_sink(table, environ) for table in root.tables("alerts")]
    names: dict[str, int] = {}
    for index, sink in enumerate(alerts):
        if sink.name in names:
            raise ConfigError(
                f"alerts[{index}].name",
                f"{redact(sink.name)!r} is already the name of alerts[{names[sink.name]}] "
                "(give each sink of a type its own name)",
            )
        names[sink.name] = index
        # The service's sinks hear only its own monitor and recovery: a name of their
        # routing that no [[services]] has is a typo, and every page to the sink lost.
        for key in ("services", "exclude_services"):
            for position, routed in enumerate(sink.options.get(key, ())):
                if routed not in seen:
                    raise ConfigError(
                        f"alerts[{index}].{key}[{position}]",
                        f"{routed!r} is not a service of [[services]]" + suggestion(routed, seen),
                    )

    root.done()
    assert host is not None
    assert port is not None
    return ServiceConfig(
        path=file,
        redis_url=redis_url,
        control_token=token,
        control_token_env=token_env,
        host=host,
        port=port,
        allowed_hosts=allowed_hosts,
        monitor=monitor,
        services=tuple(services),
        circuits=circuits,
        recovery=recovery,
        alerts=tuple(alerts),
        warnings=tuple(warnings),
    )


_THRESHOLDS = ("success_rate", "response_time", "consecutive_failures")


def _monitor(table: Table) -> MonitorSpec:
    interval = table.seconds("check_interval", 30.0)
    thresholds_table = table.table("alert_thresholds")
    thresholds: dict[str, float] = {}
    rate = thresholds_table.number("success_rate", None)
    if rate is not None:
        if rate > 100:
            raise thresholds_table.error(
                "success_rate", f"must be a percentage from 0 to 100, got {rate:g}"
            )
        thresholds["success_rate"] = rate
    response = thresholds_table.seconds("response_time", None)
    if response is not None:
        thresholds["response_time"] = response
    failures = thresholds_table.integer("consecutive_failures", None, minimum=1)
    if failures is not None:
        thresholds["consecutive_failures"] = failures
    thresholds_table.done()
    history = table.integer("history_size", 100, minimum=1, maximum=MAX_HISTORY)
    window = table.integer("alert_window", 20, minimum=1)
    assert history is not None
    assert window is not None
    assert interval is not None
    if window > history:
        raise table.error("alert_window", f"must be <= history_size ({history}), got {window}")
    spec = MonitorSpec(
        check_interval=interval,
        alert_thresholds=thresholds,
        failure_threshold=table.integer("failure_threshold", 3, minimum=1) or 3,
        success_threshold=table.integer("success_threshold", 2, minimum=1) or 2,
        history_size=history,
        alert_window=window,
    )
    table.done()
    return spec


# Keys each service type reads besides the common ones.
_TYPE_KEYS = {
    "http": ("url", "method", "expected_status", "verify"),
    "tcp": ("host", "port"),
    "redis": ("url",),
    "postgres": ("dsn", "dsn_env"),
    "command": ("command",),
}
_COMMON_KEYS = ("name", "type", "timeout", "interval", "degraded_threshold", "critical", "recovery")


def _service(table: Table, environ: Mapping[str, str]) -> ServiceSpec:
    name = table.text("name", required=True)
    assert name is not None
    if not _NAME.fullmatch(name):
        raise table.error(
            "name",
            "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit, got {name!r}",
        )
    kind = table.choice("type", SERVICE_TYPES)
    timeout = table.seconds("timeout", 5.0)
    interval = table.seconds("interval", None)
    degraded = table.seconds("degraded_threshold", None)
    critical = table.boolean("critical", True)
    assert timeout is not None
    for other, keys in _TYPE_KEYS.items():
        if other == kind:
            continue
        for key in keys:
            if table.has(key) and key not in _TYPE_KEYS[kind]:
                raise table.error(key, f"does not apply to type {kind!r} (it is for {other!r})")
    override = ENV_OVERRIDES.get((kind, name))
    overridden = override if override is not None and _from_env(environ, override) else None
    fields: dict[str, Any] = {}
    if kind == "http":
        url = table.text("url", required=overridden is None)
        url = _from_env(environ, override) if overridden and override else url
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise table.error("url", f"must be an http:// or https:// URL: {redact_url(url)!r}")
        _check_address(table, "url", url, need_host=True)
        method = table.choice("method", ("GET", "HEAD", "POST"), "GET")
        fields.update(
            url=url,
            method=method,
            expected_status=_statuses(table),
            verify=table.boolean("verify", True),
        )
    elif kind == "tcp":
        host = table.text("host", required=True)
        port = table.integer("port", None, minimum=1, maximum=65535)
        if port is None:
            raise table.error("port", "is required")
        fields.update(host=host, port=port)
    elif kind == "redis":
        url = table.text("url", required=overridden is None)
        url = _from_env(environ, override) if overridden and override else url
        assert url is not None
        _check_redis_url(table, "url", url)
        fields.update(url=url)
    elif kind == "postgres":
        dsn = table.text("dsn")
        dsn_env = _env_name(table, "dsn_env")
        if dsn is not None and dsn_env is not None:
            raise table.error("dsn_env", "give 'dsn' or 'dsn_env', not both")
        if dsn_env is not None:
            dsn = _from_env(environ, dsn_env)
            if dsn is None and not overridden:
                raise table.error("dsn_env", f"${dsn_env} is not set")
        if overridden and override:
            dsn = _from_env(environ, override)
        if dsn is None:
            raise table.error("dsn", "is required (or 'dsn_env')")
        dsn_key = "dsn_env" if dsn_env is not None else "dsn"
        if not dsn.startswith(("postgresql://", "postgres://")):
            # asyncpg reads URLs only: a libpq "host=... password=..." string would fail
            # every check. Not echoed: it may hold the password.
            raise table.error(
                dsn_key,
                "must be a postgresql:// or postgres:// URL (key=value DSNs are not read), "
                f"got a string of {len(dsn)} characters",
            )
        _check_address(table, dsn_key, dsn)
        fields.update(dsn=dsn)
    else:
        fields.update(command=table.strings("command", required=True))
    rules = tuple(_rule(rule_table, name) for rule_table in table.tables("recovery"))
    table.done()
    return ServiceSpec(
        name=name,
        type=kind,
        timeout=timeout,
        interval=interval,
        degraded_threshold=degraded,
        critical=critical,
        rules=rules,
        overridden_by=overridden,
        **fields,
    )


def _statuses(table: Table) -> tuple[int, ...] | None:
    value = table.raw("expected_status")
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise table.error("expected_status", "must name at least one status code")
    for index, item in enumerate(items):
        if not isinstance(item, int) or isinstance(item, bool) or not 100 <= item <= 599:
            where = (
                "expected_status" if not isinstance(value, list) else f"expected_status[{index}]"
            )
            raise table.error(where, f"must be an HTTP status code (100-599), got {item!r}")
    return tuple(items)


_RULE_SECONDS = (
    ("backoff_base", False),
    ("backoff_max", False),
    ("cooldown", True),
    ("grace_period", False),
    ("stable_period", False),
    ("timeout", False),
)
_ACTIONS = tuple(action.value for action in RecoveryActionType)


def _rule(table: Table, service: str) -> RecoveryRule:
    action = table.choice("action", _ACTIONS)
    kwargs: dict[str, Any] = {}
    for key in ("failure_threshold", "max_attempts"):
        value = table.integer(key, None, minimum=1)
        if value is not None:
            kwargs[key] = value
    for key, allow_zero in _RULE_SECONDS:
        seconds = table.seconds(key, None, allow_zero=allow_zero)
        if seconds is not None:
            kwargs[key] = seconds
    jitter = table.number("jitter", None)
    if jitter is not None:
        kwargs["jitter"] = jitter
    command = table.strings("command")
    if command is not None:
        kwargs["command"] = list(command)
    pid_file = table.text("pid_file")
    if pid_file is not None:
        kwargs["pid_file"] = pid_file
    table.done()
    try:
        return RecoveryRule(service, action, **kwargs)
    except (TypeError, ValueError) as exc:
        # The rule's own check (backoff_max >= backoff_base, what an action needs, ...).
        raise ConfigError(table.path, str(exc)) from None


# -- alert sinks ------------------------------------------------------------------------

# Per type: keys taken as they are, and secrets (key -> the constructor argument) that
# only an environment variable may hold: "<key>_env".
_SINK_KEYS: dict[str, tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]] = {
    # type: (plain keys, {secret key: argument}, required)
    "alertmanager": (("urls", "resend_interval", "labels", "dashboard_url"), {}, ("urls",)),
    "slack": (("dashboard_url", "reply_timeout"), {"webhook_url": "webhook_url"}, ("webhook_url",)),
    "pagerduty": (
        ("source", "component", "group", "dashboard_url"),
        {"routing_key": "routing_key"},
        ("routing_key",),
    ),
    "email": (
        (
            "host",
            "port",
            "mail_from",
            "to",
            "security",
            "username",
            "subject_prefix",
            "dashboard_url",
        ),
        {"password": "password"},
        ("host", "mail_from", "to"),
    ),
    "webhook": (("url",), {"secret": "secret"}, ("url",)),
}
_SINK_COMMON = (
    "type",
    "name",
    "min_severity",
    "services",
    "exclude_services",
    "repeat_interval",
    "queue_size",
    "max_attempts",
    "timeout",
)


def _sink(table: Table, environ: Mapping[str, str]) -> SinkSpec:
    kind = table.choice("type", SINK_TYPES)
    plain, secret_keys, required = _SINK_KEYS[kind]
    name = table.text("name", kind)
    assert name is not None
    options: dict[str, Any] = {"name": name}
    severity = table.raw("min_severity")
    if severity is not None:
        options["min_severity"] = table.choice("min_severity", SEVERITIES)
    for key in ("services", "exclude_services"):
        listed = table.strings(key)
        if listed is not None:
            options[key] = list(listed)
    if kind == "alertmanager" and table.has("repeat_interval"):
        raise table.error(
            "repeat_interval",
            "does not apply to alertmanager (Alertmanager repeats notifications itself; "
            "'resend_interval' is how often firing alerts are re-posted)",
        )
    for key in ("repeat_interval", "timeout"):
        seconds = table.seconds(key, None)
        if seconds is not None:
            options[key] = seconds
    for key in ("queue_size", "max_attempts"):
        count = table.integer(key, None, minimum=1)
        if count is not None:
            options[key] = count
    for key in plain:
        if not table.has(key):
            continue
        value = table.raw(key)
        if key in ("urls", "to"):
            many = [value] if isinstance(value, str) else value
            if not isinstance(many, list) or not many:
                raise table.error(key, "must be a string or a non-empty array of strings")
            for index, item in enumerate(many):
                if not isinstance(item, str) or not item:
                    raise ConfigError(f"{table.key(key)}[{index}]", "must be a non-empty string")
            options[key] = many
        elif key == "labels":
            labels = table.table(key)
            options[key] = {label: labels.text(label) for label in list(labels.data)}
            labels.done()
        elif key == "port":
            options[key] = table.integer(key, None, minimum=1, maximum=65535)
        elif key in ("resend_interval", "reply_timeout"):
            options[key] = table.seconds(key, None)
        elif key == "security":
            options[key] = table.choice(key, ("starttls", "ssl", "none"))
        else:
            options[key] = table.text(key)
    secrets: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    for key, argument in secret_keys.items():
        if table.has(key):
            raise table.error(
                key,
                f"a secret written in the file is refused; name the environment variable "
                f'that holds it: {key}_env = "..."',
            )
        variable = _env_name(table, f"{key}_env")
        if variable is None:
            if key in required:
                raise table.error(f"{key}_env", "is required")
            continue
        value = _from_env(environ, variable)
        if value is None:
            raise table.error(f"{key}_env", f"${variable} is not set")
        secrets[argument] = value
        secret_env[argument] = variable
    for key in required:
        if key not in secret_keys and key not in options:
            raise table.error(key, "is required")
    table.done()
    return SinkSpec(type=kind, name=name, options=options, secrets=secrets, secret_env=secret_env)
