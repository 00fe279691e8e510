"""The catalogue projection: a pure fold of ledger events into query indexes.

``apply(state, logged)`` has no I/O, no clock and no randomness; the same
event sequence always yields an equal state.

The state is columnar: artifact ``i`` (the i-th recorded, so rows are in seq
order) is spread over typed arrays, strings are interned into one table, and
each index is an ``array('i')`` of row numbers in ascending order. That keeps
a million artifacts in a few hundred megabytes, lets a checkpoint load as a
handful of memory copies, and makes the catalogue as of any earlier seq a cut
of each array (pins keep their history, commit times are kept per seq).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from itertools import accumulate, chain, compress, filterfalse, islice, repeat
from operator import attrgetter, gt, is_, sub
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Iterable, NamedTuple

from ..ledger import events as _events
from ..ledger.events import LIFECYCLE_EVENTS, ArtifactRecorded, Event, PinChanged
from ..ledger.speedups import native as _native

from .labels import RESERVED, canon, strict
from .lifecycle import Lifecycle, apply_life, record_parents

SCOPES = ("node", "graph", "run", "project", "all")
# Rows whose built results (Artifacts, ~1.3 KiB each) are kept at most: ~85 MiB.
ROW_CACHE_LIMIT = 65536
# Rows indexed per step when a deferred index build catches up.
INDEX_CHUNK_ROWS = 16384


class Logged(NamedTuple):
    """An event with its ledger position and commit time (a tuple: cheap to make in bulk)."""

    seq: int
    ts_us: int
    event: Event


class Catalog:
    """Projection state: artifacts as columns, pins, and the indexes queries use."""

    def __init__(self) -> None:
        self.head_seq = 0
        self.times = array("q")  # commit time (µs) of every seq; times[seq - 1]
        # interned strings (and None) referenced by the *_s columns below
        self.strs: list[str | None] = []
        self.str_ids: dict[str | None, int] = {}
        # one entry per artifact row
        self.seq = array("q")
        self.ts = array("q")
        self.size = array("q")
        self.kind_s = array("i")
        self.mime_s = array("i")
        self.origin_s = array("i")
        self.run_s = array("i")
        self.graph_s = array("i")
        self.node_s = array("i")
        self.project_s = array("i")
        self.name_s = array("i")
        self.suggested_s = array("i")
        self.sha = bytearray()  # 32 raw bytes per row
        self.pinned0 = bytearray()  # pin state recorded with the artifact
        self.pin_now = bytearray()  # current pin state
        self.ids: list[str] = []
        self._id_rows: dict[str, int] | None = {}  # artifact id -> row; None until first needed
        # labels: row i owns label_pair[label_off[i]:label_off[i+1]], ids into pairs
        self.label_off = array("q", [0])
        self.label_pair = array("i")
        self.pairs: list[tuple[str, Any]] = []  # (key, value as recorded; lists as tuples)
        self.pair_ids: dict[tuple[str, Any], int] = {}  # (key, strict value) -> pair id: 1 and 1.0 differ
        self.pair_canon: list[tuple[str, Any]] = []  # pair id -> (key, canonical value): 1 and 1.0 match
        self.pair_rep: list[int] = []  # pair id -> first pair id with the same canonical value
        self._rep_of: dict[tuple[str, Any], int] = {}
        # metrics: row i owns metric_name/metric_val[metric_off[i]:metric_off[i+1]]
        self.metric_off = array("q", [0])
        self.metric_name = array("i")
        self.metric_val: list[int | float] = []
        # indexes: key -> ascending row numbers
        self.by_label: dict[tuple[str, Any], array] = {}  # (key, canonical value); ids included
        self.by_graph: dict[tuple[str, str], array] = {}
        self.by_node: dict[tuple[str, str, str], array] = {}
        self.by_kind: dict[str, array] = {}
        self._by_sha: dict[bytes, int] | None = None  # newest row per blob, built on first use
        # pins: artifact id -> [(seq, pinned), ...] for artifacts with pin events
        self.pin_history: dict[str, list[tuple[int, bool]]] = {}
        self.pin_events: list[tuple[int, str, bool]] = []
        # Best-by-metric tables: (kind, metric) -> {(scope, key): [max row, min row]} (-1: none).
        # Filled on first query of a scope key, then kept current by apply().
        self.best: dict[tuple[str, str], dict[tuple[str, Any], list[int]]] = {}
        # Immutable per-row results the facade hands out (its Artifacts), shared between calls.
        # Bounded; an entry is dropped whenever its row changes (forget_row), never kept stale.
        self.row_cache: dict[int, Any] = {}
        # metric name id -> (rows covered, rows having it, their values): grows with the rows (query.py)
        self.metric_cols: dict[int, tuple[int, array, list[Any]]] = {}
        # First row not yet in the indexes while a full replay defers them (None: all indexed).
        self.unindexed: int | None = None
        # aliases, lineage, retirement, purge and gc (projections/lifecycle.py)
        self.life = Lifecycle()

    # ------------------------------------------------------------ reading rows
    @property
    def head_ts(self) -> int:
        """Commit time of the newest event (0 when empty)."""
        return self.times[-1] if self.times else 0

    @property
    def n(self) -> int:
        """Number of artifacts."""
        return len(self.ids)

    def rows_at(self, upto: int | None) -> int:
        """How many artifacts existed after event ``upto`` (all when None)."""
        if upto is None or upto >= self.head_seq:
            return len(self.ids)
        return bisect_right(self.seq, upto)

    @property
    def id_rows(self) -> dict[str, int]:
        """Row number by artifact id (built on first use after a checkpoint load)."""
        d = self._id_rows
        if d is None:
            d = self._id_rows = dict(zip(self.ids, range(len(self.ids))))
        return d

    def row(self, i: int) -> "Row":
        """A handle on artifact row ``i``."""
        return Row(self, i)

    @property
    def rows(self) -> "_RowsById":
        """Artifacts by id (a read-only mapping of Row handles)."""
        return _RowsById(self)

    @property
    def ordered(self) -> "_RowsInOrder":
        """Artifacts in seq order (a read-only sequence of Row handles)."""
        return _RowsInOrder(self)

    @property
    def pinned(self) -> "_Pinned":
        """Current pin state by artifact id."""
        return _Pinned(self)

    def sha_hex(self, i: int) -> str:
        """Hex SHA-256 of row ``i``'s blob."""
        return self.sha[i * 32 : i * 32 + 32].hex()

    def row_of_sha(self, sha256: str) -> int | None:
        """The newest row over a blob."""
        if self._by_sha is None:
            sha = bytes(self.sha)
            self._by_sha = {sha[j * 32 : j * 32 + 32]: j for j in range(len(self.ids))}
        try:
            return self._by_sha.get(bytes.fromhex(sha256))
        except ValueError:
            return None

    def labels(self, i: int) -> dict[str, Any]:
        """Row ``i``'s labels as recorded (lists copied)."""
        pairs = self.pairs
        out = {}
        for p in self.label_pair[self.label_off[i] : self.label_off[i + 1]]:
            k, v = pairs[p]
            out[k] = list(v) if type(v) is tuple else v
        return out

    def metrics(self, i: int) -> dict[str, int | float]:
        """Row ``i``'s metrics."""
        a, b = self.metric_off[i], self.metric_off[i + 1]
        strs = self.strs
        return {strs[self.metric_name[j]]: self.metric_val[j] for j in range(a, b)}  # type: ignore[misc]

    def metric(self, i: int, name_id: int) -> Any:
        """Row ``i``'s value of the metric with string id ``name_id``, or None."""
        names = self.metric_name
        for j in range(self.metric_off[i], self.metric_off[i + 1]):
            if names[j] == name_id:
                return self.metric_val[j]
        return None

    def event(self, i: int) -> ArtifactRecorded:
        """Row ``i`` as the event that recorded it."""
        s = self.strs
        return ArtifactRecorded(
            artifact_id=self.ids[i],
            origin=s[self.origin_s[i]],  # type: ignore[arg-type]
            kind=s[self.kind_s[i]],  # type: ignore[arg-type]
            sha256=self.sha_hex(i),
            size=self.size[i],
            mime=s[self.mime_s[i]],  # type: ignore[arg-type]
            labels=self.labels(i),
            metrics=self.metrics(i),
            pinned=bool(self.pinned0[i]),
            run_id=s[self.run_s[i]],  # type: ignore[arg-type]
            graph_id=s[self.graph_s[i]],  # type: ignore[arg-type]
            node_id=s[self.node_s[i]],  # type: ignore[arg-type]
            project_id=s[self.project_s[i]],
            suggested_uri=s[self.suggested_s[i]],
            name=s[self.name_s[i]],
            derived_from=list(self.life.created_parents.get(self.ids[i], ())),
        )

    def defer_indexes(self) -> None:
        """Stop maintaining the indexes until ``build_indexes``: rows are only appended to the columns.

        For a full replay, where building each index once at the end is far
        cheaper than extending it batch by batch. Queries must wait for
        ``build_indexes``; the columns, ids and pins stay current meanwhile.
        """
        if self.unindexed is None:
            self.unindexed = len(self.ids)

    def build_indexes(self) -> None:
        """Index every row appended since ``defer_indexes`` (in row order) and resume maintaining them."""
        base = self.unindexed
        self.unindexed = None
        if base is None:
            return
        # In chunks: grouping a million rows at once is slower than in cache-sized pieces.
        n = len(self.ids)
        for lo in range(base, n, INDEX_CHUNK_ROWS):
            _index_rows(self, lo, min(lo + INDEX_CHUNK_ROWS, n))

    def cache_row(self, i: int, value: Any) -> None:
        """Keep an immutable result built from row ``i`` for later calls (dropped by ``forget_row``)."""
        cache = self.row_cache
        if len(cache) >= ROW_CACHE_LIMIT:
            cache.clear()  # bounded memory; a full clear costs one rebuild per row, never a wrong answer
        cache[i] = value

    def forget_row(self, i: int) -> None:
        """Drop row ``i``'s cached result: call it whenever anything the row shows changes (pin, ...)."""
        self.row_cache.pop(i, None)

    # ------------------------------------------------------------ equality
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]

    def fingerprint(self) -> tuple:
        """A plain, comparable summary of the whole state (for tests and audits)."""

        def idx(d: dict) -> list:
            return sorted((repr(k), list(v)) for k, v in d.items())

        return (
            self.head_seq,
            list(self.times),
            [(self.seq[i], self.ts[i], self.event(i)) for i in range(self.n)],
            bytes(self.pin_now),
            sorted(self.pin_history.items()),
            self.pin_events,
            idx(self.by_label),
            idx(self.by_graph),
            idx(self.by_node),
            idx(self.by_kind),
            self.life.fingerprint(),
        )


