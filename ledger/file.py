"""The file backend behind the log contract: the segment log (``filelog``) plus its checkpoint files.

Everything that depends on segments and byte offsets lives here or in ``filelog``: choosing a
checkpoint that matches the log byte for byte, recovery and lost-record evidence, and the verify walk.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import checkpoints
from .base import LastBatchCheck, LogCheck, OnRecord, RecordSink, Restore
from ..store.base import OneFlushBlobs
from ..store.durable import atomic_write
from .errors import LedgerCorruption, LostRecordsWarning, ReadOnlyError, RecordsLost
from .filelog import DEFAULT_SEGMENT_BYTES, Position, SegmentLog, segment_name
from .framing import BODY_HEAD_SIZE_V2, FRAME_SIZE, SEGMENT_HEADER_SIZE, Record
from .lockfile import DEFAULT_LOCK_TIMEOUT


def read_blob_place(place_file: str) -> str | None:
    """The place a ledger directory's ``blobs/remote`` names (None: absent or empty, blobs in ``blobs/``)."""
    try:
        with open(place_file, encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


class FileEventLog:
    """The embedded log: segment files in ``log_dir``, checkpoints in ``checkpoint_dir`` (see FORMAT.md)."""

    def __init__(self, log_dir: str, checkpoint_dir: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 fsync: bool = True, read_only: bool = False, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
                 place_file: str | None = None):
        # The ledger directory's ``blobs/remote`` (None: this log records no blob place).
        self.place_file = place_file
        self.segments = SegmentLog(log_dir, segment_bytes=segment_bytes, fsync=fsync, read_only=read_only,
                                   lock_timeout=lock_timeout)
        self.checkpoint_dir = checkpoint_dir
        self.read_only = read_only
        self._fsync = fsync

    # ----------------------------------------------------------------- what the contract reads
    @property
    def head_seq(self) -> int:
        """Seq of the newest record read or written."""
        return self.segments.head_seq

    @property
    def head_hash(self) -> bytes:
        """Hash of the newest record read or written."""
        return self.segments.head_hash

    @property
    def lock_timeout(self) -> float | None:
        """Seconds a wait for the log lock may take."""
        return self.segments.lock_timeout

    @property
    def location(self) -> str:
        """The log directory."""
        return self.segments.directory

    @property
    def lock_problem(self) -> str | None:
        """Read-only only: what lock file could not be opened (None: all could)."""
        return self.segments.lock_problem

    @property
    def locks_directory(self) -> bool:
        """Whether the ``log/`` directory lock is held with each lock."""
        return self.segments.locks_directory

    def check_process(self) -> None:
        """Raise LedgerForked in a fork() child."""
        self.segments.check_process()

    @contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the inter-process log lock (file backend only)."""
        with self.segments.locked(exclusive):
            yield

    # ----------------------------------------------------------------- opening
    def open(self, on_record: OnRecord, restore: Restore | None, *, accept_loss: bool = False,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Load the newest checkpoint that matches the log, then recover and read the rest."""
        log = self.segments
        # Taken before the log is read: a checkpoint exists only once its record was durable.
        known, evidence = checkpoints.known_seq(self.checkpoint_dir)
        if not accept_loss:
            log.must_reach, log.must_reach_evidence = known, evidence
        loaded = self._load_checkpoint(restore) if restore is not None else None
        start = None if loaded is None else loaded.position
        total = self._bytes_after(start) if progress is not None else 0
        done = 0

        def counted(rec: Record) -> None:
            nonlocal done
            on_record(rec)
            if progress is not None:
                done += rec.length
                if rec.seq % 4096 == 0:
                    progress(min(done, total), total)

        if progress is not None and type(on_record) is RecordSink:
            # Chunks stay chunks: progress is reported at the same seqs as record by record.
            many, folds = on_record.many, on_record.payloads

            def counted_many(recs: list[Record]) -> None:
                nonlocal done
                many(recs)
                for rec in recs:
                    done += rec.length
                    if rec.seq % 4096 == 0:
                        progress(min(done, total), total)

            def counted_folds(joined: bytes, seqs: Sequence[int], tss: Sequence[int]) -> bool:
                # Replay's fast path stays the fast path with progress on; reported once per chunk that
                # holds a multiple of 4096. A chunk's records take its payloads (the joined array less its
                # 5-byte header) plus a frame and a body head each: exact for format 2 (the current one),
                # 8 bytes a record high for version-1 segments, which the min() below keeps within total.
                nonlocal done
                assert folds is not None
                if not folds(joined, seqs, tss):
                    return False
                done += len(joined) - 5 + len(seqs) * (FRAME_SIZE + BODY_HEAD_SIZE_V2)
                if seqs and seqs[-1] // 4096 > (seqs[0] - 1) // 4096:
                    progress(min(done, total), total)
                return True

            sink: OnRecord = RecordSink(counted, counted_many, counted_folds if folds is not None else None)
        else:
            sink = counted if progress is not None else on_record
        log.recover(sink, start=start,
                    start_record_offset=0 if loaded is None else loaded.record_offset)
        if log.head_seq < known:
            self._lost(known, evidence, accept_loss)
        if progress is not None:
            progress(total, total)
        return 0 if loaded is None else loaded.position.seq

    def _load_checkpoint(self, restore: Restore) -> checkpoints.CheckpointInfo | None:
        """Load the newest checkpoint that matches the log; warn about and skip any other."""
        log = self.segments
        for path in checkpoints.candidates(self.checkpoint_dir):
            try:
                info, payload = checkpoints.read(path)
                pos = info.position
                rec = log.record_at(pos.segment_first_seq, info.record_offset)
                if rec is None and self._short_of(pos):
                    continue  # not a cache problem: the log lost records; reported as RecordsLost after recovery
                if rec is None or rec.seq != pos.seq or rec.hash != pos.hash or rec.offset + rec.length != pos.offset:
                    checkpoints.warn(path, f"it does not match the log's record at seq {pos.seq}")
                    continue
                # The log wins: the checkpoint stands for the log prefix it was taken from, byte for
                # byte, so damage anywhere before it is still found (by the full replay that follows).
                changed = log.check_digest(info.log_digest)
                if changed is not None:
                    checkpoints.warn(path, f"the log before it changed ({changed})")
                    continue
                restore(info.schema, payload, pos.seq)
            except (ValueError, OSError) as exc:  # CheckpointError and the snapshot's errors are ValueErrors
                checkpoints.warn(path, str(exc))
                continue
            return info
        return None

    def _short_of(self, pos: Position) -> bool:
        """Whether the segment a checkpoint's record is in is now missing or ends before that record does."""
        try:
            return os.path.getsize(os.path.join(self.location, segment_name(pos.segment_first_seq))) < pos.offset
        except FileNotFoundError:
            return True

    def _bytes_after(self, start: Position | None) -> int:
        """Bytes of log that a replay from ``start`` will read (for progress reports)."""
        total = 0
        for first in self.segments.segments():
            if start is not None and first < start.segment_first_seq:
                continue
            size = os.path.getsize(os.path.join(self.location, segment_name(first)))
            if start is not None and first == start.segment_first_seq:
                size -= start.offset
            total += max(size, 0)
        return total

    def _lost(self, known: int, evidence: str, accept: bool) -> None:
        """The log ends before seq ``known``: raise RecordsLost, or (accepted) warn and drop the evidence."""
        log = self.segments
        err = RecordsLost(log.head_seq, known, evidence,
                          segment=segment_name(log._seg_first) if log._seg_first else "", offset=log._end)
        if not accept:
            raise err
        kept = "kept (read-only)" if self.read_only else "removed"
        warnings.warn(f"accepting lost records (accept_loss=True): {err.reason}; the ledger continues at seq "
                      f"{log.head_seq}; checkpoints after it {kept}", LostRecordsWarning, stacklevel=5)
        if not self.read_only:
            checkpoints.discard_beyond(self.checkpoint_dir, log.head_seq, fsync=self._fsync)

    # ----------------------------------------------------------------- reading and writing
    def has_news(self) -> bool:
        """Whether the segment grew or a new one appeared since we last looked."""
        return self.segments.has_news()

    def catch_up(self, on_record: OnRecord) -> None:
        """Read what other processes appended (see FORMAT.md, Writing 3)."""
        self.segments.catch_up(on_record)

    def prefetch(self, on_record: OnRecord) -> None:
        """When much news waits, read most of it without the lock, so the exclusive hold covers a short tail."""
        self.segments.prefetch(on_record)

    def append_batch(self, payloads: list[bytes], on_record: OnRecord) -> list[Record]:
        """One pwrite and one fdatasync under the exclusive lock (group commit)."""
        return self.segments.append_batch(payloads, on_record)

    def read_range(self, since: int = 1, until: int | None = None) -> Iterator[Record]:
        """Committed records in a seq range, read without the lock."""
        return self.segments.read_range(since, until)

    @property
    def check_before_write(self) -> Callable[[list[bytes]], None] | None:
        """The check the segment log runs under its exclusive lock before writing a batch."""
        return self.segments.check_before_write

    @check_before_write.setter
    def check_before_write(self, check: Callable[[list[bytes]], None] | None) -> None:
        self.segments.check_before_write = check

    def holding(self, on_record: OnRecord) -> Any:
        """The exclusive lock of the segment files, caught up (see ``SegmentLog.holding``)."""
        return self.segments.holding(on_record)

    # ----------------------------------------------------------------- one flush per batch
    def check_last_batch_with(self, check: LastBatchCheck) -> None:
        """Recovery runs ``check`` on the last batch: any process may have written it with one flush."""
        self.segments.check_last_batch = check

    @property
    def flush_device(self) -> int:
        """``st_dev`` of the filesystem holding the segments."""
        return os.stat(self.segments.directory).st_dev

    def flush_batches_with(self, blobs: OneFlushBlobs) -> None:
        """Flush each batch's blobs with its segment write by one syncfs through ``blobs.sync_fd``."""
        if self.segments.check_last_batch is None:
            raise ValueError("one flush per batch needs the last-batch check installed first")
        blobs.enable_one_flush()
        self.segments.batch_blobs = blobs

    # ----------------------------------------------------------------- the blob place
    def blob_place(self) -> str | None:
        """The place ``blobs/remote`` names (None: the blobs are in the directory's own ``blobs/``)."""
        return None if self.place_file is None else read_blob_place(self.place_file)

    def adopt_blob_place(self, place: str) -> str:
        """Write ``blobs/remote`` under the exclusive log lock, unless another place is recorded or the
        segments already hold records (ValueError)."""
        if self.read_only:
            raise ReadOnlyError(f"the ledger at {self.location} is open read-only; its blob place was not recorded")
        if self.place_file is None:
            raise ValueError(f"the log at {self.location} has no place to record a blob place in")
        with self.segments.locked(True):
            recorded = self.blob_place()
            if recorded is not None:
                if recorded != place:
                    raise ValueError(f"the ledger at {os.path.dirname(self.location)} keeps its blobs in {recorded}, "
                                     f"not {place}; open it with blobs={recorded!r} (or without blobs=)")
                return recorded
            if self.head_seq > 0 or self._holds_records():
                raise ValueError(f"the ledger at {os.path.dirname(self.location)} already holds events whose blobs "
                                 f"are in its own blobs/ directory; it cannot move them to {place} (open it without "
                                 "blobs=)")
            atomic_write(self.place_file, (place + "\n").encode(), fsync=self._fsync)
            return place

    def expect_blob_place(self, place: str | None) -> None:
        """Nothing to do: a ledger directory's place is checked when it is opened (``blobs/remote`` is written
        only into a log without records, and a writer opened before that holds no lock across appends)."""

    def _holds_records(self) -> bool:
        """Whether any segment file is longer than its header (another process appended)."""
        d = self.location
        try:
            names = [n for n in os.listdir(d) if n.endswith(".seg")]
            return any(os.path.getsize(os.path.join(d, n)) > SEGMENT_HEADER_SIZE for n in names)
        except FileNotFoundError:
            return False

    # ----------------------------------------------------------------- checkpoints
    @property
    def shared_checkpoints(self) -> bool:
        """Checkpoint files are this directory's: one is written on every close that has news."""
        return False

    def checkpoint_cut(self) -> Any:
        """The head record's location (position after it, its offset)."""
        return self.segments.head_location()

    def write_checkpoint(self, cut: Any, schema: int, parts: Iterable[bytes]) -> None:
        """Write ``checkpoints/<seq>.ckpt`` with the digest of the log prefix it summarises."""
        pos, record_offset = cut
        checkpoints.write(self.checkpoint_dir, schema, pos, record_offset, parts,
                          log_digest=self.segments.digest(pos), fsync=self._fsync)

    def known_head(self) -> tuple[int, str]:
        """The highest seq a checkpoint file or the pointer records."""
        return checkpoints.known_seq(self.checkpoint_dir)

    # ----------------------------------------------------------------- verification
    def size_bytes(self) -> int:
        """Total bytes of the segment files."""
        d = self.location
        try:
            return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.endswith(".seg"))
        except FileNotFoundError:
            return 0

    def verify(self, on_record: OnRecord, known: tuple[int, str]) -> LogCheck:
        """Re-read every segment from the first through a fresh read-only log (see FORMAT.md, Verification)."""
        log = SegmentLog(self.location, fsync=False, read_only=True, lock_timeout=self.lock_timeout)
        problems: list[str] = []
        lost: tuple[int, int] | None = None
        records = 0

        def counted(rec: Record) -> None:
            nonlocal records
            on_record(rec)
            records += 1

        try:
            try:
                log.catch_up(counted)
                # Bytes after the last record are judged under the lock: unlocked, they
                # may be a batch another process is writing right now.
                torn = log.torn_tail(counted)
            except LedgerCorruption as exc:
                problems.append(f"record: {exc}")
            else:
                if torn is not None:
                    name, offset, size = torn
                    problems.append(
                        f"record: {size} bytes of an incomplete record at the end of segment "
                        f"{name} offset {offset} (seq {log.head_seq + 1}); "
                        "reopen the ledger to truncate it"
                    )
                if log.head_seq < known[0]:
                    lost = (log.head_seq + 1, known[0])
                    problems.append(f"lost records: {RecordsLost(log.head_seq, known[0], known[1])}")
            head = (log.head_seq, log.head_hash.hex())
        finally:
            log.close()
        return LogCheck(head, records, problems, lost)

    def close(self) -> None:
        """Release the segment descriptors and the lock files."""
        self.segments.close()

