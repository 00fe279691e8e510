"""Leftovers of killed processes are swept (on open and by ``Ledger.sweep()``), never a live writer's files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from artifact_ledger import open_ledger
from artifact_ledger.facade.sweep import STAGING_MAX_AGE, UNOWNED_MAX_AGE, sweep_root

_MID_SAVE = textwrap.dedent("""
    import sys, anyio
    import artifact_ledger.store.local as local
    from artifact_ledger import open_ledger
    real = local.LocalBlobStore.make_durable
    def stalled(self):
        # The blob's bytes are in blobs/tmp; the save waits here until told to go on.
        print("mid-save", flush=True)
        sys.stdin.readline()
        real(self)
    local.LocalBlobStore.make_durable = stalled
    async def main():
        async with open_ledger(sys.argv[1]) as led:
            await led.artifacts(run_id="r", graph_id="g", node_id="n").save(sys.argv[2], kind="blob")
            print("saved", flush=True)
    anyio.run(main)
""")


def _parts(root: Path) -> list[str]:
    return sorted(os.listdir(root / "blobs" / "tmp"))


def _sweep(root: Path, **kw) -> list[str]:
    async def main():
        async with open_ledger(root) as led:  # opening sweeps too
            return await led.sweep(**kw)

    return anyio.run(main)


def test_a_live_save_keeps_its_temp_file_and_a_killed_one_loses_it(root, tmp_path):
    """Another process's sweep (on open and explicit) leaves a live save's blob temp file alone, and the
    save then completes; once a saving process is SIGKILLed, the next sweep removes its temp file.
    (Old code: nothing was ever swept, so killed saves piled up in blobs/tmp.)"""
    _sweep(root)  # create the ledger
    src = tmp_path / "big.bin"
    for kill in (False, True):
        src.write_bytes(os.urandom(1 << 20))  # new bytes each time: a stored blob would be deduplicated
        proc = subprocess.Popen([sys.executable, "-c", _MID_SAVE, str(root), str(src)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "mid-save", proc.stderr.read()
            live = _parts(root)
            assert len(live) == 1
            assert _sweep(root) == []
            assert _parts(root) == live, "a live writer's temp file was swept"
            if kill:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                removed = sweep_root(root.resolve())  # what open and Ledger.sweep() run
                assert any(live[0] in r for r in removed), removed
                assert _parts(root) == []
            else:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "saved"
                assert proc.wait() == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _dead_owner_tag() -> str:
    """The owner tag of a process that has exited."""
    out = subprocess.run([sys.executable, "-c", "from artifact_ledger.store.durable import owner_tag; "
                          "print(owner_tag())"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_open_sweeps_temp_files_of_dead_processes_and_keeps_unknown_recent_ones(root):
    """Checkpoint, marker, blob and materialisation temps of a dead owner go on open; temps whose owner
    cannot be told (an older version's names) go only once older than UNOWNED_MAX_AGE."""
    _sweep(root)
    dead = _dead_owner_tag()
    doomed = [
        root / "blobs" / "tmp" / f"{dead}.{'a' * 32}.part",
        root / "checkpoints" / f"{'0' * 19}7.ckpt.{dead}.{'b' * 32}.tmp",
        root / f".ARTIFACT-LEDGER.{dead}.{'c' * 32}.tmp",
        root / "blobs" / "tmp" / f"{'d' * 32}.part",  # untagged and old
        root / ".ARTIFACT-LEDGER.tmp",  # untagged and old
    ]
    tree = root / "materialized" / f".tmp.{dead}.{'e' * 32}"
    kept = [root / "blobs" / "tmp" / f"{'f' * 32}.part", root / "checkpoints" / f"{'1' * 20}.ckpt.{'9' * 32}.tmp"]
    for p in doomed + kept:
        p.write_bytes(b"left over")
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x").write_bytes(b"half built")
    os.chmod(tree / "sub", 0o555)
    for p in doomed[3:]:
        _age(p, UNOWNED_MAX_AGE + 60)

    async def main():
        async with open_ledger(root):
            pass

    anyio.run(main)
    assert [p for p in doomed + [tree] if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_staging_older_than_the_limit_is_swept(root):
    """Staging entries untouched (newest mtime inside) for STAGING_MAX_AGE are removed; others stay."""

    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            old_file = Path(await arts.stage(".bin"))
            old_dir = Path(await arts.stage_dir())
            (old_dir / "f").write_bytes(b"x")
            busy_dir = Path(await arts.stage_dir())
            (busy_dir / "f").write_bytes(b"still being written")
            fresh = Path(await arts.stage())
            for p in (old_file, old_dir / "f", old_dir, busy_dir):
                _age(p, STAGING_MAX_AGE + 60)
            removed = await led.sweep()
            assert not old_file.exists() and not old_dir.exists()
            assert busy_dir.exists() and fresh.exists()
            assert len(removed) == 2
            assert await led.sweep(staging_age=0) != []
            assert not fresh.exists()
            with pytest.raises(ValueError, match="staging_age"):
                await led.sweep(staging_age=-1)

    anyio.run(main)


def test_sweep_can_drop_materialised_copies_which_rebuild_on_load(root):
    async def main():
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            d = Path(await arts.stage_dir())
            (d / "a").write_bytes(b"alpha")
            art = await arts.ingest_dir(str(d))
            path = await arts.load_artifact(art.uri)
            assert await led.sweep() == [] and path.exists()
            assert len(await led.sweep(materialized=True)) == 1 and not path.exists()
            again = await arts.load_artifact(art.uri)
            assert (again / "a").read_bytes() == b"alpha"

    anyio.run(main)
