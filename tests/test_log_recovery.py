"""Recovery rules of the segment log: a torn tail is cut and reported, damage before it is a clear error."""

from __future__ import annotations

import functools
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.errors import LedgerCorruption
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged, decode_event
from artifact_ledger.ledger.filelog import TornTailWarning, segment_name
from artifact_ledger.ledger.framing import (
    BAD,
    FRAME_SIZE,
    GENESIS_HASH,
    INCOMPLETE,
    MAX_BODY,
    OK,
    SEGMENT_HEADER_SIZE,
    HeaderError,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    find_later_record,
    read_record,
)
from logcheck import HEADER_SIZE, DiskRecord, check_chain, seg_files

# These tests damage logs on purpose: the checkpoints in front of the damage are rightly ignored.
pytestmark = pytest.mark.filterwarnings("ignore::artifact_ledger.ledger.checkpoints.CheckpointWarning")

RUN = dict(run_id="r", graph_id="g", node_id="n")
SMALL_SEGMENTS = 1024


# --------------------------------------------------------------------------- helpers
def build(root: Path, scratch: Path, saves: int, *, segment_bytes: int | None = None,
          pin_last: bool = False) -> list[DiskRecord]:
    """Create a ledger with ``saves`` saves (pinning the first after the second); return its records."""
    kw = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
    scratch.mkdir(parents=True, exist_ok=True)

    async def main():
        async with open_ledger(root, **kw) as led:
            fa = led.artifacts(**RUN)
            first = None
            for i in range(saves):
                src = scratch / f"in{i}.txt"
                src.write_bytes(f"content {i} ".encode() * (i + 1))
                art = await fa.save(str(src), kind="blob", labels={"i": i}, metrics={"m": float(i)})
                first = first or art
                if i == 1:
                    await fa.pin(first.artifact_id)
            if pin_last:
                await fa.pin(art.artifact_id)

    anyio.run(main)
    return check_chain(root)


@dataclass
class Opened:
    """What a reopened ledger reports."""

    ids: list[str]
    pinned: dict[str, bool]
    head: tuple[int, str]
    torn: list[warnings.WarningMessage]


def reopen(root: Path, **kw) -> Opened:
    """Open the ledger, list every artifact in seq order, close; collect TornTailWarnings."""

    async def main():
        async with open_ledger(root, **kw) as led:
            arts = sorted(await led.artifacts(**RUN).list(scope="all"), key=lambda a: a.seq)
            assert [a.seq for a in arts] == sorted({a.seq for a in arts})
            return [a.artifact_id for a in arts], {a.artifact_id: a.pinned for a in arts}, led.head

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, pinned, head = anyio.run(main)
    return Opened(ids, pinned, head, [w for w in caught if issubclass(w.category, TornTailWarning)])


def expected(records: list[DiskRecord]) -> tuple[list[str], dict[str, bool], tuple[int, str]]:
    """Artifact ids, pin states and head implied by exactly ``records``."""
    ids, pinned = [], {}
    for r in records:
        ev = decode_event(r.payload)
        if isinstance(ev, ArtifactRecorded):
            ids.append(ev.artifact_id)
            pinned[ev.artifact_id] = ev.pinned
        else:
            assert isinstance(ev, PinChanged)
            pinned[ev.artifact_id] = ev.pinned
    head = (records[-1].seq, records[-1].hash.hex()) if records else (0, GENESIS_HASH.hex())
    return ids, pinned, head


def append_one(root: Path, scratch: Path, **kw) -> tuple[str, int]:
    """Save one more artifact; return its id and seq."""
    src = scratch / "after.txt"
    src.write_bytes(b"written after recovery")

    async def main():
        async with open_ledger(root, **kw) as led:
            art = await led.artifacts(**RUN).save(str(src), kind="blob")
            assert led.head[0] == art.seq
            return art.artifact_id, art.seq

    return anyio.run(main)


def assert_survivors(root: Path, got: Opened, kept: list[DiskRecord]) -> None:
    """The reopened ledger holds exactly ``kept``."""
    ids, pinned, head = expected(kept)
    assert got.ids == ids
    assert got.pinned == pinned
    assert got.head == head


