"""Reading one TOML table with typed getters: every problem names its key path.

``Table(data, "services[2]")`` hands out values by key (``table.seconds("timeout")``)
and, at :meth:`Table.done`, refuses every key nobody asked for, with a did-you-mean.
The rules themselves come from ``xnai_core._validation``, so a file and a constructor
refuse the same values with the same words.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._validation import MAX_COUNT, MAX_SECONDS, check_int, check_seconds


class ConfigError(ValueError):
    """Raised when a config file cannot be used: ``<file>: <key path>: <problem>``."""

    def __init__(self, key: str, problem: str, *, file: str = "<config>") -> None:
        # A key or value of megabytes is quoted in part: the error stays one short line.
        key, problem = _clipped(key, 200), _clipped(problem, 400)
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem

    def in_file(self, file: str) -> ConfigError:
        """The same error, naming ``file``."""
        return ConfigError(self.key, self.problem, file=file)


def _clipped(text: str, limit: int) -> str:
    """``text``, or its start and end around how much was left out when longer than
    ``limit`` (the end may hold a did-you-mean)."""
    if len(text) <= limit:
        return text
    head, tail = limit // 2, limit // 5  # with the note, within limit: clipped once
    return f"{text[:head]}...({len(text) - head - tail} characters)...{text[-tail:]}"


def _problem(exc: Exception, field: str) -> str:
    """``'timeout' must be > 0 seconds: -1`` -> ``must be > 0 seconds: -1``."""
    text = str(exc)
    quoted = f"'{field}' "
    return text[len(quoted) :] if text.startswith(quoted) else text


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def suggestion(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'timeout'?)`` when ``key`` is close to a known one, else ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Table:
    """One TOML table at ``path``; every getter consumes its key."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a table, got {_type_name(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """The key path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self.data.get(name)

    def done(self, extra_known: Iterable[str] = ()) -> None:
        """Refuse every key of this table that no getter read."""
        known = self._seen | set(extra_known)
        for name in self.data:
            if name not in known:
                raise self.error(name, f"unknown key{suggestion(name, known)}")

    # -- typed getters -----------------------------------------------------------

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return default
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {_show(value)}")
        return value

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        options = tuple(choices)
        value = self.text(name, default, required=default is None)
        assert value is not None
        if value not in options:
            listed = ", ".join(repr(option) for option in options)
            raise self.error(
                name, f"must be one of {listed}, got {value!r}{suggestion(value, options)}"
            )
        return value

    def seconds(
        self,
        name: str,
        default: float | None,
        *,
        allow_zero: bool = False,
        maximum: float = MAX_SECONDS,
    ) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return check_seconds(name, value, allow_zero=allow_zero, maximum=maximum)
        except (TypeError, ValueError) as exc:
            raise self.error(name, _problem(exc, name)) from None

    def number(self, name: str, default: float | None, *, minimum: float = 0.0) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(name, f"must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number, got {value!r}")
        if value < minimum:
            raise self.error(name, f"must be >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(
        self, name: str, default: int | None, *, minimum: int, maximum: int = MAX_COUNT
    ) -> int | None:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return check_int(name, value, minimum, maximum=maximum)
        except (TypeError, ValueError) as exc:
            raise self.error(name, _problem(exc, name)) from None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_show(value)}")
        return value

    def strings(self, name: str, *, required: bool = False) -> tuple[str, ...] | None:
        """A non-empty array of non-empty strings."""
        value = self.raw(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return None
        if isinstance(value, str):
            raise self.error(name, f"must be an array of strings, not a string: {_show(value)}")
        if not isinstance(value, list) or not value:
            raise self.error(name, f"must be a non-empty array of strings, got {_show(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"{self.key(name)}[{index}]", f"must be a non-empty string, got {_show(item)}"
                )
        return tuple(value)

    def table(self, name: str) -> Table:
        """A sub-table (an empty one when absent)."""
        value = self.raw(name)
        return Table({} if value is None else value, self.key(name))

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``), each with its indexed path."""
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{name}]]), got {_show(value)}")
        return [Table(item, f"{self.key(name)}[{index}]") for index, item in enumerate(value)]


def _show(value: object) -> str:
    """A value for an error message: its type, and the value when it is short and plain."""
    if isinstance(value, bool | int | float):
        return f"{_type_name(value)} {value!r}"
    if isinstance(value, str):
        # A string may be a credential written in the wrong key: show its shape only.
        return f"a string of {len(value)} characters" if value else "an empty string"
    return _type_name(value)
