"""Metrics adapters over :mod:`xnai_core.events`: Prometheus and OpenTelemetry.

Each lives behind an optional extra and is imported only when enabled::

    from xnai_core.metrics import enable_prometheus      # xnai-core[prometheus]
    enable_prometheus()

    from xnai_core.metrics import enable_opentelemetry   # xnai-core[otel]
    enable_opentelemetry()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._extras import require

if TYPE_CHECKING:
    from .otel import OpenTelemetryMetrics
    from .prometheus import PrometheusMetrics


def enable_prometheus(
    registry: Any = None, *, max_names: int = 500, publish_interval: float = 5.0
) -> PrometheusMetrics:
    """Record xnai-core's metrics in a prometheus_client registry (the default one
    when None); see :mod:`xnai_core.metrics.prometheus`."""
    require("prometheus_client", "prometheus", "enable_prometheus()")
    from .prometheus import enable_prometheus as enable

    return enable(registry, max_names=max_names, publish_interval=publish_interval)


async def refresh_shared_state() -> None:
    """Read what lives in Redis (circuits not loaded yet, peers' escalation latches)
    for the next collection; await it in a ``/metrics`` handler before collecting.
    See :func:`xnai_core.metrics._current.refresh_shared_state`."""
    from ._current import refresh_shared_state as refresh

    await refresh()


def enable_opentelemetry(
    meter_provider: Any = None, *, max_names: int = 500
) -> OpenTelemetryMetrics:
    """Record xnai-core's metrics as OpenTelemetry instruments (the global meter
    provider when None); see :mod:`xnai_core.metrics.otel`."""
    require("opentelemetry.metrics", "otel", "enable_opentelemetry()")
    from .otel import enable_opentelemetry as enable

    return enable(meter_provider, max_names=max_names)


__all__ = ["enable_opentelemetry", "enable_prometheus", "refresh_shared_state"]
