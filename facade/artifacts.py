"""ArtifactFacade: the ``context.artifacts()`` API of the reference, on the ledger."""

from __future__ import annotations

import builtins
import os
import shutil
import stat
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, BinaryIO, Callable, Literal, cast
from urllib.parse import unquote, urlparse

import anyio
import anyio.to_thread

from ..ledger.errors import BlobCollected
from ..ledger.errors import ReadOnlyError as ReadOnlyError  # re-exported by facade/__init__
from ..ledger.events import ArtifactRecorded, PinChanged
from ..projections.catalog import Catalog, Row
from ..projections.query import Filter, by_blob, rank_rows, select_rows
from ..projections.query import count as count_rows
from ..projections.query import best_live, count_among, retired_count, retired_rows
from ..store.durable import unique_hex, unshare
from ..store.base import BlobCorrupted, BlobInfo, check_sha

from . import content, exporting
from .gc import BLOB_NEEDS, Need
from .lifecycle import LifecycleMixin
from .model import Artifact
from .put_queue import LONG_PUT_BYTES, PutQueue
from .validation import (
    check_bool,
    check_event_size,
    check_kind,
    check_label_map,
    check_labels,
    check_limit,
    check_metrics,
    check_ranking,
    check_scope,
    check_suffix,
    check_suggested_uri,
)

Scope = Literal["node", "run", "graph", "project", "all"]
ARTIFACT_SCHEME = "artifact://"
_INGEST_DIR_KW = {"kind", "labels", "metrics", "suggested_uri", "pin", "derived_from"}
BLOB_RETRIES = 5  # times a write stores its bytes again after a concurrent gc collected them
# Placeholders at their widest encoding, so a probe event is never smaller than the real one.
_PROBE_ID = "0" * 32
_PROBE_SHA = "0" * 64
_PROBE_SIZE = 2**64 - 1

if TYPE_CHECKING:
    from .ledger import Ledger
    from .view import LedgerView


def _not_regular(mode: int) -> str:
    """What a non-regular, non-directory file is, for error messages."""
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class ArtifactCorrupted(BlobCorrupted):
    """An artifact's stored bytes no longer match its SHA-256."""

    def __init__(self, artifact_id: str, cause: BlobCorrupted):
        self.artifact_id = artifact_id
        super().__init__(cause.sha256, cause.path, cause.actual)
        self.args = (f"artifact {artifact_id}: its blob {cause.sha256} at {cause.path} is damaged "
                     f"(the bytes hash to {cause.actual}); restore the file from a backup",)

    def __str__(self) -> str:
        return str(self.args[0])


class ArtifactDecodeError(ValueError):
    """An artifact's bytes cannot be decoded as its kind says (``load_artifact_bytes`` still reads them)."""


def _blob_shaped(path: Path, sha: str) -> bool:
    """Whether a path ends like a blob of a ledger's store: ``.../sha256/<first two hex>/<sha>``."""
    return path.parent.name == sha[:2] and path.parent.parent.name == "sha256"



def _source_and_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The path ``save()`` reads and the name it records (``Path(path).name``) for a non-empty path.

    A str whose last component is a real name (no trailing slash, not ".") is used as it is: the kernel
    resolves it as it would pathlib's normalised form, and its basename is that form's last part."""
    if isinstance(path, str):
        name = os.path.basename(path)
        if name and name != ".":
            return path, name
    p = Path(path)
    return str(p), p.name


def _put_staged(store: Any, path: str) -> BlobInfo:
    """Store a staged file (its inode shared where possible), releasing earlier puts' callers first if it
    is large (hashing it takes a while)."""
    if os.stat(path).st_size >= LONG_PUT_BYTES:
        PutQueue.release_finished()
    info: BlobInfo = store.put_file(path, adopt=True)
    return info


def _restorer(store: Any, path: str) -> Callable[[], str]:
    """Store a file's bytes again (under the log lock, after a gc collected its blob); returns its SHA-256."""
    return lambda: str(store.put_file(path).sha256)


