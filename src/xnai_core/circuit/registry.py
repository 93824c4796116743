"""CircuitBreakerRegistry: the service registry of breakers, by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .breaker import CircuitBreaker, Fallback
from .config import CircuitBreakerConfig


class CircuitBreakerRegistry:
    """Breakers by service name, and all their metrics at once."""

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"<CircuitBreakerRegistry {sorted(self._breakers)}>"

    def register(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Add ``breaker`` under its name; a second breaker of the same name is a ValueError."""
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"'breaker' must be a CircuitBreaker: {breaker!r}")
        existing = self._breakers.get(breaker.name)
        if existing is not None and existing is not breaker:
            raise ValueError(f"a circuit breaker named {breaker.name!r} is already registered")
        self._breakers[breaker.name] = breaker
        return breaker

    def get_or_create(
        self,
        name: str,
        *,
        fallback_func: Fallback | None = None,
        **config: Any,
    ) -> CircuitBreaker:
        """The breaker named ``name``, created in memory with ``config`` if absent."""
        breaker = self._breakers.get(name)
        if breaker is None:
            cfg = CircuitBreakerConfig(name=name, **config)
            breaker = self.register(CircuitBreaker(cfg, fallback_func))
        return breaker

    def get(self, name: str) -> CircuitBreaker:
        """The breaker named ``name``; a KeyError naming it if there is none."""
        try:
            return self._breakers[name]
        except KeyError:
            raise KeyError(f"no circuit breaker named {name!r}") from None

    def unregister(self, name: str) -> CircuitBreaker:
        """Remove and return the breaker named ``name``."""
        breaker = self.get(name)
        del self._breakers[name]
        return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def get_all_metrics(self) -> dict[str, dict[str, Any]]:
        """Every registered breaker's :meth:`CircuitBreaker.get_metrics`, by name."""
        return {name: breaker.get_metrics() for name, breaker in self._breakers.items()}

    async def close(self) -> None:
        """Close every breaker's store."""
        for breaker in self:
            await breaker.close()