class Row:
    """A handle on one artifact row of a Catalog."""

    __slots__ = ("cat", "i")

    def __init__(self, cat: Catalog, i: int):
        self.cat = cat
        self.i = i

    def __repr__(self) -> str:
        return f"Row(seq={self.seq}, artifact_id={self.artifact_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and other.cat is self.cat and other.i == self.i

    def __hash__(self) -> int:
        return hash((id(self.cat), self.i))

    @property
    def seq(self) -> int:
        """Seq of the event that recorded the artifact."""
        return self.cat.seq[self.i]

    @property
    def ts_us(self) -> int:
        """Commit time of that event."""
        return self.cat.ts[self.i]

    @property
    def artifact_id(self) -> str:
        """The artifact's id."""
        return self.cat.ids[self.i]

    @property
    def ev(self) -> ArtifactRecorded:
        """The recording event, rebuilt from the columns."""
        return self.cat.event(self.i)


class _RowsById(Mapping):
    __slots__ = ("cat",)

    def __init__(self, cat: Catalog):
        self.cat = cat

    def __getitem__(self, aid: str) -> Row:
        return Row(self.cat, self.cat.id_rows[aid])

    def __contains__(self, aid: object) -> bool:
        return aid in self.cat.id_rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.cat.ids)

    def __len__(self) -> int:
        return len(self.cat.ids)


