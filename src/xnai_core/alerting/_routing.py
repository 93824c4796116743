"""Which alerts a sink takes: a minimum severity, and the services it is for."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import get_args

from ..health.alerts import Alert, Severity

SEVERITY_ORDER: dict[str, int] = {name: rank for rank, name in enumerate(get_args(Severity))}
"""``info`` < ``warning`` < ``critical``."""


def check_severity(field: str, value: object) -> Severity:
    """``value`` if it is one of the severities, else a ``ValueError`` naming them."""
    if value not in SEVERITY_ORDER:
        raise ValueError(f"'{field}' must be one of {tuple(SEVERITY_ORDER)}: {value!r}")
    return value  # type: ignore[return-value]


def _names(field: str, value: Collection[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        # "rag_api" would otherwise become {"r", "a", "g", ...}.
        raise TypeError(f"'{field}' must be a collection of service names, not a str: {value!r}")
    names = frozenset(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"'{field}' must hold non-empty service names: {name!r}")
    return names


@dataclass(frozen=True, slots=True)
class Route:
    """A raise is taken when its severity is at least ``min_severity`` and its service is
    in ``services`` (all when ``None``) and not in ``exclude_services``.

    A resolved notice always carries severity ``info``, so it is never judged by
    this: a sink sends the resolve of exactly the raises it took.
    """

    min_severity: Severity = "warning"
    services: frozenset[str] | None = None
    exclude_services: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        min_severity: object,
        services: Collection[str] | None,
        exclude_services: Collection[str] | None,
    ) -> Route:
        """A validated route; errors name the argument, the rule and the value."""
        return cls(
            check_severity("min_severity", min_severity),
            _names("services", services),
            _names("exclude_services", exclude_services) or frozenset(),
        )

    def admits(self, alert: Alert) -> bool:
        """True if this route takes the raise ``alert``."""
        if SEVERITY_ORDER[alert.severity] < SEVERITY_ORDER[self.min_severity]:
            return False
        if self.services is not None and alert.service not in self.services:
            return False
        return alert.service not in self.exclude_services

    def describe(self) -> str:
        """A short text for reprs: severity and services, never a destination."""
        parts = [f"min_severity={self.min_severity!r}"]
        if self.services is not None:
            parts.append(f"services={sorted(self.services)!r}")
        if self.exclude_services:
            parts.append(f"exclude_services={sorted(self.exclude_services)!r}")
        return ", ".join(parts)
