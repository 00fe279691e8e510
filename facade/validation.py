"""Argument checks: every bad input is rejected, naming what was wrong, before any write."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import msgspec

from ..ledger.events import Event, encode_event
from ..projections.labels import RESERVED

SCOPE_NAMES = ("node", "graph", "run", "project", "all")
MODES = ("max", "min")
_SCALARS = (str, int, float, bool, type(None))
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Integers the msgpack event encoding can hold; anything wider would fail at append time.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

# Size limits (README, "Limits"). The log's reader refuses records over 64 MiB
# (ledger/framing.py: MAX_BODY); these keep every event far below that, and are
# checked before any byte of an artifact is stored.
MAX_KEY_CHARS = 256  # a label or metric key
MAX_LABEL_STR_CHARS = 65_536  # a string label value, or a string inside a label list
MAX_LABEL_LIST_ITEMS = 10_000  # items of one list label value
MAX_LABELS = 1_000  # labels of one artifact (or of one query)
MAX_METRICS = 1_000  # metrics of one artifact
MAX_EVENT_BYTES = 1024 * 1024  # one encoded event (the msgpack payload of a log record)


def _check_text(where: str, value: str) -> str:
    """A string that can be stored: UTF-8 encodable (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} {value!r} is not valid Unicode text (lone surrogate)") from None
    return value


def _check_int(where: str, value: int) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"{where} is {value}; integers must lie in [-2**63, 2**64-1]")
    return value


def check_id(name: str, value: Any) -> str:
    """A run/graph/node id: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r}")
    return _check_text(name, value)


def check_kind(kind: Any) -> str:
    """An artifact kind: a non-empty string."""
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, got {type(kind).__name__}")
    if not kind.strip():
        raise ValueError("kind must be a non-empty string")
    return _check_text("kind", kind)


def _check_key(where: str, key: str) -> str:
    _check_text(where, key)
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{where} {key[:40]!r}... is {len(key)} characters; keys may have at most "
                         f"{MAX_KEY_CHARS} (MAX_KEY_CHARS)")
    return key


def _check_label_value(where: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        # Checked before the items: a huge list is refused without walking it.
        if len(value) > MAX_LABEL_LIST_ITEMS:
            raise ValueError(f"{where} is a list of {len(value)} items; label lists may hold at most "
                             f"{MAX_LABEL_LIST_ITEMS} (MAX_LABEL_LIST_ITEMS)")
        out = []
        for i, item in enumerate(value):
            out.append(_check_scalar(f"{where}[{i}]", item))
        return out
    return _check_scalar(where, value)


def _check_scalar(where: str, value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise TypeError(
            f"{where} is a {type(value).__name__}; label values must be JSON scalars "
            "(str, int, float, bool, None) or lists of them"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; label numbers must be finite")
    # Normalise subclasses (e.g. str enums) to the plain JSON type.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _check_int(where, int(value))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_LABEL_STR_CHARS:
            raise ValueError(f"{where} is a string of {len(value)} characters; label strings may have at "
                             f"most {MAX_LABEL_STR_CHARS} (MAX_LABEL_STR_CHARS)")
        return _check_text(where, str(value))
    return value


def check_label_map(name: str, labels: Any) -> dict[str, Any]:
    """A mapping of str keys to JSON scalars or lists of scalars."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise TypeError(f"{name} must be a dict, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{name} has {len(labels)} entries; at most {MAX_LABELS} are allowed (MAX_LABELS)")
    out: dict[str, Any] = {}
    for key, value in labels.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} key {key!r} is a {type(key).__name__}; keys must be strings")
        _check_key(f"{name} key", key)
        out[key] = _check_label_value(f"{name}[{key!r}]", value)
    return out


def check_labels(labels: Any, bound: dict[str, str | None]) -> dict[str, Any]:
    """Labels to record; reserved id keys may only repeat the facade's binding."""
    out = check_label_map("labels", labels)
    for key in RESERVED:
        if key in out:
            if out[key] != bound[key] or bound[key] is None:
                raise ValueError(
                    f"labels[{key!r}]={out[key]!r} conflicts with the facade's {key}={bound[key]!r}; "
                    f"{key} is set from the context the facade is bound to"
                )
            del out[key]
    return out


