"""How RedisCache writes an answer: exact JSON, never pickle, never eval.

An answer is cached only if it comes back as exactly what went in, so a caller gets the
same value whether the primary answered (a miss) or the cache did (a hit):

- ``None``, ``bool``, ``int``, ``float`` (finite) and ``str``, by their exact types;
- ``list``, ``tuple`` and ``dict`` with ``str`` keys of those, by their exact types. JSON
  has no tuple: a tuple is written as ``{"__xnai_tuple__": [...]}``, and a dict whose only
  key is one of the two tags is wrapped as ``{"__xnai_dict__": {...}}`` so it cannot be
  mistaken for one.

Anything else is refused with :class:`UnencodableError`: a namedtuple (it would come back
as a plain tuple), an enum, ``IntEnum`` included (an int), a subclass of a builtin, a set,
bytes, a dataclass. Rebuilding those would mean importing a class named by what Redis
holds, which is what pickle does and what we never do.
"""

from __future__ import annotations

import enum
import json
import math

__all__ = ["MAX_DEPTH", "UnencodableError", "decode", "encode"]

MAX_DEPTH = 100
"""Nesting deeper than this is not cached (and not read back)."""

_TUPLE = "__xnai_tuple__"
_DICT = "__xnai_dict__"
_TAGS = frozenset({_TUPLE, _DICT})


class UnencodableError(TypeError):
    """An answer JSON cannot hold exactly; ``problem`` says what (for a log line)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def encode(value: object, stored_at: float) -> str:
    """The JSON text of an entry: ``{"v": value, "t": stored_at}``; UnencodableError if the
    value would not come back exactly."""
    return json.dumps(
        {"v": _to_json(value, 0), "t": stored_at}, allow_nan=False, separators=(",", ":")
    )


def decode(raw: bytes | str) -> tuple[object, float] | None:
    """``(value, stored_at)`` from what :func:`encode` wrote, or None for anything else."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or "v" not in data:
        return None
    stored_at = data.get("t")
    if not isinstance(stored_at, int | float) or isinstance(stored_at, bool):
        return None
    try:
        return _from_json(data["v"], 0), float(stored_at)
    except ValueError:
        return None


def _refuse_constant(name: str) -> float:
    # NaN and Infinity are not JSON, and encode() never writes them: an entry holding one
    # (a "t" of Infinity would stay fresh for ever) was not written by us.
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} overflows a float")
    return number


def _to_json(value: object, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise UnencodableError(f"a structure nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if isinstance(value, float) and kind is float:
        if not math.isfinite(value):
            raise UnencodableError("a non-finite float")
        return value
    if isinstance(value, list) and kind is list:
        return [_to_json(item, depth + 1) for item in value]
    if isinstance(value, tuple) and kind is tuple:
        return {_TUPLE: [_to_json(item, depth + 1) for item in value]}
    if isinstance(value, dict) and kind is dict:
        encoded: dict[str, object] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise UnencodableError(f"a dict key of type {type(key).__qualname__}")
            encoded[key] = _to_json(item, depth + 1)
        if len(encoded) == 1 and next(iter(encoded)) in _TAGS:
            return {_DICT: encoded}
        return encoded
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        raise UnencodableError(f"a namedtuple ({kind.__qualname__})")
    what = "an enum" if isinstance(value, enum.Enum) else "a value"
    raise UnencodableError(f"{what} of type {kind.__qualname__}")


def _from_json(value: object, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if isinstance(value, list):
        return [_from_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            tag, inner = next(iter(value.items()))
            if tag == _TUPLE:
                if not isinstance(inner, list):
                    raise ValueError("a tuple tag without a list")
                return tuple(_from_json(item, depth + 1) for item in inner)
            if tag == _DICT:
                if not isinstance(inner, dict):
                    raise ValueError("a dict tag without a dict")
                return {key: _from_json(item, depth + 1) for key, item in inner.items()}
        return {key: _from_json(item, depth + 1) for key, item in value.items()}
    return value
