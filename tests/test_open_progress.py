"""open_ledger(progress=...) reports the log replay: increasing byte counts ending at the total."""

import os
import shutil

import anyio

from artifact_ledger.facade import open_ledger


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