class _RowsInOrder(Sequence):
    __slots__ = ("cat",)

    def __init__(self, cat: Catalog):
        self.cat = cat

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Row(self.cat, j) for j in range(*i.indices(len(self.cat.ids)))]
        if i < 0:
            i += len(self.cat.ids)
        if not 0 <= i < len(self.cat.ids):
            raise IndexError(i)
        return Row(self.cat, i)

    def __len__(self) -> int:
        return len(self.cat.ids)


class _Pinned(Mapping):
    __slots__ = ("cat",)

    def __init__(self, cat: Catalog):
        self.cat = cat

    def __getitem__(self, aid: str) -> bool:
        return bool(self.cat.pin_now[self.cat.id_rows[aid]])

    def __iter__(self) -> Iterator[str]:
        return iter(self.cat.ids)

    def __len__(self) -> int:
        return len(self.cat.ids)


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


def apply(state: Catalog, logged: Logged) -> Catalog:
    """Fold one event into the state and return it."""
    ev = logged.event
    if type(ev) is ArtifactRecorded:
        add_artifact(state, logged.seq, logged.ts_us, ev)
    elif type(ev) is PinChanged:
        apply_pin(state, logged.seq, ev.artifact_id, ev.pinned)
    elif type(ev) in LIFECYCLE_EVENTS:
        apply_life(state, logged.seq, ev)
        touched = state.life.dirty
        if touched:  # what an Artifact shows of them (aliases) may have changed: drop their shared results
            for aid in touched:
                i = state.id_rows.get(aid)
                if i is not None:
                    state.forget_row(i)
            touched.clear()
    state.head_seq = logged.seq
    state.times.append(logged.ts_us)
    return state


def replay(events: Iterable[Logged], state: Catalog | None = None) -> Catalog:
    """Fold a sequence of events, starting from ``state`` or an empty catalogue."""
    st = Catalog() if state is None else state
    for logged in events:
        apply(st, logged)
    return st


