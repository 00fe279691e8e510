"""Content-addressed blobs on the local filesystem (the embedded default).

Layout: ``<root>/sha256/<first two hex>/<full hex>``. A blob is written to a
temp file and renamed to its address. It is durable once its bytes and the
rename are flushed: at once (fsync, rename, directory fsync) for a store used
on its own, or, for a ledger's store (``deferred=True``), by ``make_durable()``,
which the ledger's group commit calls before appending the events of a batch.
With ``enable_one_flush()`` (a ledger whose log shares the filesystem), the log
renames the batch's blobs in under its lock (``publish()``) and one syncfs makes
them durable with the batch's records (FORMAT.md, "One flush per batch").
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

from . import durable
from .base import BlobCorrupted as BlobCorrupted  # re-exported: its home used to be this module
from .base import BlobInfo, check_copied, copy_fd, file_sha256, is_sha
from .base import check_sha as check_sha
from ..ledger.errors import ReadOnlyError
from .durable import fsync_dir as _fsync_dir

CHUNK = 1 << 20


# Below this many blobs awaiting durability, fsync each; at or above it, one
# syncfs of the filesystem (a single journal commit) is cheaper.
SYNCFS_MIN_BLOBS = 4
# Pending blobs keep the descriptor that wrote them open until make_durable()
# fsyncs through it; past this many open at once, a put fsyncs and closes its own.
MAX_OPEN_PENDING = 64
# One-flush protocol: a blob at least this big is fsynced at put time, before its name can exist, so
# its name always means complete bytes (and recovery only stats it). Smaller ones are flushed with their
# batch, so recovery re-hashes those of the last batch: at most a batch of sub-MiB files, and 1 MiB is
# where one more fsync costs about what writing the bytes does.
LARGE_BLOB = 1 << 20
_rename = os.rename


class _Pending:
    """A blob written to a temp file, awaiting make_durable(): its fd stays open until flushed through."""

    __slots__ = ("tmp", "sha", "fd", "size", "renamed")

    def __init__(self, tmp: str, sha: str, fd: int | None, size: int):
        self.tmp = tmp
        self.sha = sha
        self.fd = fd  # None once flushed (and closed) at put time, or never kept (one-flush)
        self.size = size  # the bytes the put wrote into the temp file (publish needs no stat for it)
        self.renamed = False  # publish() gave it its address (one-flush)


def _flush_file(path: str) -> bool:
    """Fsync a file another process may have left unflushed; False if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        durable.fsync_fd(fd)
    finally:
        os.close(fd)
    return True


def _close_flushed(tmp: str, fd: int, flush: bool) -> None:
    """Close the fd that wrote temp file ``tmp``, fsyncing through it first if ``flush``; should the
    fsync fail, the temp file is removed (its bytes may never reach the disk) and the error raised."""
    try:
        if flush:
            durable.fsync_fd(fd)
    except BaseException:
        os.close(fd)
        _unlink_missing_ok(tmp)
        raise
    os.close(fd)


