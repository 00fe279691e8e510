"""Read-side queries over a Catalog: filtering, ranking and best-by-metric.

Pure functions; the facade turns scopes and label filters into a ``Filter``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, Row
from .labels import canon

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Filter:
    """Conjunction of exact label equalities (ids included) and an optional kind.

    ``impossible`` marks a filter that two constraints made unsatisfiable.
    """

    labels: tuple[tuple[str, Any], ...] = ()
    kind: str | None = None
    impossible: bool = False

    @classmethod
    def build(cls, constraints: dict[str, Any], extra: dict[str, Any] | None, kind: str | None) -> "Filter":
        """AND together scope constraints and user label filters (values canonicalised)."""
        merged = {k: canon(v) for k, v in constraints.items()}
        for k, v in (extra or {}).items():
            c = canon(v)
            if merged.get(k, c) != c:
                return cls(kind=kind, impossible=True)
            merged[k] = c
        return cls(labels=tuple(sorted(merged.items())), kind=kind)


def _candidates(state: Catalog, f: Filter) -> list[Row]:
    """The shortest index list that every match must appear in."""
    lists: list[list[Row]] = []
    lab = dict(f.labels)
    run, graph, node = lab.get("run_id"), lab.get("graph_id"), lab.get("node_id")
    if run is not None and graph is not None and run[0] == "s" and graph[0] == "s":
        if node is not None and node[0] == "s":
            lists.append(state.by_node.get((run[1], graph[1], node[1]), []))
        else:
            lists.append(state.by_graph.get((run[1], graph[1]), []))
    for item in f.labels:
        lists.append(state.by_label.get(item, []))
    if f.kind is not None:
        lists.append(state.by_kind.get(f.kind, []))
    if not lists:
        return state.ordered
    return min(lists, key=len)


def _matches(row: Row, f: Filter) -> bool:
    if f.kind is not None and row.ev.kind != f.kind:
        return False
    keys = row.keys
    for k, c in f.labels:
        if keys.get(k, _MISSING) != c:
            return False
    return True


def select(state: Catalog, f: Filter, limit: int | None = None) -> list[Row]:
    """Matching rows, newest first (highest seq first); at most ``limit`` of them."""
    if f.impossible or limit == 0:
        return []
    out: list[Row] = []
    for row in reversed(_candidates(state, f)):
        if _matches(row, f):
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
    return out


def rank(state: Catalog, f: Filter, metric: str, mode: str, limit: int | None = None) -> list[Row]:
    """Rows having ``metric``, best first; ties broken newest first."""
    if f.impossible:
        return []
    rows = [r for r in _candidates(state, f) if metric in r.ev.metrics and _matches(r, f)]
    if mode == "max":
        rows.sort(key=lambda r: (r.ev.metrics[metric], r.seq), reverse=True)
    else:
        rows.sort(key=lambda r: (-r.ev.metrics[metric], r.seq), reverse=True)
    return rows if limit is None else rows[:limit]


_TABLE_SCOPES = {
    (): ("all", lambda lab: None),
    ("run_id",): ("run", lambda lab: lab["run_id"][1]),
    ("graph_id", "run_id"): ("graph", lambda lab: (lab["run_id"][1], lab["graph_id"][1])),
    ("graph_id", "node_id", "run_id"): ("node", lambda lab: (lab["run_id"][1], lab["graph_id"][1], lab["node_id"][1])),
    ("project_id",): ("project", lambda lab: lab["project_id"][1]),
}


def best(state: Catalog, f: Filter, metric: str, mode: str) -> Row | None:
    """The first row of ``rank``: O(1) from the best tables when the filter is a plain scope."""
    if f.impossible:
        return None
    lab = dict(f.labels)
    table = _TABLE_SCOPES.get(tuple(k for k, _ in f.labels))
    if table is not None and f.kind is not None and all(c[0] == "s" for c in lab.values()):
        entry = state.best.get((table[0], table[1](lab), f.kind, metric))
        if entry is None:
            return None
        return entry[0] if mode == "max" else entry[1]
    winner: Row | None = None
    wv: Any = None
    for r in _candidates(state, f):
        v = r.ev.metrics.get(metric, _MISSING)
        if v is _MISSING or not _matches(r, f):
            continue
        # Candidates ascend in seq, so >= / <= lets the newer of equal values win.
        if winner is None or (v >= wv if mode == "max" else v <= wv):
            winner, wv = r, v
    return winner


def by_uri_sha(state: Catalog, sha256: str) -> Row | None:
    """The newest artifact over a blob (URIs name blobs, which artifacts may share)."""
    rows = state.by_sha.get(sha256)
    return rows[-1] if rows else None
