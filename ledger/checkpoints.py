"""Checkpoint files: projection snapshots tied to a log position (see FORMAT.md).

A checkpoint is a cache. It names the seq, record hash and byte position it
reflects; when it is damaged, of another schema, or does not match the log at
that seq, it is ignored (with a warning) and the state is rebuilt from the log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import uuid
import warnings
from dataclasses import dataclass
from typing import Iterable

import msgspec
from crc32c import crc32c

from ..store.durable import atomic_write, owner_tag
from ..store.durable import fsync_dir as _fsync_dir

from .filelog import Position

MAGIC = b"ALCKPT\x00\x02"  # version 2: a digest of the log prefix precedes the snapshot
# schema, seq, record hash, commit ts, segment first seq, record offset, next offset, payload length, payload crc
_HEADER = struct.Struct("<IQ32sqQQQQI")
HEADER_SIZE = len(MAGIC) + _HEADER.size + 4
POINTER = "_last_checkpoint"
KEEP = 3


class CheckpointWarning(UserWarning):
    """A checkpoint was ignored; the state is rebuilt from the log instead."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """Where a checkpoint sits in the log, the snapshot schema it uses, and the log prefix it summarises."""

    schema: int
    position: Position
    record_offset: int
    path: str
    log_digest: list[tuple[int, int, int]]  # (segment first seq, bytes, CRC-32 of those bytes)


def file_name(seq: int) -> str:
    """Checkpoint file name for a seq."""
    return f"{seq:020d}.ckpt"


def write(directory: str, schema: int, pos: Position, record_offset: int, parts: Iterable[bytes],
          *, log_digest: list[tuple[int, int, int]], fsync: bool = True) -> str:
    """Write a checkpoint atomically, point ``_last_checkpoint`` at it, prune old ones."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, file_name(pos.seq))
    tmp = f"{final}.{owner_tag()}.{uuid.uuid4().hex}.tmp"  # owner-tagged, for the sweep
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * HEADER_SIZE)  # filled in once length and checksum are known
            length = 0
            crc = 0
            digest = msgspec.msgpack.encode(log_digest)
            for part in itertools.chain([struct.pack("<I", len(digest)) + digest], parts):
                f.write(part)
                length += len(part)
                crc = crc32c(part, crc)
            head = _HEADER.pack(schema, pos.seq, pos.hash, pos.ts_us, pos.segment_first_seq, record_offset,
                                pos.offset, length, crc)
            f.seek(0)
            f.write(MAGIC + head + struct.pack("<I", crc32c(MAGIC + head)))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(directory)
    pointer = json.dumps({"seq": pos.seq, "file": file_name(pos.seq)}).encode()
    atomic_write(os.path.join(directory, POINTER), pointer, fsync=fsync)
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".ckpt"))[:-KEEP]:
        with contextlib.suppress(FileNotFoundError):  # another process may prune it first
            os.unlink(os.path.join(directory, name))
    return final


def candidates(directory: str) -> list[str]:
    """Checkpoint paths to try, best first: the pointer's, then the rest newest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted((n for n in os.listdir(directory) if n.endswith(".ckpt")), reverse=True)
    try:
        with open(os.path.join(directory, POINTER), "rb") as f:
            pointed = json.loads(f.read())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        pointed = None
    if isinstance(pointed, str) and pointed in names:
        # A newer file than the pointer's (another process wrote it) is still preferred.
        names.remove(pointed)
        newer = [n for n in names if n > pointed]
        older = [n for n in names if n < pointed]
        names = newer + [pointed] + older
    return [os.path.join(directory, n) for n in names]


class CheckpointError(ValueError):
    """A checkpoint file is damaged or unreadable."""


def read(path: str) -> tuple[CheckpointInfo, memoryview]:
    """Read and checksum a checkpoint file; returns (info, snapshot payload)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_SIZE or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError("not a checkpoint file (bad magic or too short)")
    head = data[len(MAGIC) : len(MAGIC) + _HEADER.size]
    (hcrc,) = struct.unpack_from("<I", data, len(MAGIC) + _HEADER.size)
    if crc32c(MAGIC + head) != hcrc:
        raise CheckpointError("checkpoint header checksum mismatch")
    schema, seq, rhash, ts, seg, roff, noff, plen, pcrc = _HEADER.unpack(head)
    payload = memoryview(data)[HEADER_SIZE:]
    if len(payload) != plen or crc32c(payload) != pcrc:
        raise CheckpointError("checkpoint payload checksum mismatch")
    (dlen,) = struct.unpack_from("<I", payload)
    try:
        digest = [tuple(x) for x in msgspec.msgpack.decode(payload[4 : 4 + dlen])]
    except (msgspec.DecodeError, TypeError) as exc:
        raise CheckpointError(f"undecodable log digest: {exc}") from exc
    info = CheckpointInfo(schema, Position(seq, rhash, ts, seg, noff), roff, path, digest)
    return info, payload[4 + dlen :]


def warn(path: str, reason: str) -> None:
    """Report an ignored checkpoint."""
    warnings.warn(f"ignoring checkpoint {path}: {reason}; rebuilding from the log", CheckpointWarning, stacklevel=3)


def _name_seq(name: str) -> int | None:
    stem = name[: -len(".ckpt")] if name.endswith(".ckpt") else ""
    return int(stem) if len(stem) == 20 and stem.isdigit() else None


def known_seq(directory: str) -> tuple[int, str]:
    """The highest seq a checkpoint file's name or the pointer records, and which one says so.

    A checkpoint is only written after its record is durable, so the log must
    hold at least this seq; (0, "") when there is nothing to go by.
    """
    best = (0, "")
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return best
    for name in names:
        seq = _name_seq(name)
        if seq is not None and seq > best[0]:
            best = (seq, f"checkpoint file {os.path.join(directory, name)}")
    try:
        with open(os.path.join(directory, POINTER), "rb") as f:
            pointed = json.loads(f.read())["seq"]
    except (OSError, ValueError, KeyError, TypeError):
        pointed = None
    if isinstance(pointed, int) and not isinstance(pointed, bool) and pointed > best[0]:
        best = (pointed, f"the checkpoint pointer {os.path.join(directory, POINTER)}")
    return best


def discard_beyond(directory: str, seq: int, *, fsync: bool = True) -> list[str]:
    """Delete checkpoints of seqs after ``seq`` and repoint ``_last_checkpoint`` (accepting lost records).

    Returns the names removed. Done only on an explicit ``accept_loss``: until then
    these files are the evidence that records are missing.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        n = _name_seq(name)
        if n is not None and n > seq:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
            removed.append(name)
    pointer = os.path.join(directory, POINTER)
    if known_seq(directory)[0] > seq:  # only the pointer can still be ahead now
        kept = sorted(n for n in os.listdir(directory) if (_name_seq(n) or 0) > 0)
        if kept:
            body = json.dumps({"seq": _name_seq(kept[-1]), "file": kept[-1]}).encode()
            atomic_write(pointer, body, fsync=fsync)
        else:
            os.unlink(pointer)
        removed.append(POINTER)
    if removed and fsync:
        _fsync_dir(directory)
    return removed
