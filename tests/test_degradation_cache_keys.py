"""The default cache key: equal calls share a key, anything it cannot see is refused."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xnai_core.degradation.cache_keys import UnkeyableError, default_cache_key
from xnai_core.degradation.call import ServiceCall


async def generate(prompt: str, *, temperature: float = 0.0) -> str:
    return prompt


async def summarise(prompt: str, *, temperature: float = 0.0) -> str:
    return prompt


class Client:
    @classmethod
    async def build(cls, name: str) -> str:
        return name

    @staticmethod
    async def ping(name: str) -> str:
        return name

    async def generate(self, prompt: str) -> str:
        return prompt


def passthrough(func: Any) -> Any:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


wrapped_generate = passthrough(generate)


def key(func: Any, *args: Any, **kwargs: Any) -> str:
    return default_cache_key(ServiceCall("svc", func, args, kwargs))


def test_equal_calls_share_a_key() -> None:
    """Same function, equal arguments, keyword order irrelevant: one key (a hex digest)."""
    first = key(generate, "q", temperature=0.5)
    assert first == key(generate, "q", temperature=0.5)
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert key(Client.ping, "a", b=1, c=2) == key(Client.ping, "a", c=2, b=1)


def test_functions_and_arguments_change_the_key() -> None:
    """Another function, another argument or another keyword: another key."""
    keys = {
        key(generate, "q"),
        key(summarise, "q"),
        key(generate, "r"),
        key(generate, "q", temperature=0.5),
        key(generate, prompt="q"),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    "values",
    [
        (1, 1.0, True, "1", b"1"),
        ((1, 2), [1, 2], {"0": 1, "1": 2}),
        (["tuple", 1], (1,), [1]),
        (None, "None", 0, False, [], (), {}),
    ],
)
def test_types_are_part_of_the_key(values: tuple[object, ...]) -> None:
    """Values equal in Python or in JSON but of different types do not share a key."""
    keys = {key(generate, value) for value in values}
    assert len(keys) == len(values)


def test_named_callables_are_keyable() -> None:
    """Classmethods, staticmethods, builtins, partials and wraps-wrappers have a key."""
    assert key(Client.build, "x") != key(Client.ping, "x")
    assert key(len, "abc")
    assert key(functools.partial(generate, temperature=1.0), "q") != key(generate, "q")
    assert key(wrapped_generate, "q") == key(passthrough(generate), "q")
    # The wrapper's own code is part of the key: a decorator may change the answer.
    assert key(wrapped_generate, "q") != key(generate, "q")


def test_arguments_of_a_partial_join_the_key() -> None:
    """partial(f, 1)() and partial(f, 2)() differ; partial(f, 'q')() equals f('q') only by name."""
    assert key(functools.partial(generate, "a")) != key(functools.partial(generate, "b"))


@pytest.mark.parametrize(
    ("func", "reason"),
    [
        (lambda prompt: prompt, "has no unique qualified name"),
        (Client().generate, "bound to an instance"),
        ({}.get, "bound to an instance"),
        (Client(), "objects are not keyable by name"),
    ],
)
def test_callables_with_hidden_state_are_refused(func: Any, reason: str) -> None:
    """Lambdas, bound methods and callable objects cannot be keyed safely."""
    with pytest.raises(UnkeyableError, match=reason):
        key(func, "q")


def test_closures_are_refused() -> None:
    """Two closures with one qualified name but different captured values must not collide."""

    def make(suffix: str) -> Any:
        async def answer(prompt: str) -> str:
            return prompt + suffix

        return answer

    with pytest.raises(UnkeyableError, match="is a closure"):
        key(make("!"), "q")


def with_model(model: str, retries: int = 1) -> Any:
    """A decorator factory: each wrapper it makes captures its configuration."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        async def wrapper(prompt: str) -> Any:
            return await func(prompt, model=model, retries=retries)

        return wrapper

    return decorate