def assert_appends_continue(root: Path, scratch: Path, kept: list[DiskRecord], **kw) -> None:
    """After recovery the next save gets the next seq and the chain stays intact across a reopen."""
    new_id, seq = append_one(root, scratch, **kw)
    assert seq == len(kept) + 1
    again = reopen(root, **kw)
    assert again.torn == []
    ids, _, _ = expected(kept)
    assert again.ids == ids + [new_id]
    disk = check_chain(root)
    assert [r.seq for r in disk] == list(range(1, seq + 1))
    assert disk[: len(kept)] == kept
    assert again.head == (seq, disk[-1].hash.hex())


@functools.lru_cache(maxsize=None)
def _segment_bytes(template: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in seg_files(template)}


def restore(template: Path, work: Path) -> None:
    """Make ``work``'s log a fresh copy of the template's (blobs may only have gained files), without checkpoints.

    The tails these tests cut stand for writes that were never acknowledged, so no checkpoint
    may name them: a checkpoint past the end of the log is lost data (tests/test_lost_records.py).
    """
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    if not work.exists():
        shutil.copytree(template, work, ignore=shutil.ignore_patterns("checkpoints"))
        return
    want = _segment_bytes(template)
    for p in seg_files(work):
        if p.name not in want:
            p.unlink()
    for name, data in want.items():
        (work / "log" / name).write_bytes(data)


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, like a crash in the middle of a write."""
    with open(path, "r+b") as f:
        f.truncate(size)


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR one byte of ``path`` with ``mask``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def expect_corruption(root: Path, segment: str, offset: int, seq: int) -> LedgerCorruption:
    """Opening must fail naming segment, offset and seq, and must not modify the log."""
    before = {p.name: p.read_bytes() for p in seg_files(root)}
    with pytest.raises(LedgerCorruption) as info:
        reopen(root)
    err = info.value
    assert (err.segment, err.offset, err.seq) == (segment, offset, seq), str(err)
    text = str(err)
    assert segment in text and f"offset {offset}" in text and f"seq {seq}" in text
    assert {p.name: p.read_bytes() for p in seg_files(root)} == before, "a failed open must not repair anything"
    return err


@pytest.fixture(scope="module")
def one_segment(tmp_path_factory):
    """A single-segment ledger: save, save, pin, save, save (5 records)."""
    base = tmp_path_factory.mktemp("one_segment")
    recs = build(base / "ledger", base / "src", 4)
    assert len(seg_files(base / "ledger")) == 1 and len(recs) == 5
    return base / "ledger", recs


@pytest.fixture(scope="module")
def pin_last(tmp_path_factory):
    """A single-segment ledger whose last record is a pin."""
    base = tmp_path_factory.mktemp("pin_last")
    recs = build(base / "ledger", base / "src", 3, pin_last=True)
    assert isinstance(decode_event(recs[-1].payload), PinChanged)
    return base / "ledger", recs


@pytest.fixture(scope="module")
def many_segments(tmp_path_factory):
    """A ledger rolled over into many small segments."""
    base = tmp_path_factory.mktemp("many_segments")
    recs = build(base / "ledger", base / "src", 14, segment_bytes=SMALL_SEGMENTS)
    assert len(seg_files(base / "ledger")) >= 5
    return base / "ledger", recs


# --------------------------------------------------------------------------- torn tails
@pytest.mark.parametrize("template", ["one_segment", "pin_last"])
def test_truncation_at_every_byte_of_last_record(template, request, tmp_path):
    """Cutting the last record anywhere keeps exactly the earlier records, warns, truncates, and appends continue."""
    tpl, recs = request.getfixturevalue(template)
    last = recs[-1]
    kept = recs[:-1]
    work = tmp_path / "work"
    for cut in range(last.offset, last.offset + last.length):
        restore(tpl, work)
        seg = work / "log" / last.segment
        truncate(seg, cut)
        got = reopen(work)
        assert_survivors(work, got, kept)
        # Cutting exactly at the record boundary leaves a clean log: nothing to report.
        assert len(got.torn) == (1 if cut > last.offset else 0), cut
        assert seg.stat().st_size == last.offset
        if got.torn:
            msg = str(got.torn[0].message)
            assert last.segment in msg and f"seq {last.seq}" in msg
        assert_appends_continue(work, tmp_path, kept)


def test_intact_log_reopens_without_warning(one_segment, tmp_path):
    """A cleanly closed log reopens with every record and no warning."""
    tpl, recs = one_segment
    restore(tpl, tmp_path / "w")
    got = reopen(tmp_path / "w")
    assert got.torn == []
    assert_survivors(tmp_path / "w", got, recs)


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory):
    """A directory for source files written by hypothesis examples."""
    return tmp_path_factory.mktemp("scratch")


def _cut_and_check(tpl: Path, recs: list[DiskRecord], seg_index: int, cut: int, scratch: Path) -> None:
    """Truncate segment ``seg_index`` (which must be the last) at ``cut`` and check recovery."""
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        work = Path(d) / "ledger"
        restore(tpl, work)
        seg = seg_files(work)[seg_index]
        truncate(seg, cut)
        in_seg = [r for r in recs if r.segment == seg.name]
        earlier = [r for r in recs if r.segment < seg.name]
        kept = earlier + [r for r in in_seg if r.offset + r.length <= cut]
        boundaries = {SEGMENT_HEADER_SIZE} | {r.offset + r.length for r in in_seg}
        got = reopen(work)
        assert_survivors(work, got, kept)
        assert len(got.torn) == (0 if cut in boundaries else 1)
        if cut < SEGMENT_HEADER_SIZE:
            # Not even a whole header: the segment was never usable, so it is removed.
            assert not seg.exists()
        else:
            assert seg.stat().st_size == max([SEGMENT_HEADER_SIZE]
                                             + [r.offset + r.length for r in kept if r.segment == seg.name])
        assert_appends_continue(work, scratch, kept)


@given(data=st.data())
@pytest.mark.parametrize("template", ["one_segment", "many_segments"])
def test_truncation_at_random_offsets_of_last_segment(template, request, scratch_dir, data):
    """Cutting the last segment at any byte keeps exactly the records wholly before the cut."""
    tpl, recs = request.getfixturevalue(template)
    last = seg_files(tpl)[-1]
    cut = data.draw(st.integers(0, last.stat().st_size), label="cut")
    _cut_and_check(tpl, recs, -1, cut, scratch_dir)


def test_segment_rollover_reads_back_and_handles_torn_tail(many_segments, tmp_path):
    """With tiny segments every record reads back after reopen, and a torn last segment is repaired."""
    tpl, recs = many_segments
    segs = seg_files(tpl)
    assert [int(p.stem) for p in segs] == sorted({int(p.stem) for p in segs})
    starts = [r.seq for r in recs if r.offset == HEADER_SIZE]
    assert [int(p.stem) for p in segs] == starts
    restore(tpl, tmp_path / "w")
    got = reopen(tmp_path / "w")
    assert got.torn == []
    assert_survivors(tmp_path / "w", got, recs)
    # Mid-record and mid-header cuts of the last segment.
    last = [r for r in recs if r.segment == segs[-1].name]
    _cut_and_check(tpl, recs, len(segs) - 1, last[-1].offset + 5, tmp_path)
    _cut_and_check(tpl, recs, len(segs) - 1, SEGMENT_HEADER_SIZE - 1, tmp_path)


def test_rollover_continues_after_recovery_with_small_segments(many_segments, tmp_path):
    """Appending after a torn-tail repair with small segments rolls over and keeps the chain."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    restore(tpl, work)
    last = recs[-1]
    truncate(work / "log" / last.segment, last.offset + last.length - 1)
    got = reopen(work, segment_bytes=SMALL_SEGMENTS)
    assert len(got.torn) == 1
    for _ in range(4):
        append_one(work, tmp_path, segment_bytes=SMALL_SEGMENTS)
    disk = check_chain(work)
    assert [r.seq for r in disk] == list(range(1, len(recs) + 4))
    assert len(seg_files(work)) > len(seg_files(tpl))


