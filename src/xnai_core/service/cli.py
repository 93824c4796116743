"""The ``xnai-core`` command: serve, check, config check, circuits, recovery.

Exit codes (every command): 0 done; 1 refused or not found (a declined confirmation, an
unknown circuit); 2 bad usage; 3 the config file cannot be used; 4 Redis did not answer
(nothing was read or changed). ``check`` answers 0 healthy, 1 degraded, 2 unhealthy and 3
for a config error, as monitoring plugins do. Errors are one line on stderr.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._redact import redact, redact_url
from .._redis_errors import REDIS_DOWN, describe
from .._redis_url import client_from_url
from ..health.factories import DEFAULT_REDIS_URL, REDIS_URL_ENV
from ..recovery import RecoveryCoordinator
from ._schema import ConfigError
from .circuits import CircuitView, RedisUnavailableError, SharedCircuits, format_time
from .config import DEFAULT_PORT, ServiceConfig, load_config
from .oneshot import CheckOutcome, check_once
from .runtime import load_checked

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_CONFIG = 3
EXIT_REDIS = 4
CONFIG_ENV = "XNAI_CONFIG"


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    click.echo(f"xnai-core: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _load(path: str | None, *, checked: bool = False) -> ServiceConfig:
    """The config at ``path``; ``checked``: validated whole, as ``serve`` needs it (the
    library's own checks too: rules against the monitor, sinks and their drivers)."""
    if path is None:
        fail(f"no config file: pass --config FILE or set ${CONFIG_ENV}", EXIT_CONFIG)
    try:
        return load_checked(path) if checked else load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except RedisUnavailableError as exc:
        fail(str(exc), EXIT_REDIS)
    except RedisError as exc:
        # What answered is no Redis (an HTTP server: InvalidResponse) or refused the
        # command (ResponseError): one line and exit 4, never a traceback and exit 1.
        fail(f"Redis did not answer as Redis: {describe(exc)}", EXIT_REDIS)


def _emit_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


config_option = click.option(
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    type=click.Path(dir_okay=False),
    help=f"The service's TOML config file (default: ${CONFIG_ENV}).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xnai-core")
def main() -> None:
    """Watch a stack, heal what can be healed, and steer shared circuits.

    Exit codes: 0 done, 1 refused or not found, 2 bad usage, 3 config error,
    4 Redis did not answer. `check` answers 0 healthy, 1 degraded, 2 unhealthy.
    """
    # The library logs transitions (a forced open is a WARNING): for these one-shot
    # commands the answer is the output and the exit code, not log lines on stderr.
    # `serve` configures logging itself. The drivers' warnings are kept off stderr too
    # (with no handler, Python prints them there: redis-py's "does not support HELLO"
    # from a proxy was a second line beside the command's one-line error).
    for name in ("xnai_core", "redis", "asyncpg"):
        library = logging.getLogger(name)
        if not library.handlers:
            library.addHandler(logging.NullHandler())


# -- serve -------------------------------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--host", default=None, help="Address to listen on (default: the config's, 127.0.0.1)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help=f"Port (default {DEFAULT_PORT})."
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def serve(config_path: str | None, host: str | None, port: int | None, log_level: str) -> None:
    """Run the monitor, recovery and alerts, and serve the dashboard and ops endpoints.

    SIGTERM or Ctrl-C stops it; SIGHUP reloads the config file (a bad one is refused
    and the running config kept).
    """
    config = _load(config_path, checked=True)
    from .server import run_server  # Starlette and uvicorn only for this command

    code = run_server(
        config,
        host=host or config.host,
        port=config.port if port is None else port,
        log_level=log_level,
    )
    sys.exit(code)


# -- check -------------------------------------------------------------------------------


@main.command()
@config_option
@json_option
def check(config_path: str | None, as_json: bool) -> None:
    """Run every check once and print the report.

    Exit 0 healthy, 1 degraded (or a non-critical service unhealthy), 2 a critical
    service unhealthy, 3 config error: usable as a cron job or a Kubernetes exec probe.
    """
    config = _load(config_path, checked=True)
    outcome: CheckOutcome = asyncio.run(check_once(config))
    if as_json:
        _emit_json(outcome.as_dict())
    else:
        rows = [
            (r.service, r.status.value, f"{r.response_time * 1000:.0f} ms", redact(r.error or ""))
            for r in outcome.results
        ]
        _table(("SERVICE", "STATUS", "TIME", "ERROR"), rows)
        click.echo(f"overall: {outcome.status}")
    sys.exit(outcome.exit_code)


# -- config ------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Validate config files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def config_check(file: str, as_json: bool) -> None:
    """Validate FILE and print the effective config, secrets masked (exit 3 if invalid)."""
    loaded = _load(file, checked=True)
    effective = loaded.effective()
    if as_json:
        _emit_json(effective)
        return
    click.echo(f"{file}: valid")
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}")
    click.echo(json.dumps(effective, indent=2))


