"""The seed's "Graceful Degradation" example, verbatim, against a failing and a working LLM."""

# The seed's code is kept verbatim, unannotated functions included.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.XNAi_rag_app.core import ServiceDegradationManager, last_call_info


async def run_the_seed_example(
    expensive_llm_operation: Callable[[], Awaitable[dict[str, object]]],
) -> tuple[object, object]:
    """The seed's example, verbatim, around ``expensive_llm_operation``; returns its
    ``result`` and its ``degradation_manager``."""
    # --- the seed, verbatim ---
    # fmt: off
    from app.XNAi_rag_app.core import ServiceDegradationManager, FallbackStrategy  # noqa: I001

    # Create degradation manager
    degradation_manager = ServiceDegradationManager()

    # Add fallback strategy
    async def llm_fallback():
        return {"response": "Service temporarily unavailable", "degraded": True}

    degradation_manager.add_service_strategy(
        "llm_service",
        FallbackStrategy(llm_fallback),
        priority=10
    )

    # Use with degradation
    result = await degradation_manager.call_service(
        "llm_service",
        expensive_llm_operation
    )
    # fmt: on
    # --- end of the seed ---
    return result, degradation_manager


async def test_seed_example_degrades_when_the_llm_fails() -> None:
    """The fallback's answer comes back when expensive_llm_operation raises."""

    async def expensive_llm_operation() -> dict[str, object]:
        raise ConnectionError("LLM server refused the connection")

    result, _ = await run_the_seed_example(expensive_llm_operation)
    assert result == {"response": "Service temporarily unavailable", "degraded": True}
    info = last_call_info()
    assert info is not None
    assert (info.degraded, info.source) == (True, "FallbackStrategy")


async def test_seed_example_returns_the_real_answer_when_the_llm_works() -> None:
    """The primary's own answer comes back when expensive_llm_operation works."""

    async def expensive_llm_operation() -> dict[str, object]:
        return {"response": "Paris is the capital of France.", "degraded": False}

    result, manager = await run_the_seed_example(expensive_llm_operation)
    assert result == {"response": "Paris is the capital of France.", "degraded": False}
    info = last_call_info()
    assert info is not None
    assert (info.degraded, info.source) == (False, "primary")
    assert isinstance(manager, ServiceDegradationManager)
    stats = manager.get_degradation_stats()["services"]["llm_service"]
    assert (stats["calls"], stats["primary_successes"], stats["degraded_responses"]) == (1, 1, 0)
