"""Pure conversion of a Catalog to and from checkpoint bytes.

The catalogue is columnar, so a snapshot is mostly raw array bytes: loading
one is a series of memory copies, not a replay. Large lists are encoded in
chunks so that no single call holds the GIL (and the event loop) for long.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Any, Iterator

import msgspec

from .catalog import Catalog
from .lifecycle import Lifecycle

SNAPSHOT_SCHEMA = 3  # 3: the lifecycle part (aliases, lineage, retire, purge, gc)
CHUNK = 65536

_ARRAYS = ("times", "seq", "ts", "size", "kind_s", "mime_s", "origin_s", "run_s", "graph_s", "node_s",
           "project_s", "name_s", "suggested_s", "label_off", "label_pair", "metric_off", "metric_name")
_BYTES = ("sha", "pinned0", "pin_now")
_LISTS = ("strs", "ids", "metric_val")
_INDEXES = ("by_label", "by_graph", "by_node", "by_kind")


@dataclass(frozen=True, slots=True)
class Capture:
    """A consistent copy of a Catalog's contents, cheap to take on the event loop."""

    head_seq: int
    arrays: dict[str, bytes]
    lists: dict[str, list]
    pairs: list[tuple[str, Any]]
    indexes: dict[str, list[tuple[Any, bytes]]]
    pin_events: list[tuple[int, str, bool]]
    life: list[Any]


def capture(state: Catalog) -> Capture:
    """Copy what a snapshot needs (memory copies only; no encoding)."""
    arrays = {name: getattr(state, name).tobytes() for name in _ARRAYS}
    arrays.update({name: bytes(getattr(state, name)) for name in _BYTES})
    return Capture(
        head_seq=state.head_seq,
        arrays=arrays,
        lists={name: getattr(state, name)[:] for name in _LISTS},
        pairs=state.pairs[:],
        indexes={name: [(k, v.tobytes()) for k, v in getattr(state, name).items()] for name in _INDEXES},
        pin_events=state.pin_events[:],
        life=state.life.to_plain(),
    )


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_LEN = struct.Struct("<I")


def _part(obj: Any) -> bytes:
    data = _enc.encode(obj)
    return _LEN.pack(len(data)) + data


def encode_parts(cap: Capture) -> Iterator[bytes]:
    """Serialise a capture as length-prefixed msgpack parts."""
    lens = {name: len(v) for name, v in cap.lists.items()}
    yield _part([SNAPSHOT_SCHEMA, cap.head_seq, lens, cap.pairs, cap.pin_events])
    for name in sorted(cap.arrays):
        yield _part([name, cap.arrays[name]])
    for name in _LISTS:
        values = cap.lists[name]
        for i in range(0, len(values), CHUNK):
            yield _part([name, values[i : i + CHUNK]])
    for name in _INDEXES:
        entries = cap.indexes[name]
        for i in range(0, len(entries), CHUNK):
            yield _part([name, [[_plain(k), v] for k, v in entries[i : i + CHUNK]]])
    yield _part(["life", cap.life])


def encode(cap: Capture) -> bytes:
    """Serialise a capture into one bytes object."""
    return b"".join(encode_parts(cap))


class SnapshotError(ValueError):
    """Snapshot bytes are undecodable, inconsistent, or of another schema version."""


def _plain(key: Any) -> Any:
    """Index keys are tuples (canonical label values nest tuples); msgpack keeps them as arrays."""
    return [_plain(x) for x in key] if isinstance(key, tuple) else key


def _tupled(key: Any) -> Any:
    return tuple(_tupled(x) for x in key) if isinstance(key, list) else key


def _parts(data: bytes | memoryview) -> Iterator[memoryview]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < 4:
            raise SnapshotError("snapshot ends inside a part length")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if len(view) - pos < n:
            raise SnapshotError("snapshot ends inside a part")
        yield view[pos : pos + n]
        pos += n


def decode(data: bytes | memoryview) -> Catalog:
    """Rebuild a Catalog from snapshot bytes, checking that its parts agree."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, StopIteration, TypeError, ValueError, KeyError, IndexError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"undecodable snapshot: {exc!r}") from exc


def _decode(data: bytes | memoryview) -> Catalog:
    parts = _parts(data)
    schema, head_seq, lens, pairs, pin_events = _dec.decode(next(parts))
    if schema != SNAPSHOT_SCHEMA:
        raise SnapshotError(f"snapshot schema {schema}, expected {SNAPSHOT_SCHEMA}")
    state = Catalog()
    for name in _LISTS:
        getattr(state, name).clear()
    for name in ("label_off", "metric_off"):
        getattr(state, name).pop()
    for part in parts:
        name, value = _dec.decode(part)
        if name in _ARRAYS:
            getattr(state, name).frombytes(value)
        elif name in _BYTES:
            getattr(state, name).extend(value)
        elif name in _LISTS:
            getattr(state, name).extend(value)
        elif name in _INDEXES:
            index = getattr(state, name)
            for key, raw in value:
                a = array("i")
                a.frombytes(raw)
                index[_tupled(key)] = a
        elif name == "life":
            state.life = Lifecycle.from_plain(value)
        else:
            raise SnapshotError(f"unknown snapshot part {name!r}")
    n = len(state.ids)
    if {name: len(getattr(state, name)) for name in _LISTS} != lens:
        raise SnapshotError("snapshot lists are incomplete")
    for name in ("seq", "ts", "size", "kind_s", "run_s", "pinned0", "pin_now"):
        if len(getattr(state, name)) != n:
            raise SnapshotError(f"snapshot column {name} has {len(getattr(state, name))} rows, expected {n}")
    if len(state.sha) != 32 * n or len(state.label_off) != n + 1 or len(state.metric_off) != n + 1:
        raise SnapshotError("snapshot row offsets do not match its row count")
    if len(state.times) != head_seq:
        raise SnapshotError(f"snapshot has {len(state.times)} commit times for head seq {head_seq}")
    state.str_ids = dict(zip(state.strs, range(len(state.strs))))
    state._id_rows = None  # a million-entry dict is built only when an id is looked up
    state.pairs = [(k, _tupled(v)) for k, v in pairs]
    from .labels import canon, strict

    state.pair_ids = {(k, strict(v)): i for i, (k, v) in enumerate(state.pairs)}
    state.pair_canon = [(k, canon(v)) for k, v in state.pairs]
    state._rep_of = {}
    state.pair_rep = [state._rep_of.setdefault(ck, pid) for pid, ck in enumerate(state.pair_canon)]
    for seq, aid, pinned in pin_events:
        state.pin_history.setdefault(aid, []).append((seq, pinned))
        state.pin_events.append((seq, aid, pinned))
    state.head_seq = head_seq
    return state
