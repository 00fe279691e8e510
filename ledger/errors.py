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


class LedgerWriteError(LedgerPoisoned, OSError):
    """Writing or flushing the log failed (an OSError with the errno and the segment's path); what
    this call asked for was not recorded, and this process must reopen the ledger to write again."""
