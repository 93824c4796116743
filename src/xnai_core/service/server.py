"""``xnai-core serve``: the runtime behind a Starlette app, served by uvicorn.

Routes: ``/`` the dashboard (one page and its script and style, served from the package:
no build step, no CDN); ``/api/state`` what the dashboard shows, as JSON;
``POST /api/circuits/{name}/{open|close|reset}`` the dashboard's controls, which exist
only when a control token is configured and answer 401 without it; ``/ops/...`` the
operations endpoints (``/ops/health``, ``/ops/livez``, ``/ops/readyz``, ...).

Signals: SIGTERM and SIGINT stop the service (uvicorn's own handling, then the lifespan
stops the monitor, cancels recovery in flight, flushes the alert sinks and closes every
connection); SIGHUP re-reads the config file and applies it in place, or logs why it was
refused and keeps the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from .._accept import gzip_accepted
from .._redact import redact
from .._singleflight import SingleFlight
from ..web._auth import bearer_matches
from ._schema import ConfigError
from .config import ServiceConfig, load_config
from .entry import take_early_hup
from .runtime import ServiceRuntime

__all__ = ["build_app", "run_server"]

logger = logging.getLogger("xnai_core.service")

GRACEFUL_SHUTDOWN = 1
"""Seconds uvicorn waits for requests in progress at SIGTERM (a dashboard control waiting
on a hung Redis) before the runtime stops. With the runtime's own worst case (the kill
grace of restart commands, the sinks' flush deadline, the Redis close deadline, side by
side: about 1.5 s) and STOP_BUDGET, SIGTERM ends the process within about 3 s."""
STOP_BUDGET = 3.0
"""Seconds the runtime's stop may take before the lifespan gives up waiting on it."""
STATE_MAX_AGE = 0.5
_NO_STORE = {"Cache-Control": "no-store"}
# /ops/metrics is served when prometheus_client is installed (the service extra has it).
_METRICS = importlib.util.find_spec("prometheus_client") is not None
_ACTIONS = ("open", "close", "reset")
_STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# Everything the page loads comes from this origin; no inline script, no framing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _static(path: str) -> bytes:
    return resources.files("xnai_core.service").joinpath("static", path).read_bytes()


class _OpsApp:
    """The ops endpoints of the runtime's current monitor and circuits (rebuilt when
    either changes)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._app: ASGIApp | None = None
        self._parts: tuple[object, object] = (None, None)
        self._settings: tuple[str | None, tuple[str, ...]] = (None, ())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        parts = (self._runtime.monitor, self._runtime.circuits)
        # The token and the critical services are settings of the app, not parts: a
        # reload that keeps the monitor but adds a critical service must still make
        # /readyz wait for it.
        settings = (self._runtime.config.control_token, _critical(self._runtime))
        if (
            self._app is None
            or any(now is not before for now, before in zip(parts, self._parts, strict=True))
            or settings != self._settings
        ):
            self._app = _make_ops_app(self._runtime)
            self._parts, self._settings = parts, settings
        await self._app(scope, receive, send)


def _critical(runtime: ServiceRuntime) -> tuple[str, ...]:
    return tuple(spec.name for spec in runtime.config.services if spec.critical)


def _make_ops_app(runtime: ServiceRuntime) -> ASGIApp:
    """``xnai_core.web.create_ops_app`` over the runtime's current monitor, circuits and
    recovery: ``/health``, ``/livez``, ``/readyz``, ``/metrics`` (when prometheus_client
    is installed), ``/circuits`` (+ token-guarded controls) and ``/recovery``."""
    from ..web import create_ops_app

    circuits = runtime.circuits
    app: ASGIApp = create_ops_app(
        runtime.monitor,
        breakers=None if circuits is None else circuits.registry,
        recovery=runtime.router,
        metrics=_METRICS,
        control_token=runtime.config.control_token,
        critical=list(_critical(runtime)),
        service_id="xnai-core",
    )
    return app


def _authorized(request: Request, token: str | None) -> bool:
    """The check of ``create_ops_app``'s routes: one token opens both or neither."""
    expected = None if token is None else token.encode()
    return bearer_matches(request.headers.get("authorization", ""), expected)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(config: ServiceConfig, bound_host: str | None) -> frozenset[str]:
    """The Host header names the app answers: loopback's, the bound address (unless it is
    a wildcard, which no client names) and ``[server].allowed_hosts``."""
    names = {*LOOPBACK_NAMES, *config.allowed_hosts}
    if bound_host and bound_host not in ("0.0.0.0", "::", ""):
        names.add(f"[{bound_host}]" if ":" in bound_host else bound_host.lower())
    return frozenset(names)


