"""One device flush per batch (FORMAT.md, "One flush per batch"): where it is chosen, the order of its
steps (blobs renamed in under the log lock, records written, one syncfs, then the acknowledgement), a
failing syncfs, recovery's check of the last batch, and dedup that never trusts an incomplete name."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger import LedgerPoisoned, open_ledger
from artifact_ledger.facade import one_flush
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.errors import LedgerWriteError, RecordsLost
from artifact_ledger.ledger.file import FileEventLog
from artifact_ledger.ledger.filelog import TornTailWarning
from artifact_ledger.store import durable, local
from artifact_ledger.store.local import LARGE_BLOB, LocalBlobStore
from fdtools import fd_path

RUN = dict(run_id="r", graph_id="g", node_id="n")
TIMEOUT = 60

needs_one_flush = pytest.mark.skipif(not durable.syncfs_reports_errors(),
                                     reason="needs Linux >= 5.8 (syncfs reporting errors)")


@pytest.fixture(autouse=True)
def _default_protocol(monkeypatch):
    monkeypatch.delenv(one_flush.ENV, raising=False)


def _src(d: Path, name: str, data: bytes) -> str:
    p = d / name
    p.write_bytes(data)
    return str(p)


def _blob(root: Path, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return root / "blobs" / "sha256" / sha[:2] / sha


def _ids(arts) -> list[str]:
    return [a.artifact_id for a in sorted(arts, key=lambda a: a.seq)]


# --------------------------------------------------------------------------- where it is used
def test_kernel_release_decides_whether_syncfs_reports_errors():
    """syncfs(2) reports writeback errors from Linux 5.8 on; older releases (or junk) do not qualify."""
    if not durable.syncfs_available():
        pytest.skip("no syncfs(2)")
    assert durable.syncfs_reports_errors("5.8.0")
    assert durable.syncfs_reports_errors("6.18.44-fc-v1045")
    assert durable.syncfs_reports_errors("5.10.0-23-amd64")
    assert not durable.syncfs_reports_errors("5.7.19")
    assert not durable.syncfs_reports_errors("4.19.0-25-amd64")
    assert not durable.syncfs_reports_errors("weird")


@needs_one_flush
def test_protocol_is_one_flush_where_safe_and_three_otherwise(root, tmp_path, monkeypatch):
    """A directory ledger with fsync uses one flush; ARTIFACT_LEDGER_BATCH_FLUSH=three, fsync=False, a
    kernel whose syncfs hides errors, or blobs on another filesystem keep the three flushes."""
    async def protocol(**kw) -> str:
        async with open_ledger(root, **kw) as led:
            return led.flush_protocol

    assert anyio.run(protocol) == "one"
    monkeypatch.setenv(one_flush.ENV, "three")
    assert anyio.run(protocol) == "three"
    monkeypatch.delenv(one_flush.ENV)
    assert anyio.run(lambda: protocol(fsync=False)) == "three"
    monkeypatch.setattr(durable, "syncfs_reports_errors", lambda release=None: False)
    assert anyio.run(protocol) == "three"
    monkeypatch.undo()
    monkeypatch.delenv(one_flush.ENV, raising=False)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        other = Path(shm) / f"one-flush-{os.getpid()}"
        try:
            log = FileEventLog(str(tmp_path / "log"), str(tmp_path / "ckpt"))
            store = LocalBlobStore(other, deferred=True)
            assert "different filesystems" in one_flush.why_not(log, store, fsync=True, read_only=False)
            assert one_flush.install(log, store, fsync=True, read_only=False) == "three"
            assert log.segments.batch_blobs is None and not store.one_flush
            store.close()
            log.close()
        finally:
            shutil.rmtree(other, ignore_errors=True)


def test_a_bad_protocol_name_is_refused_before_anything_is_created(root, monkeypatch):
    """ARTIFACT_LEDGER_BATCH_FLUSH must be 'one' or 'three'; anything else is a ValueError naming both,
    raised before the ledger directory exists."""
    monkeypatch.setenv(one_flush.ENV, "two")

    async def main():
        async with open_ledger(root):
            pass

    with pytest.raises(ValueError, match="'one'.*'three'"):
        anyio.run(main)
    assert not root.exists()


# --------------------------------------------------------------------------- the order of the steps
@needs_one_flush
def test_one_syncfs_per_batch_and_no_acknowledgement_before_it_returns(root, tmp_path, monkeypatch):
    """Under the log lock the batch renames its blobs in, writes its records, and calls syncfs once; the
    saves have not returned (nor are their events visible) while that syncfs is blocked, and small blobs
    see no fsync and the segment no fdatasync."""
    events: list[tuple] = []
    entered, release = threading.Event(), threading.Event()
    armed = False
    real_syncfs, real_rename, real_fsync_fd = filelog._syncfs_fd, local._rename, durable.fsync_fd
    real_append, real_fdatasync, real_pwrite = filelog.SegmentLog.append_batch, os.fdatasync, os.pwrite

    def syncfs_fd(fd, what):
        events.append(("syncfs",))
        if armed:
            entered.set()
            assert release.wait(TIMEOUT)
        real_syncfs(fd, what)
        events.append(("syncfs returned",))

    def append_batch(self, payloads, on_record):
        events.append(("append", len(payloads)))
        return real_append(self, payloads, on_record)

    def rename(a, b):
        events.append(("rename", str(b)))
        real_rename(a, b)

    def fsync_fd(fd):
        events.append(("fsync", fd_path(fd)))
        real_fsync_fd(fd)

    def fdatasync(fd):
        events.append(("fdatasync", fd_path(fd)))
        real_fdatasync(fd)

    def pwrite(fd, data, off):
        events.append(("pwrite", fd_path(fd)))
        return real_pwrite(fd, data, off)

    monkeypatch.setattr(filelog, "_syncfs_fd", syncfs_fd)
    monkeypatch.setattr(filelog.SegmentLog, "append_batch", append_batch)
    monkeypatch.setattr(local, "_rename", rename)
    monkeypatch.setattr(durable, "fsync_fd", fsync_fd)
    monkeypatch.setattr(filelog.os, "fdatasync", fdatasync)
    monkeypatch.setattr(filelog.os, "pwrite", pwrite)
    datas = [f"blob {i}".encode() * 100 for i in range(8)]

    async def main():
        nonlocal armed
        async with open_ledger(root) as led:
            assert led.flush_protocol == "one"
            fa = led.artifacts(**RUN)
            await fa.save(_src(tmp_path, "first", b"first"), kind="blob")
            events.clear()
            armed = True
            returned: list = []

            async def save(i: int) -> None:
                returned.append(await fa.save(_src(tmp_path, f"s{i}", datas[i]), kind="blob"))

            async with anyio.create_task_group() as tg:
                for i in range(len(datas)):
                    tg.start_soon(save, i)
                await anyio.to_thread.run_sync(entered.wait, TIMEOUT)
                await anyio.wait_all_tasks_blocked()
                assert returned == [], "a save returned while its batch's syncfs had not"
                assert led.head[0] == 1 and led.catalog.n == 1
                armed = False
                release.set()
            assert len(returned) == len(datas) and led.head[0] == 1 + len(datas)
            return [str(_blob(root, d)) for d in datas]

    addresses = anyio.run(main)
    kinds = [e[0] for e in events]
    assert not [e for e in events if e[0] == "fsync" and "/blobs/" in e[1]]
    # The flush after each small blob's rename is a syncfs; a batch whose blobs an earlier batch already
    # renamed in (and flushed) may fdatasync instead.
    for i, kind in enumerate(kinds):
        if kind == "rename":
            assert next(k for k in kinds[i:] if k in ("syncfs", "fdatasync")) == "syncfs"
    first_syncfs = kinds.index("syncfs")
    renamed = {e[1] for e in events[:first_syncfs] if e[0] == "rename"}
    first_append = kinds.index("append")
    assert kinds.index("rename") > first_append, "blobs are renamed in under the log lock, in append_batch"
    assert any(e[0] == "pwrite" and e[1].endswith(".seg") for e in events[first_append:first_syncfs])
    # The blocked batch renamed in at least the first save's blob; every blob got its name before a
    # syncfs that preceded its acknowledgement (all of them returned only after the release).
    assert renamed and renamed <= set(addresses)
    assert set(addresses) <= {e[1] for e in events if e[0] == "rename"}


@needs_one_flush
def test_a_large_blob_is_fsynced_before_its_name_exists(root, tmp_path, monkeypatch):
    """A blob of LARGE_BLOB bytes or more is fsynced through the fd that wrote it at put time, before it is
    renamed to its address (so recovery may trust its name and only stat it); a small one is not."""
    events: list[tuple] = []
    real_rename, real_fsync_fd = local._rename, durable.fsync_fd
    monkeypatch.setattr(local, "_rename", lambda a, b: (events.append(("rename", str(a))), real_rename(a, b)))
    monkeypatch.setattr(durable, "fsync_fd", lambda fd: (events.append(("fsync", fd_path(fd))), real_fsync_fd(fd)))
    big = os.urandom(LARGE_BLOB + 17)
    small = os.urandom(LARGE_BLOB - 1)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(_src(tmp_path, "big", big), kind="blob")
            await fa.save(_src(tmp_path, "small", small), kind="blob")

    anyio.run(main)
    fsyncs = [e[1] for e in events if e[0] == "fsync" and "/blobs/tmp/" in e[1]]
    renames = [e[1] for e in events if e[0] == "rename"]
    assert len(fsyncs) == 1 and len(renames) == 2
    assert events.index(("fsync", fsyncs[0])) < events.index(("rename", fsyncs[0]))


@needs_one_flush
def test_a_batch_without_small_blobs_flushes_its_names_and_records_not_the_filesystem(root, tmp_path, monkeypatch):
    """A batch that renamed in only large blobs (bytes flushed at put) fsyncs the directories it renamed into,
    then fdatasyncs the segment, and calls no syncfs (which would flush every other writer's dirty pages);
    a batch naming no new blob (a pin) only fdatasyncs. A small blob brings the syncfs back."""
    events: list[tuple] = []
    real_syncfs, real_fsync_dir, real_fdatasync = filelog._syncfs_fd, local._fsync_dir, os.fdatasync
    monkeypatch.setattr(filelog, "_syncfs_fd", lambda fd, what: (events.append(("syncfs",)), real_syncfs(fd, what)))
    monkeypatch.setattr(local, "_fsync_dir", lambda d: (events.append(("dir", str(d))), real_fsync_dir(d)))
    monkeypatch.setattr(filelog.os, "fdatasync", lambda fd: (events.append(("fdatasync", fd_path(fd))),
                                                             real_fdatasync(fd)))
    big = os.urandom(LARGE_BLOB)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(_src(tmp_path, "warm", b"warm"), kind="blob")
            events.clear()
            art = await fa.save(_src(tmp_path, "big", big), kind="blob")
            big_events = list(events)
            events.clear()
            await fa.pin(art.artifact_id)
            pin_events = list(events)
            events.clear()
            await fa.save(_src(tmp_path, "small", b"small again"), kind="blob")
            return big_events, pin_events, list(events)

    big_events, pin_events, small_events = anyio.run(main)
    shard = str(_blob(root, big).parent)
    assert ("syncfs",) not in big_events and ("dir", shard) in big_events
    datasync = [i for i, e in enumerate(big_events) if e[0] == "fdatasync" and e[1].endswith(".seg")]
    assert datasync and big_events.index(("dir", shard)) < datasync[0]
    assert ("syncfs",) not in pin_events and any(e[0] == "fdatasync" for e in pin_events)
    assert ("syncfs",) in small_events and not any(e[0] == "fdatasync" for e in small_events)


@needs_one_flush
def test_failed_syncfs_acknowledges_nothing_removes_the_names_and_poisons(root, tmp_path, monkeypatch):
    """EIO from the batch's syncfs: every save of the batch fails (LedgerWriteError, EIO, naming the
    segment), the records are cut from the segment, the blobs it renamed in lose their names again, the
    process writes nothing more (LedgerPoisoned); a reopen holds only what was acknowledged and verifies."""
    fail = False
    real_syncfs = filelog._syncfs_fd

    def syncfs_fd(fd, what):
        if fail:
            raise OSError(errno.EIO, f"syncfs failed: {os.strerror(errno.EIO)}", what)
        real_syncfs(fd, what)

    monkeypatch.setattr(filelog, "_syncfs_fd", syncfs_fd)
    datas = [f"lost {i}".encode() * 50 for i in range(5)]

    async def main():
        nonlocal fail
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            kept = await fa.save(_src(tmp_path, "kept", b"kept bytes"), kind="blob")
            seg = sorted((root / "log").glob("*.seg"))[-1]
            size = seg.stat().st_size
            fail = True
            errors: list[BaseException] = []

            async def save(i: int) -> None:
                try:
                    await fa.save(_src(tmp_path, f"l{i}", datas[i]), kind="blob")
                except Exception as exc:  # noqa: BLE001 - every outcome is checked below
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for i in range(len(datas)):
                    tg.start_soon(save, i)
            fail = False
            assert len(errors) == len(datas)
            write_errors = [e for e in errors if isinstance(e, LedgerWriteError)]
            assert write_errors and all(e.errno == errno.EIO and str(e.filename).endswith(".seg")
                                        for e in write_errors)
            assert all(isinstance(e, (LedgerWriteError, LedgerPoisoned)) for e in errors)
            assert seg.stat().st_size == size, "the failed batch must be cut from the segment"
            assert led.head[0] == 1
            with pytest.raises(LedgerPoisoned):
                await fa.save(_src(tmp_path, "after", b"after the failure"), kind="blob")
            return kept.artifact_id

    kept = anyio.run(main)
    for d in datas:
        assert not _blob(root, d).exists(), "a blob of the failed batch kept its name"

    async def reopen():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            ids = _ids(await fa.list(scope="all"))
            assert (await led.verify()).ok
            again = await fa.save(_src(tmp_path, "again", datas[0]), kind="blob")
            assert await fa.load_artifact_bytes(again.uri) == datas[0]
            return ids

    assert anyio.run(reopen) == [kept]


# --------------------------------------------------------------------------- recovery of the last batch
def _two_batches(root: Path, tmp_path: Path, datas: list[bytes], *,
                 directory: bool = False) -> tuple[list[str], list[bytes], str]:
    """One save, then concurrent saves of ``datas`` (then, with ``directory``, an ingest_dir on its own);
    the checkpoint files are removed afterwards, as after a power cut before any was written. Returns the
    ids recorded before the log's last batch, the contents saved in that batch, and its seq range."""
    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(_src(tmp_path, "first", b"the first artifact"), kind="blob")
            async with anyio.create_task_group() as tg:
                for i, d in enumerate(datas):
                    tg.start_soon(lambda i=i, d=d: fa.save(_src(tmp_path, f"last{i}", d), kind="blob"))
            if directory:
                tree = Path(await fa.stage_dir())
                (tree / "sub").mkdir(parents=True)
                (tree / "a.txt").write_bytes(b"alpha" * 10)
                (tree / "sub" / "b.bin").write_bytes(b"member bytes" * 30)
                await fa.ingest_dir(tree, kind="dataset")
            recs = list(led._log.segments.read_range(1))
            first = recs[-1].batch_first
            arts = sorted(await fa.list(scope="all"), key=lambda a: a.seq)
            by_sha = {hashlib.sha256(d).hexdigest(): d for d in datas}
            return ([a.artifact_id for a in arts if a.seq < first],
                    [by_sha[a.sha256] for a in arts if a.seq >= first and a.sha256 in by_sha],
                    f"seq {first}..{recs[-1].seq}")

    out = anyio.run(main)
    shutil.rmtree(root / "checkpoints")
    (root / "checkpoints").mkdir()
    return out


