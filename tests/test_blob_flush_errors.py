"""Blob flush errors are never missed: bytes are fsynced through the fd that wrote them (a reopened fd
may not see an earlier writeback error), syncfs is not trusted to report errors (kernels < 5.8), and
a failed flush fails the save before any event is written, leaving nothing that names a lost blob."""

from __future__ import annotations

import errno
import hashlib
import os

import anyio
import pytest

import artifact_ledger.store.durable as durable
import artifact_ledger.store.local as local
from artifact_ledger import LedgerPoisoned, open_ledger
from fdtools import fd_path

# These pin the three-flush protocol's blob flushes (tests/test_one_flush.py pins the one-flush one).
pytestmark = pytest.mark.usefixtures("three_flushes")

POISON = b"POISON"


@pytest.fixture
def eio_on_writing_fd(monkeypatch):
    """The real os.fsync fails with EIO on an fd that wrote POISON bytes into a blob temp file, as the
    kernel reports a writeback error to the fds open when it happened; any other fd (one opened later
    on the same file) is told all is well."""
    bad: set[int] = set()
    real_write, real_fsync, real_close = os.write, os.fsync, os.close

    def write(fd, data):
        if POISON in bytes(data) and "/blobs/tmp/" in fd_path(fd):
            bad.add(fd)
        return real_write(fd, data)

    def fsync(fd):
        if fd in bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    def close(fd):
        bad.discard(fd)
        return real_close(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "close", close)
    return bad


def _check_no_event_names_a_lost_blob(root, lost_sha):
    async def main():
        async with open_ledger(root) as led:
            arts = await led.artifacts(run_id="r", graph_id="g", node_id="n").list()
            for a in arts:
                assert led.store.verify(a.sha256), f"{a.artifact_id} names a blob that is not intact"
            return arts

    arts = anyio.run(main)
    assert lost_sha not in {a.sha256 for a in arts}
    assert not (root / "blobs" / "sha256" / lost_sha[:2] / lost_sha).exists()
    assert os.listdir(root / "blobs" / "tmp") == []
    return arts


def test_failed_blob_fsync_fails_the_save_before_any_event(root, tmp_path, eio_on_writing_fd):
    """One save whose blob cannot be flushed: it raises, no event is appended, the temp file is gone.
    (Old code: closed the fd, reopened the file, fsynced that one, saw success and acknowledged.)"""
    src = tmp_path / "w.bin"
    src.write_bytes(POISON + os.urandom(32))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            with pytest.raises((OSError, LedgerPoisoned)) as info:
                await arts.save(str(src), kind="blob")
            assert "Input/output error" in str(info.value) or "EIO" in repr(info.value)

    anyio.run(main)
    assert _check_no_event_names_a_lost_blob(root, sha) == []


def test_syncfs_success_is_not_trusted(root, tmp_path, eio_on_writing_fd, monkeypatch):
    """Many blobs flushed with one syncfs that reports success (as kernels before 5.8 do even after a
    writeback error): the blob whose own fd reports EIO still fails its save, and no event names it.
    (Old code: trusted syncfs and acknowledged every save.)"""
    if not durable.syncfs_available():
        pytest.skip("no syncfs on this platform")
    calls = []

    def syncfs(path):
        calls.append(path)  # succeeds and reports nothing, like an old kernel

    monkeypatch.setattr(durable, "syncfs", syncfs)
    files = []
    for i in range(24):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes((POISON if i == 11 else b"fine") + os.urandom(32))
        files.append(f)
    lost = hashlib.sha256(files[11].read_bytes()).hexdigest()
    outcome: dict[int, BaseException | None] = {}

    async def save(arts, i):
        try:
            await arts.save(str(files[i]), kind="blob")
            outcome[i] = None
        except (OSError, LedgerPoisoned) as exc:
            outcome[i] = exc

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            async with anyio.create_task_group() as tg:
                for i in range(len(files)):
                    tg.start_soon(save, arts, i)

    anyio.run(main)
    assert calls, "the batch was expected to take the syncfs path"
    assert outcome[11] is not None, "the save of a blob whose flush failed was acknowledged"
    saved = _check_no_event_names_a_lost_blob(root, lost)
    assert len(saved) == sum(1 for e in outcome.values() if e is None)


