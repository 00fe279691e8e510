"""The log lock: fork children refused, a replaced lock file, stopped holders, bounded lock holds."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger.facade import audit, open_ledger
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.errors import LedgerCorruption, LedgerError
from artifact_ledger.ledger.events import ArtifactRecorded, encode_event
from artifact_ledger.ledger.filelog import SegmentLog
from artifact_ledger.ledger.group_commit import GroupCommitLog
from artifact_ledger.store.local import LocalBlobStore
from logcheck import check_chain, recorded_ids, seg_files

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
TIMEOUT = 60
IDS = {"run_id": "r", "graph_id": "g", "node_id": "n"}


# --------------------------------------------------------------------------- helpers
def probe_exclusive(log_dir: Path) -> bool:
    """Whether a fresh open file description can take LOCK_EX right now on the lock file and the log directory."""
    fds = [os.open(log_dir / "LOCK", os.O_RDWR), os.open(log_dir, os.O_RDONLY)]
    try:
        for fd in fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        return True
    finally:
        for fd in fds:
            os.close(fd)  # closing the last descriptor of a description drops its flock


async def save_one(led, scratch: Path, i: int, **kw):
    """Save a small distinct file through the facade."""
    scratch.mkdir(exist_ok=True)
    p = scratch / f"{i}.txt"
    p.write_bytes(f"item {i} {os.getpid()}".encode())
    return await led.artifacts(**IDS).save(str(p), kind="k", labels={"i": i}, **kw)


def all_ids(root: Path) -> list[str]:
    """Artifact ids recorded in the log, checking the chain on the way."""
    check_chain(root)
    return recorded_ids(SegmentLog(str(root / "log")).read_from(1))


class Holder:
    """A separate process that takes the log lock through the library and then waits (and can be stopped)."""

    SCRIPT = textwrap.dedent("""
        import sys
        from artifact_ledger.ledger.filelog import SegmentLog
        log = SegmentLog(sys.argv[1])
        with log.locked(exclusive=sys.argv[2] == "ex"):
            print("locked", flush=True)
            sys.stdin.read()
    """)

    def __init__(self, log_dir: Path, exclusive: bool = True):
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(log_dir), "ex" if exclusive else "sh"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid
        # A watchdog: whatever the code under test does, the holder goes away eventually,
        # so a lock wait that cannot be bounded fails the test instead of hanging it.
        self._watchdog = threading.Timer(TIMEOUT, self.kill)
        self._watchdog.start()

    def stop(self) -> None:
        """SIGSTOP the holder: it keeps the lock and never releases it by itself."""
        os.kill(self.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """End the holder (the kernel drops its flock)."""
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
        self.proc.wait()

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        self.kill()
        self.proc.stdin.close()
        self.proc.stdout.close()


def append_records(root: Path, like, n: int) -> int:
    """Append ``n`` records naming ``like``'s blob through a log of our own (as another process would); new head."""
    log = SegmentLog(str(root / "log"), fsync=False)
    try:
        log.recover(lambda r: None)
        payloads = [encode_event(ArtifactRecorded(
            artifact_id=f"{log.head_seq + i:032x}", origin="save", kind="k", sha256=like.sha256, size=like.bytes,
            mime=like.mime, labels={"i": i}, **IDS)) for i in range(1, n + 1)]
        for i in range(0, n, 1000):
            log.append_batch(payloads[i:i + 1000], lambda r: None)
        return log.head_seq
    finally:
        log.close()


async def bulk_ledger(root: Path, n: int) -> int:
    """A ledger with one real artifact and ``n`` more records naming its blob, and no checkpoint."""
    async with open_ledger(root, fsync=False) as led:
        first = await save_one(led, root.parent / "src", 0)
    head = append_records(root, first, n)
    for p in (root / "checkpoints").glob("*"):
        p.unlink()
    return head


