"""The append-only, hash-chained event log: the source of truth."""

from .errors import (LedgerClosed, LedgerCorruption, LedgerError, LedgerForked, LedgerPoisoned,
                     LedgerWriteError, LockTimeout, ReadOnlyError, RecordsLost)
from .events import ArtifactRecorded, Event, PinChanged, decode_event, encode_event
from .base import BatchFailed, EventLog, LogCheck
from .filelog import Position, SegmentLog, TornTailWarning, repair_log
from .framing import Record
from .group_commit import GroupCommitLog

__all__ = [
    "ArtifactRecorded",
    "BatchFailed",
    "Event",
    "EventLog",
    "GroupCommitLog",
    "LedgerClosed",
    "LedgerCorruption",
    "LedgerError",
    "LedgerForked",
    "LedgerPoisoned",
    "LedgerWriteError",
    "LockTimeout",
    "LogCheck",
    "PinChanged",
    "ReadOnlyError",
    "RecordsLost",
    "Position",
    "Record",
    "SegmentLog",
    "TornTailWarning",
    "decode_event",
    "encode_event",
    "repair_log",
]