def check_metrics(metrics: Any) -> dict[str, int | float]:
    """Metrics: str keys to finite numbers (bools are not numbers here)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"metrics has {len(metrics)} entries; at most {MAX_METRICS} are allowed (MAX_METRICS)")
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metrics key {key!r} is a {type(key).__name__}; keys must be strings")
        if not key:
            # search/best refuse an empty metric name, so such a metric could never be ranked.
            raise ValueError("metrics key '' is empty; metric names must be non-empty strings")
        _check_key("metrics key", key)
        # Plain ints and floats skip the numbers ABCs' isinstance checks, which cost more than the rest.
        t = type(value)
        if t is int:
            out[key] = _check_int(f"metrics[{key!r}]", value)
            continue
        if t is not float:
            if isinstance(value, bool) or t.__name__ == "bool_" or not isinstance(value, numbers.Real):
                raise TypeError(f"metrics[{key!r}] is a {t.__name__}; metrics must be finite numbers")
            # numbers.Integral/Real admit NumPy scalars (np.int64, np.float32), stored as plain int/float.
            if isinstance(value, numbers.Integral):
                out[key] = _check_int(f"metrics[{key!r}]", int(value))
                continue
            value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metrics[{key!r}] is {value}; metrics must be finite numbers")
        out[key] = value
    return out


def check_suggested_uri(uri: Any) -> str | None:
    """A relative, root-confined path hint; absolute paths, schemes and '..' are refused."""
    if uri is None:
        return None
    if not isinstance(uri, str):
        raise TypeError(f"suggested_uri must be a string, got {type(uri).__name__}")
    if not uri or "\x00" in uri:
        raise ValueError(f"suggested_uri {uri!r} is empty or contains NUL")
    _check_text("suggested_uri", uri)
    if uri.startswith(("/", "\\")) or _SCHEME.match(uri):
        raise ValueError(f"suggested_uri {uri!r} is absolute; it must be a relative path inside the store")
    parts = re.split(r"[\\/]+", uri)
    if ".." in parts:
        raise ValueError(f"suggested_uri {uri!r} contains '..'; it must stay inside the store")
    return uri


def check_bool(name: str, value: Any) -> bool:
    """A real bool (not a truthy object)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_scope(scope: Any) -> str:
    """One of the five scope names."""
    if scope not in SCOPE_NAMES:
        raise ValueError(f"scope must be one of {', '.join(map(repr, SCOPE_NAMES))}; got {scope!r}")
    return scope


def check_ranking(metric: Any, mode: Any, *, required: bool) -> None:
    """metric and mode come together; mode is 'max' or 'min'."""
    if metric is None and mode is None and not required:
        return
    if metric is None or mode is None:
        raise ValueError("metric and mode must be given together (mode is 'max' or 'min')")
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must be a non-empty string, got {metric!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def check_suffix(name: str, value: Any) -> str:
    """A file-name suffix: no path separators, no NUL."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if "/" in value or "\\" in value or "\x00" in value or value in (".", ".."):
        raise ValueError(f"{name} {value!r} must be a plain suffix without path separators")
    if len(value) > 100:
        raise ValueError(f"{name} is {len(value)} characters; at most 100 are allowed")
    return value


def check_limit(limit: Any) -> int | None:
    """A result limit: None, or a non-negative int (0 gives no results)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be a non-negative integer or None, got {limit!r}")
    if limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit}")
    return limit


def check_event_size(event: Event) -> bytes:
    """The encoded event, if it fits in MAX_EVENT_BYTES; else a ValueError naming its largest field."""
    payload = encode_event(event)
    if len(payload) > MAX_EVENT_BYTES:
        sizes = {f: len(msgspec.msgpack.encode(getattr(event, f))) for f in event.__struct_fields__}
        field = max(sizes, key=sizes.__getitem__)
        raise ValueError(
            f"the event would be {len(payload)} bytes encoded, over the limit of {MAX_EVENT_BYTES} bytes "
            f"(MAX_EVENT_BYTES, 1 MiB); its largest field is {field} ({sizes[field]} bytes). "
            "Store large data as the artifact's content, not in labels or metrics"
        )
    return payload