# -- circuits and recovery: where the shared state is -------------------------------------

Target = dict[str, Any]


def _redis_url(explicit: str | None, config: ServiceConfig | None) -> str:
    if explicit:
        return explicit
    if config is not None and config.redis_url:
        return config.redis_url
    return os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_REDIS_URL


def _client(url: str) -> aioredis.Redis:
    try:
        return client_from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        fail(f"--redis-url: {redact(str(exc))}: {redact_url(url)}", 2)


def _shared_options(
    prefix_help: str, *, recovery_timeout: bool
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options every circuits/recovery subcommand takes, gathered into one dict
    passed as the command's first argument."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(
            *args: Any,
            redis_url: str | None,
            prefix: str | None,
            config_path: str | None,
            recovery_timeout: float | None = None,
            **kwargs: Any,
        ) -> None:
            target: Target = {
                "redis_url": redis_url,
                "prefix": prefix,
                "config": config_path,
                "recovery_timeout": recovery_timeout,
            }
            command(target, *args, **kwargs)

        decorated: Callable[..., None] = wrapper
        if recovery_timeout:
            decorated = click.option(
                "--recovery-timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="The breakers' recovery_timeout, to compute 'retry after' (default 60).",
            )(decorated)
        decorated = click.option(
            "--config",
            "config_path",
            default=None,
            type=click.Path(dir_okay=False),
            help="Take the Redis URL, prefix and names from this config file.",
        )(decorated)
        decorated = click.option("--prefix", default=None, help=prefix_help)(decorated)
        return click.option(
            "--redis-url",
            default=None,
            help=f"Redis holding the shared state (default: the config's redis_url, "
            f"${REDIS_URL_ENV}, {DEFAULT_REDIS_URL}).",
        )(decorated)

    return decorate


circuit_options = _shared_options(
    "The breakers' key_prefix (default: the config's, else xnai:cb:).", recovery_timeout=True
)
recovery_options = _shared_options(
    "The RecoveryCoordinator's key_prefix (default: the config's, else xnai:recovery).",
    recovery_timeout=False,
)


# -- circuits ----------------------------------------------------------------------------


def _circuits_run(target: Target, work: Callable[[SharedCircuits], Awaitable[T]]) -> T:
    config = _load(target["config"]) if target["config"] else None
    url = _redis_url(target["redis_url"], config)
    prefix = target["prefix"] or (config.circuits.key_prefix if config else "xnai:cb:")
    recovery_timeout = target["recovery_timeout"] or (
        config.circuits.recovery_timeout if config else 60.0
    )

    async def go() -> T:
        client = _client(url)
        try:
            shared = SharedCircuits(client, key_prefix=prefix, recovery_timeout=recovery_timeout)
            if config is not None:
                shared.configured_names = config.circuits.names
            return await work(shared)
        finally:
            await client.aclose()

    return _run(go())


@main.group()
def circuits() -> None:
    """Read and change the application's shared circuits in Redis (the service need not run)."""


def _circuit_row(view: CircuitView) -> tuple[str, ...]:
    retry = "-" if view.retry_after is None else f"{view.retry_after:.1f} s"
    state = view.state + (" (forced)" if view.forced_open else "")
    return (view.name, state, str(view.failures), format_time(view.opened_at), retry)


_CIRCUIT_HEADER = ("NAME", "STATE", "FAILURES", "OPENED AT", "RETRY AFTER")


@circuits.command("list")
@circuit_options
@json_option
def circuits_list(target: Target, as_json: bool) -> None:
    """Every circuit under the prefix: name, state, failures, opened at, retry after."""

    async def work(shared: SharedCircuits) -> list[CircuitView]:
        return await shared.views(await shared.names(shared.configured_names))

    views = _circuits_run(target, work)
    if as_json:
        _emit_json([view.as_dict() for view in views])
    elif not views:
        click.echo("no circuits")
    else:
        _table(_CIRCUIT_HEADER, [_circuit_row(view) for view in views])


