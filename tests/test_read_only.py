"""Read-only access: open_ledger(root, read_only=True) and the CLI read commands never write a byte.

Tests run as root, and root ignores permission bits, so the reader that must do
with read permission only runs in a subprocess that drops to uid/gid 65534
before importing the library, on a ledger it can read but not write.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import anyio
import pytest

from artifact_ledger import ReadOnlyError, TornTailWarning, open_ledger
from artifact_ledger.ledger import checkpoints
from logcheck import read_log as disk_records

RUN = dict(run_id="r1", graph_id="g", node_id="n", project_id="p")
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")


@pytest.fixture
def shared_dir():
    """A directory under /tmp that uid 65534 can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="al-ro-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def build(root: Path, scratch: Path, *, saves: int = 6, segment_bytes: int = 1200) -> dict:
    """A closed ledger with files, a pin and a directory artifact; returns what the test knows of it."""
    scratch.mkdir(parents=True, exist_ok=True)

    async def main():
        async with open_ledger(root, segment_bytes=segment_bytes, fsync=False) as led:
            fac = led.artifacts(**RUN)
            arts = []
            for i in range(saves):
                src = scratch / f"f{i}.txt"
                src.write_bytes(f"file {i}".encode())
                arts.append(await fac.save(str(src), kind="text", labels={"i": i}, metrics={"acc": i / 10}))
            await fac.pin(arts[0].artifact_id)
            d = Path(await fac.stage_dir())
            (d / "sub").mkdir()
            (d / "a.txt").write_bytes(b"alpha")
            (d / "sub" / "b.bin").write_bytes(b"beta")
            tree = await fac.ingest_dir(str(d), kind="dataset")
            return {"ids": [a.artifact_id for a in arts], "tree": tree.artifact_id, "head": list(led.head)}

    return anyio.run(main)