# --------------------------------------------------------------------------- case 3: fork()
def _forked_save(led, scratch: Path, results) -> None:
    """Fork child: try to use the parent's Ledger; report what each operation raised."""

    async def main():
        out = []
        for what in ("save", "list", "aclose"):
            try:
                if what == "save":
                    await save_one(led, scratch, 100 + os.getpid() % 1000)
                elif what == "list":
                    await led.artifacts(**IDS).list()
                else:
                    await led.aclose()
                out.append((what, None, ""))
            except BaseException as exc:
                out.append((what, type(exc).__name__, str(exc)))
        led._log.close()  # even closing the inherited log directly must not release the parent's lock
        return out

    try:
        results.put((os.getpid(), anyio.run(main)))
    except BaseException as exc:
        results.put((os.getpid(), repr(exc)))


def _run_forked_children(led, scratch: Path, n: int) -> list:
    results = FORK.Queue()
    procs = [FORK.Process(target=_forked_save, args=(led, scratch, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = []
    for _ in procs:
        try:
            out.append(results.get(timeout=TIMEOUT))
        except queue.Empty:
            pytest.fail(f"a forked child did not report (exit codes {[p.exitcode for p in procs]})")
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    return out


def test_forked_children_are_refused_and_parent_keeps_working(root, tmp_path):
    """Three fork() children of a process with an open Ledger: every save, read and close is refused, naming the fix."""

    async def main():
        async with open_ledger(root) as led:
            for i in range(3):
                await save_one(led, tmp_path / "p", i)
            out = _run_forked_children(led, tmp_path / "c", 3)
            for pid, ops in out:
                assert isinstance(ops, list), ops
                for what, exc_type, message in ops:
                    assert exc_type == "LedgerForked", (pid, what, exc_type, message)
                    assert "open_ledger(root) inside the child" in message and str(pid) in message
            for i in range(3, 6):
                await save_one(led, tmp_path / "p", i)
            assert len(await led.artifacts(**IDS).list()) == 6
            assert (await led.verify()).ok
        assert len(all_ids(root)) == 6
        async with open_ledger(root) as again:
            assert (await again.verify()).ok and again.head[0] == 6

    anyio.run(main)


def test_fork_child_never_releases_the_parents_lock(root, tmp_path):
    """While the parent holds the lock, a fork child's save, aclose and close leave it held."""

    async def main():
        async with open_ledger(root) as led:
            await save_one(led, tmp_path / "p", 0)
            log_dir = root / "log"
            with led._log.locked(exclusive=True):
                assert not probe_exclusive(log_dir)
                out = _run_forked_children(led, tmp_path / "c", 3)
                assert all(exc_type == "LedgerForked" for _, ops in out for _, exc_type, _ in ops), out
                # The children are gone and the lock is still the parent's alone.
                assert not probe_exclusive(log_dir)
            assert probe_exclusive(log_dir)
            await save_one(led, tmp_path / "p", 1)
            assert (await led.verify()).ok
        assert len(all_ids(root)) == 2

    anyio.run(main)


# --------------------------------------------------------------------------- case 4: the lock file replaced
def _open_and_report(root: str, results) -> None:
    """Spawned child: open the ledger and save one artifact within 2 s; report the outcome."""

    async def main():
        with anyio.fail_after(2):
            async with open_ledger(root) as led:
                art = await save_one(led, Path(root).parent / "child", 0)
                return art.artifact_id

    try:
        results.put(("ok", anyio.run(main)))
    except BaseException as exc:
        results.put((type(exc).__name__, str(exc)))


def test_replaced_lock_file_does_not_let_a_second_writer_in(root, tmp_path):
    """A process opened after log/LOCK was deleted and re-created still waits for the running writer's lock."""

    async def main():
        async with open_ledger(root) as led:
            await save_one(led, tmp_path / "p", 0)
            lock = root / "log" / "LOCK"
            with led._log.locked(exclusive=True):
                lock.unlink()
                lock.touch()
                results = SPAWN.Queue()
                p = SPAWN.Process(target=_open_and_report, args=(str(root), results))
                p.start()
                status, detail = await anyio.to_thread.run_sync(results.get, True, TIMEOUT)
                p.join(TIMEOUT)
                # It waited for the lock (until its own deadline) instead of locking the new file.
                assert status == "TimeoutError", detail
            # Released: the same late process gets in, and nothing interleaved.
            p = SPAWN.Process(target=_open_and_report, args=(str(root), results))
            p.start()
            status, child_id = await anyio.to_thread.run_sync(results.get, True, TIMEOUT)
            p.join(TIMEOUT)
            assert status == "ok", child_id
            await save_one(led, tmp_path / "p", 1)
            assert (await led.verify()).ok
        assert len(all_ids(root)) == 3 and child_id in all_ids(root)

    anyio.run(main)


BURSTS, BURST = 4, 16


def _writer_removing_lock(root: str, worker: int, rounds: int, barrier, results) -> None:
    """Spawned child: in each round open the ledger, save, and (worker 0) delete and re-create log/LOCK between
    saves."""

    async def main():
        acked = []

        async def save(led, i):
            art = await save_one(led, Path(root).parent / f"w{worker}", i)
            acked.append(art.artifact_id)

        await anyio.to_thread.run_sync(barrier.wait, TIMEOUT)  # both write at the same time
        for r in range(rounds):
            async with open_ledger(root) as led:
                for b in range(BURSTS):
                    async with anyio.create_task_group() as tg:  # a burst: concurrent appends, group commits
                        for i in range(BURST):
                            tg.start_soon(save, led, (r * BURSTS + b) * BURST + i)
                    if worker == 0:
                        lock = Path(root) / "log" / "LOCK"
                        lock.unlink(missing_ok=True)
                        lock.touch()
        return acked

    try:
        results.put(("ok", anyio.run(main)))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def test_two_writers_with_the_lock_file_removed_between_appends(root, tmp_path):
    """Two processes append while one keeps deleting log/LOCK: chain intact, every acknowledged artifact present."""

    async def main():
        async with open_ledger(root) as led:
            await save_one(led, tmp_path / "p", 0)

    anyio.run(main)
    results, barrier = SPAWN.Queue(), SPAWN.Barrier(2)
    procs = [SPAWN.Process(target=_writer_removing_lock, args=(str(root), w, 4, barrier, results)) for w in range(2)]
    for p in procs:
        p.start()
    acked = []
    for _ in procs:
        status, ids = results.get(timeout=TIMEOUT * 2)
        assert status == "ok", ids
        acked += ids
    for p in procs:
        p.join(TIMEOUT)
    ids = all_ids(root)
    assert len(ids) == 1 + 2 * 4 * BURSTS * BURST and set(acked) <= set(ids)


# --------------------------------------------------------------------------- case 8: stopped holders, timeouts
def test_fail_after_fires_around_a_save_blocked_by_a_stopped_holder(root, tmp_path):
    """A save waiting for a SIGSTOPped process's lock is cancellable; it leaves nothing behind and the ledger
    works on."""

    async def main():
        async with open_ledger(root) as led:  # the default lock_timeout is far longer than this test waits
            first = await save_one(led, tmp_path / "p", 0)
            append_records(root, first, 1)  # news from another writer: the next read must take the lock
            with Holder(root / "log") as holder:
                holder.stop()
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.5):
                        await save_one(led, tmp_path / "p", 99)
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.5):
                        await led.artifacts(**IDS).list()
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.5):
                        await open_ledger(root)
                holder.kill()
                assert not led._gc._pending  # the cancelled append is not queued for a later batch
                await save_one(led, tmp_path / "p", 2)
            labels = sorted(a.labels["i"] for a in await led.artifacts(**IDS).list())
            assert labels == [0, 1, 2]
        assert len(all_ids(root)) == 3

    anyio.run(main)


