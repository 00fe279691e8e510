"""The order of the log's durability steps, seen through the real ``os`` calls (not counted, ordered):
no acknowledgement before fdatasync returns; a new segment's header fsynced before its rename, the
directory fsynced after it, both before the first record is written into it; a torn tail's
truncation fsynced before open returns and before anything is appended."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.framing import encode_record
from fdtools import fd_path
from logcheck import seg_files

RUN = dict(run_id="r", graph_id="g", node_id="n")
TIMEOUT = 60


def src(d: Path, name: str, size: int = 10) -> str:
    """A small source file to save."""
    p = d / name
    p.write_bytes(name.encode() * size)
    return str(p)


class Trace:
    """Records rename, fsync, fdatasync, pwrite and ftruncate calls (with the paths involved), in order."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        real = {n: getattr(os, n) for n in ("rename", "fsync", "fdatasync", "pwrite", "ftruncate")}

        def on_fd(name):
            def wrapper(fd, *args):
                self.events.append((name, fd_path(fd)))
                return real[name](fd, *args)
            return wrapper

        def rename(a, b, *args, **kw):
            self.events.append(("rename", f"{os.fspath(a)} -> {os.fspath(b)}"))
            return real["rename"](a, b, *args, **kw)

        for name in ("fsync", "fdatasync", "pwrite", "ftruncate"):
            monkeypatch.setattr(filelog.os, name, on_fd(name))
        monkeypatch.setattr(filelog.os, "rename", rename)

    def mark(self, what: str) -> None:
        """Note a point in the test (e.g. "open returned") in the trace."""
        self.events.append(("mark", what))

    def index(self, event: tuple[str, str], after: int = -1) -> int:
        """Index of the first occurrence of ``event`` after index ``after`` (ValueError if none)."""
        for i in range(after + 1, len(self.events)):
            if self.events[i] == event:
                return i
        raise ValueError(f"{event} not found after {after} in {self.events}")


# --------------------------------------------------------------------------- acknowledgement after fdatasync
@pytest.mark.usefixtures("three_flushes")  # its fdatasync; the one-flush syncfs: test_one_flush.py
def test_save_does_not_return_before_its_fdatasync_returns(root, tmp_path, monkeypatch):
    """With the real fdatasync of the segment blocked in the writer thread, save() has not returned and
    its event is not visible; once fdatasync returns, save() returns it."""
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync
    armed = False
    caller: list[int] = []

    def fdatasync(fd):
        if armed and fd_path(fd).endswith(".seg"):
            caller.append(threading.get_ident())
            entered.set()
            assert release.wait(TIMEOUT)
        return real(fd)

    def writer_is_the_blocked_caller() -> bool:
        # Whether the blocked fdatasync was called from inside the batch append itself: then
        # nothing can acknowledge the batch before it returns, and waiting longer shows nothing.
        frame = sys._current_frames().get(caller[0])
        while frame is not None:
            if frame.f_code.co_name == "append_batch":
                return True
            frame = frame.f_back
        return False

    monkeypatch.setattr(filelog.os, "fdatasync", fdatasync)

    async def main():
        nonlocal armed
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(src(tmp_path, "a"), kind="blob")
            armed = True
            returned = []

            async def save():
                returned.append(await fa.save(src(tmp_path, "b"), kind="blob"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(save)
                await anyio.to_thread.run_sync(entered.wait, TIMEOUT)
                with anyio.fail_after(TIMEOUT):  # a guard against hanging, not a timed assertion
                    while not returned and not writer_is_the_blocked_caller():
                        await anyio.sleep(0)  # the flush runs elsewhere: let the save go on
                await anyio.wait_all_tasks_blocked()
                assert returned == [], "save() returned while its fdatasync had not"
                assert led.head[0] == 1 and led.catalog.n == 1  # not applied either
                release.set()
            assert returned[0].seq == 2 and led.head[0] == 2

    anyio.run(main)


# --------------------------------------------------------------------------- new segments
def test_new_segment_header_fsync_rename_dir_fsync_then_first_write(root, tmp_path, monkeypatch):
    """Every segment (the first and each rollover): its header is fsynced under the temp name, then it is
    renamed in, then the log directory is fsynced, and only then is the first record written into it."""
    trace = Trace(monkeypatch)

    async def main():
        async with open_ledger(root, segment_bytes=1024) as led:
            fa = led.artifacts(**RUN)
            for i in range(8):
                await fa.save(src(tmp_path, f"f{i}"), kind="blob", labels={"pad": "x" * 200})

    anyio.run(main)
    log_dir = os.path.realpath(root / "log")
    segs = seg_files(root)
    assert len(segs) >= 3
    for seg in segs:
        path = os.path.join(log_dir, seg.name)
        header_sync = trace.index(("fsync", path + ".tmp"))
        renamed = trace.index(("rename", f"{path}.tmp -> {path}"), header_sync)
        dir_sync = trace.index(("fsync", log_dir), renamed)
        first_write = trace.index(("pwrite", path))
        assert header_sync < renamed < dir_sync < first_write, (seg.name, trace.events)


# --------------------------------------------------------------------------- torn tails
def _torn_leftover(seg: Path, seq: int, prev_hex: str) -> None:
    """Append half of a record, as a writer killed inside its write leaves it."""
    frame, _ = encode_record(seq, 1, bytes.fromhex(prev_hex), b"never acknowledged" * 5)
    with open(seg, "ab") as f:
        f.write(frame[: len(frame) // 2])


def _synced_after(trace: Trace, cut: int, path: str, before: int) -> bool:
    return any(ev in (("fsync", path), ("fdatasync", path)) for ev in trace.events[cut + 1 : before])


@pytest.mark.filterwarnings("ignore::artifact_ledger.ledger.filelog.TornTailWarning")
def test_torn_tail_truncation_is_fsynced_before_open_returns_and_before_any_append(root, tmp_path, monkeypatch):
    """Open cuts a torn tail and fsyncs the segment before it returns; a torn leftover found by an append
    is cut and fsynced before the append writes its record."""

    async def build():
        async with open_ledger(root) as led:
            await led.artifacts(**RUN).save(src(tmp_path, "a"), kind="blob")
            return led.head

    head = anyio.run(build)
    seg = seg_files(root)[-1]
    path = os.path.realpath(seg)
    _torn_leftover(seg, head[0] + 1, head[1])
    trace = Trace(monkeypatch)

    async def main():
        async with open_ledger(root) as led:
            trace.mark("open returned")
            fa = led.artifacts(**RUN)
            _torn_leftover(seg, led.head[0] + 1, led.head[1])  # another writer dies mid-append
            trace.mark("leftover written")
            await fa.save(src(tmp_path, "b"), kind="blob")

    anyio.run(main)
    opened = trace.index(("mark", "open returned"))
    cut = trace.index(("ftruncate", path))
    assert cut < opened and _synced_after(trace, cut, path, opened), trace.events
    left = trace.index(("mark", "leftover written"))
    cut2 = trace.index(("ftruncate", path), left)
    write = trace.index(("pwrite", path), left)
    assert cut2 < write and _synced_after(trace, cut2, path, write), trace.events
