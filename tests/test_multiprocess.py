"""Several processes share one ledger root: serialized appends, gap-free seq, unbroken chain, fresh reads; group
commit."""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import warnings
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.events import PinChanged, decode_event
from artifact_ledger.ledger.filelog import SegmentLog, TornTailWarning
from artifact_ledger.ledger.framing import encode_record
from artifact_ledger.ledger.group_commit import GroupCommitLog
from logcheck import check_chain, recorded_ids, seg_files

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 3
SAVES = 40
SMALL_SEGMENTS = 4096
TIMEOUT = 90


# --------------------------------------------------------------------------- child processes
async def _save_many(root: str, worker: int, saves: int, segment_bytes: int, barrier,
                     checkpoint_every: int = 10_000) -> dict:
    scratch = Path(root).parent / f"src-{worker}"
    scratch.mkdir(exist_ok=True)
    acked: list[tuple[str, int]] = []
    pins: list[tuple[str, bool, int]] = []
    async with open_ledger(root, segment_bytes=segment_bytes, checkpoint_every=checkpoint_every) as led:
        fa = led.artifacts(run_id=f"run-{worker}", graph_id="g", node_id="n")
        # Start saving only once every worker has the ledger open, so the appends really interleave.
        await anyio.to_thread.run_sync(barrier.wait, TIMEOUT)

        async def save(i: int) -> None:
            src = scratch / f"{i}.bin"
            # Some content is shared between workers: blob dedup must be safe across processes.
            src.write_bytes(b"shared" if i % 7 == 0 else f"worker {worker} item {i}".encode())
            art = await fa.save(str(src), kind="blob", labels={"worker": worker, "i": i}, metrics={"i": i})
            acked.append((art.artifact_id, art.seq))

        i = 0
        while i < saves:
            if (i // 8) % 2 == 0:
                await save(i)  # sequential awaits
                i += 1
            else:
                async with anyio.create_task_group() as tg:  # a burst sharing group commits
                    for j in range(i, min(i + 8, saves)):
                        tg.start_soon(save, j)
                i = min(i + 8, saves)
            if i % 10 == 0:
                target = acked[-1][0]
                await fa.pin(target, True)
                pins.append((target, True, led.head[0]))
                if i % 20 == 0:
                    await fa.pin(target, False)
                    pins.append((target, False, led.head[0]))
    return {"acked": acked, "pins": pins}


def saver_process(root: str, worker: int, saves: int, segment_bytes: int, barrier, results,
                  checkpoint_every: int = 10_000) -> None:
    """Child: save into the shared root and report every acknowledged artifact and pin."""
    try:
        out = anyio.run(_save_many, root, worker, saves, segment_bytes, barrier, checkpoint_every)
        results.put((worker, out, None))
    except BaseException as exc:  # report, so the parent fails with the child's error
        results.put((worker, None, repr(exc)))


async def _read_later(root: str, opened, written) -> dict:
    async with open_ledger(root, segment_bytes=SMALL_SEGMENTS) as led:
        fa = led.artifacts(run_id="reader", graph_id="g", node_id="n")
        before = [a.artifact_id for a in await fa.list(scope="all")]
        opened.set()
        assert await anyio.to_thread.run_sync(written.wait, TIMEOUT)
        # No reopen: the same Ledger must pick up the other process's commits.
        after = [a.artifact_id for a in sorted(await fa.list(scope="all"), key=lambda a: a.seq)]
        found = [a.artifact_id for a in await fa.search(scope="all", labels={"phase": "later"})]
        best = await fa.best(kind="blob", metric="score", mode="max", scope="all")
        data = await fa.load_artifact_bytes(f"artifact://{best.artifact_id}")
        await fa.pin(best.artifact_id, True)
        return {"before": before, "after": after, "found": found, "best": best.artifact_id,
                "data": data, "pin_seq": led.head[0]}


def reader_process(root: str, opened, written, results) -> None:
    """Child: open first, then read what the parent commits afterwards, and pin one of those."""
    try:
        results.put(anyio.run(_read_later, root, opened, written))
    except BaseException as exc:
        results.put(repr(exc))


def _collect(results, count: int, procs) -> list:
    out = []
    for _ in range(count):
        try:
            out.append(results.get(timeout=TIMEOUT))
        except queue.Empty:
            pytest.fail(f"child process did not report within {TIMEOUT}s (exit codes {[p.exitcode for p in procs]})")
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    return out


def _list_all(root: Path) -> list:
    async def main():
        async with open_ledger(root) as led:
            arts = await led.artifacts(run_id="x", graph_id="g", node_id="n").list(scope="all")
            return sorted(arts, key=lambda a: a.seq), led.head

    return anyio.run(main)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("segment_bytes", [filelog.DEFAULT_SEGMENT_BYTES, SMALL_SEGMENTS])
def test_concurrent_processes_keep_every_acknowledged_artifact(root, segment_bytes):
    """Three processes saving and pinning at once: every acknowledged artifact is kept, seq gap-free, chain unbroken."""
    anyio.run(_create, root)
    barrier = SPAWN.Barrier(WORKERS)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=saver_process, args=(str(root), w, SAVES, segment_bytes, barrier, results))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    reports = _collect(results, WORKERS, procs)
    assert [err for _, _, err in reports] == [None] * WORKERS
    outs = {w: out for w, out, _ in reports}

    acked = {aid: (w, seq) for w, out in outs.items() for aid, seq in out["acked"]}
    assert len(acked) == WORKERS * SAVES
    pins = [p for out in outs.values() for p in out["pins"]]
    total = WORKERS * SAVES + len(pins)

    disk = check_chain(root)
    assert [r.seq for r in disk] == list(range(1, total + 1))
    assert sorted(recorded_ids(disk)) == sorted(acked)
    # Each acknowledged seq is the record that holds that artifact.
    by_seq = {r.seq: r for r in disk}
    for aid, (_, seq) in acked.items():
        assert decode_event(by_seq[seq].payload).artifact_id == aid
    pin_events = [(decode_event(r.payload).artifact_id, decode_event(r.payload).pinned)
                  for r in disk if isinstance(decode_event(r.payload), PinChanged)]
    assert sorted(pin_events) == sorted((a, p) for a, p, _ in pins)

    arts, head = _list_all(root)
    assert head == (total, disk[-1].hash.hex())
    assert {a.artifact_id for a in arts} == set(acked)
    final_pin: dict[str, bool] = {}
    for out in outs.values():
        for aid, pinned, _ in out["pins"]:
            final_pin[aid] = pinned  # each worker pins only its own artifacts, in order
    for a in arts:
        w, seq = acked[a.artifact_id]
        assert (a.seq, a.run_id, a.labels["worker"]) == (seq, f"run-{w}", w)
        assert a.pinned == final_pin.get(a.artifact_id, False)
    if segment_bytes == SMALL_SEGMENTS:
        assert len(seg_files(root)) > 3


