"""A small RAG-style API with xnai-core's operations endpoints mounted at /ops.

Run it (one process, or several workers sharing PROMETHEUS_MULTIPROC_DIR)::

    uvicorn examples.ops_app:app --host 127.0.0.1 --port 8000
    PROMETHEUS_MULTIPROC_DIR=/tmp/xnai-metrics uvicorn examples.ops_app:app --workers 2

Then ``curl 127.0.0.1:8000/ops/health``, ``/ops/metrics``, ``/ops/circuits``. The
routes under /demo make things happen: a call through the LLM breaker, a failing
one, the vector store going down or coming back. The tests scrape this app with a
real Prometheus (tests/test_prometheus_server.py).

Environment: ``XNAI_EXAMPLE_REDIS_URL`` (default redis://127.0.0.1:6379/0),
``XNAI_EXAMPLE_KEY_PREFIX`` (keys of the shared circuit), ``XNAI_EXAMPLE_CHECK_INTERVAL``
(seconds, default 1), ``XNAI_OPS_TOKEN`` (enables the control routes).
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from xnai_core import (
    CircuitBreakerRegistry,
    CircuitOpenError,
    CustomHealthChecker,
    FallbackStrategy,
    HealthMonitor,
    RecoveryActionType,
    RecoveryManager,
    RecoveryRule,
    ServiceDegradationManager,
    create_redis_circuit_breaker,
)
from xnai_core.web import create_ops_app, monitor_lifespan

redis_client = aioredis.Redis.from_url(
    os.environ.get("XNAI_EXAMPLE_REDIS_URL", "redis://127.0.0.1:6379/0")
)
prefix = os.environ.get("XNAI_EXAMPLE_KEY_PREFIX", "xnai-example")

breakers = CircuitBreakerRegistry()
llm = breakers.register(
    create_redis_circuit_breaker(
        "llm",
        redis_client,
        failure_threshold=2,
        recovery_timeout=600,
        timeout=5,
        key_prefix=f"{prefix}:circuit:",
        op_timeout=2,
    )
)

vector_db = {"up": True}


def restart_vector_db(service: str) -> None:
    vector_db["up"] = True


recovery = RecoveryManager()
recovery.add_rule(
    RecoveryRule(
        "vector_db",
        RecoveryActionType.RESTART_SERVICE,
        recovery_func=restart_vector_db,
        failure_threshold=3,  # three failed checks in a row: a scrape sees it unhealthy
        backoff_base=0.1,
        backoff_max=0.1,
        grace_period=30,
        cooldown=0,
    )
)
monitor = HealthMonitor(
    check_interval=float(os.environ.get("XNAI_EXAMPLE_CHECK_INTERVAL", "1")),
    failure_threshold=1,
    success_threshold=1,
    recovery_manager=recovery,
)
monitor.add_checker(CustomHealthChecker("vector_db", lambda: vector_db["up"], in_thread=False))

degradation = ServiceDegradationManager()


async def answer() -> dict[str, object]:
    return {"answer": 42, "pid": os.getpid()}


async def broken() -> None:
    raise ConnectionError("the model server refused")


async def work(request: Request) -> JSONResponse:
    try:
        return JSONResponse(await llm.call(answer))
    except CircuitOpenError as exc:
        return JSONResponse({"error": str(exc), "pid": os.getpid()}, status_code=503)


async def fail(request: Request) -> JSONResponse:
    try:
        await llm.call(broken)
    except Exception as exc:
        return JSONResponse({"error": type(exc).__name__, "pid": os.getpid()}, status_code=502)
    return JSONResponse({"pid": os.getpid()})


async def vector_db_down(request: Request) -> JSONResponse:
    vector_db["up"] = False
    return JSONResponse({"vector_db": "down"})


async def chat(request: Request) -> JSONResponse:
    result = await degradation.call_service("chat", broken)
    return JSONResponse({"answer": result})


async def canned() -> str:
    return "temporarily unavailable"


degradation.add_service_strategy("chat", FallbackStrategy(canned, name="canned"), priority=10)

app = Starlette(
    routes=[
        Route("/demo/work", work),
        Route("/demo/fail", fail, methods=["POST"]),
        Route("/demo/vector_db/down", vector_db_down, methods=["POST"]),
        Route("/demo/chat", chat),
        Mount(
            "/ops",
            create_ops_app(
                monitor,
                breakers=breakers,
                degradation=degradation,
                recovery=recovery,
                control_token=os.environ.get("XNAI_OPS_TOKEN"),
            ),
        ),
    ],
    lifespan=monitor_lifespan(monitor),
)