@pytest.fixture
def os_order(monkeypatch):
    """Real os.fsync (by path), renames into the store, in order."""
    events: list[tuple] = []
    real_fsync, real_rename = os.fsync, local._rename

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", fd_path(fd)))

    def rename(src, dst):
        real_rename(src, dst)
        events.append(("rename", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(local, "_rename", rename)
    return events


@pytest.mark.parametrize("how", ["put_bytes", "put_file"])
def test_standalone_store_fsyncs_bytes_then_renames_then_flushes_the_directories(tmp_path, os_order, how):
    """A store used on its own (deferred=False): each put fsyncs the temp file's bytes before its rename,
    and the new shard and its parent after it, before returning. A store that stops fsyncing fails here."""
    store = local.LocalBlobStore(tmp_path / "blobs")
    data = b"standalone " + os.urandom(8)
    if how == "put_bytes":
        info = store.put_bytes(data)
    else:
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        info = store.put_file(src)
    final = str(store.path(info.sha256))
    ren = next(i for i, e in enumerate(os_order) if e[0] == "rename" and e[2] == final)
    tmp = os_order[ren][1]
    assert ("fsync", tmp) in os_order[:ren], "bytes not fsynced before the rename"
    shard = os.path.dirname(final)
    assert ("fsync", shard) in os_order[ren:], "rename not flushed"
    assert ("fsync", os.path.dirname(shard)) in os_order[ren:], "new shard not flushed into its parent"
    assert store.read_bytes(info.sha256) == data


def test_ledger_blobs_are_fsynced_through_their_writing_fd(root, tmp_path, monkeypatch):
    """In a ledger, the fsync that makes a blob durable is on the very fd that wrote it (the order
    against rename and append is checked by test_blob_durability.py)."""
    # fd numbers are reused: an fd counts as the writer only while it stays open after writing.
    writing: dict[int, str] = {}
    written: set[str] = set()
    flushed_by_writer: set[str] = set()
    real_write, real_fsync, real_close = os.write, os.fsync, os.close

    def write(fd, data):
        path = fd_path(fd)
        if "/blobs/tmp/" in path:
            writing[fd] = path
            written.add(path)
        return real_write(fd, data)

    def fsync(fd):
        real_fsync(fd)
        if fd in writing:
            flushed_by_writer.add(writing[fd])

    def close(fd):
        writing.pop(fd, None)
        real_close(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "close", close)
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(100))

    async def main():
        async with open_ledger(root) as led:
            await led.artifacts(run_id="r", graph_id="g", node_id="n").save(str(src), kind="blob")

    anyio.run(main)
    assert written and written <= flushed_by_writer, "a blob was not fsynced through the fd that wrote it"


def test_open_pending_fds_are_bounded(tmp_path, monkeypatch):
    """Past MAX_OPEN_PENDING pending blobs, puts flush and close their own fd; all still publish."""
    monkeypatch.setattr(local, "MAX_OPEN_PENDING", 3)
    store = local.LocalBlobStore(tmp_path / "blobs", deferred=True)
    blobs = [os.urandom(16) for _ in range(10)]
    infos = [store.put_bytes(b) for b in blobs]
    tmp_dir = str(tmp_path / "blobs" / "tmp")
    open_parts = [fd for fd in os.listdir("/proc/self/fd")
                  if os.path.dirname(os.path.realpath(f"/proc/self/fd/{fd}")) == os.path.realpath(tmp_dir)]
    assert len(open_parts) == 3
    store.make_durable()
    assert [store.read_bytes(i.sha256) for i in infos] == blobs
    assert os.listdir(tmp_dir) == []


def test_after_a_failed_flush_nothing_more_is_published(tmp_path, eio_on_writing_fd):
    """A failed flush discards every pending blob, including ones whose saves have not appended yet; so
    every later make_durable() fails too, and no such save can write an event naming a discarded blob."""
    store = local.LocalBlobStore(tmp_path / "blobs", deferred=True)
    waiting = store.put_bytes(b"put by a save that has not reached the log yet")
    store.put_bytes(POISON + b" flush fails")
    with pytest.raises(OSError, match="Input/output error"):
        store.make_durable()
    assert not store.exists(waiting.sha256)
    later = store.put_bytes(b"a later save")
    with pytest.raises(OSError, match="earlier blob flush failed"):
        store.make_durable()
    assert not store.exists(later.sha256)
    store.close()
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
