"""Short, credential-free descriptions of errors, for stats, logs and events."""

from __future__ import annotations

from .._redact import redact, redact_cut

__all__ = ["MAX_REASON_LENGTH", "describe_error", "redact"]

MAX_REASON_LENGTH = 300


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, redacted and cut to a readable length.

    Redaction runs before the cut, on what can show and 4 KB after it
    (:func:`~xnai_core._redact.redact_cut`), so a cut never splits a secret into a part the
    patterns no longer recognise, and a megabyte-long message costs what a short one does.
    """
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not turn a degradable failure into a crash
        message = "<message unprintable>"
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return redact_cut(text, MAX_REASON_LENGTH)