def apply_batch(state: Catalog, events: Sequence[Logged]) -> Catalog:
    """Fold many events at once; always equal to applying them one by one with ``apply``.

    Runs of artifact events are added column by column (C-level extends and
    grouped index appends) instead of field by field, which is what makes
    replay and catch-up fast.
    """
    return apply_decoded(state, [lg.seq for lg in events], [lg.ts_us for lg in events],
                         [lg.event for lg in events])


def apply_decoded(state: Catalog, seqs: Sequence[int], tss: Sequence[int], events: Sequence[Event]) -> Catalog:
    """``apply_batch`` on parallel lists (seq, commit time, event): what replay has in hand."""
    if state.unindexed is not None and events:
        if _append_deferred(state, seqs, tss, events):
            return state
        state.build_indexes()  # the one-event path below keeps indexes current: bring them up to date first
    start = 0
    for i, ev in enumerate(events):
        if type(ev) is ArtifactRecorded:
            continue
        if i > start:
            _add_run(state, seqs[start:i], tss[start:i], events[start:i])  # type: ignore[arg-type]
        apply(state, Logged(seqs[i], tss[i], ev))
        start = i + 1
    if start < len(events):
        _add_run(state, seqs[start:], tss[start:], events[start:])  # type: ignore[arg-type]
    return state


def _py_intern(values: list[Any], attr: str | None, str_ids: dict[Any, int], strs: list[Any]) -> bytes:
    """Codes (C ints, as bytes) of ``getattr(v, attr)`` (``v`` if ``attr`` is None) for each of ``values``.

    Values not in ``str_ids`` get the next codes in first-seen order (ids must not depend on hash
    order) and are appended to ``strs``. The C extension's ``intern`` is the fast twin.
    """
    vals = values if attr is None else list(map(attrgetter(attr), values))
    # New strings found at C speed: dict.fromkeys keeps first-seen order.
    fresh = list(filterfalse(str_ids.__contains__, dict.fromkeys(vals)))
    if fresh:
        str_ids.update(zip(fresh, range(len(strs), len(strs) + len(fresh))))
        strs.extend(fresh)
    return array("i", map(str_ids.__getitem__, vals)).tobytes()


def _py_lookup(values: list[Any], table: dict[Any, int]) -> tuple[bytes, list[int]]:
    """Codes (C ints, as bytes) of ``values`` in ``table``, with -1 for those it lacks, and where those are.

    The C extension's ``lookup`` is the fast twin.
    """
    get = table.get
    codes = array("i", [get(v, -1) for v in values])
    missing = [j for j, c in enumerate(codes) if c < 0] if -1 in codes else []
    return codes.tobytes(), missing


def _py_group_rows(cols: tuple[Sequence[int], ...], base: int, off: Sequence[int] | None = None,
                   remap: Sequence[int] | None = None) -> list[tuple[Any, array]]:
    """Group items by their codes: [(key, its items' rows, ascending), ...], keys first-seen first.

    ``cols`` holds 1 to 3 equally long columns of codes (C ints); an item's key is its code (one
    column, through ``remap[code]`` when given: an IndexError unless 0 <= code < len(remap)) or the
    tuple of its codes. Item ``j`` belongs to row ``base + j``, or, with ``off`` (ascending,
    ``off[i]..off[i+1]`` the items of row ``base + i``), to the row whose span holds it. The C
    extension's ``group_rows`` is the fast twin (its rows are C ints as bytes, not arrays).
    """
    if not 1 <= len(cols) <= 3:
        raise ValueError("cols must hold 1 to 3 columns")
    if remap is not None and len(cols) != 1:
        raise TypeError("remap must be a list, and needs exactly one column")
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise ValueError("columns differ in length")
    rows: Sequence[int]
    if off is None:
        rows = range(base, base + n)
    else:
        if len(off) < 1 or off[-1] - off[0] != n:
            raise ValueError("off must span exactly the items of the columns")
        if any(map(gt, off, islice(off, 1, None))):
            raise ValueError("off must be ascending")
        # Row base + i repeated once per item of its span, at C speed.
        rows = list(chain.from_iterable(map(repeat, range(base, base + len(off) - 1),
                                            map(sub, islice(off, 1, None), off))))
    if len(cols) == 1:
        codes: Sequence[int] = cols[0]
        if remap is not None:
            if n and min(codes) < 0:
                raise IndexError("list index out of range")  # a negative index would count from the end
            codes = list(map(remap.__getitem__, codes))
            if n and (min(codes) < -(1 << 31) or max(codes) >= 1 << 31):
                raise OverflowError("remapped code does not fit a C int")
        return [(c, array("i", g)) for c, g in _groups(codes, rows).items()]
    # Small integers hash far faster than tuples: the key as one number (32 bits per code, two's
    # complement), decoded once per group.
    if len(cols) == 2:
        a, b = cols
        keyed = _groups([(x & _M32) << 32 | (y & _M32) for x, y in zip(a, b)], rows)
        return [((_signed(k >> 32), _signed(k & _M32)), array("i", g)) for k, g in keyed.items()]
    a, b, c3 = cols
    keyed = _groups([((x & _M32) << 32 | (y & _M32)) << 32 | (z & _M32) for x, y, z in zip(a, b, c3)], rows)
    return [((_signed(k >> 64), _signed(k >> 32 & _M32), _signed(k & _M32)), array("i", g)) for k, g in keyed.items()]


