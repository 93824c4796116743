"""Operations endpoints for any ASGI app (needs ``xnai-core[web]``).

``create_ops_app(...)`` returns a Starlette app to mount beside your own::

    app.mount("/ops", create_ops_app(monitor, breakers=registry, control_token=token))

See :mod:`xnai_core.web.ops` and docs/observability.md.
"""

from __future__ import annotations

from .._extras import require

require("starlette", "web", "xnai_core.web")

from .ops import create_ops_app, monitor_lifespan  # noqa: E402

__all__ = ["create_ops_app", "monitor_lifespan"]