def _open_ids(root: Path, **kw) -> tuple[list[str], list[str], bool]:
    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with open_ledger(root, **kw) as led:
                ids = _ids(await led.artifacts(**RUN).list(scope="all"))
                ok = (await led.verify()).ok
        return ids, [str(w.message) for w in caught if issubclass(w.category, TornTailWarning)], ok

    return anyio.run(main)


@needs_one_flush
@pytest.mark.parametrize("damage", ["zero-length", "short", "garbled"])
def test_a_last_batch_naming_an_incomplete_blob_is_cut_on_open(root, tmp_path, damage):
    """What a power cut before the batch's syncfs can leave: the records and a rename, without the bytes.
    The open cuts the whole last batch (a TornTailWarning names it), removes the incomplete blob file,
    keeps what was acknowledged before, verifies, and appends after it."""
    datas = [f"last batch {i}".encode() * 60 for i in range(4)]
    acked, last, seqs = _two_batches(root, tmp_path, datas)
    seg = sorted((root / "log").glob("*.seg"))[-1]
    size = seg.stat().st_size
    victim = _blob(root, last[-1])
    data = victim.read_bytes()
    victim.chmod(0o644)
    victim.write_bytes({"zero-length": b"", "short": data[:100], "garbled": bytes(len(data))}[damage])
    ids, torn, ok = _open_ids(root)
    assert ids == acked and ok
    assert len(torn) == 1 and "last batch" in torn[0] and seqs in torn[0]
    assert not victim.exists(), "the incomplete blob file must be removed"
    assert seg.stat().st_size < size
    # The batch's whole blobs stay, named by nothing now: gc takes them after its grace period.
    assert all(_blob(root, d).exists() for d in last[:-1])
    ids, torn, ok = _open_ids(root)
    assert ids == acked and torn == [] and ok


