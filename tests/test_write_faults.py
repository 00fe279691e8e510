"""A failed write or flush of the log: the failed batch is cut back under the lock, the writer stops,
other processes and reopens see only durable records; if even the cut fails, a durable mark stops
every process until ``repair_log``. Faults are injected into the real ``os`` calls the log makes."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.errors import LedgerPoisoned, LedgerWriteError
from artifact_ledger.ledger.filelog import POISON_MARK, SegmentLog, repair_log, segment_name
from artifact_ledger.ledger.framing import SEGMENT_HEADER_SIZE
from artifact_ledger.ledger.group_commit import GroupCommitLog
from fdtools import fd_path, is_segment
from logcheck import check_chain, recorded_ids, seg_files

SPAWN = multiprocessing.get_context("spawn")
RUN = dict(run_id="r", graph_id="g", node_id="n")
TIMEOUT = 60


class Faults:
    """Wrappers around the real os calls that fail only for segment fds, and only while armed."""

    def __init__(self, monkeypatch_or_none=None):
        self.armed: set[str] = set()
        self.hits: list[str] = []
        self.trace: list[tuple[str, str]] = []  # every segment ftruncate/fsync, in order
        real = {name: getattr(os, name) for name in ("fdatasync", "pwrite", "ftruncate", "fsync")}
        self.real = real

        def fdatasync(fd):
            if "fdatasync" in self.armed and is_segment(fd):
                self.hits.append("fdatasync")
                raise OSError(errno.EIO, "Input/output error")
            return real["fdatasync"](fd)

        def pwrite(fd, data, offset):
            if "short" in self.armed and is_segment(fd):
                self.hits.append("short")
                return real["pwrite"](fd, bytes(data)[: len(data) // 2], offset)
            return real["pwrite"](fd, data, offset)

        def ftruncate(fd, length):
            if is_segment(fd):
                self.trace.append(("ftruncate", fd_path(fd)))
            if "ftruncate" in self.armed and is_segment(fd):
                self.hits.append("ftruncate")
                raise OSError(errno.EIO, "Input/output error")
            return real["ftruncate"](fd, length)

        def fsync(fd):
            if is_segment(fd):
                self.trace.append(("fsync", fd_path(fd)))
            return real["fsync"](fd)

        self.wrappers = {"fdatasync": fdatasync, "pwrite": pwrite, "ftruncate": ftruncate, "fsync": fsync}

    def install(self, monkeypatch=None) -> None:
        """Patch ``os`` (the module filelog calls through) with the wrappers."""
        for name, fn in self.wrappers.items():
            if monkeypatch is not None:
                monkeypatch.setattr(filelog.os, name, fn)
            else:
                setattr(filelog.os, name, fn)


def src_file(d: Path, name: str) -> str:
    """A small source file to save."""
    p = d / name
    p.write_bytes(name.encode() * 10)
    return str(p)


# --------------------------------------------------------------------------- a failed fdatasync, in a child
def eio_child(root: str, scratch: str, results) -> None:
    """Child: save A, then save B with every segment fdatasync failing (EIO), then try more saves."""
    try:
        faults = Faults()
        faults.install()
        d = Path(scratch)
        out: dict = {}

        async def main():
            async with open_ledger(root) as led:
                fa = led.artifacts(**RUN)
                a = await fa.save(src_file(d, "a"), kind="blob")
                out["acked"] = [a.artifact_id]
                out["size_a"] = os.path.getsize(seg_files(Path(root))[-1])
                faults.armed.add("fdatasync")
                try:
                    await fa.save(src_file(d, "b"), kind="blob")
                except LedgerWriteError as exc:
                    out["b"] = ("LedgerWriteError", exc.errno, exc.filename, str(exc))
                out["size_after_b"] = os.path.getsize(seg_files(Path(root))[-1])
                # The flush works again, but this process may have lost pages: it stays stopped.
                faults.armed.clear()
                try:
                    await fa.save(src_file(d, "c"), kind="blob")
                    out["c"] = "acknowledged"
                except LedgerPoisoned as exc:
                    out["c"] = type(exc).__name__
                out["size_after_c"] = os.path.getsize(seg_files(Path(root))[-1])
                out["head"] = led.head[0]

        anyio.run(main)
        out["fdatasync_failures"] = faults.hits.count("fdatasync")
        results.put((out, None))
    except BaseException as exc:
        results.put((None, repr(exc)))


def run_child(target, *args) -> dict:
    """Run ``target(*args, results)`` in a spawned process and return what it reported."""
    results = SPAWN.Queue()
    p = SPAWN.Process(target=target, args=(*args, results))
    p.start()
    out, err = results.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    assert err is None, err
    return out


@pytest.mark.usefixtures("three_flushes")  # its fdatasync; the one-flush syncfs: test_one_flush.py
def test_failed_fdatasync_cuts_the_batch_and_stops_this_writer_only(root, tmp_path):
    """EIO from the real fdatasync: the save fails with the errno and segment, its record is cut from
    the file before the lock is released, the process writes nothing more, and another process that
    had the ledger open, and a reopen, see only acknowledged records and append after them."""
    (tmp_path / "src").mkdir()

    async def other_process_open_during_the_failure():
        async with open_ledger(root) as other:
            got = run_child(eio_child, str(root), str(tmp_path / "src"))
            fo = other.artifacts(**RUN)
            seen = [x.artifact_id for x in await fo.list(scope="all")]
            e = await fo.save(src_file(tmp_path, "e"), kind="blob")
            return got, seen, e

    got, seen_by_other, e = anyio.run(other_process_open_during_the_failure)
    name, eio, filename, text = got["b"]
    assert eio == errno.EIO and filename.endswith(".seg") and Path(filename).name in text
    assert got["fdatasync_failures"] >= 1
    assert got["size_after_b"] == got["size_a"], "the failed batch must be cut from the segment"
    assert got["c"] == "LedgerPoisoned" and got["size_after_c"] == got["size_a"]
    assert got["head"] == 1
    assert seen_by_other == got["acked"]
    assert e.seq == 2
    disk = check_chain(root)
    assert recorded_ids(disk) == got["acked"] + [e.artifact_id]

    async def reopen():
        async with open_ledger(root) as led:
            return [x.artifact_id for x in sorted(await led.artifacts(**RUN).list(scope="all"), key=lambda x: x.seq)]

    assert anyio.run(reopen) == got["acked"] + [e.artifact_id]


# --------------------------------------------------------------------------- a short write
def test_short_write_raises_enospc_naming_the_segment_and_is_cut_back(root, tmp_path, monkeypatch):
    """A pwrite that writes only part of the batch is an OSError (ENOSPC) naming the segment; the part
    written is cut off again, later saves are refused, and a reopen continues from the durable records."""
    faults = Faults()
    faults.install(monkeypatch)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            a = await fa.save(src_file(tmp_path, "a"), kind="blob")
            seg = seg_files(root)[-1]
            size = seg.stat().st_size
            faults.armed.add("short")
            with pytest.raises(OSError) as info:
                await fa.save(src_file(tmp_path, "b"), kind="blob")
            faults.armed.clear()
            assert seg.stat().st_size == size
            # The cut is made durable (fsync after the truncate) before the failed save returns.
            path = os.path.realpath(seg)
            assert faults.trace[-2:] == [("ftruncate", path), ("fsync", path)], faults.trace
            with pytest.raises(LedgerPoisoned):
                await fa.save(src_file(tmp_path, "c"), kind="blob")
            assert seg.stat().st_size == size
            return a, info.value, seg

    a, err, seg = anyio.run(main)
    assert faults.hits == ["short"]
    assert err.errno == errno.ENOSPC
    assert seg.name in str(err) and err.filename == str(seg)
    assert recorded_ids(check_chain(root)) == [a.artifact_id]

    async def again():
        async with open_ledger(root) as led:
            return await led.artifacts(**RUN).save(src_file(tmp_path, "d"), kind="blob")

    assert anyio.run(again).seq == 2


# --------------------------------------------------------------------------- the cut fails too: a mark
@pytest.mark.usefixtures("three_flushes")  # its fdatasync; the one-flush syncfs: test_one_flush.py
def test_failed_cut_back_leaves_a_mark_every_process_honours_until_repair(root, tmp_path, monkeypatch):
    """fdatasync and then ftruncate fail: a durable mark in log/ stops appends in every process (a clear
    LedgerPoisoned naming the mark and repair_log), readers stop at the last durable record, and
    repair_log cuts the failed batch, removes the mark, and lets appends continue."""
    faults = Faults()
    faults.install(monkeypatch)
    mark = root / "log" / POISON_MARK

    async def main():
        async with open_ledger(root) as led, open_ledger(root) as other:
            fa, fo = led.artifacts(**RUN), other.artifacts(**RUN)
            a = await fa.save(src_file(tmp_path, "a"), kind="blob")
            faults.armed |= {"fdatasync", "ftruncate"}
            with pytest.raises(LedgerWriteError) as info:
                await fa.save(src_file(tmp_path, "b"), kind="blob")
            faults.armed.clear()
            assert mark.exists()
            assert str(mark) in str(info.value)
            # The failed batch is still in the file, but nobody may see or build on it.
            assert [x.artifact_id for x in await fo.list(scope="all")] == [a.artifact_id]
            with pytest.raises(LedgerPoisoned) as refused:
                await fo.save(src_file(tmp_path, "c"), kind="blob")
            return a, str(refused.value)

    a, refused = anyio.run(main)
    assert POISON_MARK in refused and "repair_log" in refused and "artifact-ledger repair" in refused
    # A new process is refused too, but can still open and read.

    async def fresh():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            listed = [x.artifact_id for x in await fa.list(scope="all")]
            with pytest.raises(LedgerPoisoned):
                await fa.save(src_file(tmp_path, "d"), kind="blob")
            return listed

    assert anyio.run(fresh) == [a.artifact_id]
    assert mark.exists()
    seg = seg_files(root)[-1]
    assert seg.stat().st_size > check_size_after_first(root)
    report = repair_log(root / "log")
    assert "cut" in report and POISON_MARK in report
    assert not mark.exists()
    assert recorded_ids(check_chain(root)) == [a.artifact_id]

    async def after_repair():
        async with open_ledger(root) as led:
            return await led.artifacts(**RUN).save(src_file(tmp_path, "e"), kind="blob")

    assert anyio.run(after_repair).seq == 2
    assert "needed no repair" in repair_log(root / "log")


def check_size_after_first(root: Path) -> int:
    """Byte size of the log's only segment holding just its first record (from the independent parser)."""
    seg = seg_files(root)[-1]
    data = seg.read_bytes()
    length = int.from_bytes(data[SEGMENT_HEADER_SIZE : SEGMENT_HEADER_SIZE + 4], "little")
    return SEGMENT_HEADER_SIZE + 8 + length


