"""Power loss at every point of a real workload: only what was flushed survives, and every acknowledged
artifact must still be there, with its bytes, in a ledger that opens and verifies.

A child process runs the workload under ``powercut.Recorder`` (every call that changes the disk or makes
it durable, plus each acknowledgement); ``powercut.Model`` rebuilds, for a cut before every recorded
call, the pessimistic image a power cut leaves, and each distinct image is opened with the library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

import powercut as pc
from artifact_ledger.store import durable

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT = 300

# The recorder names file descriptors through /proc/self/fd (Linux).
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


def _fast_tmp(tmp_path_factory) -> Path:
    """A scratch directory on tmpfs when there is one (fsync there costs nothing), else pytest's."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="powercut-", dir=shm))
    return tmp_path_factory.mktemp("powercut")


def record_workload(base: Path, **extra) -> list[tuple]:
    """Run the workload in a child process under the recorder; returns the trace (already replayed
    into the model and checked against the disk it left)."""
    anchor, scratch = base / "anchor", base / "scratch"
    anchor.mkdir()
    scratch.mkdir()
    out = base / "trace.pkl"
    args = {"anchor": str(anchor), "scratch": str(scratch), "out": str(out), **extra}
    proc = subprocess.run([sys.executable, str(HERE / "powercut_workload.py"), json.dumps(args)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, f"workload failed:\n{proc.stdout}\n{proc.stderr}"
    trace = pc.load_trace(out)
    model = pc.Model(trace)
    model.advance(len(trace))
    model.check_against_disk()  # a mutating call the recorder missed fails here, loudly
    return trace


@pytest.fixture(scope="module", params=["one", "three"])
def recorded(tmp_path_factory, request):
    """(trace, work dir) of the full workload: small and multi-MiB saves, writer, ingest, ingest_dir,
    pins, a concurrent burst over a segment rollover, checkpoints, a reopen that cuts a torn tail; once
    with one flush per batch (where the kernel allows it) and once with three flushes."""
    base = _fast_tmp(tmp_path_factory)
    try:
        trace = record_workload(base, protocol=request.param)
        work = base / "images"
        work.mkdir()
        yield trace, work
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _marker_renamed(op: tuple) -> bool:
    return op[0] == "rename" and os.path.basename(op[2]) == pc.MARKER_NAME


def _first_ack(op: tuple) -> bool:
    return op[0] == "ack"


# --------------------------------------------------------------------------- the recorder itself
def test_recorder_sees_every_write_path_of_the_workload(recorded):
    """The trace explains the final disk byte for byte (checked by the fixture) and holds every kind of
    call the library makes durable with, and an acknowledgement of every kind of write."""
    trace, _ = recorded
    kinds = Counter(op[0] for op in trace)
    for kind in ("open", "write", "truncate", "fsync", "rename", "link", "unlink", "mkdir", "rmdir", "syncfs"):
        assert kinds[kind] > 0, f"no {kind} recorded"
    syncs = Counter(op[3] for op in trace if op[0] == "fsync")
    # Three flushes fdatasync every batch; one flush per batch only those without small blobs (pins, a
    # large blob), and syncfs the others.
    assert syncs["fdatasync"] > 0 and syncs["fsync"] > 0
    dirs = {op[2] for op in trace if op[0] == "mkdir"} | {op[1] for op in trace if op[0] == "open" and op[4]}
    assert any(op[0] == "fsync" and op[2] in dirs for op in trace), "no directory fsync recorded"
    acks = Counter(a.what for a in pc.acks_of(trace))
    assert acks["file"] >= 20 and acks["dir"] == 1 and acks["pin"] == 2
    segments = {os.path.basename(op[2]) for op in trace if op[0] == "rename" and op[2].endswith(".seg")}
    assert len(segments) >= 3, "the workload should roll over segments"


def test_model_fails_loudly_on_an_unrecorded_change(recorded):
    """A file the trace does not explain (written behind the recorder's back) is a ModelMismatch."""
    trace, _ = recorded
    anchor = Path(trace[0][1])
    stray = anchor / "L" / "blobs" / "unrecorded"
    stray.write_bytes(b"not in the trace")
    try:
        model = pc.Model(trace)
        model.advance(len(trace))
        with pytest.raises(pc.ModelMismatch, match="unrecorded"):
            model.check_against_disk()
    finally:
        stray.unlink()


def test_recorder_refuses_calls_it_cannot_model(tmp_path):
    """writev, sendfile and a writable mmap on a recorded file raise instead of escaping the model."""
    import mmap

    anchor = tmp_path / "a"
    anchor.mkdir()
    outside = tmp_path / "outside.bin"
    rec = pc.Recorder(str(anchor))
    rec.install()
    try:
        fd = os.open(anchor / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * 4096)
            with pytest.raises(pc.UnmodelledCall):
                os.writev(fd, [b"y"])
            with pytest.raises(pc.UnmodelledCall):
                mmap.mmap(fd, 4096)
            src = os.open(outside, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                with pytest.raises(pc.UnmodelledCall):
                    os.sendfile(fd, src, 0, 1)
                os.writev(src, [b"outside the recorded directory is fine"])
            finally:
                os.close(src)
        finally:
            os.close(fd)
        with open(anchor / "g", "wb") as f:  # file objects write through the recorded os.write
            f.write(b"via a file object")
    finally:
        rec.uninstall()
    writes = [op for op in rec.trace if op[0] == "write"]
    assert [w[3] for w in writes] == [b"x" * 4096, b"via a file object"]


# --------------------------------------------------------------------------- power cuts
def test_power_cuts_after_creation_lose_no_acknowledged_artifact(recorded):
    """A power cut before any recorded call after the ledger was created (its directories and marker
    taken as durable; everything else strictly as flushed), with unflushed appends dropped, torn at a
    page boundary or kept: every image opens, holds every acknowledged artifact with its bytes and
    seq and every acknowledged pin, and passes verify()."""
    trace, work = recorded
    start = pc.first_index(trace, _marker_renamed) + 1
    tally = pc.analyse(trace, work, trust_creation=True, variants=pc.VARIANTS, start=start)
    print(f"\npower loss after creation: {tally.line()}")
    assert tally.cut_points >= 50 and tally.images >= 50
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])
    assert tally.ok == tally.images


def test_power_cuts_keep_every_acknowledged_artifact_with_nothing_trusted(recorded):
    """The strict model: nothing survives unless flushed, the ledger's own creation included. After the
    first acknowledgement, every image must open and hold everything acknowledged."""
    trace, work = recorded
    start = pc.first_index(trace, _first_ack) + 1
    tally = pc.analyse(trace, work, trust_creation=False, variants=pc.VARIANTS, start=start, stop_at_first=True)
    print(f"\npower loss, strict: {tally.line()}")
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])
    assert tally.cut_points >= 50


