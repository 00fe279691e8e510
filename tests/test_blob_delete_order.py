"""A blob deletion (gc) is durable before delete() returns: the unlink, then an fsync of its shard directory."""

from __future__ import annotations

import os
import threading

from artifact_ledger.store.local import LocalBlobStore


def _recording(monkeypatch, log, gate=None):
    real_unlink, real_fsync = os.unlink, os.fsync

    def unlink(path, *a, **kw):
        log.append(("unlink", os.fspath(path)))
        return real_unlink(path, *a, **kw)

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        if gate is not None:
            gate.wait(10)
        return real_fsync(fd)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)


def test_delete_unlinks_then_fsyncs_the_shard_directory(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"doomed").sha256
    store.make_durable()
    path = str(store.path(sha))
    log: list[tuple[str, str]] = []
    _recording(monkeypatch, log)
    assert store.delete(sha) is True
    assert log == [("unlink", path), ("fsync", os.path.dirname(path))]
    assert not os.path.exists(path)
    log.clear()
    assert store.delete(sha) is False and log == [("unlink", path)]  # absent: nothing to flush


def test_delete_does_not_return_before_the_directory_fsync_does(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"doomed").sha256
    store.make_durable()
    log: list[tuple[str, str]] = []
    gate = threading.Event()
    _recording(monkeypatch, log, gate)
    done = threading.Event()
    t = threading.Thread(target=lambda: (store.delete(sha), done.set()))
    t.start()
    try:
        for _ in range(1000):
            if any(op == "fsync" for op, _ in log):
                break
            threading.Event().wait(0.01)
        assert any(op == "fsync" for op, _ in log)
        assert not done.wait(0.2)  # blocked in the fsync: delete() has not returned
    finally:
        gate.set()
        t.join(10)
    assert done.is_set()
