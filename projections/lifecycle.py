"""The lifecycle projection: aliases, lineage, retirement, purge and gc, folded from events.

Pure like the catalogue: ``apply_life(cat, seq, event)`` has no I/O, no clock and
no randomness. Every piece keeps the seq it happened at, so the state as of any
earlier seq is a filter (``upto``) over it, never a second copy.

The facade checks every rule before it appends, so a log written by one process
only holds events that apply. Two processes can still race (both see an alias
unprotected, one protects it, the other moves it): the log wins, and an event
whose rule no longer holds when it is folded in is recorded but has no effect.
That rule is the same on every replay, so every process agrees.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from ..ledger.events import AliasRemoved, AliasSet, GcPlanned, GcSwept, Purged, Related, Retired

if TYPE_CHECKING:
    from .catalog import Catalog

AliasKey = tuple[str, str]  # (namespace, name)


class Edge(NamedTuple):
    """One lineage edge as seen from one end: the other end, the relation, and when it was recorded."""

    seq: int
    other: str
    relation: str


class Step(NamedTuple):
    """One artifact reached by a lineage walk."""

    artifact_id: str
    relation: str
    depth: int
    via: str  # the artifact it was reached from


def _visible(seq: int, upto: int | None) -> bool:
    return upto is None or seq <= upto


class Lifecycle:
    """Lifecycle state: alias moves, lineage edges, retirements, purges and gc runs, each with its seq."""

    def __init__(self) -> None:
        # (namespace, name) -> [(seq, artifact id or None when removed, protected)]
        self.alias_hist: dict[AliasKey, list[tuple[int, str | None, bool]]] = {}
        self.alias_keys: dict[str, set[AliasKey]] = {}  # artifact -> every alias that ever pointed at it
        self.parents: dict[str, list[Edge]] = {}
        self.children: dict[str, list[Edge]] = {}
        self.created_parents: dict[str, list[str]] = {}  # derived_from as recorded with the artifact
        self.retired: dict[str, tuple[int, str]] = {}  # artifact -> (seq, reason)
        self.purged: dict[str, tuple[int, str]] = {}
        self.plans: list[tuple[int, str]] = []  # (seq of the first part, plan id)
        self.sweeps: dict[str, int] = {}  # plan id -> seq of its result
        self.touched: dict[str, list[int]] = {}  # artifact -> seqs of lifecycle events naming it
        self.dirty: list[str] = []  # artifacts touched by the event being folded (not saved; see catalog.apply)
        # Best-by-metric winners among live rows, for queries whose table winner is retired (not saved: a
        # cache, keyed by filter, metric and view; valid while the row and retirement counts are unchanged).
        self.live_best: dict[Any, tuple[tuple[int, int], list[int]]] = {}

    # ------------------------------------------------------------ reading
    def alias_at(self, key: AliasKey, upto: int | None) -> tuple[int, str | None, bool] | None:
        """(seq, target, protected) of an alias as of ``upto`` (target None: removed); None if never set."""
        hist = self.alias_hist.get(key)
        if not hist:
            return None
        if upto is None:
            return hist[-1]
        k = bisect_right(hist, upto, key=lambda h: h[0])
        return hist[k - 1] if k else None

    def aliases_of(self, aid: str, upto: int | None) -> list[AliasKey]:
        """The aliases pointing at an artifact as of ``upto``, sorted."""
        keys = self.alias_keys.get(aid)
        if not keys:
            return []
        out = []
        for key in keys:
            now = self.alias_at(key, upto)
            if now is not None and now[1] == aid:
                out.append(key)
        return sorted(out)

    def aliases(self, upto: int | None, namespace: str | None = None) -> list[tuple[AliasKey, str, bool, int]]:
        """Every alias that points somewhere as of ``upto``: (key, target, protected, seq set), sorted."""
        out = []
        for key in self.alias_hist:
            if namespace is not None and key[0] != namespace:
                continue
            now = self.alias_at(key, upto)
            if now is not None and now[1] is not None:
                out.append((key, now[1], now[2], now[0]))
        return sorted(out)

    def retired_at(self, aid: str, upto: int | None) -> tuple[int, str] | None:
        """(seq, reason) of the artifact's retirement if it happened by ``upto`` (a purge retires too)."""
        r = self.retired.get(aid)
        return r if r is not None and _visible(r[0], upto) else None

    def purged_at(self, aid: str, upto: int | None) -> tuple[int, str] | None:
        """(seq, reason) of the artifact's purge if it happened by ``upto``."""
        r = self.purged.get(aid)
        return r if r is not None and _visible(r[0], upto) else None

    def edges(self, aid: str, direction: str, upto: int | None) -> Iterator[Edge]:
        """Lineage edges of one artifact (``up``: its parents, ``down``: its children) recorded by ``upto``."""
        for e in (self.parents if direction == "up" else self.children).get(aid, ()):
            if _visible(e.seq, upto):
                yield e

    def walk(self, aid: str, direction: str, depth: int | None, upto: int | None) -> list[Step]:
        """Breadth-first lineage walk from ``aid``; each artifact once, at its smallest depth."""
        seen = {aid}
        out: list[Step] = []
        queue = deque([(aid, 0)])
        while queue:
            cur, d = queue.popleft()
            if depth is not None and d >= depth:
                continue
            for e in self.edges(cur, direction, upto):
                if e.other in seen:
                    continue
                seen.add(e.other)
                out.append(Step(e.other, e.relation, d + 1, cur))
                queue.append((e.other, d + 1))
        return out

    def reaches(self, start: str, target: str, direction: str) -> bool:
        """Whether ``target`` is ``start`` or reachable from it (current edges)."""
        if start == target:
            return True
        seen = {start}
        stack = [start]
        edges = self.parents if direction == "up" else self.children
        while stack:
            for e in edges.get(stack.pop(), ()):
                if e.other == target:
                    return True
                if e.other not in seen:
                    seen.add(e.other)
                    stack.append(e.other)
        return False

    def open_plans(self) -> list[tuple[int, str]]:
        """Gc plans recorded without a result (a gc that crashed or was killed before it finished)."""
        return [(s, p) for s, p in self.plans if p not in self.sweeps]

    # ------------------------------------------------------------ equality and snapshots
    def to_plain(self) -> list[Any]:
        """The state as plain lists (for checkpoints and fingerprints)."""
        return [
            [[list(k), [list(h) for h in v]] for k, v in self.alias_hist.items()],
            [[c, [list(e) for e in es]] for c, es in self.parents.items()],
            [[a, list(p)] for a, p in self.created_parents.items()],
            [[a, list(r)] for a, r in self.retired.items()],
            [[a, list(r)] for a, r in self.purged.items()],
            [list(p) for p in self.plans],
            list(self.sweeps.items()),
            [[a, list(s)] for a, s in self.touched.items()],
        ]

    @classmethod
    def from_plain(cls, plain: list[Any]) -> "Lifecycle":
        """Rebuild the state from ``to_plain()``'s lists."""
        life = cls()
        hist, parents, created, retired, purged, plans, sweeps, touched = plain
        for k, v in hist:
            key = (k[0], k[1])
            life.alias_hist[key] = [(s, a, p) for s, a, p in v]
            for _, a, _ in v:
                if a is not None:
                    life.alias_keys.setdefault(a, set()).add(key)
        for child, es in parents:
            for s, parent, rel in es:
                life.parents.setdefault(child, []).append(Edge(s, parent, rel))
                life.children.setdefault(parent, []).append(Edge(s, child, rel))
        for lst in life.children.values():
            lst.sort()
        life.created_parents = {a: list(p) for a, p in created}
        life.retired = {a: (s, r) for a, (s, r) in retired}
        life.purged = {a: (s, r) for a, (s, r) in purged}
        life.plans = [(s, p) for s, p in plans]
        life.sweeps = {p: s for p, s in sweeps}
        life.touched = {a: list(s) for a, s in touched}
        return life

    def fingerprint(self) -> Any:
        """A comparable summary (order-independent where the state is a mapping)."""
        plain = self.to_plain()
        return [sorted(map(repr, part)) for part in plain]


