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
import hmac
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

from .._redact import redact
from ._schema import ConfigError
from .config import ServiceConfig, load_config
from .runtime import ServiceRuntime

__all__ = ["build_app", "run_server"]

logger = logging.getLogger("xnai_core.service")

GRACEFUL_SHUTDOWN = 2
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
    """The ops endpoints of the runtime's current monitor (rebuilt when it changes)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._app: ASGIApp | None = None
        self._monitor: object = None
        self._token: str | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        monitor = self._runtime.monitor
        token = self._runtime.config.control_token
        if self._app is None or monitor is not self._monitor or token != self._token:
            self._app = _make_ops_app(self._runtime)
            self._monitor, self._token = monitor, token
        await self._app(scope, receive, send)


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
        critical=[spec.name for spec in runtime.config.services if spec.critical],
        service_id="xnai-core",
    )
    return app


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return False
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        offered.strip().encode(), token.encode()
    )


def build_app(config: ServiceConfig, *, reload_path: str | None = None) -> Starlette:
    """The service's app; its lifespan starts and stops a :class:`ServiceRuntime`."""
    runtime = ServiceRuntime(config)
    path = reload_path or config.path
    # The last /api/state body and when it was built; cleared by every change made here.
    cached: list[tuple[float, bytes]] = []

    async def reload() -> None:
        try:
            new = await asyncio.to_thread(load_config, path)
            if (new.host, new.port) != (runtime.config.host, runtime.config.port):
                logger.warning("config reload: [server] host/port take effect at the next start")
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
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await runtime.stop()
            logger.info("stopped")

    async def page(request: Request) -> Response:
        name, media = _STATIC[request.url.path]
        return Response(_static(name), media_type=media, headers=_SECURITY_HEADERS)

    async def state(request: Request) -> Response:
        detail = request.query_params.get("detail") == "1"
        now = time.monotonic()
        if detail or not cached or now - cached[0][0] > STATE_MAX_AGE:
            body = json.dumps(runtime.snapshot(detail=detail), separators=(",", ":")).encode()
            if detail:
                return Response(body, media_type="application/json", headers=_NO_STORE)
            cached[:] = [(now, body)]
        # Several open dashboards share one snapshot per STATE_MAX_AGE.
        return Response(cached[0][1], media_type="application/json", headers=_NO_STORE)

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
        if name not in circuits.registry:
            return JSONResponse({"error": f"no circuit {name!r}"}, status_code=404)
        try:
            view = await circuits.act(name, action)
        except ConnectionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        cached.clear()
        logger.warning("circuit %r: %s from the dashboard", name, action)
        return JSONResponse(view)

    app = Starlette(
        # /api/state grows with services and history (about 2 KB per service): compressed,
        # a poll costs a sixth of that on the wire.
        middleware=[Middleware(GZipMiddleware, minimum_size=1024)],
        routes=[
            *(Route(path, page, methods=["GET"]) for path in _STATIC),
            Route("/api/state", state, methods=["GET"]),
            Route("/api/circuits/{name}/{action}", control, methods=["POST"]),
            Mount("/ops", app=_OpsApp(runtime)),
        ],
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app


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
    app = build_app(config)
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            server_header=False,
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
