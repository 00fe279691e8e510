"""Read-side queries over a Catalog: filtering, ranking and best-by-metric.

Pure functions. ``upto`` restricts every query to the catalogue as it was after
event ``upto``: rows are in seq order, so that is a cut of every index.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
import heapq
from itertools import compress
from typing import Any, Collection, Container

from .catalog import Catalog, Row
from .labels import RESERVED, canon

_MISSING = object()
_COLUMNS = {"run_id": "run_s", "graph_id": "graph_s", "node_id": "node_s", "project_id": "project_s"}


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


class _Plan:
    """A filter resolved against one catalogue: column ids to compare, candidates to scan.

    The candidates are the shortest index list of any constraint; constraints
    that list already guarantees are dropped from the per-row checks, so a
    plan whose ``trivial`` is set needs no check at all (its result is a cut).
    """

    __slots__ = ("cand", "checks", "pairs", "kind", "empty", "trivial")

    def __init__(self, state: Catalog, f: Filter):
        self.empty = f.impossible
        self.checks: list[tuple[array, int]] = []
        self.pairs: list[tuple[str, Any]] = []  # (key, canonical value) every row must carry
        self.kind = -1
        self.cand: array | range | None = None
        self.trivial = False
        if self.empty:
            return
        str_ids = state.str_ids
        # (index list, what it guarantees: checks, pairs, kind) per constraint
        lists: list[tuple[Any, list[tuple[array, int]], list[tuple[str, Any]], bool]] = []
        ids = dict(f.ids)
        by_id: dict[str, tuple[array, int]] = {}
        for k, c in f.ids:
            # Id columns hold strings (project_id may be None); any other JSON value never matches.
            if not (c is None or type(c) is str) or (c is None and k != "project_id"):
                self.empty = True
                return
            sid = str_ids.get(c, -1)
            if sid < 0:
                self.empty = True
                return
            by_id[k] = (getattr(state, _COLUMNS[k]), sid)
            self.checks.append(by_id[k])
            lists.append((state.by_label.get((k, c)), [by_id[k]], [], False))
        run, graph, node = ids.get("run_id"), ids.get("graph_id"), ids.get("node_id")
        if type(run) is str and type(graph) is str:
            if type(node) is str:
                lists.append((state.by_node.get((run, graph, node)),
                              [by_id["run_id"], by_id["graph_id"], by_id["node_id"]], [], False))
            else:
                lists.append((state.by_graph.get((run, graph)), [by_id["run_id"], by_id["graph_id"]], [], False))
        for item in f.labels:
            self.pairs.append(item)
            lists.append((state.by_label.get(item), [], [item], False))
        if f.kind is not None:
            kind_id = str_ids.get(f.kind, -1)
            if kind_id < 0:
                self.empty = True
                return
            self.kind = kind_id
            lists.append((state.by_kind.get(f.kind), [], [], True))
        if any(x[0] is None for x in lists):
            self.empty = True
            return
        if not lists:
            self.cand = range(len(state.ids))
            self.trivial = True
            return
        cand, checks, pairs, kind = min(lists, key=lambda x: len(x[0]))
        self.cand = cand
        # By identity: comparing (column, id) tuples by value would compare whole columns.
        self.checks = [c for c in self.checks if not any(c is g for g in checks)]
        self.pairs = [p for p in self.pairs if p not in pairs]
        if kind:
            self.kind = -1
        self.trivial = not self.checks and not self.pairs and self.kind < 0

    def bound(self, state: Catalog, upto: int | None) -> int:
        """How many candidates existed after event ``upto``."""
        cand = self.cand
        assert cand is not None
        n = state.rows_at(upto)
        if n == len(state.ids):
            return len(cand)
        return bisect_left(cand, n)

    def matches(self, state: Catalog, i: int) -> bool:
        """Whether row ``i`` satisfies every constraint."""
        if self.kind >= 0 and state.kind_s[i] != self.kind:
            return False
        for col, sid in self.checks:
            if col[i] != sid:
                return False
        if self.pairs:
            canon_of = state.pair_canon
            mine = [canon_of[p] for p in state.label_pair[state.label_off[i] : state.label_off[i + 1]]]
            for item in self.pairs:
                if item not in mine:
                    return False
        return True


def select(state: Catalog, f: Filter, limit: int | None = None, upto: int | None = None) -> list[Row]:
    """Matching rows, newest first (highest seq first)."""
    return [Row(state, i) for i in select_rows(state, f, limit, upto)]


def select_rows(state: Catalog, f: Filter, limit: int | None = None, upto: int | None = None) -> list[int]:
    """``select`` as row numbers (no Row handles: what large results need)."""
    plan = _Plan(state, f)
    if plan.empty or limit == 0:
        return []
    cand = plan.cand
    assert cand is not None
    b = plan.bound(state, visible(state, upto))
    if plan.trivial:
        # Every candidate matches: the answer is a cut of the index, newest first.
        return list(reversed(cand[0 if limit is None else max(0, b - limit):b]))
    out: list[int] = []
    for j in range(b - 1, -1, -1):
        i = cand[j]
        if plan.matches(state, i):
            out.append(i)
            if limit is not None and len(out) >= limit:
                break
    return out


def _metric_column(state: Catalog, name_id: int) -> tuple[array, list[Any]]:
    """(rows, values) of every row having the metric, in seq order; kept and extended as rows are added.

    Rows never change their metrics once recorded, so the column only grows.
    """
    n = len(state.ids)
    col = state.metric_cols.get(name_id)
    if col is None:
        col = state.metric_cols[name_id] = (0, array("i"), [])
    done, rows, vals = col
    if done < n:
        off, names = state.metric_off, state.metric_name
        lo, hi = off[done], off[n]
        pos = list(compress(range(lo, hi), map(name_id.__eq__, names[lo:hi])))
        # A row holds a metric at most once, so the rows found ascend.
        rows.extend([bisect_right(off, p) - 1 for p in pos])
        vals.extend(map(state.metric_val.__getitem__, pos))
        state.metric_cols[name_id] = (n, rows, vals)
    return rows, vals


def _metric_found(state: Catalog, plan: _Plan, metric: str, upto: int | None) -> tuple[Any, list[Any]]:
    """(rows, values) of every candidate that matches and has ``metric``, in seq order."""
    name_id = state.str_ids.get(metric, -1)
    if plan.empty or name_id < 0:
        return [], []
    cand = plan.cand
    assert cand is not None
    nb = plan.bound(state, upto)
    if name_id not in state.metric_cols and nb * 8 < len(state.ids):
        # Few candidates and no column yet: scan them, rather than build a column over every row.
        off, names, mvals = state.metric_off, state.metric_name, state.metric_val
        found_r, found_v = [], []
        for j in range(nb):
            i = cand[j]
            for m in range(off[i], off[i + 1]):
                if names[m] == name_id:
                    if plan.matches(state, i):
                        found_r.append(i)
                        found_v.append(mvals[m])
                    break
        return found_r, found_v
    rows, vals = _metric_column(state, name_id)
    k = bisect_left(rows, state.rows_at(upto))
    if plan.trivial and type(cand) is range:
        return rows[:k], vals[:k]
    if nb * 8 < k:
        # Few candidates: look each one up in the metric's column.
        found_r, found_v = [], []
        for j in range(nb):
            i = cand[j]
            m = bisect_left(rows, i, 0, k)
            if m < k and rows[m] == i and plan.matches(state, i):
                found_r.append(i)
                found_v.append(vals[m])
        return found_r, found_v
    keep = set(cand[:nb])
    if plan.trivial:
        picked = [m for m in range(k) if rows[m] in keep]
    else:
        picked = [m for m in range(k) if rows[m] in keep and plan.matches(state, rows[m])]
    return list(map(rows.__getitem__, picked)), list(map(vals.__getitem__, picked))


def _metric_rows(state: Catalog, plan: _Plan, metric: str, upto: int | None) -> list[tuple[Any, int]]:
    """(value, row) for every candidate that matches and has ``metric``, in seq order."""
    rows, vals = _metric_found(state, plan, metric, upto)
    return list(zip(vals, rows))


def rank(state: Catalog, f: Filter, metric: str, mode: str, limit: int | None = None,
         upto: int | None = None) -> list[Row]:
    """Rows having ``metric``, best first; ties broken newest first."""
    return [Row(state, i) for i in rank_rows(state, f, metric, mode, limit, upto)]


def rank_rows(state: Catalog, f: Filter, metric: str, mode: str, limit: int | None = None,
              upto: int | None = None) -> list[int]:
    """``rank`` as row numbers."""
    rows, vals = _metric_found(state, _Plan(state, f), metric, visible(state, upto))
    # Sorting positions newest first by value alone keeps ties newest first: the
    # sort is stable, also with reverse=True (and nlargest/nsmallest equal sorted()[:limit]).
    newest_first = range(len(rows) - 1, -1, -1)
    key = vals.__getitem__
    if limit is not None and limit * 16 < len(rows):
        pick = heapq.nlargest if mode == "max" else heapq.nsmallest
        order = pick(limit, newest_first, key=key)
    else:
        order = sorted(newest_first, key=key, reverse=mode == "max")
        if limit is not None:
            del order[limit:]
    return list(map(rows.__getitem__, order))


def _table_key(f: Filter) -> tuple[str, Any] | None:
    """The best-table (scope, key) a filter is exactly equivalent to, if any."""
    if f.labels or f.kind is None or f.impossible:
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


def _scan_best_rows(state: Catalog, f: Filter, metric: str, upto: int | None,
                    skip: Container[int] = ()) -> list[int]:
    """[max row, min row] (-1 when none) by one pass; later rows win ties (they are newer).

    Rows in ``skip`` (row numbers: retired ones, say) never win."""
    hi = lo = -1
    hv: Any = None
    lv: Any = None
    for v, i in _metric_rows(state, _Plan(state, f), metric, upto):
        if skip and i in skip:
            continue
        if hi < 0 or v >= hv:
            hi, hv = i, v
        if lo < 0 or v <= lv:
            lo, lv = i, v
    return [hi, lo]


def _scan_best(state: Catalog, f: Filter, metric: str, upto: int | None,
               skip: Container[int] = ()) -> list[Row | None]:
    """[max row, min row] as Row handles (None when none), rows in ``skip`` left out."""
    return [None if i < 0 else Row(state, i)
            for i in _scan_best_rows(state, f, metric, visible(state, upto), skip)]


def best(state: Catalog, f: Filter, metric: str, mode: str, upto: int | None = None) -> Row | None:
    """The first row of ``rank``; O(1) from the best tables when the filter is a plain scope."""
    if f.impossible:
        return None
    upto = visible(state, upto)
    sk = _table_key(f) if upto is None else None
    if sk is None:
        entry = _scan_best_rows(state, f, metric, upto)
    else:
        assert f.kind is not None
        tables = state.best.get((f.kind, metric))
        if tables is None:
            tables = state.best[(f.kind, metric)] = {}
        entry = tables.get(sk)  # type: ignore[assignment]
        if entry is None:
            entry = tables[sk] = _scan_best_rows(state, f, metric, None)
    i = entry[0] if mode == "max" else entry[1]
    return None if i < 0 else Row(state, i)


LIVE_BEST_CACHE = 4096  # entries kept before the cache starts over


def best_live(state: Catalog, f: Filter, metric: str, mode: str, upto: int | None = None) -> Row | None:
    """``best`` among the rows not retired as of ``upto``: O(1) while the tables' winner is live, else one
    pass over the candidates, remembered until a row is added or another artifact is retired."""
    life = state.life
    if not life.retired:
        return best(state, f, metric, mode, upto)
    upto = visible(state, upto)
    row = best(state, f, metric, mode, upto)
    gone = None if row is None else life.retired.get(state.ids[row.i])
    if gone is None or (upto is not None and gone[0] > upto):
        return row  # the tables' winner is live: no need to look at the retired rows at all
    hidden = retired_rows(state, upto)
    stamp = (len(state.ids), len(life.retired))
    key = (f, metric, upto)
    hit = life.live_best.get(key)
    if hit is not None and hit[0] == stamp:
        entry = hit[1]
    else:
        entry = _scan_best_rows(state, f, metric, upto, hidden)
        if len(life.live_best) >= LIVE_BEST_CACHE:
            life.live_best.clear()
        life.live_best[key] = (stamp, entry)
    i = entry[0] if mode == "max" else entry[1]
    return None if i < 0 else Row(state, i)


def pinned_at(state: Catalog, row: Row, upto: int | None) -> bool:
    """An artifact's pin state after event ``upto`` (current state when None)."""
    i = row.i
    if upto is None or upto >= state.head_seq:
        return bool(state.pin_now[i])
    hist = state.pin_history.get(state.ids[i])
    if not hist:
        return bool(state.pinned0[i])
    k = bisect_right(hist, upto, key=lambda h: h[0])
    return hist[k - 1][1] if k else bool(state.pinned0[i])