@needs_one_flush
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_a_last_batch_read_over_several_scan_chunks_is_held_and_judged_whole(root, tmp_path, monkeypatch, chunk):
    """Replay hands the segment log's records over in chunks; a last batch that spans chunks (and chunks
    that end inside earlier batches) is still held back whole: cut whole when one of its blobs is
    incomplete, and kept whole, with everything before it, when none is."""
    datas = [f"spanning {i}".encode() * 60 for i in range(5)]
    acked, last, seqs = _two_batches(root, tmp_path, datas)
    monkeypatch.setattr(filelog, "SCAN_CHUNK", chunk)
    ids, torn, ok = _open_ids(root)
    assert len(ids) == 1 + len(datas) and ids[:len(acked)] == acked and torn == [] and ok
    shutil.rmtree(root / "checkpoints")
    (root / "checkpoints").mkdir()
    victim = _blob(root, last[0])
    victim.chmod(0o644)
    victim.write_bytes(b"")
    ids, torn, ok = _open_ids(root)
    assert ids == acked and ok
    assert len(torn) == 1 and seqs in torn[0]


@needs_one_flush
def test_the_cut_of_a_torn_last_batch_is_flushed_before_its_blobs_go_and_before_open_returns(
        root, tmp_path, monkeypatch):
    """Recovery's own writes, in order: the segment is truncated at the batch and fsynced, and only then is
    the incomplete blob unlinked and its shard directory fsynced; open returns after all of them. (A cut
    left unflushed could come back after the next crash, with records of seqs the log has reused.)"""
    datas = [f"cut order {i}".encode() * 60 for i in range(3)]
    acked, last, _ = _two_batches(root, tmp_path, datas)
    victim = _blob(root, last[-1])
    victim.chmod(0o644)
    victim.write_bytes(b"")
    seg = str(sorted((root / "log").glob("*.seg"))[-1])
    events: list[tuple[str, str]] = []
    real_ftruncate, real_fsync, real_unlink, real_fsync_dir = os.ftruncate, os.fsync, os.unlink, local._fsync_dir

    def ftruncate(fd, length):
        events.append(("truncate", fd_path(fd)))
        real_ftruncate(fd, length)

    def fsync(fd):
        events.append(("fsync", fd_path(fd)))
        real_fsync(fd)

    def unlink(path, *a, **kw):
        events.append(("unlink", str(path)))
        real_unlink(path, *a, **kw)

    def fsync_dir(path):
        events.append(("fsync dir", str(path)))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
    ids, torn, ok = _open_ids(root)
    events.append(("returned", ""))
    assert ids == acked and len(torn) == 1 and ok
    cut = events.index(("truncate", seg))
    flushed = events.index(("fsync", seg), cut)
    gone = events.index(("unlink", str(victim)))
    shard = events.index(("fsync dir", str(victim.parent)), gone)
    assert cut < flushed < gone < shard < events.index(("returned", "")), events


