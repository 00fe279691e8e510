"""The Ledger: one opened ledger directory (log + blob store + projections)."""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile
import threading
import warnings
from operator import attrgetter
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Generator, Iterable, Sequence

import anyio
import anyio.to_thread

from ..ledger import checkpoints
from ..ledger.backends import (DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES, directory_blob_place, is_log_url,
                               open_file_log, open_log_url)
from ..ledger.base import EventLog, RecordSink, ReplayAgain
from ..ledger.errors import BlobCollected, LedgerClosed, LedgerCorruption, ReadOnlyError, RecordsLost
from ..ledger.events import Event, EventDecodeError, decode_event, decode_event_array, decode_events
from ..ledger.framing import Record
from ..ledger.group_commit import GroupCommitLog
from ..ledger.lockfile import DEFAULT_LOCK_TIMEOUT, check_lock_timeout
from ..projections import snapshot
from ..projections.catalog import Catalog, Row, append_payloads, apply_decoded
from ..projections.query import pinned_at, seq_at_time
from ..projections.query import runs as query_runs
from ..projections.query import retired_rows
from ..store import is_remote, open_store, remote_place
from ..store.base import BlobStore
from ..store.durable import unique_hex

from . import audit, content, exporting
from . import gc as gc_mod
from . import one_flush
from .put_queue import PutQueue
from .projecting import ProjectionHandle, Projecting, check_projections, fold_range
from .repair import MARKER, MARKER_TEXT, prepare_root  # noqa: F401  (MARKER names are re-exported)
from .sweep import STAGING_MAX_AGE, sweep_root
from .model import (ARTIFACT_URI_SCHEME, Artifact, ReadOnlyDict, ReadOnlyList, RunSummary, build_artifact,
                    utc_from_us)
from .validation import check_bool, check_event_size, check_id
from .view import LedgerView

if TYPE_CHECKING:
    from .artifacts import ArtifactFacade

DEFAULT_CHECKPOINT_EVERY = 10_000
REPLAY_BATCH = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

MAX_SEGMENT_BYTES = 1 << 40


class Context:
    """What a graph node sees: ``context.artifacts()`` gives its bound facade."""

    def __init__(self, facade: ArtifactFacade):
        self._facade = facade

    def artifacts(self) -> ArtifactFacade:
        """The ArtifactFacade bound to this context's run, graph, node and project."""
        return self._facade