def seq_at_time(state: Catalog, ts_us: int) -> int:
    """The last seq committed at or before ``ts_us`` (0 if none)."""
    return bisect_right(state.times, ts_us)


def by_blob(state: Catalog, sha256: str, upto: int | None = None) -> Row | None:
    """The newest artifact over a blob (as of ``upto``)."""
    i = state.row_of_sha(sha256)
    if i is None:
        return None
    n = state.rows_at(visible(state, upto))
    if i < n:
        return Row(state, i)
    try:
        raw = bytes.fromhex(sha256)
    except ValueError:
        return None
    sha = state.sha
    for j in range(n - 1, -1, -1):
        if sha[j * 32 : j * 32 + 32] == raw:
            return Row(state, j)
    return None


def count(state: Catalog, f: Filter, metric: str | None = None, upto: int | None = None) -> int:
    """How many rows ``select`` (or, with ``metric``, ``rank``) would return without a limit."""
    plan = _Plan(state, f)
    if plan.empty:
        return 0
    upto = visible(state, upto)
    if metric is not None:
        return len(_metric_rows(state, plan, metric, upto))
    cand = plan.cand
    assert cand is not None
    matches = plan.matches
    return sum(1 for j in range(plan.bound(state, upto)) if matches(state, cand[j]))


def runs(state: Catalog, upto: int | None = None, project_id: str | None = None,
         skip: Collection[int] = ()) -> list[tuple[str, int, int, int]]:
    """``(run_id, artifacts, first ts, last ts)`` per run (as of ``upto``), most recently active first.

    With ``project_id``, only that project's artifacts count (a run may span projects). Rows in ``skip``
    (row numbers: those retired as of ``upto``) do not count; a run left with none is not listed.
    """
    n = state.rows_at(visible(state, upto))
    strs, ts, run_s = state.strs, state.ts, state.run_s
    out: list[tuple[str, int, int, int]] = []
    if project_id is None:
        skipped = {run_s[i] for i in skip if i < n}
        # Each run's rows are an ascending index: its count and ends are a cut of it, not a scan
        # (only a run with skipped rows is filtered row by row).
        for sid in set(run_s[:n]):
            run = strs[sid]
            rows = state.by_label[("run_id", run)]
            k = bisect_left(rows, n)
            if sid in skipped:
                live = [i for i in rows[:k] if i not in skip]
                if live:
                    out.append((run, len(live), ts[live[0]], ts[live[-1]]))  # type: ignore[arg-type]
                continue
            out.append((run, k, ts[rows[0]], ts[rows[k - 1]]))  # type: ignore[arg-type]
    else:
        rows = state.by_label.get(("project_id", project_id), array("i"))
        found: dict[int, list[int]] = {}
        for i in rows[: bisect_left(rows, n)]:
            if skip and i in skip:
                continue
            entry = found.get(run_s[i])
            if entry is None:
                found[run_s[i]] = [1, ts[i], ts[i]]
            else:
                entry[0] += 1
                entry[2] = ts[i]
        out = [(strs[sid], c, lo, hi) for sid, (c, lo, hi) in found.items()]  # type: ignore[misc]
    out.sort(key=lambda r: (-r[3], r[0]))
    return out