def test_concurrent_processes_with_frequent_checkpoints(root):
    """Three processes appending and checkpointing every few events at once: whichever checkpoint a
    later open loads, the state equals a full replay of the log, and verify() passes."""
    from artifact_ledger.projections.catalog import Logged, replay

    anyio.run(_create, root)
    barrier = SPAWN.Barrier(WORKERS)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=saver_process, args=(str(root), w, SAVES, SMALL_SEGMENTS, barrier, results, 7))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    reports = _collect(results, WORKERS, procs)
    assert [err for _, _, err in reports] == [None] * WORKERS
    disk = check_chain(root)
    assert len(list((root / "checkpoints").glob("*.ckpt"))) >= 1
    full = replay(Logged(r.seq, r.ts_us, decode_event(r.payload)) for r in disk)

    async def reopen():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no checkpoint may be rejected: all were taken of the true log
            async with open_ledger(root) as led:
                assert led._ckpt_seq > 0, "a checkpoint should have been loaded"
                assert led.catalog == full
                result = await led.verify()
                assert result.ok, result.problem
                assert result.head == (disk[-1].seq, disk[-1].hash.hex())

    anyio.run(reopen)


async def _create(root: Path) -> None:
    async with open_ledger(root):
        pass


def test_reader_process_sees_commits_made_after_it_opened(root, tmp_path):
    """A process that opened the ledger earlier sees later commits of another process on its next read, and vice
    versa."""
    first = tmp_path / "first.txt"
    first.write_bytes(b"before the reader opened")

    async def main():
        async with open_ledger(root, segment_bytes=SMALL_SEGMENTS) as led:
            fa = led.artifacts(run_id="writer", graph_id="g", node_id="n")
            early = await fa.save(str(first), kind="blob")
            opened, written, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
            proc = SPAWN.Process(target=reader_process, args=(str(root), opened, written, results))
            proc.start()
            try:
                assert await anyio.to_thread.run_sync(opened.wait, TIMEOUT)
                later = []
                # Enough records to roll over into new segments while the reader sits on an old one.
                for i in range(12):
                    src = tmp_path / f"later{i}.txt"
                    src.write_bytes(f"later {i} ".encode() * 50)
                    later.append(await fa.save(str(src), kind="blob", labels={"phase": "later"},
                                               metrics={"score": i % 5 + i / 100}))
                written.set()
                report = await anyio.to_thread.run_sync(lambda: _collect(results, 1, [proc])[0])
            finally:
                written.set()
                await anyio.to_thread.run_sync(proc.join, TIMEOUT)
            assert isinstance(report, dict), report
            assert report["before"] == [early.artifact_id]
            assert report["after"] == [early.artifact_id] + [a.artifact_id for a in later]
            assert sorted(report["found"]) == sorted(a.artifact_id for a in later)
            top = max(later, key=lambda a: a.metrics["score"])
            assert report["best"] == top.artifact_id
            assert report["data"] == (tmp_path / f"later{later.index(top)}.txt").read_bytes()
            assert report["pin_seq"] == later[-1].seq + 1
            # Now the writer is the one that must notice another process's commit.
            mine = {a.artifact_id: a for a in await fa.list(scope="all")}
            assert mine[top.artifact_id].pinned is True
            nxt = await fa.save(str(first), kind="blob")
            assert nxt.seq == report["pin_seq"] + 1
        return nxt.seq

    last = anyio.run(main)
    assert len(seg_files(root)) > 1
    disk = check_chain(root)
    assert [r.seq for r in disk] == list(range(1, last + 1))