_M32 = 0xFFFFFFFF


def _signed(u: int) -> int:
    """A 32-bit two's complement pattern as the C int it holds."""
    return u - (1 << 32) if u >= 1 << 31 else u


def _groups(codes: Sequence[Any], rows: Sequence[int]) -> dict[Any, list[int]]:
    """rows grouped by code, in one pass (beats sorting by code), groups in first-seen order."""
    groups: dict[Any, list[int]] = {}
    get = groups.get
    for r, c in zip(rows, codes):
        grp = get(c)
        if grp is None:
            groups[c] = [r]
        else:
            grp.append(r)
    return groups


def _py_columns(evs: list[ArtifactRecorded], label_start: int,
                metric_start: int) -> tuple[list[str], bytes, list[str], bytes, list[tuple[str, Any]], set[type],
                                            bytes, list[str], list[Any], bytes, list[int]]:
    """The fields of artifact events, column by column (the C extension's ``columns`` is the fast twin).

    Returns (ids, sizes as int64 bytes, sha256 hexes, pins as bytes, every label (key, value) in
    order, the set of label value types, each row's label end offset from ``label_start`` as int64
    bytes, metric names, metric values, metric end offsets from ``metric_start`` likewise, indexes
    of the events with ``derived_from``).
    """
    items = [it for ev in evs for it in ev.labels.items()]
    return ([ev.artifact_id for ev in evs], array("q", [ev.size for ev in evs]).tobytes(),
            [ev.sha256 for ev in evs], bytes(bytearray(ev.pinned for ev in evs)), items,
            set(map(type, [v for _, v in items])),
            array("q", accumulate([len(ev.labels) for ev in evs], initial=label_start))[1:].tobytes(),
            [k for ev in evs for k in ev.metrics], [v for ev in evs for v in ev.metrics.values()],
            array("q", accumulate([len(ev.metrics) for ev in evs], initial=metric_start))[1:].tobytes(),
            [j for j, ev in enumerate(evs) if ev.derived_from])


if _native is not None:
    _columns: Callable[[list[ArtifactRecorded], int, int], tuple] = _native.columns
    _intern: Callable[[list[Any], str | None, dict[Any, int], list[Any]], bytes] = _native.intern
    _group_rows: Callable[..., list[tuple[Any, Any]]] = _native.group_rows
    _lookup: Callable[[list[Any], dict[Any, int]], tuple[bytes, list[int]]] = _native.lookup
else:
    _lookup = _py_lookup
    _columns = _py_columns
    _intern = _py_intern
    _group_rows = _py_group_rows


def _extend_index(index: dict, groups: list[tuple[Any, Any]], key_of: Callable[[Any], Any]) -> None:
    """Append each group's rows (an array('i'), or C ints as bytes) to ``index[key_of(code)]``.

    The key is built once per group.
    """
    for code, rows in groups:
        key = key_of(code)
        lst = index.get(key)
        if type(rows) is array:
            if lst is None:
                index[key] = rows
            else:
                lst.extend(rows)
        elif lst is None:
            index[key] = lst = array("i")
            lst.frombytes(rows)
        else:
            lst.frombytes(rows)


def _append_deferred(state: Catalog, seqs: Sequence[int], tss: Sequence[int], events: Sequence[Event]) -> bool:
    """Fold a batch into the columns only (indexes deferred); False, with nothing changed, if it cannot.

    All the batch's artifacts are appended first, then its pins in seq order; a
    pin only counts for an artifact recorded before it (an earlier seq), exactly
    as when the events are applied one by one.
    """
    types = list(map(type, events))
    kinds = set(types)
    if not kinds <= {ArtifactRecorded, PinChanged}:
        return False  # lifecycle events are folded one by one, against current indexes
    # Split by type at C speed (map/compress), not in a Python loop per event.
    art_seqs: Sequence[int]
    art_tss: Sequence[int]
    if PinChanged in kinds:
        is_art = list(map(is_, types, repeat(ArtifactRecorded)))
        evs: list[ArtifactRecorded] = list(compress(events, is_art))  # type: ignore[arg-type]
        art_seqs, art_tss = list(compress(seqs, is_art)), list(compress(tss, is_art))
    else:
        evs = list(events)  # type: ignore[arg-type]
        art_seqs, art_tss = seqs, tss
    if evs and not _columns_only(state, art_seqs, art_tss, evs):
        return False
    if PinChanged in kinds:
        id_rows, row_seq = state.id_rows, state.seq
        for j in compress(range(len(types)), map(is_, types, repeat(PinChanged))):
            seq, ev = seqs[j], events[j]
            i = id_rows.get(ev.artifact_id)  # type: ignore[union-attr]
            if i is not None and row_seq[i] < seq:
                apply_pin(state, seq, ev.artifact_id, ev.pinned)  # type: ignore[union-attr]
    state.head_seq = seqs[-1]
    state.times.extend(tss)
    return True


