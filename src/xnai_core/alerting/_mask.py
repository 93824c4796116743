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

from .._redact import MASK, is_secret_field, redact

_MAX_DEPTH = 6


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential masked, and every string of ``secrets`` replaced."""
    return redact(text, tuple(secrets))


def mask_value(value: object, secrets: Iterable[str] = (), _depth: int = 0) -> object:
    """A JSON-ready copy of ``value`` with credentials masked (see the module docstring)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return mask_text(value, secrets)
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth >= _MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return {
            str(key): MASK if is_secret_field(str(key)) else mask_value(item, secrets, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(item, secrets, _depth + 1) for item in value]
    return mask_text(str(value), secrets)


def mask_details(details: Mapping[str, object], secrets: Iterable[str] = ()) -> dict[str, object]:
    """An alert's ``details``, masked, as a JSON-ready dict."""
    masked = mask_value(details, secrets)
    assert isinstance(masked, dict)
    return masked
