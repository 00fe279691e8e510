"""The blob store contract: bytes keyed by their SHA-256.

The facade, the audit and the exporter use a blob store only through ``BlobStore``; each backend
(``local.py``, ``s3.py``) lives in its own module, and ``store.open_store`` picks one from a location.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Protocol

COPY_CHUNK = 1 << 20  # bytes read at a time by file_sha256, copy_checked and copy_hashing
WRITEBACK_CHUNKS = 8  # copy_hashing(writeback=True) starts the writeback of every 8 chunks copied

_HEX = re.compile(r"[0-9a-f]{64}")


def check_sha(sha256: str) -> str:
    """Validate a hex SHA-256 string so it can never escape the store's root."""
    if not isinstance(sha256, str) or not _HEX.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


def is_sha(text: str) -> bool:
    """Whether ``text`` is a lowercase hex SHA-256 digest."""
    return _HEX.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the store knows of one blob after a put."""

    sha256: str
    size: int
    linked: bool = False  # the blob shares the caller's inode (put_file with adopt=True)


class BlobCorrupted(OSError):
    """A stored blob's bytes no longer hash to its address."""

    def __init__(self, sha256: str, path: str, actual: str):
        self.sha256 = sha256
        self.path = path
        self.actual = actual
        super().__init__(f"blob {sha256} at {path} is damaged: its bytes hash to {actual}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_fd(rfd: int, wfd: int, digest: Any, buf: bytearray, *, writeback: bool) -> int:
    """Copy ``rfd`` to ``wfd`` to EOF through ``buf``, feeding ``digest``; returns the bytes copied. A file
    that fills ``buf`` goes on in ``copy_hashing``, so a large one is hashed while it is copied."""
    whole = memoryview(buf)
    size = 0
    while got := os.readv(rfd, (buf,)):
        chunk = whole[:got]
        digest.update(chunk)
        size += got
        while chunk:
            chunk = chunk[os.write(wfd, chunk):]
        if got == len(buf):
            # SHA-256 alone took about as long as the whole copy and its fsync: overlap them.
            return size + copy_hashing(rfd, wfd, digest, writeback=writeback)
    return size


def copy_hashing(rfd: int, wfd: int, digest: Any, *, writeback: bool, buffers: int = 3) -> int:
    """Copy ``rfd`` to ``wfd`` from where each stands to EOF while a helper thread feeds the same chunks to
    ``digest`` (SHA-256 and the copy overlap instead of adding up); returns the bytes copied.

    ``writeback``: an fsync of ``wfd`` follows, so start writing the copy back as it goes."""
    bufs = [bytearray(COPY_CHUNK) for _ in range(buffers)]
    chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    # One permit per buffer: a buffer is read into again only once the helper has hashed what it held.
    free = threading.Semaphore(buffers)
    failed: list[BaseException] = []

    def hash_chunks() -> None:
        try:
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)  # releases the GIL for chunks this large
                free.release()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the copying thread
            failed.append(exc)
            free.release()

    helper = threading.Thread(target=hash_chunks, name="blob-hash", daemon=True)
    helper.start()
    size = 0
    try:
        i = 0
        while True:
            free.acquire()
            if failed:
                break
            buf = bufs[i % buffers]
            got = os.readv(rfd, (buf,))
            if not got:
                break
            view = memoryview(buf)[:got]
            chunks.put(view)
            while view:
                view = view[os.write(wfd, view):]
            size += got
            i += 1
            if writeback and i % WRITEBACK_CHUNKS == 0:
                # Start writing the last chunks back now (DONTNEED starts it without waiting, and drops
                # pages already clean): the fsync after the copy then waits for a tail, not the file.
                os.posix_fadvise(wfd, size - WRITEBACK_CHUNKS * COPY_CHUNK, WRITEBACK_CHUNKS * COPY_CHUNK,
                                 os.POSIX_FADV_DONTNEED)
    finally:
        chunks.put(None)
        helper.join()
    if failed:
        raise failed[0]
    return size


