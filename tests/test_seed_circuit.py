"""The seed's circuit-breaker, Redis and troubleshooting examples, as written.

The seed builds its client with ``host="redis"``, a name this machine cannot
resolve: the examples must still run (the breaker decides locally, loudly). The
same examples also run against the machine's real Redis by swapping the client.
"""

# mypy: disable-error-code="no-untyped-def, no-untyped-call"
# The seed's code is kept verbatim, unannotated functions included.

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis

from tests.conftest import SHARED_REDIS_URL

logger = logging.getLogger("seed-example")

LLM_CALLS: list[str] = []


async def expensive_llm_operation() -> dict[str, str]:
    LLM_CALLS.append("call")
    return {"response": "a real answer"}


async def test_basic_circuit_breaker_usage_with_unresolvable_redis() -> None:
    """Quick Start: host="redis" does not resolve here; the call still answers."""
    # --- seed, as written ---
    import redis.asyncio as redis
    from app.XNAi_rag_app.core import create_redis_circuit_breaker, fallback_return_none

    # Create Redis client
    redis_client = redis.Redis(host="redis", port=6379, db=0)

    # Create circuit breaker
    circuit_breaker = create_redis_circuit_breaker(
        name="llm_service",
        redis_client=redis_client,
        failure_threshold=5,
        recovery_timeout=60,
        timeout=30,
        fallback_func=fallback_return_none
    )  # fmt: skip

    # Use circuit breaker
    async def call_llm_service():
        return await circuit_breaker.call(
            lambda: expensive_llm_operation()
        )  # fmt: skip

    # --- end of seed ---

    try:
        assert await call_llm_service() == {"response": "a real answer"}
        metrics = circuit_breaker.get_metrics()
        assert (metrics["backend"], metrics["redis_available"]) == ("redis", False)
        assert metrics["state"] == "closed"
        # Troubleshooting: "Circuit Breaker Stuck Open", as written.
        await circuit_breaker.force_close()
        metrics = circuit_breaker.get_metrics()
        print(f"Circuit state: {metrics['state']}")
        print(json.dumps(metrics, indent=2))
        assert metrics["state"] == "closed"
    finally:
        await circuit_breaker.close()
        await redis_client.aclose()


async def test_basic_circuit_breaker_usage_against_real_redis() -> None:
    """The same example, with the machine's Redis: state lands in Redis."""
    from app.XNAi_rag_app.core import create_redis_circuit_breaker, fallback_return_none

    redis_client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    name = f"llm_service-{uuid.uuid4().hex[:8]}"
    circuit_breaker = create_redis_circuit_breaker(
        name=name,
        redis_client=redis_client,
        failure_threshold=5,
        recovery_timeout=60,
        timeout=30,
        fallback_func=fallback_return_none,
    )

    async def failing() -> dict[str, str]:
        raise ConnectionError("LLM down")

    try:
        assert await circuit_breaker.call(lambda: expensive_llm_operation()) == {
            "response": "a real answer"
        }
        for _ in range(5):
            assert await circuit_breaker.call(failing) is None
        metrics = circuit_breaker.get_metrics()
        assert (metrics["state"], metrics["redis_available"]) == ("open", True)
        stored = await redis_client.hgetall(f"xnai:cb:{{{name}}}")
        assert stored[b"state"] == b"open"
    finally:
        await circuit_breaker.close()
        await redis_client.delete(f"xnai:cb:{{{name}}}")
        await redis_client.aclose()


async def test_circuit_breaker_configuration_example() -> None:
    """Configuration: CircuitBreakerConfig as the seed writes it."""
    # --- seed, as written ---
    from app.XNAi_rag_app.core import CircuitBreakerConfig

    config = CircuitBreakerConfig(
        failure_threshold=5,      # Number of failures before opening
        recovery_timeout=60,      # Seconds before trying half-open
        half_open_max_calls=3,    # Max calls in half-open state
        timeout=30,              # Operation timeout in seconds
        expected_exception=Exception,
        name="my_service"
    )  # fmt: skip
    # --- end of seed ---
    assert config.name == "my_service"