def test_cancelled_lock_wait_requeues_only_appends_still_awaited(tmp_path):
    """A batch whose flusher is cancelled in the lock wait: appends of tasks cancelled meanwhile are never written."""
    log_dir = tmp_path / "log"

    async def main():
        log = SegmentLog(str(log_dir), fsync=False)
        log.recover(lambda r: None)
        gcl = GroupCommitLog(log, lambda recs: None)

        async def append(payload: bytes, cancel_after: float | None) -> None:
            if cancel_after is None:
                await gcl.append(payload)
                return
            with anyio.move_on_after(cancel_after):
                await gcl.append(payload)
                raise AssertionError(f"{payload!r} was appended while the lock was held")

        with Holder(log_dir) as holder:
            holder.stop()
            async with anyio.create_task_group() as tg:
                tg.start_soon(append, b"flusher", 0.6)  # takes the batch, waits for the lock, is cancelled last
                tg.start_soon(append, b"waiter", 0.3)  # in that batch; its caller gives up first
                tg.start_soon(append, b"survivor", None)  # in that batch, still awaited: written later
                await anyio.sleep(0.9)
                holder.kill()
        await gcl.aclose()

    anyio.run(main)
    assert [r.payload for r in SegmentLog(str(log_dir)).read_from(1)] == [b"survivor"]


