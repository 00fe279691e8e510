"""The catalogue projection: a pure fold of ledger events into query indexes.

``apply(state, logged)`` has no I/O, no clock and no randomness; the same
event sequence always yields an equal state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ledger.events import ArtifactRecorded, Event, PinChanged

from .labels import RESERVED, canon

SCOPES = ("node", "graph", "run", "project", "all")


@dataclass(frozen=True, slots=True)
class Logged:
    """An event with its ledger position and commit time."""

    seq: int
    ts_us: int
    event: Event


class Row:
    """One artifact as the projection holds it (immutable after creation)."""

    __slots__ = ("seq", "ts_us", "ev", "keys", "scope_keys", "has_lists")

    def __init__(self, seq: int, ts_us: int, ev: ArtifactRecorded):
        self.seq = seq
        self.ts_us = ts_us
        self.ev = ev
        keys = {k: canon(v) for k, v in ev.labels.items()}
        keys["run_id"] = ("s", ev.run_id)
        keys["graph_id"] = ("s", ev.graph_id)
        keys["node_id"] = ("s", ev.node_id)
        keys["project_id"] = canon(ev.project_id)
        self.keys: dict[str, Any] = keys
        self.scope_keys = scope_keys_of(ev)
        self.has_lists = any(type(v) is list for v in ev.labels.values())


def scope_keys_of(ev: ArtifactRecorded) -> tuple[tuple, ...]:
    """The best-table scope keys an artifact belongs to."""
    keys = [
        ("node", (ev.run_id, ev.graph_id, ev.node_id)),
        ("graph", (ev.run_id, ev.graph_id)),
        ("run", ev.run_id),
        ("all", None),
    ]
    if ev.project_id is not None:
        keys.append(("project", ev.project_id))
    return tuple(keys)


class Catalog:
    """Projection state: artifacts, pins, and the indexes queries use."""

    def __init__(self) -> None:
        self.head_seq = 0
        self.head_ts = 0
        self.rows: dict[str, Row] = {}
        self.ordered: list[Row] = []
        self.pinned: dict[str, bool] = {}
        self.by_label: dict[tuple[str, Any], list[Row]] = {}
        self.by_graph: dict[tuple[str, str], list[Row]] = {}
        self.by_node: dict[tuple[str, str, str], list[Row]] = {}
        self.by_kind: dict[str, list[Row]] = {}
        self.by_sha: dict[str, list[Row]] = {}
        # (scope, scope key, kind, metric) -> [row with max value, row with min value]
        self.best: dict[tuple, list[Row]] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]

    def fingerprint(self) -> tuple:
        """A plain, comparable summary of the whole state (for tests and audits)."""
        idx = lambda d: sorted((k, [r.seq for r in v]) for k, v in d.items())  # noqa: E731
        return (
            self.head_seq,
            self.head_ts,
            [(r.seq, r.ts_us, r.ev) for r in self.ordered],
            sorted(self.pinned.items()),
            idx(self.by_label),
            idx(self.by_graph),
            idx(self.by_node),
            idx(self.by_kind),
            idx(self.by_sha),
            sorted(((repr(k), [r.seq for r in v]) for k, v in self.best.items())),
        )


def apply(state: Catalog, logged: Logged) -> Catalog:
    """Fold one event into the state and return it."""
    ev = logged.event
    if type(ev) is ArtifactRecorded:
        _add_artifact(state, Row(logged.seq, logged.ts_us, ev))
    elif type(ev) is PinChanged:
        # A pin of an unknown id cannot be produced through the facade; the log
        # still wins, so it is kept out of the index rather than failing replay.
        if ev.artifact_id in state.rows:
            state.pinned[ev.artifact_id] = ev.pinned
    state.head_seq = logged.seq
    state.head_ts = logged.ts_us
    return state


def replay(events: Iterable[Logged], state: Catalog | None = None) -> Catalog:
    """Fold a sequence of events, starting from ``state`` or an empty catalogue."""
    st = Catalog() if state is None else state
    for logged in events:
        apply(st, logged)
    return st


def _push(index: dict, key: Any, row: Row) -> None:
    lst = index.get(key)
    if lst is None:
        index[key] = [row]
    else:
        lst.append(row)


def _add_artifact(state: Catalog, row: Row) -> None:
    ev = row.ev
    if ev.artifact_id in state.rows:
        return  # ids are random 128-bit values; a duplicate is a replayed event
    state.rows[ev.artifact_id] = row
    state.ordered.append(row)
    state.pinned[ev.artifact_id] = ev.pinned
    by_label = state.by_label
    for item in row.keys.items():
        _push(by_label, item, row)
    _push(state.by_graph, (ev.run_id, ev.graph_id), row)
    _push(state.by_node, (ev.run_id, ev.graph_id, ev.node_id), row)
    _push(state.by_kind, ev.kind, row)
    _push(state.by_sha, ev.sha256, row)
    best = state.best
    kind = ev.kind
    for metric, value in ev.metrics.items():
        for sk in row.scope_keys:
            key = (sk[0], sk[1], kind, metric)
            entry = best.get(key)
            if entry is None:
                best[key] = [row, row]
                continue
            # Ties go to the newer artifact (higher seq), which is this one.
            if value >= entry[0].ev.metrics[metric]:
                entry[0] = row
            if value <= entry[1].ev.metrics[metric]:
                entry[1] = row


__all__ = ["Catalog", "Logged", "Row", "RESERVED", "SCOPES", "apply", "replay"]
