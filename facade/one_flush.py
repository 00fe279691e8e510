"""One device flush per batch (FORMAT.md, "One flush per batch"): where it is used, and recovery's
check that the log's last batch names only whole blobs."""

from __future__ import annotations

import os
from typing import Any, Callable, Union

import msgspec

from ..ledger.base import EventLog, LastBatchCheck
from ..ledger.events import LIFECYCLE_EVENTS, SCHEMA_VERSION, ArtifactRecorded, Event, PinChanged, decode_event, \
    decode_events
from ..ledger.framing import Record
from ..store import durable
from ..store.base import BlobStore, OneFlushBlobs
from . import content

# "three" keeps the three-flush protocol (blobs, renames, log) where one flush would do; "one" (the
# default) uses one flush wherever it is safe. Read when a ledger is opened.
ENV = "ARTIFACT_LEDGER_BATCH_FLUSH"
PROTOCOLS = ("one", "three")


def chosen_protocol() -> str:
    """The protocol ``ARTIFACT_LEDGER_BATCH_FLUSH`` asks for (``one`` when unset)."""
    value = os.environ.get(ENV, "one").strip().lower() or "one"
    if value not in PROTOCOLS:
        raise ValueError(f"{ENV}={value!r}; use 'one' (one device flush per batch) or 'three' (blobs, renames "
                         "and log flushed one after the other)")
    return value


def why_not(log: EventLog, store: BlobStore, *, fsync: bool, read_only: bool) -> str | None:
    """None if this log and store can flush a batch with one syncfs; else why not (they keep three flushes)."""
    if read_only or not fsync:
        return "nothing is flushed"
    device = log.flush_device
    if device is None:
        return "the log is not the segment-file log"
    blobs = store.one_flush_side()
    if blobs is None or not blobs.deferred:
        return "the blobs are not in a local store"
    if not durable.syncfs_reports_errors():
        return f"syncfs(2) is missing or does not report errors on this kernel ({os.uname().release})"
    if device != blobs.device:
        return "the log and the blobs are on different filesystems"
    return None


def install(log: EventLog, store: BlobStore, *, fsync: bool, read_only: bool) -> str:
    """Wire the last-batch check into every local log with a local store, and one flush per batch where
    it is safe and chosen; returns the protocol this process writes with (``one`` or ``three``)."""
    blobs = store.one_flush_side()
    if blobs is None or log.flush_device is None:
        return "three"
    # Any process may have written the last batch with one flush, so every opener checks it.
    log.check_last_batch_with(last_batch_check(blobs))
    protocol = chosen_protocol()
    if protocol == "one" and why_not(log, store, fsync=fsync, read_only=read_only) is None:
        log.flush_batches_with(blobs)
        return "one"
    return "three"


def batch_blobs(records: list[Record], store: OneFlushBlobs) -> tuple[list[tuple[str, int | None]], list[str]]:
    """(blob, size) of every blob the records' events name (directory members included), and what
    is wrong with those that cannot even be listed (a directory manifest that is not whole)."""
    out: list[tuple[str, int | None]] = []
    problems: list[str] = []
    # One bulk decode; one by one only when that fails (an old version, or damage: the replay's to report).
    events: list[Event | None] = list(decode_events([r.payload for r in records]) or map(_decoded, records))
    for rec, ev in zip(records, events):
        if not isinstance(ev, ArtifactRecorded):
            continue
        if ev.mime != content.DIR_MIME:
            out.append((ev.sha256, ev.size))
            continue
        out.append((ev.sha256, None))
        try:
            manifest = content.decode_manifest(store.read_bytes(ev.sha256))
        except Exception as exc:  # noqa: BLE001 - missing, short or garbled: the tree cannot be listed
            problems.append(f"directory manifest {ev.sha256} of seq {rec.seq} ({type(exc).__name__})")
            continue
        out.extend((e["sha256"], e["bytes"]) for e in manifest["files"])
    return out, problems


class _Names(msgspec.Struct, frozen=True, kw_only=True, tag=ArtifactRecorded.__struct_config__.tag):
    """The fields of an ``ArtifactRecorded`` that name its blob, and nothing else (decoded far faster)."""

    v: int = SCHEMA_VERSION
    sha256: str
    size: int
    mime: str


# Every other event type, as its version only: none of them names a blob.
_OTHERS = tuple(msgspec.defstruct(f"_{cls.__name__}Version", [("v", int, SCHEMA_VERSION)], frozen=True,
                                  tag=cls.__struct_config__.tag) for cls in (PinChanged, *LIFECYCLE_EVENTS))
_names_decoder: Any = msgspec.msgpack.Decoder(list[Union[(_Names, *_OTHERS)]])  # type: ignore[valid-type]


def named_blobs(records: list[Record]) -> list[tuple[str, int]] | None:
    """(blob, size) of every blob the records' current-version, non-directory events name, decoding only
    those fields; None where that does not apply (a record of an old version, a directory, damage)."""
    n = len(records)
    try:
        events = _names_decoder.decode(b"".join([b"\xdd" + n.to_bytes(4, "big"), *[r.payload for r in records]]))
    except msgspec.DecodeError:
        return None
    if len(events) != n or any(ev.v != SCHEMA_VERSION for ev in events):
        return None
    names = [ev for ev in events if type(ev) is _Names]
    if any(ev.mime == content.DIR_MIME for ev in names):
        return None
    return [(ev.sha256, ev.size) for ev in names]


def _decoded(rec: Record) -> Event | None:
    try:
        return decode_event(rec.payload)
    except Exception:  # noqa: BLE001 - an undecodable record is the replay's to report, as damage
        return None


def last_batch_check(store: OneFlushBlobs) -> LastBatchCheck:
    """The check ``SegmentLog.recover`` runs on the log's last batch: None if every blob it names is whole,
    else (what is wrong, a cleanup removing the blob files that are present but not whole)."""

    def check(records: list[Record]) -> tuple[str, Callable[[], None]] | None:
        # Nearly always every blob is whole: shown from the blob-naming fields alone, a superset of what
        # the full decode below lists (it skips records it cannot decode), with the same values. Anything
        # else, and every verdict that a blob is not whole, takes the full path.
        quick = named_blobs(records)
        if quick is not None and all(store.complete(sha, size) for sha, size in dict.fromkeys(quick)):
            return None
        blobs, problems = batch_blobs(records, store)
        broken: list[tuple[str, int | None]] = []
        for sha, size in dict.fromkeys(blobs):
            if not store.complete(sha, size):
                broken.append((sha, size))
        if not broken and not problems:
            return None
        names = [f"blob {sha[:16]}... {'incomplete' if store.exists(sha) else 'missing'}"
                 for sha, _ in broken[:3]]
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        what = "; ".join(problems[:2] + names) + more

        def cleanup() -> None:
            for sha, size in broken:
                store.remove_incomplete(sha, size)

        return what, cleanup

    return check
