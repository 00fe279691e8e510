"""Byte layout of segment headers and log records (see FORMAT.md)."""

from __future__ import annotations

import hashlib
import re
from array import array
import struct
from typing import Iterator, NamedTuple

from crc32c import crc32c

from .speedups import native as _native

MAGIC = b"ALEDGSEG"
# New segments are written in FORMAT_VERSION; every version in READ_VERSIONS is read.
# Version 2 adds the batch's first seq to every record body (see FORMAT.md, "Batches").
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
GENESIS_HASH = b"\x00" * 32

# magic, format version, first seq, hash of the record before first seq
_SEG_HEADER = struct.Struct("<8sIQ32s")
SEGMENT_HEADER_SIZE = _SEG_HEADER.size + 4  # + crc32c of the fields above

# body length, crc32c(length bytes + body)
_FRAME = struct.Struct("<II")
FRAME_SIZE = _FRAME.size
# seq, commit time in microseconds since the Unix epoch (UTC), previous record hash
_BODY_HEAD = struct.Struct("<Qq32s")
BODY_HEAD_SIZE = _BODY_HEAD.size  # version 1
# version 2: the same, then the seq of the first record of the record's batch
_BODY_HEAD_V2 = struct.Struct("<Qq32sQ")
BODY_HEAD_SIZE_V2 = _BODY_HEAD_V2.size
MAX_BODY = 64 * 1024 * 1024


def body_head_size(version: int) -> int:
    """Bytes of fixed fields at the start of a record body of segment format ``version``."""
    return BODY_HEAD_SIZE if version == 1 else BODY_HEAD_SIZE_V2


class Record(NamedTuple):
    """One decoded log record with its position on disk (a tuple: cheap to make in bulk)."""

    seq: int
    ts_us: int
    prev_hash: bytes
    hash: bytes
    payload: bytes
    segment: str
    offset: int
    length: int
    batch_first: int = 0  # seq of the first record of its batch (version 2); 0 in version-1 segments