def _host_of(header: str) -> str | None:
    """The host part of a Host header, lower case, IPv6 in brackets; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return header[: end + 1]
    host, _, port = header.partition(":")
    if not host or (port and not port.isdigit()):
        return None
    return host


class _HostCheck:
    """Answers 400 to a request whose Host header names another host.

    A page on any web site can make a browser send requests to 127.0.0.1 under a name it
    controls (DNS rebinding): the browser's same-origin rule then lets that page read the
    answers. Such a request carries the attacker's name in its Host header, so naming
    the hosts this service answers to closes that door (as Starlette's
    TrustedHostMiddleware does, with IPv6 literals and the bound address understood).
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self._app = app
        self._hosts = hosts
        self._any = "*" in hosts

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._any or scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        header = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"host"), ""
        )
        if _host_of(header) not in self._hosts:
            response = Response(
                "Invalid host header: add the name to [server].allowed_hosts to use it\n",
                status_code=400,
                media_type="text/plain",
                headers=_NO_STORE,
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _Gzip:
    """Starlette's GZipMiddleware for the requests that accept gzip, judged by ``q``.

    GZipMiddleware looks for "gzip" anywhere in ``Accept-Encoding``: a client refusing it
    (``gzip;q=0, identity``) got gzip all the same, though ``/ops/metrics`` itself had
    honoured the q. Requests that do not accept it pass by the compression.
    """

    def __init__(self, app: ASGIApp, minimum_size: int) -> None:
        self._app = app
        self._gzip = GZipMiddleware(app, minimum_size=minimum_size)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"accept-encoding"), ""
            )
            if gzip_accepted(header):
                await self._gzip(scope, receive, send)
                return
        await self._app(scope, receive, send)


