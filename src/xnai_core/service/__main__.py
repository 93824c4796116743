"""``python -m xnai_core.service``: the ``xnai-core`` command."""

from __future__ import annotations

from .entry import main

main()
