"""Large puts copy while a helper thread hashes (``store.base.copy_hashing``): the bytes stored and their
address are exactly the source's at every size around the chunk and writeback boundaries, a failing
write or hash fails the put with nothing left behind and no helper thread left running, and the
writeback hints cover exactly what was copied."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import resource
import signal
import threading
from typing import Iterator

import anyio
import pytest

from artifact_ledger.facade import one_flush, open_ledger
from artifact_ledger.store import base
from artifact_ledger.store.local import LocalBlobStore

CHUNK = base.COPY_CHUNK
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, base.WRITEBACK_CHUNKS * CHUNK,
         base.WRITEBACK_CHUNKS * CHUNK + 1, (2 * base.WRITEBACK_CHUNKS + 1) * CHUNK + 3]


def _data(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def _helpers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "blob-hash"]


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Files of this process may not grow past ``limit`` bytes: a write past it fails with EFBIG."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("writeback", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_copies_exactly_and_hashes_what_it_copied(tmp_path, size, writeback):
    """From where both descriptors stand (a put has already copied its first chunk), to EOF."""
    data = _data(size)
    head = min(size, 3)
    src = tmp_path / "src"
    src.write_bytes(data)
    rfd = os.open(src, os.O_RDONLY)
    wfd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        digest = hashlib.sha256(data[:head])
        os.write(wfd, os.read(rfd, head))
        assert base.copy_hashing(rfd, wfd, digest, writeback=writeback) == size - head
    finally:
        os.close(rfd)
        os.close(wfd)
    assert (tmp_path / "dst").read_bytes() == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert _helpers_alive() == []


@pytest.mark.parametrize("writeback", [False, True])
def test_writeback_hints_cover_exactly_the_bytes_copied(tmp_path, monkeypatch, writeback):
    """With writeback, each run of WRITEBACK_CHUNKS chunks just copied is handed to DONTNEED (it starts
    their writeback), in order and nothing else; without it, none is."""
    n = base.WRITEBACK_CHUNKS
    size = (2 * n + 1) * CHUNK + 3
    (tmp_path / "src").write_bytes(_data(size))
    hints: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        hints.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(base.os, "posix_fadvise", fadvise)
    rfd = os.open(tmp_path / "src", os.O_RDONLY)
    wfd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        base.copy_hashing(rfd, wfd, hashlib.sha256(), writeback=writeback)
    finally:
        os.close(rfd)
        os.close(wfd)
    expect = [(0, n * CHUNK, os.POSIX_FADV_DONTNEED), (n * CHUNK, n * CHUNK, os.POSIX_FADV_DONTNEED)]
    assert hints == (expect if writeback else [])


def test_a_failing_write_raises_and_stops_the_helper(tmp_path):
    """A real failing write (a pipe whose reader is gone: EPIPE) raises from copy_hashing; the helper
    thread has finished when it does."""
    (tmp_path / "src").write_bytes(_data(4 * CHUNK))
    rfd = os.open(tmp_path / "src", os.O_RDONLY)
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(BrokenPipeError):
            base.copy_hashing(rfd, w, hashlib.sha256(), writeback=False)
    finally:
        os.close(rfd)
        os.close(w)
    assert _helpers_alive() == []


def test_a_failing_hash_raises_in_the_copying_thread(tmp_path):
    """An error of the digest (in the helper thread) is raised by copy_hashing, which stops copying."""
    class Broken:
        calls = 0

        def update(self, chunk):
            Broken.calls += 1
            if Broken.calls == 2:
                raise MemoryError("the digest failed")

    (tmp_path / "src").write_bytes(_data(12 * CHUNK))
    rfd = os.open(tmp_path / "src", os.O_RDONLY)
    wfd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with pytest.raises(MemoryError, match="the digest failed"):
            base.copy_hashing(rfd, wfd, Broken(), writeback=False)
    finally:
        os.close(rfd)
        os.close(wfd)
    assert _helpers_alive() == []
    assert (tmp_path / "dst").stat().st_size < 12 * CHUNK  # it stopped, a few chunks past the failure


def test_a_large_put_whose_write_fails_leaves_nothing(tmp_path):
    """A file-size limit makes the store's own write fail (EFBIG) part way through a large put: the put
    raises, no temp file and no blob remain, and no helper thread runs on."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=True)
    data = _data(6 * CHUNK + 11)
    (tmp_path / "src").write_bytes(data)
    with _file_size_limit(3 * CHUNK), pytest.raises(OSError) as info:
        store.put_file(tmp_path / "src")
    assert info.value.errno == errno.EFBIG
    assert _helpers_alive() == []
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert not store.exists(hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("protocol", ["one", "three"])
def test_large_saves_store_exactly_the_source(root, tmp_path, monkeypatch, protocol):
    """Saves of files around the boundaries, under either flush protocol, are stored under the source's
    SHA-256 with its bytes, and verify() agrees after a reopen."""
    monkeypatch.setenv(one_flush.ENV, protocol)
    sizes = [CHUNK - 1, CHUNK, CHUNK + 1, (base.WRITEBACK_CHUNKS + 1) * CHUNK + 7]

    async def main() -> None:
        async with open_ledger(root) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            for n in sizes:
                p = tmp_path / f"f{n}"
                p.write_bytes(_data(n))
                art = await fa.save(str(p), kind="blob")
                assert art.sha256 == hashlib.sha256(_data(n)).hexdigest() and art.bytes == n
                assert await fa.load_artifact_bytes(art.uri) == _data(n)
        async with open_ledger(root) as led:
            result = await led.verify()
            assert result.ok and result.blobs == len(sizes), result

    anyio.run(main)


@pytest.mark.parametrize("size", [0, CHUNK - 1, CHUNK, (base.WRITEBACK_CHUNKS + 1) * CHUNK + 7])
def test_copy_to_writes_the_blob_exactly(tmp_path, size):
    """An export (copy_to) of blobs around the chunk boundary: the new file holds exactly the blob."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    sha = store.put_bytes(_data(size)).sha256
    store.copy_to(sha, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == _data(size)
    assert _helpers_alive() == []


def test_copy_to_of_a_damaged_large_blob_raises_and_leaves_no_file(tmp_path):
    """A large blob whose bytes changed on disk: BlobCorrupted names it, and the copy is removed."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    data = _data(3 * CHUNK + 1)
    sha = store.put_bytes(data).sha256
    path = store.path(sha)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(2 * CHUNK + 5)
        f.write(b"\x00" if data[2 * CHUNK + 5] else b"\x01")
    with pytest.raises(base.BlobCorrupted) as info:
        store.copy_to(sha, tmp_path / "out")
    assert info.value.sha256 == sha
    assert not (tmp_path / "out").exists()


def test_copy_to_whose_write_fails_leaves_no_partial_file(tmp_path):
    """The export's own write fails part way (EFBIG under a file-size limit): the error is raised and the
    partial file removed; an existing destination is never overwritten."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    sha = store.put_bytes(_data(6 * CHUNK)).sha256
    with _file_size_limit(2 * CHUNK), pytest.raises(OSError) as info:
        store.copy_to(sha, tmp_path / "out")
    assert info.value.errno == errno.EFBIG
    assert not (tmp_path / "out").exists()
    assert _helpers_alive() == []
    (tmp_path / "taken").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        store.copy_to(sha, tmp_path / "taken")
    assert (tmp_path / "taken").read_bytes() == b"mine"