def test_power_cut_during_creation_leaves_a_ledger_that_can_be_created(recorded):
    """Cut before the first acknowledgement, with everything creation wrote taken as durable (the
    worst case for leftovers): opening the image with create=True gives a working ledger."""
    trace, work = recorded
    stop = pc.first_index(trace, _first_ack)
    early = trace[:stop]
    tally = pc.analyse(early, work, trust_creation=True, variants=("drop",), start=1)
    print(f"\npower loss during creation: {tally.line()}")
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])


@pytest.mark.parametrize("bug,protocol", [("no_fdatasync", "three"), ("late_fdatasync", "three"),
                                          ("no_segment_dir_fsync", "three"), ("no_blob_dir_fsync", "three"),
                                          ("no_syncfs", "one"), ("no_dedup_flush", "one"),
                                          ("no_dedup_flush", "three")])
def test_power_loss_check_notices_a_durability_bug(bug, protocol, tmp_path_factory):
    """The check has teeth: with a flush taken out of the library or moved after the acknowledgement
    (no fdatasync of a batch, a batch's fdatasync run only with the next batch, no directory fsync
    after a segment or a blob is renamed in; with one flush per batch, no syncfs of a batch; a small
    blob deduplicated against a name a killed one-flush process left unflushed, not flushed), some
    power-cut image loses an acknowledged artifact or does not open. (With one flush per batch a
    missing directory fsync of a new segment is no bug: the batch's syncfs flushes log/ too.)"""
    if protocol == "one" and not durable.syncfs_reports_errors():
        pytest.skip("one flush per batch needs Linux >= 5.8")
    base = _fast_tmp(tmp_path_factory)
    try:
        trace = record_workload(base, small=True, bug=bug, protocol=protocol)
        assert ("mark", "protocol", protocol) in trace
        start = pc.first_index(trace, _marker_renamed) + 1
        (base / "images").mkdir()
        tally = pc.analyse(trace, base / "images", trust_creation=True, start=start, stop_at_first=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert tally.lost + tally.unopenable > 0, f"{bug} went unnoticed: {tally.line()}"


def test_power_cuts_losing_the_first_page_of_a_batch_lose_nothing(recorded):
    """Unflushed appends whose first page is lost and later pages kept: the ledger still opens with
    everything acknowledged (the torn batch was never acknowledged)."""
    trace, work = recorded
    start = pc.first_index(trace, _marker_renamed) + 1
    assert pc.cuts_where_variant_differs(trace, "hole", trust_creation=True, start=start) > 0
    tally = pc.analyse(trace, work, trust_creation=True, variants=("hole",), start=start, stop_at_first=True,
                       only_where_differs=True)
    print(f"\npower loss, first page of a batch lost: {tally.line()}")
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])