def retired_count(state: Catalog, upto: int | None = None) -> int:
    """How many artifacts are retired (purges included) as of ``upto``."""
    retired = state.life.retired
    return len(retired) if upto is None else sum(1 for s, _ in retired.values() if s <= upto)


def retired_rows(state: Catalog, upto: int | None = None) -> set[int]:
    """Row numbers of the artifacts retired (purges included) as of ``upto``: hidden from every answer."""
    id_rows = state.id_rows
    return {id_rows[aid] for aid, (s, _) in state.life.retired.items() if upto is None or s <= upto}


def count_among(state: Catalog, f: Filter, rows: Collection[int], metric: str | None = None,
                upto: int | None = None) -> int:
    """How many of ``rows`` (row numbers) ``count(state, f, metric, upto)`` counts: what hiding them takes off."""
    plan = _Plan(state, f)
    if plan.empty or not rows:
        return 0
    name_id = -1
    if metric is not None:
        name_id = state.str_ids.get(metric, -1)
        if name_id < 0:
            return 0
    cand = plan.cand
    assert cand is not None
    n = state.rows_at(visible(state, upto))
    off, names = state.metric_off, state.metric_name
    found = 0
    for i in rows:
        if i >= n:
            continue
        # matches() leaves out what the candidate list guarantees: a row not taken from it must be in it.
        j = bisect_left(cand, i)
        if j == len(cand) or cand[j] != i or not plan.matches(state, i):
            continue
        if metric is not None and name_id not in names[off[i]:off[i + 1]]:
            continue
        found += 1
    return found
