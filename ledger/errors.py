"""Errors raised by the ledger."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of ledger errors."""


class LedgerCorruption(LedgerError):
    """Damage before the tail of the log: never skipped, always reported."""

    def __init__(self, segment: str, offset: int, seq: int, reason: str):
        self.segment = segment
        self.offset = offset
        self.seq = seq
        self.reason = reason
        super().__init__(
            f"ledger damaged in segment {segment} at byte offset {offset} (record seq {seq}): {reason}. "
            "The log is the source of truth, so nothing after this point is trusted; restore the "
            "segment from a backup or truncate it here by hand to accept losing later records."
        )


class LedgerClosed(LedgerError):
    """An operation was attempted on a closed ledger."""


class LedgerPoisoned(LedgerError):
    """A write failed half-way (e.g. fsync error); the ledger must be reopened."""


class ReadOnlyError(RuntimeError):
    """A mutating call on a read-only ledger (``open_ledger(root, read_only=True)``) or a past view."""


class RecordsLost(LedgerCorruption):
    """The log ends before a seq the ledger knows was committed: acknowledged records are gone.

    ``first``..``last`` are the missing seqs, ``log_head`` the seq the log now ends at and
    ``evidence`` what still knows of ``last`` (a checkpoint file, the pointer, this process).
    """

    def __init__(self, log_head: int, last: int, evidence: str, *, segment: str = "", offset: int = 0):
        self.log_head = log_head
        self.first = log_head + 1
        self.last = last
        self.evidence = evidence
        span = f"seq {self.first}" if self.first == last else f"seqs {self.first}..{last}"
        self.segment, self.offset, self.seq = segment, offset, self.first
        self.reason = f"{span} missing"
        Exception.__init__(
            self,
            f"ledger lost records: the log ends at seq {log_head}, but {evidence} records seq {last}, so "
            f"{span} ({last - log_head} committed record{'s) are' if last - log_head != 1 else ') is'} missing "
            "(a segment file deleted, cut short or replaced). Restore the missing segment(s) of log/ from a "
            "backup; or, to accept losing these records, open once with open_ledger(root, accept_loss=True)."
        )


class TornTailWarning(UserWarning):
    """A partly written record at the end of the log was truncated on open (ignored, when read-only)."""


class LostRecordsWarning(UserWarning):
    """Missing records were accepted (``accept_loss=True``): the ledger continues from a shorter log."""


class LockTimeout(LedgerError, TimeoutError):
    """The log lock was not granted within ``lock_timeout`` seconds; ``holders`` are the pids holding it."""

    def __init__(self, message: str, holders: list[int]):
        super().__init__(message)
        self.holders = holders


class LedgerForked(LedgerError):
    """A ledger opened in one process was used in a ``fork()`` child; open it in the child instead."""


class LedgerWriteError(LedgerPoisoned, OSError):
    """Writing or flushing the log failed (an OSError with the errno and the segment's path); what
    this call asked for was not recorded, and this process must reopen the ledger to write again."""


class LedgerUnreachable(LedgerError, ConnectionError):
    """The log's server could not be reached or refused the connection (the message says which and why)."""


class SchemaTooNew(LedgerError):
    """The log's stored schema is newer than this library knows: upgrade artifact-ledger to open it."""


class AppendNotRecorded(LedgerError):
    """An append recorded nothing and left the log usable (the server refused the batch, e.g. a duplicate
    artifact id, or could not be reached before anything was sent); retrying it records it once."""


class LedgerNotFound(LedgerError, FileNotFoundError):
    """No ledger where a log URL points (and ``create=False`` or read-only forbade making one)."""


class BlobCollected(LedgerError):
    """An event was refused under the log lock: a gc deleted blobs it names since they were stored.

    Nothing was recorded; the facade stores the bytes again and retries (see FORMAT.md, "Garbage collection").
    """

    def __init__(self, shas: list[str]):
        self.shas = shas
        super().__init__(f"blob(s) {', '.join(s[:16] + '…' for s in shas[:3])} were collected by a gc after they "
                         "were stored and before the event naming them was written; nothing was recorded")
