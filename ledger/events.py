"""Event types recorded in the ledger: small, typed, immutable msgspec values.

Each event carries a type tag and a schema version ``v``. Older versions are
upcast when read (see ``UPCASTERS``), never rewritten on disk.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Union, get_args

import msgspec

SCHEMA_VERSION = 1

# Metric values are finite numbers; labels are JSON scalars or lists of them. Decoding checks the
# label types too, so a foreign record holding anything else (msgpack bin, a map, a list of lists)
# is an EventDecodeError naming the label, never a value no projection can fold.
Metric = Union[int, float]
Scalar = Union[str, int, float, bool, None]
Label = Union[Scalar, list[Scalar]]


class ArtifactRecorded(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.recorded"):
    """One recorded occurrence of an artifact (save, ingest, writer or ingest_dir)."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    origin: str
    kind: str
    sha256: str
    size: int
    mime: str
    labels: dict[str, Label] = {}
    metrics: dict[str, Metric] = {}
    pinned: bool = False
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None = None
    suggested_uri: str | None = None
    name: str | None = None
    # Lineage recorded with the artifact (ids of artifacts it was derived from). Added
    # without a version bump: payloads written before it decode with the empty default.
    derived_from: list[str] = []


class PinChanged(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.pin"):
    """A pin or unpin of one artifact."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    pinned: bool


class AliasSet(msgspec.Struct, frozen=True, kw_only=True, tag="alias.set"):
    """A name of a namespace now points at an artifact (created, or moved from another)."""

    v: int = SCHEMA_VERSION
    namespace: str
    name: str
    artifact_id: str
    protected: bool = False
    force: bool = False  # moved although the alias was protected


class AliasRemoved(msgspec.Struct, frozen=True, kw_only=True, tag="alias.removed"):
    """A name of a namespace no longer points anywhere."""

    v: int = SCHEMA_VERSION
    namespace: str
    name: str
    force: bool = False


class Related(msgspec.Struct, frozen=True, kw_only=True, tag="lineage.related"):
    """A lineage edge recorded after the fact: ``child`` came from ``parent``."""

    v: int = SCHEMA_VERSION
    child: str
    parent: str
    relation: str


class Retired(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.retired"):
    """An artifact is hidden from list, search, best and resolve from now on."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    reason: str
    force: bool = False


class Purged(msgspec.Struct, frozen=True, kw_only=True, tag="artifact.purged"):
    """An artifact is retired and its bytes may be collected once no live artifact needs its blob."""

    v: int = SCHEMA_VERSION
    artifact_id: str
    reason: str
    force: bool = False


class GcPlanned(msgspec.Struct, frozen=True, kw_only=True, tag="gc.planned"):
    """A garbage collection plan; ``purge`` (part ``part`` of ``parts``) are purged by it."""

    v: int = SCHEMA_VERSION
    plan_id: str
    policy: dict[str, Any] | None = None
    purge: list[str] = []
    part: int = 1
    parts: int = 1
    blobs: int = 0  # blobs the plan expects to delete
    bytes: int = 0  # bytes the plan expects to free
    grace_s: float = 0.0


class GcSwept(msgspec.Struct, frozen=True, kw_only=True, tag="gc.swept"):
    """The result of a sweep: what was deleted for plan ``plan_id``."""

    v: int = SCHEMA_VERSION
    plan_id: str
    blobs: int = 0
    bytes: int = 0
    kept: int = 0  # planned blobs found needed again at deletion time and kept
    staging: int = 0
    materialized: int = 0
    resumes: list[str] = []  # earlier plans left without a result (their gc died) that this sweep finished


Event = Union[ArtifactRecorded, PinChanged, AliasSet, AliasRemoved, Related, Retired, Purged, GcPlanned, GcSwept]
LIFECYCLE_EVENTS = (AliasSet, AliasRemoved, Related, Retired, Purged, GcPlanned, GcSwept)
RELATIONS = frozenset({"derived_from", "consumed", "references"})

ORIGINS = frozenset({"save", "ingest", "writer", "ingest_dir"})

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode an event as the msgpack payload of a log record."""
    return _encoder.encode(event)


class EventDecodeError(ValueError):
    """A record's payload is not a known event of a supported schema version."""


# Upcasters: (type tag, version v) -> function turning the raw map of a version-v event
# into the raw map of a version v+1 one. Version 1 is the first, so there are none yet;
# a change to an event's fields bumps SCHEMA_VERSION and adds one here.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}
_TAGS: dict[Any, type[Event]] = {cls.__struct_config__.tag: cls
                                  for cls in (ArtifactRecorded, PinChanged, *LIFECYCLE_EVENTS)}


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register ``fn(raw) -> raw`` turning a ``from_version`` map of ``event_type`` into the next version's.

    Every read path (replay, ``events()``, projections, audit) runs the chain of upcasters from a
    record's version up to the current one, so folds only ever see current, typed events.
    """
    if event_type not in _TAGS:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(sorted(_TAGS))}")
    if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
        raise ValueError(f"from_version must be an int >= 1, got {from_version!r}")

    def register(fn: Upcaster) -> Upcaster:
        if not callable(fn):
            raise TypeError(f"an upcaster must be a function raw -> raw, got {fn!r}")
        if (event_type, from_version) in UPCASTERS:
            raise ValueError(f"an upcaster from {event_type} v{from_version} is already registered "
                             f"({UPCASTERS[(event_type, from_version)]!r}); each version step has exactly one")
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def decode_event(payload: bytes) -> Event:
    """Decode a record payload into a typed event, upcasting old versions."""
    try:
        event = _decoder.decode(payload)
    except msgspec.DecodeError:
        event = None  # an old version may have another shape: decoded raw below
    if event is not None and event.v == SCHEMA_VERSION:
        return event
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"undecodable event payload: {exc}") from exc
    return upcast_raw(raw)


def upcast_raw(raw: Any) -> Event:
    """Bring the raw map of an event of any supported version up to the current typed event."""
    if not isinstance(raw, dict):
        raise EventDecodeError(f"undecodable event payload: a {type(raw).__name__}, not a map")
    tag, v = raw.get("type"), raw.get("v", 1)  # every event has written v; 1 is the first
    if tag not in _TAGS:
        raise EventDecodeError(f"unknown event type {tag!r} (known: {', '.join(sorted(_TAGS))}); "
                               "a newer artifact-ledger may have written it")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EventDecodeError(f"event {tag} has an invalid schema version {v!r}")
    if v > SCHEMA_VERSION:
        raise EventDecodeError(
            f"event {tag} has schema version {v}, newer than this library's {SCHEMA_VERSION}; "
            "upgrade artifact-ledger to read this ledger"
        )
    assert isinstance(tag, str)  # every key of _TAGS is one
    while v < SCHEMA_VERSION:
        step = UPCASTERS.get((tag, v))
        if step is None:
            raise EventDecodeError(f"event {tag} has schema version {v}, and no upcaster to {v + 1} exists")
        raw = {**step(dict(raw)), "type": tag, "v": v + 1}
        v += 1
    try:
        return msgspec.convert(raw, Event)
    except msgspec.ValidationError as exc:
        # msgspec's path does not name a map's key ("$.labels[...]"): say which label it is.
        raise EventDecodeError(f"undecodable event payload ({tag} v{v}): {exc}{_bad_label(raw)}") from exc


_SCALARS = get_args(Scalar)  # the label types, as isinstance wants them


def _bad_label(raw: dict[str, Any]) -> str:
    """'; labels.<key> holds ...' for the first label of ``raw`` that is no JSON scalar or list of them, else ''."""
    labels = raw.get("labels")
    if not isinstance(labels, dict):
        return ""
    for key, value in labels.items():
        if isinstance(value, _SCALARS):
            continue
        if isinstance(value, list):
            if all(isinstance(x, _SCALARS) for x in value):
                continue
            what = "a list holding other than scalars"
        else:
            what = f"a {type(value).__name__} value"
        return f"; labels.{key} holds {what} ({value!r:.60}), not a JSON scalar or list of scalars"
    return ""


_list_decoder = msgspec.msgpack.Decoder(list[Event])
_version_of = attrgetter("v")


def decode_events(payloads: list[bytes]) -> list[Event] | None:
    """Decode many payloads in one call; None if any is bad (decode them one by one to find it)."""
    n = len(payloads)
    # A msgpack array32 header followed by the payloads is exactly a list of events.
    # One join (prepending the header to the joined payloads would copy them all a second time).
    parts = [b"\xdd" + n.to_bytes(4, "big")]
    parts += payloads
    return decode_event_array(b"".join(parts), n)


def decode_event_array(data: bytes, n: int) -> list[Event] | None:
    """Decode a msgpack array of ``n`` current-version events in one call; None if any is bad or old."""
    try:
        events = _list_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    if len(events) != n:
        return None
    if any(map(SCHEMA_VERSION.__ne__, map(_version_of, events))):
        return None  # old or future versions take the one-by-one path (upcast or a clear error)
    return events


def upcast(event: Event) -> Event:
    """Bring a typed event of an older schema version up to the current one (see ``UPCASTERS``)."""
    if event.v == SCHEMA_VERSION:
        return event
    return upcast_raw(msgspec.to_builtins(event))
