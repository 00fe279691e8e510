"""Batch boundaries (segment format 2): a torn FINAL group-commit batch, a middle page lost and a later
page kept, is cut as a torn tail; the same damage in a batch followed by a later one is corruption.
Version-1 segments keep their rules and stay readable; appends after them go to a new segment.
Every image is built from a real log written by the library."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import warnings
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import filelog
from artifact_ledger.ledger.errors import LedgerCorruption
from artifact_ledger.ledger.filelog import TornTailWarning
from artifact_ledger.ledger.framing import encode_record, encode_segment_header
from logcheck import DiskRecord, check_chain, recorded_ids, seg_files

pytestmark = pytest.mark.filterwarnings("ignore::artifact_ledger.ledger.checkpoints.CheckpointWarning")

RUN = dict(run_id="r", graph_id="g", node_id="n")
TIMEOUT = 60
PAGE = 4096
BATCH = 12
PAD = "x" * 1000  # about 1.2 KB a record, so the batch spans several pages


def src(d: Path, name: str) -> str:
    """A small source file to save."""
    p = d / name
    p.write_bytes(name.encode() * 10)
    return str(p)


async def _save_batch(led, fa, scratch: Path, monkeypatch) -> None:
    """Save BATCH artifacts that the group commit writes as ONE batch (queued behind a held flush)."""
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync
    held = [True]

    def fdatasync(fd):
        if held[0] and os.readlink(f"/proc/self/fd/{fd}").endswith(".seg"):
            held[0] = False
            entered.set()
            assert release.wait(TIMEOUT)
        return real(fd)

    real_syncfs = filelog._syncfs_fd

    def syncfs_fd(fd, what):  # one flush per batch holds its syncfs instead
        if held[0]:
            held[0] = False
            entered.set()
            assert release.wait(TIMEOUT)
        return real_syncfs(fd, what)

    monkeypatch.setattr(filelog.os, "fdatasync", fdatasync)
    monkeypatch.setattr(filelog, "_syncfs_fd", syncfs_fd)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: fa.save(src(scratch, "held"), kind="blob"))
            assert await anyio.to_thread.run_sync(entered.wait, TIMEOUT)
            for i in range(BATCH):
                tg.start_soon(lambda i=i: fa.save(src(scratch, f"b{i}"), kind="blob", labels={"pad": PAD, "i": i}))
            with anyio.fail_after(TIMEOUT):  # a guard against hanging, not a timed assertion
                while len(led._gc._pending) < BATCH:
                    await anyio.sleep(0)
            release.set()
    finally:
        monkeypatch.setattr(filelog.os, "fdatasync", real)
        monkeypatch.setattr(filelog, "_syncfs_fd", real_syncfs)


def build(root: Path, scratch: Path, monkeypatch, *, later_batch: bool) -> list[DiskRecord]:
    """A ledger whose last (or, with ``later_batch``, second to last) batch holds BATCH records."""
    scratch.mkdir(parents=True, exist_ok=True)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(src(scratch, "first"), kind="blob")
            await _save_batch(led, fa, scratch, monkeypatch)
            if later_batch:
                await fa.save(src(scratch, "later"), kind="blob")

    anyio.run(main)
    shutil.rmtree(root / "checkpoints")  # the log alone decides here
    return check_chain(root)


def big_batch(recs: list[DiskRecord]) -> list[DiskRecord]:
    """The records of the BATCH-record batch."""
    firsts = [r.batch_first for r in recs]
    first = max(set(firsts), key=firsts.count)
    batch = [r for r in recs if r.batch_first == first]
    assert len(batch) == BATCH and [r.seq for r in batch] == list(range(first, first + BATCH))
    return batch


def zero_middle_page(root: Path, batch: list[DiskRecord]) -> tuple[int, DiskRecord]:
    """Zero a whole page inside ``batch`` that has a later page of it, with whole records, after it.

    Returns the page's offset and the first record the zeros touch."""
    start, end = batch[0].offset, batch[-1].offset + batch[-1].length
    page = (start // PAGE + 1) * PAGE
    assert page + PAGE < batch[-1].offset, "the batch must keep a whole record after the zeroed page"
    with open(root / "log" / batch[0].segment, "r+b") as f:
        f.seek(page)
        f.write(bytes(PAGE))
    hit = next(r for r in batch if r.offset + r.length > page)
    assert any(r.offset >= page + PAGE for r in batch) and end > page + PAGE
    return page, hit


def open_and_list(root: Path) -> tuple[list[str], list[warnings.WarningMessage]]:
    """Open, list every artifact id in seq order, close; return them and the TornTailWarnings."""

    async def main():
        async with open_ledger(root) as led:
            arts = sorted(await led.artifacts(**RUN).list(scope="all"), key=lambda a: a.seq)
            return [a.artifact_id for a in arts]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = anyio.run(main)
    return ids, [w for w in caught if issubclass(w.category, TornTailWarning)]


def test_torn_final_batch_with_a_lost_middle_page_is_a_torn_tail(root, tmp_path, monkeypatch):
    """A middle page of the final, never acknowledged batch lost, a later page kept: open cuts the batch
    from the first damaged record on (TornTailWarning), keeps everything before, and appends continue."""
    recs = build(root, tmp_path / "src", monkeypatch, later_batch=False)
    batch = big_batch(recs)
    assert batch[-1] == recs[-1]
    _, hit = zero_middle_page(root, batch)
    kept = [r for r in recs if r.seq < hit.seq]
    ids, torn = open_and_list(root)
    assert ids == recorded_ids(kept)
    assert len(torn) == 1
    assert f"seq {hit.seq}" in str(torn[0].message) and "same unfinished batch" in str(torn[0].message)
    seg = root / "log" / hit.segment
    assert seg.stat().st_size == hit.offset
    assert check_chain(root) == kept

    async def append():
        async with open_ledger(root) as led:
            return await led.artifacts(**RUN).save(src(tmp_path, "after"), kind="blob")

    assert anyio.run(append).seq == hit.seq
    assert [r.seq for r in check_chain(root)] == list(range(1, hit.seq + 1))


def test_same_damage_in_a_batch_followed_by_a_later_batch_is_corruption(root, tmp_path, monkeypatch):
    """The same lost page in a batch that a later batch follows (so it was acknowledged) fails open with
    LedgerCorruption naming the segment, offset and seq, and changes nothing."""
    recs = build(root, tmp_path / "src", monkeypatch, later_batch=True)
    batch = big_batch(recs)
    assert recs[-1].batch_first == recs[-1].seq > batch[-1].seq
    _, hit = zero_middle_page(root, batch)
    before = {p.name: p.read_bytes() for p in seg_files(root)}
    with pytest.raises(LedgerCorruption) as info:
        open_and_list(root)
    err = info.value
    assert (err.segment, err.offset, err.seq) == (hit.segment, hit.offset, hit.seq)
    assert "later batch" in str(err)
    assert {p.name: p.read_bytes() for p in seg_files(root)} == before


# --------------------------------------------------------------------------- format version 1
def to_version1(root: Path) -> list[DiskRecord]:
    """Rewrite a library-written log as the version-1 library wrote it (same records, same segments)."""
    recs = check_chain(root)
    prev = bytes(32)
    out = []
    for seg in seg_files(root):
        data = bytearray(encode_segment_header(int(seg.stem), prev, version=1))
        for r in (r for r in recs if r.segment == seg.name):
            frame, h = encode_record(r.seq, r.ts_us, prev, r.payload, version=1)
            out.append(DiskRecord(r.seq, r.ts_us, prev, h, r.payload, seg.name, len(data), len(frame)))
            data += frame
            prev = h
        seg.write_bytes(bytes(data))
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    assert check_chain(root) == out
    return out


def _version(seg: Path) -> int:
    return struct.unpack_from("<I", seg.read_bytes(), 8)[0]


def test_version1_ledger_reads_and_appends_go_to_a_new_version2_segment(root, tmp_path, monkeypatch):
    """A version-1 log opens with every record; the next append starts a version-2 segment and leaves the
    version-1 segment byte for byte as it was; both read back after a reopen."""
    build(root, tmp_path / "src", monkeypatch, later_batch=True)
    old = to_version1(root)
    (v1,) = seg_files(root)
    v1_bytes = v1.read_bytes()
    ids, torn = open_and_list(root)
    assert ids == recorded_ids(old) and torn == []

    async def append():
        async with open_ledger(root) as led:
            return await led.artifacts(**RUN).save(src(tmp_path, "new"), kind="blob")

    new = anyio.run(append)
    segs = seg_files(root)
    assert [p.name for p in segs] == [v1.name, filelog.segment_name(new.seq)]
    assert _version(segs[0]) == 1 and _version(segs[1]) == 2
    assert segs[0].read_bytes() == v1_bytes
    assert open_and_list(root)[0] == recorded_ids(old) + [new.artifact_id]


def test_version1_segment_keeps_the_version1_rule(root, tmp_path, monkeypatch):
    """Version-1 records carry no batch boundaries, so a lost middle page with an intact record after it
    is still corruption there, even in the last batch."""
    build(root, tmp_path / "src", monkeypatch, later_batch=False)
    old = to_version1(root)
    batch = old[-BATCH:]
    page = (batch[0].offset // PAGE + 1) * PAGE
    with open(root / "log" / batch[0].segment, "r+b") as f:
        f.seek(page)
        f.write(bytes(PAGE))
    with pytest.raises(LedgerCorruption, match="intact record follows"):
        open_and_list(root)


def test_record_less_version1_last_segment_is_replaced_and_readers_follow(root, tmp_path, monkeypatch):
    """A version-1 last segment holding only its header is replaced by a version-2 one of the same name on
    the next append; a ledger already open on it sees the new record."""
    # Tiny segments: several, so the last one can be cut to its header.
    async def fill():
        async with open_ledger(root, segment_bytes=1024) as led:
            fa = led.artifacts(**RUN)
            for i in range(6):
                await fa.save(src(tmp_path, f"f{i}"), kind="blob", labels={"pad": "y" * 300})

    anyio.run(fill)
    old = to_version1(root)
    last = seg_files(root)[-1]
    with open(last, "r+b") as f:
        f.truncate(56)
    kept = [r for r in old if r.segment != last.name]

    async def main():
        async with open_ledger(root, segment_bytes=1024) as reader, open_ledger(root, segment_bytes=1024) as writer:
            new = await writer.artifacts(**RUN).save(src(tmp_path, "new"), kind="blob")
            seen = [a.artifact_id for a in sorted(await reader.artifacts(**RUN).list(scope="all"), key=lambda a: a.seq)]
            return new, seen

    new, seen = anyio.run(main)
    assert new.seq == int(last.stem) and _version(last) == 2
    assert seen == recorded_ids(kept) + [new.artifact_id]
    assert recorded_ids(check_chain(root)) == seen