def test_save_and_open_time_out_naming_the_holders_pid(root, tmp_path):
    """With a stopped holder, saves (a whole group-commit batch) and a new open raise LockTimeout with its pid."""

    async def main():
        async with open_ledger(root, lock_timeout=0.3) as led:
            await save_one(led, tmp_path / "p", 0)
            with Holder(root / "log") as holder:
                holder.stop()
                errors = []

                async def save(i):
                    try:
                        await save_one(led, tmp_path / "p", i)
                    except LedgerError as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    for i in range(1, 5):
                        tg.start_soon(save, i)
                assert len(errors) == 4
                for exc in errors:
                    assert type(exc).__name__ == "LockTimeout" and isinstance(exc, TimeoutError)
                    assert f"pid {holder.pid}" in str(exc) and exc.holders == [holder.pid]
                    assert "lock_timeout" in str(exc)
                with pytest.raises(TimeoutError, match=f"pid {holder.pid}"):
                    await open_ledger(root, lock_timeout=0.3)
                holder.kill()
            await save_one(led, tmp_path / "p", 5)  # a timeout does not poison the ledger
            assert sorted(a.labels["i"] for a in await led.artifacts(**IDS).list()) == [0, 5]

    anyio.run(main)


def test_shared_holder_is_named_too(root, tmp_path):
    """A stopped reader holding the shared lock is named as such when a save times out."""

    async def main():
        async with open_ledger(root, lock_timeout=0.2) as led:
            with Holder(root / "log", exclusive=False) as holder:
                holder.stop()
                with pytest.raises(TimeoutError, match=f"pid {holder.pid} \\(shared\\)"):
                    await save_one(led, tmp_path / "p", 0)

    anyio.run(main)


def test_lock_timeout_is_validated_before_anything_is_created(root):
    """A bad lock_timeout is refused with a clear error and no directory appears."""

    async def main():
        for bad in (0, -1, float("nan"), float("inf"), "3", True):
            with pytest.raises(ValueError, match="lock_timeout"):
                await open_ledger(root, lock_timeout=bad)

    anyio.run(main)
    assert not root.exists()


# --------------------------------------------------------------------------- case 8: bounded lock holds
def _paused_child(root: str, what: str, paused, go, results) -> None:
    """Spawned child: open (full replay) or verify, pausing inside the walk until told to go on."""

    def pause(done: int, total: int) -> None:
        if not paused.is_set():
            paused.set()
            assert go.wait(TIMEOUT)

    async def main():
        if what == "replay":
            async with open_ledger(root, progress=pause) as led:
                return led.head[0]
        async with open_ledger(root) as led:
            res = await led.verify(progress=pause)
            return (res.ok, res.problem, res.head[0])

    try:
        results.put(("ok", anyio.run(main)))
    except BaseException as exc:
        results.put(("error", repr(exc)))


@pytest.mark.parametrize("what", ["replay", "verify"])
def test_full_replay_or_verify_does_not_hold_the_lock(root, tmp_path, what):
    """While another process is in the middle of a full replay (or a verify), a writer takes the exclusive lock
    and saves."""
    head = anyio.run(bulk_ledger, root, 5000)
    paused, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    p = SPAWN.Process(target=_paused_child, args=(str(root), what, paused, go, results))
    p.start()
    try:
        assert paused.wait(TIMEOUT), "the child never reached the middle of its walk"
        assert probe_exclusive(root / "log")

        async def write():
            async with open_ledger(root) as led:
                await save_one(led, tmp_path / "p", 1)

        anyio.run(write)
    finally:
        go.set()
    status, out = results.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    assert status == "ok", out
    # The child's tail pass, under the lock, saw the record committed meanwhile.
    assert out == (head + 1 if what == "replay" else (True, None, head + 1))


