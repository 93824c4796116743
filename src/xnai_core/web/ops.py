"""create_ops_app: /health, /livez, /readyz, /metrics, /circuits and operator controls.

=====================================  ===================================================
route                                  answers
=====================================  ===================================================
``GET /health``                        the seed's report (JSON), or with ``Accept:
                                       application/health+json`` the IETF view; 503 when
                                       the overall status is fail (unhealthy)
``GET /livez``                         200 ``ok`` while the process answers
``GET /readyz``                        200, or 503 while a critical service is unhealthy
                                       or not checked yet (its status is unknown)
``GET /metrics``                       Prometheus text (OpenMetrics when preferred, gzip
                                       when accepted), collected in a worker thread
``GET /circuits``                      every breaker's ``get_metrics()``, by name
``POST /circuits/{name}/open|close|    force the circuit open, closed, or reset it: only
reset``                                with ``Authorization: Bearer <control_token>``
``GET /degradation``, ``/recovery``    the managers' statistics, when given
=====================================  ===================================================

Without ``control_token`` the control routes do not exist. Error texts and the
checkers' details (hosts, URLs) in ``/health``, and the reasons, commands and outputs
in ``/recovery`` and ``/degradation``, are shown only to a request bearing the token;
without it a report says what is wrong, not where or why. Bind the server to
loopback (or a private interface) unless a proxy in front authenticates: these
routes tell a stranger which of your dependencies is down.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .._accept import ranked
from .._extras import require
from .._redact import redact, redact_tree, shown_as
from ..circuit.breaker import CircuitBreaker
from ..circuit.registry import CircuitBreakerRegistry
from ..health.health_json import HEALTH_JSON_MEDIA_TYPE, http_status_for
from ..health.monitor import HealthMonitor
from ..health.result import HealthStatus
from ..metrics._labels import valid_text
from ._auth import bearer_matches

Breakers = CircuitBreakerRegistry | Mapping[str, CircuitBreaker] | Iterable[CircuitBreaker]

_NO_STORE = {"Cache-Control": "no-store"}


def _masked(value: Any) -> Any:
    """``value`` (JSON-ready) with every string redacted: keys, values, list items.

    The parts already mask what they know; this is the last line for what they
    cannot (a breaker named after a URL, a custom check's own details). A lone
    surrogate in a name becomes ``?``: it cannot be encoded, and would fail the answer.
    """
    return redact_tree(value, valid_text)


def _json(body: Any, status_code: int = 200, media_type: str | None = None) -> Response:
    return JSONResponse(
        _masked(body), status_code=status_code, media_type=media_type, headers=_NO_STORE
    )


def _breakers_by_name(breakers: Breakers | None) -> Callable[[], dict[str, CircuitBreaker]]:
    """A function giving the current breakers by name (a registry may grow)."""
    if breakers is None:
        return dict
    if isinstance(breakers, CircuitBreakerRegistry):
        registry = breakers
        return lambda: {b.name: b for b in registry}
    if isinstance(breakers, Mapping):
        mapping = breakers
        return lambda: dict(mapping)
    fixed = list(breakers)
    for breaker in fixed:
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"'breakers' must hold CircuitBreaker objects: {breaker!r}")
    return lambda: {b.name: b for b in fixed}


def _authorized(request: Request, token: bytes | None) -> bool:
    """Whether the request bears ``token``, compared in constant time."""
    return bearer_matches(request.headers.get("authorization", ""), token)


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "unauthorized"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="xnai-ops"', **_NO_STORE},
    )


def _wants_health_json(request: Request) -> bool:
    """Whether health+json ranks before plain JSON in the ``Accept`` header (by ``q``;
    refused with ``q=0``, it is not served; media types in any case)."""
    for token, _ in ranked(request.headers.get("accept", "")):
        if token == HEALTH_JSON_MEDIA_TYPE:
            return True
        if token == "application/json":
            return False
    return False


def _public_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the checkers' details (hosts, URLs, error texts)."""
    services = {
        name: {key: value for key, value in entry.items() if key != "details"}
        for name, entry in report["services"].items()
    }
    return {**report, "services": services}


def _public_health_json(document: Mapping[str, Any]) -> dict[str, Any]:
    checks = document.get("checks")
    if not isinstance(checks, Mapping):
        return dict(document)
    public = {
        key: [
            {field: value for field, value in entry.items() if field != "output"}
            for entry in entries
        ]
        for key, entries in checks.items()
    }
    return {**document, "checks": public}


# What says where or why (targets, commands, error texts and outputs) in the managers'
# statistics: shown only to a request bearing the token, as the health detail is.
_PRIVATE_KEYS = frozenset(
    {
        "command",
        "detail",
        "details",
        "error",
        "escalation_reason",
        "last_error",
        "message",
        "output",
        "output_tail",
        "reason",
        "target",
    }
)


def _public_stats(value: Any) -> Any:
    """``value`` (JSON-ready) with every entry under a key of _PRIVATE_KEYS set to None."""
    if isinstance(value, Mapping):
        return {
            key: None if key in _PRIVATE_KEYS else _public_stats(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_public_stats(item) for item in value]
    return value


def create_ops_app(
    monitor: HealthMonitor | None = None,
    *,
    breakers: Breakers | None = None,
    degradation: Any = None,
    recovery: Any = None,
    metrics: Any = True,
    control_token: str | None = None,
    critical: Iterable[str] | None = None,
    service_id: str | None = None,
) -> Starlette:
    """A Starlette app with the operations routes (see the module docstring).

    ``breakers``: a :class:`CircuitBreakerRegistry`, a mapping or an iterable of
    breakers. ``degradation`` / ``recovery``: a ``ServiceDegradationManager`` /
    ``RecoveryManager`` whose statistics to serve. ``metrics``: True enables the
    Prometheus adapter on prometheus_client's default registry and serves it,
    a ``CollectorRegistry`` does so for that registry, False serves no /metrics.
    ``control_token`` enables the control routes and full health detail for
    requests bearing it. ``critical``: the services /readyz waits for (default:
    every service of ``monitor``), each of which must be monitored by ``monitor``
    (``ValueError`` otherwise); /readyz answers 503 until each has a decided status
    and while one is unhealthy. ``service_id`` names this app in health+json.
    The app never starts the monitor: use :func:`monitor_lifespan` for that.
    """
    if monitor is not None and not isinstance(monitor, HealthMonitor):
        raise TypeError(f"'monitor' must be a HealthMonitor or None: {monitor!r}")
    if control_token is not None and (
        not isinstance(control_token, str) or len(control_token) < 16
    ):
        raise ValueError("'control_token' must be a string of at least 16 characters: (hidden)")
    token = control_token.encode() if control_token is not None else None
    current_breakers = _breakers_by_name(breakers)
    critical_services = _critical_services(monitor, critical)
    registry = _metrics_registry(metrics)

    async def health(request: Request) -> Response:
        detailed = _authorized(request, token)
        if _wants_health_json(request):
            if monitor is None:
                document: dict[str, Any] = {"status": "pass"}
            else:
                document = monitor.get_health_json(service_id=service_id)
                if not detailed:
                    document = _public_health_json(document)
            return _json(document, http_status_for(document), HEALTH_JSON_MEDIA_TYPE)
        if monitor is None:
            return _json({"services": {}, "summary": {"total": 0}})
        report = monitor.get_health_report()
        status = http_status_for(monitor.get_overall_status())
        return _json(report if detailed else _public_report(report), status)

    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok", headers=_NO_STORE)

    async def readyz(request: Request) -> Response:
        if monitor is None:
            return PlainTextResponse("ready", headers=_NO_STORE)
        monitored = monitor.services
        services = monitored if critical_services is None else critical_services
        # Not ready until each critical service is known to answer: a status of unknown
        # (no check decided yet) is not ready. A service removed from the monitor since
        # is no longer waited for.
        down = sorted(
            (name, status.value)
            for name in services
            if name in monitored and (status := monitor.get_status(name)) in _NOT_READY
        )
        if down:
            text = "not ready: " + ", ".join(f"{name} ({status})" for name, status in down)
            return PlainTextResponse(valid_text(redact(text)), status_code=503, headers=_NO_STORE)
        return PlainTextResponse("ready", headers=_NO_STORE)

    async def circuits(request: Request) -> Response:
        return _json({name: b.get_metrics() for name, b in sorted(current_breakers().items())})

    async def control(request: Request) -> Response:
        if not _authorized(request, token):
            return _unauthorized()
        # /circuits shows names masked (a name may hold a credential): either form acts.
        by_name = current_breakers()
        found = shown_as(request.path_params["name"], by_name)
        breaker = None if found is None else by_name[found]
        action = request.path_params["action"]
        if breaker is None or action not in ("open", "close", "reset"):
            return _json({"error": "no such circuit or action"}, 404)
        if action == "open":
            await breaker.force_open()
        elif action == "close":
            await breaker.force_close()
        else:
            await breaker.reset()
        return _json(breaker.get_metrics())

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/circuits", circuits, methods=["GET"]),
    ]
    if token is not None:
        routes.append(
            # {name:path}: a circuit's name may hold a slash ("openai/gpt-4").
            Route("/circuits/{name:path}/{action:str}", control, methods=["POST"], name="control")
        )
    if registry is not None:
        routes.append(Route("/metrics", _metrics_endpoint(registry), methods=["GET"]))
    if degradation is not None:
        stats_of_degradation = degradation.get_degradation_stats

        async def degradation_stats(request: Request) -> Response:
            stats = _jsonable(stats_of_degradation())
            return _json(stats if _authorized(request, token) else _public_stats(stats))

        routes.append(Route("/degradation", degradation_stats, methods=["GET"]))
    if recovery is not None:
        stats_of_recovery = recovery.get_recovery_stats

        async def recovery_stats(request: Request) -> Response:
            stats = _jsonable(stats_of_recovery())
            return _json(stats if _authorized(request, token) else _public_stats(stats))

        routes.append(Route("/recovery", recovery_stats, methods=["GET"]))
    return Starlette(routes=routes)


_NOT_READY = frozenset({HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN})


def _critical_services(
    monitor: HealthMonitor | None, critical: Iterable[str] | None
) -> frozenset[str] | None:
    """``critical`` checked against ``monitor``: a name it does not monitor (a typo)
    would leave /readyz answering ready for a dependency nobody checks."""
    if critical is None:
        return None
    if isinstance(critical, str | bytes) or not isinstance(critical, Iterable):
        raise TypeError(f"'critical' must be an iterable of service names: {critical!r}")
    names = frozenset(critical)
    monitored = () if monitor is None else monitor.services
    unknown = sorted(name for name in names if name not in monitored)
    if unknown:
        listed = ", ".join(repr(redact(str(name))) for name in unknown)
        raise ValueError(
            f"'critical' names a service the monitor does not check: not monitored: {listed}"
        )
    return names


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _metrics_registry(metrics: Any) -> Any:
    if metrics is False or metrics is None:
        return None
    require("prometheus_client", "prometheus", "create_ops_app(metrics=...)")
    from prometheus_client import REGISTRY, CollectorRegistry

    from ..metrics.prometheus import enable_prometheus

    if metrics is True:
        enable_prometheus(REGISTRY)
        return REGISTRY
    if isinstance(metrics, CollectorRegistry):
        enable_prometheus(metrics)
        return metrics
    raise TypeError(
        f"'metrics' must be a bool or a prometheus_client CollectorRegistry: {metrics!r}"
    )


def _metrics_endpoint(registry: Any) -> Callable[[Request], Any]:
    from starlette.concurrency import run_in_threadpool

    from ..metrics._exposition import exposition
    from ..metrics.prometheus import refresh_shared_state, serving_registry

    async def metrics(request: Request) -> Response:
        await refresh_shared_state()  # circuits not loaded yet, peers' latches
        # Collecting and encoding is CPU work (hundreds of ms at hundreds of
        # breakers): in a worker thread, so the app's requests do not wait for it.
        body, headers = await run_in_threadpool(
            exposition,
            serving_registry(registry),
            request.headers.get("accept", ""),
            request.headers.get("accept-encoding", ""),
        )
        return Response(body, media_type=None, headers={**headers, **_NO_STORE})

    return metrics


def monitor_lifespan(
    monitor: HealthMonitor,
) -> Callable[[Any], Any]:
    """A Starlette/FastAPI ``lifespan`` that starts ``monitor`` with the app and
    stops it on shutdown: ``FastAPI(lifespan=monitor_lifespan(monitor))``."""
    if not isinstance(monitor, HealthMonitor):
        raise TypeError(f"'monitor' must be a HealthMonitor: {monitor!r}")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await monitor.start_monitoring()
        try:
            yield
        finally:
            await monitor.stop_monitoring()

    return lifespan