class Ledger:
    """An open ledger; create with ``open_ledger(root)``."""

    upto: int | None = None  # a live ledger sees everything; views set a cut

    def __init__(self, root: Path, log: EventLog, store: BlobStore, *,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, fsync: bool = True, read_only: bool = False,
                 where: str | None = None):
        self.root = root
        # What messages call the ledger: its directory, or for a log opened by URL the URL (without its
        # password), not the cache directory that ``root`` then is.
        self.where = str(root) if where is None else where
        self.store = store
        self.catalog = Catalog()
        self.staging = root / "staging"
        self.read_only = read_only
        # Read-only, directory artifacts are built outside the ledger (see ``materialized``).
        self._materialized: Path | None = None if read_only else root / "materialized"
        self.checkpoint_dir = root / "checkpoints"
        self.checkpoint_every = checkpoint_every
        self._fsync = fsync
        self._log = log
        # id(payload) -> blobs the event names, checked under the log lock (see _blobs_gone)
        self._needs: dict[int, tuple[gc_mod.Need, ...]] = {}
        # "one": a batch's blobs and records are flushed by one syncfs; "three": blobs, renames, then
        # the log (FORMAT.md, "One flush per batch").
        self.flush_protocol = one_flush.install(log, store, fsync=fsync, read_only=read_only)
        self._gc = GroupCommitLog(log, self._apply_records, before_write=store.make_durable,
                                  under_lock=self._blobs_gone)
        self._closed = False
        self._head = (0, bytes(32).hex())
        self._ckpt_seq = 0  # seq of the newest checkpoint written or loaded
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_error: BaseException | None = None
        self._ckpt_prev_seq = 0  # _ckpt_seq before the running background checkpoint
        self._projecting = Projecting(self)
        self._private_cache: Path | None = None  # a read-only ledger's temporary blob cache, removed on close
        self._put_limiter: anyio.CapacityLimiter | None = None
        self._put_queue: PutQueue | None = None

    @property
    def _put_slots(self) -> anyio.CapacityLimiter:
        """The worker-thread slots blob puts run in (``store.put_concurrency`` of them), apart from anyio's
        default pool, so that many concurrent saves neither convoy on the GIL nor starve other blocking work."""
        if self._put_limiter is None:
            self._put_limiter = anyio.CapacityLimiter(self.store.put_concurrency)
        return self._put_limiter

    @property
    def _puts(self) -> PutQueue:
        """The queue blob puts run through: in the ``_put_slots`` threads, many puts per thread hand-off."""
        if self._put_queue is None:
            self._put_queue = PutQueue(self.store.put_concurrency, self._put_slots)
        return self._put_queue

    @property
    def materialized(self) -> Path:
        """Where ``load_artifact`` builds directory trees: ``materialized/`` of the ledger, or,
        read-only, a private temporary directory made on first use and removed on close."""
        if self._materialized is None:
            self._materialized = Path(tempfile.mkdtemp(prefix="artifact-ledger-materialized-"))
        return self._materialized

    # ------------------------------------------------------------ lifecycle
    def _apply_records(self, records: list[Record]) -> None:
        cat = self.catalog
        apply_records(cat, records)
        if records and self._projecting.runners:
            self._projecting.on_records(records)
        if records:
            self._head = (records[-1].seq, records[-1].hash.hex())
        if (records and cat.head_seq - self._ckpt_seq >= self.checkpoint_every and not self._closed
                and not self.read_only):
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        """Write a checkpoint in a background thread the ledger owns (joined on close)."""
        if self._ckpt_thread is not None and self._ckpt_thread.is_alive():
            return
        self._report_checkpoint_error(stacklevel=5)
        cut = self._log.checkpoint_cut()
        if cut is None:
            return  # this backend keeps no checkpoints
        cap = snapshot.capture(self.catalog)
        self._ckpt_prev_seq = self._ckpt_seq
        self._ckpt_seq = cap.head_seq
        self._ckpt_thread = threading.Thread(
            target=self._write_checkpoint, args=(cap, cut, True, self._projecting.capture()),
            name=f"artifact-ledger checkpoint {cap.head_seq}",
        )
        self._ckpt_thread.start()

    def _write_checkpoint(self, cap: snapshot.Capture, cut: Any, background: bool,
                          projected: list[Any] | None = None) -> None:
        try:
            self._log.write_checkpoint(cut, snapshot.SNAPSHOT_SCHEMA, snapshot.encode_parts(cap))
            if projected:
                self._projecting.write(projected, self._fsync)
        except BaseException as exc:
            if not background:
                raise
            # A checkpoint is only a cache: losing one costs replay time, never data.
            # Reported (not raised) by the next checkpoint or close, which also retries it;
            # no other thread touches _ckpt_seq while this one runs.
            self._ckpt_seq = self._ckpt_prev_seq
            self._ckpt_error = exc

    async def _join_checkpoint(self) -> None:
        t = self._ckpt_thread
        if t is not None:
            await anyio.to_thread.run_sync(t.join)
            self._ckpt_thread = None
        self._report_checkpoint_error(stacklevel=4)

    def _report_checkpoint_error(self, stacklevel: int) -> None:
        """Warn (once) about a failed background checkpoint: at the next checkpoint or on close."""
        if self._ckpt_error is not None:
            err, self._ckpt_error = self._ckpt_error, None
            warnings.warn(f"a background checkpoint failed: {err!r}", checkpoints.CheckpointWarning,
                          stacklevel=stacklevel)

    async def checkpoint(self) -> int:
        """Write a checkpoint of the current state now; returns the seq it reflects."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"checkpoint() is not allowed: the ledger at {self.where} is open read-only; "
                                "open it without read_only=True to write a checkpoint")
        await self._join_checkpoint()
        async with self._gc._lock:  # no append may move the head while the cut is taken
            cat = self.catalog
            if cat.head_seq == 0:
                return 0
            cut = self._log.checkpoint_cut()
            if cut is None:
                return 0  # this backend keeps no checkpoints: nothing to write
            cap = snapshot.capture(cat)
            projected = self._projecting.capture()
        await anyio.to_thread.run_sync(self._write_checkpoint, cap, cut, False, projected)
        self._ckpt_seq = cap.head_seq
        return cap.head_seq

    async def aclose(self) -> None:
        """Finish in-flight writes, checkpoint if the log moved on, and release the files.

        A failing final checkpoint (EIO, ENOSPC, ...) is a ``CheckpointWarning``, not an error:
        a checkpoint is a cache, and the ledger closes all the same.
        """
        if self._closed:
            return
        self._log.check_process()  # a fork child must not checkpoint or close the parent's ledger
        try:
            await self._join_checkpoint()
            # Shared checkpoints (PostgreSQL) cost every process a snapshot upload: only when due.
            due = self.checkpoint_every if self._log.shared_checkpoints else 1
            if ((self.catalog.head_seq - self._ckpt_seq >= due or self._projecting.behind()) and not self._gc.failed
                    and not self.read_only):
                try:
                    await self.checkpoint()
                except Exception as exc:
                    warnings.warn(f"the final checkpoint on close failed ({exc!r}); the ledger is closed, "
                                  "and the next open replays the log from the previous checkpoint",
                                  checkpoints.CheckpointWarning, stacklevel=2)
        finally:
            self._closed = True
            await self._gc.aclose()
            if self.read_only and self._materialized is not None:
                await anyio.to_thread.run_sync(content._rmtree_force, self._materialized)
            self.store.close()
            if self._private_cache is not None:
                await anyio.to_thread.run_sync(content._rmtree_force, self._private_cache)

    async def __aenter__(self) -> "Ledger":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has been called."""
        return self._closed

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hex hash) of the newest record the catalogue reflects."""
        # Not the log's own head: a batch being written may be on disk already
        # but not yet applied, and head must agree with what reads return.
        return self._head

    # ------------------------------------------------------------ binding
    @staticmethod
    def _check_ids(run_id: Any, graph_id: Any, node_id: Any, project_id: Any) -> None:
        check_id("run_id", run_id)
        check_id("graph_id", graph_id)
        check_id("node_id", node_id)
        if project_id is not None:
            check_id("project_id", project_id)

    def artifacts(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> ArtifactFacade:
        """An ArtifactFacade bound to (run, graph, node, project)."""
        from .artifacts import ArtifactFacade

        self._check_ids(run_id, graph_id, node_id, project_id)
        return ArtifactFacade(self, run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id)

    def context(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> Context:
        """A context whose ``.artifacts()`` is the facade bound to these ids."""
        return Context(self.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id))

    # ------------------------------------------------------------ internals used by the facade
    def _check_open(self) -> None:
        self._log.check_process()
        if self._closed:
            raise LedgerClosed(f"the ledger at {self.where} is closed")

    async def _append(self, event: Event) -> int:
        """Append an event durably; returns its seq (already applied to the catalogue).

        If a gc deleted one of the blobs the event names (``gc.BLOB_NEEDS``, set by the facade) since
        it was stored, nothing is written and ``BlobCollected`` is raised (the caller stores it again).
        """
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"the ledger at {self.where} is open read-only; nothing was recorded")
        # Defence in depth: the facade checks sizes before storing bytes, but no
        # event the reader could refuse may reach the log by any path.
        payload = check_event_size(event)
        needs = gc_mod.BLOB_NEEDS.get()
        if needs:
            self._needs[id(payload)] = needs
        try:
            rec = await self._gc.append(payload)
        finally:
            if needs:
                self._needs.pop(id(payload), None)
        return rec.seq

    def _blobs_gone(self, payloads: list[bytes]) -> dict[int, BaseException]:
        """Under the exclusive log lock: the payloads naming a blob that is no longer in the store.

        A gc deletes blobs only under this same lock, so a blob present here stays present
        until the batch is durable, and the event's artifact then holds it (FORMAT.md).
        """
        needs = self._needs
        if not needs:
            return {}
        out: dict[int, BaseException] = {}
        restored = False
        for i, p in enumerate(payloads):
            for sha, restore in needs.get(id(p), ()):
                if self.store.exists(sha):
                    continue
                # Collected since it was stored: store it again from its source now, under the lock,
                # where no gc can take it before this batch is durable.
                try:
                    again = restore() if restore is not None else None
                except Exception:  # the source is gone or changed: this event is refused, not the batch
                    again = None
                if again == sha:
                    restored = True
                else:
                    out.setdefault(i, BlobCollected([sha]))
        if restored:
            self.store.make_durable()  # published (flushed, renamed) before any event naming them
        return out

    async def _refresh(self) -> Catalog:
        """Pick up other processes' commits, then return the catalogue."""
        self._check_open()
        await self._gc.refresh()
        return self.catalog

    def _to_artifact(self, row: Row, catalog: Catalog | None = None) -> Artifact:
        return current_artifact(row.cat, row.i)

    def _to_artifacts(self, rows: list[int], catalog: Catalog) -> list[Artifact]:
        return current_artifacts(catalog, rows)

    def _artifact_at(self, row: Row, seq: int) -> Artifact:
        return row_to_artifact(row, pinned_at(self.catalog, row, seq), seq)

    # ------------------------------------------------------------ time travel and audit
    def _seq_of(self, name: str, value: Any, *, upper: bool) -> int:
        """A position argument (seq int or aware datetime) as a seq."""
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"{name}={value!r} is a naive datetime; pass a timezone-aware one (e.g. UTC)")
            us = (value - _EPOCH) // timedelta(microseconds=1)
            return seq_at_time(self.catalog, us) if upper else seq_at_time(self.catalog, us - 1) + 1
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a seq (int) or a timezone-aware datetime, got {value!r}")
        return value

    async def as_of(self, *, seq: int | None = None, time: datetime | None = None) -> LedgerView:
        """A read-only view of the catalogue right after event ``seq`` (or the last at or before ``time``)."""
        if (seq is None) == (time is None):
            raise ValueError("as_of() takes exactly one of seq= or time=")
        # Checked before anything else: time= is a moment, never a seq (an int there was
        # once silently read as one), and seq= is a position, never a moment.
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise TypeError(f"seq must be an int (a position in the log), got {type(seq).__name__} {seq!r}; "
                            "use time= for a moment")
        if time is not None:
            if not isinstance(time, datetime):
                raise TypeError(f"time must be a timezone-aware datetime, got {type(time).__name__} {time!r}; "
                                "use seq= for a position in the log")
            if time.tzinfo is None or time.utcoffset() is None:
                raise ValueError(f"time={time!r} is a naive datetime; pass a timezone-aware one (e.g. UTC)")
        cat = await self._refresh()
        head = cat.head_seq
        if head == 0:
            raise ValueError("the ledger has no events yet, so there is no past state to view")
        if seq is not None:
            n = self._seq_of("seq", seq, upper=True)
            if not 1 <= n <= head:
                raise ValueError(f"seq {n} is outside the ledger's range 1..{head}")
        else:
            n = self._seq_of("time", time, upper=True)
            if n == 0:
                first = utc_from_us(cat.times[0]).isoformat()
                raise ValueError(f"time {time.isoformat()} is before the first event (committed at {first}); "  # type: ignore[union-attr]
                                 f"valid times are {first} or later")
        return LedgerView(self, n)

    async def events(self, since: int | datetime | None = None,
                     until: int | datetime | None = None) -> AsyncIterator[audit.LedgerEvent]:
        """Iterate recorded events in order, with seq, time and hash; bounds are inclusive."""
        cat = await self._refresh()
        lo = 1 if since is None else self._seq_of("since", since, upper=False)
        hi = cat.head_seq if until is None else self._seq_of("until", until, upper=True)
        it = self._log.read_range(max(lo, 1), min(hi, cat.head_seq))
        while True:
            batch = await anyio.to_thread.run_sync(lambda: list(islice(it, 2048)))
            if not batch:
                return
            for rec in batch:
                yield audit.LedgerEvent.from_record(rec)

    async def history(self, artifact_id: str) -> list[audit.LedgerEvent]:
        """Every event that touched one artifact: its recording, pin changes and lifecycle events."""
        cat = await self._refresh()
        row = cat.rows.get(artifact_id)
        if row is None:
            raise KeyError(f"unknown artifact_id {artifact_id!r}")
        seqs = [row.seq] + [s for s, _ in cat.pin_history.get(artifact_id, [])]
        # Lifecycle events naming it (aliases, lineage, retire, purge, gc plans), in log order.
        seqs = sorted(set(seqs).union(cat.life.touched.get(artifact_id, ())))

        def read() -> list[audit.LedgerEvent]:
            return [audit.LedgerEvent.from_record(next(iter(self._log.read_range(s, s)))) for s in seqs]

        return await anyio.to_thread.run_sync(read)

    async def diff(self, a: int | datetime, b: int | datetime) -> audit.Diff:
        """What changed from position ``a`` to ``b``: artifacts added, pins changed, best winners changed."""
        cat = await self._refresh()
        sa = self._seq_of("a", a, upper=True)
        sb = self._seq_of("b", b, upper=True)
        head = cat.head_seq
        if not 0 <= sa <= head or not 0 <= sb <= head:
            raise ValueError(f"diff positions must be within 0..{head}, got {sa} and {sb}")
        if sa > sb:
            raise ValueError(f"diff(a, b) needs a <= b, got a={sa} b={sb}")
        return audit.diff(cat, sa, sb, self._artifact_at)

    async def verify(self, expect_head: tuple[int, str] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> audit.VerifyResult:
        """Walk the whole hash chain and re-hash every blob; reports the first problem and the head.

        Records the ledger knows were committed (a checkpoint, the pointer, this process's
        head) but the log no longer holds are reported as lost.
        """
        try:
            cat = await self._refresh()
        except RecordsLost:
            cat = self.catalog  # the walk below finds the log shorter and reports it
        if expect_head is not None:
            if (not isinstance(expect_head, tuple) or len(expect_head) != 2 or not isinstance(expect_head[0], int)
                    or not isinstance(expect_head[1], str)):
                raise TypeError(f"expect_head must be a (seq, hex hash) tuple, got {expect_head!r}")
        blobs = audit.referenced_blobs(cat)
        collectable = audit.collectable_blobs(cat)
        known = self._log.known_head()
        if self._head[0] > known[0]:
            known = (self._head[0], "this process (which read it from the log)")
        return await anyio.to_thread.run_sync(
            lambda: audit.verify(self._log, self.store, blobs, expect_head=expect_head, progress=progress,
                                 known=known, collectable=collectable)
        )

    async def sweep(self, *, staging_age: float = STAGING_MAX_AGE, materialized: bool = False) -> list[str]:
        """Remove leftovers no live process owns (dead processes' temp files, stale staging); returns them.

        ``staging_age``: seconds a staging entry may sit untouched; ``materialized=True`` also drops
        every materialised directory copy (rebuilt on the next load).
        """
        self._check_open()
        if isinstance(staging_age, bool) or not isinstance(staging_age, (int, float)) or not staging_age >= 0:
            raise ValueError(f"staging_age must be a non-negative number of seconds, got {staging_age!r}")
        if not isinstance(materialized, bool):
            raise TypeError(f"materialized must be True or False, got {materialized!r}")
        return await anyio.to_thread.run_sync(
            lambda: sweep_root(self.root, staging_age=staging_age, materialized=materialized))

    # ------------------------------------------------------------ garbage collection
    async def gc(self, policy: Any = None, *, dry_run: bool = True, grace: float = gc_mod.DEFAULT_GRACE,
                 staging_age: float = STAGING_MAX_AGE) -> gc_mod.GcPlan | gc_mod.GcResult:
        """Plan a garbage collection (``dry_run=True``, nothing written) or run it: record the plan, delete
        blobs no live artifact needs, stale staging entries and materialised copies, record the result.

        ``policy``: a RetentionPolicy (or its dict) whose selected artifacts the plan purges; ``grace``:
        seconds an unreferenced blob no event names is spared (a save may be under way).
        """
        self._check_open()
        check_bool("dry_run", dry_run)
        for name, value in (("grace", grace), ("staging_age", staging_age)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        gc_mod.check_policy(policy)
        if dry_run:
            return await gc_mod.plan(self, policy, grace)
        if self.read_only:
            raise ReadOnlyError(f"gc() is not allowed: the ledger at {self.where} is open read-only; "
                                "gc(dry_run=True) shows the plan")
        return await gc_mod.run(self, policy, grace, staging_age)

    async def du(self) -> gc_mod.DiskUsage:
        """Bytes per run, project and kind (logical and deduplicated), of every artifact not purged."""
        await self._refresh()
        async with self._gc._lock:  # the catalogue stays still while the worker thread walks it
            return await anyio.to_thread.run_sync(gc_mod.disk_usage, self.catalog, self.store)

    # ------------------------------------------------------------ conveniences
    async def runs(self, *, project_id: str | None = None) -> list[RunSummary]:
        """Every run with its artifact count and first and last recording times, most recently active first."""
        cat = await self._refresh()
        return run_summaries(cat, None, project_id)

    async def export_files(self, directory: str | os.PathLike[str], *, run_id: str | None = None,
                           graph_id: str | None = None, node_id: str | None = None, project_id: str | None = None,
                           kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
                           mode: str | None = None, limit: int | None = None,
                           overwrite: bool = False) -> dict[str, Path]:
        """Copy the files of the artifacts matching the ids and filters given into ``directory``, with a
        ``manifest.jsonl`` (see ``ArtifactFacade.export_files``); returns each artifact's path by id."""
        return await exporting.export_from(
            self, directory, ids={"run_id": run_id, "graph_id": graph_id, "node_id": node_id, "project_id": project_id},
            kind=kind, labels=labels, metric=metric, mode=mode, limit=limit, overwrite=overwrite)

    # ------------------------------------------------------------ user projections
    async def register(self, projection: Any) -> ProjectionHandle:
        """Register a projection: kept live from now on and checkpointed with the catalogue (keyed by
        name and version); starts from its checkpoint when one matches the log, else from the log."""
        self._check_open()
        return ProjectionHandle(self, await self._projecting.register(projection))

    async def project(self, projection: Any) -> ProjectionHandle:
        """A live handle on ``projection``: its state, kept current as events commit here and in other
        processes (``await handle.refresh()`` / ``await handle.wait(seq)``)."""
        self._check_open()
        return ProjectionHandle(self, await self._projecting.live(projection))

    async def fold(self, projection: Any, *, since: int | datetime | None = None,
                   until: int | datetime | None = None) -> Any:
        """Fold the events ``since..until`` (inclusive, as for ``events()``) into a fresh state of ``projection``."""
        cat = await self._refresh()
        lo = 1 if since is None else self._seq_of("since", since, upper=False)
        hi = cat.head_seq if until is None else self._seq_of("until", until, upper=True)
        return await fold_range(self, projection, max(lo, 1), min(hi, cat.head_seq))

    def _new_staging_name(self, suffix: str) -> Path:
        return self.staging / f"{unique_hex()}{suffix}"


def row_to_artifact(row: Row, pinned: bool, upto: int | None = None) -> Artifact:
    """Build the user-facing Artifact straight from the catalogue's columns (a new one, never cached;
    aliases as of ``upto``)."""
    return _build_row(row.cat, row.i, pinned, upto)


def alias_names(c: Catalog, aid: str, upto: int | None) -> ReadOnlyList:
    """The "namespace/name" aliases pointing at artifact ``aid`` as of seq ``upto`` (None: now)."""
    if not c.life.alias_keys:
        return ReadOnlyList()
    return ReadOnlyList([f"{ns}/{name}" for ns, name in c.life.aliases_of(aid, upto)])


def _build_row(c: Catalog, i: int, pinned: bool, upto: int | None = None) -> Artifact:
    s = c.strs
    aid = c.ids[i]
    pairs = c.pairs
    a, b = c.label_off[i], c.label_off[i + 1]
    labels = ReadOnlyDict([(k, ReadOnlyList(v) if type(v) is tuple else v)
                           for k, v in map(pairs.__getitem__, c.label_pair[a:b])])
    a, b = c.metric_off[i], c.metric_off[i + 1]
    metrics = ReadOnlyDict(zip([s[k] for k in c.metric_name[a:b]], c.metric_val[a:b]))  # type: ignore[misc]
    return build_artifact({
        "artifact_id": aid,
        # The stable form: it names the occurrence, so it survives moving or copying the ledger
        # (the file form, the blob's file URI + "#" + id, is still accepted by every load function).
        "uri": ARTIFACT_URI_SCHEME + aid,
        "kind": s[c.kind_s[i]],
        "sha256": c.sha[i * 32: i * 32 + 32].hex(),
        "bytes": c.size[i],
        "mime": s[c.mime_s[i]],
        "labels": labels,
        "metrics": metrics,
        "pinned": pinned,
        "run_id": s[c.run_s[i]],
        "graph_id": s[c.graph_s[i]],
        "node_id": s[c.node_s[i]],
        "project_id": s[c.project_s[i]],
        "created_at": _EPOCH + timedelta(microseconds=c.ts[i]),
        "seq": c.seq[i],
        "suggested_uri": s[c.suggested_s[i]],
        "aliases": alias_names(c, aid, upto),
    })


def current_artifact(cat: Catalog, i: int) -> Artifact:
    """Row ``i``'s Artifact as of the catalogue's head, shared through its row cache.

    Artifacts are frozen and their labels/metrics read-only, so one instance can
    serve every caller; the catalogue drops the entry whenever the row changes.
    """
    art = cat.row_cache.get(i)
    if art is None:
        art = _build_row(cat, i, bool(cat.pin_now[i]))
        cat.cache_row(i, art)
    return art


def current_artifacts(cat: Catalog, rows: Iterable[int]) -> list[Artifact]:
    """``current_artifact`` of many rows (one lookup each when they are cached)."""
    get = cat.row_cache.get
    return [get(i) or current_artifact(cat, i) for i in rows]


def run_summaries(cat: Catalog, upto: int | None, project_id: str | None) -> list[RunSummary]:
    """``runs()`` of the catalogue as of ``upto``, as user-facing records."""
    if project_id is not None:
        check_id("project_id", project_id)
    # Retired artifacts are hidden from list/search/best, so they count in no summary either.
    hidden = retired_rows(cat, upto) if cat.life.retired else ()
    return [RunSummary(run_id=run, artifacts=n, first_at=utc_from_us(first), last_at=utc_from_us(last))
            for run, n, first, last in query_runs(cat, upto, project_id, hidden)]


def apply_records(cat: Catalog, records: list[Record]) -> None:
    """Decode records (in one msgspec call when they are all current) and fold them into ``cat``."""
    events = decode_events(list(map(_payload, records)))
    if events is None:
        events = [_decode(r) for r in records]
    apply_decoded(cat, list(map(_seq, records)), list(map(_ts, records)), events)


# Record fields, mapped at C speed over a whole batch.
_seq, _ts, _payload = attrgetter("seq"), attrgetter("ts_us"), attrgetter("payload")


def _decode(rec: Record) -> Event:
    try:
        return decode_event(rec.payload)
    except EventDecodeError as exc:
        raise LedgerCorruption(rec.segment, rec.offset, rec.seq, str(exc)) from exc


def _prepare_root(root: Path, create: bool, read_only: bool = False) -> None:
    """Check the ledger directory, or create it crash-safely (see ``repair.prepare_root``); read-only, only check."""
    prepare_root(root, create and not read_only, read_only=read_only)


async def _open(root: str | os.PathLike[str], *, create: bool, segment_bytes: int, fsync: bool,
                checkpoint_every: int, progress: Callable[[int, int], None] | None = None,
                read_only: bool = False, accept_loss: bool = False,
                lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
                cache_dir: str | os.PathLike[str] | None = None, blobs: str | os.PathLike[str] | None = None,
                connect_timeout: int | None = None, projections: Any = ()) -> Ledger:
    _check_options(root, create=create, segment_bytes=segment_bytes, fsync=fsync,
                   checkpoint_every=checkpoint_every, progress=progress)
    one_flush.chosen_protocol()  # a bad ARTIFACT_LEDGER_BATCH_FLUSH is refused before anything is opened
    if cache_dir is not None and (not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir)):
        raise OptionTypeError(f"cache_dir must name a directory (a str or path), got {cache_dir!r}")
    url_log = is_log_url(root)
    place: str | None = None
    if isinstance(blobs, str) and is_remote(blobs):
        place = remote_place(blobs)
    elif blobs is not None and url_log:
        # A log by URL may keep its blobs in a local directory of this machine.
        if not isinstance(blobs, (str, os.PathLike)) or not os.fspath(blobs):
            raise OptionTypeError(f"blobs must name a directory or an s3://bucket/prefix URL, got {blobs!r}")
    elif blobs is not None:  # a ledger directory keeps its blobs in blobs/ or in S3: this raises, naming why
        place = remote_place(os.fspath(blobs) if isinstance(blobs, os.PathLike) else blobs)
    for name, value in (("read_only", read_only), ("accept_loss", accept_loss)):
        if not isinstance(value, bool):
            raise OptionTypeError(f"{name} must be True or False, got {value!r}")
    lock_timeout = check_lock_timeout(lock_timeout)
    if connect_timeout is not None and (isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int)
                                        or connect_timeout < 1):
        raise OptionTypeError(f"connect_timeout must be a whole number of seconds >= 1 or None, "
                              f"got {connect_timeout!r}")
    registered = check_projections(projections)
    if url_log:
        return await _open_url(str(root), create=create, fsync=fsync, checkpoint_every=checkpoint_every,
                               progress=progress, read_only=read_only, accept_loss=accept_loss,
                               lock_timeout=lock_timeout, cache_dir=cache_dir, blobs=blobs, place=place,
                               connect_timeout=connect_timeout, registered=registered)
    if connect_timeout is not None:
        raise ValueError("connect_timeout= applies to a log opened by URL (postgresql://...); "
                         f"{os.fspath(root)!r} is a ledger directory")
    path = Path(root).resolve()

    def blocking_open() -> Ledger:
        # A remote store is reached first: a bad bucket, endpoint or credential leaves nothing behind.
        remote_store, remote, private_cache = _open_remote_blobs(path, blobs if isinstance(blobs, str) else None,
                                                                 place, cache_dir, fsync, read_only)
        try:
            _prepare_root(path, create, read_only=read_only)
            if not read_only:
                try:
                    sweep_root(path)
                except OSError as exc:  # leftovers cost space, never correctness: opening goes on
                    warnings.warn(f"sweeping leftovers of {path} failed: {exc}", RuntimeWarning, stacklevel=2)
            log = open_file_log(path, segment_bytes=segment_bytes, fsync=fsync, read_only=read_only,
                                lock_timeout=lock_timeout)
        except BaseException:
            if remote_store is not None:
                remote_store.close()
            if private_cache is not None:
                content._rmtree_force(private_cache)
            raise
        try:
            store = (remote_store if remote_store is not None
                     else open_store(str(path / "blobs"), fsync=fsync, read_only=read_only))
        except BaseException:
            log.close()
            if private_cache is not None:
                content._rmtree_force(private_cache)
            raise
        led = Ledger(path, log, store, checkpoint_every=checkpoint_every, fsync=fsync, read_only=read_only)
        led._private_cache = private_cache
        adopt = None if place is None or remote is not None else (lambda: _adopt_remote(led, place))
        try:
            return _replay(led, accept_loss=accept_loss, progress=progress, registered=registered, after=adopt)
        except BaseException:
            if private_cache is not None:
                content._rmtree_force(private_cache)
            raise

    return await anyio.to_thread.run_sync(blocking_open)


