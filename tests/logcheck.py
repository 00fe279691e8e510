"""Test helpers: an independent reader of the on-disk log and small ledger utilities.

The checker below re-derives the segment/record layout from the format
description instead of calling ``ledger.framing``, so a bug shared by the
writer and the reader in that module cannot hide from the tests.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from artifact_ledger.ledger.events import ArtifactRecorded, decode_event
from artifact_ledger.ledger.filelog import SegmentLog

HEADER_FIELDS = struct.Struct("<8sIQ32s")
HEADER_SIZE = HEADER_FIELDS.size + 4
ZERO_HASH = bytes(32)


@dataclass(frozen=True)
class DiskRecord:
    """One record as found on disk by the independent checker."""

    seq: int
    ts_us: int
    prev_hash: bytes
    hash: bytes
    payload: bytes
    segment: str
    offset: int
    length: int
    batch_first: int = 0  # format 2: seq of the first record of its batch


def seg_files(root: Path) -> list[Path]:
    """The segment files of a ledger root, in seq order."""
    return sorted((root / "log").glob("*.seg"))


def walk_disk(root: Path) -> list[DiskRecord]:
    """Parse every segment strictly; assert framing, CRCs, gap-free seq and the hash chain."""
    out: list[DiskRecord] = []
    prev = ZERO_HASH
    for path in seg_files(root):
        data = path.read_bytes()
        head = data[: HEADER_FIELDS.size]
        assert len(data) >= HEADER_SIZE, f"{path.name}: short header"
        assert struct.unpack_from("<I", data, HEADER_FIELDS.size)[0] == crc32c(head), f"{path.name}: header crc"
        magic, version, first, hprev = HEADER_FIELDS.unpack(head)
        assert magic == b"ALEDGSEG" and version in (1, 2), (magic, version)
        assert first == int(path.stem) == len(out) + 1, f"{path.name}: first seq {first}, have {len(out)} records"
        assert hprev == prev, f"{path.name}: header does not continue the chain"
        pos = HEADER_SIZE
        batch = None  # batches never span segments
        while pos < len(data):
            length, crc = struct.unpack_from("<II", data, pos)
            body = data[pos + 8 : pos + 8 + length]
            assert len(body) == length, f"{path.name}@{pos}: record cut short"
            assert crc32c(body, crc32c(data[pos : pos + 4])) == crc, f"{path.name}@{pos}: crc"
            seq, ts, rprev = struct.unpack_from("<Qq32s", body)
            head, bfirst = 48, 0
            if version == 2:
                # A record starts a batch (its own seq) or continues the previous record's.
                (bfirst,) = struct.unpack_from("<Q", body, 48)
                assert bfirst in (seq, batch), f"{path.name}@{pos}: batch start {bfirst} of seq {seq}"
                head, batch = 56, bfirst
            assert seq == len(out) + 1, f"{path.name}@{pos}: seq {seq} after {len(out)}"
            assert rprev == prev, f"{path.name}@{pos}: prev hash of seq {seq} does not link"
            if out:
                assert ts > out[-1].ts_us, "timestamps must increase"
            digest = hashlib.sha256(body).digest()
            out.append(DiskRecord(seq, ts, rprev, digest, body[head:], path.name, pos, 8 + length, bfirst))
            prev = digest
            pos += 8 + length
    return out


def read_log(root: Path) -> list:
    """Records as ``SegmentLog.read_from`` yields them (the library's own reader)."""
    log = SegmentLog(str(root / "log"))
    try:
        return list(log.read_from(1))
    finally:
        log.close()


def check_chain(root: Path) -> list[DiskRecord]:
    """Assert the library's reader and the independent parser agree on an unbroken chain."""
    disk = walk_disk(root)
    lib = read_log(root)
    assert [(r.seq, r.hash, r.prev_hash, r.payload, r.offset, r.batch_first) for r in lib] == [
        (r.seq, r.hash, r.prev_hash, r.payload, r.offset, r.batch_first) for r in disk
    ]
    prev = ZERO_HASH
    for r in lib:
        assert r.prev_hash == prev
        head = struct.pack("<Qq32s", r.seq, r.ts_us, r.prev_hash)
        if r.batch_first:  # format 2
            head += struct.pack("<Q", r.batch_first)
        body = head + r.payload
        assert hashlib.sha256(body).digest() == r.hash
        prev = r.hash
    return disk


def recorded_ids(records) -> list[str]:
    """Artifact ids of the ArtifactRecorded events among ``records``, in log order."""
    out = []
    for r in records:
        ev = decode_event(r.payload)
        if isinstance(ev, ArtifactRecorded):
            out.append(ev.artifact_id)
    return out


def file_size(path: Path) -> int:
    """Size in bytes of ``path``."""
    return os.stat(path).st_size
