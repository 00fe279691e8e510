"""The catalogue projection: a pure fold of ledger events into query indexes.

``apply(state, logged)`` has no I/O, no clock and no randomness; the same
event sequence always yields an equal state. The state is also time-indexed
(every index list is in seq order, pins keep their history, commit times are
kept per seq), so the catalogue as of any earlier seq is a cut of it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Iterable

from ledger.events import ArtifactRecorded, Event, PinChanged

from .labels import RESERVED, canon, is_plain

SCOPES = ("node", "graph", "run", "project", "all")


@dataclass(frozen=True, slots=True)
class Logged:
    """An event with its ledger position and commit time."""

    seq: int
    ts_us: int
    event: Event


class Row:
    """One artifact as the projection holds it (immutable after creation)."""

    __slots__ = ("seq", "ts_us", "ev", "keys")

    def __init__(self, seq: int, ts_us: int, ev: ArtifactRecorded):
        self.seq = seq
        self.ts_us = ts_us
        self.ev = ev
        labels = ev.labels
        # Label values are compared in canonical form; most labels already are.
        self.keys: dict[str, Any] = labels if is_plain(labels) else {k: canon(v) for k, v in labels.items()}

    @property
    def has_lists(self) -> bool:
        """Whether any label value is a list (callers copy those before handing them out)."""
        return any(type(v) is list for v in self.ev.labels.values())


def scope_keys_of(ev: ArtifactRecorded) -> tuple[tuple[str, Any], ...]:
    """The (scope, key) pairs an artifact belongs to, for best-by-metric tables."""
    keys: tuple[tuple[str, Any], ...] = (
        ("node", (ev.run_id, ev.graph_id, ev.node_id)),
        ("graph", (ev.run_id, ev.graph_id)),
        ("run", ev.run_id),
        ("all", None),
    )
    if ev.project_id is not None:
        keys += (("project", ev.project_id),)
    return keys


class Catalog:
    """Projection state: artifacts, pins, and the indexes queries use."""

    def __init__(self) -> None:
        self.head_seq = 0
        self.times = array("q")  # commit time (µs) of every seq; times[seq - 1]
        self.rows: dict[str, Row] = {}
        self.ordered: list[Row] = []
        self.pinned: dict[str, bool] = {}
        # artifact id -> [(seq, pinned), ...] for artifacts with pin events
        self.pin_history: dict[str, list[tuple[int, bool]]] = {}
        self.pin_events: list[tuple[int, str, bool]] = []
        self.by_label: dict[tuple[str, Any], list[Row]] = {}
        self.by_graph: dict[tuple[str, str], list[Row]] = {}
        self.by_node: dict[tuple[str, str, str], list[Row]] = {}
        self.by_kind: dict[str, list[Row]] = {}
        self.by_sha: dict[str, Row] = {}  # newest artifact over each blob
        # Best-by-metric tables: (kind, metric) -> {(scope, key): [max row, min row]}.
        # Filled on first query of a scope key, then kept current by apply().
        self.best: dict[tuple[str, str], dict[tuple[str, Any], list[Row]]] = {}

    @property
    def head_ts(self) -> int:
        """Commit time of the newest event (0 when empty)."""
        return self.times[-1] if self.times else 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]

    def fingerprint(self) -> tuple:
        """A plain, comparable summary of the whole state (for tests and audits)."""

        def idx(d: dict) -> list:
            return sorted(((repr(k), [r.seq for r in v]) for k, v in d.items()))

        return (
            self.head_seq,
            list(self.times),
            [(r.seq, r.ts_us, r.ev) for r in self.ordered],
            sorted(self.pinned.items()),
            sorted(self.pin_history.items()),
            self.pin_events,
            idx(self.by_label),
            idx(self.by_graph),
            idx(self.by_node),
            idx(self.by_kind),
            sorted((k, r.seq) for k, r in self.by_sha.items()),
        )


def apply(state: Catalog, logged: Logged) -> Catalog:
    """Fold one event into the state and return it."""
    ev = logged.event
    if type(ev) is ArtifactRecorded:
        _add_artifact(state, Row(logged.seq, logged.ts_us, ev))
    elif type(ev) is PinChanged:
        # A pin of an unknown id cannot be produced through the facade; the log
        # still wins, so it is kept out of the index rather than failing replay.
        aid = ev.artifact_id
        if aid in state.rows:
            state.pinned[aid] = ev.pinned
            hist = state.pin_history.get(aid)
            if hist is None:
                state.pin_history[aid] = [(logged.seq, ev.pinned)]
            else:
                hist.append((logged.seq, ev.pinned))
            state.pin_events.append((logged.seq, aid, ev.pinned))
    state.head_seq = logged.seq
    state.times.append(logged.ts_us)
    return state


def replay(events: Iterable[Logged], state: Catalog | None = None) -> Catalog:
    """Fold a sequence of events, starting from ``state`` or an empty catalogue."""
    st = Catalog() if state is None else state
    for logged in events:
        apply(st, logged)
    return st


def _add_artifact(state: Catalog, row: Row) -> None:
    ev = row.ev
    aid = ev.artifact_id
    if aid in state.rows:
        return  # ids are random 128-bit values; a repeat carries no new information
    state.rows[aid] = row
    state.ordered.append(row)
    state.pinned[aid] = ev.pinned
    by_label = state.by_label
    for key in (
        ("run_id", ev.run_id),
        ("graph_id", ev.graph_id),
        ("node_id", ev.node_id),
        ("project_id", ev.project_id),
        *row.keys.items(),
    ):
        lst = by_label.get(key)
        if lst is None:
            by_label[key] = [row]
        else:
            lst.append(row)
    for index, key in (
        (state.by_graph, (ev.run_id, ev.graph_id)),
        (state.by_node, (ev.run_id, ev.graph_id, ev.node_id)),
        (state.by_kind, ev.kind),
    ):
        lst = index.get(key)
        if lst is None:
            index[key] = [row]
        else:
            lst.append(row)
    state.by_sha[ev.sha256] = row
    if state.best:
        _update_best(state, row)


def _update_best(state: Catalog, row: Row) -> None:
    ev = row.ev
    scope_keys = None
    for metric, value in ev.metrics.items():
        tables = state.best.get((ev.kind, metric))
        if not tables:
            continue
        if scope_keys is None:
            scope_keys = scope_keys_of(ev)
        for sk in scope_keys:
            entry = tables.get(sk)
            if entry is None:
                continue  # not queried yet: computed from the indexes when first asked
            if entry[0] is None:
                entry[0] = entry[1] = row
                continue
            # Ties go to the newer artifact (higher seq), which is this one.
            if value >= entry[0].ev.metrics[metric]:
                entry[0] = row
            if value <= entry[1].ev.metrics[metric]:
                entry[1] = row


__all__ = ["Catalog", "Logged", "Row", "RESERVED", "SCOPES", "apply", "replay", "scope_keys_of"]