def test_repair_log_refuses_a_missing_directory(tmp_path):
    """repair_log on a path that is no log directory says so instead of creating one."""
    with pytest.raises(FileNotFoundError, match="not a ledger log directory"):
        repair_log(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# --------------------------------------------------------------------------- a batch split over a rollover
PAYLOAD = b"p" * 100
FRAME = 8 + 56 + len(PAYLOAD)


def test_batch_split_over_rollover_acknowledges_exactly_its_durable_part(tmp_path, monkeypatch):
    """A batch whose second part (in a new segment) fails to flush: the records of the first part, synced
    in the earlier segment, are acknowledged to their callers; only the rest fail, so a retry after a
    reopen records nothing twice."""
    log_dir = tmp_path / "log"
    log = SegmentLog(str(log_dir), segment_bytes=SEGMENT_HEADER_SIZE + 4 * FRAME)
    first_seg = segment_name(1)
    entered, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync
    calls = 0

    def fdatasync(fd):
        nonlocal calls
        if is_segment(fd):
            calls += 1
            if calls == 1:  # hold the first batch so that the next one gathers six payloads
                entered.set()
                release.wait(TIMEOUT)
            elif not fd_path(fd).endswith(first_seg):
                raise OSError(errno.EIO, "Input/output error")
        return real_fdatasync(fd)

    monkeypatch.setattr(filelog.os, "fdatasync", fdatasync)
    applied = []
    gc = GroupCommitLog(log, applied.extend)
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = (await gc.append(PAYLOAD[:-1] + bytes([i]))).seq
        except LedgerWriteError as exc:
            outcomes[i] = exc

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            await anyio.to_thread.run_sync(entered.wait, TIMEOUT)
            for i in range(1, 7):
                tg.start_soon(one, i)
            await anyio.wait_all_tasks_blocked()
            assert len(gc._pending) == 6
            release.set()
        await gc.aclose()

    anyio.run(main)
    # Record 1 plus three more fill the first segment; the other three went to the failed one.
    assert [outcomes[i] for i in range(4)] == [1, 2, 3, 4]
    for i in range(4, 7):
        assert isinstance(outcomes[i], LedgerWriteError) and outcomes[i].errno == errno.EIO
    assert [r.seq for r in applied] == [1, 2, 3, 4]
    segs = sorted(log_dir.glob("*.seg"))
    assert [p.name for p in segs] == [segment_name(1), segment_name(5)]
    assert segs[1].stat().st_size == SEGMENT_HEADER_SIZE  # cut back to its header
    fresh = SegmentLog(str(log_dir))
    try:
        got = []
        fresh.recover(got.append)
        assert [r.payload[-1] for r in got] == [0, 1, 2, 3]
    finally:
        fresh.close()


# --------------------------------------------------------------------------- a segment that could not be created
def test_segment_whose_directory_fsync_fails_is_removed_again(tmp_path, monkeypatch):
    """If the directory fsync after renaming a new segment in fails, the segment is removed (nobody may
    append to a file whose name may not survive a crash), the earlier records stay, and a reopened log
    creates the segment again."""
    log_dir = tmp_path / "log"
    log = SegmentLog(str(log_dir), segment_bytes=SEGMENT_HEADER_SIZE + 2 * FRAME)
    real_fsync = os.fsync
    armed = False

    def fsync(fd):
        if armed and fd_path(fd) == os.path.realpath(log_dir):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(filelog.os, "fsync", fsync)
    gc = GroupCommitLog(log, lambda recs: None)

    async def main():
        nonlocal armed
        for i in range(2):
            assert (await gc.append(PAYLOAD)).seq == i + 1
        armed = True
        with pytest.raises(LedgerWriteError) as info:
            await gc.append(PAYLOAD)  # needs a new segment
        armed = False
        with pytest.raises(LedgerPoisoned):
            await gc.append(PAYLOAD)
        await gc.aclose()
        return info.value

    err = anyio.run(main)
    assert err.errno == errno.EIO
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(["LOCK", segment_name(1)])
    again = SegmentLog(str(log_dir), segment_bytes=SEGMENT_HEADER_SIZE + 2 * FRAME)
    try:
        got: list = []
        again.recover(got.append)
        assert [r.seq for r in got] == [1, 2]
        assert [r.seq for r in again.append_batch([PAYLOAD], lambda rec: None)] == [3]
        assert (log_dir / segment_name(3)).exists()
    finally:
        again.close()


@pytest.mark.usefixtures("three_flushes")  # its fdatasync; the one-flush syncfs: test_one_flush.py
def test_the_mark_is_durable_before_the_failed_call_returns_and_goes_only_after_the_cut(root, tmp_path,
                                                                                      monkeypatch):
    """Order, not just outcome: the mark's bytes are fsynced, then log/ is, before the failed save returns;
    repair_log makes the cut durable (ftruncate, fsync) before it unlinks the mark, then fsyncs log/."""
    faults = Faults()
    faults.install(monkeypatch)
    log_dir = ""  # known once the ledger exists
    order: list[str] = []
    wrapped = dict(faults.wrappers)
    real_unlink = os.unlink

    def where(fd: int) -> str:
        p = fd_path(fd)
        if p.endswith("/" + POISON_MARK):
            return "mark"
        if p.endswith(".seg"):
            return "segment"
        return "log/" if p == log_dir else "other"

    def fsync(fd):
        order.append(f"fsync {where(fd)}")
        return wrapped["fsync"](fd)

    def ftruncate(fd, length):
        order.append(f"ftruncate {where(fd)}")
        return wrapped["ftruncate"](fd, length)

    def unlink(path, *a, **k):
        if os.path.basename(path) == POISON_MARK:
            order.append("unlink mark")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(filelog.os, "fsync", fsync)
    monkeypatch.setattr(filelog.os, "ftruncate", ftruncate)
    monkeypatch.setattr(filelog.os, "unlink", unlink)

    async def main():
        nonlocal log_dir
        async with open_ledger(root) as led:
            log_dir = os.path.realpath(root / "log")
            fa = led.artifacts(**RUN)
            await fa.save(src_file(tmp_path, "a"), kind="blob")
            faults.armed |= {"fdatasync", "ftruncate"}
            order.clear()
            with pytest.raises(LedgerWriteError):
                await fa.save(src_file(tmp_path, "b"), kind="blob")
            faults.armed.clear()
            return list(order)

    at_return = anyio.run(main)
    assert "fsync mark" in at_return, at_return
    assert "fsync log/" in at_return[at_return.index("fsync mark") + 1:], at_return
    order.clear()
    repair_log(root / "log")
    cut, synced = order.index("ftruncate segment"), order.index("fsync segment")
    gone = order.index("unlink mark")
    assert cut < synced < gone, order
    assert "fsync log/" in order[gone + 1:], order
