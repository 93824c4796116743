"""The help text of every Prometheus metric, by name (``_total`` and unit suffixes as
prometheus_client adds them: counters are named without ``_total`` here)."""

from __future__ import annotations

HELP: dict[str, str] = {
    "xnai_circuitbreaker_state": "1 for the circuit's current state, 0 for the others",
    "xnai_circuitbreaker_calls_seconds": "Duration of calls through the circuit, by outcome",
    "xnai_circuitbreaker_not_permitted_calls": "Calls the open circuit rejected",
    "xnai_circuitbreaker_fallback_calls": "Calls the fallback answered",
    "xnai_circuitbreaker_redis_available": "1 while the circuit is in step with Redis",
    "xnai_degradation_calls": "Degradation manager calls, by who answered",
    "xnai_degradation_degraded": "1 while the service is answered by a degraded strategy",
    "xnai_health_status": "1 for the service's current health status, 0 for the others",
    "xnai_health_check_duration_seconds": "Duration of health checks",
    "xnai_health_checks": "Health checks run, by result",
    "xnai_alerts_active": "1 while the alert is active",
    "xnai_recovery_attempts": "Recovery actions run, by result",
    "xnai_recovery_escalated": "1 while automated recovery has escalated to a person",
    "xnai_alert_notifications_sent": "Alert notifications the sink delivered",
    "xnai_alert_notifications_retried": "Failed alert delivery attempts that were tried again",
    "xnai_alert_notifications_dropped": "Alert notifications never delivered, by reason",
    "xnai_alert_queue_length": "Alert notifications waiting in the sink (in flight included)",
    "xnai_alert_last_error_timestamp_seconds": "When the sink's last delivery attempt failed",
}