class ArtifactFacade(LifecycleMixin):
    """Artifacts API bound to (run_id, graph_id, node_id, project_id)."""

    def __init__(self, source: Any, *, run_id: str, graph_id: str, node_id: str,
                 project_id: str | None = None, read_only: bool = False):
        self._src: Ledger | LedgerView = source
        self.run_id = run_id
        self.graph_id = graph_id
        self.node_id = node_id
        self.project_id = project_id
        self._read_only = read_only
        self.last_artifact: Artifact | None = None

    def __repr__(self) -> str:
        return (f"ArtifactFacade(run_id={self.run_id!r}, graph_id={self.graph_id!r}, "
                f"node_id={self.node_id!r}, project_id={self.project_id!r})")

    # ------------------------------------------------------------ staging
    def _writable(self, what: str) -> Ledger:
        if self._read_only:
            raise ReadOnlyError(f"{what}() is not allowed on a read-only past view of the ledger")
        if getattr(self._src, "read_only", False):
            raise ReadOnlyError(f"{what}() is not allowed: the ledger at {self._src.where} is open read-only "
                                "(open_ledger(root, read_only=True)); nothing was written")
        self._src._check_open()
        # Past views are read-only (raised above), so a writable source is the Ledger itself.
        return cast("Ledger", self._src)

    async def stage(self, ext: str = "") -> str:
        """Reserve a fresh staging file path (the file is created empty)."""
        ledger = self._writable("stage")
        suffix = check_suffix("ext", ext)
        path = ledger._new_staging_name(suffix)
        # O_EXCL reserves the name, so two calls can never hand out one path.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        return str(path)

    async def tmp_path(self, suffix: str = "") -> str:
        """Alias of ``stage()``."""
        return await self.stage(suffix)

    async def stage_dir(self, suffix: str = "") -> str:
        """Create a fresh staging directory for a multi-file artifact."""
        ledger = self._writable("stage_dir")
        sfx = check_suffix("suffix", suffix)
        path = ledger._new_staging_name(sfx)
        path.mkdir()
        return str(path)

    # ------------------------------------------------------------ writes
    def _meta(self, kind: Any, labels: Any, metrics: Any, suggested_uri: Any, pin: Any) -> dict[str, Any]:
        bound = {"run_id": self.run_id, "graph_id": self.graph_id, "node_id": self.node_id,
                 "project_id": self.project_id}
        return {
            "kind": check_kind(kind),
            "labels": check_labels(labels, bound),
            "metrics": check_metrics(metrics),
            "suggested_uri": check_suggested_uri(suggested_uri),
            "pinned": check_bool("pin", pin),
        }

    def _check_fits(self, meta: dict[str, Any], *, origin: str, mime: str, name: str | None) -> None:
        """Refuse, before any byte is stored, metadata whose event would exceed MAX_EVENT_BYTES."""
        check_event_size(ArtifactRecorded(
            artifact_id=_PROBE_ID, origin=origin, sha256=_PROBE_SHA, size=_PROBE_SIZE, mime=mime, name=name,
            run_id=self.run_id, graph_id=self.graph_id, node_id=self.node_id, project_id=self.project_id,
            **meta,
        ))

    def _staged(self, path: Any, *, directory: bool) -> Path:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"staged path must be a str or path, got {type(path).__name__}")
        p = Path(path)
        staging = self._src.staging
        if not p.is_absolute() or p.parent.resolve() != staging or ".." in p.parts:
            raise ValueError(
                f"{str(path)!r} is not a path handed out by stage()/stage_dir() of this ledger "
                f"(staging area {staging}); use save() for other files"
            )
        if p.is_symlink():
            raise ValueError(f"{str(path)!r} is a symlink; stage real files only")
        if directory:
            if not p.exists():
                raise FileNotFoundError(f"staged directory {str(path)!r} does not exist")
            if not p.is_dir():
                raise NotADirectoryError(f"{str(path)!r} is not a directory; use ingest() for files")
        else:
            if not p.exists():
                raise FileNotFoundError(f"staged file {str(path)!r} does not exist")
            mode = p.stat().st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(f"{str(path)!r} is a directory; use ingest_dir() for directories")
            if not stat.S_ISREG(mode):
                raise ValueError(f"{str(path)!r} is {_not_regular(mode)}; ingest() takes regular files only")
        return p

    async def _record(self, *, origin: str, sha256: str, size: int, mime: str, name: str | None,
                      meta: dict[str, Any], needs: tuple[Need, ...] = ()) -> Artifact:
        event = ArtifactRecorded(
            artifact_id=unique_hex(),
            origin=origin,
            sha256=sha256,
            size=size,
            mime=mime,
            name=name,
            run_id=self.run_id,
            graph_id=self.graph_id,
            node_id=self.node_id,
            project_id=self.project_id,
            **meta,
        )
        token = BLOB_NEEDS.set(needs or ((sha256, None),))
        try:
            await self._src._append(event)
        finally:
            BLOB_NEEDS.reset(token)
        cat: Catalog = self._src.catalog
        art = self._src._to_artifact(cat.rows[event.artifact_id])
        self.last_artifact = art
        return art

    async def save(self, path: str, *, kind: str, labels: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None,
                   suggested_uri: str | None = None, pin: bool = False,
                   derived_from: builtins.list[str] | None = None) -> Artifact:
        """Copy an existing file into the store and record it; the caller's file stays.

        ``derived_from``: ids of the artifacts it came from (lineage, checked before anything is stored)."""
        self._writable("save")
        meta = self._meta(kind, labels, metrics, suggested_uri, pin)
        meta["derived_from"] = await self._check_parents(derived_from)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or path, got {type(path).__name__}")
        if not os.fspath(path):
            # Path("") would mean the current directory.
            raise ValueError("cannot save '': the path is empty; give the path of a regular file")
        src, name = _source_and_name(path)
        mime = content.guess_mime(name)
        self._check_fits(meta, origin="save", mime=mime, name=name)
        store = self._src.store

        def put() -> BlobInfo:
            # Checked in the worker thread: stat calls would otherwise stall the event loop.
            # stat, never open: opening a FIFO would block until a writer appears.
            try:
                st = os.stat(src)
            except FileNotFoundError:
                raise FileNotFoundError(f"cannot save {str(path)!r}: no such file") from None
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(
                    f"cannot save {str(path)!r}: it is a directory (use stage_dir/ingest_dir for directories)")
            if not stat.S_ISREG(mode):
                raise ValueError(f"cannot save {str(path)!r}: it is {_not_regular(mode)}; "
                                 "save() copies regular files only")
            if st.st_size >= LONG_PUT_BYTES:
                PutQueue.release_finished()  # the small saves this runner finished need not wait for it
            return store.put_file(src)

        for attempt in range(BLOB_RETRIES + 1):
            info = await self._writable("save")._puts.run(put)
            try:
                return await self._record(origin="save", sha256=info.sha256, size=info.size,
                                          mime=mime, name=name, meta=meta,
                                          needs=((info.sha256, lambda: store.put_file(src).sha256),))
            except BlobCollected:
                if attempt == BLOB_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def ingest(self, staged_path: str, *, kind: str, labels: dict[str, Any] | None = None,
                     metrics: dict[str, Any] | None = None,
                     suggested_uri: str | None = None, pin: bool = False,
                     derived_from: builtins.list[str] | None = None) -> Artifact:
        """Move a staged file into the store and record it; nothing is left in staging."""
        self._writable("ingest")
        meta = self._meta(kind, labels, metrics, suggested_uri, pin)
        meta["derived_from"] = await self._check_parents(derived_from)
        p = self._staged(staged_path, directory=False)
        self._check_fits(meta, origin="ingest", mime=content.guess_mime(p.name), name=None)
        return await self._ingest_file(p, origin="ingest", mime=content.guess_mime(p.name), meta=meta)

    async def _ingest_file(self, p: Path, *, origin: str, mime: str, meta: dict[str, Any]) -> Artifact:
        store = self._src.store
        for attempt in range(BLOB_RETRIES + 1):
            info = await self._writable(origin)._puts.run(lambda: _put_staged(store, str(p)))
            try:
                art = await self._record(origin=origin, sha256=info.sha256, size=info.size, mime=mime,
                                         name=None, meta=meta,
                                         needs=((info.sha256, lambda: store.put_file(str(p)).sha256),))
                break
            except BaseException as exc:
                if info.linked:
                    # The store holds this inode and will publish it; the staged name that stays
                    # for a retry must not be able to change the blob's bytes.
                    await anyio.to_thread.run_sync(unshare, str(p))
                if not isinstance(exc, BlobCollected) or attempt == BLOB_RETRIES:
                    raise
        # Only now that the event is durable does staging let go of the file;
        # had recording failed, the staged file would still be there to retry.
        p.unlink(missing_ok=True)
        return art

    @asynccontextmanager
    async def writer(self, *, kind: str, planned_ext: str | None = None, pin: bool = False,
                     labels: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                     suggested_uri: str | None = None,
                     derived_from: builtins.list[str] | None = None) -> AsyncIterator[BinaryIO]:
        """Yield a real binary file; on clean exit its bytes are recorded as an artifact.

        On an exception inside the block nothing is recorded and the staged file is removed.
        """
        self._writable("writer")
        meta = self._meta(kind, labels, metrics, suggested_uri, pin)
        meta["derived_from"] = await self._check_parents(derived_from)
        ext = check_suffix("planned_ext", planned_ext)
        # The staged name is <32 hex><ext>, so its MIME type is known before it exists.
        self._check_fits(meta, origin="writer", mime=content.guess_mime(_PROBE_ID + ext), name=None)
        path = Path(await self.stage(ext))
        f = open(path, "w+b")
        try:
            yield f
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        try:
            f.close()
            await self._ingest_file(path, origin="writer", mime=content.guess_mime(path.name), meta=meta)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    async def ingest_dir(self, staged_dir: str, **kw: Any) -> Artifact:
        """Store every file of a staged directory plus a manifest, as one artifact."""
        self._writable("ingest_dir")
        unknown = set(kw) - _INGEST_DIR_KW
        if unknown:
            raise TypeError(f"ingest_dir() got unexpected keyword(s) {sorted(unknown)}; "
                            f"accepted: {sorted(_INGEST_DIR_KW)}")
        meta = self._meta(kw.get("kind", "directory"), kw.get("labels"), kw.get("metrics"),
                          kw.get("suggested_uri"), kw.get("pin", False))
        meta["derived_from"] = await self._check_parents(kw.get("derived_from"))
        p = self._staged(staged_dir, directory=True)
        self._check_fits(meta, origin="ingest_dir", mime=content.DIR_MIME, name=p.name)
        files, dirs = await anyio.to_thread.run_sync(content.scan_directory, str(p))
        store = self._src.store

        linked: list[str] = []

        def put_all() -> tuple[str, int, tuple[Need, ...]]:
            PutQueue.release_finished()  # a tree's files: as long as a large file, or longer
            entries = []
            total = 0
            for rel, full in files:
                info = store.put_file(full, adopt=True)
                if info.linked:
                    linked.append(full)
                entries.append({"path": rel, "sha256": info.sha256, "bytes": info.size})
                total += info.size
            encoded = content.encode_manifest(entries, dirs)
            manifest = store.put_bytes(encoded)
            needs: list[Need] = [(manifest.sha256, lambda: store.put_bytes(encoded).sha256)]
            for (_, full), e in zip(files, entries):
                needs.append((str(e["sha256"]), _restorer(store, full)))
            return manifest.sha256, total, tuple(needs)

        try:
            for attempt in range(BLOB_RETRIES + 1):
                sha, total, needs = await self._writable("ingest_dir")._puts.run(put_all)
                try:
                    art = await self._record(origin="ingest_dir", sha256=sha, size=total, mime=content.DIR_MIME,
                                             name=p.name, meta=meta, needs=needs)
                    break
                except BlobCollected:
                    if attempt == BLOB_RETRIES:
                        raise
                    # The linked inodes may be gone from the store: detach the staged names, copy again.
                    await anyio.to_thread.run_sync(lambda: list(map(unshare, linked)))
                    linked.clear()
        except BaseException:
            # As for ingest(): the staged files stay for a retry, detached from the blobs.
            await anyio.to_thread.run_sync(lambda: list(map(unshare, linked)))
            raise
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(p, ignore_errors=True))
        return art

    async def pin(self, artifact_id: str, pinned: bool = True) -> None:
        """Pin or unpin an artifact (an event; nothing is changed in place)."""
        self._writable("pin")
        if not isinstance(artifact_id, str):
            raise TypeError(f"artifact_id must be a string, got {type(artifact_id).__name__}")
        check_bool("pinned", pinned)
        cat = await self._src._refresh()
        if artifact_id not in cat.rows:
            raise KeyError(f"unknown artifact_id {artifact_id!r}")
        await self._src._append(PinChanged(artifact_id=artifact_id, pinned=pinned))

    # ------------------------------------------------------------ reads
    async def _resolve(self, uri: Any) -> tuple[Catalog, Row]:
        if not isinstance(uri, str):
            raise TypeError(f"uri must be a string, got {type(uri).__name__}")
        cat = await self._src._refresh()
        row: Row | None = None
        upto = self._src.upto
        if uri.startswith(ARTIFACT_SCHEME):
            row = cat.rows.get(uri[len(ARTIFACT_SCHEME):])
            if row is not None and upto is not None and row.seq > upto:
                row = None  # recorded after the moment this view shows
        elif uri.startswith("file://"):
            parsed = urlparse(uri)
            path = Path(unquote(parsed.path))
            try:
                sha = check_sha(path.name)
            except ValueError:
                sha = None
            if sha is not None and parsed.fragment and _blob_shaped(path, sha):
                # The fragment names the occurrence and the name its bytes: such a URI means the
                # same artifact wherever the ledger has been moved or copied since it was handed out.
                row = cat.rows.get(parsed.fragment)
                if row is not None and (row.ev.sha256 != sha or (upto is not None and row.seq > upto)):
                    row = None
            elif sha is not None and self._src.store.names_blob(path, sha):
                row = by_blob(cat, sha, upto)  # bytes, not an occurrence: only this store's blob
        elif "://" in uri:
            # The store's own URI of a blob (s3://bucket/key), alone or with "#<artifact id>" as for file://.
            base, _, fragment = uri.partition("#")
            store = self._src.store
            if fragment:
                row = cat.rows.get(fragment)
                if row is not None and (store.uri(row.ev.sha256) != base or (upto is not None and row.seq > upto)):
                    row = None
            else:
                tail = base.rsplit("/", 1)[-1]
                try:
                    sha = check_sha(tail)
                except ValueError:
                    sha = None
                if sha is not None and store.uri(sha) == base:
                    row = by_blob(cat, sha, upto)
        if row is None:
            raise FileNotFoundError(f"no artifact with URI {uri!r} in the ledger at {self._src.where}")
        self._check_loadable(cat, row)
        return cat, row

    async def load_artifact_bytes(self, uri: str) -> bytes:
        """The exact bytes of an artifact, checked against its SHA-256 (``IsADirectoryError`` for directories)."""
        _, row = await self._resolve(uri)
        if row.ev.mime == content.DIR_MIME:
            raise IsADirectoryError(
                f"artifact {row.ev.artifact_id} is a directory; use load_artifact() to get its path")
        return await anyio.to_thread.run_sync(self._read_checked, row.ev)

    def _read_checked(self, ev: ArtifactRecorded, sha256: str | None = None) -> bytes:
        try:
            return self._src.store.read_bytes(sha256 or ev.sha256)
        except BlobCorrupted as exc:
            raise ArtifactCorrupted(ev.artifact_id, exc) from None

    async def load_artifact(self, uri: str) -> Any:
        """Load and decode an artifact by kind, then MIME: JSON, text, directory Path, else bytes."""
        _, row = await self._resolve(uri)
        ev = row.ev
        store = self._src.store
        if ev.mime == content.DIR_MIME:
            target = self._src.materialized / ev.sha256

            def copy_blob(sha: str, dest: Path) -> None:
                try:
                    store.copy_to(sha, str(dest))
                except BlobCorrupted as exc:
                    raise ArtifactCorrupted(ev.artifact_id, exc) from None

            def build() -> Path:
                manifest = content.decode_manifest(self._read_checked(ev))
                return content.materialize(manifest, copy_blob, target)

            return await anyio.to_thread.run_sync(build)
        data = await anyio.to_thread.run_sync(self._read_checked, ev)
        try:
            return content.decode(ev.kind, ev.mime, data)
        except content.DecodeFailed as exc:
            raise ArtifactDecodeError(
                f"artifact {ev.artifact_id} (kind {ev.kind!r}, {ev.mime}) cannot be loaded: {exc}; "
                f"load_artifact_bytes({uri!r}) returns its bytes as stored") from None

    def _scope_constraints(self, scope: Any) -> dict[str, Any]:
        scope = check_scope(scope)
        if scope == "all":
            return {}
        if scope == "project":
            if self.project_id is None:
                raise ValueError("scope='project' needs a facade bound with a project_id")
            return {"project_id": self.project_id}
        out: dict[str, Any] = {"run_id": self.run_id}
        if scope in ("graph", "node"):
            out["graph_id"] = self.graph_id
        if scope == "node":
            out["node_id"] = self.node_id
        return out

    def _filter(self, scope: Any, kind: Any, labels: Any, extra_scope_labels: Any,
                labels_name: str = "labels") -> Filter:
        constraints = self._scope_constraints(scope)
        constraints.update(check_label_map("extra_scope_labels", extra_scope_labels))
        if kind is not None:
            check_kind(kind)
        return Filter.build(constraints, check_label_map(labels_name, labels), kind)

    def _out(self, cat: Catalog, rows: builtins.list[int]) -> builtins.list[Artifact]:
        many = getattr(self._src, "_to_artifacts", None)
        if many is not None:
            return many(rows, cat)  # type: ignore[no-any-return]
        to = self._src._to_artifact
        return [to(Row(cat, i), cat) for i in rows]

    async def list(self, *, scope: Scope = "run") -> builtins.list[Artifact]:
        """Artifacts in the scope, newest first."""
        f = self._filter(scope, None, None, None)
        cat = await self._src._refresh()
        return self._out(cat, self._live(cat, select_rows(cat, f, upto=self._src.upto)))

    async def search(self, *, kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
                     mode: Literal["max", "min"] | None = None, scope: Scope = "run",
                     extra_scope_labels: dict[str, Any] | None = None,
                     limit: int | None = None, alias: str | None = None) -> builtins.list[Artifact]:
        """Artifacts matching kind and labels in the scope; ranked by metric when given, else newest first.

        ``alias``: only the artifact that alias points at (facade's namespace, or ``"namespace/name"``)."""
        check_ranking(metric, mode, required=False)
        limit = check_limit(limit)
        f = self._filter(scope, kind, labels, extra_scope_labels)
        cat = await self._src._refresh()
        only = self._alias_rows(cat, alias)
        if cat.life.retired or only is not None:
            # Hidden rows must not use up the limit. Every ordering is a fixed total order whose first
            # W rows are the same for any limit W, so: take a few more than asked, drop the hidden ones,
            # and widen the window eightfold until enough are live, the rows run out, or it covers every
            # row that could be hidden (so at worst about 8/7 of reading that many at once). An alias
            # filter keeps one row, so it reads all.
            hidden = retired_count(cat, self._src.upto)
            most = None if limit is None or only is not None else limit + hidden
            wide = None if most is None or limit is None else min(most, 2 * limit + 16)
            while True:
                if metric is not None:
                    rows = rank_rows(cat, f, metric, mode, wide, upto=self._src.upto)  # type: ignore[arg-type]
                else:
                    rows = select_rows(cat, f, wide, upto=self._src.upto)
                got = len(rows)
                rows = [i for i in self._live(cat, rows) if only is None or i in only]
                if wide is None or most is None or limit is None or len(rows) >= limit or got < wide \
                        or wide >= most:
                    return self._out(cat, rows if limit is None else rows[:limit])
                wide = min(most, 8 * wide)
        if metric is not None:
            return self._out(cat, rank_rows(cat, f, metric, mode, limit,  # type: ignore[arg-type]
                                            upto=self._src.upto))
        return self._out(cat, select_rows(cat, f, limit, upto=self._src.upto))

    async def best(self, *, kind: str, metric: str, mode: Literal["max", "min"], scope: Scope = "run",
                   filters: dict[str, Any] | None = None) -> Artifact | None:
        """The best artifact of a kind by a metric in the scope, or None."""
        check_kind(kind)
        check_ranking(metric, mode, required=True)
        f = self._filter(scope, kind, filters, None, labels_name="filters")
        cat = await self._src._refresh()
        row = best_live(cat, f, metric, mode, upto=self._src.upto)
        return None if row is None else self._src._to_artifact(row, cat)

    # ------------------------------------------------------------ conveniences
    async def get(self, artifact_id: str) -> Artifact:
        """The artifact with this id, whatever the facade's scope; ``KeyError`` naming the id if unknown
        (on a past view: also if it was recorded after the view's seq)."""
        if not isinstance(artifact_id, str):
            raise TypeError(f"artifact_id must be a string, got {type(artifact_id).__name__}")
        cat = await self._src._refresh()
        row = cat.rows.get(artifact_id)
        upto = self._src.upto
        if row is None:
            raise KeyError(f"unknown artifact_id {artifact_id!r} in the ledger at {self._src.where}")
        if upto is not None and row.seq > upto:
            raise KeyError(f"artifact_id {artifact_id!r} was recorded at seq {row.seq}, after this view's seq {upto}")
        return self._src._to_artifact(row, cat)

    async def count(self, *, kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
                    scope: Scope = "run", extra_scope_labels: dict[str, Any] | None = None) -> int:
        """How many artifacts ``search()`` with these arguments finds (those having ``metric``, when given)."""
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise TypeError(f"metric must be a non-empty string, got {metric!r}")
        f = self._filter(scope, kind, labels, extra_scope_labels)
        cat = await self._src._refresh()
        total = count_rows(cat, f, metric, upto=self._src.upto)
        if cat.life.retired:
            # Take off the hidden rows the query counted, rather than list every match to filter it.
            total -= count_among(cat, f, retired_rows(cat, self._src.upto), metric, upto=self._src.upto)
        return total

    async def local_path(self, uri: str) -> Path:
        """A local path to an artifact's bytes, without reading them: the blob itself (files) or the
        materialised tree (directories). Read-only and content-addressed, shared by every artifact over
        the same bytes: never write to it, copy it first."""
        _, row = await self._resolve(uri)
        ev = row.ev
        if ev.mime == content.DIR_MIME:
            tree: Path = await self.load_artifact(uri)
            return tree
        store = self._src.store
        try:
            return await anyio.to_thread.run_sync(store.local_file, ev.sha256)
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {ev.sha256} of artifact {ev.artifact_id} is missing from the store "
                                    f"at {store.location}") from None

    async def export_files(self, directory: str | os.PathLike[str], *, kind: str | None = None,
                           labels: dict[str, Any] | None = None, metric: str | None = None,
                           mode: Literal["max", "min"] | None = None, scope: Scope = "run",
                           extra_scope_labels: dict[str, Any] | None = None, limit: int | None = None,
                           overwrite: bool = False) -> dict[str, Path]:
        """Copy the files of the artifacts ``search()`` finds into ``directory`` with a ``manifest.jsonl``;
        returns each artifact's path by id. Existing files are refused unless ``overwrite``."""
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or path, got {type(directory).__name__}")
        check_bool("overwrite", overwrite)
        arts = await self.search(kind=kind, labels=labels, metric=metric, mode=mode, scope=scope,
                                 extra_scope_labels=extra_scope_labels, limit=limit)
        cat: Catalog = self._src.catalog
        strs, name_s, id_rows = cat.strs, cat.name_s, cat.id_rows
        names = {a.artifact_id: strs[name_s[id_rows[a.artifact_id]]] for a in arts}
        store = self._src.store
        return await anyio.to_thread.run_sync(
            lambda: exporting.export(Path(directory), arts, names, store, overwrite=overwrite))
