"""Reading typed fields of a decoded JSON request body, for every front end
that takes one (the HTTP API, the Docker plugin): a wrong type is the
caller's error, one line, never an internal one."""

from __future__ import annotations

from typing import Any

from pontoon.errors import InvalidArgument


def string(data: dict[str, Any], key: str) -> str:
    """`data[key]` as a string; absent, null or empty: ""."""
    value = data.get(key) or ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


def string_list(data: dict[str, Any], key: str) -> list[str]:
    """`data[key]` as a list of strings; absent, null or empty: []."""
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key} must be a list of strings")
    return value
