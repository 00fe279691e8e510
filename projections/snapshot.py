"""Pure conversion of a Catalog to and from checkpoint bytes.

A snapshot holds the facts (artifacts with their seq and time, pin events,
commit times); the indexes are rebuilt from them on load, so a snapshot can
never disagree with itself. Rows are encoded in chunks so that a big snapshot
never holds the GIL (and so the event loop) for long in one call.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Iterator

import msgspec

from ledger.events import ArtifactRecorded

from .catalog import Catalog, Row, _add_artifact

SNAPSHOT_SCHEMA = 1
CHUNK_ROWS = 8192

_Rows = list[tuple[int, int, ArtifactRecorded]]


class _Head(msgspec.Struct, array_like=True):
    schema: int
    head_seq: int
    times: bytes
    pin_events: list[tuple[int, str, bool]]
    n_rows: int


@dataclass(frozen=True, slots=True)
class Capture:
    """A consistent, immutable cut of a Catalog, cheap to take on the event loop."""

    head_seq: int
    times: bytes
    rows: list[Row]
    pin_events: list[tuple[int, str, bool]]


def capture(state: Catalog) -> Capture:
    """Copy the references a snapshot needs (rows are immutable, lists are copied)."""
    return Capture(state.head_seq, state.times.tobytes(), state.ordered[:], state.pin_events[:])


_enc = msgspec.msgpack.Encoder()
_head_dec = msgspec.msgpack.Decoder(_Head)
_rows_dec = msgspec.msgpack.Decoder(_Rows)
_LEN = struct.Struct("<I")


def encode_parts(cap: Capture) -> Iterator[bytes]:
    """Serialise a capture as length-prefixed parts: a head, then row chunks."""
    head = _enc.encode(_Head(SNAPSHOT_SCHEMA, cap.head_seq, cap.times, cap.pin_events, len(cap.rows)))
    yield _LEN.pack(len(head)) + head
    rows = cap.rows
    for i in range(0, len(rows), CHUNK_ROWS):
        chunk = _enc.encode([(r.seq, r.ts_us, r.ev) for r in rows[i : i + CHUNK_ROWS]])
        yield _LEN.pack(len(chunk)) + chunk


def encode(cap: Capture) -> bytes:
    """Serialise a capture into one bytes object."""
    return b"".join(encode_parts(cap))


class SnapshotError(ValueError):
    """Snapshot bytes are undecodable or of another schema version."""


def _parts(data: bytes) -> Iterator[memoryview]:
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


def decode(data: bytes) -> Catalog:
    """Rebuild a Catalog (indexes included) from snapshot bytes."""
    parts = _parts(data)
    try:
        head = _head_dec.decode(next(parts))
        if head.schema != SNAPSHOT_SCHEMA:
            raise SnapshotError(f"snapshot schema {head.schema}, expected {SNAPSHOT_SCHEMA}")
        state = Catalog()
        count = 0
        for part in parts:
            for seq, ts_us, ev in _rows_dec.decode(part):
                _add_artifact(state, Row(seq, ts_us, ev))
                count += 1
    except (msgspec.DecodeError, StopIteration) as exc:
        raise SnapshotError(f"undecodable snapshot: {exc!r}") from exc
    if count != head.n_rows or len(state.rows) != count:
        raise SnapshotError(f"snapshot holds {count} rows, its head says {head.n_rows}")
    for seq, aid, pinned in head.pin_events:
        if aid in state.rows:
            state.pinned[aid] = pinned
            state.pin_history.setdefault(aid, []).append((seq, pinned))
            state.pin_events.append((seq, aid, pinned))
    times = array("q")
    times.frombytes(head.times)
    if len(times) != head.head_seq:
        raise SnapshotError(f"snapshot has {len(times)} commit times for head seq {head.head_seq}")
    state.times = times
    state.head_seq = head.head_seq
    return state
