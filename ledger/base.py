"""The log contract: what the facade needs from an event log, whatever stores it.

Every backend (``file``: segment files under a directory; ``postgres``: an events table) is one
module implementing ``EventLog``; the facade, the group committer and the audit code talk to this
contract only. Every method may block: the group committer calls them from a worker thread, one at
a time per process (never two concurrently on one log object).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

from .framing import Record

if TYPE_CHECKING:
    from ..store.base import OneFlushBlobs

OnRecord = Callable[[Record], None]


# Recovery's check of the log's last batch: None if every blob its records name is whole, else
# (what is wrong, a cleanup that removes the incomplete blob files) -- see FORMAT.md, "One flush per batch".
LastBatchCheck = Callable[[list[Record]], "tuple[str, Callable[[], None]] | None"]

# folded(payloads as one msgpack array, seqs, commit times (array('q') each)) -> True, or False
# (nothing changed) to be handed the same records as Records instead.
OnPayloads = Callable[[bytes, Sequence[int], Sequence[int]], bool]


class RecordSink:
    """An ``on_record`` callback that also takes a whole scanned chunk of records in one call.

    The segment log hands each chunk it scanned to ``many`` (replay's fast path: no Python call
    per record), or, when ``payloads`` is given, first offers it the chunk's payloads, seqs and
    commit times without making a Record for each; every other reader calls it once per record,
    which goes to ``one``. All must have the same effect for the same records in the same order.
    """

    __slots__ = ("one", "many", "payloads")

    def __init__(self, one: OnRecord, many: Callable[[list[Record]], None], payloads: OnPayloads | None = None):
        self.one = one
        self.many = many
        self.payloads = payloads

    def __call__(self, rec: Record) -> None:
        self.one(rec)


class ReplayAgain(Exception):
    """Raised by ``open`` after it handed over a last batch that recovery then cut as torn (or, read-only,
    left out): the caller drops the state it built and opens again, which reads the log without it."""


def deliver(on_record: OnRecord, recs: list[Record]) -> None:
    """Hand ``recs`` (in order) to ``on_record``: in one call to a RecordSink's ``many``, else one by one."""
    if type(on_record) is RecordSink:
        on_record.many(recs)
    else:
        for rec in recs:
            on_record(rec)


# restore(schema, payload, seq): load the snapshot of the state right after record ``seq`` into the
# caller's catalogue, or raise ValueError (the caller's state unchanged) when it cannot be used; the
# log then tries an older one or replays from seq 1.
Restore = Callable[[int, memoryview, int], None]


class BatchFailed(Exception):
    """A batch failed part-way; ``durable`` are the records of it that are durable (acknowledged).

    ``cause`` is the OSError; ``undone`` says whether the failed part was removed from the log again;
    ``mark`` names what now stops every process from appending (when it could not be removed).
    """

    def __init__(self, durable: list[Record], cause: OSError, undone: bool, mark: str | None):
        super().__init__(f"appending to the ledger failed: {cause}")
        self.durable = durable
        self.cause = cause
        self.undone = undone
        self.mark = mark


@dataclass
class LogCheck:
    """What a full walk of the log found: its head, records read, problems, and any lost records."""

    head: tuple[int, str]
    records: int = 0
    problems: list[str] = field(default_factory=list)
    lost: tuple[int, int] | None = None  # (first, last) seq known committed but missing from the log


