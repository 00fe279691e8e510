"""A shortened history must not pass as healthy (issue 6, case 6).

Wherever the ledger knows of a higher seq than the log now holds (a checkpoint
file, the ``_last_checkpoint`` pointer, this process's own head), opening and
``verify()`` report the missing seqs as lost records, and nothing is cut.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anyio
import pytest

from artifact_ledger import (CheckpointWarning, LedgerCorruption, LostRecordsWarning, RecordsLost, TornTailWarning,
                             open_ledger)
from artifact_ledger.ledger import checkpoints
from artifact_ledger.ledger.framing import SEGMENT_HEADER_SIZE
from logcheck import check_chain, seg_files

RUN = dict(run_id="r", graph_id="g", node_id="n")
SEGMENT = 1100  # a few records per segment


async def fill(led, scratch: Path, n: int) -> list:
    """Save ``n`` small artifacts through ``led``."""
    fac = led.artifacts(**RUN)
    out = []
    for i in range(n):
        src = scratch / f"s{i}.txt"
        src.write_bytes(f"payload {i}".encode())
        out.append(await fac.save(str(src), kind="t", labels={"i": i}))
    return out


def build(root: Path, scratch: Path, n: int = 14) -> list:
    """A closed ledger of ``n`` saves over several segments (its close wrote a checkpoint at the head)."""
    scratch.mkdir(parents=True, exist_ok=True)

    async def main():
        async with open_ledger(root, segment_bytes=SEGMENT, fsync=False) as led:
            await fill(led, scratch, n)

    anyio.run(main)
    recs = check_chain(root)
    assert len(seg_files(root)) >= 3 and checkpoints.file_name(n) in os.listdir(root / "checkpoints")
    return recs


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under the log and checkpoint directories, by path."""
    return {str(p.relative_to(root)): p.read_bytes()
            for sub in ("log", "checkpoints") for p in sorted((root / sub).glob("*")) if p.is_file()}


def delete_last_segment(root: Path, recs: list) -> int:
    """Remove the last segment file; returns the seq the log now ends at."""
    last = seg_files(root)[-1]
    first = int(last.stem)
    last.unlink()
    return first - 1


def expect_lost(root: Path, log_head: int, last: int, evidence: str, **kw) -> RecordsLost:
    """Opening (writable and read-only) raises RecordsLost for log_head+1..last, changing no byte."""
    before = tree_bytes(root)
    for read_only in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)  # a loss, not a cache problem
            warnings.simplefilter("error", TornTailWarning)  # nor a torn write
            with pytest.raises(RecordsLost) as info:
                anyio.run(functools.partial(_open_close, root, read_only=read_only, **kw))
        err = info.value
        assert isinstance(err, LedgerCorruption)
        assert (err.first, err.last, err.log_head) == (log_head + 1, last, log_head), str(err)
        span = f"seq {last}" if log_head + 1 == last else f"seqs {log_head + 1}..{last}"
        text = str(err)
        assert span in text and evidence in text and "backup" in text and "accept_loss=True" in text, text
        assert tree_bytes(root) == before, "a failed open must not cut, repair or checkpoint anything"
    return err


async def _open_close(root: Path, **kw) -> None:
    led = await open_ledger(root, fsync=False, **kw)
    await led.aclose()


def test_deleted_last_segment_with_checkpoint_is_lost_records(tmp_path):
    """Delete the last segment: open (writable or read-only) names the missing seqs; nothing is rebuilt."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    log_head = delete_last_segment(root, recs)
    assert log_head < len(recs)
    expect_lost(root, log_head, len(recs), "checkpoint file")


def test_deleted_last_segment_with_only_the_pointer_is_lost_records(tmp_path):
    """With every checkpoint file gone, the _last_checkpoint pointer alone still proves the loss."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    for name in os.listdir(root / "checkpoints"):
        if name.endswith(".ckpt"):
            os.unlink(root / "checkpoints" / name)
    log_head = delete_last_segment(root, recs)
    expect_lost(root, log_head, len(recs), "checkpoint pointer")


@pytest.mark.parametrize("lost", [1, 2])
def test_last_segment_cut_by_whole_records_is_lost_records(tmp_path, lost):
    """Cutting whole records off the end (a clean boundary, so nothing looks torn) is reported as lost."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    keep = recs[-lost - 1]
    last_seg = root / "log" / recs[-1].segment
    # Down to a record boundary, or (all its records) to the bare header, a clean end of a log.
    os.truncate(last_seg, keep.offset + keep.length if keep.segment == last_seg.name else SEGMENT_HEADER_SIZE)
    expect_lost(root, keep.seq, len(recs), "checkpoint file")


def test_checkpointed_record_cut_mid_record_is_lost_not_a_torn_tail(tmp_path):
    """A cut inside a record a checkpoint names is not truncated as a torn tail: that record was committed."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    last = recs[-1]
    os.truncate(root / "log" / last.segment, last.offset + last.length - 3)
    expect_lost(root, last.seq - 1, last.seq, "checkpoint file")
    assert (root / "log" / last.segment).stat().st_size == last.offset + last.length - 3


