"""Async front of a log: group commit for appends and cheap catch-up for reads.

Concurrent ``append`` calls queue their payloads; whoever holds the lock next
writes every queued payload in one batch with a single fsync, so many
appends share one fsync. Each batch runs in a worker thread.

Cancellation: an ``append`` cancelled while its payload is still queued is
removed from the queue and never written. Once a batch has taken its payload
the write cannot be called back, so a cancelled ``append`` waits (shielded)
until that batch has finished, applied to the catalogue if durable, and then
raises the cancellation: when the caller regains control, the record either
is durable and visible or was never recorded.
"""

from __future__ import annotations

from typing import Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

from .errors import (AppendNotRecorded, LedgerClosed, LedgerCorruption, LedgerPoisoned, LedgerWriteError,
                     LockTimeout)
from .base import BatchFailed, EventLog
from .framing import Record


class BatchRefused(Exception):
    """Raised under the log lock by the ``under_lock`` check: these payloads (index -> error) must not be written."""

    def __init__(self, refused: dict[int, BaseException]):
        super().__init__(f"{len(refused)} payload(s) refused under the log lock")
        self.refused = refused


class _Pending:
    __slots__ = ("payload", "record", "error", "taken", "abandoned", "finished", "_done")

    def __init__(self, payload: bytes):
        self.payload = payload
        self.record: Record | None = None
        self.error: BaseException | None = None
        self.taken = False
        self.abandoned = False  # its caller stopped waiting (cancelled): never re-queue it
        self.finished = False  # the batch that took this payload has finished
        # Made only for a cancelled caller that must wait for its batch: an anyio Event per append
        # costs more than the rest of its queueing.
        self._done: anyio.Event | None = None

    def finish(self) -> None:
        """The batch that took this payload has finished (wakes a cancelled caller waiting for it)."""
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait_finished(self) -> None:
        """Wait until ``finish()`` (all in the event loop's thread, so no wake-up is missed)."""
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()


