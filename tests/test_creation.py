"""Creating a ledger: crash-safe order, idempotent and race-safe, options checked before anything exists,
and a lost marker beside an intact log told apart from "not a ledger" and repaired."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import artifact_ledger.facade.repair as repair
import artifact_ledger.store.durable as durable
from artifact_ledger import LedgerNeedsRepair, open_ledger, repair_ledger
from fdtools import fd_path


@pytest.fixture
def os_trace(monkeypatch):
    """Record, in order, the real os calls that make creation durable: mkdir, fsync (by path), rename."""
    events: list[tuple] = []
    real_fsync, real_mkdir, real_replace, real_rename = os.fsync, os.mkdir, os.replace, os.rename

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", fd_path(fd)))

    def mkdir(path, *a, **kw):
        real_mkdir(path, *a, **kw)
        events.append(("mkdir", os.path.abspath(os.fspath(path))))

    def replace(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    def rename(src, dst, *a, **kw):
        real_rename(src, dst, *a, **kw)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    real_syncfs = durable._syncfs

    def syncfs(fd):  # one flush per batch: the batch's syncfs flushes the shard directories it made
        rc = real_syncfs(fd)
        events.append(("syncfs",))
        return rc

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "mkdir", mkdir)
    if real_syncfs is not None:
        monkeypatch.setattr(durable, "_syncfs", syncfs)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def _save_one(root: Path, src: Path, events: list | None = None) -> str:
    async def main():
        async with open_ledger(root) as led:
            art = await led.artifacts(run_id="r", graph_id="g", node_id="n").save(str(src), kind="blob")
            if events is not None:
                events.append(("ack",))
            return art.artifact_id

    return anyio.run(main)


def _ids(root: Path, **kw) -> list[str]:
    async def main():
        async with open_ledger(root, **kw) as led:
            return [a.artifact_id for a in await led.artifacts(run_id="r", graph_id="g", node_id="n").list()]

    return anyio.run(main)


def test_creation_flushes_marker_and_every_created_directory_before_the_first_ack(tmp_path, os_trace):
    """Marker bytes fsynced before its rename, the rename before the root's fsync, and every directory
    the ledger creates (root, its new parents, log/, blobs/..., shards, checkpoints/, ...) fsynced into
    its parent, all before the first save returns. (Failed on the old code: no fsync at all.)"""
    root = tmp_path / "new" / "deeper" / "ledger"
    src = tmp_path / "f.bin"
    src.write_bytes(b"first artifact")
    _save_one(root, src, os_trace)
    root = root.resolve()
    ack = os_trace.index(("ack",))
    marker = str(root / repair.MARKER)
    rename = next(i for i, e in enumerate(os_trace) if e[0] == "rename" and e[2] == marker)
    tmp = os_trace[rename][1]
    assert os.path.basename(tmp).startswith(".ARTIFACT-LEDGER.")
    assert ("fsync", tmp) in os_trace[:rename], "marker bytes not fsynced before the rename"
    assert ("fsync", str(root)) in os_trace[rename:ack], "the marker's rename not flushed before the first ack"
    made = [e[1] for e in os_trace[:ack] if e[0] == "mkdir"]
    expected = {str(tmp_path / "new"), str(tmp_path / "new" / "deeper"), str(root)} | {
        str(root / d) for d in repair.LEDGER_DIRS}
    assert expected <= set(made), expected - set(made)
    assert any(os.path.dirname(d) == str(root / "blobs" / "sha256") for d in made), "no shard directory made"
    for d in made:
        at = max(i for i, e in enumerate(os_trace) if e == ("mkdir", d))
        # A shard directory is made by a batch; with one flush per batch, its syncfs flushes it.
        shard = os.path.dirname(d) == str(root / "blobs" / "sha256") and ("syncfs",) in os_trace[at:ack]
        assert shard or ("fsync", os.path.dirname(d)) in os_trace[at:ack], \
            f"{d} not fsynced into its parent before the ack"
    # Directories before the marker: a marker always stands for a complete layout.
    assert all(i < rename for i, e in enumerate(os_trace) if e[0] == "mkdir" and e[1] in expected)


@pytest.mark.parametrize("damage", ["empty", "missing", "garbage"])
def test_lost_marker_beside_a_valid_log_says_how_to_repair_and_repair_works(tmp_path, damage):
    """A 0-byte (or missing, or garbled) marker next to intact segments is not "not a ledger": opening
    names both repairs, repair_ledger rewrites the marker, and every record is back. (Old code: an
    "unsupported ledger version: ''" error, or "not empty and not a ledger".)"""
    root = tmp_path / "ledger"
    src = tmp_path / "f.bin"
    src.write_bytes(b"keep me")
    aid = _save_one(root, src)
    marker = root / repair.MARKER
    if damage == "empty":
        marker.write_bytes(b"")
    elif damage == "missing":
        marker.unlink()
    else:
        marker.write_bytes(b"\x00\xff\x00")
    for create in (True, False):
        with pytest.raises(LedgerNeedsRepair) as info:
            _ids(root, create=create)
        msg = str(info.value)
        assert "repair_ledger" in msg and "artifact-ledger" in msg and " repair" in msg and str(root.resolve()) in msg
    done = repair_ledger(root)
    assert any("marker" in d for d in done)
    assert marker.read_text() == repair.MARKER_TEXT
    assert _ids(root) == [aid]
    assert repair_ledger(root) == []  # nothing left to repair


def test_not_a_ledger_stays_not_a_ledger(tmp_path):
    """A directory of other files is refused (not repaired); a missing one is not created with create=False."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a ledger"):
        _ids(other)
    with pytest.raises(FileNotFoundError):
        repair_ledger(other)
    with pytest.raises(FileNotFoundError, match="no ledger"):
        _ids(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    assert sorted(os.listdir(other)) == ["notes.txt"]


def test_unsupported_marker_version_is_not_rewritten(tmp_path):
    root = tmp_path / "ledger"
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    _save_one(root, src)
    (root / repair.MARKER).write_text("artifact-ledger 9\n")
    with pytest.raises(ValueError, match="unsupported ledger version: '9'"):
        _ids(root)
    assert repair_ledger(root) == []
    assert (root / repair.MARKER).read_text() == "artifact-ledger 9\n"


def test_a_version_1_ledger_is_read_as_is_and_upgraded_by_the_first_writable_open(tmp_path, os_trace):
    """Read-only opens leave a version-1 marker alone; a writable open rewrites it as version 2 (fsynced,
    renamed, root fsynced) before anything of its own reaches the log, so version-1 libraries then refuse
    the ledger; repair has nothing to do with either."""
    root = tmp_path / "ledger"
    src = tmp_path / "f.bin"
    src.write_bytes(b"from version 1")
    aid = _save_one(root, src)
    marker = root / repair.MARKER
    assert marker.read_text() == repair.MARKER_TEXT == "artifact-ledger 2\n"  # new ledgers: version 2
    marker.write_text("artifact-ledger 1\n")
    assert repair_ledger(root) == []
    assert _ids(root, read_only=True) == [aid]
    assert marker.read_text() == "artifact-ledger 1\n"
    os_trace.clear()
    src2 = tmp_path / "g.bin"
    src2.write_bytes(b"from version 2")
    aid2 = _save_one(root, src2, os_trace)
    assert marker.read_text() == "artifact-ledger 2\n"
    renamed = next(i for i, e in enumerate(os_trace) if e[0] == "rename" and str(e[2]).endswith(repair.MARKER))
    assert any(e[0] == "fsync" and ".ARTIFACT-LEDGER." in str(e[1]) for e in os_trace[:renamed])
    root_synced = next(i for i, e in enumerate(os_trace)
                       if i > renamed and e[0] == "fsync" and str(e[1]) == str(root.resolve()))
    # Before the save's batch is flushed (a syncfs, or a segment's fsync) and acknowledged.
    flushed = next(i for i, e in enumerate(os_trace) if e == ("syncfs",) or
                   (e[0] == "fsync" and "/log/" in str(e[1])) or e == ("ack",))
    assert root_synced < flushed
    assert sorted(_ids(root)) == sorted([aid, aid2])


def test_cli_names_the_repair_and_repair_command_fixes_it(tmp_path):
    root = tmp_path / "ledger"
    src = tmp_path / "f.bin"
    src.write_bytes(b"cli")
    aid = _save_one(root, src)
    (root / repair.MARKER).write_bytes(b"")
    cli = [sys.executable, "-m", "artifact_ledger", "-C", str(root)]
    bad = subprocess.run(cli + ["list"], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stderr
    assert "artifact-ledger" in bad.stderr and "repair" in bad.stderr
    fixed = subprocess.run(cli + ["repair"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
    assert "marker" in fixed.stdout
    ok = subprocess.run(cli + ["list", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert aid in ok.stdout


# ---------------------------------------------------------------- fragile creation
def test_leftover_temp_marker_does_not_make_the_root_unopenable(tmp_path):
    """What a creation killed by a full disk left (the old fixed temp name) no longer blocks creation.
    (Old code: every later open failed with "not empty and is not a ledger".)"""
    root = tmp_path / "ledger"
    root.mkdir()
    (root / ".ARTIFACT-LEDGER.tmp").write_bytes(b"")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    aid = _save_one(root, src)
    assert _ids(root) == [aid]


def test_full_disk_during_the_marker_write_leaves_nothing_and_a_retry_succeeds(tmp_path, monkeypatch):
    """ENOSPC from the real os.write of the marker: the open fails with it, no temp file or marker is
    left, and the next open creates the ledger. (Old code: it never wrote through os.write, and left
    its temp file behind on a real full disk.)"""
    root = tmp_path / "ledger"
    real_write = os.write

    def write(fd, data):
        if os.path.basename(fd_path(fd)).startswith(".ARTIFACT-LEDGER"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError) as info:
        _ids(root)
    assert info.value.errno == errno.ENOSPC
    assert not [n for n in os.listdir(root) if "ARTIFACT-LEDGER" in n]
    monkeypatch.setattr(os, "write", real_write)
    src = tmp_path / "f.bin"
    src.write_bytes(b"after the disk had room")
    aid = _save_one(root, src)
    assert _ids(root) == [aid]


_CREATOR = textwrap.dedent("""
    import os, sys, time, anyio
    from artifact_ledger import open_ledger
    root, go, me = sys.argv[1], sys.argv[2], sys.argv[3]
    # Widen the race: every creator lingers just before its marker lands (old code: os.rename).
    for name in ("rename", "replace"):
        real = getattr(os, name)
        def slow(src, dst, *a, _real=real, **kw):
            if os.fspath(dst).endswith("ARTIFACT-LEDGER"):
                time.sleep(0.2)
            return _real(src, dst, *a, **kw)
        setattr(os, name, slow)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.0005)
    async def main():
        async with open_ledger(root) as led:
            src = os.path.join(os.path.dirname(go), me + ".bin")
            art = await led.artifacts(run_id="r", graph_id="g", node_id="n").save(src, kind="blob")
            print(art.artifact_id)
    anyio.run(main)
""")


def test_many_processes_creating_one_root_at_once_all_succeed_on_one_ledger(tmp_path):
    """Six processes open (create) the same new root at the same moment: all succeed, and all their
    artifacts are in one ledger. (Old code: the losers saw the winner's files and refused.)"""
    root = tmp_path / "deep" / "ledger"
    go = tmp_path / "go"
    n = 6
    for i in range(n):
        (tmp_path / f"p{i}.bin").write_bytes(f"process {i}".encode())
    procs = [subprocess.Popen([sys.executable, "-c", _CREATOR, str(root), str(go), f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    for p in procs:  # all imported and waiting, so they really start together
        assert p.stdout.readline().strip() == "ready"
    go.write_text("go")
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    ids = {o[0].strip() for o in outs}
    assert len(ids) == n
    assert set(_ids(root)) == ids


# ---------------------------------------------------------------- options checked first
@pytest.mark.parametrize("kw, exc, name", [
    ({"segment_bytes": 10}, ValueError, "segment_bytes"),
    ({"segment_bytes": "big"}, TypeError, "segment_bytes"),
    ({"segment_bytes": True}, TypeError, "segment_bytes"),
    ({"segment_bytes": 2**62}, ValueError, "segment_bytes"),
    ({"progress": "x"}, TypeError, "progress"),
    ({"create": "no"}, TypeError, "create"),
    ({"create": 0}, TypeError, "create"),
    ({"fsync": "no"}, TypeError, "fsync"),
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": "7"}, TypeError, "checkpoint_every"),
])
def test_bad_options_are_refused_before_anything_is_created(tmp_path, kw, exc, name):
    """Each bad option raises an error naming it, and the root is never created. (Old code: created
    the directory first, or took "no" as true.)"""
    root = tmp_path / "parent" / "ledger"
    with pytest.raises(exc, match=name):
        _ids(root, **kw)
    assert not (tmp_path / "parent").exists()


@pytest.mark.parametrize("bad", ["", b"ledger", 5, None])
def test_bad_root_is_refused_before_anything_is_created(tmp_path, monkeypatch, bad):
    """open_ledger("") does not create a ledger in the current directory."""
    monkeypatch.chdir(tmp_path)

    async def main():
        async with open_ledger(bad):
            pass

    with pytest.raises((ValueError, TypeError), match="root"):
        anyio.run(main)
    assert os.listdir(tmp_path) == []