# ---------------------------------------------------------------- folding events
def _touch(life: Lifecycle, aid: str, seq: int) -> None:
    life.dirty.append(aid)
    lst = life.touched.setdefault(aid, [])
    if not lst or lst[-1] != seq:
        lst.append(seq)


def _protected_target(cat: "Catalog", aid: str) -> bool:
    """Whether an artifact is pinned or aliased now: retiring it needs force."""
    i = cat.id_rows.get(aid)
    return i is not None and (bool(cat.pin_now[i]) or bool(cat.life.aliases_of(aid, None)))


def add_edge(life: Lifecycle, seq: int, child: str, parent: str, relation: str) -> None:
    """Record a lineage edge child -> parent (callers have checked it)."""
    life.parents.setdefault(child, []).append(Edge(seq, parent, relation))
    life.children.setdefault(parent, []).append(Edge(seq, child, relation))


def record_parents(cat: "Catalog", seq: int, aid: str, parents: list[str]) -> None:
    """Fold the ``derived_from`` of a newly recorded artifact: edges to the parents known by then."""
    life = cat.life
    life.created_parents[aid] = list(parents)
    id_rows = cat.id_rows
    for p in dict.fromkeys(parents):
        j = id_rows.get(p)
        if j is not None and cat.seq[j] < seq:
            add_edge(life, seq, aid, p, "derived_from")
            _touch(life, p, seq)
    life.dirty.clear()  # a parent's Artifact shows nothing of its children: no shared result to drop