def with_tenant(model: str) -> Any:
    """Another factory that captures the same kind of value."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        async def wrapper(prompt: str) -> Any:
            return await func(f"[{model}] {prompt}")

        return wrapper

    return decorate


def test_differently_configured_wrappers_of_one_function_get_different_keys() -> None:
    """functools.wraps wrappers that captured another model name must not share entries;
    equally configured ones do."""
    gpt, llama = with_model("gpt")(generate), with_model("llama")(generate)
    assert gpt.__qualname__ == llama.__qualname__ == "generate"  # wraps hides the difference
    assert key(gpt, "q") != key(llama, "q")
    assert key(gpt, "q") == key(with_model("gpt")(generate), "q")
    assert key(with_model("gpt", retries=2)(generate), "q") != key(gpt, "q")
    assert key(with_tenant("gpt")(generate), "q") != key(gpt, "q")  # another wrapper's code


def test_every_layer_of_a_wrapper_chain_is_in_the_key() -> None:
    """The outer layer's configuration counts as much as the inner one's."""
    inner = passthrough(generate)
    assert key(with_model("gpt")(inner), "q") != key(with_model("llama")(inner), "q")
    assert key(passthrough(with_model("gpt")(generate)), "q") != key(
        passthrough(with_model("llama")(generate)), "q"
    )
    partial_inside = with_model("gpt")(functools.partial(generate, temperature=1.0))
    assert key(partial_inside, "q") != key(with_model("gpt")(generate), "q")


@pytest.mark.parametrize("captured", [Client(), object(), {"a"}, lambda: "gpt", summarise])
def test_wrapper_capturing_more_than_plain_data_is_refused(captured: object) -> None:
    """A wrapper whose captured values are not plain data cannot be keyed safely."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        async def wrapper(prompt: str) -> Any:
            return await func(prompt, helper=captured)

        return wrapper

    with pytest.raises(UnkeyableError, match=r"is a closure over 'captured' \("):
        key(decorate(generate), "q")
    with pytest.raises(UnkeyableError, match=r"is a closure over 'captured' \("):
        key(passthrough(decorate(generate)), "q")  # found below the outer layer too


def test_wrapped_chain_that_loops_is_refused() -> None:
    """A __wrapped__ cycle ends in a refusal, not in endless recursion."""

    async def first(prompt: str) -> str:
        return prompt

    async def second(prompt: str) -> str:
        return prompt

    first.__wrapped__ = second  # type: ignore[attr-defined]
    second.__wrapped__ = first  # type: ignore[attr-defined]
    with pytest.raises(UnkeyableError, match="wrapped more than 100 deep"):
        key(first, "q")


def test_nested_functions_are_refused() -> None:
    """A nested function has '<locals>' in its name: several objects may share it."""

    async def nested(prompt: str) -> str:
        return prompt

    with pytest.raises(UnkeyableError, match="has no unique qualified name"):
        key(nested, "q")


@pytest.mark.parametrize(
    "argument",
    [object(), {1: "int key"}, {"a"}, Client(), 1 + 2j, bytearray(b"x")],
)
def test_arguments_that_are_not_plain_data_are_refused(argument: object) -> None:
    """Objects, sets, non-str dict keys: their equality is unknown, so no key."""
    with pytest.raises(UnkeyableError):
        key(generate, argument)


def test_deep_nesting_is_refused() -> None:
    """Absurdly deep arguments are refused instead of recursing without bound."""
    deep: list[object] = []
    for _ in range(60):
        deep = [deep]
    with pytest.raises(UnkeyableError, match="nested deeper"):
        key(generate, deep)


plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


def typed(value: object) -> object:
    """A structure equal to another only when values and types match exactly."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(typed(v) for v in value))
    return (type(value).__name__, repr(value))


@given(plain_data, plain_data)
def test_keys_match_exactly_when_arguments_match(a: object, b: object) -> None:
    """Two calls share a key if and only if their arguments match in type and value."""
    assert key(generate, a) == key(generate, copy.deepcopy(a))
    assert (key(generate, a) == key(generate, b)) == (typed(a) == typed(b))
