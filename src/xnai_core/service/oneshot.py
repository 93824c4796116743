"""One round of every configured check, for ``xnai-core check`` (cron jobs, exec probes)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from .. import HealthCheckResult, HealthStatus
from .._redact import redact
from .checks import build_checker
from .config import ServiceConfig

__all__ = ["CheckOutcome", "check_once"]

EXIT_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The results of one round and what they add up to.

    ``status``: ``unhealthy`` when a critical service is unhealthy; ``degraded`` when a
    service is degraded or a non-critical one unhealthy; else ``healthy`` (also with no
    services at all: nothing is failing).
    """

    results: tuple[HealthCheckResult, ...]
    critical: frozenset[str]

    @property
    def status(self) -> str:
        worst = "healthy"
        for result in self.results:
            if result.status is HealthStatus.UNHEALTHY and result.service in self.critical:
                return "unhealthy"
            if result.status is not HealthStatus.HEALTHY:
                worst = "degraded"
        return worst

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "services": [
                {
                    "name": result.service,
                    "status": result.status.value,
                    "critical": result.service in self.critical,
                    "response_time": round(result.response_time, 6),
                    "error": None if result.error is None else redact(result.error),
                }
                for result in self.results
            ],
        }


async def check_once(config: ServiceConfig) -> CheckOutcome:
    """Check every service once, concurrently; each bounded by its own timeout."""
    checkers = [build_checker(spec) for spec in config.services]
    try:
        results = await asyncio.gather(*(checker.check() for checker in checkers))
    finally:
        for checker in checkers:
            with contextlib.suppress(Exception):
                await checker.aclose()
    critical = frozenset(spec.name for spec in config.services if spec.critical)
    return CheckOutcome(tuple(results), critical)
