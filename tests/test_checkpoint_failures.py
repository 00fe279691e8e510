"""A checkpoint is a cache: a failing one is reported as a warning and never fails or blocks a close (issue 6)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.checkpoints import CheckpointWarning
from artifact_ledger.ledger.errors import LedgerClosed

R1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def _open_fds_under(root: Path) -> list[str]:
    """Targets of this process's open file descriptors inside ``root``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


async def _save_some(led, tmp: Path, n: int, start: int = 0) -> None:
    """Save ``n`` small text artifacts."""
    arts = led.artifacts(**R1)
    for i in range(start, start + n):
        src = tmp / f"f{i}.txt"
        src.write_text(f"artifact {i}")
        await arts.save(str(src), kind="text", metrics={"i": i})


def _reopen_count(root: Path) -> int:
    """Reopen the ledger and count its artifacts."""
    async def main() -> int:
        async with open_ledger(root) as led:
            return len(led.catalog.rows)

    return anyio.run(main)


def test_aclose_warns_and_closes_when_the_final_checkpoints_fsync_fails(root, tmp_path, monkeypatch):
    """EIO from the real os.fsync in the checkpoint writer: aclose warns, releases its files, later calls refuse."""
    real_fsync = os.fsync

    async def main() -> None:
        led = await open_ledger(root)
        await _save_some(led, tmp_path, 3)
        arts = led.artifacts(**R1)

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await led.aclose()  # must not raise
        monkeypatch.setattr(os, "fsync", real_fsync)
        msgs = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
        assert any("final checkpoint" in m and "Input/output error" in m for m in msgs), msgs
        assert led.closed
        assert _open_fds_under(led.root) == []
        with pytest.raises(LedgerClosed):
            await arts.list()
        with pytest.raises(LedgerClosed):
            await led.checkpoint()

    anyio.run(main)
    assert not [p for p in (root / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert _reopen_count(root) == 3


_ENOSPC_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    import anyio
    from artifact_ledger.facade import open_ledger

    async def main():
        led = await open_ledger(sys.argv[1])
        arts = led.artifacts(run_id="r1", graph_id="g1", node_id="n1")
        for i in range(5):
            async with arts.writer(kind="text", metrics={"i": i}) as w:
                w.write(b"bytes %d" % i)
        # From here on no file may grow past 64 bytes: the checkpoint's real write() fails (EFBIG),
        # as it would on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                await led.aclose()
                error = None
            except BaseException as exc:
                error = repr(exc)
        try:
            await arts.list()
            later = "accepted"
        except Exception as exc:
            later = type(exc).__name__
        print(json.dumps({"error": error, "closed": led.closed, "later": later,
                          "warnings": [str(w.message) for w in caught]}))

    anyio.run(main)
""")


def test_aclose_warns_and_closes_when_the_final_checkpoints_write_fails_in_a_subprocess(root):
    """A real failing write (file size limit, like ENOSPC) in the checkpoint writer: a warning, and closed."""
    proc = subprocess.run([sys.executable, "-c", _ENOSPC_SCRIPT, str(root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] is None
    assert out["closed"] is True and out["later"] == "LedgerClosed"
    assert any("final checkpoint" in m and "File too large" in m for m in out["warnings"]), out["warnings"]
    assert not [p for p in (root / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert _reopen_count(root) == 5


def _fail_in_checkpoint_thread(monkeypatch) -> None:
    """os.fsync raises EIO, but only in the ledger's background checkpoint thread."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("artifact-ledger checkpoint"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("reported_by", ["checkpoint", "close", "next background checkpoint"])
def test_a_failing_background_checkpoint_is_reported(root, tmp_path, monkeypatch, reported_by):
    """A background checkpoint that fails is never swallowed: a warning at the latest at the next checkpoint/close."""
    _fail_in_checkpoint_thread(monkeypatch)

    async def main() -> None:
        led = await open_ledger(root, checkpoint_every=2)
        try:
            await _save_some(led, tmp_path, 2)  # starts the background checkpoint, which fails
            t = led._ckpt_thread
            assert t is not None
            await anyio.to_thread.run_sync(t.join)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if reported_by == "checkpoint":
                    await led.checkpoint()
                elif reported_by == "close":
                    await led.aclose()
                else:
                    await _save_some(led, tmp_path, 2, start=2)
            msgs = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
            assert any("background checkpoint failed" in m and "Input/output error" in m for m in msgs), msgs
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointWarning)  # a later failed checkpoint, reported again
                await led.aclose()

    anyio.run(main)
    if reported_by == "close":
        # The failed background checkpoint is retried by close, where writing works.
        assert sorted(p.name for p in (root / "checkpoints").glob("*.ckpt")) == [f"{2:020d}.ckpt"]