def _add_run(state: Catalog, seqs: Sequence[int], tss: Sequence[int], evs: Sequence[ArtifactRecorded]) -> None:
    base = len(state.ids)
    if not _columns_only(state, seqs, tss, evs):
        for seq, ts, ev in zip(seqs, tss, evs):
            add_artifact(state, seq, ts, ev)
            state.head_seq = seq
            state.times.append(ts)
        return
    _index_rows(state, base)
    state.head_seq = seqs[-1]
    state.times.extend(tss)


def _columns_only(state: Catalog, seqs: Sequence[int], tss: Sequence[int], evs: Sequence[ArtifactRecorded]) -> bool:
    """Append artifact rows to the columns, column by column, without indexing them.

    Returns False, having changed nothing, unless the column-wise path applies:
    fresh, distinct ids, plain labels and no live best tables.
    """
    evl = evs if type(evs) is list else list(evs)
    (ids, sizes, shas, pins, items, value_types, label_ends, names, values, metric_ends,
     derived) = _columns(evl, state.label_off[-1], state.metric_off[-1])
    id_rows = state.id_rows
    base = len(state.ids)
    n = len(evs)
    if state.best or bool in value_types or list in value_types:
        return False
    # Built once: it tells repeated ids apart and merges into id_rows without hashing them again.
    rows_of = dict(zip(ids, range(base, base + n)))
    if len(rows_of) != n or not id_rows.keys().isdisjoint(rows_of):
        return False
    state.ids.extend(ids)
    id_rows.update(rows_of)
    state.seq.extend(seqs)
    state.ts.extend(tss)
    state.size.frombytes(sizes)
    str_ids, strs = state.str_ids, state.strs
    for col, attr in _STR_COLUMNS:
        getattr(state, col).frombytes(_intern(evl, attr, str_ids, strs))
    state.sha += bytes.fromhex("".join(shas))
    state.pinned0 += pins
    state.pin_now += pins
    if state._by_sha is not None:
        for j, sha in enumerate(shas):
            state._by_sha[bytes.fromhex(sha)] = base + j
    # labels: a plain value is its own strict key, except floats (1.0 must stay apart from 1)
    if float in value_types:
        keys = [(k, ("f", v)) if type(v) is float else (k, v) for k, v in items]
    else:
        keys = items
    codes, missing = _lookup(keys, state.pair_ids)
    _append_pairs(state, codes, [(j, keys[j], items[j]) for j in missing])
    state.label_off.frombytes(label_ends)
    state.metric_name.frombytes(_intern(names, None, str_ids, strs))
    state.metric_val.extend(values)
    state.metric_off.frombytes(metric_ends)
    for j in derived:
        record_parents(state, seqs[j], ids[j], evl[j].derived_from)
    return True


# The interned columns, in the order their new strings get codes (payload_columns keeps it).
_STR_COLUMNS = (("kind_s", "kind"), ("mime_s", "mime"), ("origin_s", "origin"), ("run_s", "run_id"),
                ("graph_s", "graph_id"), ("node_s", "node_id"), ("project_s", "project_id"),
                ("name_s", "name"), ("suggested_s", "suggested_uri"))

# The C reader of a chunk's payloads, used only where it reads exactly these events (a test holds it to them).
_payload_columns: Callable[..., tuple | None] | None = None
_C_SCHEMA = _native.EVENT_SCHEMA if _native is not None else 0  # the event version the C reader takes
if (_native is not None
        and set(_native.ARTIFACT_FIELDS) == set(ArtifactRecorded.__struct_fields__)
        and [a for _, a in _STR_COLUMNS] == list(_native.ARTIFACT_FIELDS[:len(_STR_COLUMNS)])):
    _payload_columns = _native.payload_columns