def test_header_only_last_segment_reopens_reads_and_appends(many_segments, tmp_path):
    """A last segment holding only its header (crash right after a rollover) is a clean end of the log."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    restore(tpl, work)
    last = seg_files(work)[-1]
    truncate(last, SEGMENT_HEADER_SIZE)
    kept = [r for r in recs if r.segment < last.name]

    async def reads():
        with anyio.fail_after(10):
            async with open_ledger(work, segment_bytes=SMALL_SEGMENTS) as led:
                fa = led.artifacts(**RUN)
                # Every read checks for news; an empty current segment must not look like news forever.
                for _ in range(3):
                    assert len(await fa.list(scope="all")) == len(expected(kept)[0])
                return led.head

    assert anyio.run(reads) == expected(kept)[2]
    got = reopen(work, segment_bytes=SMALL_SEGMENTS)
    assert got.torn == []
    assert_survivors(work, got, kept)
    assert_appends_continue(work, tmp_path, kept, segment_bytes=SMALL_SEGMENTS)
    assert (work / "log" / last.name).stat().st_size > SEGMENT_HEADER_SIZE


def test_header_only_segment_followed_by_another_is_corruption(many_segments, tmp_path):
    """A record-less segment with a successor means records are missing: open fails, it does not spin."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    restore(tpl, work)
    segs = seg_files(work)
    truncate(segs[2], SEGMENT_HEADER_SIZE)
    expect_corruption(work, segs[3].name, 0, int(segs[2].stem))