# --------------------------------------------------------------------------- one flush per batch
def _one_flush(trace) -> bool:
    return ("mark", "protocol", "one") in trace


def test_power_cuts_keeping_any_subset_of_unflushed_writes_lose_nothing(recorded):
    """With one flush per batch (the workload's default here), a power cut may keep any kind of write
    not yet flushed and drop the others: renames kept while the renamed files' bytes are dropped (empty
    or short files under blob names), the log's appends kept while blob bytes and/or renames are
    dropped. Every image opens, holds every acknowledged artifact with its bytes, and verifies; some
    images hold a last batch naming an incomplete blob, which the open cuts; and saving again the
    content of a name left without its bytes stores the right bytes. The three-flush trace must pass
    the same images."""
    trace, work = recorded
    start = pc.first_index(trace, _marker_renamed) + 1
    tally = pc.analyse(trace, work, trust_creation=True, variants=pc.SUBSETS, start=start)
    print(f"\npower loss, subsets of unflushed writes kept: {tally.line()}")
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])
    if _one_flush(trace):  # with three flushes a blob's bytes and name are flushed before its event
        assert tally.batches_cut > 0, "no image held a torn last batch: the subset variants are not exercised"
        assert tally.dedup_checked > 0, "no image left a blob name without its bytes"


@pytest.mark.parametrize("bug", ["no_last_batch_check", "trust_blob_names"])
def test_subset_power_cuts_notice_a_recovery_or_dedup_bug(recorded, bug, monkeypatch):
    """The subset check has teeth: with recovery trusting the last batch's blobs, or dedup trusting any
    file at a blob's address, some image loses an acknowledged artifact, fails verify, or saves wrong
    bytes again."""
    trace, work = recorded
    if not _one_flush(trace):
        pytest.skip("the workload ran with three flushes")
    from artifact_ledger.facade import one_flush
    from artifact_ledger.store import local

    if bug == "no_last_batch_check":
        monkeypatch.setattr(one_flush, "last_batch_check", lambda store: (lambda records: None))
    else:
        monkeypatch.setattr(local.LocalBlobStore, "_present", lambda self, sha, size: self.exists(sha))
    start = pc.first_index(trace, _marker_renamed) + 1
    tally = pc.analyse(trace, work, trust_creation=True, variants=pc.SUBSETS, start=start, stop_at_first=True)
    assert tally.lost + tally.unopenable + tally.verify_failed > 0, f"{bug} went unnoticed: {tally.line()}"