# --------------------------------------------------------------------------- group commit
@pytest.fixture
def fsync_counter(monkeypatch):
    """Count log flushes (fdatasync, or one flush per batch's syncfs) and appended batches (sizes) in this
    process."""
    calls: list[int] = []
    batches: list[int] = []
    real_fdatasync = os.fdatasync
    real_append = SegmentLog.append_batch

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    def counting_append(self, payloads, on_record):
        batches.append(len(payloads))
        return real_append(self, payloads, on_record)

    real_syncfs = filelog._syncfs_fd

    def counting_syncfs(fd: int, what: str) -> None:
        calls.append(fd)
        real_syncfs(fd, what)

    monkeypatch.setattr(filelog.os, "fdatasync", counting_fdatasync)
    monkeypatch.setattr(filelog, "_syncfs_fd", counting_syncfs)
    monkeypatch.setattr(SegmentLog, "append_batch", counting_append)
    return calls, batches


N_CONCURRENT = 64


def test_concurrent_saves_share_fsyncs(root, tmp_path, fsync_counter):
    """64 saves in flight together all succeed with gap-free seqs while the log is fsynced fewer than 64 times."""
    calls, batches = fsync_counter
    src = tmp_path / "src"
    src.mkdir()

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            # Hold every save at the log's door until all 64 are there; the blob writes before it
            # take varying time, and group commit is about appends that are pending together.
            real_append = led._gc.append
            arrived = 0
            everyone = anyio.Event()

            async def gated_append(payload: bytes):
                nonlocal arrived
                arrived += 1
                if arrived == N_CONCURRENT:
                    everyone.set()
                await everyone.wait()
                return await real_append(payload)

            led._gc.append = gated_append
            arts = {}

            async def save(i: int) -> None:
                p = src / f"{i}.bin"
                p.write_bytes(f"item {i}".encode())
                arts[i] = await fa.save(str(p), kind="blob", labels={"i": i})

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for i in range(N_CONCURRENT):
                        tg.start_soon(save, i)
            return arts

    arts = anyio.run(main)
    assert sorted(a.seq for a in arts.values()) == list(range(1, N_CONCURRENT + 1))
    assert sum(batches) == N_CONCURRENT
    # One fsync per batch: the first append runs alone while the other 63 queue up behind it.
    assert len(calls) == len(batches) <= 2
    assert len(calls) < N_CONCURRENT
    disk = check_chain(root)
    assert {a.artifact_id for a in arts.values()} == set(recorded_ids(disk))
    for i, a in arts.items():
        assert a.labels == {"i": i}


def test_group_commit_log_batches_pending_appends(tmp_path, fsync_counter):
    """GroupCommitLog: appends pending together become one batch; each caller gets its own durable record."""
    calls, batches = fsync_counter
    log = SegmentLog(str(tmp_path / "log"))
    seen = []
    gc = GroupCommitLog(log, seen.extend)
    got = {}

    async def append(i: int) -> None:
        got[i] = await gc.append(f"payload {i}".encode())

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(N_CONCURRENT):
                tg.start_soon(append, i)
        await gc.aclose()

    anyio.run(main)
    assert {i: r.payload for i, r in got.items()} == {i: f"payload {i}".encode() for i in range(N_CONCURRENT)}
    assert sorted(r.seq for r in got.values()) == list(range(1, N_CONCURRENT + 1))
    assert [r.seq for r in seen] == list(range(1, N_CONCURRENT + 1))
    assert sum(batches) == N_CONCURRENT and len(batches) <= 2
    assert len(calls) == len(batches)


