"""Well-formed values with a few places broken: a strategy that reaches a
parser's every check, not only its first (a value random all over fails the
first check and goes no deeper)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON value, the value itself first."""
    out = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*here, index))
    return out


@st.composite
def mutated(
    draw: st.DrawFn, base: st.SearchStrategy[Any], new: st.SearchStrategy[Any], whole: bool = True
) -> Any:
    """A well-formed value with up to three places replaced by `new` or removed
    (itself too, if `whole`): the parsers' every check is reached, not only
    the first."""
    value = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(value)[0 if whole else 1 :]))
        if not path:
            return draw(new)
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(new)
    return value