def readable_by_all(root: Path) -> None:
    """Group/world may read and enter everything, write nothing (a team's shared ledger)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chmod(p, (os.stat(p).st_mode & 0o700) | 0o044)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, size, mtime, mode and (files) content; dirs' mtimes show entries added or
    removed."""
    out = {".": ("dir", os.stat(root).st_mtime_ns, os.stat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.isdir(p):
                out[rel] = ("dir", st.st_mtime_ns, st.st_mode)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, f.read())
    return out


def _world_readable(path: str) -> bool:
    """Whether a user with no special rights can reach and read ``path`` (every parent searchable)."""
    p = Path(path).resolve()
    try:
        if not os.stat(p).st_mode & 0o004:
            return False
        return all(os.stat(d).st_mode & 0o001 for d in p.parents)
    except OSError:
        return False


def _interpreter_for_nobody() -> str | None:
    """This Python, or a system one of the same version, whose standard library uid 65534 can read."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for exe in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if not os.path.exists(exe):
            continue
        stdlib = subprocess.run([exe, "-I", "-c", "import os, sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                capture_output=True, text=True).stdout.strip()
        if stdlib and _world_readable(os.path.join(stdlib, "os.py")) and _world_readable(exe):
            return exe
    return None


def as_nobody(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that becomes uid/gid 65534 before importing anything else."""
    exe = _interpreter_for_nobody()
    if exe is None:
        pytest.skip("no Python interpreter whose standard library uid 65534 can read")
    # The test environment's packages (the library itself is an editable install there).
    sites = [p for p in site.getsitepackages() if os.path.isdir(p)]
    prologue = textwrap.dedent(f"""\
        import os, sys
        os.setgroups([])
        os.setgid({NOBODY})
        os.setuid({NOBODY})
        assert os.geteuid() == {NOBODY} and os.getegid() == {NOBODY}
        import site
        for p in {sites!r}:
            site.addsitedir(p)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("ARTIFACT_LEDGER_ROOT", "PYTHONPATH")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME="/nonexistent", TMPDIR="/tmp")
    return subprocess.run([exe, "-c", prologue + textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")


LIBRARY_READER = """
    import json, warnings
    import anyio
    from pathlib import Path
    from artifact_ledger import ReadOnlyError, open_ledger

    root, info = sys.argv[1], json.loads(sys.argv[2])

    async def main():
        out = {}
        try:
            await open_ledger(root, create=False)
        except PermissionError as exc:
            out["writable_open"] = f"PermissionError: {exc}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            led = await open_ledger(root, read_only=True)
            fac = led.artifacts(run_id="r1", graph_id="g", node_id="n", project_id="p")
            out["head"] = list(led.head)
            out["listed"] = [a.artifact_id for a in await fac.list(scope="all")]
            best = await fac.best(kind="text", metric="acc", mode="max")
            out["best"] = best.artifact_id
            first = info["ids"][0]
            out["bytes"] = (await fac.load_artifact_bytes("artifact://" + first)).decode()
            tree = await fac.load_artifact("artifact://" + info["tree"])
            out["tree"] = sorted(str(p.relative_to(tree)) for p in Path(tree).rglob("*"))
            out["tree_outside"] = not str(tree).startswith(root)
            out["tree_a"] = (Path(tree) / "a.txt").read_text()
            view = await led.as_of(seq=2)
            out["as_of"] = [a.artifact_id for a in await view.artifacts(run_id="r1", graph_id="g", node_id="n").list()]
            out["events"] = [e.seq async for e in led.events()]
            res = await led.verify()
            out["verify"] = [res.ok, list(res.head), res.problems]
            refused = []
            for name, call in [
                ("save", lambda: fac.save("/etc/hostname", kind="x")),
                ("pin", lambda: fac.pin(first)),
                ("stage", lambda: fac.stage()),
                ("stage_dir", lambda: fac.stage_dir()),
                ("checkpoint", lambda: led.checkpoint()),
            ]:
                try:
                    await call()
                except ReadOnlyError as exc:
                    refused.append([name, str(exc)])
            out["refused"] = refused
            await led.aclose()
            out["tree_removed"] = not Path(tree).exists()
        out["warnings"] = [str(w.message) for w in caught]
        print(json.dumps(out))

    anyio.run(main)
"""


@needs_root
def test_unprivileged_reader_uses_the_library_read_only(shared_dir):
    """As uid 65534 on a ledger it cannot write: a normal open fails, a read-only open reads everything
    (directory artifacts materialised outside the ledger), refuses writes, and changes nothing."""
    root = shared_dir / "ledger"
    info = build(root, shared_dir / "src")
    readable_by_all(root)
    before = snapshot(root)
    res = as_nobody(LIBRARY_READER, str(root), json.dumps(info))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "Permission denied" in out["writable_open"]  # today's only way in
    assert out["head"] == info["head"]
    assert sorted(out["listed"]) == sorted(info["ids"] + [info["tree"]])
    assert out["best"] == info["ids"][-1]
    assert out["bytes"] == "file 0"
    assert out["tree"] == ["a.txt", "sub", "sub/b.bin"] and out["tree_a"] == "alpha"
    assert out["tree_outside"] and out["tree_removed"]
    assert out["as_of"] == info["ids"][:2][::-1]
    assert out["events"] == list(range(1, info["head"][0] + 1))
    assert out["verify"] == [True, info["head"], []]
    assert [name for name, _ in out["refused"]] == ["save", "pin", "stage", "stage_dir", "checkpoint"]
    assert all("read-only" in msg for _, msg in out["refused"])
    assert out["warnings"] == []
    assert snapshot(root) == before


CLI_BATCH = """
    import contextlib, io, json, warnings
    from artifact_ledger.facade.cli import main

    results = []
    warnings.simplefilter("always")  # each run reports its warnings, as a separate process would
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        results.append([code, out.getvalue(), err.getvalue()])
    print(json.dumps(results))
"""


def run_cli_batch(argvs: list[list[str]], *, nobody: bool) -> list[tuple[int, str, str]]:
    """Run each argv through the CLI's main() in one fresh interpreter (as uid 65534 if asked)."""
    if nobody:
        res = as_nobody(CLI_BATCH, json.dumps(argvs))
    else:
        res = subprocess.run([sys.executable, "-c", "import sys\n" + textwrap.dedent(CLI_BATCH), json.dumps(argvs)],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [tuple(r) for r in json.loads(res.stdout)]


def cli_read_commands(root: Path, info: dict, out_dir: Path) -> list[list[str]]:
    """Every read command of the CLI (all but checkpoint), with arguments that exercise it."""
    r = ["-C", str(root)]
    return [
        r + ["list", "--run", "r1"],
        r + ["search", "--kind", "text", "--label", "i=1", "--json"],
        r + ["best", "--kind", "text", "--metric", "acc", "--mode", "max"],
        r + ["show", info["ids"][0][:8]],
        r + ["log", "--since", "2"],
        r + ["as-of", "--seq", "3", "list", "--scope", "all"],
        r + ["as-of", "--seq", "3", "export"],
        r + ["diff", "1", "4"],
        r + ["verify"],
        r + ["export", "--out", str(out_dir / "events.jsonl")],
    ]


@needs_root
def test_unprivileged_cli_read_commands(shared_dir):
    """As uid 65534, every CLI read command succeeds on a ledger it may only read, and writes nothing into it."""
    root = shared_dir / "ledger"
    info = build(root, shared_dir / "src")
    readable_by_all(root)
    out_dir = shared_dir / "out"
    out_dir.mkdir()
    os.chown(out_dir, NOBODY, NOBODY)
    before = snapshot(root)
    argvs = cli_read_commands(root, info, out_dir)
    for argv, (code, out, err) in zip(argvs, run_cli_batch(argvs, nobody=True), strict=True):
        assert code == 0, (argv, out, err)
        assert err == "", (argv, err)
    assert len((out_dir / "events.jsonl").read_text().splitlines()) == info["head"][0]
    assert snapshot(root) == before


def with_torn_tail_and_no_checkpoint(root: Path) -> bytes:
    """Append half a record to the last segment and drop the checkpoints (so a close would write one)."""
    shutil.rmtree(root / "checkpoints")
    last = disk_records(root)[-1]
    seg = root / "log" / last.segment
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00half a record")
    return seg.read_bytes()


def test_read_only_open_reads_and_cli_change_nothing_even_with_a_torn_tail(tmp_path):
    """Byte-for-byte: read-only opens, reads, verify and every CLI read command leave the tree as it was;
    a torn tail is reported (TornTailWarning) and ignored in memory, not truncated; no checkpoint is written."""
    root = tmp_path / "ledger"
    info = build(root, tmp_path / "src")
    seg_bytes = with_torn_tail_and_no_checkpoint(root)
    before = snapshot(root)

    async def reads():
        with pytest.warns(TornTailWarning, match="not truncated"):
            led = await open_ledger(root, read_only=True, fsync=False)
        try:
            fac = led.artifacts(**RUN)
            assert list(led.head) == info["head"]
            assert len(await fac.list(scope="all")) == len(info["ids"]) + 1
            tree = await fac.load_artifact("artifact://" + info["tree"])
            assert (tree / "sub" / "b.bin").read_bytes() == b"beta" and root not in tree.parents
            res = await led.verify()
            assert not res.ok and "incomplete record" in res.problem  # still there for a writer to repair
            with pytest.raises(ReadOnlyError, match="read-only"):
                await fac.save(str(tmp_path / "src" / "f0.txt"), kind="x")
        finally:
            await led.aclose()

    anyio.run(reads)
    assert snapshot(root) == before
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argvs = cli_read_commands(root, info, out_dir)
    for argv, (code, _out, err) in zip(argvs, run_cli_batch(argvs, nobody=False), strict=True):
        assert code == (1 if "verify" in argv else 0), (argv, err)
        assert "ignored torn tail" in err and "not truncated" in err, (argv, err)
    assert snapshot(root) == before
    assert (root / "log" / disk_records(root)[-1].segment).read_bytes() == seg_bytes
    assert not (root / "checkpoints").exists()
    # A writable open is what repairs it (and the CLI's checkpoint command opens writable).
    res = subprocess.run([sys.executable, "-m", "artifact_ledger", "-C", str(root), "checkpoint"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "truncated torn tail" in res.stderr, res.stderr
    assert checkpoints.file_name(info["head"][0]) in os.listdir(root / "checkpoints")


def test_read_only_never_creates_a_ledger(tmp_path):
    """read_only=True on a missing or empty directory raises FileNotFoundError and creates nothing."""

    async def main():
        for target in (tmp_path / "missing", tmp_path / "empty"):
            with pytest.raises(FileNotFoundError):
                await open_ledger(target, read_only=True)
        with pytest.raises(TypeError, match="read_only"):
            await open_ledger(tmp_path / "x", read_only="yes")

    (tmp_path / "empty").mkdir()
    anyio.run(main)
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path / "empty") == []
    assert not (tmp_path / "x").exists()


def test_read_only_without_a_lock_file_reads_and_warns(tmp_path):
    """If log/LOCK cannot be opened, a read-only open still reads (unlocked, with a warning) and does not
    recreate it."""
    root = tmp_path / "ledger"
    info = build(root, tmp_path / "src")
    os.unlink(root / "log" / "LOCK")
    before = snapshot(root)

    async def main():
        with pytest.warns(UserWarning, match="without the log lock"):
            led = await open_ledger(root, read_only=True)
        async with led:
            assert list(led.head) == info["head"]
            assert (await led.verify()).ok

    anyio.run(main)
    assert snapshot(root) == before


# --------------------------------------------------------------------------- concurrent writers
WRITER = """
import os, sys, anyio
from artifact_ledger import open_ledger
from artifact_ledger.ledger.filelog import SegmentLog

root, rounds, ends_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ends = open(ends_path, "a", buffering=1)
real = SegmentLog.append_batch

def append_batch(self, payloads, on_record):
    out = real(self, payloads, on_record)
    ends.write(f"{out[-1].seq}\\n")  # a batch is done (durable) only once append_batch returns
    return out

SegmentLog.append_batch = append_batch

async def main():
    async with open_ledger(root, fsync=False, segment_bytes=4096, checkpoint_every=25) as led:
        fac = led.artifacts(run_id="r1", graph_id="g", node_id="n")
        src = os.path.join(os.path.dirname(root), "w.txt")
        with open(src, "wb") as f:
            f.write(b"w")
        for i in range(rounds):
            async with anyio.create_task_group() as tg:
                for j in range(1 + i % 5):
                    tg.start_soon(lambda: fac.save(src, kind="w", metrics={"i": i}))
    print("done", flush=True)

anyio.run(main)
"""


def test_read_only_reader_sees_only_whole_batches_while_another_process_appends(tmp_path):
    """Every head a read-only reader observes is the end of a committed batch, and its catalogue matches the log."""
    root = tmp_path / "ledger"
    build(root, tmp_path / "src", saves=2)
    ends = tmp_path / "ends.txt"
    ends.write_text("")
    start_head = disk_records(root)[-1].seq
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), "40", str(ends)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[tuple[int, int]] = []

    async def read():
        async with open_ledger(root, read_only=True) as led:
            fac = led.artifacts(**RUN)
            while True:
                done = writer.poll() is not None
                n = len(await fac.list(scope="all"))
                seen.append((led.head[0], n))
                assert led.catalog.head_seq == led.head[0]
                if done:
                    return

    anyio.run(read)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and "done" in out, err
    batch_ends = {start_head} | {int(x) for x in ends.read_text().split()}
    heads = [h for h, _ in seen]
    assert heads == sorted(heads)
    assert set(heads) <= batch_ends, sorted(set(heads) - batch_ends)
    assert heads[-1] == max(batch_ends) == disk_records(root)[-1].seq
    # build() left one pin among its records; every later record is a save, so rows track the head exactly.
    assert all(n == h - 1 for h, n in seen)


BLOCKED_WRITER = """
import os, sys, anyio
from artifact_ledger import open_ledger
from artifact_ledger.ledger import filelog

root = sys.argv[1]
real = os.fdatasync
real_syncfs = filelog._syncfs_fd

def blocking_fdatasync(fd):
    # The batch is written and the exclusive lock held: park here until the test says go.
    os.fdatasync = real
    print("in fdatasync", flush=True)
    sys.stdin.readline()
    real(fd)

def blocking_syncfs(fd, what):  # the same, with one flush per batch
    filelog._syncfs_fd = real_syncfs
    print("in fdatasync", flush=True)
    sys.stdin.readline()
    real_syncfs(fd, what)

async def main():
    async with open_ledger(root, segment_bytes=1 << 20) as led:
        fac = led.artifacts(run_id="r1", graph_id="g", node_id="n")
        src = os.path.join(os.path.dirname(root), "b.txt")
        with open(src, "wb") as f:
            f.write(b"b")
        os.fdatasync = blocking_fdatasync
        filelog._syncfs_fd = blocking_syncfs
        art = await fac.save(src, kind="b")
        print("saved", art.seq, flush=True)

anyio.run(main)
"""


def test_read_only_open_waits_for_a_batch_whose_fsync_has_not_returned(tmp_path):
    """While a writer sits in fdatasync under the lock, a read-only open blocks; it returns once the batch is
    durable."""
    root = tmp_path / "ledger"
    build(root, tmp_path / "src", saves=2)
    head0 = disk_records(root)[-1].seq
    writer = subprocess.Popen([sys.executable, "-c", BLOCKED_WRITER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: list[int] = []
    try:
        assert writer.stdout.readline().strip() == "in fdatasync"
        assert disk_records(root)[-1].seq == head0 + 1  # the record's bytes are already in the file
        t = threading.Thread(target=lambda: result.append(anyio.run(_open_head, root)))
        t.start()
        t.join(1.0)
        assert t.is_alive() and result == [], "a read-only open returned while the batch was not yet durable"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        t.join(60)
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0 and f"saved {head0 + 1}" in out, err
    assert result == [head0 + 1]


async def _open_head(root: Path) -> int:
    async with open_ledger(root, read_only=True) as led:
        return led.head[0]


def test_every_write_on_a_read_only_ledger_raises_before_writing(tmp_path):
    """save, ingest, ingest_dir, writer, stage, stage_dir, tmp_path, pin and checkpoint all raise ReadOnlyError."""
    root = tmp_path / "ledger"
    info = build(root, tmp_path / "src")
    staged = root / "staging" / "x.bin"  # even a file already in staging is not ingested
    staged.write_bytes(b"x")
    before = snapshot(root)

    async def main():
        async with open_ledger(root, read_only=True) as led:
            fac = led.artifacts(**RUN)
            calls = {
                "save": lambda: fac.save(str(tmp_path / "src" / "f0.txt"), kind="t"),
                "ingest": lambda: fac.ingest(str(staged), kind="t"),
                "ingest_dir": lambda: fac.ingest_dir(str(root / "staging")),
                "stage": lambda: fac.stage(),
                "stage_dir": lambda: fac.stage_dir(),
                "tmp_path": lambda: fac.tmp_path(),
                "pin": lambda: fac.pin(info["ids"][1]),
                "checkpoint": lambda: led.checkpoint(),
            }
            for _name, call in calls.items():
                with pytest.raises(ReadOnlyError, match="read-only"):
                    await call()
            with pytest.raises(ReadOnlyError, match="read-only"):
                async with fac.writer(kind="t") as w:
                    w.write(b"never")
            assert list(led.head) == info["head"]

    anyio.run(main)
    assert snapshot(root) == before


UNREADABLE_LOCK_READER = """
    import json, warnings
    import anyio
    from artifact_ledger import open_ledger

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with open_ledger(sys.argv[1], read_only=True) as led:
                head = led.head[0]
                ok = (await led.verify()).ok
        print(json.dumps({"head": head, "ok": ok, "warnings": [str(w.message) for w in caught]}))

    anyio.run(main)
"""


@needs_root
def test_unprivileged_reader_with_an_unreadable_lock_file(shared_dir):
    """A LOCK the auditor may not read (a writer's umask 077): the read-only open still works, and says it reads
    unlocked."""
    root = shared_dir / "ledger"
    info = build(root, shared_dir / "src")
    readable_by_all(root)
    os.chmod(root / "log" / "LOCK", 0o600)
    before = snapshot(root)
    res = as_nobody(UNREADABLE_LOCK_READER, str(root))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["head"] == info["head"][0] and out["ok"]
    assert len(out["warnings"]) == 1 and "Permission denied" in out["warnings"][0]
    assert "without the log lock" in out["warnings"][0]
    assert snapshot(root) == before
