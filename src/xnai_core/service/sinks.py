"""Alert sinks built from the config's ``[[alerts]]`` tables (``xnai_core.alerting``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._redact import redact
from ._schema import ConfigError
from .config import SinkSpec

__all__ = ["build_sinks"]


def build_sinks(specs: Sequence[SinkSpec]) -> list[Any]:
    """One sink per spec; a ConfigError naming ``alerts[i]`` if a sink refuses its options.

    Secrets were read from the environment by the config loader and go straight to the
    sink's constructor, which keeps them out of its repr, logs and stats.
    """
    if not specs:
        return []
    try:
        from .. import alerting
    except ImportError as exc:  # the e-mail sink's driver, for one
        raise ConfigError("alerts", f"alert delivery cannot be loaded: {exc}") from None
    classes: dict[str, Any] = {
        "alertmanager": alerting.AlertmanagerSink,
        "slack": alerting.SlackSink,
        "pagerduty": alerting.PagerDutySink,
        "email": alerting.EmailSink,
        "webhook": alerting.WebhookSink,
    }
    sinks = []
    for index, spec in enumerate(specs):
        options = dict(spec.options)
        secrets = dict(spec.secrets)
        try:
            if spec.type == "alertmanager":
                sink = classes[spec.type](options.pop("urls"), **options)
            elif spec.type == "slack":
                sink = classes[spec.type](secrets.pop("webhook_url"), **options)
            elif spec.type == "pagerduty":
                sink = classes[spec.type](secrets.pop("routing_key"), **options)
            elif spec.type == "email":
                host = options.pop("host")
                sink = classes[spec.type](host, **options, **secrets)
            else:
                sink = classes[spec.type](options.pop("url"), secrets.get("secret"), **options)
        except (TypeError, ValueError, ImportError) as exc:
            # ImportError: a sink's own driver missing (aiosmtplib for e-mail).
            raise ConfigError(f"alerts[{index}]", redact(str(exc), spec.secrets.values())) from None
        sinks.append(sink)
    return sinks
