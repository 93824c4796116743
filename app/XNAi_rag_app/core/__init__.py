"""The stack's import path for xnai-core: ``from app.XNAi_rag_app.core import ...``."""

from xnai_core import *  # noqa: F403  (the whole public API, by design)
from xnai_core import __all__ as __all__
