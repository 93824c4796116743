"""The xnai-core service: one config file, a monitor with recovery and alerts, a dashboard.

Run it with the ``xnai-core`` command (``pip install 'xnai-core[service]'``); see
docs/service.md. Importing this package imports neither click nor Starlette: the
command-line and web parts load only when used.
"""

from __future__ import annotations

from ._schema import ConfigError
from .config import ServiceConfig, ServiceSpec, load_config, parse_config

__all__ = ["ConfigError", "ServiceConfig", "ServiceSpec", "load_config", "parse_config"]