def test_accept_loss_opens_the_shorter_log_and_drops_the_evidence(tmp_path):
    """accept_loss=True: read-only opens in memory (keeping the files); writable removes the checkpoints
    past the log and repoints the pointer, after which opens are clean and appends continue."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")

    async def main():
        async with open_ledger(root, fsync=False, segment_bytes=SEGMENT) as led:  # a checkpoint at 14, then 16
            await fill(led, tmp_path / "src", 2)
            await led.checkpoint()
        assert checkpoints.file_name(len(recs)) in os.listdir(root / "checkpoints")
        log_head = delete_last_segment(root, recs)
        before = tree_bytes(root)
        with pytest.warns(LostRecordsWarning, match="kept"):
            async with open_ledger(root, read_only=True, accept_loss=True) as led:
                assert led.head[0] == log_head
                res = await led.verify()  # the files still say so
                assert not res.ok and res.lost == (log_head + 1, len(recs) + 2)
        assert tree_bytes(root) == before
        with pytest.warns(LostRecordsWarning, match="removed"):
            led = await open_ledger(root, fsync=False, accept_loss=True)
        async with led:
            assert led.head[0] == log_head
            assert all(int(n[:20]) <= log_head for n in os.listdir(root / "checkpoints") if n.endswith(".ckpt"))
            assert checkpoints.known_seq(str(root / "checkpoints"))[0] <= log_head
            assert (await led.verify()).ok
            await fill(led, tmp_path / "src", 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with open_ledger(root, fsync=False) as led:
                assert led.head[0] == log_head + 3 and (await led.verify()).ok
        assert [r.seq for r in check_chain(root)] == list(range(1, log_head + 4))

    anyio.run(main)


def test_live_process_head_ahead_of_a_deleted_segment(tmp_path):
    """No checkpoint on disk, but this process wrote seqs the log lost: verify reports them, and the next
    save raises RecordsLost instead of appending to the deleted file; a read-only process sees it too."""
    root = tmp_path / "ledger"
    scratch = tmp_path / "src"
    scratch.mkdir()

    async def main():
        led = await open_ledger(root, fsync=False, segment_bytes=SEGMENT, checkpoint_every=10_000)
        try:
            await fill(led, scratch, 14)
            head = led.head[0]
            reader = await open_ledger(root, read_only=True)
            assert reader.head[0] == head
            assert not (root / "checkpoints").exists() or not os.listdir(root / "checkpoints")
            log_head = delete_last_segment(root, [])
            before = tree_bytes(root)
            for who in (led, reader):
                res = await who.verify()
                assert not res.ok and res.lost == (log_head + 1, head), res.problems
                assert f"seqs {log_head + 1}..{head}" in res.problem and "this process" in res.problem
            with pytest.raises(RecordsLost) as info:
                await fill(led, scratch, 1)
            assert (info.value.first, info.value.last) == (log_head + 1, head)
            assert tree_bytes(root) == before, "nothing may be appended after the loss was seen"
            await reader.aclose()
        finally:
            await led.aclose()
        assert tree_bytes(root) == before  # the failed append poisoned it: no close-time checkpoint either

    anyio.run(main)


@pytest.mark.parametrize("how", ["cut", "delete"])
def test_live_reader_sees_records_removed_from_the_log(tmp_path, how):
    """A live read-only reader whose head is ahead of a log cut by whole records, or whose last segment was
    deleted, raises RecordsLost on its next read."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    shutil.rmtree(root / "checkpoints")  # only the reader's memory knows

    async def main():
        async with open_ledger(root, read_only=True) as led:
            fac = led.artifacts(**RUN)
            assert len(await fac.list()) == len(recs)
            if how == "cut":
                keep = recs[-2]
                assert keep.segment == recs[-1].segment
                os.truncate(root / "log" / keep.segment, keep.offset + keep.length)
            else:
                keep = recs[delete_last_segment(root, recs) - 1]
            with pytest.raises(RecordsLost) as info:
                await fac.list()
            assert (info.value.first, info.value.last) == (keep.seq + 1, len(recs))
            res = await led.verify()
            assert not res.ok and res.lost == (keep.seq + 1, len(recs))

    anyio.run(main)


def test_cli_reports_lost_records(tmp_path):
    """The CLI (read-only) exits 1 naming the missing seqs, for verify and for any read command."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    log_head = delete_last_segment(root, recs)
    before = tree_bytes(root)
    for cmd in (["verify"], ["list", "--scope", "all"]):
        res = subprocess.run([sys.executable, "-m", "artifact_ledger", "-C", str(root), *cmd],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, (cmd, res.stdout, res.stderr)
        assert f"seqs {log_head + 1}..{len(recs)}" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert tree_bytes(root) == before


@pytest.mark.parametrize("pointed", [9, 3])
def test_accepting_a_loss_makes_the_removals_durable_before_returning(tmp_path, monkeypatch, pointed):
    """accept_loss removes the checkpoints past the log's end and repoints the pointer; only a
    directory fsync after those changes keeps a power cut from bringing the evidence back."""
    import artifact_ledger.ledger.checkpoints as ckpts

    d = tmp_path / "checkpoints"
    d.mkdir()
    for seq in (3, 8, 9):
        (d / f"{seq:020d}.ckpt").write_bytes(b"x")
    (d / ckpts.POINTER).write_text(json.dumps({"seq": pointed, "file": f"{pointed:020d}.ckpt"}))
    order: list[str] = []
    real_unlink, real_replace, real_fsync = os.unlink, os.replace, os.fsync
    monkeypatch.setattr(ckpts.os, "unlink", lambda p, *a, **k: (order.append("unlink"), real_unlink(p, *a, **k))[1])
    monkeypatch.setattr(ckpts.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])

    def fsync(fd):
        if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(d):
            order.append("fsync dir")
        return real_fsync(fd)

    monkeypatch.setattr(ckpts.os, "fsync", fsync)
    removed = ckpts.discard_beyond(str(d), 5)
    repointed = [ckpts.POINTER] if pointed > 5 else []
    assert sorted(removed) == sorted([f"{8:020d}.ckpt", f"{9:020d}.ckpt", *repointed])
    assert ckpts.known_seq(str(d))[0] == 3
    last_change = max(i for i, op in enumerate(order) if op in ("unlink", "replace"))
    assert "fsync dir" in order[last_change + 1:], order