def test_ungated_concurrent_saves_are_all_acknowledged(root, tmp_path, fsync_counter):
    """Without any coordination, 64 concurrent saves each get a distinct seq and never more fsyncs than appends."""
    calls, batches = fsync_counter
    src = tmp_path / "src"
    src.mkdir()

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            arts = []

            async def save(i: int) -> None:
                p = src / f"{i}.bin"
                p.write_bytes(b"same bytes")
                arts.append(await fa.save(str(p), kind="blob"))

            async with anyio.create_task_group() as tg:
                for i in range(N_CONCURRENT):
                    tg.start_soon(save, i)
            return arts, led.head

    arts, head = anyio.run(main)
    assert sorted(a.seq for a in arts) == list(range(1, N_CONCURRENT + 1))
    assert len({a.artifact_id for a in arts}) == N_CONCURRENT
    assert sum(batches) == N_CONCURRENT and len(calls) == len(batches) <= N_CONCURRENT
    assert head[0] == N_CONCURRENT
    check_chain(root)


def test_reads_during_writes_across_rollovers_never_fail(root, tmp_path):
    """Reads racing this process's own appends (which switch segment files) always succeed and stay consistent."""
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    saves = 150

    async def main():
        # Tiny segments: nearly every batch closes one segment file and opens the next.
        async with open_ledger(root, segment_bytes=300, fsync=False) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            done = False
            reads = 0
            acked = 0

            async def reader() -> None:
                nonlocal reads
                while not done:
                    before = acked
                    top = await fa.best(kind="blob", metric="i", mode="max")
                    # Every save acknowledged before the read began is visible to it.
                    assert (top.metrics["i"] + 1 if top else 0) >= before
                    reads += 1
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(reader)
                for i in range(saves):
                    await fa.save(str(src), kind="blob", metrics={"i": i})
                    acked = i + 1
                done = True
            return reads

    assert anyio.run(main) > 0
    assert [r.seq for r in check_chain(root)] == list(range(1, saves + 1))


def test_read_while_own_batch_switches_segment_files(root, tmp_path, monkeypatch):
    """A read that lands while this process's batch is swapping segment files waits for it instead of failing."""
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    armed = threading.Event()
    window = threading.Event()
    read_done = threading.Event()
    real_open = os.open

    def open_with_pause(path, flags, *args, **kw):
        # Between closing the old segment and opening the new one, let a read run.
        if armed.is_set() and str(path).endswith(".seg") and not window.is_set():
            window.set()
            read_done.wait(0.3)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(filelog.os, "open", open_with_pause)

    async def main():
        async with open_ledger(root, segment_bytes=300, fsync=False) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            first = await fa.save(str(src), kind="blob", metrics={"i": 0})
            armed.set()
            seen = []

            async def read_in_window() -> None:
                assert await anyio.to_thread.run_sync(window.wait, TIMEOUT)
                seen.append(await fa.best(kind="blob", metric="i", mode="max"))
                read_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_in_window)
                second = await fa.save(str(src), kind="blob", metrics={"i": 1})
            assert window.is_set()
            assert seen[0].artifact_id in {first.artifact_id, second.artifact_id}
            return second.seq

    assert anyio.run(main) == 2
    check_chain(root)


def test_torn_leftover_of_crashed_writer_is_cut_by_next_writer(root, tmp_path):
    """Half a record left by a writer that died mid-append is ignored by reads and cut by the next append."""
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            first = await fa.save(str(src), kind="blob")
            seg = seg_files(root)[-1]
            clean_size = seg.stat().st_size
            # What another process would leave if killed inside its write: a prefix of the next record.
            frame, _ = encode_record(first.seq + 1, 1, bytes.fromhex(led.head[1]), b"never acknowledged" * 5)
            with open(seg, "ab") as f:
                f.write(frame[: len(frame) // 2])
            for _ in range(2):
                assert [a.artifact_id for a in await fa.list()] == [first.artifact_id]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                second = await fa.save(str(src), kind="blob")
            assert [w.category for w in caught] == [TornTailWarning]
            assert second.seq == first.seq + 1
            return clean_size, seg

    clean_size, seg = anyio.run(main)
    disk = check_chain(root)
    assert [r.seq for r in disk] == [1, 2]
    assert disk[1].offset == clean_size