@circuits.command("show")
@click.argument("name")
@circuit_options
@json_option
def circuits_show(target: Target, name: str, as_json: bool) -> None:
    """One circuit's state (exit 1 if Redis holds no such circuit)."""
    view = _circuits_run(target, lambda shared: shared.view(name))
    if not view.exists:
        fail(f"no circuit {name!r} under this prefix", EXIT_REFUSED)
    if as_json:
        _emit_json(view.as_dict())
    else:
        _table(_CIRCUIT_HEADER, [_circuit_row(view)])


_QUESTIONS = {
    "open": "Open circuit {name!r} for every process (held until closed or reset)?",
    "close": "Close circuit {name!r} for every process?",
    "reset": "Reset circuit {name!r} to a fresh closed circuit for every process?",
}


def _confirm(question: str, refused: str, yes: bool) -> None:
    """Ask ``question`` on the terminal unless ``yes``; exit 1 with ``refused`` if declined
    (or if there is no terminal to ask)."""
    if yes:
        return
    confirmed = False
    # With no terminal to ask (a script, a cron job), the answer is no, and stderr keeps
    # to the one line that says so.
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            confirmed = click.confirm(question, default=False, err=True)
        except click.Abort:
            confirmed = False
    if not confirmed:
        fail(f"{refused}: not confirmed (pass --yes to skip the question)", EXIT_REFUSED)


def _change(
    target: Target, name: str, action: str, *, yes: bool, create: bool, as_json: bool
) -> None:
    # A mistyped name must not become a new circuit that no application uses (and that
    # `list` shows from then on): only a circuit Redis holds, or one the --config file
    # names, is changed, unless --create says the operator means a new one.
    if not create:

        async def known(shared: SharedCircuits) -> bool:
            return name in shared.configured_names or await shared.exists(name)

        if not _circuits_run(target, known):
            fail(
                f"no circuit {name!r} under this prefix (pass --create to {action} it anyway)",
                EXIT_REFUSED,
            )
    _confirm(_QUESTIONS[action].format(name=name), f"{action} {name!r}", yes)
    view = _circuits_run(target, lambda shared: shared.force(name, action))
    if as_json:
        _emit_json(view.as_dict())
    else:
        forced = " (forced)" if view.forced_open else ""
        click.echo(f"circuit {name!r} is now {view.state}{forced}")


def _change_command(action: str, doc: str) -> None:
    @circuits.command(action, help=doc)
    @click.argument("name")
    @yes_option
    @click.option(
        "--create",
        is_flag=True,
        help="Act even if Redis holds no such circuit yet (say, to hold a dependency's "
        "circuit open before the application first uses it).",
    )
    @circuit_options
    @json_option
    def command(target: Target, name: str, yes: bool, create: bool, as_json: bool) -> None:
        _change(target, name, action, yes=yes, create=create, as_json=as_json)


_change_command(
    "open",
    "Force NAME open for every process, until it is closed or reset "
    "(exit 1 if Redis holds no such circuit, unless --create).",
)
_change_command(
    "close",
    "Force NAME closed for every process, failure count cleared "
    "(exit 1 if Redis holds no such circuit, unless --create).",
)
_change_command(
    "reset",
    "Make NAME a fresh closed circuit for every process "
    "(exit 1 if Redis holds no such circuit, unless --create).",
)


# -- recovery ----------------------------------------------------------------------------


@main.group()
def recovery() -> None:
    """The shared manual-intervention latch of the recovery coordinator."""


def _recovery_run(
    target: Target, work: Callable[[RecoveryCoordinator, aioredis.Redis], Awaitable[T]]
) -> T:
    config = _load(target["config"]) if target["config"] else None
    url = _redis_url(target["redis_url"], config)
    prefix = target["prefix"] or (config.recovery.key_prefix if config else "xnai:recovery")

    async def go() -> T:
        client = _client(url)
        try:
            return await work(RecoveryCoordinator(client, key_prefix=prefix), client)
        finally:
            await client.aclose()

    return _run(go())


