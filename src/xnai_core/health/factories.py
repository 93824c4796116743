"""Ready-made checkers for the Foundation Stack's services.

Each default can be overridden by an environment variable, so one container
image serves every deployment. Precedence: an argument you pass, then the
environment variable (when set and non-empty), then the built-in default.

=============================  ====================================================
variable                       default
=============================  ====================================================
XNAI_RAG_API_HEALTH_URL        ``http://localhost:8000/health``
XNAI_CHAINLIT_UI_HEALTH_URL    ``http://localhost:8001/``
XNAI_REDIS_URL                 ``redis://localhost:6379/0`` (only without a client)
XNAI_DATABASE_DSN              ``postgresql://postgres@localhost:5432/postgres``
=============================  ====================================================
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .checker import DEFAULT_TIMEOUT

if TYPE_CHECKING:  # each factory imports its driver only when called
    from .database_checker import DatabaseHealthChecker
    from .http_checker import HTTPHealthChecker
    from .redis_checker import RedisClient, RedisHealthChecker

RAG_API_URL_ENV = "XNAI_RAG_API_HEALTH_URL"
CHAINLIT_UI_URL_ENV = "XNAI_CHAINLIT_UI_HEALTH_URL"
REDIS_URL_ENV = "XNAI_REDIS_URL"
DATABASE_DSN_ENV = "XNAI_DATABASE_DSN"

DEFAULT_RAG_API_URL = "http://localhost:8000/health"
DEFAULT_CHAINLIT_UI_URL = "http://localhost:8001/"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_DSN = "postgresql://postgres@localhost:5432/postgres"


def _setting(value: str | None, variable: str, default: str) -> str:
    if value is not None:
        return value
    from_env = os.environ.get(variable, "").strip()
    return from_env or default


def create_rag_api_health_checker(
    url: str | None = None,
    name: str = "rag_api",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    degraded_threshold: float | None = 2.0,
    expected_status: Iterable[int] = range(200, 400),
    headers: Mapping[str, str] | None = None,
) -> HTTPHealthChecker:
    """An HTTP checker for the RAG API's health endpoint.

    ``url`` defaults to ``$XNAI_RAG_API_HEALTH_URL``, else
    ``http://localhost:8000/health``. Answers slower than 2 s are ``degraded``.
    """
    from .http_checker import HTTPHealthChecker

    return HTTPHealthChecker(
        name,
        _setting(url, RAG_API_URL_ENV, DEFAULT_RAG_API_URL),
        timeout=timeout,
        degraded_threshold=degraded_threshold,
        expected_status=expected_status,
        headers=headers,
    )


def create_chainlit_ui_health_checker(
    url: str | None = None,
    name: str = "chainlit_ui",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    degraded_threshold: float | None = 2.0,
    expected_status: Iterable[int] = range(200, 400),
    headers: Mapping[str, str] | None = None,
) -> HTTPHealthChecker:
    """An HTTP checker for the Chainlit UI.

    ``url`` defaults to ``$XNAI_CHAINLIT_UI_HEALTH_URL``, else
    ``http://localhost:8001/``. Answers slower than 2 s are ``degraded``.
    """
    from .http_checker import HTTPHealthChecker

    return HTTPHealthChecker(
        name,
        _setting(url, CHAINLIT_UI_URL_ENV, DEFAULT_CHAINLIT_UI_URL),
        timeout=timeout,
        degraded_threshold=degraded_threshold,
        expected_status=expected_status,
        headers=headers,
    )


def create_redis_health_checker(
    redis_client: RedisClient | None = None,
    name: str = "redis",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    degraded_threshold: float | None = 0.5,
) -> RedisHealthChecker:
    """A Redis checker on your ``redis.asyncio`` client (which stays yours to close).

    ``redis_client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Without a client, the checker builds and owns one from ``$XNAI_REDIS_URL``,
    else ``redis://localhost:6379/0``. A PING+INFO slower than 0.5 s is ``degraded``.
    """
    from .redis_checker import RedisHealthChecker

    if redis_client is not None:
        return RedisHealthChecker(
            name, redis_client, timeout=timeout, degraded_threshold=degraded_threshold
        )
    return RedisHealthChecker(
        name,
        url=_setting(None, REDIS_URL_ENV, DEFAULT_REDIS_URL),
        timeout=timeout,
        degraded_threshold=degraded_threshold,
    )


def create_database_health_checker(
    dsn: str | None = None,
    name: str = "postgres",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    degraded_threshold: float | None = 1.0,
) -> DatabaseHealthChecker:
    """A PostgreSQL checker.

    ``dsn`` defaults to ``$XNAI_DATABASE_DSN``, else
    ``postgresql://postgres@localhost:5432/postgres``. Slower than 1 s is ``degraded``.
    """
    from .database_checker import DatabaseHealthChecker

    return DatabaseHealthChecker(
        name,
        _setting(dsn, DATABASE_DSN_ENV, DEFAULT_DATABASE_DSN),
        timeout=timeout,
        degraded_threshold=degraded_threshold,
    )