def _unlink_missing_ok(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_buffers = threading.local()


def _read_buffer() -> bytearray:
    """This thread's CHUNK-sized buffer for copying a put's bytes (made on its first put)."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(CHUNK)
    return buf


class LocalBlobStore:
    """Blobs in a directory, deduplicated by SHA-256."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, deferred: bool = False,
                 read_only: bool = False):
        self.root = Path(root).resolve()
        self.fsync = fsync
        # With ``deferred``, blob bytes and renames are made durable by
        # make_durable(), which must run before any event naming them is written.
        self.deferred = deferred
        self.read_only = read_only
        self._pending: list[_Pending] = []  # blobs awaiting make_durable()
        self._open_pending = 0  # how many of them still hold their fd
        # A failed flush discards blobs whose saves may still be waiting to append their
        # events; from then on every make_durable() fails, so none of those events is written.
        self._failed: BaseException | None = None
        self._pending_dirs: set[str] = set()  # shards of deduplicated blobs whose names must be flushed
        self._pending_lock = threading.Lock()
        self.location = str(self.root)
        self.read_concurrency = 1  # hashing is bound by this machine's disk and CPU, not by latency
        self.put_concurrency = max(2, min(8, os.cpu_count() or 2))
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        # The hot paths build blob and temp names as plain strings (pathlib costs more than the syscalls).
        self._objects_s = str(self._objects)
        self._tmp_s = str(self._tmp)
        # Shard directories this store has made or seen exist: a rename into one needs no mkdir attempt
        # first. Only ever a cache: a rename that finds its shard gone makes it again (see _rename_in).
        self._shards: set[str] = set()
        if not read_only:  # a read-only ledger creates nothing; its store is only read
            self._objects.mkdir(parents=True, exist_ok=True)
        self._uri_prefix = self._objects.as_uri() + "/"
        if not read_only:
            self._tmp.mkdir(parents=True, exist_ok=True)
        # One-flush protocol: opened before any blob is written, so a syncfs through it reports every
        # writeback error of the filesystem since (Linux checks errors against the fd's open time).
        self.sync_fd: int | None = None
        # Since the last batch flush: whether a blob under LARGE_BLOB was renamed in (only a syncfs makes
        # its bytes durable), and the directories renames went into or dedup found names in.
        self._batch_small = False
        self._batch_dirs: set[str] = set()

    @property
    def one_flush(self) -> bool:
        """Whether this store's blobs are renamed in and flushed by the log's batch (``enable_one_flush``)."""
        return self.sync_fd is not None

    def enable_one_flush(self) -> None:
        """Flush blobs with the log's batch from now on: ``publish()`` renames them in under the log lock and
        the batch's syncfs through ``sync_fd`` makes them durable (only for a deferred, fsyncing store)."""
        if not (self.deferred and self.fsync) or self.read_only:
            raise ValueError("one flush per batch needs a deferred, fsyncing, writable store")
        if self.sync_fd is None:
            self.sync_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)

    def path(self, sha256: str) -> Path:
        """Final path of a blob (whether or not it exists)."""
        check_sha(sha256)
        return self._objects / sha256[:2] / sha256

    def uri(self, sha256: str) -> str:
        """A ``file://`` URI of the blob."""
        check_sha(sha256)
        # Hex digests need no quoting, so the prefix is built (and quoted) once.
        return f"{self._uri_prefix}{sha256[:2]}/{sha256}"

    def _name(self, sha: str) -> str:
        """Final path of a blob whose name this store computed itself (a hexdigest: nothing to check)."""
        return f"{self._objects_s}/{sha[:2]}/{sha}"

    def _names_dirs(self, sha: str) -> list[str]:
        """The directories that hold a blob's name, deepest first: its shard, and sha256/ (holding the
        shard's name, which a one-flush process killed before its syncfs may have left unflushed)."""
        return [f"{self._objects_s}/{sha[:2]}", self._objects_s]

    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""
        check_sha(sha256)
        return os.path.isfile(self._name(sha256))

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store bytes durably and return their address."""
        sha = hashlib.sha256(data).hexdigest()
        if self._present(sha, len(data)):
            return BlobInfo(sha, len(data))
        tmp = self._new_tmp()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            os.close(fd)
            _unlink_missing_ok(tmp)
            raise
        self._publish(tmp, sha, fd, len(data))
        return BlobInfo(sha, len(data))

    def put_file(self, path: str | os.PathLike[str], *, adopt: bool = False) -> BlobInfo:
        """Store a file's bytes durably; the caller's file is left in place.

        With ``adopt`` the store may hard-link the file's inode instead of copying
        it (the caller then removes its name once the blob is recorded); a file
        with other hard links is always copied, since another name could change
        the blob's bytes.
        """
        src = os.fspath(path)
        if adopt and os.lstat(src).st_nlink == 1:
            info = self._link_in(src)
            if info is not None:
                return info
        digest = hashlib.sha256()
        tmp = self._new_tmp()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            # Plain fds and one reused buffer: open() would add fstat, ioctl and lseek calls and each
            # read a fresh CHUNK-sized bytes object, which for small files cost more than the copy.
            rfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                # An fsync follows (now, or with the batch) when the store fsyncs at all.
                size = copy_fd(rfd, fd, digest, _read_buffer(), writeback=self.fsync)
            finally:
                os.close(rfd)
            sha = digest.hexdigest()
            present = self._present(sha, size)
        except BaseException:
            os.close(fd)
            _unlink_missing_ok(tmp)
            raise
        if present:
            os.close(fd)
            os.unlink(tmp)
            return BlobInfo(sha, size)
        self._publish(tmp, sha, fd, size)
        return BlobInfo(sha, size)

    def _link_in(self, src: str) -> BlobInfo | None:
        """Publish ``src``'s inode under its address; None when linking is impossible."""
        digest = hashlib.sha256()
        size = 0
        # The caller wrote these bytes; the fd that read them is the nearest one this store can flush through.
        fd = os.open(src, os.O_RDONLY)
        try:
            with open(fd, "rb", closefd=False) as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            if self._present(sha, size):
                os.close(fd)
                return BlobInfo(sha, size)
            tmp = self._new_tmp()
            try:
                os.link(src, tmp)
            except OSError:
                os.close(fd)
                return None  # another filesystem (EXDEV) or no hard links: copy instead
            os.chmod(tmp, 0o444)
            # A linked inode keeps the caller's mtime; a gc tells blobs stored since its plan by theirs.
            os.utime(tmp)
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        self._publish(tmp, sha, fd, size)
        return BlobInfo(sha, size, linked=True)

    def _present(self, sha: str, size: int) -> bool:
        """Whether a blob is already stored, whole (so a put can skip writing it).

        Another process may have renamed it into place without having flushed
        that rename yet; a deferred store then flushes the name itself, with the
        next make_durable(), before any event of its own can name the blob.
        A name alone proves nothing for a small blob: under one flush per batch,
        a power cut can keep a rename and drop the bytes of a batch that was
        never acknowledged. So a small blob is trusted only once re-hashed, and
        then flushed: a one-flush process killed between its batch's renames and
        its syncfs leaves names whose bytes only the page cache holds, which
        neither a directory fsync nor this batch's flush (a batch of deduplicated
        blobs has no syncfs) would make durable.
        """
        final = self._name(sha)
        if not self._intact(final, sha, size):
            return False
        try:
            # Touched: a gc spares blobs touched since its plan, so it does not starve this save.
            os.utime(final)
        except FileNotFoundError:
            return False  # collected just now: store it again
        except OSError:
            pass  # another owner's file: the check under the log lock still keeps the save safe
        if self.fsync and size < LARGE_BLOB and not _flush_file(final):
            return False  # collected just now: store it again
        if self.fsync and self.deferred:
            with self._pending_lock:
                self._pending_dirs.update(self._names_dirs(sha))
        return True

    @staticmethod
    def _intact(path: str | Path, sha: str, size: int | None) -> bool:
        """Whether ``path`` holds the blob ``sha`` of ``size`` bytes: its size for a large blob (always
        flushed before its rename), its SHA-256 too for a small one (see ``LARGE_BLOB``) or one of
        unknown size (None)."""
        try:
            if size is not None and os.stat(path).st_size != size:
                return False
            if size is not None and size >= LARGE_BLOB:
                return True
            return file_sha256(path) == sha
        except FileNotFoundError:
            return False

    def complete(self, sha256: str, size: int | None) -> bool:
        """Whether the blob is present with ``size`` bytes (None: any) that, below ``LARGE_BLOB`` or of
        unknown size, hash to its name."""
        return self._intact(self.path(sha256), sha256, size)

    def remove_incomplete(self, sha256: str, size: int | None) -> bool:
        """Remove the blob's file if it is present but not whole (recovery of a torn last batch)."""
        path = self.path(sha256)
        if not path.exists() or self._intact(path, sha256, size):
            return False
        os.unlink(path)
        if self.fsync:
            _fsync_dir(str(path.parent))
        return True

    def _new_tmp(self) -> str:
        # The owner tag lets a sweep tell a dead process's leftover from a live save's file.
        return f"{self._tmp_s}/{durable.owner_tag()}.{durable.unique_hex()}.part"

    def _publish(self, tmp: str, sha: str, fd: int, size: int) -> None:
        """Make a written temp file the blob ``sha`` (now, or queued for make_durable() or publish());
        takes ``fd``."""
        if self.sync_fd is not None:
            # Flushed by the batch's syncfs; only a large blob is flushed now, before it can have a name.
            _close_flushed(tmp, fd, size >= LARGE_BLOB)
            with self._pending_lock:
                self._pending.append(_Pending(tmp, sha, None, size))
            return
        if self.fsync and self.deferred:
            # Renamed into place by make_durable() once its bytes are flushed,
            # so a blob's name always means complete bytes, even after a crash.
            with self._pending_lock:
                keep = self._open_pending < MAX_OPEN_PENDING
                if keep:
                    self._open_pending += 1
            if not keep:
                _close_flushed(tmp, fd, True)
            with self._pending_lock:
                self._pending.append(_Pending(tmp, sha, fd if keep else None, size))
            return
        _close_flushed(tmp, fd, self.fsync)  # through the fd that wrote the bytes, before their name exists
        self._rename_in(tmp, sha, sync_dirs=self.fsync)

    def _rename_in(self, tmp: str, sha: str, *, sync_dirs: bool) -> list[str]:
        """Rename a flushed temp file to its address; returns the directories touched."""
        dirs = self._names_dirs(sha)  # sha256/ too, even for a shard that existed
        shard = dirs[0]
        final = f"{shard}/{sha}"
        if shard in self._shards:
            # Known to exist: no mkdir attempt (its FileExistsError cost more than the rename).
            try:
                _rename(tmp, final)
            except FileNotFoundError:
                if not os.path.exists(tmp):
                    raise
                self._shards.discard(shard)  # removed behind this store's back: made again below
            else:
                return self._synced(dirs, sync_dirs)
        try:
            os.mkdir(shard)
        except FileExistsError:
            pass
        _rename(tmp, final)
        self._shards.add(shard)
        return self._synced(dirs, sync_dirs)

    @staticmethod
    def _synced(dirs: list[str], sync_dirs: bool) -> list[str]:
        """``dirs``, fsynced first if ``sync_dirs``."""
        if sync_dirs:
            # Shard before its parent, so a new shard's entries are durable before its name.
            for d in dirs:
                _fsync_dir(d)
        return dirs

    def publish(self) -> list[_Pending]:
        """One-flush protocol, under the exclusive log lock: rename every blob put since the last call to
        its address (no flush: the batch's syncfs follows); returns them, for ``unpublish``.

        An address that already holds the blob whole keeps it (its bytes may be the ones a committed event
        names and already durable; renaming unflushed bytes over them could break that event on a power
        cut); one holding anything else is replaced.
        """
        self._refuse_if_failed()
        with self._pending_lock:
            pending, self._pending = self._pending, []
            self._batch_dirs |= self._pending_dirs
            self._pending_dirs = set()
        try:
            for p in pending:
                # Kept or renamed in, a small blob's bytes are the batch's syncfs to flush: a file kept may
                # be another process's, renamed in and never flushed (killed before its syncfs).
                self._batch_small = self._batch_small or p.size < LARGE_BLOB
                if self._intact(self._name(p.sha), p.sha, p.size):
                    os.unlink(p.tmp)
                    self._batch_dirs.update(self._names_dirs(p.sha))  # and its names
                    continue
                self._batch_dirs.update(self._rename_in(p.tmp, p.sha, sync_dirs=False))
                p.renamed = True
        except BaseException:
            self.unpublish(pending)
            raise
        return pending

    def needs_syncfs(self) -> bool:
        """Whether the batch published a blob under LARGE_BLOB, whose bytes only the batch's syncfs flushes."""
        return self._batch_small

    def flush_names(self) -> None:
        """For a batch that published only large blobs (bytes flushed at put), or none: fsync each directory
        it renamed into or found a deduplicated name in (deepest first) instead of a syncfs, which would
        also flush every other writer's dirty pages on the filesystem."""
        for d in sorted(self._batch_dirs, key=len, reverse=True):
            _fsync_dir(d)
        self._batch_dirs.clear()

    def batch_flushed(self) -> None:
        """The batch's flush returned: what it published is durable."""
        self._batch_small = False
        self._batch_dirs.clear()

    def unpublish(self, published: list[_Pending]) -> None:
        """The batch's flush failed: remove the names ``publish()`` gave (their bytes may never reach the
        disk) and the temp files left, and fail every later publish of this store (saves still queued may
        rely on blobs removed here)."""
        self._failed = sys.exc_info()[1] or OSError("the batch's flush failed")
        for p in published:
            for path in (str(self.path(p.sha)) if p.renamed else None, p.tmp):
                if path is None:
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    pass  # an unflushed name left behind is unreferenced; dedup re-hashes before trusting it
            p.renamed = False

    def _refuse_if_failed(self) -> None:
        if self._failed is not None:
            raise OSError(f"an earlier blob flush failed ({self._failed}); blobs put since may be lost, "
                          "so nothing more is published: reopen the ledger") from self._failed

    def make_durable(self) -> None:
        """Flush and publish every blob put since the last call (deferred stores).

        Bytes are flushed first, each through the fd that wrote it (after one
        syncfs of the filesystem when there are many, which makes those fsyncs
        cheap but is not trusted to report errors: kernels before 5.8 do not).
        Then they are renamed to their addresses and the renames flushed. Should
        any flush fail, no blob of the batch gets a name and the error is
        raised, so no event can be written naming it. A blob that was already
        present when put (deduplicated) had its shard directory queued, and is
        flushed too.
        """
        self._refuse_if_failed()
        if self.sync_fd is not None:
            return  # one flush per batch: the log publishes them under its lock (publish())
        with self._pending_lock:
            pending, self._pending = self._pending, []
            dirs, self._pending_dirs = self._pending_dirs, set()
            self._open_pending -= sum(1 for p in pending if p.fd is not None)
        if not pending:
            for d in sorted(dirs, key=len, reverse=True):
                _fsync_dir(d)
            return
        many = len(pending) >= SYNCFS_MIN_BLOBS and durable.syncfs_available()
        try:
            if many:
                durable.syncfs(str(self._objects))
            for p in pending:
                if p.fd is not None:
                    durable.fsync_fd(p.fd)
        except BaseException:
            self._discard(pending)
            raise
        for p in pending:
            if p.fd is not None:
                os.close(p.fd)
                p.fd = None
        try:
            for p in pending:
                dirs.update(self._rename_in(p.tmp, p.sha, sync_dirs=False))
            if many:
                durable.syncfs(str(self._objects))
            # Each directory fsynced too, even after a syncfs: its own fsync reports an error.
            for d in sorted(dirs, key=len, reverse=True):
                _fsync_dir(d)
        except BaseException:
            self._discard(pending)
            raise

    def _discard(self, pending: list[_Pending]) -> None:
        """Drop the temp files of blobs that failed to become durable: their bytes may not be on disk.

        A blob already renamed to its address had its bytes flushed and stays: another
        save (maybe in another process) may have found it there and recorded it.
        """
        self._failed = sys.exc_info()[1]
        for p in pending:
            if p.fd is not None:
                try:
                    os.close(p.fd)
                except OSError:
                    pass
                p.fd = None
            try:
                os.unlink(p.tmp)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Release the fds of blobs never made durable, and remove their temp files (nothing names them)."""
        if self.sync_fd is not None:
            os.close(self.sync_fd)
            self.sync_fd = None
        with self._pending_lock:
            pending, self._pending = self._pending, []
            self._open_pending = 0
        for p in pending:
            if p.fd is not None:
                os.close(p.fd)
            try:
                os.unlink(p.tmp)
            except FileNotFoundError:
                pass

    def read_bytes(self, sha256: str) -> bytes:
        """Return a blob's bytes, checked against its SHA-256 (``BlobCorrupted`` if they differ)."""
        path = self.path(sha256)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self.root}") from None
        # Hashed in place: no second copy of a large blob.
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BlobCorrupted(sha256, str(path), actual)
        return data

    def copy_to(self, sha256: str, dest: str | os.PathLike[str]) -> None:
        """Stream a blob into a new file ``dest``, checking its SHA-256 on the way (``BlobCorrupted``)."""
        path = self.path(sha256)
        try:
            rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self.root}") from None
        digest = hashlib.sha256()
        try:
            wfd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                copy_fd(rfd, wfd, digest, _read_buffer(), writeback=False)
            except BaseException:
                os.close(wfd)
                _unlink_missing_ok(os.fspath(dest))  # a partial copy is no copy
                raise
            os.close(wfd)
        finally:
            os.close(rfd)
        check_copied(digest, sha256, str(path), dest)

    def iter_blobs(self) -> Iterator[str]:
        """Every stored blob's SHA-256, in no particular order."""
        for sub in sorted(self._objects.iterdir()):
            if sub.is_dir():
                for p in sorted(sub.iterdir()):
                    if is_sha(p.name):
                        yield p.name

    def verify(self, sha256: str) -> bool:
        """Whether the stored bytes still hash to their name."""
        return file_sha256(self.path(sha256)) == sha256

    def local_file(self, sha256: str) -> Path:
        """The blob's own file (never copied); ``FileNotFoundError`` naming the store if absent."""
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self.root}")
        return path

    def names_blob(self, path: Path, sha256: str) -> bool:
        """Whether ``path`` is this store's file for the blob ``sha256``."""
        return path == self.path(sha256)

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; ``FileNotFoundError`` naming the store if absent."""
        try:
            return os.path.getsize(self.path(sha256))
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self.root}") from None

    def delete(self, sha256: str) -> bool:
        """Remove a blob and flush the removal; returns whether it was there.

        Blobs are shared by every artifact over the same bytes: only a caller that knows no event
        still needs them (garbage collection, after its own event is durable) may delete.
        """
        if self.read_only:
            raise ReadOnlyError(f"the blob store at {self.root} is open read-only; nothing was deleted")
        path = self.path(sha256)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        if self.fsync:
            _fsync_dir(str(path.parent))
        return True

    @property
    def device(self) -> int:
        """``st_dev`` of the filesystem holding the blobs."""
        return os.stat(self.root).st_dev

    def one_flush_side(self) -> LocalBlobStore:
        """This store itself: its blobs are local files, which recovery can check and a syncfs can flush."""
        return self

    def blob_stat(self, sha256: str) -> tuple[int, float]:
        """(size in bytes, last-modified time) of the blob's file; ``FileNotFoundError`` if absent."""
        st = os.stat(self.path(sha256))
        return st.st_size, st.st_mtime
