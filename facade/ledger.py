"""The Ledger: one opened ledger directory (log + blob store + projections)."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path
from typing import Any, Generator

import anyio
import anyio.to_thread

from ledger.errors import LedgerClosed, LedgerCorruption
from ledger.events import Event, EventDecodeError, decode_event, encode_event
from ledger.filelog import DEFAULT_SEGMENT_BYTES, SegmentLog
from ledger.framing import Record
from ledger.group_commit import GroupCommitLog
from projections.catalog import Catalog, Logged, Row, apply
from store.local import LocalBlobStore

from .model import Artifact, utc_from_us
from .validation import check_id

MARKER = "ARTIFACT-LEDGER"
MARKER_TEXT = "artifact-ledger 1\n"


class Context:
    """What a graph node sees: ``context.artifacts()`` gives its bound facade."""

    def __init__(self, facade: "Any"):
        self._facade = facade

    def artifacts(self):
        """The ArtifactFacade bound to this context's run, graph, node and project."""
        return self._facade


class Ledger:
    """An open ledger; create with ``open_ledger(root)``."""

    def __init__(self, root: Path, log: SegmentLog, store: LocalBlobStore):
        self.root = root
        self.store = store
        self.catalog = Catalog()
        self.staging = root / "staging"
        self.materialized = root / "materialized"
        self._log = log
        self._gc = GroupCommitLog(log, self._apply_records)
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    def _apply_records(self, records: list[Record]) -> None:
        cat = self.catalog
        for rec in records:
            apply(cat, Logged(rec.seq, rec.ts_us, _decode(rec)))

    async def aclose(self) -> None:
        """Finish in-flight writes and release the ledger's files."""
        if self._closed:
            return
        self._closed = True
        await self._gc.aclose()

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
        """(seq, hex hash) of the newest record this process has seen."""
        return self._log.head_seq, self._log.head_hash.hex()

    # ------------------------------------------------------------ binding
    def artifacts(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None):
        """An ArtifactFacade bound to (run, graph, node, project)."""
        from .artifacts import ArtifactFacade

        check_id("run_id", run_id)
        check_id("graph_id", graph_id)
        check_id("node_id", node_id)
        if project_id is not None:
            check_id("project_id", project_id)
        return ArtifactFacade(self, run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id)

    def context(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> Context:
        """A context whose ``.artifacts()`` is the facade bound to these ids."""
        return Context(self.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id))

    # ------------------------------------------------------------ internals used by the facade
    def _check_open(self) -> None:
        if self._closed:
            raise LedgerClosed(f"the ledger at {self.root} is closed")

    async def _append(self, event: Event) -> int:
        """Append an event durably; returns its seq (already applied to the catalogue)."""
        self._check_open()
        rec = await self._gc.append(encode_event(event))
        return rec.seq

    async def _refresh(self) -> Catalog:
        """Pick up other processes' commits, then return the catalogue."""
        self._check_open()
        await self._gc.refresh()
        return self.catalog

    def _to_artifact(self, row: Row, catalog: Catalog | None = None) -> Artifact:
        return row_to_artifact(row, (catalog or self.catalog).pinned[row.ev.artifact_id], self.store.uri(row.ev.sha256))

    def _new_staging_name(self, suffix: str) -> Path:
        return self.staging / f"{uuid.uuid4().hex}{suffix}"


def row_to_artifact(row: Row, pinned: bool, uri: str) -> Artifact:
    """Build the user-facing Artifact from a projection row (copying mutable parts)."""
    ev = row.ev
    labels = ev.labels
    if row.has_lists:
        labels = {k: (list(v) if type(v) is list else v) for k, v in labels.items()}
    else:
        labels = dict(labels)
    return Artifact.model_construct(
        artifact_id=ev.artifact_id,
        uri=uri,
        kind=ev.kind,
        sha256=ev.sha256,
        bytes=ev.size,
        mime=ev.mime,
        labels=labels,
        metrics=dict(ev.metrics),
        pinned=pinned,
        run_id=ev.run_id,
        graph_id=ev.graph_id,
        node_id=ev.node_id,
        project_id=ev.project_id,
        created_at=utc_from_us(row.ts_us),
        seq=row.seq,
        suggested_uri=ev.suggested_uri,
    )


def _decode(rec: Record) -> Event:
    try:
        return decode_event(rec.payload)
    except EventDecodeError as exc:
        raise LedgerCorruption(rec.segment, rec.offset, rec.seq, str(exc)) from exc


def _prepare_root(root: Path, create: bool) -> None:
    marker = root / MARKER
    if not marker.exists():
        if not create:
            raise FileNotFoundError(f"no ledger at {root} (missing {MARKER}); open_ledger(root) creates one")
        if root.exists() and any(p.name != MARKER for p in root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and is not a ledger; refusing to write into it")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{MARKER}.tmp"
        tmp.write_text(MARKER_TEXT)
        os.rename(tmp, marker)
    elif marker.read_text() != MARKER_TEXT:
        raise ValueError(f"{marker} names an unsupported ledger version: {marker.read_text()!r}")
    for sub in ("staging", "materialized"):
        (root / sub).mkdir(exist_ok=True)


async def _open(root: str | os.PathLike[str], *, create: bool, segment_bytes: int, fsync: bool) -> Ledger:
    path = Path(root).resolve()

    def blocking_open() -> Ledger:
        _prepare_root(path, create)
        log = SegmentLog(str(path / "log"), segment_bytes=segment_bytes, fsync=fsync)
        store = LocalBlobStore(path / "blobs", fsync=fsync)
        led = Ledger(path, log, store)
        # Replay allocates millions of long-lived objects; the cyclic GC would
        # rescan them over and over, so it is paused and the survivors frozen.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            log.recover(lambda rec: led._apply_records([rec]))
        except BaseException:
            log.close()
            raise
        finally:
            if gc_was_on:
                gc.enable()
        gc.freeze()
        return led

    return await anyio.to_thread.run_sync(blocking_open)


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
) -> _Opener:
    """Open (or create) the embedded ledger in directory ``root``; await it or use ``async with``."""
    return _Opener(root, {"create": create, "segment_bytes": segment_bytes, "fsync": fsync})