def default_cache_dir(location: str) -> Path:
    """Where a ledger opened by URL keeps its local state when no ``cache_dir`` is given:
    ``$XDG_CACHE_HOME/artifact-ledger/<16 hex of SHA-256 of the URL without password>`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "artifact-ledger" / hashlib.sha256(location.encode()).hexdigest()[:16]


async def _open_url(url: str, *, create: bool, fsync: bool, checkpoint_every: int,
                    progress: Callable[[int, int], None] | None, read_only: bool, accept_loss: bool,
                    lock_timeout: float | None, cache_dir: str | os.PathLike[str] | None,
                    blobs: str | os.PathLike[str] | None, place: str | None, connect_timeout: int | None,
                    registered: list[Any]) -> Ledger:
    """Open a ledger whose log a URL names; its local state (blobs by default, the S3 blob cache with
    ``blobs="s3://..."``, staging, materialised copies) lives in ``cache_dir``. The log is reached first,
    so a bad URL creates nothing locally."""

    def blocking_open() -> Ledger:
        log = open_log_url(url, create=create, fsync=fsync, read_only=read_only, lock_timeout=lock_timeout,
                           connect_timeout=connect_timeout)
        try:
            # The log records where every process keeps the blobs: an open that forgot blobs= uses it,
            # one naming another place (or a local directory) is refused before any store is opened.
            recorded = log.blob_place()
            if recorded is not None and place is not None and place != recorded:
                raise ValueError(f"the ledger at {log.location} keeps its blobs in {recorded}, not {place}; open "
                                 f"it with blobs={recorded!r} (or without blobs=)")
            if recorded is not None and place is None and blobs is not None:
                raise ValueError(f"the ledger at {log.location} keeps its blobs in {recorded}, not in the local "
                                 f"directory {os.fspath(blobs)!r}; open it with blobs={recorded!r} (or without "
                                 "blobs=)")
            store_url = str(blobs) if place is not None else recorded
            cache = default_cache_dir(log.location) if cache_dir is None else Path(cache_dir).resolve()
            # The cache is this machine's scratch space, not the ledger: made even for read-only opens.
            for sub in ("", "blobs", "staging", "materialized"):
                (cache / sub).mkdir(parents=True, exist_ok=True)
            if not read_only:
                try:
                    sweep_root(cache)
                except OSError as exc:  # leftovers cost space, never correctness: opening goes on
                    warnings.warn(f"sweeping leftovers of {cache} failed: {exc}", RuntimeWarning, stacklevel=2)
            if store_url is not None:
                store = open_store(store_url, cache_dir=cache / S3_CACHE, fsync=fsync, read_only=read_only)
            else:
                store = open_store(str(cache / "blobs" if blobs is None else Path(blobs).resolve()), fsync=fsync,
                                   read_only=read_only)
        except BaseException:
            log.close()
            raise
        try:
            if place is not None and recorded is None and not read_only:
                # Recorded only once the store answered (a bad bucket records nothing), atomically with appends.
                log.adopt_blob_place(place)
            log.expect_blob_place(place if place is not None else recorded)
        except BaseException:
            log.close()
            store.close()
            raise
        led = Ledger(cache, log, store, checkpoint_every=checkpoint_every, fsync=fsync, read_only=read_only,
                     where=log.location)
        # Read-only, nothing is recorded; a log whose events name local blobs is still not read from S3.
        check = (None if place is None or recorded is not None or not read_only
                 else (lambda: _refuse_local_events(led, place)))
        return _replay(led, accept_loss=accept_loss, progress=progress, registered=registered, after=check)

    return await anyio.to_thread.run_sync(blocking_open)


def _replay(led: Ledger, *, accept_loss: bool, progress: Callable[[int, int], None] | None,
            registered: list[Any], after: Callable[[], None] | None = None) -> Ledger:
    """Bring a new Ledger's catalogue to the log's head: the newest usable checkpoint, then the records after it."""
    log = led._log
    # Replay allocates millions of long-lived objects; the cyclic GC would
    # rescan them over and over, so it is paused and the survivors frozen.
    gc_was_on = gc.isenabled()
    gc.disable()
    pending: list[Record] = []

    def restore(schema: int, payload: memoryview, seq: int) -> None:
        if schema != snapshot.SNAPSHOT_SCHEMA:
            raise ValueError(f"snapshot schema {schema}, this library reads {snapshot.SNAPSHOT_SCHEMA}")
        cat = snapshot.decode(payload)
        if cat.head_seq != seq:
            raise ValueError(f"its snapshot is at seq {cat.head_seq}, its header says {seq}")
        cat.defer_indexes()
        led.catalog = cat

    def on_record(rec: Record) -> None:
        pending.append(rec)
        if len(pending) >= REPLAY_BATCH:
            apply_records(led.catalog, pending)
            pending.clear()

    def on_records(recs: list[Record]) -> None:
        # A whole scanned chunk at once (the segment log's fast path); folds as on_record would.
        pending.extend(recs)
        if len(pending) >= REPLAY_BATCH:
            apply_records(led.catalog, pending)
            pending.clear()

    def on_payloads(joined: bytes, seqs: Sequence[int], tss: Sequence[int]) -> bool:
        # A scanned chunk as one msgpack array: folded without a Record per record, or refused
        # (False, nothing changed) so that the log hands over the same records as Records.
        if pending:  # records handed over one by one before this chunk come first
            apply_records(led.catalog, pending)
            pending.clear()
        if append_payloads(led.catalog, joined, seqs, tss):
            return True
        events = decode_event_array(joined, len(seqs))
        if events is None:
            return False
        apply_decoded(led.catalog, seqs, tss, events)
        return True

    # Indexes are built once, after the last record, instead of extended batch by batch.
    led.catalog.defer_indexes()
    try:
        try:
            led._ckpt_seq = log.open(RecordSink(on_record, on_records, on_payloads), restore,
                                     accept_loss=accept_loss, progress=progress)
        except ReplayAgain:
            # The log's last batch was torn (a power cut before its flush returned) and was handed over
            # before it was judged: what was built from it goes, and the log, now without it, is read again.
            pending.clear()
            led.catalog = Catalog()
            led.catalog.defer_indexes()
            led._ckpt_seq = log.open(RecordSink(on_record, on_records, on_payloads), restore,
                                     accept_loss=accept_loss, progress=progress)
        apply_records(led.catalog, pending)
        led.catalog.build_indexes()
        led._head = (log.head_seq, log.head_hash.hex())
        if after is not None:
            after()
    except BaseException:
        log.close()
        led.store.close()
        raise
    finally:
        if gc_was_on:
            gc.enable()
    gc.freeze()
    try:
        led._projecting.open_registered(registered)
    except BaseException:
        log.close()
        led.store.close()
        raise
    if led.catalog.head_seq - led._ckpt_seq >= led.checkpoint_every and not led.read_only:
        led._start_checkpoint()
    return led


S3_CACHE = "s3-cache"  # in the cache_dir of a log opened by URL: blobs fetched from S3


def _open_remote_blobs(path: Path, blobs: str | None, place: str | None, cache_dir: str | os.PathLike[str] | None,
                       fsync: bool, read_only: bool) -> tuple[BlobStore | None, str | None, Path | None]:
    """The ledger's remote blob store, if it has one (None: its own ``blobs/`` directory holds them).

    Returns (store, the remote place recorded in the ledger or None, a private cache to remove on close).
    A ledger remembers where its blobs are (``blobs/remote``), so a later open needs no ``blobs=``,
    and an open naming another place is refused before anything is read from it.
    """
    remote = directory_blob_place(path)
    if place is not None and remote is not None and place != remote:
        raise ValueError(f"the ledger at {path} keeps its blobs in {remote}, not {place}; open it with "
                         f"blobs={remote!r} (or without blobs=)")
    url = blobs if place is not None else remote
    if url is None:
        return None, None, None
    private = None
    if cache_dir is None:
        if read_only:  # nothing may be written into a read-only ledger: its cache is private and temporary
            private = Path(tempfile.mkdtemp(prefix="artifact-ledger-blob-cache-"))
            cache_dir = private
        else:
            cache_dir = path / "blobs" / "cache"
    try:
        return open_store(url, cache_dir=cache_dir, fsync=fsync, read_only=read_only), remote, private
    except BaseException:
        if private is not None:
            content._rmtree_force(private)
        raise


def _adopt_remote(led: Ledger, place: str) -> None:
    """Record in a new (or still empty) ledger that its blobs live at ``place``; refuse it for a ledger
    whose events already name blobs of its own directory."""
    if led.catalog.head_seq > 0:
        raise ValueError(f"the ledger at {led.where} already holds {led.catalog.head_seq} event(s) whose blobs are "
                         f"in its own blobs/ directory; it cannot move them to {place} (open it without blobs=)")
    if not led.read_only:
        led._log.adopt_blob_place(place)


def _refuse_local_events(led: Ledger, place: str) -> None:
    """A read-only open naming an S3 place for a log that records none: refused once it holds events."""
    if led.catalog.head_seq > 0:
        raise ValueError(f"the ledger at {led._log.location} already holds {led.catalog.head_seq} event(s) and "
                         f"records no blob place, so their blobs are in local blob directories, not {place} "
                         "(open it without blobs=)")


class OptionTypeError(TypeError, ValueError):
    """An ``open_ledger`` option of the wrong type (also a ValueError: a bad option value)."""


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionTypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range; it must be between {lo} and {hi}")


def _check_options(root: Any, *, create: Any, segment_bytes: Any, fsync: Any, checkpoint_every: Any,
                   progress: Any) -> None:
    """Refuse a bad ``open_ledger`` option before anything is created, naming the option."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or path, got {type(root).__name__}")
    text = os.fspath(root)
    if not isinstance(text, str) or not text or "\0" in text:
        raise ValueError(f"root must name a directory, got {root!r}; pass '.' to mean the current directory")
    for name, value in (("create", create), ("fsync", fsync)):
        if not isinstance(value, bool):
            raise OptionTypeError(f"{name} must be True or False, got {value!r}")
    _check_int("segment_bytes", segment_bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    _check_int("checkpoint_every", checkpoint_every, 1, 2**63 - 1)
    if progress is not None and not callable(progress):
        raise OptionTypeError(
            f"progress must be a callable progress(done_bytes, total_bytes) or None, got {progress!r}")


class _Opener:
    """Lets ``open_ledger`` be awaited or used with ``async with``."""

    def __init__(self, root: str | os.PathLike[str], kw: dict[str, Any]):
        self._root = root
        self._kw = kw
        self._ledger: Ledger | None = None

    def __await__(self) -> Generator[Any, None, Ledger]:
        return _open(self._root, **self._kw).__await__()

    async def __aenter__(self) -> Ledger:
        self._ledger = await _open(self._root, **self._kw)
        return self._ledger

    async def __aexit__(self, *exc: object) -> None:
        assert self._ledger is not None
        await self._ledger.aclose()


def open_ledger(
    root: str | os.PathLike[str],
    *,
    create: bool = True,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    fsync: bool = True,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    progress: Callable[[int, int], None] | None = None,
    read_only: bool = False,
    accept_loss: bool = False,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    cache_dir: str | os.PathLike[str] | None = None,
    blobs: str | os.PathLike[str] | None = None,
    connect_timeout: int | None = None,
    projections: Iterable[Any] = (),
) -> _Opener:
    """Open (or create) the embedded ledger in directory ``root``; await it or use ``async with``.

    Every option is checked (TypeError/ValueError naming it) before anything is created; opening also
    sweeps what dead processes left (see ``Ledger.sweep``; never read-only). ``progress(done_bytes,
    total_bytes)`` is called from a worker thread while the log is replayed.
    ``read_only=True`` opens an existing ledger without writing a byte (never creates one);
    ``accept_loss=True`` opens a log that lost committed records instead of raising RecordsLost;
    ``lock_timeout`` bounds every wait for the log lock (seconds; None waits until cancelled).
    ``root`` may instead be a log URL, ``postgresql://user@host:5432/db?schema=NAME``: the log lives in
    PostgreSQL and this machine's local state in ``cache_dir`` (default: see ``default_cache_dir``);
    ``connect_timeout`` (seconds, default 10) bounds reaching the server. ``blobs`` is the blob
    directory or ``s3://bucket/prefix`` URL (default: ``blobs/`` of ``cache_dir``).
    ``projections`` are registered (see ``Ledger.register``) before the ledger is handed out.
    For a ledger directory, ``blobs="s3://bucket/prefix"`` keeps the blobs in S3-compatible storage
    (endpoint, region and credentials from the AWS environment), cached under ``cache_dir`` (default
    ``<root>/blobs/cache``); the ledger remembers the place, so later opens need no ``blobs=``.
    """
    return _Opener(root, {"create": create, "segment_bytes": segment_bytes, "fsync": fsync,
                          "checkpoint_every": checkpoint_every, "progress": progress,
                          "read_only": read_only, "accept_loss": accept_loss, "lock_timeout": lock_timeout,
                          "cache_dir": cache_dir, "blobs": blobs, "connect_timeout": connect_timeout,
                          "projections": projections})