def copy_checked(src: BinaryIO, src_name: str, dest: str | os.PathLike[str], sha256: str) -> None:
    """Stream the open blob ``src`` into the new file ``dest`` (refused if it exists), checking its SHA-256
    on the way: on a mismatch ``dest`` is removed and ``BlobCorrupted`` names ``src_name``."""
    digest = hashlib.sha256()
    with open(dest, "xb") as out:
        while chunk := src.read(COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    check_copied(digest, sha256, src_name, dest)


def check_copied(digest: Any, sha256: str, src_name: str, dest: str | os.PathLike[str]) -> None:
    """After copying blob ``sha256`` into ``dest``: if ``digest`` of the bytes copied differs, remove ``dest``
    and raise ``BlobCorrupted`` naming ``src_name``."""
    if digest.hexdigest() != sha256:
        os.unlink(dest)
        raise BlobCorrupted(sha256, src_name, digest.hexdigest())


class BlobStoreError(OSError):
    """A blob store cannot be used as configured; the message names what is wrong and where."""


class BlobStoreUnavailable(BlobStoreError):
    """The store's server did not answer (unreachable endpoint, timeout, server errors past every retry)."""


class BlobStoreAccessDenied(BlobStoreError, PermissionError):
    """The store refused the credentials or the access they grant."""


class BlobStoreMissing(BlobStoreError, FileNotFoundError):
    """The store's location (a bucket) does not exist."""


class OneFlushBlobs(Protocol):
    """A blob store's side of one device flush per batch (FORMAT.md, "One flush per batch"): local files
    that the log's syncfs flushes together with the batch's records."""

    # A descriptor in the blobs' directory, for the batch's syncfs (set by enable_one_flush()).
    sync_fd: int | None
    # Whether puts wait for make_durable() (a ledger's store) rather than flush one by one; only such a
    # store can leave them for the batch's flush.
    deferred: bool

    @property
    def device(self) -> int:
        """``st_dev`` of the filesystem holding the blobs (one syncfs covers the log only on the same one)."""
        ...

    def enable_one_flush(self) -> None:
        """From now on, leave put blobs unflushed and unnamed until the batch's ``publish()``."""
        ...

    def publish(self) -> list[Any]:
        """Under the log lock: rename every blob put since the last call to its address, unflushed."""
        ...

    def unpublish(self, published: list[Any]) -> None:
        """Undo ``publish()`` after the batch's flush failed."""
        ...

    def needs_syncfs(self) -> bool:
        """Whether the batch published bytes that only a syncfs flushes (else ``flush_names`` will do)."""
        ...

    def flush_names(self) -> None:
        """Fsync the directories the batch renamed into (a batch with no small blob)."""
        ...

    def batch_flushed(self) -> None:
        """The batch's flush returned: forget what it published."""
        ...

    def complete(self, sha256: str, size: int | None) -> bool:
        """Whether the blob is present and whole (recovery's check of the last batch)."""
        ...

    def remove_incomplete(self, sha256: str, size: int | None) -> bool:
        """Remove the blob's file if it is present but not whole; returns whether it did."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the blob's name is present."""
        ...

    def read_bytes(self, sha256: str) -> bytes:
        """A blob's bytes, checked against its SHA-256."""
        ...


class BlobStore(Protocol):
    """Content-addressed blob storage; every method is blocking (run it in a thread)."""

    location: str  # where the blobs live (a directory or a URL), for messages
    # How many reads (verify, size) a caller walking many blobs may run at once: 1 for a local disk,
    # more where each read waits on a round trip (S3).
    read_concurrency: int
    # How many puts one process runs at once (more wait for a slot): on a local disk a put is mostly
    # short system calls, and many threads making them at once mostly wait to take the GIL back.
    put_concurrency: int

    def put_file(self, path: str, *, adopt: bool = False) -> BlobInfo:
        """Store a file's bytes; with ``adopt`` the store may share the file's inode (``BlobInfo.linked``)."""
        ...

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store bytes."""
        ...

    def make_durable(self) -> None:
        """Flush and publish everything put so far; called before any event naming it is written.

        Raises if any flush fails, and then publishes none of the failed blobs.
        """
        ...

    def read_bytes(self, sha256: str) -> bytes:
        """Return a blob's bytes, checked against its SHA-256; ``FileNotFoundError`` if absent."""
        ...

    def copy_to(self, sha256: str, dest: str) -> None:
        """Stream a blob into the new file ``dest``, checking its SHA-256 on the way."""
        ...

    def local_file(self, sha256: str) -> Path:
        """A read-only local file holding the blob's checked bytes (fetched first if the store is remote);
        ``FileNotFoundError`` if absent. Never write to it."""
        ...

    def names_blob(self, path: Path, sha256: str) -> bool:
        """Whether ``path`` is this store's own local file for the blob ``sha256`` (a ``file://`` URI to it)."""
        ...

    def size(self, sha256: str) -> int:
        """The stored blob's size in bytes; ``FileNotFoundError`` if absent."""
        ...

    def delete(self, sha256: str) -> bool:
        """Remove a blob for good; returns whether it was there. Only the caller knows no event needs it."""
        ...

    def close(self) -> None:
        """Release what puts never made durable hold (their temp files are removed)."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""
        ...

    def uri(self, sha256: str) -> str:
        """A URI users can open to read the blob."""
        ...

    def iter_blobs(self) -> Iterator[str]:
        """Every stored blob's SHA-256."""
        ...

    def verify(self, sha256: str) -> bool:
        """Whether the stored bytes (in the store itself, never a cache) still hash to ``sha256``;
        ``FileNotFoundError`` if absent."""
        ...

    def one_flush_side(self) -> OneFlushBlobs | None:
        """This store's side of one flush per batch (and of recovery's check of the last batch); None when
        its blobs are not local files."""
        ...

    def blob_stat(self, sha256: str) -> tuple[int, float]:
        """(size in bytes, last-modified time in seconds since the epoch) of a stored blob;
        ``FileNotFoundError`` if absent. gc spares orphans younger than its grace by this time."""
        ...
