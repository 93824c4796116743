"""The xnai-core service: one config file, a monitor with recovery and alerts, a dashboard.

Run it with the ``xnai-core`` command (``pip install 'xnai-core[service]'``); see
docs/service.md. Importing this package imports nothing else: the config, command-line
and web parts load only when used, so the command's entry (``.entry``) runs its first
line, which takes SIGHUP over, before the interpreter has loaded anything of the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

if TYPE_CHECKING:
    from ._schema import ConfigError
    from .config import ServiceConfig, ServiceSpec, load_config, parse_config

_EXPORTS: dict[str, str] = {
    "ConfigError": "._schema",
    "ServiceConfig": ".config",
    "ServiceSpec": ".config",
    "load_config": ".config",
    "parse_config": ".config",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = ["ConfigError", "ServiceConfig", "ServiceSpec", "load_config", "parse_config"]
