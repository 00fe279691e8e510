"""open_ledger(progress=...) reports the log replay: increasing byte counts ending at the total."""

import os
import shutil

import anyio

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.framing import SEGMENT_HEADER_SIZE


def test_replay_progress_reaches_the_log_size(root, tmp_path):
    """A full replay reports done <= total, never decreasing, and ends with done == total == log bytes."""
    src = tmp_path / "x.bin"

    async def build():
        async with open_ledger(root, fsync=False) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            for i in range(50):
                src.write_bytes(os.urandom(16))
                await arts.save(str(src), kind="blob", labels={"i": i})

    anyio.run(build)
    shutil.rmtree(root / "checkpoints")  # force a full replay
    calls: list[tuple[int, int]] = []

    async def reopen():
        async with open_ledger(root, progress=lambda d, t: calls.append((d, t))) as led:
            return led.head[0]

    assert anyio.run(reopen) == 50
    log_bytes = sum(p.stat().st_size for p in (root / "log").glob("*.seg"))
    assert calls and calls[-1][0] == calls[-1][1]
    # The replayed bytes are the segment files less their headers.
    assert 0 < calls[-1][1] <= log_bytes
    assert all(d <= t for d, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_progress_keeps_the_replay_on_its_fast_path_and_the_same_state(root, monkeypatch):
    """With progress on, replay still folds the scanned payloads (no Record per record is decoded and
    applied), reports along the way, and ends in the state an open without progress reaches."""
    from artifact_ledger.facade import ledger as facade_ledger
    from replaylog import build

    build(root, n=20_000, batch=2_000, segment_bytes=1 << 20)
    as_records: list[int] = []
    real = facade_ledger.apply_records
    monkeypatch.setattr(facade_ledger, "apply_records", lambda cat, recs: (as_records.append(len(recs)),
                                                                             real(cat, recs))[1])

    def state(progress=None):
        shutil.rmtree(root / "checkpoints", ignore_errors=True)

        async def main():
            async with open_ledger(root, fsync=False, progress=progress) as led:
                return led.catalog.fingerprint(), led.head

        return anyio.run(main)

    calls: list[tuple[int, int]] = []
    with_progress = state(lambda d, t: calls.append((d, t)))
    assert sum(as_records) == 0  # every record went through the payload fast path
    assert with_progress == state()
    log_bytes = sum(p.stat().st_size for p in (root / "log").glob("*.seg"))
    segments = len(list((root / "log").glob("*.seg")))
    assert len(calls) >= 20_000 // 4096 + 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and all(d <= t for d, t in calls)
    assert calls[-1] == (log_bytes, log_bytes)
    # Along the way: the bytes of the records read so far, which never reach the segments' headers' share.
    along = [d for d, _ in calls[:-1]]
    assert len(set(along)) == len(along) and along[-1] <= log_bytes - SEGMENT_HEADER_SIZE * segments
    assert along[-1] > log_bytes * 0.75
