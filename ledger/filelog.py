"""The segment-file log: the embedded default backend of the ledger.

All methods here are synchronous and blocking; the async layer runs them in
worker threads. One writer at a time across processes is guaranteed by an
exclusive lock on the log directory (``lockfile.py``). Committed records never
change, so they are read without the lock: a reader notes, under a brief shared
lock, how far the log reached (no batch is half written then), reads up to there
unlocked, and takes the lock again only to judge or repair what follows.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import time
import warnings
import zlib
from array import array
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from ..store.durable import fsync_dir as _fsync_dir
from ..store.durable import syncfs_fd as _syncfs_fd

from ..store.base import OneFlushBlobs as BatchBlobs
from .base import BatchFailed, LastBatchCheck, RecordSink, ReplayAgain, deliver
from .errors import LedgerCorruption, LedgerPoisoned, ReadOnlyError, RecordsLost
from .errors import TornTailWarning as TornTailWarning  # re-exported: its home used to be this module
from .lockfile import DEFAULT_LOCK_TIMEOUT, LogLock
from .framing import (
    BAD,
    FORMAT_VERSION,
    GENESIS_HASH,
    OK,
    SEGMENT_HEADER_SIZE,
    HeaderError,
    Record,
    continues_batch,
    encode_record,
    encode_segment_header,
    later_records,
    read_record,
    read_segment_header,
    scan_chain,
    scan_payloads,
)

SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SPARSE_EVERY = 1024
UNLOCKED_CATCH_UP_BYTES = 256 * 1024  # news larger than this is read before the exclusive lock is taken
SCAN_CHUNK = 4096  # records decoded per scan_chain call (bounds memory during replay)
# Left in the log directory when a failed write could not be undone; no process appends while it exists.
POISON_MARK = "POISONED"




@dataclass(frozen=True, slots=True)
class _Durable:
    """What the log held before a write began, to go back to if it fails."""

    seg_first: int
    end: int
    head_seq: int
    head_hash: bytes
    head_ts: int
    head_at: tuple[int, int, int]
    head_batch: int | None
    sparse: int


@dataclass(frozen=True, slots=True)
class Position:
    """A point in the log: the last record read and where the next one starts."""

    seq: int
    hash: bytes
    ts_us: int
    segment_first_seq: int
    offset: int


def _after(rec: Record) -> _Durable:
    """The log's state just after ``rec`` (to go back to when the batch after it is cut)."""
    first = int(rec.segment[: -len(SEGMENT_SUFFIX)])
    end = rec.offset + rec.length
    return _Durable(first, end, rec.seq, rec.hash, rec.ts_us, (first, rec.offset, end), rec.batch_first, 0)


