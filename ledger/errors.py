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


class LockTimeout(LedgerError, TimeoutError):
    """The log lock was not granted within ``lock_timeout`` seconds; ``holders`` are the pids holding it."""

    def __init__(self, message: str, holders: list[int]):
        super().__init__(message)
        self.holders = holders


class LedgerForked(LedgerError):
    """A ledger opened in one process was used in a ``fork()`` child; open it in the child instead."""
