"""The default cache key: a digest of the function's identity and its arguments.

"Safe" means two calls share a cache entry only when they are the same function
called with equal arguments. So the default refuses (returns None, and the
strategy skips the cache for that call) whenever it cannot be sure:

* the function must be named by module and qualified name, and be the only
  object with that name: plain module-level functions, classmethods and
  staticmethods, builtins, and ``functools.partial`` of those (its bound
  arguments join the key). Lambdas, nested functions, closures, bound methods
  of instances and callable objects are refused: their behaviour depends on
  state the key cannot see. A ``functools.wraps`` wrapper is judged layer by
  layer down its ``__wrapped__`` chain: each wrapper's own code joins the key,
  and so does every value it captured (a decorator factory's model name, say)
  besides the function it wraps; a wrapper that captured anything but plain
  data is refused, since two such wrappers of one function may answer
  differently.
* arguments must be plain data: None, bool, int, float, str, bytes, and lists,
  tuples and str-keyed dicts of those. Types are part of the key, so ``1``,
  ``1.0``, ``True``, ``(1,)`` and ``[1]`` are all different keys.

The key is a SHA-256 hex digest, so argument values (prompts, user data) never
appear in Redis key names.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable
from types import FunctionType

from .call import ServiceCall

_Canonical = None | bool | int | float | str | list["_Canonical"]


class UnkeyableError(TypeError):
    """Raised inside key derivation when a call cannot be keyed safely."""


def default_cache_key(call: ServiceCall) -> str:
    """A digest of ``call``'s function and arguments; UnkeyableError if not safely keyable."""
    identity = function_identity(call.func)
    arguments = [
        _canonical(list(call.args), 0),
        _canonical_kwargs(dict(call.kwargs), 0),
    ]
    blob = json.dumps([identity, arguments], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def function_identity(func: Callable[..., object]) -> _Canonical:
    """A canonical description of ``func`` that no other function shares."""
    if isinstance(func, functools.partial):
        return [
            "partial",
            function_identity(func.func),
            _canonical(list(func.args), 0),
            _canonical_kwargs(func.keywords, 0),
        ]
    if inspect.ismethod(func):
        owner = func.__self__
        if not isinstance(owner, type):
            raise UnkeyableError(
                f"{func.__qualname__} is bound to an instance whose state the key cannot see"
            )
        return ["classmethod", _qualified(owner), func.__func__.__name__]
    if inspect.isbuiltin(func):
        owner = getattr(func, "__self__", None)
        if owner is not None and not inspect.ismodule(owner):
            raise UnkeyableError(f"{func.__qualname__} is bound to an instance")
        return ["builtin", _qualified(func)]
    if inspect.isfunction(func):
        return _function_identity(func, 0)
    raise UnkeyableError(f"{type(func).__qualname__} objects are not keyable by name")


_MAX_WRAPPERS = 100
_NOT_WRAPPED = object()


def _function_identity(func: FunctionType, depth: int) -> _Canonical:
    """A plain function, or a wrapper: its code, what it captured, then what it wraps."""
    if depth > _MAX_WRAPPERS:
        raise UnkeyableError(f"{func.__qualname__} is wrapped more than {_MAX_WRAPPERS} deep")
    wrapped = getattr(func, "__wrapped__", _NOT_WRAPPED)
    if wrapped is _NOT_WRAPPED:
        if func.__closure__:
            raise UnkeyableError(
                f"{func.__qualname__} is a closure; its captured variables are not in the key"
            )
        return ["function", _qualified(func)]
    # functools.wraps copied the wrapped function's names onto the wrapper: its own
    # code object still says which wrapper it is, and its cells what it was built with.
    code = func.__code__
    captured: list[_Canonical] = []
    for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:
            raise UnkeyableError(
                f"the wrapper {code.co_qualname} of {func.__qualname__} captures {name!r} "
                "before it is set"
            ) from None
        if value is wrapped:
            continue
        try:
            captured.append([name, _canonical(value, 0)])
        except UnkeyableError:
            raise UnkeyableError(
                f"the wrapper {code.co_qualname} of {func.__qualname__} is a closure over "
                f"{name!r} ({type(value).__qualname__}), which is not plain data to key by"
            ) from None
    module = func.__globals__.get("__name__") or "?"
    if inspect.isfunction(wrapped):
        inner = _function_identity(wrapped, depth + 1)
    elif callable(wrapped):
        inner = function_identity(wrapped)
    else:
        raise UnkeyableError(
            f"{func.__qualname__} wraps {type(wrapped).__qualname__}, not a function"
        )
    return ["wrapper", f"{module}.{code.co_qualname}", ["captured", *captured], inner]


def _qualified(obj: object) -> str:
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname or "<locals>" in qualname:
        raise UnkeyableError(f"{qualname or obj!r} has no unique qualified name")
    return f"{module}.{qualname}"


def _canonical(value: object, depth: int) -> _Canonical:
    # Containers are tagged lists, so a user list that happens to look like a
    # tag (["tuple", 1]) encodes differently from the tuple (1,).
    if depth > 50:
        raise UnkeyableError("arguments nested deeper than 50 levels")
    if value is None or isinstance(value, str):
        return value
    if type(value) is bool:
        return ["bool", value]
    if type(value) is int:
        return value
    if type(value) is float:
        return ["float", repr(value)]
    if type(value) is bytes:
        return ["bytes", value.hex()]
    if type(value) is list:
        return ["list", *(_canonical(item, depth + 1) for item in value)]
    if type(value) is tuple:
        return ["tuple", *(_canonical(item, depth + 1) for item in value)]
    if type(value) is dict:
        return _canonical_kwargs(value, depth)
    raise UnkeyableError(f"an argument of type {type(value).__qualname__} is not keyable")


def _canonical_kwargs(mapping: object, depth: int) -> _Canonical:
    if not isinstance(mapping, dict):
        raise UnkeyableError(f"a mapping of type {type(mapping).__qualname__} is not keyable")
    items: list[_Canonical] = []
    for key in sorted(mapping, key=_sort_key):
        if not isinstance(key, str):
            raise UnkeyableError(f"a dict key of type {type(key).__qualname__} is not keyable")
        items.append([key, _canonical(mapping[key], depth + 1)])
    return ["dict", *items]


def _sort_key(key: object) -> str:
    if not isinstance(key, str):
        raise UnkeyableError(f"a dict key of type {type(key).__qualname__} is not keyable")
    return key