# --------------------------------------------------------------------------- zero-filled tails
def test_zero_filled_tail_after_last_record_is_torn_tail(one_segment, tmp_path):
    """Zeros appended after the last record (a crash that extended the file) are cut with a warning."""
    tpl, recs = one_segment
    work = tmp_path / "w"
    restore(tpl, work)
    seg = seg_files(work)[0]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(4096))
    got = reopen(work)
    assert len(got.torn) == 1
    assert_survivors(work, got, recs)
    assert seg.stat().st_size == size
    assert_appends_continue(work, tmp_path, recs)


@pytest.mark.parametrize("into", [0, 1, 7, 8, 30, -1])
def test_zeroed_last_record_is_torn_tail(one_segment, tmp_path, into):
    """A last record overwritten with zeros from some byte on (plus zero padding) is dropped as torn."""
    tpl, recs = one_segment
    work = tmp_path / "w"
    restore(tpl, work)
    last = recs[-1]
    seg = work / "log" / last.segment
    start = last.offset + (into % last.length)
    with open(seg, "r+b") as f:
        f.seek(start)
        f.write(bytes(last.offset + last.length - start + 512))
    got = reopen(work)
    assert len(got.torn) == 1
    assert_survivors(work, got, recs[:-1])
    assert seg.stat().st_size == last.offset
    assert_appends_continue(work, tmp_path, recs[:-1])


def test_zeroed_block_spanning_records_before_intact_ones_is_corruption(one_segment, tmp_path):
    """Zeros covering two middle records, with intact records after them, are damage, not a torn tail."""
    tpl, recs = one_segment
    work = tmp_path / "w"
    restore(tpl, work)
    a, b = recs[1], recs[2]
    seg = work / "log" / a.segment
    with open(seg, "r+b") as f:
        f.seek(a.offset)
        f.write(bytes(b.offset + b.length - a.offset))
    expect_corruption(work, a.segment, a.offset, a.seq)


# --------------------------------------------------------------------------- damage before the tail
def test_flipped_byte_anywhere_in_middle_record_is_corruption(one_segment, tmp_path):
    """Every byte of a middle record (length, crc, seq, ts, prev hash, payload), flipped, fails open clearly."""
    tpl, recs = one_segment
    work = tmp_path / "w"
    for victim in (recs[1], recs[-2]):
        for i in range(victim.length):
            restore(tpl, work)
            flip(work / "log" / victim.segment, victim.offset + i)
            expect_corruption(work, victim.segment, victim.offset, victim.seq)


@given(data=st.data())
def test_flipped_bit_in_any_non_last_record_is_corruption(many_segments, scratch_dir, data):
    """A flipped bit in any record but the very last one, in any segment, fails open clearly."""
    tpl, recs = many_segments
    victim = data.draw(st.sampled_from(recs[:-1]), label="record")
    i = data.draw(st.integers(0, victim.length - 1), label="byte")
    mask = 1 << data.draw(st.integers(0, 7), label="bit")
    with tempfile.TemporaryDirectory(dir=scratch_dir) as d:
        work = Path(d) / "ledger"
        restore(tpl, work)
        flip(work / "log" / victim.segment, victim.offset + i, mask)
        expect_corruption(work, victim.segment, victim.offset, victim.seq)


def test_last_record_of_non_last_segment_damaged_is_corruption(many_segments, tmp_path):
    """Damage at the end of a segment that has a successor is never mistaken for a torn tail."""
    tpl, recs = many_segments
    segs = seg_files(tpl)
    victim = [r for r in recs if r.segment == segs[1].name][-1]
    work = tmp_path / "w"
    restore(tpl, work)
    flip(work / "log" / victim.segment, victim.offset + victim.length - 1)
    expect_corruption(work, victim.segment, victim.offset, victim.seq)
    restore(tpl, work)
    truncate(work / "log" / victim.segment, victim.offset + victim.length - 3)
    expect_corruption(work, victim.segment, victim.offset, victim.seq)


