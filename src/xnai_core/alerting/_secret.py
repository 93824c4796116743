"""A credential that never shows itself: not in reprs, logs, stats or tracebacks' locals."""

from __future__ import annotations

from typing import Final

MASK: Final = "***"


class Secret:
    """Holds a URL, key, token or password; only :meth:`reveal` gives it back.

    Sinks keep every credential (a Slack webhook URL is one: its path is the
    token) in a ``Secret`` so that ``repr(sink)``, ``vars(sink)`` dumped by a
    debugger or a log formatter, and ``str()`` of any of them show ``***``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one place that sends it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would write the credential wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")