@needs_one_flush
def test_a_last_batch_whose_directory_member_is_missing_is_cut(root, tmp_path):
    """The check covers directory artifacts: a member blob of an ingest_dir in the last batch, missing,
    cuts the batch."""
    acked, _, seqs = _two_batches(root, tmp_path, [b"a file of the batch" * 20], directory=True)
    _blob(root, b"member bytes" * 30).unlink()
    ids, torn, ok = _open_ids(root)
    assert ids == acked and ok and len(torn) == 1 and "missing" in torn[0] and seqs in torn[0]


@needs_one_flush
def test_a_whole_last_batch_is_kept_and_an_earlier_one_is_never_cut(root, tmp_path):
    """A last batch whose blobs are whole is kept; a broken blob of an earlier batch is damage, not a torn
    tail: nothing is cut and verify() reports it."""
    acked, _, _ = _two_batches(root, tmp_path, [f"kept {i}".encode() * 60 for i in range(3)])
    ids, torn, ok = _open_ids(root)
    assert len(ids) == 4 and ids[0] == acked[0] and torn == [] and ok
    first = _blob(root, b"the first artifact")
    first.chmod(0o644)
    first.write_bytes(b"")
    ids2, torn, ok = _open_ids(root)
    assert ids2 == ids and torn == [] and not ok