def test_non_last_segment_cut_at_record_boundary_is_corruption(many_segments, tmp_path):
    """Losing whole records at the end of a non-last segment breaks the chain into the next segment."""
    tpl, recs = many_segments
    segs = seg_files(tpl)
    victim = [r for r in recs if r.segment == segs[1].name][-1]
    work = tmp_path / "w"
    restore(tpl, work)
    truncate(work / "log" / victim.segment, victim.offset)
    # The next segment now starts one seq too late, so the log is missing records.
    err = expect_corruption(work, segs[2].name, 0, victim.seq)
    assert segment_name(victim.seq) in str(err)


def test_flipped_byte_in_header_of_non_last_segment_is_corruption(many_segments, tmp_path):
    """Every byte of a non-last segment's header, flipped, fails open naming that segment."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    for seg_index in (0, 2):
        name = seg_files(tpl)[seg_index].name
        first = int(Path(name).stem)
        for i in range(SEGMENT_HEADER_SIZE):
            restore(tpl, work)
            flip(work / "log" / name, i)
            expect_corruption(work, name, 0, first)


def test_flipped_byte_in_header_of_last_segment_with_records_is_corruption(many_segments, tmp_path):
    """A damaged header in front of records is not a half-created segment: nothing is dropped."""
    tpl, recs = many_segments
    name = seg_files(tpl)[-1].name
    work = tmp_path / "w"
    restore(tpl, work)
    flip(work / "log" / name, 20)
    expect_corruption(work, name, 0, int(Path(name).stem))


@pytest.mark.parametrize("which", [0, 2, -2])
def test_missing_segment_is_corruption(many_segments, tmp_path, which):
    """A missing first or middle segment fails open, naming the missing segment."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    restore(tpl, work)
    segs = seg_files(work)
    gone = segs[which]
    after = segs[segs.index(gone) + 1]
    gone.unlink()
    err = expect_corruption(work, after.name, 0, int(gone.stem))
    assert gone.name in str(err) and "missing" in str(err)


