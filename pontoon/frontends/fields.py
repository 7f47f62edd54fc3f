"""Reading typed fields of a decoded JSON request body, for every front end
that takes one (the HTTP API, the Docker plugin): a wrong type is the
caller's error, one line, never an internal one."""

from __future__ import annotations

import re
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


def boolean(data: dict[str, Any], key: str, default: bool) -> bool:
    """`data[key]` as JSON's true or false; absent: `default`."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key} must be true or false")
    return value


def mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` as an object; absent, null or empty: {}."""
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{key} must be an object")
    return value


def array(data: dict[str, Any], key: str) -> list[Any]:
    """`data[key]` as a list (of anything); absent, null or empty: []."""
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidArgument(f"{key} must be a list")
    return value


def whole_number(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """`data[key]` as a whole number in [low, high]: JSON's, not a float, a
    bool nor a text; absent or null: `default`."""
    value = data.get(key)
    if value is None:
        value = default
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{key} must be a whole number from {low} to {high}")
    return value


MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def mac(data: dict[str, Any], key: str) -> str:
    """`data[key]` as a MAC address in lower case; absent, null or empty: ""."""
    value = string(data, key).lower()
    if value and not MAC_RE.fullmatch(value):
        raise InvalidArgument(f"invalid MAC address {value!r}")
    return value
