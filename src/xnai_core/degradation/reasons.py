"""Short, credential-free descriptions of errors, for stats, logs and events."""

from __future__ import annotations

import re

# user:password@ in any URL (redis://, postgresql://, http://) and key=value
# secrets in DSNs or messages. Applied to every reason we keep or log, because
# connection errors often echo the URL they failed on.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^@\s/]*@"
)
_KEY_VALUE_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key)\b\s*[=:]\s*)(?P<value>[^\s,;&]+)",
    re.IGNORECASE,
)
MAX_REASON_LENGTH = 300


def redact(text: str) -> str:
    """``text`` with URL passwords and ``password=...`` style secrets masked."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _KEY_VALUE_SECRET.sub(r"\g<key>***", text)


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, redacted and cut to a readable length."""
    message = str(error)
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    text = redact(text)
    if len(text) > MAX_REASON_LENGTH:
        text = text[: MAX_REASON_LENGTH - 3] + "..."
    return text
