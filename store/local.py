"""Content-addressed blobs on the local filesystem (the embedded default).

Layout: ``<root>/sha256/<first two hex>/<full hex>``. A blob becomes visible
under its final name only after its bytes are fsynced (temp file, fsync,
rename, directory fsync), so a name always means complete bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Iterator

from .base import BlobInfo

_HEX = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_sha(sha256: str) -> str:
    """Validate a hex SHA-256 string so it can never escape the store's root."""
    if not isinstance(sha256, str) or not _HEX.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class LocalBlobStore:
    """Blobs in a directory, deduplicated by SHA-256."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, defer_dir_sync: bool = False):
        self.root = Path(root).resolve()
        self.fsync = fsync
        # With defer_dir_sync, renames are made durable by sync_dirs(), which the
        # ledger calls once per group commit before appending the batch's events.
        self.defer_dir_sync = defer_dir_sync
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._uri_prefix = self._objects.as_uri() + "/"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Final path of a blob (whether or not it exists)."""
        check_sha(sha256)
        return self._objects / sha256[:2] / sha256

    def uri(self, sha256: str) -> str:
        """A ``file://`` URI of the blob."""
        check_sha(sha256)
        # Hex digests need no quoting, so the prefix is built (and quoted) once.
        return f"{self._uri_prefix}{sha256[:2]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""
        return self.path(sha256).is_file()

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store bytes durably and return their address."""
        sha = hashlib.sha256(data).hexdigest()
        if self.exists(sha):
            return BlobInfo(sha, len(data))
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._publish(tmp, sha)
        return BlobInfo(sha, len(data))

    def put_file(self, path: str | os.PathLike[str], *, adopt: bool = False) -> BlobInfo:
        """Store a file's bytes durably; the caller's file is left in place.

        With ``adopt`` the store may hard-link the file's inode instead of copying
        it (the caller then removes its name once the blob is recorded); a file
        with other hard links is always copied, since another name could change
        the blob's bytes.
        """
        src = Path(path)
        if adopt and os.lstat(src).st_nlink == 1:
            info = self._link_in(src)
            if info is not None:
                return info
        digest = hashlib.sha256()
        size = 0
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            with open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        sha = digest.hexdigest()
        if self.exists(sha):
            tmp.unlink()
            return BlobInfo(sha, size)
        self._publish(tmp, sha)
        return BlobInfo(sha, size)

    def _link_in(self, src: Path) -> BlobInfo | None:
        """Publish ``src``'s inode under its address; None when linking is impossible."""
        digest = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            if self.fsync:
                os.fsync(f.fileno())
        sha = digest.hexdigest()
        if self.exists(sha):
            return BlobInfo(sha, size)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            os.link(src, tmp)
        except OSError:
            return None  # another filesystem (EXDEV) or no hard links: copy instead
        os.chmod(tmp, 0o444)
        self._publish(tmp, sha)
        return BlobInfo(sha, size)

    def _publish(self, tmp: Path, sha: str) -> None:
        final = self.path(sha)
        shard = final.parent
        try:
            shard.mkdir()
            new_shard = True
        except FileExistsError:
            new_shard = False
        os.rename(tmp, final)
        if not self.fsync:
            return
        dirs = [str(shard), str(self._objects)] if new_shard else [str(shard)]
        if self.defer_dir_sync:
            with self._dirty_lock:
                self._dirty.update(dirs)
        else:
            for d in dirs:
                _fsync_dir(d)

    def sync_dirs(self) -> None:
        """Make every rename since the last call durable (one fsync per touched directory)."""
        with self._dirty_lock:
            dirs, self._dirty = self._dirty, set()
        # Shards before their parent, so a new shard's entries are durable before its name.
        for d in sorted(dirs, key=len, reverse=True):
            _fsync_dir(d)

    def read_bytes(self, sha256: str) -> bytes:
        """Return a blob's bytes."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self.root}") from None

    def iter_blobs(self) -> Iterator[str]:
        """Every stored blob's SHA-256, in no particular order."""
        for sub in sorted(self._objects.iterdir()):
            if sub.is_dir():
                for p in sorted(sub.iterdir()):
                    if _HEX.fullmatch(p.name):
                        yield p.name

    def verify(self, sha256: str) -> bool:
        """Whether the stored bytes still hash to their name."""
        digest = hashlib.sha256()
        with open(self.path(sha256), "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha256