def append_payloads(state: Catalog, joined: bytes, seqs: Sequence[int], tss: Sequence[int]) -> bool:
    """Fold a scanned chunk (one msgpack array of its events) into the columns, indexes deferred, without
    decoding an event object; False, with nothing changed, where decoding and ``apply_decoded`` must do it.

    Equal to ``apply_decoded(state, seqs, tss, decode_event_array(joined, len(seqs)))`` whenever it folds.
    """
    if (_payload_columns is None or state.unindexed is None or state.best or not seqs
            or _events.SCHEMA_VERSION != _C_SCHEMA):  # read now: v1 records may need upcasting
        return False
    sq = seqs if type(seqs) is array else array("q", seqs)
    tq = tss if type(tss) is array else array("q", tss)
    got = _payload_columns(joined, sq, tq, len(state.ids), state.label_off[-1], state.metric_off[-1],
                           state.id_rows, state.str_ids, state.strs, state.pair_ids)
    if got is None:
        return False
    (art_seqs, art_tss, ids, sizes, sha, pins, cols, label_codes, missing, label_ends, metric_codes,
     metric_vals, metric_ends, derived, pin_evs) = got
    if ids:
        base = len(state.ids)
        state.ids.extend(ids)  # id_rows already has them: the reader added them while checking them
        state.seq.frombytes(art_seqs)
        state.ts.frombytes(art_tss)
        state.size.frombytes(sizes)
        for (col, _), codes in zip(_STR_COLUMNS, cols):
            getattr(state, col).frombytes(codes)
        state.sha += sha
        state.pinned0 += pins
        state.pin_now += pins
        if state._by_sha is not None:
            for j in range(len(ids)):
                state._by_sha[sha[32 * j:32 * j + 32]] = base + j
        _append_pairs(state, label_codes, missing)
        state.label_off.frombytes(label_ends)
        state.metric_name.frombytes(metric_codes)
        state.metric_val.extend(metric_vals)
        state.metric_off.frombytes(metric_ends)
        for seq, j, parents in derived:
            record_parents(state, seq, ids[j], parents)
    if pin_evs:  # after the chunk's artifacts, in seq order: a pin counts only for an artifact recorded before it
        id_rows, row_seq = state.id_rows, state.seq
        for seq, aid, pinned in pin_evs:
            i = id_rows.get(aid)
            if i is not None and row_seq[i] < seq:
                apply_pin(state, seq, aid, pinned)
    state.head_seq = seqs[-1]
    state.times.extend(tq)
    return True


def _append_pairs(state: Catalog, codes: bytes, missing: list[tuple[int, Any, tuple[str, Any]]]) -> None:
    """Append label pair codes (C ints as bytes), the ``missing`` ones ((j, strict key, item), -1 in ``codes``)
    given ids in first-seen order."""
    if not missing:
        state.label_pair.frombytes(codes)
        return
    pair_ids = state.pair_ids
    fixed = array("i")
    fixed.frombytes(codes)
    for j, key, item in missing:
        p = pair_ids.get(key)
        if p is None:
            p = pair_ids[key] = len(state.pairs)
            _new_pair(state, item[0], item[1], item)
        fixed[j] = p
    state.label_pair.extend(fixed)


def _index_rows(state: Catalog, base: int, end: int | None = None) -> None:
    """Add rows ``base..end`` (already in the columns; default: to the last) to every index, rows ascending."""
    stop = len(state.ids) if end is None else end
    by_label = state.by_label
    strs = state.strs
    group = _group_rows
    for col, attr in (("run_s", "run_id"), ("graph_s", "graph_id"), ("node_s", "node_id"),
                      ("project_s", "project_id")):
        def key_of(c: int, a: str = attr) -> tuple[str, Any]:
            return a, strs[c]
        _extend_index(by_label, group((getattr(state, col)[base:stop],), base), key_of)
    off = state.label_off
    pids = state.label_pair[off[base]:off[stop]]
    # Grouped by canonical value (1 and 1.0 share an index entry) so rows stay ascending.
    _extend_index(by_label, group((pids,), base, off[base:stop + 1], state.pair_rep), state.pair_canon.__getitem__)
    run_c, graph_c, node_c = state.run_s[base:stop], state.graph_s[base:stop], state.node_s[base:stop]
    _extend_index(state.by_graph, group((run_c, graph_c), base), lambda k: (strs[k[0]], strs[k[1]]))
    _extend_index(state.by_node, group((run_c, graph_c, node_c), base),
                  lambda k: (strs[k[0]], strs[k[1]], strs[k[2]]))
    _extend_index(state.by_kind, group((state.kind_s[base:stop],), base), strs.__getitem__)


def _new_pair(state: Catalog, k: str, v: Any, recorded: tuple[str, Any]) -> None:
    """Append a label pair (its strict key is already in pair_ids)."""
    ckey = (k, canon(v))
    pid = len(state.pairs)
    state.pairs.append(recorded)
    state.pair_canon.append(ckey)
    state.pair_rep.append(state._rep_of.setdefault(ckey, pid))