def build_app(
    config: ServiceConfig, *, reload_path: str | None = None, bound_host: str | None = None
) -> Starlette:
    """The service's app; its lifespan starts and stops a :class:`ServiceRuntime`.

    ``bound_host``: the address it is served on (default: the config's), whose name the
    Host header check accepts besides loopback's and ``[server].allowed_hosts``."""
    runtime = ServiceRuntime(config)
    path = reload_path or config.path
    cached = _StateCache(runtime)

    async def reload() -> None:
        try:
            new = await asyncio.to_thread(load_config, path)
            server = (new.host, new.port, new.allowed_hosts)
            if server != (runtime.config.host, runtime.config.port, runtime.config.allowed_hosts):
                logger.warning(
                    "config reload: [server] host, port and allowed_hosts take effect at the "
                    "next start"
                )
            changes = await runtime.reload(new)
            cached.clear()
        except ConfigError as exc:
            logger.error("config reload refused, the running config is kept: %s", exc)
            return
        except Exception as exc:
            logger.exception(
                "config reload failed, the running config is kept: %s", redact(str(exc))
            )
            return
        for warning in new.warnings:
            logger.warning("%s", warning)
        logger.info("config reloaded from %s: %s", path, "; ".join(changes) or "no change")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if _METRICS:
            # Before the first check, so /ops/metrics holds every status from the start.
            from ..metrics import enable_prometheus

            enable_prometheus()
        await runtime.start()
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(reload(), name="xnai-service-reload")
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if take_early_hup():
            on_hup()  # sent while the service was starting: reload now that it runs
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            # Stopping: a SIGHUP now has nothing to reload, and must not end the process
            # by its default action instead of the clean exit under way.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            try:
                async with asyncio.timeout(STOP_BUDGET):
                    await runtime.stop()
            except TimeoutError:
                logger.error("stopping took longer than %g s: exiting anyway", STOP_BUDGET)
            logger.info("stopped")

    async def page(request: Request) -> Response:
        name, media = _STATIC[request.url.path]
        return Response(_static(name), media_type=media, headers=_SECURITY_HEADERS)

    async def state(request: Request) -> Response:
        detail = request.query_params.get("detail") == "1"
        sensitive = _authorized(request, runtime.config.control_token)
        body = await cached.get(detail=detail, sensitive=sensitive)
        return Response(body, media_type="application/json", headers=_NO_STORE)

    async def control(request: Request) -> Response:
        token = runtime.config.control_token
        circuits = runtime.circuits
        if token is None or circuits is None:
            return JSONResponse({"error": "controls are disabled"}, status_code=404)
        if not _authorized(request, token):
            return JSONResponse(
                {"error": "the control token is missing or wrong"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action not in _ACTIONS:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        found = circuits.find(name)  # the page shows, and sends, names masked
        if found is None:
            return JSONResponse({"error": f"no circuit {redact(name)!r}"}, status_code=404)
        try:
            view = await circuits.act(found, action)
        except ConnectionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        cached.clear()
        logger.warning("circuit %r: %s from the dashboard", redact(found), action)
        return JSONResponse(view)

    app = Starlette(
        # /api/state grows with services and history (about 2 KB per service): compressed,
        # a poll costs a sixth of that on the wire.
        middleware=[
            Middleware(
                _HostCheck,
                hosts=allowed_hosts(config, config.host if bound_host is None else bound_host),
            ),
            Middleware(_Gzip, minimum_size=1024),
        ],
        routes=[
            *(Route(path, page, methods=["GET"]) for path in _STATIC),
            Route("/api/state", state, methods=["GET"]),
            # {name:path}: a circuit's name may hold a slash ("openai/gpt-4"); the page
            # sends it encoded, and Starlette matches the decoded path.
            Route("/api/circuits/{name:path}/{action}", control, methods=["POST"]),
            Mount("/ops", app=_OpsApp(runtime)),
        ],
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.state_cache = cached
    return app


class _StateCache:
    """``/api/state`` bodies, one per variant (``detail``, ``sensitive``), each built at
    most once per STATE_MAX_AGE however many requests ask: concurrent requests share the
    build in flight, and the JSON is encoded off the event loop, so a flood of polls
    costs the checks' schedule one snapshot per variant and period, not one per request.
    """

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._bodies: dict[tuple[bool, bool], tuple[float, bytes]] = {}
        self._flights: SingleFlight[tuple[tuple[bool, bool], int], bytes] = SingleFlight()
        self._generation = 0
        self.builds = 0

    def clear(self) -> None:
        """Forget every body: the next request of each variant builds afresh."""
        self._bodies.clear()
        self._generation += 1

    async def get(self, *, detail: bool, sensitive: bool) -> bytes:
        key = (detail, sensitive)
        found = self._bodies.get(key)
        if found is not None and time.monotonic() - found[0] <= STATE_MAX_AGE:
            return found[1]
        return await self._flights.run((key, self._generation), self._build(key), deadline=30)

    def _build(self, key: tuple[bool, bool]) -> Callable[[], Awaitable[bytes]]:
        async def build() -> bytes:
            generation = self._generation
            built_at = time.monotonic()
            snapshot = self._runtime.snapshot(detail=key[0], sensitive=key[1])
            self.builds += 1
            # The snapshot holds only fresh objects: encoding it on a thread races nothing.
            body = await asyncio.to_thread(_encode, snapshot)
            if generation == self._generation:
                self._bodies[key] = (built_at, body)
            return body

        return build


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


MAX_CONNECTIONS = 256
"""Client connections served at once, at most (and at most a quarter of the process's
descriptors): past it a new connection is closed as soon as it is accepted."""


def connection_limit() -> int:
    """How many client connections the service holds at once: a quarter of its file
    descriptors (the rest is the checks', Redis's, the sinks'), at most MAX_CONNECTIONS."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


def _capped_protocol(limit: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing each connection past ``limit`` open ones.

    uvicorn holds a connection that never sends a request for ever: a few hundred of
    them took every descriptor, the checks failed with "Too many open files" (healthy
    services reported unhealthy, alerts raised) and each refused accept was logged. The
    dashboard may then be out of reach; the checks are not blinded.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Capped(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limit:
                transport.close()

    return Capped


class _Server(uvicorn.Server):
    """uvicorn's server, exiting with status 0 after a clean stop on SIGTERM or SIGINT.

    uvicorn re-raises the signal once it has shut down, so the process would end "killed
    by SIGTERM"; a service that stopped cleanly says so with its exit status.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_server(config: ServiceConfig, *, host: str, port: int, log_level: str = "info") -> int:
    """Serve ``config`` (as :func:`~.runtime.load_checked` returns it) until SIGTERM/SIGINT;
    the process's exit code (0 clean, 1 failed)."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for warning in config.warnings:
        logger.warning("%s", warning)
    try:
        sock = _listen(host, port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return 1
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    if bound_host in ("0.0.0.0", "::") and not config.allowed_hosts:
        logger.warning(
            "listening on every interface, but only requests naming localhost, 127.0.0.1 or "
            "[::1] in their Host header are answered: list the names clients use in "
            "[server].allowed_hosts"
        )
    app = build_app(config, bound_host=bound_host)
    limit = connection_limit()
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            server_header=False,
            http=_capped_protocol(limit),
            # The accept queue, and how many connections asyncio accepts in one go before
            # any is closed past the limit: a burst of a queue of 2048 (uvicorn's default)
            # took every descriptor before the first close.
            backlog=max(8, min(128, limit // 4)),
        )
    )
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        if server.started:
            logger.info(
                "xnai-core serving http://%s:%d/ (dashboard; ops endpoints under /ops/)",
                shown_host,
                bound_port,
            )

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1