def test_a_writer_far_behind_reads_the_news_without_holding_the_lock(root, tmp_path, monkeypatch):
    """A save in a process that is thousands of records behind reads them before taking the exclusive lock."""

    async def main():
        async with open_ledger(root) as led:
            first = await save_one(led, tmp_path / "p", 0)
            head = append_records(root, first, 5000)
            probes = []
            real = filelog.scan_chain

            def spying(buf, pos, *args, **kw):
                if len(buf) - pos > 100_000 and not probes:  # reading the 5000 records
                    probes.append(probe_exclusive(root / "log"))
                return real(buf, pos, *args, **kw)

            monkeypatch.setattr(filelog, "scan_chain", spying)
            art = await save_one(led, tmp_path / "p", 1)
            assert probes == [True] and art.seq == head + 1

    anyio.run(main)


# --------------------------------------------------------------------------- readers and verify
def _save_in_child(root: str, segment_bytes: int, results) -> None:
    async def main():
        async with open_ledger(root, segment_bytes=segment_bytes) as led:
            art = await save_one(led, Path(root).parent / "child", 7)
            return art.artifact_id, art.seq

    results.put(anyio.run(main))


def test_reader_sees_another_process_commit_that_starts_a_new_segment(root, tmp_path):
    """A commit by another process that opens a new segment file is seen by this process's next read."""
    small = 200  # smaller than any record: every record starts a new segment

    async def main():
        async with open_ledger(root, segment_bytes=small) as led:
            await save_one(led, tmp_path / "p", 0)
            fa = led.artifacts(**IDS)
            assert len(await fa.list()) == 1
            before = seg_files(root)
            results = SPAWN.Queue()
            p = SPAWN.Process(target=_save_in_child, args=(str(root), small, results))
            p.start()
            aid, seq = await anyio.to_thread.run_sync(results.get, True, TIMEOUT)
            p.join(TIMEOUT)
            new = [s for s in seg_files(root) if s not in before]
            assert [int(s.stem) for s in new] == [seq]  # the child's commit is alone in a new segment
            seen = {a.artifact_id: a.seq for a in await fa.list()}
            assert len(seen) == 2 and seen[aid] == seq

    anyio.run(main)


def append_undecodable_record(root: Path):
    """Append, as another process would, a record with valid framing, CRC and chain but a garbage payload."""
    log = SegmentLog(str(root / "log"))
    try:
        log.recover(lambda r: None)
        (bad,) = log.append_batch([b"\xc1 not msgpack"], lambda r: None)
    finally:
        log.close()
    return bad


def test_verify_fails_on_a_well_framed_record_with_an_undecodable_payload(root, tmp_path):
    """A record with valid framing, CRC and chain whose payload is not an event fails verify, naming its seq."""

    async def main():
        async with open_ledger(root) as led:
            await save_one(led, tmp_path / "p", 0)
            bad = append_undecodable_record(root)
            store = LocalBlobStore(root / "blobs")
            res = await anyio.to_thread.run_sync(lambda: audit.verify(led._log, store, []))
            assert not res.ok and f"seq {bad.seq}" in res.problem and "undecodable" in res.problem
            with pytest.raises(LedgerCorruption, match=f"seq {bad.seq}"):
                await led.verify()

    anyio.run(main)


def test_a_damaged_record_found_while_catching_up_stops_every_later_call(root, tmp_path):
    """Another process's well-framed record with an undecodable payload: the catch-up that meets it raises,
    and so does every later read and write of this process (the log moved past it, the catalogue did not)."""

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            await save_one(led, tmp_path / "p", 0)
            bad = append_undecodable_record(root)
            for _ in range(2):
                with pytest.raises(LedgerCorruption, match=f"seq {bad.seq}"):
                    await arts.list(scope="all")
            with pytest.raises(LedgerCorruption, match=f"seq {bad.seq}"):
                await save_one(led, tmp_path / "q", 1)

    anyio.run(main)
