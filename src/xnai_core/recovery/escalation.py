"""Manual intervention: the reason given, and the critical alert (and its resolution)."""

from __future__ import annotations

from .._redact import redact
from ..health.alerts import Alert
from .state import MANUAL, ServiceState


def escalation_reason(svc: ServiceState, last_failure: str | None) -> str:
    """What automation tried before giving up, for the alert and the statistics."""
    tried = [s for s in svc.slots if s.tries and s.rule.action_type is not MANUAL]
    summary = (
        "; ".join(f"{s.rule.action_type.value} tried {s.tries}x" for s in tried)
        or "no automatic action configured"
    )
    return f"{summary}; last: {last_failure}" if last_failure else summary


def escalation_alert(svc: ServiceState, *, resolved: bool, reason: str, now: float) -> Alert:
    """The critical alert for an escalation, or the info notice that it was reset.

    One stable key per service, so a pager deduplicates repeats and pairs the
    resolution with the page.
    """
    reason = redact(reason)  # the last failure may echo a URL or a token
    if resolved:
        message = f"{svc.name}: manual intervention latch reset; automated recovery resumes"
    else:
        message = (
            f"{svc.name}: automated recovery gave up ({reason}); manual intervention "
            f"needed, then reset({svc.name!r})"
        )
    return Alert(
        key=f"{svc.name}:{MANUAL.value}",
        service=svc.name,
        kind=MANUAL.value,
        severity="info" if resolved else "critical",
        message=message,
        resolved=resolved,
        timestamp=now,
        details={
            "reason": reason,
            "last_attempt": svc.last_attempt.as_dict() if svc.last_attempt else None,
        },
    )
