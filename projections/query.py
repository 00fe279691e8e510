"""Read-side queries over a Catalog: filtering, ranking and best-by-metric.

Pure functions. ``upto`` restricts every query to the catalogue as it was after
event ``upto`` (index lists are in seq order, so that is a cut of each list).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, Row
from .labels import RESERVED, canon

_MISSING = object()


def _seq(row: Row) -> int:
    return row.seq


@dataclass(frozen=True, slots=True)
class Filter:
    """Conjunction of exact label equalities (ids included) and an optional kind.

    ``impossible`` marks a filter that two constraints made unsatisfiable.
    """

    ids: tuple[tuple[str, Any], ...] = ()
    labels: tuple[tuple[str, Any], ...] = ()
    kind: str | None = None
    impossible: bool = False

    @classmethod
    def build(cls, constraints: dict[str, Any], extra: dict[str, Any] | None, kind: str | None) -> "Filter":
        """AND together scope constraints and user label filters (values canonicalised)."""
        merged = {k: canon(v) for k, v in constraints.items()}
        for k, v in (extra or {}).items():
            c = canon(v)
            if k in merged and merged[k] != c:
                return cls(kind=kind, impossible=True)
            merged[k] = c
        ids = tuple(sorted((k, v) for k, v in merged.items() if k in RESERVED))
        labels = tuple(sorted((k, v) for k, v in merged.items() if k not in RESERVED))
        return cls(ids=ids, labels=labels, kind=kind)


def visible(state: Catalog, upto: int | None) -> int | None:
    """Normalise ``upto``: None when it covers the whole state."""
    return None if upto is None or upto >= state.head_seq else upto


def _cut(lst: list[Row], upto: int | None) -> int:
    if upto is None or not lst or lst[-1].seq <= upto:
        return len(lst)
    return bisect_right(lst, upto, key=_seq)


def _candidates(state: Catalog, f: Filter) -> list[Row]:
    """The shortest index list that every match must appear in."""
    lists: list[list[Row]] = []
    ids = dict(f.ids)
    run, graph, node = ids.get("run_id", _MISSING), ids.get("graph_id", _MISSING), ids.get("node_id", _MISSING)
    if type(run) is str and type(graph) is str:
        if type(node) is str:
            lists.append(state.by_node.get((run, graph, node), []))
        else:
            lists.append(state.by_graph.get((run, graph), []))
    for item in f.ids:
        lists.append(state.by_label.get(item, []))
    for item in f.labels:
        lists.append(state.by_label.get(item, []))
    if f.kind is not None:
        lists.append(state.by_kind.get(f.kind, []))
    if not lists:
        return state.ordered
    return min(lists, key=len)


def _matches(row: Row, f: Filter) -> bool:
    ev = row.ev
    if f.kind is not None and ev.kind != f.kind:
        return False
    for k, c in f.ids:
        if getattr(ev, k) != c:
            return False
    keys = row.keys
    for k, c in f.labels:
        if keys.get(k, _MISSING) != c:
            return False
    return True


def select(state: Catalog, f: Filter, limit: int | None = None, upto: int | None = None) -> list[Row]:
    """Matching rows, newest first (highest seq first)."""
    if f.impossible or limit == 0:
        return []
    cand = _candidates(state, f)
    out: list[Row] = []
    for i in range(_cut(cand, visible(state, upto)) - 1, -1, -1):
        row = cand[i]
        if _matches(row, f):
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
    return out


def rank(state: Catalog, f: Filter, metric: str, mode: str, limit: int | None = None,
         upto: int | None = None) -> list[Row]:
    """Rows having ``metric``, best first; ties broken newest first."""
    if f.impossible:
        return []
    cand = _candidates(state, f)
    n = _cut(cand, visible(state, upto))
    rows = [r for r in (cand if n == len(cand) else cand[:n]) if metric in r.ev.metrics and _matches(r, f)]
    if mode == "max":
        rows.sort(key=lambda r: (r.ev.metrics[metric], r.seq), reverse=True)
    else:
        rows.sort(key=lambda r: (-r.ev.metrics[metric], r.seq), reverse=True)
    return rows if limit is None else rows[:limit]


def _table_key(f: Filter) -> tuple[str, Any] | None:
    """The best-table (scope, key) a filter is exactly equivalent to, if any."""
    if f.labels or f.kind is None:
        return None
    ids = dict(f.ids)
    if not all(type(v) is str for v in ids.values()):
        return None
    names = tuple(k for k, _ in f.ids)
    if names == ():
        return ("all", None)
    if names == ("run_id",):
        return ("run", ids["run_id"])
    if names == ("graph_id", "run_id"):
        return ("graph", (ids["run_id"], ids["graph_id"]))
    if names == ("graph_id", "node_id", "run_id"):
        return ("node", (ids["run_id"], ids["graph_id"], ids["node_id"]))
    if names == ("project_id",):
        return ("project", ids["project_id"])
    return None


def _scan_best(state: Catalog, f: Filter, metric: str, upto: int | None) -> list[Row | None]:
    """[max row, min row] by a linear pass; later rows win ties (they are newer)."""
    hi: Row | None = None
    lo: Row | None = None
    hv: Any = None
    lv: Any = None
    cand = _candidates(state, f)
    for i in range(_cut(cand, upto)):
        r = cand[i]
        v = r.ev.metrics.get(metric, _MISSING)
        if v is _MISSING or not _matches(r, f):
            continue
        if hi is None or v >= hv:
            hi, hv = r, v
        if lo is None or v <= lv:
            lo, lv = r, v
    return [hi, lo]


def best(state: Catalog, f: Filter, metric: str, mode: str, upto: int | None = None) -> Row | None:
    """The first row of ``rank``; O(1) from the best tables when the filter is a plain scope."""
    if f.impossible:
        return None
    upto = visible(state, upto)
    sk = _table_key(f) if upto is None else None
    if sk is None:
        entry = _scan_best(state, f, metric, upto)
    else:
        assert f.kind is not None
        tables = state.best.setdefault((f.kind, metric), {})
        entry = tables.get(sk)
        if entry is None:
            entry = tables[sk] = _scan_best(state, f, metric, None)
    return entry[0] if mode == "max" else entry[1]


def pinned_at(state: Catalog, row: Row, upto: int | None) -> bool:
    """An artifact's pin state after event ``upto`` (current state when None)."""
    aid = row.ev.artifact_id
    if upto is None or upto >= state.head_seq:
        return state.pinned[aid]
    hist = state.pin_history.get(aid)
    if not hist:
        return row.ev.pinned
    i = bisect_right(hist, upto, key=lambda h: h[0])
    return hist[i - 1][1] if i else row.ev.pinned


def seq_at_time(state: Catalog, ts_us: int) -> int:
    """The last seq committed at or before ``ts_us`` (0 if none)."""
    return bisect_right(state.times, ts_us)


def by_blob(state: Catalog, sha256: str, upto: int | None = None) -> Row | None:
    """The newest artifact over a blob (URIs name blobs, which artifacts may share)."""
    row = state.by_sha.get(sha256)
    upto = visible(state, upto)
    if row is None or upto is None or row.seq <= upto:
        return row
    ordered = state.ordered
    for i in range(_cut(ordered, upto) - 1, -1, -1):
        if ordered[i].ev.sha256 == sha256:
            return ordered[i]
    return None