class EventLog(Protocol):
    """An append-only, gap-free, hash-chained log of records (see FORMAT.md for each backend)."""

    @property
    def head_seq(self) -> int:
        """Seq of the newest record this object has read or written (0: none)."""
        ...

    @property
    def head_hash(self) -> bytes:
        """Hash of that record (32 zero bytes for an empty log)."""
        ...

    @property
    def lock_timeout(self) -> float | None:
        """Seconds a wait for the log's write lock may take (None: no limit)."""
        ...

    @property
    def location(self) -> str:
        """Where the log lives, for messages (a directory, or a URL without its password)."""
        ...

    def check_process(self) -> None:
        """Raise LedgerForked when used in a fork() child of the process that opened the log."""
        ...

    def open(self, on_record: OnRecord, restore: Restore | None, *, accept_loss: bool = False,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Read the log (from the newest usable checkpoint, handed to ``restore``) up to its head.

        Calls ``on_record`` for every record after the checkpoint; returns the seq of the checkpoint
        loaded (0: none). Repairs what the backend's recovery rules allow; raises on damage.
        """
        ...

    def has_news(self) -> bool:
        """Cheap check whether another process committed records since this one last looked."""
        ...

    def catch_up(self, on_record: OnRecord) -> None:
        """Read the records other processes committed since this one last looked."""
        ...

    def prefetch(self, on_record: OnRecord) -> None:
        """Before an append: read much news without holding the write lock (may do nothing)."""
        ...

    def append_batch(self, payloads: list[bytes], on_record: OnRecord) -> list[Record]:
        """Append payloads as consecutive records in one durable commit; returns them once durable.

        ``on_record`` first sees every record other processes committed before this batch.
        Raises BatchFailed when part of the batch is durable and the rest is not.
        """
        ...

    def read_range(self, since: int = 1, until: int | None = None) -> Iterator[Record]:
        """Committed records with ``since <= seq <= until`` in seq order (until: the head)."""
        ...

    # Set by the group committer: runs under the write lock, caught up, just before a batch is written;
    # if it raises, nothing of the batch is written (gc's protocol against concurrent writers, FORMAT.md).
    check_before_write: Callable[[list[bytes]], None] | None

    def holding(self, on_record: OnRecord) -> AbstractContextManager[None]:
        """Hold the write lock, caught up with every committed record (``on_record`` sees the news):
        no append of any process can interleave until the context ends."""
        ...

    def check_last_batch_with(self, check: LastBatchCheck) -> None:
        """Have every open from now on run ``check`` on the log's last batch and cut it if ``check`` finds
        it names a blob that is not whole; a log whose batches commit atomically with no blob ignores it."""
        ...

    @property
    def flush_device(self) -> int | None:
        """``st_dev`` of the local filesystem holding the log, whose syncfs could flush a batch's records and
        blobs at once (None: the log is not local files, and its batches keep three flushes)."""
        ...

    def flush_batches_with(self, blobs: OneFlushBlobs) -> None:
        """From now on flush each batch's blobs and records with one syncfs (FORMAT.md, "One flush per
        batch"); only for a store on ``flush_device``, with the last-batch check installed."""
        ...

    def blob_place(self) -> str | None:
        """The ``s3://bucket/prefix`` every process of this ledger keeps its blobs in (None: none recorded,
        each machine's own blob directory)."""
        ...

    def adopt_blob_place(self, place: str) -> str:
        """Record ``place`` as the ledger's blob place, atomically with respect to appends; returns it.

        Raises ValueError naming both places when another is recorded, and when the log already holds
        events (whose blobs are then in local directories); ReadOnlyError on a read-only log.
        """
        ...

    def expect_blob_place(self, place: str | None) -> None:
        """From now on, refuse an append (AppendNotRecorded, nothing written) once the ledger records a blob
        place other than ``place`` (None: this process keeps its blobs in a local directory)."""
        ...

    @property
    def shared_checkpoints(self) -> bool:
        """Whether checkpoints are shared by every process of the log (then closing writes one only once
        ``checkpoint_every`` events are due, rather than whenever the log moved)."""
        ...

    def checkpoint_cut(self) -> Any:
        """An opaque token naming the head record, for ``write_checkpoint`` (None: no checkpoints)."""
        ...

    def write_checkpoint(self, cut: Any, schema: int, parts: Iterable[bytes]) -> None:
        """Store a snapshot (schema, parts) of the state after the record ``cut`` names (blocking)."""
        ...

    def known_head(self) -> tuple[int, str]:
        """A seq the log is known to have reached (by a checkpoint or similar), and what says so."""
        ...

    def size_bytes(self) -> int:
        """Roughly how many bytes a full walk of the log reads (for progress reports)."""
        ...

    def verify(self, on_record: OnRecord, known: tuple[int, str]) -> LogCheck:
        """Walk every record from seq 1 with every check (frame, chain, seq), reading nothing into state.

        ``known`` (seq, evidence) is a seq the log must reach; if it ends before, the gap is ``lost``.
        Damage raises LedgerCorruption.
        """
        ...

    def close(self) -> None:
        """Release the log's files or connections."""
        ...