async def test_redis_configuration_and_troubleshooting_examples() -> None:
    """RedisConnectionManager as configured and checked in the seed, on the local Redis."""
    # --- seed, as written (the URL is the seed's own) ---
    from app.XNAi_rag_app.core import RedisConnectionManager

    redis_manager = RedisConnectionManager(
        redis_url="redis://localhost:6379/0",
        max_connections=50,
        health_check_interval=30
    )  # fmt: skip
    # --- end of seed ---
    try:
        # "Redis Connection Problems", as written.
        await redis_manager.connect()
        status = await redis_manager.get_health_status()
        print(f"Redis connected: {status['connected']}")
        assert status["connected"] is True
    finally:
        await redis_manager.close()


async def test_redis_manager_never_raises_on_an_unreachable_server() -> None:
    """The troubleshooting snippet against a host that does not resolve reports, not raises."""
    from app.XNAi_rag_app.core import RedisConnectionManager

    redis_manager = RedisConnectionManager(redis_url="redis://:s3cret@redis:6379/0")
    try:
        await redis_manager.connect()
        status = await redis_manager.get_health_status()
        assert status["connected"] is False
        assert "s3cret" not in json.dumps(status, default=str)
        assert "s3cret" not in repr(redis_manager)
    finally:
        await redis_manager.close()


async def test_rag_api_integration_example() -> None:
    """Integration Examples: setup_rag_api_protection, with its recovery callback."""
    import redis.asyncio as redis
    from app.XNAi_rag_app.core import (
        HealthMonitor,
        create_rag_api_health_checker,
        create_redis_circuit_breaker,
    )  # fmt: skip

    # --- seed, as written ---
    async def setup_rag_api_protection():
        # Setup Redis
        redis_client = redis.Redis(host="redis", port=6379, db=0)

        # Create circuit breaker for RAG API
        rag_circuit_breaker = create_redis_circuit_breaker(
            name="rag_api",
            redis_client=redis_client,
            failure_threshold=3,
            recovery_timeout=60,
            timeout=30,
        )

        # Create health monitor
        monitor = HealthMonitor(check_interval=30.0)
        monitor.add_checker(create_rag_api_health_checker())

        # Add recovery callback
        async def rag_recovery_callback(service_name: str):
            logger.info("RAG API recovered, clearing cache")
            # Clear cache logic here

        monitor.add_recovery_callback("rag_api", rag_recovery_callback)

        return rag_circuit_breaker, monitor

    # --- end of seed ---

    breaker, monitor = await setup_rag_api_protection()
    try:
        assert breaker.name == "rag_api"
        assert breaker.config.failure_threshold == 3
        assert monitor.services == ("rag_api",)
        assert await breaker.call(lambda: expensive_llm_operation()) == {
            "response": "a real answer"
        }
    finally:
        await breaker.close()
        await monitor.stop_monitoring()


async def test_chainlit_ui_integration_example() -> None:
    """Integration Examples: setup_chainlit_protection, with the module's redis_client."""
    from app.XNAi_rag_app.core import (
        create_chainlit_ui_health_checker,
        create_redis_circuit_breaker,
    )  # fmt: skip

    redis_client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    namespace: dict[str, Any] = {
        "redis_client": redis_client,
        "create_chainlit_ui_health_checker": create_chainlit_ui_health_checker,
        "create_redis_circuit_breaker": create_redis_circuit_breaker,
    }
    # --- seed, as written (it reads a module-level redis_client) ---
    exec(
        """
async def setup_chainlit_protection():
    # Create health checker for Chainlit UI
    chainlit_checker = create_chainlit_ui_health_checker()

    # Create circuit breaker for UI operations
    ui_circuit_breaker = create_redis_circuit_breaker(
        name="chainlit_ui",
        redis_client=redis_client,
        failure_threshold=2,
        recovery_timeout=30,
        timeout=10
    )

    return chainlit_checker, ui_circuit_breaker
""",
        namespace,
    )
    # --- end of seed ---
    checker, breaker = await namespace["setup_chainlit_protection"]()
    try:
        assert checker.name == "chainlit_ui"
        assert (breaker.name, breaker.config.timeout) == ("chainlit_ui", 10.0)
        assert await breaker.call(lambda: expensive_llm_operation()) == {
            "response": "a real answer"
        }
        assert breaker.get_metrics()["redis_available"] is True
    finally:
        await breaker.close()
        await redis_client.delete("xnai:cb:{chainlit_ui}")
        await redis_client.aclose()