@needs_one_flush
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_the_batch_before_a_cut_one_is_proven_and_never_judged_again(root, tmp_path, read_only):
    """A torn last batch was written after the batch before it had flushed: once the open has cut it (or,
    read-only, left it out), the batch now last is an earlier one. A broken blob there is damage that
    verify() reports, never a second cut (before, the open cut it too and then raised ReplayAgain)."""
    # One save in each batch: the first artifact's batch is the one just before the last.
    acked, last, seqs = _two_batches(root, tmp_path, [b"proven" * 60])
    assert len(acked) == 1
    seg = sorted((root / "log").glob("*.seg"))[-1]
    for victim in (_blob(root, b"the first artifact"), _blob(root, last[-1])):
        victim.chmod(0o644)
        victim.write_bytes(b"")
    ids, torn, ok = _open_ids(root, read_only=read_only)
    assert ids == acked and not ok
    assert len(torn) == 1 and seqs in torn[0], torn
    if not read_only:
        assert seg.stat().st_size > 0
        ids, torn, ok = _open_ids(root)  # the cut stands; the damaged earlier blob is still only reported
        assert ids == acked and torn == [] and not ok


@needs_one_flush
def test_a_checkpoint_of_the_last_batch_forbids_cutting_it(root, tmp_path):
    """A checkpoint proves its record was acknowledged: a broken blob in a batch at or before it is damage,
    never cut. With the checkpoint usable the batch is not even re-read (verify() reports the blob); with
    it unusable but its name still there, the open raises RecordsLost; accept_loss=True cuts the batch."""
    acked, last, _ = _two_batches(root, tmp_path, [f"checkpointed {i}".encode() * 60 for i in range(3)])

    async def checkpoint():
        async with open_ledger(root) as led:
            await led.checkpoint()
            return led.head[0]

    head = anyio.run(checkpoint)
    victim = _blob(root, last[-1])
    victim.chmod(0o644)
    victim.write_bytes(b"")
    ids, torn, ok = _open_ids(root)
    assert len(ids) == head and torn == [] and not ok
    for ckpt in (root / "checkpoints").glob("*.ckpt"):
        data = bytearray(ckpt.read_bytes())
        data[-1] ^= 0xFF  # its payload CRC fails: unusable, but its name still records seq {head}
        ckpt.chmod(0o644)
        ckpt.write_bytes(bytes(data))
    with pytest.raises(RecordsLost, match="incomplete blobs"):
        _open_ids(root)
    ids, torn, ok = _open_ids(root, accept_loss=True)
    assert ids == acked and len(torn) == 1 and ok