def _rewrite_header(path: Path, first_seq: int, prev_hash: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(encode_segment_header(first_seq, prev_hash))


def test_segment_header_not_continuing_chain_is_corruption(many_segments, tmp_path):
    """A well-formed header whose previous hash or first seq does not continue the chain fails open."""
    tpl, recs = many_segments
    work = tmp_path / "w"
    segs = seg_files(tpl)
    name = segs[2].name
    first = int(Path(name).stem)
    prev = recs[first - 2].hash
    # The first byte is flipped, never set: a fixed b"\x01" left the true hash whenever it began with 0x01.
    flipped = bytes([prev[0] ^ 1]) + prev[1:]
    for first_seq, prev_hash in ((first, bytes(32)), (first, flipped), (first + 1, prev), (first - 1, prev)):
        restore(tpl, work)
        _rewrite_header(work / "log" / name, first_seq, prev_hash)
        err = expect_corruption(work, name, 0, first)
        assert "hash chain" in str(err)
    # Sanity check: rewriting the true header leaves a healthy log.
    restore(tpl, work)
    _rewrite_header(work / "log" / name, first, prev)
    assert reopen(work).torn == []


def _replace_record(path: Path, rec: DiskRecord, seq: int, prev_hash: bytes) -> None:
    frame, _ = encode_record(seq, rec.ts_us, prev_hash, rec.payload, batch_first=rec.batch_first or None)
    assert len(frame) == rec.length
    with open(path, "r+b") as f:
        f.seek(rec.offset)
        f.write(frame)


def test_well_framed_record_with_wrong_prev_hash_or_seq_is_corruption(one_segment, tmp_path):
    """A record with a valid CRC but a broken hash link or wrong seq fails open."""
    tpl, recs = one_segment
    work = tmp_path / "w"
    victim = recs[2]
    restore(tpl, work)
    _replace_record(work / "log" / victim.segment, victim, victim.seq, bytes(32))
    err = expect_corruption(work, victim.segment, victim.offset, victim.seq)
    assert "hash chain" in str(err)
    restore(tpl, work)
    _replace_record(work / "log" / victim.segment, victim, victim.seq + 1, victim.prev_hash)
    expect_corruption(work, victim.segment, victim.offset, victim.seq)
    # Even the last record: a well-framed record that contradicts the chain is not a torn write.
    last = recs[-1]
    restore(tpl, work)
    _replace_record(work / "log" / last.segment, last, last.seq, bytes(32))
    expect_corruption(work, last.segment, last.offset, last.seq)


# --------------------------------------------------------------------------- framing units
@given(
    seq=st.integers(1, 2**64 - 1),
    ts=st.integers(-(2**63), 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
    payload=st.binary(max_size=2000),
)
def test_record_encode_decode_round_trip(seq, ts, prev, payload):
    """encode_record/read_record round-trip every field, and the hash is sha256 of the body."""
    import hashlib

    frame, h = encode_record(seq, ts, prev, payload)
    assert h == hashlib.sha256(frame[FRAME_SIZE:]).digest()
    buf = b"junk" + frame + b"tail"
    status, rec, reason = read_record(buf, 4, "x.seg", 100)
    assert (status, reason) == (OK, "")
    assert (rec.seq, rec.ts_us, rec.prev_hash, rec.hash, rec.payload) == (seq, ts, prev, h, payload)
    assert (rec.segment, rec.offset, rec.length) == ("x.seg", 104, len(frame))


@given(payload=st.binary(max_size=300), data=st.data())
def test_record_prefixes_are_incomplete_and_flips_are_bad(payload, data):
    """Every proper prefix of a record reads as INCOMPLETE; any flipped bit makes it not OK."""
    frame, _ = encode_record(7, 123, bytes(32), payload)
    for cut in range(len(frame)):
        status, rec, _ = read_record(frame[:cut], 0, "s", 0)
        assert status == INCOMPLETE and rec is None
    i = data.draw(st.integers(0, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(frame)
    damaged[i] ^= 1 << bit
    status, rec, _ = read_record(bytes(damaged), 0, "s", 0)
    assert status in (BAD, INCOMPLETE) and rec is None


def test_implausible_lengths_are_bad():
    """A length below the fixed body head or above MAX_BODY is BAD, not a partial record."""
    for length in (0, 1, 47, MAX_BODY + 1, 2**32 - 1):
        buf = struct.pack("<II", length, 0) + bytes(64)
        assert read_record(buf, 0, "s", 0)[0] == BAD


@given(first=st.integers(0, 2**64 - 1), prev=st.binary(min_size=32, max_size=32))
def test_segment_header_round_trip(first, prev):
    """decode_segment_header inverts encode_segment_header."""
    head = encode_segment_header(first, prev)
    assert len(head) == SEGMENT_HEADER_SIZE
    assert decode_segment_header(head + b"records") == (first, prev)


def test_segment_header_damage_is_rejected():
    """Short, flipped, foreign or future-version headers raise HeaderError."""
    head = encode_segment_header(5, bytes(range(32)))
    with pytest.raises(HeaderError):
        decode_segment_header(head[:-1])
    for i in range(len(head)):
        bad = bytearray(head)
        bad[i] ^= 0x10
        with pytest.raises(HeaderError):
            decode_segment_header(bytes(bad))
    from crc32c import crc32c

    for magic, version in ((b"NOTALEDG", 1), (b"ALEDGSEG", 3)):
        fields = struct.pack("<8sIQ32s", magic, version, 5, bytes(32))
        with pytest.raises(HeaderError):
            decode_segment_header(fields + struct.pack("<I", crc32c(fields)))


def test_find_later_record_sees_any_later_intact_record():
    """The torn-tail/damage distinction finds an intact record after damage, whatever later seq it has."""
    frames = []
    prev = bytes(32)
    for seq in range(1, 6):
        frame, prev = encode_record(seq, seq, prev, b"p" * 40)
        frames.append(frame)
    buf = b"".join(frames)
    # Damage records 2 and 3; record 4 is intact.
    start = len(frames[0])
    damaged = buf[:start] + bytes(len(frames[1]) + len(frames[2])) + buf[start + len(frames[1]) + len(frames[2]) :]
    found = find_later_record(damaged, start, 3, "s", 10)
    assert found == 10 + start + len(frames[1]) + len(frames[2])
    # A pure zero tail holds no record.
    assert find_later_record(buf[:start] + bytes(5000), start, 3, "s", 0) is None