def _retire(life: Lifecycle, seq: int, aid: str, reason: str) -> None:
    if aid not in life.retired:
        life.retired[aid] = (seq, reason)


def apply_life(cat: "Catalog", seq: int, ev: Any) -> None:
    """Fold one lifecycle event into ``cat.life`` (see the module doc for events without effect)."""
    life = cat.life
    known = cat.id_rows
    t = type(ev)
    if t is AliasSet:
        key = (ev.namespace, ev.name)
        now = life.alias_at(key, None)
        if ev.artifact_id not in known or ev.artifact_id in life.retired:
            return
        if now is not None and now[1] is not None and now[2] and not ev.force:
            return
        life.alias_hist.setdefault(key, []).append((seq, ev.artifact_id, ev.protected))
        life.alias_keys.setdefault(ev.artifact_id, set()).add(key)
        _touch(life, ev.artifact_id, seq)
        if now is not None and now[1] is not None and now[1] != ev.artifact_id:
            _touch(life, now[1], seq)
    elif t is AliasRemoved:
        key = (ev.namespace, ev.name)
        now = life.alias_at(key, None)
        if now is None or now[1] is None or (now[2] and not ev.force):
            return
        life.alias_hist[key].append((seq, None, False))
        _touch(life, now[1], seq)
    elif t is Related:
        if (ev.child not in known or ev.parent not in known or ev.child == ev.parent
                or any(e.other == ev.parent and e.relation == ev.relation for e in life.parents.get(ev.child, ()))
                or life.reaches(ev.parent, ev.child, "up")):
            return
        add_edge(life, seq, ev.child, ev.parent, ev.relation)
        _touch(life, ev.child, seq)
        _touch(life, ev.parent, seq)
    elif t is Retired:
        if ev.artifact_id not in known or ev.artifact_id in life.retired:
            return
        if not ev.force and _protected_target(cat, ev.artifact_id):
            return
        _retire(life, seq, ev.artifact_id, ev.reason)
        _touch(life, ev.artifact_id, seq)
    elif t is Purged:
        if ev.artifact_id not in known or ev.artifact_id in life.purged:
            return
        if not ev.force and _protected_target(cat, ev.artifact_id):
            return
        life.purged[ev.artifact_id] = (seq, ev.reason)
        _retire(life, seq, ev.artifact_id, ev.reason)
        _touch(life, ev.artifact_id, seq)
    elif t is GcPlanned:
        if ev.part == 1:
            life.plans.append((seq, ev.plan_id))
        reason = f"retention policy (gc plan {ev.plan_id})"
        for aid in ev.purge:
            # A policy never selects pinned or aliased artifacts; one that became so since is spared.
            if aid in known and aid not in life.purged and not _protected_target(cat, aid):
                life.purged[aid] = (seq, reason)
                _retire(life, seq, aid, reason)
                _touch(life, aid, seq)
    elif t is GcSwept:
        life.sweeps.setdefault(ev.plan_id, seq)
        for pid in ev.resumes:
            life.sweeps.setdefault(pid, seq)


__all__ = ["AliasKey", "Edge", "Lifecycle", "Step", "add_edge", "apply_life", "record_parents"]
