"""Async front of a log: group commit for appends and cheap catch-up for reads.

Concurrent ``append`` calls queue their payloads; whoever holds the lock next
writes every queued payload in one batch with a single fsync, so many
appends share one fsync. Each batch runs in a worker thread.
"""

from __future__ import annotations

from typing import Callable

import anyio
import anyio.to_thread

from .errors import LedgerClosed, LedgerPoisoned, LockTimeout
from .filelog import SegmentLog
from .framing import Record


UNLOCKED_CATCH_UP_BYTES = 256 * 1024


class _Pending:
    __slots__ = ("payload", "record", "error", "taken", "abandoned")

    def __init__(self, payload: bytes):
        self.payload = payload
        self.record: Record | None = None
        self.error: BaseException | None = None
        self.taken = False
        self.abandoned = False  # its caller stopped waiting (cancelled): never re-queue it


class GroupCommitLog:
    """Serialises all log I/O of one process and batches appends."""

    def __init__(self, log: SegmentLog, on_records: Callable[[list[Record]], None],
                 before_write: Callable[[], None] | None = None):
        self.log = log
        self._on_records = on_records
        # Runs in the writer thread before each batch: the blob store makes the
        # blobs the batch's events name durable here (blobs before events).
        self._before_write = before_write
        self._pending: list[_Pending] = []
        self._lock = anyio.Lock()
        self._poisoned: BaseException | None = None
        self._closed = False

    def _check(self) -> None:
        self.log.check_process()
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        if self._poisoned is not None:
            raise LedgerPoisoned(
                f"an earlier write failed ({self._poisoned!r}); reopen the ledger to recover"
            ) from self._poisoned

    async def append(self, payload: bytes) -> Record:
        """Append one payload; returns once it is durable."""
        self._check()
        req = _Pending(payload)
        self._pending.append(req)
        try:
            async with self._lock:
                if not req.taken:
                    await self._flush(req)
        except BaseException:
            req.abandoned = True
            if not req.taken:
                self._pending.remove(req)
            raise
        if req.error is not None:
            raise req.error
        assert req.record is not None
        return req.record

    async def _flush(self, own: _Pending) -> None:
        self._check()
        batch, self._pending = self._pending, []
        for r in batch:
            r.taken = True
        seen: list[Record] = []
        try:
            new = await anyio.to_thread.run_sync(self._write, [r.payload for r in batch], seen.append)
        except (LockTimeout, anyio.get_cancelled_exc_class()) as exc:
            # Nothing was written: the thread never got the lock (the wait timed out, or
            # saw this task cancelled), or never started. Not a reason to poison.
            if seen:
                self._on_records(seen)
            if isinstance(exc, LockTimeout):
                for r in batch:
                    if r is not own:
                        r.error = LockTimeout(str(exc), exc.holders)
            else:
                # This task was cancelled: the appends of tasks still waiting go back to
                # the queue (they flush them next); its own is dropped by append(), and
                # those of tasks already cancelled are dropped here.
                keep = [r for r in batch if not r.abandoned]
                for r in keep:
                    r.taken = False
                self._pending[:0] = keep
            raise
        except BaseException as exc:
            # The batch may be partly on disk: only a reopen can tell.
            self._poisoned = exc
            for r in batch:
                r.error = LedgerPoisoned(f"write failed: {exc!r}; reopen the ledger to recover")
            if seen:
                self._on_records(seen)
            raise
        for r, rec in zip(batch, new):
            r.record = rec
        self._on_records(seen + new)

    def _write(self, payloads: list[bytes], on_record: Callable[[Record], None]) -> list[Record]:
        if self._before_write is not None:
            self._before_write()
        # Much news from other processes is read without the lock first, so that the
        # exclusive hold of append_batch covers a short tail and this batch only.
        if self.log.unread_bytes() > UNLOCKED_CATCH_UP_BYTES:
            self.log.catch_up(on_record)
        return self.log.append_batch(payloads, on_record)

    async def refresh(self) -> None:
        """Pick up records other processes committed (cheap when there are none)."""
        self._check()
        # The lock-free check is only safe while no batch runs in a worker thread: a
        # batch may be switching segments and closing the file has_news() looks at.
        if not self._lock.locked() and not self.log.has_news():
            return
        async with self._lock:
            if not self.log.has_news():
                return
            seen: list[Record] = []
            try:
                await anyio.to_thread.run_sync(self.log.catch_up, seen.append)
            finally:
                if seen:
                    self._on_records(seen)

    async def aclose(self) -> None:
        """Wait for in-flight writes, then release the log's files."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            self.log.close()
