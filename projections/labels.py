"""Canonical, hashable forms of JSON label values for exact-equality matching.

``1`` and ``"1"`` differ, ``true`` and ``1`` differ, ``1`` and ``1.0`` are the
same JSON number. Strings match case-sensitively and literally.
"""

from __future__ import annotations

from typing import Any

RESERVED = ("run_id", "graph_id", "node_id", "project_id")


def canon(value: Any) -> Any:
    """Return a hashable key that is equal exactly when the JSON values are equal."""
    t = type(value)
    if t is str:
        return ("s", value)
    if t is bool:
        return ("b", value)
    if t is int:
        return ("n", value)
    if t is float:
        return ("n", int(value)) if value.is_integer() else ("n", value)
    if value is None:
        return ("z",)
    if t is list or t is tuple:
        return ("l", tuple(canon(v) for v in value))
    raise TypeError(f"{value!r} is not a JSON scalar or list of scalars")
