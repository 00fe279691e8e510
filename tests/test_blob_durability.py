"""A blob is durable (bytes flushed, then renamed to its address, then the rename flushed) before the
event naming it is appended; a blob's name therefore always means complete bytes."""

from __future__ import annotations

import os

import anyio
import pytest

import artifact_ledger.ledger.filelog as filelog
import artifact_ledger.store.durable as durable
import artifact_ledger.store.local as local
from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.events import decode_event


# These pin the three-flush protocol's blob flushes (tests/test_one_flush.py pins the one-flush one).
pytestmark = pytest.mark.usefixtures("three_flushes")

@pytest.fixture
def trace(monkeypatch):
    """Record data flushes, syncfs calls, renames into the store, directory fsyncs and appends, in order."""
    events: list[tuple] = []
    real = (durable.fsync_fd, durable.syncfs, local._fsync_dir, local._rename, filelog.SegmentLog.append_batch,
            local.LocalBlobStore._publish)

    def fsync_fd(fd):
        events.append(("data", os.readlink(f"/proc/self/fd/{fd}")))
        real[0](fd)

    def syncfs(p):
        events.append(("syncfs",))
        real[1](p)

    def fsync_dir(p):
        events.append(("dir", str(p)))
        real[2](p)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real[3](src, dst)

    def append_batch(self, payloads, on_record):
        events.append(("append", [decode_event(p).sha256 for p in payloads]))
        return real[4](self, payloads, on_record)

    def publish(self, tmp, sha, fd, size):
        events.append(("put", str(tmp)))
        real[5](self, tmp, sha, fd, size)

    monkeypatch.setattr(durable, "fsync_fd", fsync_fd)
    monkeypatch.setattr(durable, "syncfs", syncfs)
    monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(local, "_rename", rename)
    monkeypatch.setattr(filelog.SegmentLog, "append_batch", append_batch)
    monkeypatch.setattr(local.LocalBlobStore, "_publish", publish)
    return events


def _check_order(events, blobs_root):
    """For every appended event: its blob was flushed, renamed in, and the rename flushed, before the append."""
    appends = [(i, e[1]) for i, e in enumerate(events) if e[0] == "append"]
    assert appends
    for at, shas in appends:
        for sha in shas:
            final = str(blobs_root / sha[:2] / sha)
            renames = [i for i, e in enumerate(events[:at]) if e[0] == "rename" and e[2] == final]
            assert renames, f"blob {sha} was not in place when its event was appended"
            r = renames[-1]
            tmp = events[r][1]
            put = max(i for i, e in enumerate(events[:r]) if e[0] == "put" and e[1] == tmp)
            assert any(e == ("data", tmp) or e == ("syncfs",) for e in events[put:r]), f"{sha}: bytes not flushed"
            shard = str(blobs_root / sha[:2])
            assert any(e == ("dir", shard) or e == ("syncfs",) for e in events[r:at]), f"{sha}: rename not flushed"


def _files(tmp_path, n):
    out = []
    for i in range(n):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(os.urandom(64))
        out.append(f)
    return out


def test_concurrent_saves_flush_blobs_before_events(root, tmp_path, trace):
    """64-way concurrent saves: shared flushes (syncfs where available), still blobs before events."""
    files = _files(tmp_path, 48)

    async def save(arts, f):
        await arts.save(str(f), kind="blob")

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            async with anyio.create_task_group() as tg:
                for f in files:
                    tg.start_soon(save, arts, f)
            return len(await arts.list())

    assert anyio.run(main) == 48
    _check_order(trace, root.resolve() / "blobs" / "sha256")
    batches = [e for e in trace if e[0] == "append"]
    assert len(batches) < 48, "concurrent saves should share group commits"
    if durable.syncfs_available():
        assert ("syncfs",) in trace


def test_sequential_saves_fsync_each_blob(root, tmp_path, trace):
    """One save at a time: the blob file and its shard directory are fsynced, no filesystem-wide flush."""
    files = _files(tmp_path, 3)

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            for f in files:
                await arts.save(str(f), kind="blob")
            await arts.save(str(files[0]), kind="again")  # deduplicated: its blob is already in place

    anyio.run(main)
    blobs = root.resolve() / "blobs" / "sha256"
    _check_order(trace, blobs)
    assert ("syncfs",) not in trace
    data = [i for i, e in enumerate(trace) if e[0] == "data"]
    assert len(data) == 4
    # The deduplicated save writes nothing, but flushes the file it trusts (another process may have
    # renamed it in unflushed) and its shard and sha256/, all before its event is appended.
    last_append = max(i for i, e in enumerate(trace) if e[0] == "append")
    sha = trace[last_append][1][0]
    assert str(trace[data[-1]][1]) == str(blobs / sha[:2] / sha) and data[-1] < last_append
    flushed = {e[1] for e in trace[data[-1]:last_append] if e[0] == "dir"}
    assert {str(blobs / sha[:2]), str(blobs)} <= flushed


def test_store_used_alone_is_durable_at_once(tmp_path, trace):
    """Without a ledger, each put flushes its bytes and its directory entry before returning."""
    store = local.LocalBlobStore(tmp_path / "blobs")
    info = store.put_bytes(b"hello")
    assert store.path(info.sha256).read_bytes() == b"hello"
    assert ("dir", str(store.path(info.sha256).parent)) in trace


def test_deferred_blob_is_invisible_until_made_durable(tmp_path):
    """In a ledger's (deferred) store a put blob has no name until make_durable(); then it reads back."""
    store = local.LocalBlobStore(tmp_path / "blobs", deferred=True)
    info = store.put_bytes(b"later")
    assert not store.exists(info.sha256)
    store.make_durable()
    assert store.read_bytes(info.sha256) == b"later"


def test_dedup_flushes_a_name_another_process_may_not_have_flushed(root, tmp_path, trace):
    """A blob found already in place (maybe renamed by another process, not yet flushed) gets its
    directory entry flushed before this process appends an event naming it."""
    import hashlib

    data = os.urandom(64)
    sha = hashlib.sha256(data).hexdigest()
    src = tmp_path / "same.bin"
    src.write_bytes(data)

    async def main():
        async with open_ledger(root) as led:
            # Another process's rename into place, as this process would see it.
            final = led.store.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            final.write_bytes(data)
            trace.clear()
            await led.artifacts(run_id="r", graph_id="g", node_id="n").save(str(src), kind="blob")

    anyio.run(main)
    shard = str(root.resolve() / "blobs" / "sha256" / sha[:2])
    append = next(i for i, e in enumerate(trace) if e[0] == "append")
    assert not any(e[0] == "rename" for e in trace[:append]), "a present blob is not written again"
    assert any(e == ("dir", shard) or e == ("syncfs",) for e in trace[:append])