def apply_pin(state: Catalog, seq: int, aid: str, pinned: bool) -> None:
    """Record a pin change of a known artifact."""
    # A pin of an unknown id cannot be produced through the facade; the log
    # still wins, so it is kept out of the index rather than failing replay.
    i = state.id_rows.get(aid)
    if i is None:
        return
    state.pin_now[i] = pinned
    state.forget_row(i)
    hist = state.pin_history.get(aid)
    if hist is None:
        state.pin_history[aid] = [(seq, pinned)]
    else:
        hist.append((seq, pinned))
    state.pin_events.append((seq, aid, pinned))


def _push(index: dict, key: Any, i: int) -> None:
    lst = index.get(key)
    if lst is None:
        index[key] = array("i", (i,))
    else:
        lst.append(i)


def add_artifact(state: Catalog, seq: int, ts_us: int, ev: ArtifactRecorded) -> None:
    """Append one artifact row and index it."""
    aid = ev.artifact_id
    id_rows = state.id_rows
    if aid in id_rows:
        return  # ids are random 128-bit values; a repeat carries no new information
    i = len(state.ids)
    strs = state.strs
    str_ids = state.str_ids

    def sid(s: str | None) -> int:
        k = str_ids.get(s)
        if k is None:
            k = str_ids[s] = len(strs)
            strs.append(s)
        return k

    state.ids.append(aid)
    id_rows[aid] = i
    state.seq.append(seq)
    state.ts.append(ts_us)
    state.size.append(ev.size)
    state.kind_s.append(sid(ev.kind))
    state.mime_s.append(sid(ev.mime))
    state.origin_s.append(sid(ev.origin))
    state.run_s.append(sid(ev.run_id))
    state.graph_s.append(sid(ev.graph_id))
    state.node_s.append(sid(ev.node_id))
    state.project_s.append(sid(ev.project_id))
    state.name_s.append(sid(ev.name))
    state.suggested_s.append(sid(ev.suggested_uri))
    state.sha += bytes.fromhex(ev.sha256)
    state.pinned0.append(ev.pinned)
    state.pin_now.append(ev.pinned)
    if state._by_sha is not None:
        state._by_sha[bytes.fromhex(ev.sha256)] = i

    by_label = state.by_label
    _push(by_label, ("run_id", ev.run_id), i)
    _push(by_label, ("graph_id", ev.graph_id), i)
    _push(by_label, ("node_id", ev.node_id), i)
    _push(by_label, ("project_id", ev.project_id), i)
    pair_ids = state.pair_ids
    label_pair = state.label_pair
    for k, v in ev.labels.items():
        p = pair_ids.get((k, strict(v)))
        if p is None:
            p = pair_ids[(k, strict(v))] = len(state.pairs)
            _new_pair(state, k, v, (k, tuple(v) if type(v) is list else v))
        label_pair.append(p)
        _push(by_label, state.pair_canon[p], i)
    state.label_off.append(len(label_pair))
    for name, value in ev.metrics.items():
        state.metric_name.append(sid(name))
        state.metric_val.append(value)
    state.metric_off.append(len(state.metric_val))
    _push(state.by_graph, (ev.run_id, ev.graph_id), i)
    _push(state.by_node, (ev.run_id, ev.graph_id, ev.node_id), i)
    _push(state.by_kind, ev.kind, i)
    if state.best and ev.metrics:
        _update_best(state, i, ev)
    if ev.derived_from:
        record_parents(state, seq, aid, ev.derived_from)


def _update_best(state: Catalog, i: int, ev: ArtifactRecorded) -> None:
    scope_keys = None
    for metric, value in ev.metrics.items():
        tables = state.best.get((ev.kind, metric))
        if not tables:
            continue
        if scope_keys is None:
            scope_keys = scope_keys_of(ev)
        name_id = state.str_ids[metric]
        for sk in scope_keys:
            entry = tables.get(sk)
            if entry is None:
                continue  # not queried yet: computed from the indexes when first asked
            if entry[0] < 0:
                entry[0] = entry[1] = i
                continue
            # Ties go to the newer artifact (higher seq), which is this one.
            if value >= state.metric(entry[0], name_id):
                entry[0] = i
            if value <= state.metric(entry[1], name_id):
                entry[1] = i


__all__ = ["Catalog", "Logged", "ROW_CACHE_LIMIT", "Row", "RESERVED", "SCOPES", "add_artifact", "append_payloads",
           "apply", "apply_batch", "apply_decoded",
           "apply_pin",
           "replay",
           "scope_keys_of"]