def _file_crc(path: str, length: int) -> int:
    """CRC-32 (IEEE, zlib) of a file's first ``length`` bytes, read through mmap (no copy).

    Not CRC32C on purpose: every segment header ends with the CRC32C of its
    other bytes, and a CRC over a message followed by its own CRC is the same
    constant whatever the message, so a CRC32C digest would miss header damage.
    """
    if length == 0:
        return zlib.crc32(b"")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) as m:
        return zlib.crc32(m)


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first record has ``first_seq``."""
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


class SegmentLog:
    """Append-only, hash-chained log stored as numbered segment files."""

    def __init__(self, directory: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True,
                 read_only: bool = False, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT):
        if segment_bytes < SEGMENT_HEADER_SIZE + 64:
            raise ValueError(f"segment_bytes={segment_bytes} is too small")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # Read-only: every file is opened O_RDONLY and nothing is created, cut or removed.
        self.read_only = read_only
        # A seq the log is known to have held (a checkpoint's): recovery never cuts at or below it.
        self.must_reach = 0
        self.must_reach_evidence = ""
        # The records before a last batch this process cut (or left out) as torn: that batch was written
        # only after theirs had flushed, so the batch now last is an earlier one, never judged again.
        self._proven_through = 0
        self._report_torn = False
        if not read_only:
            os.makedirs(directory, exist_ok=True)
        self._lock = LogLock(directory, timeout=lock_timeout, read_only=read_only)
        self.lock_problem: str | None = self._lock.problem  # read-only only: what could not be locked
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        self.head_ts = 0
        self._seg_first = 0  # first seq of the current segment; 0 = no segment yet
        self._seg_fd: int | None = None
        self._end = 0  # bytes of the current segment already read or written
        self._head_at = (0, 0, 0)  # head record: (segment first seq, offset, end)
        self._crc_cache: dict[tuple[int, int], int] = {}  # (segment, length) -> CRC-32 of that prefix
        # Every SPARSE_EVERY-th record's (seq, segment first seq, offset), to seek by seq.
        self._sparse: list[tuple[int, int, int]] = []
        self._seg_version = FORMAT_VERSION  # format version of the current segment
        # Batch start seq of the head record: None if not known, -1 if no batch can continue.
        self._head_batch: int | None = -1
        self._mark = os.path.join(directory, POISON_MARK)
        self._stop: int | None = None  # while the log is marked, readers stop at the mark's seq
        self._ignore_mark = False  # set by repair() only
        # One flush per batch: the blobs renamed in under the lock and flushed with the records by one
        # syncfs (None: blobs are made durable before append_batch, and the batch is fdatasynced).
        self.batch_blobs: BatchBlobs | None = None
        # Run by recover() on the log's last batch once the log is read to its end (see LastBatchCheck).
        self.check_last_batch: LastBatchCheck | None = None
        # Read-only: (segment, offset, hash of its first record) of a last batch left out as unproven.
        self._unproven: tuple[int, int, bytes] | None = None

    # ----------------------------------------------------------------- locking
    @property
    def lock_timeout(self) -> float | None:
        """Seconds a lock wait may take before LockTimeout (None: no limit)."""
        return self._lock.timeout

    @property
    def locks_directory(self) -> bool:
        """Whether the ``log/`` directory lock is held with each lock (false only read-only, if unopenable)."""
        return self._lock.locks_directory

    def check_process(self) -> None:
        """Raise LedgerForked when used in a fork() child of the process that opened the log."""
        self._lock.check_process()

    @contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the inter-process log lock (exclusive for writers); the wait is bounded and cancellable."""
        self._lock.acquire(exclusive)
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def holding(self, on_record: Callable[[Record], None]) -> Iterator[None]:
        """Hold the exclusive lock, caught up with every committed record: no append can interleave."""
        if self.read_only:
            raise ReadOnlyError(f"the log at {self.directory} is open read-only")
        with self.locked(exclusive=True):
            self._refuse_if_marked()
            self._catch_up(on_record, repair=True)
            yield

    def close(self) -> None:
        """Release file descriptors (in a fork child, without touching the parent's lock)."""
        if self._seg_fd is not None:
            os.close(self._seg_fd)
            self._seg_fd = None
        self._lock.close()

    # ----------------------------------------------------------------- reading
    def segments(self) -> list[int]:
        """First seqs of the segment files present, ascending."""
        out = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            if not self.read_only:
                raise
            names = []  # read-only open of a ledger whose log/ was never created: an empty log
        for name in names:
            if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
                out.append(int(name[: -len(SEGMENT_SUFFIX)]))
        out.sort()
        return out

    def position(self) -> Position:
        """The current read/write position (after the head record)."""
        return Position(self.head_seq, self.head_hash, self.head_ts, self._seg_first, self._end)

    def head_location(self) -> tuple[Position, int]:
        """Where the head record is: the position just after it, in its own segment, and its offset.

        Unlike ``position()``, this never names a newer, still empty segment.
        """
        seg, offset, end = self._head_at
        return Position(self.head_seq, self.head_hash, self.head_ts, seg, end), offset

    def has_news(self) -> bool:
        """Cheap check whether another writer appended since we last looked."""
        if self._seg_fd is not None and os.fstat(self._seg_fd).st_size != self._end:
            return True
        if self._seg_fd is not None and self._segment_moved():
            return True  # deleted or replaced under us: catch_up decides whether records were lost
        nxt = self.head_seq + 1
        if nxt == self._seg_first:
            # A current segment without records is itself named for nxt; its growth is caught
            # above, its replacement (a version-1 segment upgraded, see append_batch) here.
            return self._current_replaced()
        return os.path.exists(os.path.join(self.directory, segment_name(nxt)))

    def _current_replaced(self) -> bool:
        """Whether the current segment's name now points to another file (or none)."""
        assert self._seg_fd is not None
        try:
            st = os.stat(os.path.join(self.directory, segment_name(self._seg_first)))
        except FileNotFoundError:
            return True
        return st.st_ino != os.fstat(self._seg_fd).st_ino

    def unread_bytes(self) -> int:
        """Roughly how many bytes others appended since we last looked (a new segment counts as a full one)."""
        n = os.fstat(self._seg_fd).st_size - self._end if self._seg_fd is not None else 0
        nxt = self.head_seq + 1
        if nxt != self._seg_first and os.path.exists(os.path.join(self.directory, segment_name(nxt))):
            n += self.segment_bytes
        return max(n, 0)

    def prefetch(self, on_record: Callable[[Record], None]) -> None:
        """Before an append: when much news waits, read most of it without the lock, so that the
        exclusive hold of ``append_batch`` covers a short tail and the batch only."""
        if self.unread_bytes() > UNLOCKED_CATCH_UP_BYTES:
            self.catch_up(on_record)

    def recover(self, on_record: Callable[[Record], None], start: Position | None = None,
                start_record_offset: int = 0) -> None:
        """Open the log: read every record after ``start``, repairing a torn tail.

        ``start`` is just after a record already accounted for (a checkpoint's),
        which begins at ``start_record_offset`` of the same segment. The
        committed records are read without the lock; only the tail after them
        is read under the exclusive lock, so that a torn tail can be truncated
        (read-only: under the shared lock, and a torn tail is reported and
        ignored, not truncated).
        """
        self.check_process()
        if start is not None:
            self._seek(start, start_record_offset)
        self._report_torn = self.read_only
        check = self.check_last_batch
        if check is None:
            try:
                self._read_committed(on_record)
                with self.locked(exclusive=not self.read_only):
                    self._catch_up(on_record, repair=not self.read_only)
            finally:
                self._report_torn = False
            return
        # Everything is handed over at replay speed (chunks, payloads); once the log is read to its end,
        # under the lock, its last batch is judged. A batch found torn was handed over too, so after it is
        # cut (or, read-only, left out) the caller starts afresh: ReplayAgain. That costs a second replay
        # only after a power cut tore the last batch.
        start_seq = self.head_seq
        start_state = self._durable()
        try:
            self._read_committed(on_record)
            with self.locked(exclusive=not self.read_only):
                self._catch_up(on_record, repair=not self.read_only)
                torn = self._judge_tail(check, start_seq, start_state)
        finally:
            self._report_torn = False
        if torn:
            self._forget_reading()
            raise ReplayAgain(f"the last batch of {self.directory} was torn and is cut; read the log again")

    def _judge_tail(self, check: LastBatchCheck, start_seq: int, start_state: _Durable) -> bool:
        """Judge the log's last batch (read in this recovery, after ``start_seq``); True if it was cut or,
        read-only, left out."""
        first = self._head_batch
        if first is None or first <= start_seq or first > self.head_seq:
            return False  # no batch starts in what was read (version 1 records, or one begun before)
        if first <= self._proven_through:
            return False  # a later batch, cut in this open, proves it flushed: damage here is verify()'s
        window = self._tail_records(first)
        if window is None:
            return False  # the batch began in an earlier segment: a later append found it durable
        held = [r for r in window if r.seq >= first]
        if not held or held[0].seq != first:
            return False
        if first == start_seq + 1:
            before = start_state
        elif window[0].seq < first:
            before = _after(window[held[0].seq - window[0].seq - 1])
        else:
            before = _after(next(self.read_range(first - 1, first - 1)))
        head = self.head_seq
        self._judge_last_batch(held, before, check)
        return self.head_seq != head

    def _tail_records(self, first: int) -> list[Record] | None:
        """The current segment's records from the sparse point before seq ``first`` to the head, decoded
        at scan speed; None if ``first`` is not in the current segment."""
        seg, off, expect = self._start_for(first)
        if seg != self._seg_first or self._seg_fd is None:
            return None
        buf = os.pread(self._seg_fd, self._end - off, off)
        name = segment_name(seg)
        status, rec, reason = read_record(buf, 0, name, off, self._seg_version)
        if status != OK or rec is None or rec.seq != expect:
            raise LedgerCorruption(name, off, expect, reason or "unexpected seq")
        out = [rec]
        pos = rec.length
        while out[-1].seq < self.head_seq:
            last = out[-1]
            recs, pos = scan_chain(buf, pos, name, off, last.seq + 1, last.hash, SCAN_CHUNK, self._seg_version,
                                   last.batch_first)
            if not recs:
                raise LedgerCorruption(name, off + pos, last.seq + 1, "a record read before is not there now")
            out.extend(recs)
        return out

    def _forget_reading(self) -> None:
        """Back to nothing read (what a torn last batch left out stays left out), for ``recover`` again."""
        if self._seg_fd is not None:
            os.close(self._seg_fd)
            self._seg_fd = None
        self.head_seq, self.head_hash, self.head_ts = 0, GENESIS_HASH, 0
        self._seg_first, self._end, self._head_at = 0, 0, (0, 0, 0)
        self._sparse = []
        self._head_batch = -1

    def _cap(self, size: int) -> int:
        """How much of the current segment (``size`` bytes) to read: a read-only process stops before a last
        batch it left out as unproven, until a writer has cut it (its first record is gone or changed)."""
        u = self._unproven
        if u is None or u[0] != self._seg_first:
            return size
        rec = self.record_at(u[0], u[1])
        if rec is None or rec.hash != u[2]:
            self._unproven = None
            return size
        return min(size, u[1])

    def _judge_last_batch(self, held: list[Record], before: _Durable, check: LastBatchCheck) -> None:
        """Cut the log's last batch (``held``: all of it, in the current segment, begun after the recovery's
        start; see ``_judge_tail``) if a blob it names is not whole; ``before`` is the log just before it.

        Under one flush per batch, every batch but the last is wholly durable (the lock is held until its
        syncfs returns, and a later batch is written only after that), so only the last can name blobs a
        power cut left incomplete; such a batch was never acknowledged. Read-only, it is left out in memory.
        """
        first = held[0]
        found = check(held)
        if found is None:
            return
        problem, cleanup = found
        name = first.segment
        if not self.read_only and first.seq <= self.must_reach:
            # A checkpoint exists only once its record was durable: this batch was acknowledged.
            raise RecordsLost(first.seq - 1, self.must_reach, f"{self.must_reach_evidence} (the log's last "
                              f"batch, seq {first.seq}..{held[-1].seq}, names incomplete blobs: {problem})",
                              segment=name, offset=first.offset)
        self._proven_through = max(self._proven_through, first.seq - 1)
        self.head_seq, self.head_hash, self.head_ts = before.head_seq, before.head_hash, before.head_ts
        self._head_at = before.head_at
        self._head_batch = before.head_batch if first.offset > SEGMENT_HEADER_SIZE else -1
        self._sparse = [s for s in self._sparse if s[0] < first.seq]
        self._end = first.offset
        lost = f"seq {first.seq}..{held[-1].seq} ({len(held)} record(s), {problem})"
        if self.read_only:
            self._unproven = (self._seg_first, first.offset, first.hash)
            warnings.warn(f"ignored the last batch of segment {name} at offset {first.offset}: {lost}; the "
                          f"batch was never acknowledged; not truncated (read-only); the ledger ends at seq "
                          f"{self.head_seq}", TornTailWarning, stacklevel=4)
            return
        assert self._seg_fd is not None
        os.ftruncate(self._seg_fd, first.offset)
        if self.fsync:
            os.fsync(self._seg_fd)
        cleanup()
        warnings.warn(f"truncated the last batch of segment {name} at offset {first.offset}: {lost}; the "
                      f"batch was never acknowledged (a power cut before its flush); the ledger ends at seq "
                      f"{self.head_seq}", TornTailWarning, stacklevel=4)

    def catch_up(self, on_record: Callable[[Record], None]) -> None:
        """Read records other processes appended since we last looked (holding the lock only briefly)."""
        if self._read_committed(on_record):
            return
        # Something other than an intact record where the committed log went on: judge it under the lock.
        with self.locked(exclusive=False):
            self._catch_up(on_record, repair=False)

    def torn_tail(self, on_record: Callable[[Record], None]) -> tuple[str, int, int] | None:
        """Under the shared lock, read what was appended since, then describe bytes after the last record.

        Returns (segment name, offset, byte count) of an unrepaired torn tail, or None.
        """
        with self.locked(exclusive=False):
            self._catch_up(on_record, repair=False)
            if self._seg_fd is None:
                return None
            size = os.fstat(self._seg_fd).st_size
            return (segment_name(self._seg_first), self._end, size - self._end) if size > self._end else None

    def _read_committed(self, on_record: Callable[[Record], None]) -> bool:
        """Read, without holding the lock, the records that were committed when we looked.

        Under a brief shared lock no batch is half written, so every byte then
        present belongs to a finished batch (or a crashed writer's leftovers)
        and never changes except by the repair of a torn tail. Stops, without
        judging it, at the first thing that is not the next intact record;
        returns True if it read all that was there.
        """
        with self.locked(exclusive=False):
            if not self._ignore_mark and os.path.exists(self._mark):
                # A marked log may hold a batch that never became durable past the mark's
                # seq: only the locked path knows where to stop (see _catch_up).
                return False
            segs = self.segments()
            last_size = os.path.getsize(os.path.join(self.directory, segment_name(segs[-1]))) if segs else 0
        if not segs:
            return True
        last = segs[-1]
        if self._seg_fd is None and not self._enter_committed(self.head_seq + 1, segs):
            return False
        while True:
            if self._seg_first not in segs:
                return False
            size = self._cap(last_size if self._seg_first == last else os.fstat(self._seg_fd).st_size)  # type: ignore[arg-type]
            if not self._scan_committed(on_record, size):
                return False
            if self._seg_first == last:
                return True
            nxt = self.head_seq + 1
            # nxt == the current segment: a record-less segment with another after it (damage).
            if nxt == self._seg_first or not self._enter_committed(nxt, segs):
                return False

    def _enter_committed(self, first: int, segs: list[int]) -> bool:
        """Open segment ``first`` if it is committed and its header continues the chain."""
        if first not in segs:
            return False
        path = os.path.join(self.directory, segment_name(first))
        try:
            with open(path, "rb") as f:
                seg_first, prev_hash, version = read_segment_header(f.read(SEGMENT_HEADER_SIZE))
        except (OSError, HeaderError):
            return False
        if seg_first != first or prev_hash != self.head_hash:
            return False
        self._open_segment(first, path, version)
        self._end = SEGMENT_HEADER_SIZE
        self._head_batch = -1  # batches never span segments: the first record starts one
        return True

    def _scan_committed(self, on_record: Callable[[Record], None], size: int) -> bool:
        """Read the intact records of the current segment up to byte ``size``; True if all were."""
        assert self._seg_fd is not None
        if size <= self._end:
            return size == self._end
        base = self._end
        buf = os.pread(self._seg_fd, size - base, base)
        n = len(buf)
        pos = 0
        name = segment_name(self._seg_first)
        folds = on_record.payloads if type(on_record) is RecordSink else None
        while pos < n:
            if folds is not None:
                # Replay's fast path: the chunk's payloads in one msgpack array, no Record per record.
                count, stop, joined, seqs, tss, marks, last = scan_payloads(
                    buf, pos, name, base, self.head_seq + 1, self.head_hash, SCAN_CHUNK, self._seg_version,
                    self._head_batch, SPARSE_EVERY)
                if last is None:
                    return False
                sq, tq = array("q"), array("q")
                sq.frombytes(seqs)
                tq.frombytes(tss)
                if folds(joined, sq, tq):
                    self._sparse += [(seq, self._seg_first, off) for seq, off in marks]
                    pos = stop
                    self._took(last, base, pos)
                    if count < SCAN_CHUNK and pos < n:
                        return False
                    continue
                # Not foldable that way (an old event version, a bad payload): the same records as Records.
            recs, pos = scan_chain(buf, pos, name, base, self.head_seq + 1,
                                   self.head_hash, SCAN_CHUNK, self._seg_version, self._head_batch)
            if not recs:
                return False
            deliver(on_record, recs)
            self._note_sparse(recs)
            self._took(recs[-1], base, pos)
            if len(recs) < SCAN_CHUNK and pos < n:
                return False
        return n == size - base

    def _took(self, last: Record, base: int, pos: int) -> None:
        """Make ``last`` (ending at ``pos`` of a buffer read from file offset ``base``) the head."""
        self.head_seq, self.head_hash, self.head_ts = last.seq, last.hash, last.ts_us
        self._head_batch = last.batch_first
        self._end = base + pos
        self._head_at = (self._seg_first, last.offset, self._end)

    def _note_sparse(self, recs: list[Record]) -> None:
        """Add the sparse-index entries of a chunk of consecutive records (every seq = 1 mod SPARSE_EVERY)."""
        first = recs[0].seq
        for k in range((1 - first) % SPARSE_EVERY, len(recs), SPARSE_EVERY):
            rec = recs[k]
            self._sparse.append((rec.seq, self._seg_first, rec.offset))

    def _seek(self, pos: Position, record_offset: int) -> None:
        path = os.path.join(self.directory, segment_name(pos.segment_first_seq))
        self._open_segment(pos.segment_first_seq, path, self._version_of(pos.segment_first_seq))
        self.head_seq, self.head_hash, self.head_ts, self._end = pos.seq, pos.hash, pos.ts_us, pos.offset
        self._head_at = (pos.segment_first_seq, record_offset, pos.offset)
        rec = self.record_at(pos.segment_first_seq, record_offset)
        self._head_batch = rec.batch_first if rec is not None and rec.seq == pos.seq else None

    def _open_segment(self, first_seq: int, path: str, version: int) -> None:
        if self._seg_fd is not None:
            os.close(self._seg_fd)
        self._seg_fd = os.open(path, os.O_RDONLY if self.read_only else os.O_RDWR)
        self._seg_first = first_seq
        self._seg_version = version

    def _version_of(self, first_seq: int) -> int:
        """Format version of a segment, from its header."""
        name = segment_name(first_seq)
        with open(os.path.join(self.directory, name), "rb") as f:
            header = f.read(SEGMENT_HEADER_SIZE)
        try:
            return read_segment_header(header)[2]
        except HeaderError as exc:
            raise LedgerCorruption(name, 0, first_seq, f"bad segment header: {exc}") from exc

    def _catch_up(self, on_record: Callable[[Record], None], *, repair: bool) -> None:
        self._check_not_shortened()
        mark = None if self._ignore_mark else self._mark_info()
        # A marked log may still hold a batch that never became durable: read only up to the
        # last durable record the mark names, and leave the repair to repair().
        self._stop = mark.get("seq") if mark else None
        if mark is not None:
            repair = False
        if self._stop is not None and self.head_seq >= self._stop:
            return
        if self._seg_fd is None:
            if not self._enter_next_segment(repair):
                return
        while True:
            self._scan_current(on_record, repair=repair)
            if not self._enter_next_segment(repair):
                return

    def _enter_next_segment(self, repair: bool) -> bool:
        """Move to the segment starting at head_seq + 1, if it exists."""
        first = self.head_seq + 1
        if self._stop is not None and self.head_seq >= self._stop:
            return False
        if self._seg_fd is not None and first == self._seg_first and not self._current_replaced():
            # The current segment holds no record yet (a crash right after it was
            # created), so it is the segment starting at head_seq + 1; without this
            # check it would be re-entered forever. No segment may follow it.
            later = [s for s in self.segments() if s > first]
            if later:
                raise LedgerCorruption(
                    segment_name(later[0]), 0, first, f"segment {segment_name(first)} ends before seq {first}"
                )
            return False
        path = os.path.join(self.directory, segment_name(first))
        if not os.path.exists(path):
            later = [s for s in self.segments() if s > first]
            if later:
                raise LedgerCorruption(
                    segment_name(later[0]), 0, first, f"segment {segment_name(first)} is missing"
                )
            return False
        with open(path, "rb") as f:
            header = f.read(SEGMENT_HEADER_SIZE)
        is_last = not any(s > first for s in self.segments())
        try:
            seg_first, prev_hash, version = read_segment_header(header)
        except HeaderError as exc:
            if (is_last and len(header) < SEGMENT_HEADER_SIZE
                    or (is_last and os.path.getsize(path) <= SEGMENT_HEADER_SIZE)):
                # A crash while creating the segment: nothing in it was acknowledged.
                if repair and first <= self.must_reach:
                    raise RecordsLost(self.head_seq, self.must_reach, self.must_reach_evidence,
                                      segment=segment_name(first), offset=0) from exc
                if self._report_torn:
                    warnings.warn(f"ignored half-created segment {segment_name(first)} ({exc}); not removed "
                                  "(read-only)", TornTailWarning, stacklevel=4)
                if repair:
                    os.unlink(path)
                    _fsync_dir(self.directory)
                    warnings.warn(
                        f"removed half-created segment {segment_name(first)} ({exc})", TornTailWarning, stacklevel=4
                    )
                return False
            raise LedgerCorruption(segment_name(first), 0, first, f"bad segment header: {exc}") from exc
        if seg_first != first or prev_hash != self.head_hash:
            raise LedgerCorruption(
                segment_name(first), 0, first, "segment header does not continue the hash chain"
            )
        self._open_segment(first, path, version)
        self._end = SEGMENT_HEADER_SIZE
        self._head_batch = -1  # batches never span segments: the first record starts one
        return True

    def _scan_current(self, on_record: Callable[[Record], None], *, repair: bool) -> None:
        assert self._seg_fd is not None
        size = self._cap(os.fstat(self._seg_fd).st_size)
        if size <= self._end:
            return
        name = segment_name(self._seg_first)
        version = self._seg_version
        base = self._end
        buf = os.pread(self._seg_fd, size - base, base)
        pos = 0
        n = len(buf)
        stop = self._stop
        rec: Record | None  # bound by the chunk loop and by read_record below
        while pos < n:
            if stop is not None and self.head_seq >= stop:
                return
            recs, pos = scan_chain(buf, pos, name, base, self.head_seq + 1, self.head_hash, SCAN_CHUNK,
                                   version, self._head_batch)
            if stop is not None and recs and recs[-1].seq > stop:
                recs = [r for r in recs if r.seq <= stop]
                pos = recs[-1].offset + recs[-1].length - base if recs else pos
            if recs:
                deliver(on_record, recs)
                self._note_sparse(recs)
                self._took(recs[-1], base, pos)
            if pos >= n or (stop is not None and self.head_seq >= stop):
                return
            if len(recs) == SCAN_CHUNK:
                continue  # a full chunk: more intact records may follow
            # scan_chain stopped here: decide what this record is, slowly and precisely.
            status, rec, reason = read_record(buf, pos, name, base, version)
            if status == OK:
                assert rec is not None
                if rec.seq != self.head_seq + 1:
                    raise LedgerCorruption(name, base + pos, self.head_seq + 1, f"found seq {rec.seq}")
                if rec.prev_hash != self.head_hash:
                    raise LedgerCorruption(name, base + pos, rec.seq, "hash chain broken (previous-hash mismatch)")
                if version >= 2 and not continues_batch(rec.batch_first, rec.seq,
                                                        None if self._head_batch is None else self._head_batch):
                    raise LedgerCorruption(
                        name, base + pos, rec.seq,
                        f"batch start seq {rec.batch_first} does not continue the batch of the record before",
                    )
                on_record(rec)
                self._note_sparse([rec])
                pos += rec.length
                self._took(rec, base, pos)
                continue
            self._handle_bad_tail(buf, pos, base, name, status, reason, repair)
            return

    def _handle_bad_tail(self, buf: bytes, pos: int, base: int, name: str, status: int, reason: str,
                         repair: bool) -> None:
        seq = self.head_seq + 1
        is_last = not any(s > self._seg_first for s in self.segments())
        if not is_last:
            raise LedgerCorruption(name, base + pos, seq, reason)
        torn_batch: list[Record] = []
        for later in later_records(buf, pos, seq + 1, name, base, self._seg_version):
            # Version 2: records of the batch the failed record belongs to (it starts at seq,
            # or continues the head's) may survive a torn write of that batch; a record of a
            # later batch proves this batch was acknowledged, so the damage is not a torn tail.
            if self._seg_version >= 2 and (later.batch_first == seq or (
                    later.batch_first == self._head_batch and self._head_batch is not None and self._head_batch > 0)):
                torn_batch.append(later)
                continue
            what = "an intact record" if self._seg_version < 2 else "an intact record of a later batch"
            raise LedgerCorruption(name, base + pos, seq, f"{reason}; {what} follows at offset {later.offset}")
        cut = base + pos
        lost = len(buf) - pos
        if not repair:
            if self._report_torn and seq > self.must_reach:  # at or below it, the opener reports lost records
                warnings.warn(
                    f"ignored torn tail of segment {name}: {lost} bytes at offset {cut} "
                    f"({'damaged' if status == BAD else 'incomplete'} record seq {seq}: {reason}); not truncated "
                    f"(read-only); the ledger ends at seq {self.head_seq}",
                    TornTailWarning,
                    stacklevel=4,
                )
            return  # a crashed writer's leftovers; the next writer truncates them
        if seq <= self.must_reach:
            # Not a torn write: a checkpoint proves this record was committed. Cut nothing.
            raise RecordsLost(self.head_seq, self.must_reach, self.must_reach_evidence, segment=name, offset=cut)
        assert self._seg_fd is not None
        os.ftruncate(self._seg_fd, cut)
        if self.fsync:
            os.fsync(self._seg_fd)
        batch = (f"; {len(torn_batch)} intact later record(s) of the same unfinished batch dropped with it "
                 f"(seq {torn_batch[0].seq}..{torn_batch[-1].seq})" if torn_batch else "")
        warnings.warn(
            f"truncated torn tail of segment {name}: {lost} bytes at offset {cut} "
            f"({'damaged' if status == BAD else 'incomplete'} record seq {seq}: {reason}){batch}; "
            f"the ledger ends at seq {self.head_seq}",
            TornTailWarning,
            stacklevel=4,
        )

    def _segment_moved(self) -> bool:
        """Whether the current segment's path no longer names the file this process has open."""
        assert self._seg_fd is not None
        mine = os.fstat(self._seg_fd)
        try:
            there = os.stat(os.path.join(self.directory, segment_name(self._seg_first)))
        except FileNotFoundError:
            return True
        return (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino)

    def _check_not_shortened(self) -> None:
        """Raise RecordsLost if a segment file this process read or wrote was deleted, replaced or cut.

        Without this, a writer would go on appending to a deleted file's inode (or past the end
        of a cut one), and a reader would keep records the log no longer holds.
        """
        fd = self._seg_fd
        if fd is None:
            return
        name = segment_name(self._seg_first)
        path = os.path.join(self.directory, name)
        mine = os.fstat(fd)
        try:
            there: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino) \
                and there.st_size >= self._end:
            return
        seg, offset, _ = self._head_at
        if self.head_seq:
            rec = self.record_at(seg, offset)
            if rec is None or rec.seq != self.head_seq or rec.hash != self.head_hash:
                survived = self._surviving_head()
                if survived >= self.head_seq:
                    raise LedgerCorruption(name, offset, self.head_seq,
                                           "the record this process read at this seq is no longer in the log "
                                           "(the segment file was replaced)")
                raise RecordsLost(survived, self.head_seq, "this process (which read it from the log)",
                                  segment=name, offset=min(self._end, there.st_size) if there else 0)
        # The head record is intact: the file was replaced by one that still holds it,
        # or a current segment that held no record yet disappeared.
        if there is None:
            os.close(fd)
            self._seg_fd = None
            self._seg_first = 0  # so has_news() sees the segment when a writer creates it again
        elif there.st_size < self._end:
            raise LedgerCorruption(name, there.st_size, self.head_seq + 1,
                                   f"segment file replaced by a shorter one ({there.st_size} < {self._end} bytes)")
        else:
            # A replacement may be of another format version (a record-less version-1
            # segment is replaced by a version-2 one before the first append into it).
            self._open_segment(self._seg_first, path, self._version_of(self._seg_first))

    def _surviving_head(self) -> int:
        """Seq of the last intact record the segment files hold now (for error messages; no chain check)."""
        for first in reversed(self.segments()):
            name = segment_name(first)
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            last, pos = first - 1, SEGMENT_HEADER_SIZE
            while True:
                status, rec, _ = read_record(data, pos, name, 0)
                if status != OK or rec is None:
                    return last
                last, pos = rec.seq, pos + rec.length
        return 0

    def digest(self, upto: Position) -> list[tuple[int, int, int]]:
        """(first seq, bytes, CRC-32) of every segment up to ``upto``: a fingerprint of that log prefix.

        Sealed segments never change, so their CRCs are computed once per process.
        """
        out = []
        for first in self.segments():
            if first > upto.segment_first_seq:
                break
            path = os.path.join(self.directory, segment_name(first))
            length = upto.offset if first == upto.segment_first_seq else os.path.getsize(path)
            key = (first, length)
            crc = self._crc_cache.get(key)
            if crc is None:
                crc = self._crc_cache[key] = _file_crc(path, length)
            out.append((first, length, crc))
        return out

    def check_digest(self, digest: list[tuple[int, int, int]]) -> str | None:
        """None if the log still starts with exactly the bytes ``digest`` describes, else why not."""
        have = self.segments()
        for first, length, crc in digest:
            if first not in have:
                return f"segment {segment_name(first)} is missing"
            path = os.path.join(self.directory, segment_name(first))
            if os.path.getsize(path) < length:
                return f"segment {segment_name(first)} is shorter than when the checkpoint was taken"
            if _file_crc(path, length) != crc:
                return f"the first {length} bytes of segment {segment_name(first)} changed"
            self._crc_cache[(first, length)] = crc
        return None

    def record_at(self, segment_first_seq: int, offset: int) -> Record | None:
        """The intact record at a byte offset of a segment, or None."""
        path = os.path.join(self.directory, segment_name(segment_first_seq))
        try:
            with open(path, "rb") as f:
                version = read_segment_header(f.read(SEGMENT_HEADER_SIZE))[2]
                f.seek(offset)
                head = f.read(8)
                if len(head) < 8:
                    return None
                (length,) = struct.unpack_from("<I", head)
                data = head + f.read(length)
        except (FileNotFoundError, HeaderError):
            return None
        status, rec, _ = read_record(data, 0, segment_name(segment_first_seq), offset, version)
        return rec if status == OK else None

    def _start_for(self, seq: int) -> tuple[int, int, int]:
        """(segment first seq, offset, seq of the record there) to start reading towards ``seq``."""
        firsts = [s for s in self.segments() if s <= seq]
        if not firsts:
            raise ValueError(f"seq {seq} is before the first segment")
        seg = firsts[-1]
        i = bisect_right(self._sparse, (seq, 1 << 62, 0))
        if i:
            sseq, sseg, soff = self._sparse[i - 1]
            if sseg == seg:
                return seg, soff, sseq
        return seg, SEGMENT_HEADER_SIZE, seg

    def read_range(self, since: int = 1, until: int | None = None) -> Iterator[Record]:
        """Committed records with since <= seq <= until (default: this process's head).

        Committed records never change, so no lock is needed; reading stops at
        ``until`` and never looks at a tail another writer may be extending.
        """
        last = self.head_seq if until is None else min(until, self.head_seq)
        since = max(since, 1)
        if since > last:
            return
        seg, off, expect = self._start_for(since)
        while True:
            name = segment_name(seg)
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    version = read_segment_header(f.read(SEGMENT_HEADER_SIZE))[2]
                    f.seek(off)
                    data = f.read()
            except FileNotFoundError:
                raise LedgerCorruption(name, 0, expect, "segment is missing") from None
            except HeaderError as exc:
                raise LedgerCorruption(name, 0, seg, f"bad segment header: {exc}") from exc
            pos = 0
            while pos < len(data):
                status, rec, reason = read_record(data, pos, name, off, version)
                if status != OK or rec is None or rec.seq != expect:
                    raise LedgerCorruption(name, off + pos, expect, reason or "unexpected seq")
                if rec.seq >= since:
                    yield rec
                if rec.seq >= last:
                    return
                expect += 1
                pos += rec.length
            seg, off = expect, SEGMENT_HEADER_SIZE

    def read_from(self, start_seq: int = 1) -> Iterator[Record]:
        """Every intact record on disk with seq >= start_seq, independent of this object's head."""
        for first in self.segments():
            nxt = [s for s in self.segments() if s > first]
            if nxt and nxt[0] <= start_seq:
                continue
            name = segment_name(first)
            with open(os.path.join(self.directory, name), "rb") as f:
                data = f.read()
            try:
                version = read_segment_header(data)[2]
            except HeaderError as exc:
                raise LedgerCorruption(name, 0, first, f"bad segment header: {exc}") from exc
            pos = SEGMENT_HEADER_SIZE
            while pos < len(data):
                status, rec, _ = read_record(data, pos, name, 0, version)
                if status != OK or rec is None:
                    break
                if rec.seq >= start_seq:
                    yield rec
                pos += rec.length

    # ----------------------------------------------------------------- writing
    # Called with a batch's payloads under the exclusive lock, once caught up, before they are
    # written; if it raises, nothing is written (the ledger's check that a batch's blobs survived gc).
    check_before_write: Callable[[list[bytes]], None] | None = None

    def append_batch(self, payloads: list[bytes], on_record: Callable[[Record], None]) -> list[Record]:
        """Append payloads as consecutive records, durably; returns the new records.

        First catches up with (and reports via ``on_record``) records appended
        by other processes, so seq and the hash chain stay gap-free. If a write
        fails, raises ``BatchFailed`` after cutting the log back to its last
        durable record, still under the lock (see FORMAT.md, "Writing").
        ``check_before_write(payloads)`` runs under the lock once caught up; if it raises, nothing is written.
        """
        if self.read_only:
            raise ReadOnlyError(f"the log at {self.directory} is open read-only; nothing was written")
        with self.locked(exclusive=True):
            self._refuse_if_marked()
            self._catch_up(on_record, repair=True)
            blobs = self.batch_blobs if self.fsync else None
            # One flush per batch: the blobs get their names now (before the check, which looks for them
            # at their addresses), and the batch's syncfs flushes them. Left named if the check refuses
            # the batch: unreferenced names, which dedup re-hashes before trusting, flushed by a later batch.
            published = blobs.publish() if blobs is not None else None
            if self.check_before_write is not None:
                self.check_before_write(payloads)
                if blobs is not None and published is not None:
                    published += blobs.publish()  # blobs the check stored again (collected by a gc meanwhile)
            out: list[Record] = []
            try:
                if self._seg_fd is None or self._seg_version != FORMAT_VERSION:
                    # Version-1 segments carry no batch boundaries: appends go to a new segment.
                    self._new_segment()
                done = self._append_part(payloads, 0, out)
                while done < len(payloads):
                    self._new_segment()
                    done = self._append_part(payloads, done, out)
            except _Failed as failed:
                if blobs is not None and published is not None and not out:
                    blobs.unpublish(published)  # no event names them durably: their bytes may be lost
                raise BatchFailed(out, failed.cause, failed.undone, failed.mark) from failed.cause
            except BaseException:
                if blobs is not None and published is not None and not out:
                    blobs.unpublish(published)
                raise
            return out

    def _append_part(self, payloads: list[bytes], i: int, out: list[Record]) -> int:
        """Write payloads from ``i`` on into the current segment as one batch (one write, one
        fdatasync) until it is full; returns the index of the first payload not written."""
        before = self._durable()
        start = self._end
        batch_first = self.head_seq + 1
        buf = bytearray()
        recs: list[Record] = []
        name = segment_name(self._seg_first)
        while i < len(payloads):
            payload = payloads[i]
            now = time.time_ns() // 1000
            ts = now if now > self.head_ts else self.head_ts + 1
            seq = self.head_seq + 1
            frame, h = encode_record(seq, ts, self.head_hash, payload, batch_first=batch_first)
            if start + len(buf) + len(frame) > self.segment_bytes and (start + len(buf)) > SEGMENT_HEADER_SIZE:
                break
            offset = start + len(buf)
            buf += frame
            recs.append(Record(seq, ts, self.head_hash, h, payload, name, offset, len(frame), batch_first))
            if seq % SPARSE_EVERY == 1:
                self._sparse.append((seq, self._seg_first, offset))
            self.head_seq, self.head_hash, self.head_ts = seq, h, ts
            self._head_batch = batch_first
            self._head_at = (self._seg_first, offset, offset + len(frame))
            i += 1
        try:
            self._write(buf, start)
        except OSError as exc:
            self._restore(before)
            raise self._undo(before, exc) from exc
        out.extend(recs)
        return i

    def _durable(self) -> _Durable:
        return _Durable(self._seg_first, self._end, self.head_seq, self.head_hash, self.head_ts,
                        self._head_at, self._head_batch, len(self._sparse))

    def _restore(self, d: _Durable) -> None:
        self._end = d.end
        self.head_seq, self.head_hash, self.head_ts = d.head_seq, d.head_hash, d.head_ts
        self._head_at, self._head_batch = d.head_at, d.head_batch
        del self._sparse[d.sparse:]

    def _undo(self, d: _Durable, cause: OSError) -> "_Failed":
        """Cut the current segment back to ``d`` (truncate, then fsync); mark the log if that fails.

        Runs under the exclusive lock, so nobody can read or build on the failed batch first.
        After a failed flush the kernel may have dropped the batch's pages, so what it wrote
        cannot be trusted even if it reads back intact.
        """
        assert self._seg_fd is not None
        try:
            os.ftruncate(self._seg_fd, d.end)
            if self.fsync:
                os.fsync(self._seg_fd)
        except OSError as exc:
            return _Failed(cause, False, self._leave_mark(d, cause, exc))
        return _Failed(cause, True, None)

    def _write(self, buf: bytearray, start: int) -> None:
        assert self._seg_fd is not None
        name = segment_name(self._seg_first)
        path = os.path.join(self.directory, name)
        if buf:
            try:
                written = os.pwrite(self._seg_fd, buf, start)
            except OSError as exc:
                raise OSError(exc.errno, f"writing ledger segment {name} failed: {exc.strerror}", path) from exc
            if written != len(buf):
                # A regular file is written short only when the disk or a quota is full.
                raise OSError(errno.ENOSPC, f"short write to ledger segment {name}: {written} of {len(buf)} "
                              f"bytes at offset {start} ({os.strerror(errno.ENOSPC)}?)", path)
            if self.fsync:
                blobs = self.batch_blobs
                try:
                    if blobs is not None and blobs.sync_fd is not None and blobs.needs_syncfs():
                        # One device flush for the batch: its records and the blobs it renamed in.
                        _syncfs_fd(blobs.sync_fd, path)
                    else:
                        if blobs is not None:
                            # Only large blobs (their bytes flushed at put), or none: their names and
                            # the records, without flushing what other writers left on the filesystem.
                            blobs.flush_names()
                        os.fdatasync(self._seg_fd)
                    if blobs is not None:
                        blobs.batch_flushed()
                except OSError as exc:
                    raise OSError(exc.errno, f"flushing ledger segment {name} failed: {exc.strerror}", path) from exc
        self._end = start + len(buf)

    def _new_segment(self) -> None:
        # The old segment needs no sync here: _write() syncs everything it writes.
        first = self.head_seq + 1
        path = os.path.join(self.directory, segment_name(first))
        tmp = path + ".tmp"
        renamed = False
        try:
            with open(tmp, "wb") as f:
                f.write(encode_segment_header(first, self.head_hash))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            # Replaces a record-less version-1 segment of the same name (see append_batch).
            os.rename(tmp, path)
            renamed = True
            if self.fsync:
                _fsync_dir(self.directory)
        except OSError as exc:
            raise self._drop_new_segment(tmp, path, renamed, exc) from exc
        self._open_segment(first, path, FORMAT_VERSION)
        self._end = SEGMENT_HEADER_SIZE
        self._head_batch = -1

    def _drop_new_segment(self, tmp: str, path: str, renamed: bool, cause: OSError) -> "_Failed":
        """Remove a segment whose creation failed, so nobody appends to a file that may not last."""
        try:
            os.unlink(path if renamed else tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if renamed:
                return _Failed(cause, False, self._leave_mark(self._durable(), cause, exc))
        if renamed:
            try:
                _fsync_dir(self.directory)
            except OSError:
                pass  # a header-only last segment is a clean end of the log either way
        return _Failed(cause, True, None)

    # ----------------------------------------------------------------- poisoning and repair
    def _leave_mark(self, d: _Durable, cause: OSError, undo_error: OSError) -> str:
        """Durably mark the log as holding a failed write (best effort); returns the mark's path."""
        info = {
            "segment": segment_name(d.seg_first),
            "offset": d.end,
            "seq": d.head_seq,
            "hash": d.head_hash.hex(),
            "error": f"{cause}; undoing it failed too: {undo_error}",
            "pid": os.getpid(),
            "time_us": time.time_ns() // 1000,
        }
        try:
            fd = os.open(self._mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, json.dumps(info).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.directory)
        except OSError:
            pass  # the mark exists (at least in memory) if it could be created at all
        return self._mark

    def _mark_info(self) -> dict | None:
        """The mark's content (empty if unreadable), or None if the log is not marked."""
        try:
            with open(self._mark, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(data)
            if isinstance(info, dict) and isinstance(info.get("seq"), int) and isinstance(info.get("offset"), int) \
                    and isinstance(info.get("segment"), str):
                return info
        except ValueError:
            pass
        return {}

    def _refuse_if_marked(self) -> None:
        info = self._mark_info()
        if info is not None:
            raise LedgerPoisoned(
                f"{self._mark} marks a write that failed and could not be undone "
                f"({info.get('error', 'details unreadable')}); no process appends to this ledger until it is "
                f"repaired: run `artifact-ledger repair` on the ledger, or call "
                f"artifact_ledger.ledger.repair_log({self.directory!r})"
            )

    def repair(self) -> str:
        """Undo a failed write the log was marked for: cut back to the last durable, intact record,
        fsync, remove the mark. Returns what was done. Takes the exclusive lock."""
        done: list[str] = []
        with self.locked(exclusive=True):
            info = self._mark_info()
            if info:
                first = int(info["segment"][: -len(SEGMENT_SUFFIX)])
                for s in self.segments():
                    if s > first:
                        os.unlink(os.path.join(self.directory, segment_name(s)))
                        done.append(f"removed segment {segment_name(s)}")
                path = os.path.join(self.directory, info["segment"])
                if os.path.exists(path) and os.path.getsize(path) > info["offset"]:
                    cut = os.path.getsize(path) - info["offset"]
                    fd = os.open(path, os.O_RDWR)
                    try:
                        os.ftruncate(fd, info["offset"])
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    done.append(f"cut {cut} bytes of the failed write from segment {info['segment']} "
                                f"(the log ends at seq {info['seq']} or before)")
                _fsync_dir(self.directory)
            elif info is not None:
                done.append("the mark was unreadable, so every intact record was kept")
            self._ignore_mark = True
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", TornTailWarning)
                    self._catch_up(lambda rec: None, repair=True)
            finally:
                self._ignore_mark = False
            done += [str(w.message) for w in caught if issubclass(w.category, TornTailWarning)]
            if info is not None:
                os.unlink(self._mark)
                _fsync_dir(self.directory)
                done.append(f"removed {self._mark}")
        if not done:
            return f"the log at {self.directory} needed no repair (it ends at seq {self.head_seq})"
        return "; ".join(done) + f"; the log ends at seq {self.head_seq}"


class _Failed(Exception):
    """How undoing a failed write went (internal to append_batch)."""

    def __init__(self, cause: OSError, undone: bool, mark: str | None):
        super().__init__(str(cause))
        self.cause = cause
        self.undone = undone
        self.mark = mark


def repair_log(log_dir: str | os.PathLike[str]) -> str:
    """Repair the log in ``log_dir`` after a failed write left it marked (``POISONED``); returns what
    was done. Cuts the log back to the last durable, intact record and removes the mark."""
    log_dir = os.fspath(log_dir)
    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"{log_dir} is not a ledger log directory")
    log = SegmentLog(log_dir)
    try:
        return log.repair()
    finally:
        log.close()
