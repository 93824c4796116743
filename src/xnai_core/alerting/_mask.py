"""What leaves the process in a notification: alert text and details with credentials masked.

Alert messages and details come from checkers and the recovery manager, which
already mask what they know to be secret. A notification travels further (a
chat channel, a pager, a mailbox), so it is masked once more here with the
package's redaction (``xnai_core._redact``): credentials in URLs, secret
``name=value`` fields, bearer tokens, values under secret field names, and the
sink's own secrets wherever they appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._redact import redact, redact_tree

_MAX_DEPTH = 6


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential masked, and every string of ``secrets`` replaced."""
    return redact(text, tuple(secrets))


def mask_value(value: object, secrets: Iterable[str] = ()) -> object:
    """A JSON-ready copy of ``value`` with credentials masked (see the module docstring):
    the package's one walker, with values under secret field names masked whole."""
    return redact_tree(value, secrets=secrets, secret_keys=True, max_depth=_MAX_DEPTH)


def mask_details(details: Mapping[str, object], secrets: Iterable[str] = ()) -> dict[str, object]:
    """An alert's ``details``, masked, as a JSON-ready dict."""
    masked = mask_value(details, secrets)
    assert isinstance(masked, dict)
    return masked