class GroupCommitLog:
    """Serialises all log I/O of one process and batches appends."""

    def __init__(self, log: EventLog, on_records: Callable[[list[Record]], None],
                 before_write: Callable[[], None] | None = None,
                 under_lock: Callable[[list[bytes]], dict[int, BaseException]] | None = None):
        self.log = log
        self._on_records = on_records
        # Runs in the writer thread before each batch: the blob store makes the
        # blobs the batch's events name durable here (blobs before events).
        self._before_write = before_write
        # Runs under the exclusive log lock, caught up, just before the batch is written: returns
        # the payloads that must not be written (the ledger refuses events whose blobs a gc of
        # another process deleted meanwhile; see FORMAT.md, "Garbage collection").
        if under_lock is not None:
            def check(payloads: list[bytes]) -> None:
                refused = under_lock(payloads)
                if refused:
                    raise BatchRefused(refused)
            log.check_before_write = check
        self._pending: list[_Pending] = []
        self._lock = anyio.Lock()
        self._poisoned: BaseException | None = None
        self._damaged: LedgerCorruption | None = None  # found while reading what others appended
        self._closed = False

    @property
    def failed(self) -> bool:
        """Whether a write failed or a damaged record was met: nothing more is written (not even a checkpoint)."""
        return self._poisoned is not None or self._damaged is not None

    def _check(self) -> None:
        self.log.check_process()
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        if self._damaged is not None:
            # The log moved past a record the catalogue could not take in: every later read
            # would quietly answer from a stale state, so this process refuses them all.
            raise self._damaged
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
            elif not req.finished:
                # Already being written: report the cancellation only once the outcome is settled.
                with anyio.CancelScope(shield=True):
                    await req.wait_finished()
            raise
        # The flushing task itself may have been cancelled while its batch was written
        # (the worker thread cannot be called back): report that cancellation now, as a
        # waiting task would, instead of returning as if nothing had happened.
        await anyio.lowlevel.checkpoint_if_cancelled()
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
            if isinstance(exc, LockTimeout):
                for r in batch:
                    if r is not own:
                        r.error = LockTimeout(str(exc), exc.holders)
                self._finish(batch, seen)
            else:
                # This task was cancelled: the appends of tasks still waiting go back to
                # the queue (they flush them next); its own and those of tasks already
                # cancelled are dropped, and their shielded waits released.
                keep = [r for r in batch if not r.abandoned and r is not own]
                for r in keep:
                    r.taken = False
                self._pending[:0] = keep
                self._finish([r for r in batch if r not in keep], seen)
            raise
        except BatchRefused as exc:
            # Nothing was written. The refused calls hear why; the others go back to the queue,
            # and this task writes them (its own included, unless refused) right away.
            refused = [r for i, r in enumerate(batch) if i in exc.refused]
            for i, r in enumerate(batch):
                if i in exc.refused:
                    r.error = exc.refused[i]
            keep = [r for r in batch if r not in refused and not r.abandoned]
            for r in keep:
                r.taken = False
            self._pending[:0] = keep
            self._finish([r for r in batch if r not in keep], seen)
            if own in keep:
                await self._flush(own)
            return
        except BatchFailed as exc:
            # The records before the failure are durable (a batch split over a segment
            # rollover): acknowledge exactly those, so a retry records nothing twice.
            self._poisoned = exc.cause
            for r, rec in zip(batch, exc.durable):
                r.record = rec
            cause = exc.cause
            if exc.undone:
                what = "this call's event was cut from the log again and not recorded"
            else:
                what = (f"cutting the failed write from the log failed too, so {exc.mark} stops every "
                        "process from appending until the log is repaired")
            for r in batch[len(exc.durable):]:
                r.error = LedgerWriteError(cause.errno, f"{cause.strerror}; {what}; reopen the ledger to write "
                                           "again", cause.filename)
                r.error.__cause__ = cause
            self._finish(batch, seen + exc.durable)
            return
        except AppendNotRecorded as exc:
            # Nothing of the batch was recorded and the log is not broken: later appends may succeed.
            for r in batch:
                r.error = AppendNotRecorded(str(exc))
                r.error.__cause__ = exc.__cause__
            self._finish(batch, seen)
            return
        except LedgerPoisoned as exc:
            # The log is marked by a failed write elsewhere; nothing was written, this process is fine.
            for r in batch:
                r.error = LedgerPoisoned(str(exc))
            self._finish(batch, seen)
            return
        except LedgerCorruption as exc:
            # Catching up before the write found the log damaged or shortened (RecordsLost):
            # nothing of this batch was written, and every caller hears exactly why.
            self._poisoned = exc
            for r in batch:
                r.error = exc
            self._finish(batch, seen)
            return
        except BaseException as exc:
            # Failed before writing (making the batch's blobs durable, catching up): no
            # record of the batch is in the log, but this process stops writing.
            self._poisoned = exc
            for r in batch:
                r.error = LedgerPoisoned(f"write failed: {exc!r}; reopen the ledger to recover")
                r.error.__cause__ = exc
            self._finish(batch, seen)
            if not isinstance(exc, Exception):
                raise
            return
        for r, rec in zip(batch, new):
            r.record = rec
        self._finish(batch, seen + new)

    def _finish(self, batch: list[_Pending], records: list[Record]) -> None:
        try:
            if records:
                self._on_records(records)
        except LedgerCorruption as exc:
            self._damaged = exc
            raise
        finally:
            for r in batch:
                r.finish()

    def _write(self, payloads: list[bytes], on_record: Callable[[Record], None]) -> list[Record]:
        if self._before_write is not None:
            self._before_write()
        # Much news from other processes is read without the write lock first, so that
        # the exclusive hold of append_batch covers a short tail and this batch only.
        self.log.prefetch(on_record)
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
                try:
                    await anyio.to_thread.run_sync(self.log.catch_up, seen.append)
                finally:
                    if seen:
                        self._on_records(seen)
            except LedgerCorruption as exc:
                self._damaged = exc
                raise

    async def aclose(self) -> None:
        """Wait for in-flight writes, then release the log's files."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            self.log.close()
