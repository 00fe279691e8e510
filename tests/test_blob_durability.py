"""A blob is durable (bytes fsynced, directory entry fsynced) before the event naming it is appended."""

from __future__ import annotations

import os

import anyio

import ledger.filelog as filelog
import store.local as local
from facade import open_ledger
from ledger.events import decode_event


def test_blob_directory_synced_before_its_event(root, tmp_path, monkeypatch):
    """For every appended event, its blob's shard dir was fsynced after the blob's rename and before the append."""
    trace: list[tuple[str, object]] = []
    real_fsync_dir = local._fsync_dir
    real_publish = local.LocalBlobStore._publish
    real_append = filelog.SegmentLog.append_batch

    def fsync_dir(path):
        trace.append(("dir", path))
        real_fsync_dir(path)

    def publish(self, tmp, sha):
        real_publish(self, tmp, sha)
        trace.append(("published", sha))

    def append_batch(self, payloads, on_record):
        trace.append(("append", [decode_event(p).sha256 for p in payloads]))
        return real_append(self, payloads, on_record)

    monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(local.LocalBlobStore, "_publish", publish)
    monkeypatch.setattr(filelog.SegmentLog, "append_batch", append_batch)
    files = []
    for i in range(40):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(os.urandom(64))
        files.append(f)

    async def save(arts, f):
        await arts.save(str(f), kind="blob")

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            async with anyio.create_task_group() as tg:
                for f in files:
                    tg.start_soon(save, arts, f)
            return len(await arts.list())

    assert anyio.run(main) == 40
    blobs_root = root.resolve() / "blobs" / "sha256"
    batches = [(i, shas) for i, (what, shas) in enumerate(trace) if what == "append"]
    assert sum(len(s) for _, s in batches) == 40
    assert len(batches) < 40, "64-way concurrency should have shared group commits"
    for at, shas in batches:
        for sha in shas:
            published = trace.index(("published", sha))
            shard = str(blobs_root / sha[:2])
            assert any(what == "dir" and p == shard for what, p in trace[published:at]), (
                f"event for blob {sha} appended before its directory entry was fsynced"
            )
    dir_syncs = sum(1 for what, _ in trace if what == "dir")
    assert dir_syncs < 40 + 1 + len(batches), "directory fsyncs should be shared per batch"


def test_store_used_alone_syncs_directories_immediately(tmp_path, monkeypatch):
    """Without a ledger driving sync_dirs(), each put makes its directory entry durable at once."""
    seen: list[str] = []
    real = local._fsync_dir
    monkeypatch.setattr(local, "_fsync_dir", lambda p: (seen.append(p), real(p)))
    store = local.LocalBlobStore(tmp_path / "blobs")
    info = store.put_bytes(b"hello")
    assert str(store.path(info.sha256).parent) in seen