async def _latch_status(
    coordinator: RecoveryCoordinator, client: aioredis.Redis, services: Sequence[str]
) -> list[dict[str, object]]:
    rows = []
    for service in services:
        view = await coordinator.latch_state(service)
        if view is None:
            raise RedisUnavailableError(f"Redis did not answer (latch of {service!r})")
        reason = None
        if view.latched:
            # The latch key holds the escalation reason, a plain string (coordination.py).
            try:
                raw = await client.get(coordinator.latch_key(service))
            except REDIS_DOWN as exc:
                raise RedisUnavailableError(f"Redis did not answer: {type(exc).__name__}") from None
            if raw is not None:
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                reason = redact(text)
        rows.append({"service": service, "latched": view.latched, "reason": reason})
    return rows


async def _latched_services(coordinator: RecoveryCoordinator, client: aioredis.Redis) -> list[str]:
    head = f"{coordinator.key_prefix}:{{"
    suffix = "}:escalated"
    pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in head) + "*" + suffix
    found: set[str] = set()
    try:
        async with asyncio.timeout(coordinator.timeout):
            async for key in client.scan_iter(match=pattern, count=500):
                text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
                found.add(text[len(head) : -len(suffix)])
    except REDIS_DOWN as exc:
        raise RedisUnavailableError(f"Redis did not answer (SCAN): {type(exc).__name__}") from None
    return sorted(found)


@recovery.command("status")
@click.argument("service", required=False)
@recovery_options
@json_option
def recovery_status(target: Target, service: str | None, as_json: bool) -> None:
    """Whether SERVICE is latched in manual intervention (without SERVICE: every latched one)."""

    async def work(
        coordinator: RecoveryCoordinator, client: aioredis.Redis
    ) -> list[dict[str, object]]:
        services = [service] if service else await _latched_services(coordinator, client)
        return await _latch_status(coordinator, client, services)

    rows = _recovery_run(target, work)
    if as_json:
        _emit_json(rows[0] if service else rows)
    elif not rows:
        click.echo("no service is latched")
    else:
        _table(
            ("SERVICE", "LATCHED", "REASON"),
            [
                (str(r["service"]), "yes" if r["latched"] else "no", str(r["reason"] or "-"))
                for r in rows
            ],
        )


@recovery.command("reset")
@click.argument("service")
@yes_option
@click.option(
    "--force",
    is_flag=True,
    help="Record a reset even though Redis holds no latch for SERVICE (lifts a latch a "
    "replica still holds after Redis lost the shared one).",
)
@recovery_options
@json_option
def recovery_reset(target: Target, service: str, yes: bool, force: bool, as_json: bool) -> None:
    """Lift SERVICE's shared latch: every replica's manager may act on it again
    (exit 1 if SERVICE is not latched, unless --force)."""

    async def latched(coordinator: RecoveryCoordinator, client: aioredis.Redis) -> bool:
        view = await coordinator.latch_state(service)
        if view is None:
            raise RedisUnavailableError(f"Redis did not answer (latch of {service!r})")
        return view.latched

    if not _recovery_run(target, latched) and not force:
        # A mistyped name, or a latch already lifted: nothing to do, and saying "done"
        # would hide the typo.
        fail(
            f"{service!r} is not latched: nothing to reset (pass --force to record a reset anyway)",
            EXIT_REFUSED,
        )
    _confirm(
        f"Lift the manual-intervention latch of {service!r} for every replica?",
        f"reset {service!r}",
        yes,
    )

    async def work(coordinator: RecoveryCoordinator, client: aioredis.Redis) -> bool:
        before = await coordinator.latch_state(service)
        if before is None or not await coordinator.unlatch(service):
            raise RedisUnavailableError(f"Redis did not answer (reset of {service!r})")
        return before.latched

    was_latched = _recovery_run(target, work)
    if as_json:
        _emit_json({"service": service, "was_latched": was_latched, "latched": False})
    elif was_latched:
        click.echo(f"{service}: latch lifted")
    else:
        click.echo(f"{service}: was not latched (reset recorded)")


# -- output ------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` on one line, every control and format character shown escaped (``\\x1b``,
    ``\\n``, ``\\u202e``). Circuit names come from Redis, error texts from the checked
    services and commands: raw, an escape sequence would act on the operator's terminal
    (clear it, retitle it), a newline forge a row, a bidi override reverse what follows."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    rows = [[_printable(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def run(argv: Sequence[str] | None = None) -> Any:
    """Entry point for ``python -m xnai_core.service``."""
    return main.main(args=list(argv) if argv is not None else None, prog_name="xnai-core")
