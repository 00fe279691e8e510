"""Canonical, hashable forms of JSON label values for exact-equality matching.

``1`` and ``"1"`` differ, ``true`` and ``1`` differ, ``1`` and ``1.0`` are the
same JSON number, strings match case-sensitively and literally. Strings,
numbers and null are their own canonical form (Python already keeps them
apart); only booleans (``True == 1`` in Python) and lists need wrapping.
"""

from __future__ import annotations

from typing import Any

RESERVED = ("run_id", "graph_id", "node_id", "project_id")


def canon(value: Any) -> Any:
    """Return a hashable key that is equal exactly when the JSON values are equal."""
    t = type(value)
    if t is str or t is int or t is float or value is None:
        return value
    if t is bool:
        return ("b", value)
    if t is list or t is tuple:
        return ("l", tuple(canon(v) for v in value))
    raise TypeError(f"{value!r} is not a JSON scalar or list of scalars")


def strict(value: Any) -> Any:
    """A hashable key equal only for the same JSON value of the same Python type (1 and 1.0 differ).

    Used to keep each label value exactly as recorded; matching uses ``canon``.
    """
    t = type(value)
    if t is str or t is int or value is None:
        return value
    if t is float:
        return ("f", value)
    if t is bool:
        return ("b", value)
    if t is list or t is tuple:
        return ("l", tuple(strict(v) for v in value))
    raise TypeError(f"{value!r} is not a JSON scalar or list of scalars")