@needs_one_flush
def test_read_only_open_reports_the_torn_last_batch_and_changes_nothing(root, tmp_path):
    """Read-only, the last batch naming an incomplete blob is reported (TornTailWarning, 'read-only') and
    left out; the segment and the blob file stay as they are."""
    acked, last, _ = _two_batches(root, tmp_path, [f"ro {i}".encode() * 60 for i in range(3)])
    seg = sorted((root / "log").glob("*.seg"))[-1]
    size = seg.stat().st_size
    victim = _blob(root, last[-1])
    victim.chmod(0o644)
    victim.write_bytes(b"xx")

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with open_ledger(root, read_only=True) as led:
                ids = _ids(await led.artifacts(**RUN).list(scope="all"))
        return ids, [str(w.message) for w in caught if issubclass(w.category, TornTailWarning)]

    ids, torn = anyio.run(main)
    assert ids == acked and len(torn) == 1 and "read-only" in torn[0]
    assert seg.stat().st_size == size and victim.read_bytes() == b"xx"

    async def reader_then_writer():
        """A read-only process keeps the batch out on later reads, until a writer cut it and appended."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornTailWarning)
            async with open_ledger(root, read_only=True) as ro:
                fr = ro.artifacts(**RUN)
                assert _ids(await fr.list(scope="all")) == acked
                async with open_ledger(root) as rw:
                    new = await rw.artifacts(**RUN).save(_src(tmp_path, "new", b"after the cut"), kind="blob")
                return _ids(await fr.list(scope="all")), new.artifact_id

    seen, new = anyio.run(reader_then_writer)
    assert seen == acked + [new]


# --------------------------------------------------------------------------- dedup never trusts a bare name
@pytest.mark.parametrize("protocol", ["one", "three"])
@pytest.mark.parametrize("damage", ["zero-length", "short", "garbled"])
def test_a_save_never_trusts_an_incomplete_blob_no_event_names(root, tmp_path, monkeypatch, protocol, damage):
    """After a power cut a blob's name can exist without its bytes (renamed in by a batch whose records
    never reached the disk). A later save of the same content stores its own bytes under the name."""
    if protocol == "one" and not durable.syncfs_reports_errors():
        pytest.skip("needs Linux >= 5.8")
    monkeypatch.setenv(one_flush.ENV, protocol)
    data = b"content whose name outlived its bytes" * 40

    async def create():
        async with open_ledger(root) as led:
            await led.artifacts(**RUN).save(_src(tmp_path, "other", b"something else"), kind="blob")

    anyio.run(create)
    address = _blob(root, data)
    address.parent.mkdir(exist_ok=True)
    address.write_bytes({"zero-length": b"", "short": data[:10], "garbled": bytes(len(data))}[damage])

    async def save():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            art = await fa.save(_src(tmp_path, "same", data), kind="blob")
            assert await fa.load_artifact_bytes(art.uri) == data
            assert (await led.verify()).ok

    anyio.run(save)
    assert address.read_bytes() == data


def test_publish_keeps_a_whole_blob_already_at_its_address(tmp_path):
    """Under the lock, a pending blob whose address already holds it whole (another save's, maybe already
    durable and named by a committed event) is dropped, not renamed over it: unflushed bytes never
    replace flushed ones under a name an event may rely on."""
    if not durable.syncfs_available():
        pytest.skip("no syncfs(2)")
    store = LocalBlobStore(tmp_path / "blobs", deferred=True)
    store.enable_one_flush()
    try:
        data = b"shared content" * 10
        info = store.put_bytes(data)
        store.publish()
        before = os.stat(store.path(info.sha256)).st_ino
        # A second put that raced the first (it found no whole blob when it looked).
        tmp = store._new_tmp()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, data)
        store._publish(tmp, info.sha256, fd, len(data))
        store.publish()
        assert os.stat(store.path(info.sha256)).st_ino == before and not os.path.exists(tmp)
    finally:
        store.close()


if sys.platform != "linux":  # pragma: no cover - the module's protocol exists on Linux only
    pytestmark = pytest.mark.skip(reason="one flush per batch needs Linux")


# ------------------------------------------------------------------ the check's quick decode
def _as_records(payloads: list[bytes]) -> list:
    from artifact_ledger.ledger.framing import Record

    return [Record(i + 1, i, b"\0" * 32, b"\1" * 32, p, "seg", 64 + i, 100, 1) for i, p in enumerate(payloads)]


def test_the_quick_decode_names_exactly_the_blobs_the_full_decode_lists(tmp_path):
    """named_blobs (the blob-naming fields only) gives the same (blob, size) list as batch_blobs, in order."""
    from artifact_ledger.ledger.events import AliasSet, ArtifactRecorded, PinChanged, Retired, encode_event

    store = LocalBlobStore(str(tmp_path / "blobs"), fsync=False)
    payloads = []
    for i in range(60):
        if i % 7 == 3:
            payloads.append(encode_event(PinChanged(artifact_id=f"a{i - 1}", pinned=True)))
        elif i % 11 == 5:
            payloads.append(encode_event(AliasSet(namespace="ns", artifact_id=f"a{i - 2}", name=f"n{i}")))
        elif i % 13 == 6:
            payloads.append(encode_event(Retired(artifact_id=f"a{i - 3}", reason="old")))
        else:
            payloads.append(encode_event(ArtifactRecorded(
                artifact_id=f"a{i}", origin="save", kind="k", sha256=f"{i % 9:064x}", size=i * 10, mime="text/plain",
                labels={"x": [1, "y"]}, metrics={"m": 0.5}, run_id="r", graph_id="g", node_id="n")))
    recs = _as_records(payloads)
    full, problems = one_flush.batch_blobs(recs, store)
    assert one_flush.named_blobs(recs) == full and problems == [] and len(full) > 30


def test_the_quick_decode_leaves_directories_old_versions_and_damage_to_the_full_path():
    import msgspec

    from artifact_ledger.facade import content
    from artifact_ledger.ledger.events import ArtifactRecorded, encode_event

    def art(**kw):
        base = dict(artifact_id="a", origin="save", kind="k", sha256="0" * 64, size=1, mime="text/plain",
                    run_id="r", graph_id="g", node_id="n")
        return ArtifactRecorded(**{**base, **kw})

    plain = encode_event(art())
    assert one_flush.named_blobs(_as_records([plain])) == [("0" * 64, 1)]
    assert one_flush.named_blobs(_as_records([plain, encode_event(art(mime=content.DIR_MIME))])) is None
    old = msgspec.msgpack.encode({**msgspec.to_builtins(art()), "v": 0})
    assert one_flush.named_blobs(_as_records([plain, old])) is None
    assert one_flush.named_blobs(_as_records([plain, plain[:-3]])) is None
    assert one_flush.named_blobs(_as_records([plain, msgspec.msgpack.encode({"type": "no.such", "v": 1})])) is None
    assert one_flush.named_blobs(_as_records([])) == []
