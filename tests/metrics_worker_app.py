"""An app for several uvicorn workers sharing PROMETHEUS_MULTIPROC_DIR (the tests of
multiprocess mode): a Redis-backed circuit, an alert sink posting to a loopback
receiver, and create_ops_app at /ops.

Environment: ``XNAI_TEST_REDIS_URL``, ``XNAI_TEST_KEY_PREFIX``, ``XNAI_TEST_WEBHOOK_URL``.
"""

from __future__ import annotations

import itertools
import os

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from xnai_core import Alert, CircuitBreakerRegistry, create_redis_circuit_breaker
from xnai_core.alerting import WebhookSink
from xnai_core.metrics import enable_prometheus
from xnai_core.web import create_ops_app

enable_prometheus(publish_interval=0.2)  # create_ops_app's call then finds this one

client = aioredis.Redis.from_url(os.environ["XNAI_TEST_REDIS_URL"])
breakers = CircuitBreakerRegistry()
breakers.register(
    create_redis_circuit_breaker(
        "llm",
        client,
        key_prefix=f"{os.environ['XNAI_TEST_KEY_PREFIX']}:circuit:",
        failure_threshold=2,
        recovery_timeout=600,
        op_timeout=2,
    )
)
sink = WebhookSink(os.environ["XNAI_TEST_WEBHOOK_URL"], secret="hmac-secret-value", name="pager")


sent = itertools.count()


async def send_alert(request: Request) -> JSONResponse:
    """One new alert (a repeat of an active one would not be sent again)."""
    service = f"svc{next(sent)}"
    sink.submit(Alert(service=service, kind="status", severity="critical", message="down"))
    await sink.drain()
    return JSONResponse({"pid": os.getpid()})


app = Starlette(
    routes=[
        Route("/demo/alert", send_alert, methods=["POST"]),
        Mount("/ops", create_ops_app(breakers=breakers)),
    ]
)
