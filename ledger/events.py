"""Event types recorded in the ledger: small, typed, immutable msgspec values.

Each event carries a type tag and a schema version ``v``. Older versions are
upcast when read (see ``upcast``), never rewritten on disk.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

SCHEMA_VERSION = 1

# Metric values are finite numbers; labels are JSON scalars or lists of them.
Metric = Union[int, float]


class ArtifactRecorded(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.recorded"):
    """One recorded occurrence of an artifact (save, ingest, writer or ingest_dir)."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    origin: str
    kind: str
    sha256: str
    size: int
    mime: str
    labels: dict[str, Any] = {}
    metrics: dict[str, Metric] = {}
    pinned: bool = False
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None = None
    suggested_uri: str | None = None
    name: str | None = None


class PinChanged(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.pin"):
    """A pin or unpin of one artifact."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    pinned: bool


Event = Union[ArtifactRecorded, PinChanged]

ORIGINS = frozenset({"save", "ingest", "writer", "ingest_dir"})

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode an event as the msgpack payload of a log record."""
    return _encoder.encode(event)


class EventDecodeError(ValueError):
    """A record's payload is not a known event of a supported schema version."""


def decode_event(payload: bytes) -> Event:
    """Decode a record payload into a typed event, upcasting old versions."""
    try:
        event = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"undecodable event payload: {exc}") from exc
    return upcast(event)


_list_decoder = msgspec.msgpack.Decoder(list[Event])


def decode_events(payloads: list[bytes]) -> list[Event] | None:
    """Decode many payloads in one call; None if any is bad (decode them one by one to find it)."""
    n = len(payloads)
    # A msgpack array32 header followed by the payloads is exactly a list of events.
    try:
        events = _list_decoder.decode(b"\xdd" + n.to_bytes(4, "big") + b"".join(payloads))
    except msgspec.DecodeError:
        return None
    if len(events) != n:
        return None
    for ev in events:
        if ev.v != SCHEMA_VERSION:
            return None  # old or future versions take the one-by-one path (upcast or a clear error)
    return events


def upcast(event: Event) -> Event:
    """Bring an event of an older schema version up to the current one."""
    if event.v > SCHEMA_VERSION:
        raise EventDecodeError(
            f"event {type(event).__name__} has schema version {event.v}, newer than "
            f"this library's {SCHEMA_VERSION}; upgrade artifact-ledger to read this ledger"
        )
    # Version 1 is the first; later versions add upcasters here.
    return event