def encode_segment_header(first_seq: int, prev_hash: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Encode the fixed-size header that opens every segment file."""
    head = _SEG_HEADER.pack(MAGIC, version, first_seq, prev_hash)
    return head + struct.pack("<I", crc32c(head))


class HeaderError(ValueError):
    """A segment header is missing, damaged or of an unknown format."""


def decode_segment_header(data: bytes) -> tuple[int, bytes]:
    """Decode a segment header, returning (first seq, previous hash)."""
    first_seq, prev_hash, _ = read_segment_header(data)
    return first_seq, prev_hash


def read_segment_header(data: bytes) -> tuple[int, bytes, int]:
    """Decode a segment header, returning (first seq, previous hash, format version)."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise HeaderError(f"segment header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    head = data[: _SEG_HEADER.size]
    (crc,) = struct.unpack_from("<I", data, _SEG_HEADER.size)
    if crc32c(head) != crc:
        raise HeaderError("segment header checksum mismatch")
    magic, version, first_seq, prev_hash = _SEG_HEADER.unpack(head)
    if magic != MAGIC:
        raise HeaderError(f"not a ledger segment (magic {magic!r})")
    if version not in READ_VERSIONS:
        raise HeaderError(f"segment format version {version} is not supported (this library reads {READ_VERSIONS})")
    return first_seq, prev_hash, version


def encode_record(seq: int, ts_us: int, prev_hash: bytes, payload: bytes, *,
                  batch_first: int | None = None, version: int = FORMAT_VERSION) -> tuple[bytes, bytes]:
    """Frame one record; returns (framed bytes, record hash).

    ``batch_first`` (version 2) is the seq of the first record of its batch; default: ``seq``.
    """
    if version == 1:
        body = _BODY_HEAD.pack(seq, ts_us, prev_hash) + payload
    else:
        body = _BODY_HEAD_V2.pack(seq, ts_us, prev_hash, seq if batch_first is None else batch_first) + payload
    length = struct.pack("<I", len(body))
    frame = length + struct.pack("<I", crc32c(body, crc32c(length))) + body
    return frame, hashlib.sha256(body).digest()


def record_hash(seq: int, ts_us: int, prev_hash: bytes, batch_first: int, payload: bytes) -> bytes:
    """The record hash of a version-2 record (SHA-256 of its body), without framing it."""
    return hashlib.sha256(_BODY_HEAD_V2.pack(seq, ts_us, prev_hash, batch_first) + payload).digest()


# Outcomes of trying to read one record at an offset.
OK, INCOMPLETE, BAD = 0, 1, 2


def read_record(buf: bytes | memoryview, pos: int, segment: str, base: int,
                version: int = FORMAT_VERSION) -> tuple[int, Record | None, str]:
    """Try to decode the record starting at ``pos`` of ``buf`` (a segment of format ``version``).

    ``base`` is the file offset of ``buf[0]``. Returns (status, record, reason)
    where status is OK, INCOMPLETE (buffer ends inside the record) or BAD.
    """
    end = len(buf)
    if end - pos < FRAME_SIZE:
        return INCOMPLETE, None, "frame header cut short"
    length, crc = _FRAME.unpack_from(buf, pos)
    head_size = body_head_size(version)
    if length < head_size or length > MAX_BODY:
        return BAD, None, f"implausible record length {length}"
    body_start = pos + FRAME_SIZE
    if end - body_start < length:
        return INCOMPLETE, None, "record body cut short"
    body = bytes(buf[body_start : body_start + length])
    if crc32c(body, crc32c(buf[pos : pos + 4])) != crc:
        return BAD, None, "record checksum mismatch"
    if version == 1:
        seq, ts_us, prev_hash = _BODY_HEAD.unpack_from(body)
        batch_first = 0
    else:
        seq, ts_us, prev_hash, batch_first = _BODY_HEAD_V2.unpack_from(body)
        if not 1 <= batch_first <= seq:
            return BAD, None, f"batch start seq {batch_first} is not in 1..{seq}"
    rec = Record(
        seq=seq,
        ts_us=ts_us,
        prev_hash=prev_hash,
        hash=hashlib.sha256(body).digest(),
        payload=body[head_size:],
        segment=segment,
        offset=base + pos,
        length=FRAME_SIZE + length,
        batch_first=batch_first,
    )
    return OK, rec, ""


def continues_batch(batch_first: int, seq: int, prev_batch_first: int | None) -> bool:
    """Whether a version-2 record may follow one whose batch started at ``prev_batch_first``.

    A record either starts a new batch (``batch_first == seq``) or continues the
    previous record's; None means the previous record's batch is not known.
    """
    if batch_first == seq:
        return True
    return batch_first < seq if prev_batch_first is None else batch_first == prev_batch_first


def scan_chain(buf: bytes, pos: int, segment: str, base: int, next_seq: int,
               prev_hash: bytes, limit: int = 4096, version: int = FORMAT_VERSION,
               batch_first: int | None = None) -> tuple[list[Record], int]:
    """Decode consecutive intact records that continue the chain from ``pos`` (see ``py_scan_chain``).

    Runs the C extension's twin when it is loaded (``ledger/speedups.py``) and the arguments are plain.
    """
    if (_native is not None and type(buf) is bytes and type(prev_hash) is bytes and type(pos) is int
            and pos >= 0 and type(base) is int and -(1 << 62) <= base <= 1 << 62 and type(next_seq) is int
            and type(limit) is int and type(version) is int
            and (batch_first is None or type(batch_first) is int)):
        return _native.scan_chain(Record, buf, pos, segment, base, next_seq, prev_hash, limit, version,
                                  batch_first)
    return py_scan_chain(buf, pos, segment, base, next_seq, prev_hash, limit, version, batch_first)


def py_scan_chain(buf: bytes, pos: int, segment: str, base: int, next_seq: int,
                  prev_hash: bytes, limit: int = 4096, version: int = FORMAT_VERSION,
                  batch_first: int | None = None) -> tuple[list[Record], int]:
    """Decode consecutive intact records that continue the chain from ``pos`` (pure Python).

    Stops at the first record that is incomplete, damaged, or does not carry
    ``next_seq``, the previous record's hash and (version 2) a batch start that
    continues the previous record's (``batch_first``: that of the record before
    ``pos``, None if unknown); returns the records and where it stopped (the
    caller looks at that spot with ``read_record``, or calls again after
    ``limit`` records). This is ``read_record`` in a tight loop, for replay speed.
    """
    out: list[Record] = []
    end = len(buf)
    unpack_frame = _FRAME.unpack_from
    v1 = version == 1
    unpack_head = (_BODY_HEAD if v1 else _BODY_HEAD_V2).unpack_from
    head_size = body_head_size(version)
    sha256 = hashlib.sha256
    bf = 0
    while end - pos >= FRAME_SIZE and len(out) < limit:
        length, crc = unpack_frame(buf, pos)
        start = pos + FRAME_SIZE
        if length < head_size or length > MAX_BODY or end - start < length:
            break
        body = buf[start : start + length]
        if crc32c(body, crc32c(buf[pos:start - 4])) != crc:
            break
        if v1:
            seq, ts_us, prev = unpack_head(body)
        else:
            seq, ts_us, prev, bf = unpack_head(body)
            if bf != seq and (bf != batch_first if batch_first is not None else not 1 <= bf < seq):
                break
            batch_first = bf
        if seq != next_seq or prev != prev_hash:
            break
        prev_hash = sha256(body).digest()
        out.append(Record(seq, ts_us, prev, prev_hash, body[head_size:], segment, base + pos,
                          FRAME_SIZE + length, bf))
        next_seq += 1
        pos = start + length
    return out, pos


def scan_payloads(buf: bytes, pos: int, segment: str, base: int, next_seq: int, prev_hash: bytes, limit: int,
                  version: int, batch_first: int | None,
                  sparse_every: int) -> tuple[int, int, bytes, bytes, bytes, list[tuple[int, int]], Record | None]:
    """``scan_chain`` for replay (see ``py_scan_payloads``); the C extension's twin when it is loaded."""
    if (_native is not None and type(buf) is bytes and type(prev_hash) is bytes and type(pos) is int
            and pos >= 0 and type(base) is int and -(1 << 62) <= base <= 1 << 62 and type(next_seq) is int
            and type(limit) is int and type(version) is int and type(sparse_every) is int and sparse_every >= 1
            and (batch_first is None or type(batch_first) is int)):
        return _native.scan_payloads(Record, buf, pos, segment, base, next_seq, prev_hash, limit, version,
                                     batch_first, sparse_every)
    return py_scan_payloads(buf, pos, segment, base, next_seq, prev_hash, limit, version, batch_first, sparse_every)


def py_scan_payloads(buf: bytes, pos: int, segment: str, base: int, next_seq: int, prev_hash: bytes, limit: int,
                     version: int, batch_first: int | None,
                     sparse_every: int) -> tuple[int, int, bytes, bytes, bytes, list[tuple[int, int]],
                                                 Record | None]:
    """The records ``scan_chain`` would return, as what replay folds, without a Record for each.

    Returns (how many, where it stopped, their payloads as one msgpack array, their seqs and their
    commit times as array('q') bytes (OverflowError for a seq past 2**63 - 1), (seq, offset) of
    each whose seq is 1 modulo ``sparse_every``, the last record or None).
    """
    if sparse_every < 1:
        raise ValueError("sparse_every must be >= 1")
    recs, stop = py_scan_chain(buf, pos, segment, base, next_seq, prev_hash, limit, version, batch_first)
    parts = [b"\xdd" + len(recs).to_bytes(4, "big")]
    parts += [r.payload for r in recs]
    return (len(recs), stop, b"".join(parts), array("q", [r.seq for r in recs]).tobytes(),
            array("q", [r.ts_us for r in recs]).tobytes(),
            [(r.seq, r.offset) for r in recs if r.seq % sparse_every == 1], recs[-1] if recs else None)


def _later_record_starts(start_seq: int, last_seq: int) -> re.Pattern[bytes]:
    """A pattern matching (by lookahead) where a record with a seq in the range could start.

    The length field must be plausible and the seq field must share the high
    bytes common to every seq in the range; ``read_record`` checks the rest.
    """
    low = max(1, ((start_seq ^ last_seq).bit_length() + 7) // 8)
    fixed = struct.pack("<Q", start_seq)[low:]
    length = (
        rb"(?:[\x30-\xff][\x00-\xff]{2}[\x00-\x04]|[\x00-\xff][\x01-\xff][\x00-\xff][\x00-\x04]"
        rb"|[\x00-\xff]{2}[\x01-\xff][\x00-\x04]|[\x00-\xff]{3}[\x01-\x04])"
    )
    return re.compile(rb"(?=" + length + rb"[\x00-\xff]{%d}" % (4 + low) + re.escape(fixed) + rb")")


def later_records(buf: bytes | memoryview, start: int, next_seq: int, segment: str, base: int,
                  version: int = FORMAT_VERSION) -> Iterator[Record]:
    """Every intact record with seq >= ``next_seq`` found after ``start``, in file order.

    Damage can span several records, so any later seq counts, not only ``next_seq``.
    """
    data = bytes(buf)
    # Every record takes at least this many bytes, which bounds the seqs that can follow.
    last_seq = next_seq + (len(data) - start) // (FRAME_SIZE + BODY_HEAD_SIZE)
    for m in _later_record_starts(next_seq, last_seq).finditer(data, start + 1):
        status, rec, _ = read_record(data, m.start(), segment, base, version)
        if status == OK and rec is not None and next_seq <= rec.seq <= last_seq:
            yield rec


def find_later_record(buf: bytes | memoryview, start: int, next_seq: int, segment: str, base: int,
                      version: int = FORMAT_VERSION) -> int | None:
    """Return the offset of an intact record with seq >= ``next_seq`` after ``start``, if any.

    Used to tell a torn tail (nothing valid follows) from damage in the middle
    of the log (an intact later record follows the bad one).
    """
    for rec in later_records(buf, start, next_seq, segment, base, version):
        return rec.offset
    return None
